"""The in-memory reference model and its kerchunk persistence (JSON and Parquet).

A :class:`RefMap` is what the converter produces and every other package consumes:
Zarr v2 metadata for a hierarchy of groups and arrays, plus, per array, where
each chunk's encoded bytes live. Chunk references are kept column-wise in numpy
arrays (linear chunk index, source number, offset, length) rather than as a dict
of string keys: a 10^6-chunk array costs ~26 MB, not the ~800 MB a dict of
kerchunk key strings and lists costs. Inline chunks are columns too
(:class:`InlineChunks`: index, offsets, one byte buffer), so neither writer does
per-chunk Python work beyond formatting JSON text.

Its encodings live beside it: kerchunk JSON (:mod:`.kerchunk_json`) and fsspec's
Parquet layout (:mod:`.kerchunk_parquet`) as files (:mod:`.refmap_files`), and one
immutable repository object per map (:mod:`.refmap_objects`).
"""

from __future__ import annotations

import itertools
import math
import operator
from collections.abc import Iterable, Iterator, Mapping, MutableMapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from hyperslab.errors import CorruptError, FormatVersionError

__all__ = [
    "PARQUET_THRESHOLD",
    "ArrayRefs",
    "InlineChunks",
    "RefMap",
    "Status",
    "chunk_index",
    "chunk_indices",
    "copy_ranges",
    "inline_columns",
    "inline_nbytes",
    "join_key",
]

#: maps with at least this many chunk references default to Parquet
PARQUET_THRESHOLD = 100_000
Status = Literal["virtual", "materialised", "mixed", "empty"]


class InlineChunks(MutableMapping[int, bytes]):
    """Encoded chunks carried inside a map: ``{linear chunk index: bytes}``.

    A mapping like a ``dict``, held mostly column-wise so that 10^6 tiny chunks
    cost three numpy arrays instead of 10^6 Python objects: sorted ``index``,
    ``offsets`` (``n + 1`` of them) and one ``data`` buffer, chunk ``index[i]``
    being ``data[offsets[i]:offsets[i + 1]]``. Bulk producers build it with
    :meth:`from_columns`; single assignments (materialised chunks) go into a
    small dict beside the columns. :meth:`columns` gives both parts as columns,
    in index order, for the writers.
    """

    __slots__ = ("_data", "_extra", "_extra_keys", "_index", "_offsets")

    def __init__(self, items: Mapping[int, bytes] | Iterable[tuple[int, bytes]] = ()) -> None:
        self._index = np.zeros(0, np.int64)
        self._offsets = np.zeros(1, np.int64)
        self._data = np.zeros(0, np.uint8)
        self._extra: dict[int, bytes] = {}
        self._extra_keys: np.ndarray | None = None  # sorted keys of _extra, cached
        self.update(items)

    @classmethod
    def from_columns(cls, index: np.ndarray, offsets: np.ndarray, data: Any) -> InlineChunks:
        """Adopt columns: strictly increasing ``index``, ``offsets`` from 0, ``data`` bytes."""
        idx = np.ascontiguousarray(index, dtype=np.int64).reshape(-1)
        off = np.ascontiguousarray(offsets, dtype=np.int64).reshape(-1)
        buf = np.frombuffer(data, np.uint8) if not isinstance(data, np.ndarray) else data
        buf = np.ascontiguousarray(buf, dtype=np.uint8).reshape(-1)
        if off.size != idx.size + 1 or off[0] != 0 or off[-1] > buf.size:
            raise ValueError("offsets must hold len(index) + 1 positions from 0 into data")
        if idx.size and (np.any(np.diff(off) < 0) or np.any(np.diff(idx) <= 0) or idx[0] < 0):
            raise ValueError("index must be non-negative and strictly increasing")
        out = cls()
        out._index, out._offsets, out._data = idx, off, buf
        return out

    # ------------------------------------------------------------ Mapping
    def __len__(self) -> int:
        return int(self._index.size) + len(self._extra)

    def _find(self, key: int) -> int:
        """Position of ``key`` in the columns, or -1."""
        i = int(np.searchsorted(self._index, key))
        return i if i < self._index.size and int(self._index[i]) == key else -1

    def __getitem__(self, key: object) -> bytes:
        k = _as_key(key)
        if k is None:
            raise KeyError(key)
        got = self._extra.get(k)
        if got is not None:
            return got
        i = self._find(k)
        if i < 0:
            raise KeyError(key)
        return self._data[self._offsets[i] : self._offsets[i + 1]].tobytes()

    def __contains__(self, key: object) -> bool:
        k = _as_key(key)
        return k is not None and (k in self._extra or self._find(k) >= 0)

    def __iter__(self) -> Iterator[int]:
        yield from self._index.tolist()
        yield from list(self._extra)

    def __setitem__(self, key: int, value: bytes) -> None:
        k = _as_key(key)
        if k is None:
            raise TypeError(f"inline chunk keys are integers, not {type(key).__name__}")
        i = self._find(k)
        if i >= 0:
            self._drop(i)
        self._extra[k] = value if type(value) is bytes else bytes(value)
        self._extra_keys = None

    def __delitem__(self, key: int) -> None:
        k = _as_key(key)
        if k is not None and k in self._extra:
            del self._extra[k]
            self._extra_keys = None
            return
        i = -1 if k is None else self._find(k)
        if i < 0:
            raise KeyError(key)
        self._drop(i)

    def _drop(self, i: int) -> None:
        lo, hi = int(self._offsets[i]), int(self._offsets[i + 1])
        self._data = np.concatenate([self._data[:lo], self._data[hi:]])
        self._offsets = np.concatenate([self._offsets[: i + 1], self._offsets[i + 2 :] - (hi - lo)])
        self._index = np.delete(self._index, i)

    def __repr__(self) -> str:
        return f"InlineChunks({len(self)} chunks, {self.nbytes} bytes)"

    # ------------------------------------------------------------ columns
    @property
    def nbytes(self) -> int:
        """Total size of the chunks."""
        return int(self._offsets[-1]) + sum(map(len, self._extra.values()))

    def columns(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(index, offsets, data)`` of every chunk, in index order.

        Views of the columns when there are no single assignments; otherwise the
        two parts are merged into new arrays (and kept, so this is done once).
        """
        if self._extra:
            self._fold()
        return self._index, self._offsets, self._data

    def _fold(self) -> None:
        keys = self._sorted_extra()
        vals = [self._extra[k] for k in keys.tolist()]
        lens = np.fromiter(map(len, vals), np.int64, len(vals))
        index = np.concatenate([self._index, keys])
        order = np.argsort(index, kind="stable")
        lengths = np.concatenate([np.diff(self._offsets), lens])[order]
        offsets = np.zeros(index.size + 1, np.int64)
        np.cumsum(lengths, out=offsets[1:])
        data = np.empty(int(offsets[-1]), np.uint8)
        where = np.empty(index.size, np.int64)
        where[order] = offsets[:-1]  # destination of row j of (columns, then extras)
        n = self._index.size
        copy_ranges(self._data, self._offsets[:-1], data, where[:n], np.diff(self._offsets))
        for pos, v in zip(where[n:].tolist(), vals, strict=True):
            data[pos : pos + len(v)] = np.frombuffer(v, np.uint8)
        self._index, self._offsets, self._data = index[order], offsets, data
        self._extra = {}
        self._extra_keys = None

    def _sorted_extra(self) -> np.ndarray:
        if self._extra_keys is None:
            self._extra_keys = np.sort(np.fromiter(self._extra, np.int64, len(self._extra)))
        return self._extra_keys

    def range_columns(self, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(index, offsets, data)`` of the chunks with ``lo <= index < hi``, in order.

        ``offsets`` start at 0. Views when the range holds no single assignment.
        """
        s, e = (int(x) for x in np.searchsorted(self._index, [lo, hi]))
        ek = self._sorted_extra() if self._extra else np.zeros(0, np.int64)
        es, ee = (int(x) for x in np.searchsorted(ek, [lo, hi]))
        if es == ee:
            off = self._offsets[s : e + 1]
            base = int(off[0])
            return self._index[s:e], off - base, self._data[base : int(off[-1])]
        part = InlineChunks.from_columns(
            self._index[s:e],
            self._offsets[s : e + 1] - self._offsets[s],
            self._data[int(self._offsets[s]) : int(self._offsets[e])],
        )
        for k in ek[es:ee].tolist():
            part._extra[k] = self._extra[k]
        return part.columns()


def _as_key(key: object) -> int | None:
    if isinstance(key, bool):
        return None
    try:
        return operator.index(key)  # type: ignore[arg-type]
    except TypeError:
        return None


def inline_columns(
    inline: Mapping[int, bytes], lo: int | None = None, hi: int | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(index, offsets, data)`` of any ``{index: bytes}`` mapping (optionally one range)."""
    if isinstance(inline, InlineChunks):
        if lo is None and hi is None:
            return inline.columns()
        return inline.range_columns(0 if lo is None else lo, 2**63 - 1 if hi is None else hi)
    keys = sorted(k for k in inline if (lo is None or k >= lo) and (hi is None or k < hi))
    vals = [inline[k] for k in keys]
    offsets = np.zeros(len(keys) + 1, np.int64)
    np.cumsum(np.fromiter(map(len, vals), np.int64, len(vals)), out=offsets[1:])
    return np.array(keys, np.int64), offsets, np.frombuffer(b"".join(vals), np.uint8)


def inline_nbytes(inline: Mapping[int, bytes]) -> int:
    """Total size of the inline chunks of any ``{index: bytes}`` mapping."""
    if isinstance(inline, InlineChunks):
        return inline.nbytes
    return sum(map(len, inline.values()))


def copy_ranges(
    src: np.ndarray, starts: np.ndarray, dst: np.ndarray, dests: np.ndarray, lengths: np.ndarray
) -> None:
    """``dst[dests[i]:dests[i] + lengths[i]] = src[starts[i]:...]`` for every i, vectorised."""
    big = lengths >= 1 << 16
    if big.any():
        for s, d, n in zip(
            starts[big].tolist(), dests[big].tolist(), lengths[big].tolist(), strict=True
        ):
            dst[d : d + n] = src[s : s + n]
        keep = ~big
        starts, dests, lengths = starts[keep], dests[keep], lengths[keep]
    if lengths.size == 0:
        return
    # in groups of about 1 MiB, so the per-byte index arrays stay small
    ends = np.cumsum(lengths)
    group = (ends - lengths) >> 20
    cuts = [0, *(np.flatnonzero(np.diff(group)) + 1).tolist(), lengths.size]
    for a, b in itertools.pairwise(cuts):
        ln = lengths[a:b]
        total = int(ln.sum())
        if total == 0:
            continue
        rel = np.arange(total, dtype=np.int64) - np.repeat(np.cumsum(ln) - ln, ln)
        dst[np.repeat(dests[a:b], ln) + rel] = src[np.repeat(starts[a:b], ln) + rel]


@dataclass
class ArrayRefs:
    """One Zarr v2 array: metadata plus the location of each stored chunk.

    ``index[i]`` is the C-order linear index of a chunk in the chunk grid;
    ``source[i]`` numbers an entry of :attr:`RefMap.sources`; ``offset[i]``/``length[i]``
    are the byte range of the encoded chunk there. ``inline`` holds encoded chunks
    carried inside the map (materialised data, or chunks below the inline
    threshold), ``{linear index: bytes}``: an :class:`InlineChunks` unless a plain
    ``dict`` was assigned. A chunk in neither is never written: readers return the
    fill value.
    """

    path: str
    zarray: dict[str, Any]
    attrs: dict[str, Any] = field(default_factory=dict)
    index: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    source: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))
    offset: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    length: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    inline: MutableMapping[int, bytes] = field(default_factory=InlineChunks)
    #: why (part of) this array is materialised rather than referenced in place
    reason: str | None = None

    @property
    def grid(self) -> tuple[int, ...]:
        """Number of chunks along each axis."""
        shape, chunks = self.zarray["shape"], self.zarray["chunks"]
        return tuple(math.ceil(s / c) if c else 0 for s, c in zip(shape, chunks, strict=True))

    @property
    def n_chunks(self) -> int:
        return math.prod(self.grid) if self.grid else 1

    @property
    def n_refs(self) -> int:
        return int(self.index.size) + len(self.inline)

    @property
    def status(self) -> Status:
        if self.reason is not None and self.index.size == 0:
            return "materialised"
        if self.reason is not None:
            return "mixed"
        if self.index.size == 0 and not self.inline:
            return "empty"
        return "virtual"

    def chunk_key(self, linear: int) -> str:
        """The kerchunk/Zarr v2 key of a chunk, e.g. ``entry/data/data/3.0.0``."""
        grid = self.grid
        if not grid:
            return f"{self.path}/0" if self.path else "0"
        coords = np.unravel_index(linear, grid)
        name = ".".join(str(int(c)) for c in coords)
        return f"{self.path}/{name}" if self.path else name

    def chunk_names(self, linear: np.ndarray) -> list[str]:
        """The chunk part of the keys of many chunks (``3.0.0``), vectorised."""
        grid = self.grid
        lin = np.asarray(linear, dtype=np.int64)
        if not grid:
            return ["0"] * lin.size
        if len(grid) == 1:
            return list(map(str, lin.tolist()))
        coords = np.unravel_index(lin, grid)
        return list(map(".".join, zip(*(map(str, c.tolist()) for c in coords), strict=True)))

    def inline_bytes(self) -> int:
        return inline_nbytes(self.inline)

    def sort(self) -> None:
        order = np.argsort(self.index, kind="stable")
        self.index, self.source = self.index[order], self.source[order]
        self.offset, self.length = self.offset[order], self.length[order]

    def referenced_bytes(self) -> int:
        return int(self.length.sum())


@dataclass
class RefMap:
    """A hierarchy of Zarr v2 groups and arrays over one or more sources."""

    sources: list[str] = field(default_factory=list)
    groups: dict[str, dict[str, Any]] = field(default_factory=lambda: {"": {}})
    arrays: dict[str, ArrayRefs] = field(default_factory=dict)

    @property
    def n_refs(self) -> int:
        return sum(a.n_refs for a in self.arrays.values())

    def source_ranges(self, source: int) -> tuple[np.ndarray, np.ndarray]:
        """``(offsets, lengths)`` of every chunk referenced in source ``source`` (an
        index into :attr:`sources`), over all arrays, in no particular order."""
        offs, lens = [], []
        for arr in self.arrays.values():
            mine = arr.source == source
            offs.append(arr.offset[mine])
            lens.append(arr.length[mine])
        if not offs:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        return np.concatenate(offs).astype(np.int64), np.concatenate(lens).astype(np.int64)

    def rename_sources(self, names: Mapping[str, str]) -> None:
        """Rename sources in place (``{old url: new url}``; others keep theirs). Two
        sources renamed to one name become one source, at the first one's position,
        so the map is the one that would have been built with the new names."""
        renamed = [names.get(u, u) for u in self.sources]
        first: dict[str, int] = {}
        merged: list[str] = []
        new_index = np.zeros(len(renamed), np.int64)
        for i, url in enumerate(renamed):
            if url not in first:
                first[url] = len(merged)
                merged.append(url)
            new_index[i] = first[url]
        if len(merged) != len(renamed):
            for arr in self.arrays.values():
                if arr.source.size:
                    arr.source = new_index[arr.source].astype(arr.source.dtype)
        self.sources = merged

    def metadata_items(self) -> Iterator[tuple[str, dict[str, Any]]]:
        """(key, JSON object) for every Zarr v2 metadata document."""
        for path in sorted(self.groups):
            prefix = f"{path}/" if path else ""
            yield f"{prefix}.zgroup", {"zarr_format": 2}
            if self.groups[path]:
                yield f"{prefix}.zattrs", self.groups[path]
        for path in sorted(self.arrays):
            arr = self.arrays[path]
            yield f"{path}/.zarray", arr.zarray
            if arr.attrs:
                yield f"{path}/.zattrs", arr.attrs

    @classmethod
    def from_metadata(cls, meta: Mapping[str, Any]) -> RefMap:
        """A map of the groups and arrays that Zarr v2 metadata ``{key: document}``
        describes, without chunk references."""
        out = cls(groups={})
        for key, val in meta.items():
            path, _, name = key.rpartition("/")
            if name == ".zgroup":
                out.groups.setdefault(path, {})
            elif name == ".zarray":
                if not isinstance(val, dict) or val.get("zarr_format") != 2:
                    raise FormatVersionError(f"{key}: only Zarr v2 array metadata is supported")
                out.arrays[path] = ArrayRefs(path=path, zarray=val)
        for key, val in meta.items():
            path, _, name = key.rpartition("/")
            if name == ".zattrs":
                if path in out.arrays:
                    out.arrays[path].attrs = dict(val)
                else:
                    out.groups[path] = dict(val)
        out.groups.setdefault("", {})
        return out


def join_key(path: str, name: str) -> str:
    """The Zarr key of chunk ``name`` of the array at ``path``."""
    return f"{path}/{name}" if path else name


def chunk_indices(names: list[str], grid: tuple[int, ...], path: str) -> np.ndarray:
    """Linear indices of many chunk names (``3.0.1``), vectorised.

    Anything unusual falls back to :func:`chunk_index`, key by key, which names
    the offending key.
    """
    try:
        if not grid:
            if all(n == "0" for n in names):
                return np.zeros(len(names), np.int64)
        elif len(grid) == 1 or all(n.count(".") == len(grid) - 1 for n in names):
            # int() per part, as the per-key parser does (and faster than numpy's parser)
            parts = names if len(grid) == 1 else ".".join(names).split(".")
            coords = np.fromiter(map(int, parts), np.int64, len(parts)).reshape(-1, len(grid))
            if (coords >= 0).all() and (coords < np.array(grid, np.int64)).all():
                return np.asarray(np.ravel_multi_index(tuple(coords.T), grid), np.int64)
    except (ValueError, OverflowError):
        pass
    return np.array([chunk_index(n, grid, join_key(path, n)) for n in names], np.int64)


def chunk_index(name: str, grid: tuple[int, ...], key: str) -> int:
    """The linear (C-order) index of chunk ``name`` (``3.0.1``) in a chunk grid;
    CorruptError naming ``key`` when the name is not a chunk of that grid."""
    try:
        coords = [int(c) for c in name.split(".")]
    except ValueError as exc:
        raise CorruptError(f"chunk key {key!r} is not of the form i.j.k") from exc
    if not grid:
        if coords != [0]:
            raise CorruptError(f"chunk key {key!r} out of range for a scalar array")
        return 0
    if len(coords) != len(grid) or any(c < 0 or c >= g for c, g in zip(coords, grid, strict=True)):
        raise CorruptError(f"chunk key {key!r} is outside the chunk grid {grid}")
    return int(np.ravel_multi_index(coords, grid))
