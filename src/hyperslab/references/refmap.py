"""The in-memory reference model and its kerchunk persistence (JSON and Parquet).

A :class:`RefMap` is what the converter produces and every other package consumes:
Zarr v2 metadata for a hierarchy of groups and arrays, plus, per array, where
each chunk's encoded bytes live. Chunk references are kept column-wise in numpy
arrays (linear chunk index, source number, offset, length) rather than as a dict
of string keys: a 10^6-chunk array costs ~26 MB, not the ~800 MB a dict of
kerchunk key strings and lists costs. Inline chunks are columns too
(:class:`InlineChunks`: index, offsets, one byte buffer), so neither writer does
per-chunk Python work beyond formatting JSON text.

On disk we write kerchunk's formats unchanged, so plain fsspec reads them:

* JSON, version 1: ``{"version": 1, "templates": {"s0": url}, "refs": {key: value}}``
  where a value is a JSON string of metadata, ``"base64:..."`` inline bytes, or
  ``["{{s0}}", offset, length]``. Maps with :data:`TEMPLATE_LIMIT` or more URL
  references write ``[url, offset, length]`` and no templates.
* Parquet (fsspec ``LazyReferenceMapper`` layout): a directory with ``.zmetadata``
  (``{"metadata": {key: json}, "record_size": N}``) and per array
  ``<array>/refs.<k>.parq`` with columns ``path`` (dictionary-encoded strings),
  ``offset, size, raw``, one row per chunk in C order of the chunk grid,
  ``k = linear_index // record_size``.
"""

from __future__ import annotations

import base64
import itertools
import json
import math
import operator
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Mapping, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Literal

import numpy as np

from hyperslab.errors import BadInputError, CorruptError, FormatVersionError, NotFoundError

__all__ = [
    "DEFAULT_RECORD_SIZE",
    "PARQUET_THRESHOLD",
    "TEMPLATE_LIMIT",
    "ArrayRefs",
    "InlineChunks",
    "RefMap",
    "choose_format",
    "copy_ranges",
    "inline_columns",
    "inline_nbytes",
    "read_refmap",
    "write_refmap",
]

#: maps with at least this many chunk references default to Parquet
PARQUET_THRESHOLD = 100_000
#: rows per Parquet file. fsspec's LazyReferenceMapper loads a whole record (through
#: pandas) on the first access to any of its chunks, so smaller records open faster
#: and hold less: at 10^6 references, open + first chunk takes about 0.1 s and 50 MB
#: less than with 100,000 rows (kerchunk's refs_to_dataframe default), for ten times
#: as many files. 10,000 is LazyReferenceMapper.create's own default.
DEFAULT_RECORD_SIZE = 10_000
#: JSON maps with fewer URL references than this name their sources through
#: ``{{sN}}`` templates (a smaller file); larger maps write every URL in full, because
#: fsspec renders templates one reference at a time in Python (about 3 µs each,
#: which doubles the time to open a 10^6-reference map)
TEMPLATE_LIMIT = 10_000
#: chunk references formatted per batch when writing JSON (bounds peak memory)
_JSON_BATCH = 100_000

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

    # ---------------------------------------------------------------- JSON
    def use_templates(self, templates: bool | None = None) -> bool:
        """Whether JSON output names sources through ``{{sN}}`` templates (see TEMPLATE_LIMIT)."""
        if templates is not None:
            return templates and bool(self.sources)
        n = sum(int(a.index.size) for a in self.arrays.values())
        return bool(self.sources) and 0 < n < TEMPLATE_LIMIT

    def _url_literals(self, templates: bool) -> list[str]:
        if templates:
            return [f"{{{{s{i}}}}}" for i in range(len(self.sources))]
        return list(self.sources)

    def to_kerchunk(self, *, templates: bool | None = None) -> dict[str, Any]:
        """The kerchunk version-1 reference dict.

        Sources are written through ``{{sN}}`` templates for small maps and as full
        URLs for large ones (``templates`` forces either; see :data:`TEMPLATE_LIMIT`).
        Per array, references come in index order, then inline chunks in index order.
        """
        use = self.use_templates(templates)
        urls = self._url_literals(use)
        refs: dict[str, Any] = {k: _dumps(v) for k, v in self.metadata_items()}
        for arr in self.arrays.values():
            pre = f"{arr.path}/" if arr.path else ""
            for a, b in _row_batches(arr.index.size):
                names = arr.chunk_names(arr.index[a:b])
                srcs = [urls[i] for i in arr.source[a:b].tolist()]
                offs, lens = arr.offset[a:b].tolist(), arr.length[a:b].tolist()
                refs.update(
                    zip(
                        [pre + k for k in names],
                        [[u, o, n] for u, o, n in zip(srcs, offs, lens, strict=True)],
                        strict=True,
                    )
                )
            for names, text, pos in _inline_batches(arr):
                refs.update(
                    zip(
                        [pre + k for k in names],
                        ["base64:" + text[x:y] for x, y in itertools.pairwise(pos)],
                        strict=True,
                    )
                )
        doc: dict[str, Any] = {"version": 1}
        if use:
            doc["templates"] = {f"s{i}": url for i, url in enumerate(self.sources)}
        doc["refs"] = refs
        return doc

    def write_json(self, fh: IO[str], *, templates: bool | None = None) -> None:
        """Write :meth:`to_kerchunk`'s document as compact JSON, without building it.

        The chunk entries are formatted a batch at a time from the numpy columns, so
        a 10^6-chunk map needs neither 10^6 Python lists nor one giant dict.
        """
        use = self.use_templates(templates)
        urls = [json.dumps(u) for u in self._url_literals(use)]
        fh.write('{"version":1,')
        if use:
            tmpl = {f"s{i}": url for i, url in enumerate(self.sources)}
            fh.write(f'"templates":{_dumps(tmpl)},')
        fh.write('"refs":{')
        fh.write(
            ",".join(f"{json.dumps(k)}:{json.dumps(_dumps(v))}" for k, v in self.metadata_items())
        )
        for arr in self.arrays.values():
            # the opening quote and the escaped "path/" every key of this array starts with
            pre = json.dumps(f"{arr.path}/" if arr.path else "")[:-1]
            for a, b in _row_batches(arr.index.size):
                names = arr.chunk_names(arr.index[a:b])
                offs, lens = arr.offset[a:b].tolist(), arr.length[a:b].tolist()
                src = arr.source[a:b]
                if (src == src[0]).all():
                    u = urls[int(src[0])]
                    parts = [
                        f'{pre}{k}":[{u},{o},{n}]'
                        for k, o, n in zip(names, offs, lens, strict=True)
                    ]
                else:
                    srcs = [urls[i] for i in src.tolist()]
                    parts = [
                        f'{pre}{k}":[{u},{o},{n}]'
                        for k, u, o, n in zip(names, srcs, offs, lens, strict=True)
                    ]
                fh.write(",")
                fh.write(",".join(parts))
            for names, text, pos in _inline_batches(arr):
                parts = [
                    f'{pre}{k}":"base64:{text[x:y]}"'
                    for k, x, y in zip(names, pos[:-1], pos[1:], strict=True)
                ]
                fh.write(",")
                fh.write(",".join(parts))
        fh.write("}}")

    @classmethod
    def from_kerchunk(cls, doc: Mapping[str, Any]) -> RefMap:
        """Parse a kerchunk version-1 (or version-0) reference dict."""
        if not isinstance(doc, Mapping):
            raise CorruptError("reference map is not a JSON object")
        version = doc.get("version", 0 if "refs" not in doc else 1)
        if version not in (0, 1):
            raise FormatVersionError(
                f"kerchunk reference version {version!r} is not supported (1 is)"
            )
        refs = doc.get("refs", doc) if version == 1 else doc
        if not isinstance(refs, Mapping):
            raise CorruptError("reference map has no 'refs' object")
        templates = {str(k): str(v) for k, v in (doc.get("templates") or {}).items()}
        meta: dict[str, Any] = {}
        # chunk keys grouped by array: path -> (chunk names, values)
        chunks: dict[str, tuple[list[str], list[Any]]] = {}
        for key, val in refs.items():
            path, _, name = key.rpartition("/")
            if name.startswith(".z"):
                meta[key] = json.loads(val) if isinstance(val, str | bytes) else val
                continue
            group = chunks.get(path)
            if group is None:
                group = chunks[path] = ([], [])
            group[0].append(name)
            group[1].append(val)
        out = cls._from_metadata(meta)
        source_ids: dict[str, int] = {}
        rendered: dict[str, int] = {}  # url as written -> source number
        for path in list(chunks):
            names, vals = chunks.pop(path)  # dropped array by array: 10^6 keys are common
            arr = out.arrays.get(path)
            if arr is None:
                raise CorruptError(
                    f"chunk reference {_join_key(path, names[0])!r} has no array metadata"
                )
            lins = _names_to_linear(names, arr.grid, path)
            is_ref = np.fromiter((type(v) is list for v in vals), bool, len(vals))
            refs_at = np.flatnonzero(is_ref)
            if refs_at.size:
                ref_vals = vals if refs_at.size == len(vals) else [vals[i] for i in refs_at]
                if any(len(v) != 3 for v in ref_vals):
                    bad = next(i for i in refs_at.tolist() if len(vals[i]) != 3)
                    key = _join_key(path, names[bad])
                    if len(vals[bad]) == 1:
                        _render(str(vals[bad][0]), templates)  # an undefined template first
                        raise BadInputError(
                            f"whole-file reference {key!r} is not supported; give offset and length"
                        )
                    raise CorruptError(
                        f"reference {key!r} is neither bytes nor [url, offset, length]"
                    )
                urls, offs, lens = (list(map(operator.itemgetter(j), ref_vals)) for j in range(3))
                for u in dict.fromkeys(map(str, urls)):
                    if u not in rendered:
                        url = _render(u, templates)
                        rendered[u] = source_ids.setdefault(url, len(source_ids))
                try:
                    arr.index = lins[refs_at]
                    arr.source = np.fromiter(
                        (rendered[u if type(u) is str else str(u)] for u in urls),
                        np.int32,
                        len(urls),
                    )
                    arr.offset = np.array(offs, dtype=np.int64)
                    arr.length = np.array(lens, dtype=np.int64)
                except (TypeError, ValueError, OverflowError) as exc:
                    raise CorruptError(
                        f"array {path!r} has a reference whose offset or length is not an "
                        f"integer: {exc}"
                    ) from exc
                arr.sort()
            if refs_at.size < len(vals):
                inl_lin: list[int] = []
                inl_val: list[bytes] = []
                for i in np.flatnonzero(~is_ref).tolist():
                    val = vals[i]
                    if isinstance(val, str):
                        inl_val.append(_decode_inline(val))
                    elif isinstance(val, bytes):
                        inl_val.append(val)
                    else:
                        raise CorruptError(
                            f"reference {_join_key(path, names[i])!r} is neither bytes nor "
                            "[url, offset, length]"
                        )
                    inl_lin.append(int(lins[i]))
                arr.inline = _inline_from_lists(inl_lin, inl_val, path)
        out.sources = list(source_ids)
        return out

    @classmethod
    def _from_metadata(cls, meta: Mapping[str, Any]) -> RefMap:
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

    # ------------------------------------------------------------- Parquet
    def write_parquet(self, directory: Path, *, record_size: int = DEFAULT_RECORD_SIZE) -> None:
        """Write fsspec's lazy Parquet reference layout into ``directory`` (must not exist).

        Columns are built from the numpy columns through Arrow buffers: ``path`` is
        dictionary-encoded (pandas reads it as a categorical, as in kerchunk's own
        maps), ``raw`` is one binary array over the inline chunks' bytes.
        """
        import pyarrow as pa
        import pyarrow.parquet as pq

        meta = dict(self.metadata_items())
        directory.mkdir(parents=True)
        (directory / ".zmetadata").write_text(
            json.dumps({"metadata": meta, "record_size": record_size}, allow_nan=True)
        )
        sources = _arrow_strings(self.sources)
        for arr in self.arrays.values():
            n = arr.n_chunks
            if arr.n_refs == 0:
                continue
            adir = directory / arr.path
            adir.mkdir(parents=True, exist_ok=True)
            inl_index, inl_off, inl_data = inline_columns(arr.inline)
            for rec in range(math.ceil(n / record_size)):
                lo, hi = rec * record_size, min(n, (rec + 1) * record_size)
                s, e = (int(x) for x in np.searchsorted(arr.index, [lo, hi]))
                si, ei = (int(x) for x in np.searchsorted(inl_index, [lo, hi]))
                if e == s and ei == si:
                    continue  # a record with no chunk: fsspec's KeyError → fill value
                rows = hi - lo
                sel = arr.index[s:e] - lo
                codes = np.zeros(rows, np.int32)
                codes[sel] = arr.source[s:e]
                offset = np.zeros(rows, np.int64)
                size = np.zeros(rows, np.int64)
                offset[sel] = arr.offset[s:e]
                size[sel] = arr.length[s:e]
                indices = _arrow_primitive(pa.int32(), codes, _mask_at(rows, sel))
                table = pa.table(
                    {
                        "path": pa.DictionaryArray.from_arrays(indices, sources),
                        "offset": _arrow_primitive(pa.int64(), offset),
                        "size": _arrow_primitive(pa.int64(), size),
                        "raw": _arrow_binary(
                            rows,
                            inl_index[si:ei] - lo,
                            inl_off[si : ei + 1],
                            inl_data,
                        ),
                    }
                )
                pq.write_table(table, adir / f"refs.{rec}.parq", compression="zstd")

    @classmethod
    def read_parquet(cls, directory: Path) -> RefMap:
        import pyarrow.parquet as pq

        try:
            doc = json.loads((directory / ".zmetadata").read_text())
            meta, record_size = doc["metadata"], int(doc["record_size"])
        except FileNotFoundError as exc:
            raise NotFoundError(
                f"{directory} has no .zmetadata: not a Parquet reference map"
            ) from exc
        except (ValueError, KeyError, TypeError) as exc:
            raise CorruptError(f"{directory}/.zmetadata is malformed: {exc}") from exc
        out = cls._from_metadata(meta)
        source_ids: dict[str, int] = {}
        for arr in out.arrays.values():
            refs: list[tuple[np.ndarray, ...]] = []
            inl: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
            adir = directory / arr.path
            for rec in range(math.ceil(arr.n_chunks / record_size)):
                f = adir / f"refs.{rec}.parq"
                if not f.exists():
                    continue
                try:
                    t = pq.read_table(f, read_dictionary=["path"])
                    row = rec * record_size
                    for batch in t.to_batches():
                        r, b = _parquet_rows(
                            row,
                            batch.column("path"),
                            batch.column("offset"),
                            batch.column("size"),
                            batch.column("raw") if "raw" in batch.schema.names else None,
                            source_ids,
                        )
                        refs.append(r)
                        if b is not None:
                            inl.append(b)
                        row += batch.num_rows
                except CorruptError:
                    raise
                except Exception as exc:
                    raise CorruptError(f"{f} is not a readable Parquet file: {exc}") from exc
            if refs:
                arr.index = np.concatenate([r[0] for r in refs]).astype(np.int64)
                arr.source = np.concatenate([r[1] for r in refs]).astype(np.int32)
                arr.offset = np.concatenate([r[2] for r in refs]).astype(np.int64)
                arr.length = np.concatenate([r[3] for r in refs]).astype(np.int64)
            if inl:
                index = np.concatenate([x[0] for x in inl])
                sizes = np.concatenate([np.diff(x[1]) for x in inl])
                offsets = np.zeros(index.size + 1, np.int64)
                np.cumsum(sizes, out=offsets[1:])
                data = np.concatenate([x[2] for x in inl])
                arr.inline = InlineChunks.from_columns(index, offsets, data)
        out.sources = list(source_ids)
        return out


# ------------------------------------------------------------------ helpers
def _dumps(obj: Any) -> str:
    return json.dumps(obj, allow_nan=True, separators=(",", ":"))


def _join_key(path: str, name: str) -> str:
    return f"{path}/{name}" if path else name


def _row_batches(n: int, size: int = _JSON_BATCH) -> Iterator[tuple[int, int]]:
    for a in range(0, n, size):
        yield a, min(n, a + size)


#: at most this many bytes of inline chunks are base64-encoded per batch
_B64_BATCH_BYTES = 8 << 20
_B64_ALPHABET = np.frombuffer(
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/", np.uint8
)


def _inline_batches(arr: ArrayRefs) -> Iterator[tuple[list[str], str, list[int]]]:
    """Batches of (chunk names, base64 text, row bounds in it) of the inline chunks, in order."""
    index, offsets, data = inline_columns(arr.inline)
    n, a = int(index.size), 0
    while a < n:
        limit = int(np.searchsorted(offsets, offsets[a] + _B64_BATCH_BYTES, side="right")) - 1
        b = max(a + 1, min(n, a + _JSON_BATCH, limit))
        lo, hi = int(offsets[a]), int(offsets[b])
        text, pos = _b64_rows(data[lo:hi], offsets[a : b + 1] - lo)
        yield arr.chunk_names(index[a:b]), text, pos
        a = b


def _b64_rows(data: np.ndarray, offsets: np.ndarray) -> tuple[str, list[int]]:
    """Standard base64 (with padding) of every row ``data[offsets[i]:offsets[i + 1]]``.

    Returns the encodings concatenated as one ASCII string and the row bounds in
    it: row i is ``text[pos[i]:pos[i + 1]]``, equal to ``base64.b64encode(row)``.
    """
    lens = np.diff(offsets)
    groups = (lens + 2) // 3
    pad = 3 * groups - lens  # zero bytes appended to each row: 0, 1 or 2
    ends = np.cumsum(3 * groups)
    total = int(ends[-1]) if ends.size else 0
    if total == data.size:
        src = data
    else:
        keep = np.ones(total, bool)
        keep[ends[pad >= 1] - 1] = False
        keep[ends[pad == 2] - 2] = False
        src = np.zeros(total, np.uint8)
        src[keep] = data
    t = src.reshape(-1, 3)
    b0, b1, b2 = t[:, 0], t[:, 1], t[:, 2]
    out = np.empty((t.shape[0], 4), np.uint8)
    out[:, 0] = _B64_ALPHABET[b0 >> 2]
    out[:, 1] = _B64_ALPHABET[((b0 & 3) << 4) | (b1 >> 4)]
    out[:, 2] = _B64_ALPHABET[((b1 & 15) << 2) | (b2 >> 6)]
    out[:, 3] = _B64_ALPHABET[b2 & 63]
    flat = out.reshape(-1)
    oends = 4 * np.cumsum(groups)
    flat[oends[pad >= 1] - 1] = ord("=")
    flat[oends[pad == 2] - 2] = ord("=")
    return flat.tobytes().decode("ascii"), [0, *oends.tolist()]


def _encode_inline(data: bytes) -> str:
    # kerchunk convention: valid ASCII text may be stored as is, anything else base64
    return "base64:" + base64.b64encode(data).decode("ascii")


def _decode_inline(val: str) -> bytes:
    if val.startswith("base64:"):
        try:
            return base64.b64decode(val[7:], validate=True)
        except ValueError as exc:
            raise CorruptError(f"inline chunk is not valid base64: {exc}") from exc
    return val.encode()


def _inline_from_lists(lins: list[int], vals: list[bytes], path: str) -> InlineChunks:
    index = np.array(lins, np.int64)
    order = np.argsort(index, kind="stable")
    index = index[order]
    if index.size > 1 and not (np.diff(index) > 0).all():
        dup = int(index[np.flatnonzero(np.diff(index) == 0)[0]])
        raise CorruptError(f"array {path!r} has two inline chunks with linear index {dup}")
    ordered = [vals[i] for i in order.tolist()]
    offsets = np.zeros(index.size + 1, np.int64)
    np.cumsum(np.fromiter(map(len, ordered), np.int64, len(ordered)), out=offsets[1:])
    return InlineChunks.from_columns(index, offsets, b"".join(ordered))


def _render(url: str, templates: Mapping[str, str]) -> str:
    if "{{" not in url:
        return url
    for name, value in templates.items():
        url = url.replace("{{" + name + "}}", value)
    if "{{" in url:
        raise CorruptError(f"reference url {url!r} uses an undefined template")
    return url


def _names_to_linear(names: list[str], grid: tuple[int, ...], path: str) -> np.ndarray:
    """Linear indices of many chunk names (``3.0.1``), vectorised.

    Anything unusual falls back to :func:`_key_to_linear`, key by key, which names
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
    return np.array([_key_to_linear(n, grid, _join_key(path, n)) for n in names], np.int64)


def _key_to_linear(name: str, grid: tuple[int, ...], key: str) -> int:
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


# Arrow arrays are built from and read through their buffers: no per-row Python
# objects, and no pandas (pyarrow imports pandas the first time pa.array is called).
def _mask_at(n: int, where: np.ndarray) -> np.ndarray:
    mask = np.zeros(n, bool)
    mask[where] = True
    return mask


def _arrow_strings(values: list[str]) -> Any:
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


def _arrow_primitive(typ: Any, values: np.ndarray, valid: np.ndarray | None = None) -> Any:
    import pyarrow as pa

    bitmap = None if valid is None else pa.py_buffer(np.packbits(valid, bitorder="little"))
    nulls = 0 if valid is None else int(valid.size - np.count_nonzero(valid))
    return pa.Array.from_buffers(
        typ, values.size, [bitmap, pa.py_buffer(np.ascontiguousarray(values))], null_count=nulls
    )


def _arrow_binary(rows: int, where: np.ndarray, offsets: np.ndarray, data: np.ndarray) -> Any:
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
            pa.py_buffer(np.packbits(_mask_at(rows, where), bitorder="little")),
            pa.py_buffer(pos if large else pos.astype(np.int32)),
            pa.py_buffer(np.ascontiguousarray(data[lo:hi])),
        ],
        null_count=rows - int(where.size),
    )


def _arrow_validity(a: Any) -> np.ndarray:
    import pyarrow as pa

    n = len(a)
    if pa.types.is_null(a.type):
        return np.zeros(n, bool)
    if a.null_count == 0:
        return np.ones(n, bool)
    bits = np.unpackbits(np.frombuffer(a.buffers()[0], np.uint8), bitorder="little")
    return bits[a.offset : a.offset + n].astype(bool)


def _arrow_ints(a: Any) -> tuple[np.ndarray, np.ndarray]:
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
    return values, _arrow_validity(a)


def _arrow_int_column(col: Any) -> tuple[np.ndarray, np.ndarray]:
    """(values, valid) of an integer ChunkedArray, read from its buffers.

    ``to_numpy`` would do, but pyarrow imports pandas the first time it is called
    (~0.5 s, ~50 MB), which a one-shot commit, search or store open should not pay.
    """
    parts = [_arrow_ints(c) for c in col.chunks]
    if not parts:
        return np.zeros(0, np.int64), np.zeros(0, bool)
    if len(parts) == 1:
        return parts[0]
    return np.concatenate([v for v, _ in parts]), np.concatenate([m for _, m in parts])


def _parquet_rows(
    row0: int,
    path: Any,
    offset: Any,
    size: Any,
    raw: Any,
    source_ids: dict[str, int],
) -> tuple[tuple[np.ndarray, ...], tuple[np.ndarray, np.ndarray, np.ndarray] | None]:
    """One record batch of a Parquet map: its references and its inline chunks.

    A row with ``raw`` bytes is inline; otherwise a row with a ``path`` is a
    reference; otherwise the chunk was never written.
    """
    import pyarrow as pa

    m = len(path)
    if pa.types.is_dictionary(path.type):
        codes, pvalid = _arrow_ints(path.indices)
        dictionary = path.dictionary.to_pylist()
    elif pa.types.is_null(path.type):
        codes, pvalid, dictionary = np.zeros(m, np.int64), np.zeros(m, bool), []
    else:  # plain strings
        values = path.to_pylist()
        dictionary = list(dict.fromkeys(v for v in values if v is not None))
        where = {v: i for i, v in enumerate(dictionary)}
        codes = np.array([-1 if v is None else where[v] for v in values], np.int64)
        pvalid = codes >= 0
    rvalid = np.zeros(m, bool) if raw is None else _arrow_validity(raw)
    sel = np.flatnonzero(pvalid & ~rvalid)
    table = np.full(len(dictionary), -1, np.int32)
    used = codes[sel]
    for c in np.unique(used).tolist():
        table[c] = source_ids.setdefault(str(dictionary[c]), len(source_ids))
    offs, ovalid = _arrow_ints(offset)
    sizes, svalid = _arrow_ints(size)
    if not (ovalid[sel].all() and svalid[sel].all()):
        raise CorruptError("a reference row has no offset or size")
    refs = (row0 + sel, table[used], offs[sel], sizes[sel])
    rsel = np.flatnonzero(rvalid)
    if rsel.size == 0:
        return refs, None
    out_off, data = _arrow_binary_rows(raw, rsel)
    return refs, (row0 + rsel, out_off, data)


def _arrow_binary_rows(raw: Any, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
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


def choose_format(path: str | Path, n_refs: int) -> Literal["json", "parquet"]:
    """``.json`` → JSON, ``.parquet``/``.parq``/directory → Parquet, otherwise by size."""
    p = str(path)
    if p.endswith(".json"):
        return "json"
    if p.endswith((".parquet", ".parq", "/")):
        return "parquet"
    return "parquet" if n_refs >= PARQUET_THRESHOLD else "json"


def write_refmap(refmap: RefMap, path: Path, fmt: Literal["json", "parquet"] | None = None) -> Path:
    """Write atomically: into a temporary sibling, then rename over ``path``.

    A crash leaves either the old map or the new one, never half of one (a
    stale ``.hyperslab-tmp-*`` sibling at worst).
    """
    fmt = fmt or choose_format(path, refmap.n_refs)
    path = path.absolute()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.hyperslab-tmp-", dir=path.parent))
    try:
        if fmt == "json":
            target = tmp / "refs.json"
            with open(target, "w", encoding="utf-8") as fh:
                refmap.write_json(fh)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(target, path)
        else:
            target = tmp / "refs.parquet"
            refmap.write_parquet(target)
            if path.exists():
                if not (path / ".zmetadata").exists():
                    raise BadInputError(
                        f"{path} exists and is not a Parquet reference map; not overwriting"
                    )
                old = tmp / "old"
                os.replace(path, old)
            os.replace(target, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def read_refmap(path: Path | str) -> RefMap:
    """Read a JSON or Parquet reference map written by hyperslab or kerchunk."""
    p = Path(path)
    if p.is_dir():
        return RefMap.read_parquet(p)
    try:
        data = p.read_bytes()
    except FileNotFoundError as exc:
        raise NotFoundError(f"reference map {p} does not exist") from exc
    try:
        # decode first and drop the bytes, so the file is not held twice while parsing
        text = data.decode(json.detect_encoding(data), "surrogatepass")
        del data
        doc = json.loads(text)
        del text
    except ValueError as exc:
        raise CorruptError(f"reference map {p} is not valid JSON: {exc}") from exc
    return RefMap.from_kerchunk(doc)
