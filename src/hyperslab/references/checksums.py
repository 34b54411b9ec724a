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

import hashlib
import io
import json
import mmap
import os
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from google_crc32c import extend
from google_crc32c import value as crc32c

from hyperslab.errors import CorruptError, FormatVersionError, SourceChangedError
from hyperslab.references.arrow_columns import int_column, primitive_array, read_parquet_table
from hyperslab.references.refmap import RefMap
from hyperslab.references.refmap_objects import ROW_GROUP

__all__ = [
    "ALGORITHM",
    "Checksums",
    "FileChecksums",
    "aligned",
    "compute_checksums",
    "crc_extend",
    "crc_ranges",
    "hash_and_checksum",
    "pack_checksums",
    "read_checksums_meta",
    "unpack_checksums",
]

ALGORITHM = "crc32c"
_VERSION = 1
_META = b"hyperslab.checksums"

Checksums = dict[str, np.ndarray]  # array path → uint32, aligned with ArrayRefs.index


def compute_checksums(
    refmap: RefMap,
    files: Mapping[int, str],
    known: Callable[[int], FileChecksums | None] | None = None,
) -> Checksums:
    """CRC-32C of every referenced chunk, reading source ``i`` from local file ``files[i]``.

    The references are grouped by source once; each file is memory-mapped once and
    its chunks read in offset order. ``known(i)``, if given, may return checksums
    already taken of source ``i`` (:func:`hash_and_checksum`, in the same read as its
    sha256): chunks whose (offset, length) it lists are not read again.
    """
    out: Checksums = {p: np.zeros(a.index.size, np.uint32) for p, a in refmap.arrays.items()}
    rows = [(p, a) for p, a in refmap.arrays.items() if a.index.size]
    if not rows or not files:
        return out
    source = np.concatenate([a.source for _, a in rows]).astype(np.int64)
    offset = np.concatenate([a.offset for _, a in rows]).astype(np.int64)
    length = np.concatenate([a.length for _, a in rows]).astype(np.int64)
    which = np.repeat(np.arange(len(rows)), [a.index.size for _, a in rows])
    pos = np.concatenate([np.arange(a.index.size) for _, a in rows])
    order = np.lexsort((length, offset, source))
    crcs = np.zeros(order.size, np.uint32)
    srcs, starts = np.unique(source[order], return_index=True)
    bounds = np.append(starts, order.size)
    for k, src in enumerate(srcs.tolist()):
        path = files.get(src)
        if path is None:
            continue
        sel = order[bounds[k] : bounds[k + 1]]
        off, ln = offset[sel], length[sel]
        got = known(src) if known is not None else None
        if got is not None:
            hit, vals = got.lookup(off, ln)
            crcs[sel[hit]] = vals[hit]
            if hit.all():
                continue
            sel, off, ln = sel[~hit], off[~hit], ln[~hit]
        crcs[sel] = crc_ranges(path, off, ln)
    for r, (p, _) in enumerate(rows):
        mine = which == r
        out[p][pos[mine]] = crcs[mine]
    return out


def crc_ranges(path: str, offsets: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """CRC-32C of byte ranges of one local file (``offsets`` ascending), memory-mapped
    once and read without copies; SourceChangedError if the file is shorter."""
    out = np.zeros(offsets.size, np.uint32)
    if not offsets.size:
        return out
    end = int((offsets + lengths).max())
    try:
        size = os.path.getsize(path)
        fh = open(path, "rb")  # noqa: SIM115 - closed by the with below
    except OSError as exc:
        raise SourceChangedError(
            f"{path} went away while its chunks were read ({exc.strerror})", path=path
        ) from exc
    if end > size:
        fh.close()
        raise SourceChangedError(f"{path} is shorter than its chunk index says", path=path)
    if end == 0:
        fh.close()
        out[:] = crc32c(b"")
        return out
    with fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        view = np.frombuffer(mm, np.uint8)  # crc32c takes arrays, not memoryviews
        try:
            for i, (o, n) in enumerate(zip(offsets.tolist(), lengths.tolist(), strict=True)):
                out[i] = crc32c(view[o : o + n])
        finally:
            del view  # the map cannot close while an array points into it
    return out


@dataclass(frozen=True)
class FileChecksums:
    """One read of a file: its sha256 and size, and the CRC-32C of byte ranges in it
    (sorted by offset, then length)."""

    sha256: str
    size: int
    offsets: np.ndarray
    lengths: np.ndarray
    crc32c: np.ndarray

    def lookup(self, offsets: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(found, crcs)`` for ranges ``(offsets[i], lengths[i])``: which were checksummed
        in this read, and their CRC-32C where found."""
        found = np.zeros(offsets.size, bool)
        crcs = np.zeros(offsets.size, np.uint32)
        if not self.offsets.size or not offsets.size:
            return found, crcs
        lo = np.searchsorted(self.offsets, offsets, "left")
        hi = np.searchsorted(self.offsets, offsets, "right")
        one = hi - lo == 1  # the usual case: one range starts there
        at = np.minimum(lo, self.offsets.size - 1)
        found[one] = self.lengths[at[one]] == lengths[one]
        crcs[found] = self.crc32c[at[found]]
        for i in np.flatnonzero(hi - lo > 1).tolist():  # ranges sharing a start
            k = lo[i] + np.searchsorted(self.lengths[lo[i] : hi[i]], lengths[i])
            if k < hi[i] and self.lengths[k] == lengths[i]:
                found[i], crcs[i] = True, self.crc32c[k]
        return found, crcs


def _native_extend() -> Callable[[int, np.ndarray], int] | None:
    """google_crc32c's own C library called through ctypes, which releases the GIL
    (the extension module holds it: ~80 us for a 400 kB frame, during which every other
    thread's system calls wait). None where the library is not found or disagrees with
    the known answer; the extension module is used then."""
    import ctypes
    import glob
    import importlib.util

    spec = importlib.util.find_spec("google_crc32c")
    if spec is None or spec.origin is None:
        return None
    pkg = os.path.dirname(os.path.dirname(spec.origin))
    for path in sorted(glob.glob(os.path.join(pkg, "google_crc32c.libs", "libcrc32c*"))):
        try:
            fn = ctypes.CDLL(path).crc32c_extend
        except (OSError, AttributeError):
            continue
        fn.restype = ctypes.c_uint32
        fn.argtypes = [ctypes.c_uint32, ctypes.c_void_p, ctypes.c_size_t]

        def native(crc: int, data: np.ndarray, fn: Any = fn) -> int:
            return int(fn(crc, data.ctypes.data, data.size)) if data.size else crc

        probe = np.frombuffer(b"123456789", np.uint8)
        if native(0, probe) == 0xE3069283 == crc32c(b"123456789"):
            return native
    return None


#: CRC-32C extend of a uint8 array, releasing the GIL where possible
crc_extend: Callable[[int, np.ndarray], int] = _native_extend() or extend

_BUFFERS = threading.local()


def _buffer(block: int) -> bytearray:
    """This thread's read buffer of ``block`` bytes (reused: a fresh zeroed buffer per
    small file would cost as much as hashing it)."""
    buf: bytearray | None = getattr(_BUFFERS, "buf", None)
    if buf is None or len(buf) != block:
        buf = _BUFFERS.buf = bytearray(block)
    return buf


def hash_and_checksum(
    path: str,
    offsets: np.ndarray | None = None,
    lengths: np.ndarray | None = None,
    *,
    block: int = 8 << 20,
) -> FileChecksums:
    """sha256 of a whole local file and the CRC-32C of byte ranges in it, in ONE
    sequential read (``block`` bytes at a time, one buffer, no copies).

    Ranges may come in any order and overlap; a range past the end of the file is a
    SourceChangedError. hashlib and :data:`crc_extend` release the GIL, so files hash
    in parallel on threads without stalling the thread that parses headers.
    """
    offsets = np.zeros(0, np.int64) if offsets is None else np.asarray(offsets, np.int64)
    lengths = np.zeros(0, np.int64) if lengths is None else np.asarray(lengths, np.int64)
    order = np.lexsort((lengths, offsets))
    offsets, lengths = offsets[order], lengths[order]
    crcs = np.zeros(offsets.size, np.uint32)
    ends = offsets + lengths
    starts_l, ends_l = offsets.tolist(), ends.tolist()
    h = hashlib.sha256()
    size = 0
    buf = _buffer(block)
    view = np.frombuffer(buf, np.uint8)
    mv = memoryview(buf)
    state = [0] * offsets.size
    nxt = 0  # the first range not yet started
    active: list[int] = []
    with open(path, "rb") as fh:
        while n := fh.readinto(buf):
            h.update(mv[:n])
            lo, hi = size, size + n
            while nxt < len(starts_l) and starts_l[nxt] < hi:
                active.append(nxt)
                nxt += 1
            still = []
            for i in active:
                a, b = max(starts_l[i], lo), min(ends_l[i], hi)
                if b > a:
                    state[i] = crc_extend(state[i], view[a - lo : b - lo])
                if ends_l[i] > hi:
                    still.append(i)
            active = still
            size = hi
    del view
    mv.release()
    if ends.size and int(ends.max()) > size:
        raise SourceChangedError(f"{path} is shorter than its chunk index says", path=path)
    crcs[:] = state
    return FileChecksums(h.hexdigest(), size, offsets, lengths, crcs)


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
