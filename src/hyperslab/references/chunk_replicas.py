"""Chunk replicas: hot chunks copied into a site, packed, and indexed by source range.

A chunk is a byte range of an immutable source file (named by its sha256). Sync
copies the chunks people read most into the destination site so that readers there
need neither the source file nor the site that holds it. Layout at a site::

    chunks/<pack sha256>                        the chunks' bytes, concatenated in
                                                source-offset order ("pack")
    replicas/<source sha256>/<index sha256>.parquet
                                                which ranges of that source the pack
                                                holds, and where

Index rows: ``offset``, ``length`` (the chunk's range in the source), ``crc32c`` (of
its bytes), ``at`` (where it starts in the pack). Schema metadata names the format
version, the source and the pack (with its size). Both objects are named by the
sha256 of their bytes, like everything else in a repository, so copies are
idempotent and verifiable; readers additionally check each chunk's CRC-32C.

Why packs and not one object per chunk: a hot set is typically thousands of
sub-MB chunks; one object per chunk costs one PUT per chunk to write and one GET
per chunk to read, where a pack is written with one PUT and read with coalesced
range GETs, exactly like the source file itself. Packs are deterministic (see
:func:`chunk_pack_group`): a sync killed after uploading a pack rebuilds the same pack,
finds it present and does not upload it again.

Replicas are site-local: they are not part of any snapshot (two sites holding the
same snapshot may hold different hot sets), so snapshot ids, and hence branch heads,
stay identical across sites. ``gc`` keeps the replicas of every source a reachable
entry uses, and ``fsck`` checks them.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace

import numpy as np

from hyperslab.errors import CorruptError, FormatVersionError, HyperslabError, NotFoundError
from hyperslab.references.arrow_columns import int_column, primitive_array, read_parquet_table
from hyperslab.references.format import object_id
from hyperslab.references.keys import is_object_id, replica_index_key, replica_prefix
from hyperslab.storage import Site

__all__ = [
    "CHUNK_PACK_SPAN",
    "ReplicaIndex",
    "build_chunk_pack",
    "chunk_pack_group",
    "load_replicas",
    "read_replica_index",
]

#: chunks whose source offsets fall in one CHUNK_PACK_SPAN window go into one pack: a
#: pack never exceeds this many bytes, and the grouping does not depend on what else
#: is hot
CHUNK_PACK_SPAN = 64 << 20
_VERSION = 1
_META = b"hyperslab.replicas"


@dataclass(frozen=True)
class ReplicaIndex:
    """The ranges of one source held by one pack, sorted by source offset."""

    source: str
    pack: str
    pack_size: int
    offset: np.ndarray  # int64
    length: np.ndarray  # int64
    crc32c: np.ndarray  # uint32
    at: np.ndarray  # int64
    key: str = ""  # the index object's key, once stored

    def __len__(self) -> int:
        return int(self.offset.size)

    def find(self, offset: int, length: int) -> tuple[int, int] | None:
        """``(start in the pack, crc32c)`` of the chunk ``(offset, length)``, or None."""
        pos = int(np.searchsorted(self.offset, offset))
        if pos < self.offset.size and self.offset[pos] == offset and self.length[pos] == length:
            return int(self.at[pos]), int(self.crc32c[pos])
        return None

    def to_bytes(self) -> bytes:
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.table(
            {
                "offset": primitive_array(pa.int64(), self.offset.astype(np.int64)),
                "length": primitive_array(pa.int64(), self.length.astype(np.int64)),
                "crc32c": primitive_array(pa.uint32(), self.crc32c.astype(np.uint32)),
                "at": primitive_array(pa.int64(), self.at.astype(np.int64)),
            }
        )
        meta = {
            "format": _VERSION,
            "source": self.source,
            "pack": self.pack,
            "pack_size": self.pack_size,
        }
        table = table.replace_schema_metadata({_META: json.dumps(meta, sort_keys=True).encode()})
        buf = io.BytesIO()
        pq.write_table(table, buf, compression="zstd", write_page_checksum=True)
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes, key: str = "") -> ReplicaIndex:

        where = key or "replica index"
        try:
            table = read_parquet_table(data, page_checksum_verification=True)
            meta = json.loads((table.schema.metadata or {})[_META])
        except Exception as exc:
            raise CorruptError(f"{where} is unreadable: {exc}", where=where) from None
        if not isinstance(meta, dict) or not isinstance(meta.get("format"), int):
            raise CorruptError(f"{where} has no valid format version", where=where)
        if meta["format"] > _VERSION:
            raise FormatVersionError(
                f"{where} uses replica format {meta['format']}; upgrade hyperslab", where=where
            )
        source, pack = meta.get("source"), meta.get("pack")
        if not (isinstance(source, str) and isinstance(pack, str) and is_object_id(pack)):
            raise CorruptError(f"{where} does not name its source and pack", where=where)
        cols = [int_column(table.column(c)) for c in ("offset", "length", "crc32c", "at")]
        if any(not valid.all() for _, valid in cols):
            raise CorruptError(f"{where} has missing values", where=where)
        offset, length, crc, at = (values for values, _ in cols)
        index = cls(source, pack, int(meta.get("pack_size", -1)), offset, length, crc, at, key)
        index.check()
        return index

    def check(self) -> None:
        """Rows sorted, non-overlapping in the pack, and inside it."""
        where = self.key or f"replica index of pack {self.pack[:12]}"
        if self.offset.size and (np.diff(self.offset) <= 0).any():
            raise CorruptError(f"{where}: rows are not sorted by source offset", where=where)
        end = self.at + self.length
        if self.offset.size and (
            (self.length < 0).any() or (self.at < 0).any() or int(end.max()) > self.pack_size
        ):
            raise CorruptError(f"{where}: a row points outside its pack", where=where)


def chunk_pack_group(offset: int) -> int:
    """Pack number of a chunk at ``offset`` (deterministic: the offset's CHUNK_PACK_SPAN window)."""
    return int(offset) // CHUNK_PACK_SPAN


def build_chunk_pack(
    source: str, chunks: Sequence[tuple[int, int, int, bytes]]
) -> tuple[bytes, ReplicaIndex, bytes]:
    """``(pack bytes, index, index bytes)`` for ``(offset, length, crc32c, data)`` chunks."""
    rows = sorted(chunks)
    parts, at = [], []
    pos = 0
    for _off, n, _crc, chunk in rows:
        if len(chunk) != n:
            raise CorruptError(f"chunk of {n} bytes came with {len(chunk)} bytes")
        at.append(pos)
        parts.append(chunk)
        pos += n
    pack = b"".join(parts)
    index = ReplicaIndex(
        source,
        object_id(pack),
        len(pack),
        np.array([r[0] for r in rows], np.int64),
        np.array([r[1] for r in rows], np.int64),
        np.array([r[2] for r in rows], np.uint32),
        np.array(at, np.int64),
    )
    index.check()
    data = index.to_bytes()
    return pack, replace(index, key=replica_index_key(source, object_id(data))), data


def read_replica_index(site: Site, key: str) -> ReplicaIndex:
    """The index at ``key``, checked against its name (sha256) and parsed."""
    data = site.get(key)
    if object_id(data) != key.rsplit("/", 1)[-1].split(".", 1)[0]:
        raise CorruptError(f"{key} does not match its sha256", where=key)
    return ReplicaIndex.from_bytes(data, key)


def load_replicas(
    site: Site, sources: Iterable[str], *, workers: int = 8
) -> dict[str, list[ReplicaIndex]]:
    """Every readable replica index of ``sources`` at ``site``: one LIST per source.

    A damaged index is skipped (logged by the caller through the returned map being
    short): readers then fall back to the source, which is always correct.
    """
    out: dict[str, list[ReplicaIndex]] = {}
    keys: list[tuple[str, str]] = []
    for source in sources:
        out[source] = []
        try:
            keys += [
                (source, k) for k in site.list(replica_prefix(source)) if k.endswith(".parquet")
            ]
        except NotFoundError:
            continue
    if not keys:
        return out

    def one(item: tuple[str, str]) -> tuple[str, ReplicaIndex | None]:
        source, key = item
        try:
            index = read_replica_index(site, key)
        except HyperslabError:
            return source, None
        return source, index if index.source == source else None

    if len(keys) == 1:
        results = [one(keys[0])]
    else:
        with ThreadPoolExecutor(min(workers, len(keys))) as pool:
            results = list(pool.map(one, keys))
    for source, index in results:
        if index is not None:
            out[source].append(index)
    return out
