"""The in-memory reference model and its kerchunk persistence (JSON and Parquet).

A :class:`RefMap` is what the converter produces and every other package consumes:
Zarr v2 metadata for a hierarchy of groups and arrays, plus, per array, where
each chunk's encoded bytes live. Chunk references are kept column-wise in numpy
arrays (linear chunk index, source number, offset, length) rather than as a dict
of string keys: a 10^6-chunk array costs ~26 MB, not the ~800 MB a dict of
kerchunk key strings and lists costs, and the Parquet writer needs no per-chunk
Python work at all.

On disk we write kerchunk's formats unchanged, so plain fsspec reads them:

* JSON, version 1: ``{"version": 1, "templates": {"s0": url}, "refs": {key: value}}``
  where a value is a JSON string of metadata, ``"base64:..."`` inline bytes, or
  ``["{{s0}}", offset, length]``.
* Parquet (fsspec ``LazyReferenceMapper`` layout): a directory with ``.zmetadata``
  (``{"metadata": {key: json}, "record_size": N}``) and per array
  ``<array>/refs.<k>.parq`` with columns ``path, offset, size, raw``, one row per
  chunk in C order of the chunk grid, ``k = linear_index // record_size``.
"""

from __future__ import annotations

import base64
import io
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from hyperslab.errors import BadInputError, CorruptError, FormatVersionError, NotFoundError

__all__ = [
    "DEFAULT_RECORD_SIZE",
    "PARQUET_THRESHOLD",
    "ArrayRefs",
    "RefMap",
    "choose_format",
    "read_refmap",
    "write_refmap",
]

#: maps with at least this many chunk references default to Parquet
PARQUET_THRESHOLD = 100_000
#: rows per Parquet file (fsspec's LazyReferenceMapper reads one file per record)
DEFAULT_RECORD_SIZE = 100_000

Status = Literal["virtual", "materialised", "mixed", "empty"]


@dataclass
class ArrayRefs:
    """One Zarr v2 array: metadata plus the location of each stored chunk.

    ``index[i]`` is the C-order linear index of a chunk in the chunk grid;
    ``source[i]`` numbers an entry of :attr:`RefMap.sources`; ``offset[i]``/``length[i]``
    are the byte range of the encoded chunk there. ``inline`` holds encoded chunks
    carried inside the map (materialised data, or chunks below the inline
    threshold). A chunk in neither is never written: readers return the fill value.
    """

    path: str
    zarray: dict[str, Any]
    attrs: dict[str, Any] = field(default_factory=dict)
    index: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    source: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))
    offset: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    length: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    inline: dict[int, bytes] = field(default_factory=dict)
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
    def to_kerchunk(self) -> dict[str, Any]:
        """The kerchunk version-1 reference dict (sources through templates)."""
        refs: dict[str, Any] = {k: _dumps(v) for k, v in self.metadata_items()}
        names = [f"{{{{s{i}}}}}" for i in range(len(self.sources))]
        for arr in self.arrays.values():
            for i in range(arr.index.size):
                refs[arr.chunk_key(int(arr.index[i]))] = [
                    names[int(arr.source[i])],
                    int(arr.offset[i]),
                    int(arr.length[i]),
                ]
            for lin, data in arr.inline.items():
                refs[arr.chunk_key(lin)] = _encode_inline(data)
        return {
            "version": 1,
            "templates": {f"s{i}": url for i, url in enumerate(self.sources)},
            "refs": refs,
        }

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
        chunks: dict[str, Any] = {}
        for key, val in refs.items():
            if key.rsplit("/", 1)[-1].startswith(".z"):
                meta[key] = json.loads(val) if isinstance(val, str | bytes) else val
            else:
                chunks[key] = val
        out = cls._from_metadata(meta)
        source_ids: dict[str, int] = {}
        per_array: dict[str, list[tuple[int, int, int, int]]] = {}
        for key, val in chunks.items():
            path, _, name = key.rpartition("/")
            arr = out.arrays.get(path)
            if arr is None:
                raise CorruptError(f"chunk reference {key!r} has no array metadata")
            lin = _key_to_linear(name, arr.grid, key)
            if isinstance(val, str):
                arr.inline[lin] = _decode_inline(val)
                continue
            if isinstance(val, bytes):
                arr.inline[lin] = val
                continue
            if not isinstance(val, list) or len(val) not in (1, 3):
                raise CorruptError(f"reference {key!r} is neither bytes nor [url, offset, length]")
            url = _render(str(val[0]), templates)
            if len(val) == 1:
                raise BadInputError(
                    f"whole-file reference {key!r} is not supported; give offset and length"
                )
            sid = source_ids.setdefault(url, len(source_ids))
            per_array.setdefault(path, []).append((lin, sid, int(val[1]), int(val[2])))
        out.sources = list(source_ids)
        for path, rows in per_array.items():
            a = np.array(rows, dtype=np.int64).reshape(-1, 4)
            arr = out.arrays[path]
            arr.index, arr.source = a[:, 0], a[:, 1].astype(np.int32)
            arr.offset, arr.length = a[:, 2], a[:, 3]
            arr.sort()
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
        """Write fsspec's lazy Parquet reference layout into ``directory`` (must not exist)."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        meta = dict(self.metadata_items())
        directory.mkdir(parents=True)
        (directory / ".zmetadata").write_text(
            json.dumps({"metadata": meta, "record_size": record_size}, allow_nan=True)
        )
        sources = np.array(self.sources, dtype=object)
        for arr in self.arrays.values():
            n = arr.n_chunks
            if arr.n_refs == 0:
                continue
            adir = directory / arr.path
            adir.mkdir(parents=True, exist_ok=True)
            inline_idx = np.fromiter(arr.inline.keys(), dtype=np.int64, count=len(arr.inline))
            for rec in range(math.ceil(n / record_size)):
                lo, hi = rec * record_size, min(n, (rec + 1) * record_size)
                s, e = np.searchsorted(arr.index, [lo, hi])
                inl = inline_idx[(inline_idx >= lo) & (inline_idx < hi)]
                if e == s and inl.size == 0:
                    continue  # a record with no chunk: fsspec's KeyError → fill value
                rows = hi - lo
                path = np.full(rows, None, dtype=object)
                offset = np.zeros(rows, np.int64)
                size = np.zeros(rows, np.int64)
                sel = arr.index[s:e] - lo
                path[sel] = sources[arr.source[s:e]]
                offset[sel] = arr.offset[s:e]
                size[sel] = arr.length[s:e]
                raw: list[bytes | None] = [None] * rows
                for lin in inl.tolist():
                    raw[lin - lo] = arr.inline[lin]
                table = pa.table(
                    {
                        "path": pa.array(path, type=pa.string()),
                        "offset": pa.array(offset, type=pa.int64()),
                        "size": pa.array(size, type=pa.int64()),
                        "raw": pa.array(raw, type=pa.binary()),
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
            idx, src, off, ln = [], [], [], []
            adir = directory / arr.path
            for rec in range(math.ceil(arr.n_chunks / record_size)):
                f = adir / f"refs.{rec}.parq"
                if not f.exists():
                    continue
                try:
                    t = pq.read_table(f)
                except Exception as exc:
                    raise CorruptError(f"{f} is not a readable Parquet file: {exc}") from exc
                paths = t.column("path").to_pylist()
                raws = (
                    t.column("raw").to_pylist() if "raw" in t.column_names else [None] * len(paths)
                )
                offs = t.column("offset").to_numpy()
                sizes = t.column("size").to_numpy()
                base = rec * record_size
                for i, (p, r) in enumerate(zip(paths, raws, strict=True)):
                    if r is not None:
                        arr.inline[base + i] = r
                    elif p is not None:
                        idx.append(base + i)
                        src.append(source_ids.setdefault(p, len(source_ids)))
                        off.append(int(offs[i]))
                        ln.append(int(sizes[i]))
            arr.index = np.array(idx, np.int64)
            arr.source = np.array(src, np.int32)
            arr.offset = np.array(off, np.int64)
            arr.length = np.array(ln, np.int64)
        out.sources = list(source_ids)
        return out


# ------------------------------------------------------------------ helpers
def _dumps(obj: Any) -> str:
    return json.dumps(obj, allow_nan=True, separators=(",", ":"))


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


def _render(url: str, templates: Mapping[str, str]) -> str:
    if "{{" not in url:
        return url
    for name, value in templates.items():
        url = url.replace("{{" + name + "}}", value)
    if "{{" in url:
        raise CorruptError(f"reference url {url!r} uses an undefined template")
    return url


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
            with open(target, "w") as fh:
                json.dump(refmap.to_kerchunk(), fh, allow_nan=True, separators=(",", ":"))
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
        doc = json.load(io.BytesIO(data))
    except ValueError as exc:
        raise CorruptError(f"reference map {p} is not valid JSON: {exc}") from exc
    return RefMap.from_kerchunk(doc)
