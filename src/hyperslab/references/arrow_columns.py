"""Arrow arrays built from, and read through, their buffers.

Every columnar format of the repository (Parquet refmaps, chunk checksums, catalog
indexes, chunk-replica indexes) goes through these helpers: no per-row Python
objects, and no pandas (pyarrow imports pandas the first time ``pa.array`` or
``to_numpy`` is called: about 0.5 s and 50 MB that a one-shot commit, search or
store open should not pay).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from hyperslab.errors import BadInputError, CorruptError
from hyperslab.references.refmap import copy_ranges

__all__ = [
    "binary_array",
    "binary_rows",
    "int_column",
    "int_values",
    "mask_at",
    "primitive_array",
    "read_parquet_table",
    "string_array",
    "validity",
]


def read_parquet_table(source: Any, **options: Any) -> Any:
    """A whole Parquet file (bytes, a path or a file object) as a pyarrow Table.

    Read through ``pq.ParquetFile``: ``pq.read_table`` imports ``pyarrow.dataset`` and
    with it pandas (about 40 MB in every process that opens a store, an ML data loader
    worker included). ``options`` are ``ParquetFile``'s (``read_dictionary``,
    ``page_checksum_verification`` ...)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if isinstance(source, (bytes, bytearray, memoryview)):
        source = pa.BufferReader(source)
    with pq.ParquetFile(source, **options) as pf:
        return pf.read()


def mask_at(n: int, where: np.ndarray) -> np.ndarray:
    mask = np.zeros(n, bool)
    mask[where] = True
    return mask


def string_array(values: list[str]) -> Any:
    import pyarrow as pa

    enc = [v.encode("utf-8") for v in values]
    offsets = np.zeros(len(enc) + 1, np.int64)
    np.cumsum(np.fromiter(map(len, enc), np.int64, len(enc)), out=offsets[1:])
    if offsets[-1] >= 2**31:
        raise BadInputError("source URLs are longer than 2 GiB in all")
    return pa.Array.from_buffers(
        pa.string(),
        len(enc),
        [None, pa.py_buffer(offsets.astype(np.int32)), pa.py_buffer(b"".join(enc))],
    )


def primitive_array(typ: Any, values: np.ndarray, valid: np.ndarray | None = None) -> Any:
    import pyarrow as pa

    bitmap = None if valid is None else pa.py_buffer(np.packbits(valid, bitorder="little"))
    nulls = 0 if valid is None else int(valid.size - np.count_nonzero(valid))
    return pa.Array.from_buffers(
        typ, values.size, [bitmap, pa.py_buffer(np.ascontiguousarray(values))], null_count=nulls
    )


def binary_array(rows: int, where: np.ndarray, offsets: np.ndarray, data: np.ndarray) -> Any:
    """A binary column of ``rows`` rows: row ``where[i]`` holds ``data[offsets[i]:offsets[i+1]]``."""
    import pyarrow as pa

    if where.size == 0:
        return pa.nulls(rows, pa.binary())
    lo, hi = int(offsets[0]), int(offsets[-1])
    lens = np.zeros(rows, np.int64)
    lens[where] = np.diff(offsets)
    pos = np.zeros(rows + 1, np.int64)
    np.cumsum(lens, out=pos[1:])
    large = hi - lo >= 2**31
    typ = pa.large_binary() if large else pa.binary()
    return pa.Array.from_buffers(
        typ,
        rows,
        [
            pa.py_buffer(np.packbits(mask_at(rows, where), bitorder="little")),
            pa.py_buffer(pos if large else pos.astype(np.int32)),
            pa.py_buffer(np.ascontiguousarray(data[lo:hi])),
        ],
        null_count=rows - int(where.size),
    )


def validity(a: Any) -> np.ndarray:
    import pyarrow as pa

    n = len(a)
    if pa.types.is_null(a.type):
        return np.zeros(n, bool)
    if a.null_count == 0:
        return np.ones(n, bool)
    bits = np.unpackbits(np.frombuffer(a.buffers()[0], np.uint8), bitorder="little")
    return bits[a.offset : a.offset + n].astype(bool)


def int_values(a: Any) -> tuple[np.ndarray, np.ndarray]:
    """(values, valid) of an integer Arrow array."""
    import pyarrow as pa

    n = len(a)
    if pa.types.is_null(a.type):
        return np.zeros(n, np.int64), np.zeros(n, bool)
    if not pa.types.is_integer(a.type):
        raise CorruptError(f"expected an integer column, found {a.type}")
    kind = "i" if pa.types.is_signed_integer(a.type) else "u"
    dt = np.dtype(f"{kind}{a.type.bit_width // 8}")
    values = np.frombuffer(a.buffers()[1], dt, count=n, offset=a.offset * dt.itemsize)
    return values, validity(a)


def int_column(col: Any) -> tuple[np.ndarray, np.ndarray]:
    """(values, valid) of an integer ChunkedArray, read from its buffers.

    ``to_numpy`` would do, but pyarrow imports pandas the first time it is called
    (~0.5 s, ~50 MB), which a one-shot commit, search or store open should not pay.
    """
    parts = [int_values(c) for c in col.chunks]
    if not parts:
        return np.zeros(0, np.int64), np.zeros(0, bool)
    if len(parts) == 1:
        return parts[0]
    return np.concatenate([v for v, _ in parts]), np.concatenate([m for _, m in parts])


def binary_rows(raw: Any, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(offsets, data)`` of the given rows of a binary Arrow array, packed in order."""
    import pyarrow as pa

    odt: np.dtype[Any]
    if pa.types.is_large_binary(raw.type) or pa.types.is_large_string(raw.type):
        odt = np.dtype(np.int64)
    elif pa.types.is_binary(raw.type) or pa.types.is_string(raw.type):
        odt = np.dtype(np.int32)
    else:
        raise CorruptError(f"the raw column holds {raw.type}, not bytes")
    bufs = raw.buffers()
    pos = np.frombuffer(bufs[1], odt, count=len(raw) + 1, offset=raw.offset * odt.itemsize)
    body = np.frombuffer(bufs[2], np.uint8) if bufs[2] is not None else np.zeros(0, np.uint8)
    starts = pos[rows].astype(np.int64)
    lens = pos[rows + 1].astype(np.int64) - starts
    out_off = np.zeros(rows.size + 1, np.int64)
    np.cumsum(lens, out=out_off[1:])
    data = np.empty(int(out_off[-1]), np.uint8)
    copy_ranges(body, starts, data, out_off[:-1], lens)
    return out_off, data
