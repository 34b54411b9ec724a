"""The Python functions behind ``hyperslab refs``: files → reference maps."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hyperslab.convert.frames import (
    FRAME_SUFFIXES,
    expand_glob,
    is_frame_file,
    is_glob,
    scan_frames,
)
from hyperslab.convert.hdf5 import ConvertOptions, FileReport, scan_hdf5
from hyperslab.convert.nexus import DIMS, assign_dimensions
from hyperslab.errors import BadInputError, HyperslabError, NotFoundError
from hyperslab.references.refmap import ArrayRefs, RefMap
from hyperslab.version import __version__

__all__ = [
    "HDF5_SUFFIXES",
    "ConversionResult",
    "build_frames_refmap",
    "build_refmap",
    "combine_refmaps",
    "directory_contents",
    "expand_sources",
    "frames_left_out",
    "is_frame_series",
    "source_url",
]

#: file endings picked up when a directory is converted
HDF5_SUFFIXES = (".h5", ".hdf5", ".hdf", ".nxs", ".nx5", ".nexus", ".nc", ".nc4", ".cxi", ".he5")

#: root attribute holding hyperslab's provenance and the NeXus catalog metadata
META_ATTR = "hyperslab"


@dataclass
class ConversionResult:
    """A reference map and how it was made: one report per file it was built from.

    ``url`` is how the map names the file it was built from (one file only);
    ``combined`` is the map's combine record (see :func:`combine_refmaps`), or None;
    ``frames`` summarises a detector frame series (:func:`build_frames_refmap`), or None.
    """

    refmap: RefMap
    reports: list[FileReport] = field(default_factory=list)
    url: str | None = None
    combined: dict[str, Any] | None = None
    frames: dict[str, Any] | None = None

    @property
    def counts(self) -> dict[str, int]:
        """Arrays of the map by status (virtual, materialised, mixed, empty).

        A combined map holds one array for each combined dataset however many files
        it spans, so its arrays are counted, not the files' datasets.
        """
        out: dict[str, int] = {}
        if self.combined is not None or self.frames is not None:
            for arr in self.refmap.arrays.values():
                out[arr.status] = out.get(arr.status, 0) + 1
            return out
        for r in self.reports:
            for k, v in r.counts.items():
                out[k] = out.get(k, 0) + v
        return out

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "sources": self.refmap.sources,
            "n_refs": self.refmap.n_refs,
            "arrays": len(self.refmap.arrays),
            "counts": self.counts,
            "files": [r.to_json() for r in self.reports],
        }
        if self.combined is not None:
            c = self.combined
            doc["combined"] = {
                "files": c["files"],
                "new_dim": c["new_dim"],
                "dim": c["dim"],
                "arrays": len(c["arrays"]),
            }
        if self.frames is not None:
            doc["frames"] = self.frames
        return doc


def source_url(source: str | Path) -> str:
    """How a standalone map refers to a source: absolute local path, or the URL as given."""
    s = str(source)
    if "://" in s and not s.startswith("file://"):
        return s
    if s.startswith("file://"):
        s = s[7:]
    return os.path.abspath(s)


def directory_contents(directory: str | Path) -> tuple[list[str], list[str]]:
    """``(HDF5 files, detector frames)`` under ``directory`` (recursively), each sorted."""
    files = [(str(f), f.suffix.lower()) for f in Path(directory).rglob("*") if f.is_file()]
    return (
        sorted(f for f, suffix in files if suffix in HDF5_SUFFIXES),
        sorted(f for f, suffix in files if suffix in FRAME_SUFFIXES),
    )


def expand_sources(sources: Iterable[str | Path]) -> list[str]:
    """Files as given, directories expanded (recursively) to their HDF5-looking files, sorted.

    A directory without HDF5 files gives its detector frames (TIFF, CBF) instead (a
    directory with both gives its HDF5 files: :func:`frames_left_out` says which
    frames that leaves out); a glob pattern that names no existing file is expanded
    (sorted).
    """
    out: list[str] = []
    for s in sources:
        p = Path(s)
        if "://" not in str(s) and p.is_dir():
            hdf5, frames = directory_contents(p)
            if not hdf5 and not frames:
                raise NotFoundError(
                    f"{p} contains no HDF5 files ({', '.join(HDF5_SUFFIXES)}) "
                    f"and no detector frames ({', '.join(FRAME_SUFFIXES)})"
                )
            out.extend(hdf5 or frames)
        elif is_glob(str(s)):
            matched = expand_glob(str(s))
            if not matched:
                raise NotFoundError(f"no file matches {s}")
            out.extend(matched)
        else:
            out.append(str(s))
    return out


def frames_left_out(sources: Iterable[str | Path]) -> dict[str, dict[str, Any]]:
    """Folders of detector frames that :func:`expand_sources` leaves out because they lie
    in a directory given with HDF5 files (a run folder with a NeXus master file beside
    its frames): ``{folder: {"frames": n, "give": what}}``, sorted, where ``what`` is
    the source that makes them one frame-series entry (the folder; a glob of the frames'
    suffix where the folder holds HDF5 files too)."""
    out: dict[str, dict[str, Any]] = {}
    for s in sources:
        if "://" not in str(s) and Path(s).is_dir():
            hdf5, frames = directory_contents(s)
            found: dict[str, tuple[int, str]] = {}  # folder: (frames, their suffix)
            for f in frames if hdf5 else []:
                folder = str(Path(f).parent)
                n, suffix = found.get(folder, (0, Path(f).suffix))
                found[folder] = (n + 1, suffix)
            for folder, (n, suffix) in found.items():
                # the folder holds HDF5 files too (at any depth): only a glob picks the frames
                holds_hdf5 = any(h.startswith(folder + os.sep) for h in hdf5)
                got = out.setdefault(folder, {"frames": 0})
                got["frames"] += n
                got["give"] = f"{folder}/*{suffix}" if holds_hdf5 else folder
    return dict(sorted(out.items()))


def is_frame_series(files: Sequence[str]) -> bool:
    """Whether ``files`` are detector frames (TIFF, CBF) that make one series; frames
    mixed with other files are a :class:`~hyperslab.errors.BadInputError`."""
    frames = [f for f in files if is_frame_file(f)]
    if frames and len(frames) != len(files):
        other = next(f for f in files if not is_frame_file(f))
        raise BadInputError(
            f"detector frames ({frames[0]}) and other files ({other}) cannot be converted "
            "together; give the frames on their own"
        )
    return bool(frames)


def build_frames_refmap(
    files: Sequence[str],
    *,
    url_for: Callable[[str], str] | None = None,
    on_file: Callable[[str, np.ndarray, np.ndarray], None] | None = None,
) -> ConversionResult:
    """One reference map of a detector frame series (TIFF or CBF files, in order): a
    ``(frame, y, x)`` array ``entry/data/data`` referencing each frame in place, with
    per-frame header values beside it (see :mod:`hyperslab.convert.frames`).
    ``on_file``: see :func:`~hyperslab.convert.frames.scan_frames`."""
    series = scan_frames(list(files), url_for=url_for or source_url, on_file=on_file)
    return ConversionResult(series.refmap, series.reports, frames=series.summary)


def build_refmap(
    source: str | Path,
    *,
    options: ConvertOptions | None = None,
    url: str | None = None,
    url_for: Callable[[str], str] | None = None,
) -> ConversionResult:
    """Reference map of one HDF5/NeXus file; HDF5 ``/a/b`` becomes Zarr array ``a/b``.

    ``url`` is how the map names the file (default: its absolute path), ``url_for``
    maps other files reached through external links.
    """
    refmap = RefMap()
    url = url or source_url(source)
    report = scan_hdf5(
        source,
        refmap,
        url=url,
        options=options,
        url_for=url_for or source_url,
    )
    assign_dimensions(refmap)
    refmap.groups[""][META_ATTR] = {
        "version": __version__,
        "sources": [{"url": u} for u in refmap.sources],
        "nexus": report.nexus,
    }
    return ConversionResult(refmap, [report], url=url)


def combine_refmaps(
    results: Sequence[ConversionResult],
    *,
    dim: int | None = None,
    new_dim: str | None = None,
    arrays: Sequence[str] | None = None,
) -> ConversionResult:
    """Combine per-file maps (one per scan point or frame block) into one.

    With ``new_dim`` the chosen arrays gain a leading axis of that name (one index per
    file); with ``dim`` they are concatenated along that existing axis. Every file
    must hold the chosen arrays with equal dtype, codecs and chunk shape; along a
    concatenation axis every file but the last must hold a whole number of chunks
    (otherwise chunk boundaries would not line up and a virtual map is impossible).
    Arrays not combined are taken from the first file. ``arrays`` defaults to every
    array that all files have with compatible metadata and more than one element.

    Combined arrays keep the dimension names a single file's map gives them
    (``_ARRAY_DIMENSIONS``); a new axis is named ``new_dim``. The root attribute
    ``hyperslab`` records the combination under ``combined`` (``hyperslab verify``
    reads it to check the map against each file)::

        {"arrays": [combined array paths], "dim": int | None, "new_dim": str | None,
         "files": N, "parts": [{"url": file i, "start": s_i}, ...],
         "starts": {path: [s_0, ..., s_N-1]}}

    ``parts[i].start`` is where file ``i`` begins along the combined axis (``i`` on
    a new axis); ``starts`` lists only arrays whose own starts differ from that.
    """
    if not results:
        raise BadInputError("nothing to combine")
    if (dim is None) == (new_dim is None):
        raise BadInputError("combine needs exactly one of dim= (existing axis) or new_dim=")
    first = results[0].refmap
    if new_dim is not None:
        if not new_dim.strip():
            raise BadInputError("the new axis needs a name (--combine-new-dim NAME)")
        for p, a in first.arrays.items():
            if new_dim in (a.attrs.get(DIMS) or []):
                raise BadInputError(
                    f"cannot add a new axis {new_dim!r}: array {p!r} already has a dimension "
                    "of that name; choose another name"
                )
    out = RefMap(groups={k: dict(v) for k, v in first.groups.items()})
    src_ids: dict[str, int] = {}

    def sid(url: str) -> int:
        if url not in src_ids:
            src_ids[url] = len(out.sources)
            out.sources.append(url)
        return src_ids[url]

    names = (
        list(arrays)
        if arrays is not None
        else [
            p
            for p, a in first.arrays.items()
            if all(
                p in r.refmap.arrays and _compatible(a, r.refmap.arrays[p], dim)
                for r in results[1:]
            )
            and int(np.prod(a.zarray["shape"] or [1])) > 1
        ]
    )
    for p in names:
        for r in results:
            if p not in r.refmap.arrays:
                raise BadInputError(f"cannot combine: {r.refmap.sources[:1]} has no array {p!r}")
    starts: dict[str, list[int]] = {}
    for path, arr in first.arrays.items():
        if path in names:
            out.arrays[path], starts[path] = _combine_one(
                [r.refmap for r in results], path, dim, new_dim, sid
            )
        else:
            out.arrays[path] = _remap(arr, first.sources, sid)
    assign_dimensions(out)
    common = starts[names[0]] if names else list(range(len(results)))
    record: dict[str, Any] = {
        "arrays": names,
        "dim": dim,
        "new_dim": new_dim,
        "files": len(results),
        "parts": [
            {"url": r.url or (r.refmap.sources[0] if r.refmap.sources else ""), "start": s}
            for r, s in zip(results, common, strict=True)
        ],
    }
    odd = {p: s for p, s in starts.items() if s != common}
    if odd:
        record["starts"] = odd
    meta = dict(out.groups[""].get(META_ATTR, {}))
    meta["sources"] = [{"url": u} for u in out.sources]
    meta["combined"] = record
    out.groups[""][META_ATTR] = meta
    return ConversionResult(out, [rep for r in results for rep in r.reports], combined=record)


def _compatible(a: ArrayRefs, b: ArrayRefs, dim: int | None) -> bool:
    za, zb = a.zarray, b.zarray
    same = all(za[k] == zb[k] for k in ("dtype", "chunks", "filters", "compressor", "fill_value"))
    if not same or len(za["shape"]) != len(zb["shape"]):
        return False
    if dim is not None and not 0 <= dim < len(za["shape"]):
        return False  # no such axis to concatenate along
    if dim is None:
        return bool(za["shape"] == zb["shape"])
    return all(
        x == y for i, (x, y) in enumerate(zip(za["shape"], zb["shape"], strict=True)) if i != dim
    )


def _remap(arr: ArrayRefs, sources: list[str], sid: Callable[[str], int]) -> ArrayRefs:
    table = (
        np.array([sid(u) for u in sources], dtype=np.int32) if sources else np.zeros(0, np.int32)
    )
    return ArrayRefs(
        path=arr.path,
        zarray=dict(arr.zarray),
        attrs=dict(arr.attrs),
        index=arr.index.copy(),
        source=table[arr.source] if arr.source.size else arr.source.copy(),
        offset=arr.offset.copy(),
        length=arr.length.copy(),
        inline=dict(arr.inline),
        reason=arr.reason,
    )


def _combine_one(
    maps: list[RefMap], path: str, dim: int | None, new_dim: str | None, sid: Callable[[str], int]
) -> tuple[ArrayRefs, list[int]]:
    """One combined array, and where each file's part starts along the combined axis."""
    parts = [_remap(m.arrays[path], m.sources, sid) for m in maps]
    z0 = parts[0].zarray
    shape, chunks = list(z0["shape"]), list(z0["chunks"])
    attrs = dict(parts[0].attrs)
    dims = attrs.pop(DIMS, None)
    if not isinstance(dims, list) or len(dims) != len(shape):
        dims = [None] * len(shape)  # completed by assign_dimensions as for one file
    starts: list[int]
    if new_dim is not None:
        out_shape, out_chunks = [len(parts), *shape], [1, *chunks]
        axis, offsets = 0, list(range(len(parts)))
        starts = offsets
        attrs[DIMS] = [new_dim, *dims]
    else:
        assert dim is not None
        if not 0 <= dim < len(shape):
            raise BadInputError(
                f"cannot combine {path!r} along axis {dim}: it has {len(shape)} axes"
            )
        offsets, starts, total = [], [], 0
        for i, p in enumerate(parts):
            n = p.zarray["shape"][dim]
            if total % chunks[dim]:
                raise BadInputError(
                    f"cannot combine {path!r} along axis {dim}: file {i} starts at {total}, not a multiple "
                    f"of the chunk length {chunks[dim]}; use a new axis instead"
                )
            offsets.append(total // chunks[dim])
            starts.append(total)
            total += n
        out_shape, out_chunks = list(shape), list(chunks)
        out_shape[dim] = total
        axis = dim
        attrs[DIMS] = dims
    out = ArrayRefs(path=path, zarray={**z0, "shape": out_shape, "chunks": out_chunks}, attrs=attrs)
    out_grid = out.grid
    idx, src, off, ln = [], [], [], []
    for p, start in zip(parts, offsets, strict=True):
        g = p.grid
        if p.index.size:
            coords = list(np.unravel_index(p.index, g)) if g else [np.zeros(p.index.size, np.int64)]
            if new_dim is not None:
                coords = [np.full(p.index.size, start, np.int64), *coords]
            else:
                coords[axis] = coords[axis] + start
            idx.append(np.ravel_multi_index(tuple(coords), out_grid))
            src.append(p.source)
            off.append(p.offset)
            ln.append(p.length)
        for lin, data in p.inline.items():
            c: list[int] = [int(x) for x in np.unravel_index(lin, g)] if g else [0]
            if new_dim is not None:
                c = [start, *c]
            else:
                c[axis] += start
            out.inline[int(np.ravel_multi_index(tuple(int(x) for x in c), out_grid))] = data
        if p.reason:
            out.reason = p.reason
    if idx:
        out.index = np.concatenate(idx).astype(np.int64)
        out.source = np.concatenate(src).astype(np.int32)
        out.offset = np.concatenate(off).astype(np.int64)
        out.length = np.concatenate(ln).astype(np.int64)
        out.sort()
    return out, starts


def convert_each(
    sources: Sequence[str],
    *,
    options: ConvertOptions | None = None,
    fail_fast: bool = False,
    on_done: Callable[[str, ConversionResult | HyperslabError], None] | None = None,
) -> tuple[list[tuple[str, ConversionResult]], list[tuple[str, HyperslabError]]]:
    """Convert files one by one, continuing past bad ones unless ``fail_fast``."""
    done: list[tuple[str, ConversionResult]] = []
    failed: list[tuple[str, HyperslabError]] = []
    for s in sources:
        try:
            res = build_refmap(s, options=options)
        except HyperslabError as exc:
            failed.append((s, exc))
            if on_done:
                on_done(s, exc)
            if fail_fast:
                break
            continue
        done.append((s, res))
        if on_done:
            on_done(s, res)
    return done, failed
