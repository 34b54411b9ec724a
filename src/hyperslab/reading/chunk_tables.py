"""Where each chunk of an entry is: looked up eagerly (small maps) or lazily (large Parquet maps).

A packed Parquet refmap (``references/refmap_objects.py``) and its checksums
(``references/checksums.py``) are sorted by ``(array, index)`` in row groups with
min/max statistics. :class:`LazyRows` keeps the downloaded (hash-verified)
compressed bytes, reads only the footer at open, and decodes a row group the first
time a lookup can only be answered by it; decoded groups live in a small LRU. A
10^6-chunk map opens in milliseconds and a handful of MB, where decoding every row
costs ~200 MB and most of a second.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from hyperslab.errors import CorruptError
from hyperslab.references.arrow_columns import int_column

__all__ = ["EagerChunks", "LazyChunks", "LazyRows"]


class LazyRows:
    """Rows of a Parquet file sorted by ``(array, index)``, decoded one row group at a time."""

    def __init__(self, data: bytes, columns: Sequence[str], *, cache_groups: int = 32) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            self._pf = pq.ParquetFile(pa.BufferReader(data))
        except Exception as exc:
            raise CorruptError(f"Parquet object is unreadable: {exc}") from None
        self.metadata = self._pf.schema_arrow.metadata or {}
        self.columns = list(columns)
        md = self._pf.metadata
        names = [md.schema.column(i).name for i in range(md.num_columns)]
        try:
            ai, ii = names.index("array"), names.index("index")
        except ValueError:
            raise CorruptError("Parquet object has no array/index columns") from None
        self._groups: list[tuple[int, int, int, int]] = []  # amin, amax, imin, imax
        for g in range(md.num_row_groups):
            rg = md.row_group(g)
            sa, si = rg.column(ai).statistics, rg.column(ii).statistics
            if rg.num_rows == 0:
                continue
            if sa is None or si is None or not (sa.has_min_max and si.has_min_max):
                self._groups.append((-(2**31), 2**31, -(2**63), 2**63 - 1))  # no pruning
            else:
                self._groups.append((int(sa.min), int(sa.max), int(si.min), int(si.max)))
        self._ids = [g for g in range(md.num_row_groups) if md.row_group(g).num_rows]
        self._cache: OrderedDict[int, dict[str, Any]] = OrderedDict()
        self._cache_groups = cache_groups
        self._lock = threading.Lock()

    def _group(self, n: int) -> dict[str, Any]:
        import pyarrow as pa

        with self._lock:
            got = self._cache.get(n)
            if got is not None:
                self._cache.move_to_end(n)
                return got
        table = self._pf.read_row_group(
            self._ids[n], columns=["array", "index", *self.columns], use_threads=False
        )
        cols: dict[str, Any] = {"array": _numpy(table.column("array"))}
        cols["index"] = _numpy(table.column("index"))
        for c in self.columns:
            col = table.column(c)
            binary = pa.types.is_binary(col.type) or pa.types.is_large_binary(col.type)
            cols[c] = col if binary else _numpy(col)
        with self._lock:
            self._cache[n] = cols
            while len(self._cache) > self._cache_groups:
                self._cache.popitem(last=False)
        return cols

    def find(self, array: int, index: int) -> tuple[dict[str, Any], int] | None:
        """``(decoded group, row)`` of ``(array, index)``, or None when absent."""
        for n, (amin, amax, imin, imax) in enumerate(self._groups):
            if array < amin or array > amax:
                continue
            if amin == amax and not imin <= index <= imax:
                continue
            cols = self._group(n)
            a, i = cols["array"], cols["index"]
            lo = int(np.searchsorted(a, array, side="left"))
            hi = int(np.searchsorted(a, array, side="right"))
            pos = lo + int(np.searchsorted(i[lo:hi], index))
            if pos < hi and int(i[pos]) == index:
                return cols, pos
        return None

    def indices(self, array: int) -> Iterator[np.ndarray]:
        """Every stored linear index of ``array`` (decodes the groups that hold it)."""
        for n, (amin, amax, _, _) in enumerate(self._groups):
            if amin <= array <= amax:
                cols = self._group(n)
                yield cols["index"][cols["array"] == array]


def _numpy(col: Any) -> np.ndarray:
    """A chunk-location column (never null) as numpy, without importing pandas."""
    values, valid = int_column(col)
    if not valid.all():
        raise CorruptError("a chunk-location column has missing values")
    return values


class EagerChunks:
    """Chunk locations of a fully loaded :class:`~hyperslab.references.refmap.RefMap`."""

    def __init__(self, refmap: Any, checksums: dict[str, np.ndarray]) -> None:
        self.refmap = refmap
        self.checksums = checksums
        for arr in refmap.arrays.values():
            if arr.index.size > 1 and (np.diff(arr.index) < 0).any():
                arr.sort()

    def find(self, path: str, lin: int) -> tuple[int, int, int, int | None] | bytes | None:
        arr = self.refmap.arrays[path]
        inline = arr.inline.get(lin)
        if inline is not None:
            return bytes(inline)
        pos = int(np.searchsorted(arr.index, lin))
        if pos >= arr.index.size or int(arr.index[pos]) != lin:
            return None
        crc = self.checksums.get(path)
        return (
            int(arr.source[pos]),
            int(arr.offset[pos]),
            int(arr.length[pos]),
            int(crc[pos]) if crc is not None else None,
        )

    def indices(self, path: str) -> np.ndarray:
        arr = self.refmap.arrays[path]
        return np.union1d(arr.index, np.fromiter(arr.inline.keys(), np.int64))


class LazyChunks:
    """Chunk locations read from a packed Parquet refmap (and checksums) on demand."""

    def __init__(self, paths: list[str], refs: LazyRows, sums: LazyRows | None) -> None:
        self.position = {p: k for k, p in enumerate(paths)}
        self.refs = refs
        self.sums = sums

    def find(self, path: str, lin: int) -> tuple[int, int, int, int | None] | bytes | None:
        k = self.position[path]
        hit = self.refs.find(k, lin)
        if hit is None:
            return None
        cols, row = hit
        source = int(cols["source"][row])
        if source < 0:
            raw = cols["raw"][row].as_py()
            if raw is None:
                raise CorruptError(f"inline chunk {lin} of {path!r} has no bytes")
            return bytes(raw)
        crc: int | None = None
        if self.sums is not None:
            got = self.sums.find(k, lin)
            if got is None:
                raise CorruptError(f"chunk {lin} of {path!r} has no checksum")
            crc = int(got[0]["crc32c"][got[1]])
        return source, int(cols["offset"][row]), int(cols["length"][row]), crc

    def indices(self, path: str) -> np.ndarray:
        parts = list(self.refs.indices(self.position[path]))
        return np.concatenate(parts) if parts else np.zeros(0, np.int64)
