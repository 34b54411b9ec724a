"""Detector frame series (TIFF, CBF): many files as one ``(frame, y, x)`` array, in place.

A directory, glob or list of frame files becomes one reference map shaped like a
NeXus file, so it reads, checksums, caches, syncs and exports like an HDF5 entry::

    entry/data/data          (frame, y, x), one chunk per frame (or per strip/tile),
                             each a byte range of its file
    entry/data/<field>       (frame,) per-frame header values: exposure_time,
                             wavelength, detector_distance, beam_center_x/y, ...

The root is ``NXroot`` with ``default = "entry"``, ``entry`` is ``NXentry`` with
``default = "data"`` and ``entry/data`` is ``NXdata`` with ``signal = "data"``; the
per-frame fields are the signal's coordinates. Every frame must have the same shape,
dtype and encoding: the first file that differs raises :class:`FrameMismatchError`.
Header fields shared by the series (detector, wavelength, ...) go to the catalog.
"""

from __future__ import annotations

import glob
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hyperslab.convert.cbf import MINI_UNITS, scan_cbf
from hyperslab.convert.hdf5 import FileReport
from hyperslab.errors import BadFrameError, BadInputError, FrameMismatchError
from hyperslab.references.refmap import ArrayRefs, InlineChunks, RefMap
from hyperslab.version import __version__

__all__ = [
    "FRAME_SUFFIXES",
    "FrameSeries",
    "frame_format",
    "is_frame_file",
    "scan_frames",
]

#: file endings of detector frames
FRAME_SUFFIXES = (".cbf", ".tif", ".tiff")
SIGNAL = "entry/data/data"
_GLOB_CHARS = frozenset("*?[")
#: per-frame numbers and their units (beyond the mini-header's)
_UNITS = {**MINI_UNITS}
#: per-frame fields whose series-wide value goes to the catalog (when it is one value)
_CATALOG = (
    "wavelength",
    "exposure_time",
    "detector_distance",
    "beam_center_x",
    "beam_center_y",
    "x_pixel_size",
    "threshold_energy",
)
_HC_KEV_ANGSTROM = 12.398419843320026


def frame_format(path: str) -> str | None:
    """``"cbf"``, ``"tiff"``, or None for a file that is not a detector frame."""
    suffix = os.path.splitext(path)[1].lower()  # a Path per call costs more than the rest
    if suffix == ".cbf":
        return "cbf"
    if suffix in (".tif", ".tiff"):
        return "tiff"
    return None


def is_frame_file(path: str) -> bool:
    return frame_format(path) is not None


def is_glob(source: str) -> bool:
    return "://" not in source and bool(_GLOB_CHARS & set(source)) and not Path(source).exists()


def expand_glob(source: str) -> list[str]:
    return sorted(glob.glob(source))


@dataclass
class _Frame:
    file: int  # index into the series' files
    shape: tuple[int, int]
    dtype: str
    chunks: tuple[int, int]
    filters: list[dict[str, Any]] | None
    layout: str
    offsets: np.ndarray
    lengths: np.ndarray
    meta: dict[str, Any]


def _frames_of(path: str, index: int) -> list[_Frame]:
    fmt = frame_format(path)
    if fmt == "cbf":
        c = scan_cbf(path)
        codec = {"id": "hyperslab.cbf_byte_offset", "dtype": c.dtype}
        return [
            _Frame(
                index,
                c.shape,
                c.dtype,
                c.shape,
                [codec],
                "CBF byte-offset compression",
                np.array([c.offset], np.int64),
                np.array([c.length], np.int64),
                c.meta,
            )
        ]
    if fmt == "tiff":
        from hyperslab.convert.tiff import scan_tiff

        return [
            _Frame(
                index, p.shape, p.dtype, p.chunks, p.filters, p.layout, p.offsets, p.lengths, p.meta
            )
            for p in scan_tiff(path)
        ]
    raise BadInputError(f"{path} is not a detector frame ({', '.join(FRAME_SUFFIXES)})")


@dataclass
class FrameSeries:
    """What :func:`scan_frames` found: the map, and a summary for reports."""

    refmap: RefMap
    reports: list[FileReport]
    summary: dict[str, Any]


def scan_frames(
    files: Sequence[str],
    *,
    url_for: Callable[[str], str],
    on_file: Callable[[str, np.ndarray, np.ndarray], None] | None = None,
) -> FrameSeries:
    """The reference map of a frame series (see the module doc); ``url_for`` names each
    file in the map, once every header is parsed. ``on_file(file, offsets, lengths)``
    is called as soon as a file's header is parsed, with the byte ranges of its chunks
    (ingest starts reading the file for its hashes then)."""
    if not files:
        raise BadInputError("no detector frames given")
    fmts = {frame_format(f) for f in files}
    if len(fmts) != 1:
        raise FrameMismatchError(
            f"a frame series is one format: {files[0]} and "
            f"{next(f for f in files if frame_format(f) != frame_format(files[0]))} differ"
        )
    name_of = url_for
    frames: list[_Frame] = []
    for i, f in enumerate(files):
        got = _frames_of(f, i)
        frames.extend(got)
        if on_file is not None:
            on_file(
                f, *(np.concatenate([getattr(fr, a) for fr in got]) for a in ("offsets", "lengths"))
            )
    first = frames[0]
    for fr in frames[1:]:
        for what, a, b in (
            ("shape", first.shape, fr.shape),
            ("dtype", first.dtype, fr.dtype),
            ("encoding", first.layout, fr.layout),
            ("encoding", first.filters, fr.filters),
        ):
            if a != b:
                raise FrameMismatchError(
                    f"{files[fr.file]}: frame {what} {_show(b)} differs from "
                    f"{_show(a)} of {files[first.file]}; a series needs equal frames",
                    path=files[fr.file],
                )
    refmap = RefMap()
    urls = [name_of(f) for f in files]
    refmap.sources.extend(urls)
    n = len(frames)
    h, w = first.shape
    ch, cw = first.chunks
    per_frame = math.ceil(h / ch) * math.ceil(w / cw)
    idx, src, off, ln = [], [], [], []
    for k, fr in enumerate(frames):
        if fr.offsets.size != per_frame:
            raise BadFrameError(
                f"{files[fr.file]}: {fr.offsets.size} strips/tiles where {per_frame} were expected",
                path=files[fr.file],
            )
        keep = fr.lengths > 0  # an empty tile or strip reads as the fill value
        idx.append(k * per_frame + np.flatnonzero(keep))
        src.append(np.full(int(keep.sum()), fr.file, np.int32))
        off.append(fr.offsets[keep])
        ln.append(fr.lengths[keep])
    fmt = str(fmts.pop())
    data = ArrayRefs(
        path=SIGNAL,
        zarray={
            "zarr_format": 2,
            "shape": [n, h, w],
            "chunks": [1, ch, cw],
            "dtype": first.dtype,
            "compressor": None,
            "fill_value": None,  # no value is "missing": xarray masks none
            "filters": first.filters,
            "order": "C",
        },
        attrs={"_ARRAY_DIMENSIONS": ["frame", "y", "x"]},
    )
    data.index = np.concatenate(idx).astype(np.int64)
    data.source = np.concatenate(src).astype(np.int32)
    data.offset = np.concatenate(off).astype(np.int64)
    data.length = np.concatenate(ln).astype(np.int64)
    data.sort()
    refmap.arrays[SIGNAL] = data
    coords = _coordinates(refmap, [fr.meta for fr in frames])
    if coords:
        data.attrs["coordinates"] = " ".join(coords)
    nexus = _catalog(frames, fmt, n, first)
    refmap.groups[""] = {
        "NX_class": "NXroot",
        "default": "entry",
        "hyperslab": {
            "version": __version__,
            "sources": [{"url": u} for u in refmap.sources],
            "nexus": nexus,
            "frames": {"format": fmt, "files": len(files), "frames": n},
        },
    }
    refmap.groups["entry"] = {"NX_class": "NXentry", "default": "data"}
    refmap.groups["entry/data"] = {"NX_class": "NXdata", "signal": "data", "axes": ["frame"]}
    reports = [FileReport(source=u) for u in urls]
    reports[0].nexus = nexus
    summary = {"format": fmt, "files": len(files), "frames": n, "shape": [n, h, w]}
    return FrameSeries(refmap, reports, summary)


def _show(v: Any) -> str:
    if isinstance(v, tuple):
        return "x".join(map(str, v))
    return repr(v) if not isinstance(v, str) else v


def _coordinates(refmap: RefMap, metas: list[dict[str, Any]]) -> list[str]:
    """Per-frame numbers as 1-D arrays along ``frame``, carried inside the map."""
    names = sorted({k for m in metas for k, v in m.items() if isinstance(v, float) and k in _UNITS})
    n = len(metas)
    for name in names:
        values = np.array([float(m.get(name, np.nan)) for m in metas], "<f8")
        arr = ArrayRefs(
            path=f"entry/data/{name}",
            zarray={
                "zarr_format": 2,
                "shape": [n],
                "chunks": [n],
                "dtype": "<f8",
                "compressor": None,
                "fill_value": "NaN",
                "filters": None,
                "order": "C",
            },
            attrs={"_ARRAY_DIMENSIONS": ["frame"], "units": _UNITS[name]},
            reason="per-frame header values",
        )
        arr.inline = InlineChunks({0: values.tobytes()})
        refmap.arrays[arr.path] = arr
    return names


def _catalog(frames: list[_Frame], fmt: str, n: int, first: _Frame) -> dict[str, Any]:
    """Series-wide metadata for the catalog, named as NeXus files' catalog fields are."""
    metas = [fr.meta for fr in frames]
    out: dict[str, Any] = {
        "entry": "entry",
        "default": "entry/data",
        "signal": "data",
        "signal_shape": [n, *first.shape],
        "signal_dtype": str(np.dtype(first.dtype)),
        "axes": ["frame"],
        "format": fmt,
        "frames": n,
    }
    det = metas[0].get("detector")
    if isinstance(det, str):
        out["detector"] = det
    desc = metas[0].get("description")
    if isinstance(desc, str) and "detector" not in out and len(desc) <= 200:
        out["title"] = desc
    times = [m["timestamp_text"] for m in metas if isinstance(m.get("timestamp_text"), str)]
    if times:
        out["start_time"], out["end_time"] = times[0], times[-1]
    for key in _CATALOG:
        vals = {m.get(key) for m in metas}
        if len(vals) == 1 and isinstance(v := vals.pop(), float):
            out[key] = v
            out[f"{key}_units"] = _UNITS[key]
    if isinstance(out.get("wavelength"), float) and out["wavelength"] > 0:
        out["energy"] = round(_HC_KEV_ANGSTROM / out["wavelength"], 6)
        out["energy_units"] = "keV"
    return out
