"""Per-chunk checksums recorded at ingest: how readers tell good bytes from bad.

A refmap says *where* each chunk is (source, offset, length); sources are named by
their sha256, but a reader fetching one 1 MB range of a 1 GB file cannot check that
hash. So at ingest, while the file is local, every referenced chunk's bytes get a
CRC-32C (hardware-accelerated, GB/s), stored next to the refmap as
``checksums/<sha256>.parquet`` and named by the entry record::

    "checksums": {"id": "<sha256>", "algorithm": "crc32c", "chunks": N}

Rows (sorted by array, then linear chunk index, like a packed refmap): ``array``
(int32, position in the sorted array list of the file's metadata), ``index``
(int64), ``crc32c`` (uint32). Inline chunks need none: they live inside the
content-addressed refmap. Readers verify every fetched chunk and treat a mismatch as
a failed site (see ``reading/routing.py``); maps ingested before checksums existed
are read unverified.
"""

from __future__ import annotations

import io
import json
import mmap
import os
from collections.abc import Mapping
from typing import Any

import numpy as np
from google_crc32c import value as crc32c

from hyperslab.errors import CorruptError, FormatVersionError, SourceChangedError
from hyperslab.references.arrow_columns import int_column, primitive_array, read_parquet_table
from hyperslab.references.refmap import RefMap
from hyperslab.references.refmap_objects import ROW_GROUP

__all__ = [
    "ALGORITHM",
    "Checksums",
    "aligned",
    "compute_checksums",
    "pack_checksums",
    "read_checksums_meta",
    "unpack_checksums",
]

ALGORITHM = "crc32c"
_VERSION = 1
_META = b"hyperslab.checksums"

Checksums = dict[str, np.ndarray]  # array path → uint32, aligned with ArrayRefs.index


def compute_checksums(refmap: RefMap, files: Mapping[int, str]) -> Checksums:
    """CRC-32C of every referenced chunk, reading source ``i`` from local file ``files[i]``.

    Each file is memory-mapped once and its chunks read in offset order.
    """
    out: Checksums = {p: np.zeros(a.index.size, np.uint32) for p, a in refmap.arrays.items()}
    for src, path in files.items():
        todo = [
            (int(off), int(n), p, i)
            for p, a in refmap.arrays.items()
            for i in np.flatnonzero(a.source == src).tolist()
            for off, n in ((a.offset[i], a.length[i]),)
        ]
        if not todo:
            continue
        todo.sort()
        size = os.path.getsize(path)
        if todo[-1][0] + todo[-1][1] > size:
            raise SourceChangedError(f"{path} is shorter than its chunk index says", path=path)
        with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            for off, n, p, i in todo:
                out[p][i] = crc32c(mm[off : off + n])
    return out


def pack_checksums(refmap: RefMap, sums: Checksums) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    paths = sorted(refmap.arrays)
    arrays, index, crcs = [], [], []
    for k, p in enumerate(paths):
        arr = refmap.arrays[p]
        order = np.argsort(arr.index, kind="stable")
        arrays.append(np.full(arr.index.size, k, np.int32))
        index.append(arr.index[order].astype(np.int64))
        crcs.append(sums[p][order].astype(np.uint32))

    def cat(parts: list[np.ndarray], dtype: type) -> np.ndarray:
        return np.concatenate(parts) if parts else np.zeros(0, dtype)

    table = pa.table(
        {
            "array": primitive_array(pa.int32(), cat(arrays, np.int32)),
            "index": primitive_array(pa.int64(), cat(index, np.int64)),
            "crc32c": primitive_array(pa.uint32(), cat(crcs, np.uint32)),
        }
    )
    meta = {"format": _VERSION, "algorithm": ALGORITHM, "arrays": paths}
    table = table.replace_schema_metadata({_META: json.dumps(meta).encode()})
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd", row_group_size=ROW_GROUP, write_statistics=True)
    return buf.getvalue()


def read_checksums_meta(schema_metadata: Mapping[bytes, bytes] | None) -> dict[str, Any]:
    """The checked file metadata of a checksums object (``arrays``: the array paths)."""
    try:
        meta = json.loads((schema_metadata or {})[_META])
    except (KeyError, ValueError) as exc:
        raise CorruptError(f"chunk checksums have no readable metadata: {exc}") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("format"), int):
        raise CorruptError("chunk checksums have no valid format version")
    if meta["format"] > _VERSION or meta.get("algorithm") != ALGORITHM:
        raise FormatVersionError(
            f"chunk checksums format {meta['format']} ({meta.get('algorithm')}) is newer than "
            "this hyperslab reads: upgrade hyperslab"
        )
    if not isinstance(meta.get("arrays"), list):
        raise CorruptError("chunk checksums do not list their arrays")
    return meta


def unpack_checksums(data: bytes) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``array path → (sorted linear indices, crc32c)``."""

    try:
        table = read_parquet_table(data)
    except Exception as exc:
        raise CorruptError(f"chunk checksums are unreadable: {exc}") from None
    paths = read_checksums_meta(table.schema.metadata)["arrays"]
    array, index, crc = (int_column(table.column(c))[0] for c in ("array", "index", "crc32c"))
    bounds = np.searchsorted(array, np.arange(len(paths) + 1))
    return {
        p: (index[bounds[k] : bounds[k + 1]], crc[bounds[k] : bounds[k + 1]])
        for k, p in enumerate(paths)
    }


def aligned(refmap: RefMap, table: Mapping[str, tuple[np.ndarray, np.ndarray]]) -> Checksums:
    """Checksums aligned with each (sorted) ``ArrayRefs.index``; CorruptError if they disagree."""
    out: Checksums = {}
    for p, arr in refmap.arrays.items():
        index, crc = table.get(p, (np.zeros(0, np.int64), np.zeros(0, np.uint32)))
        if index.size != arr.index.size or not np.array_equal(index, arr.index):
            raise CorruptError(f"chunk checksums do not match the reference map of {p!r}")
        out[p] = crc
    return out
