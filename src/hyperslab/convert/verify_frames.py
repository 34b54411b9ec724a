"""``hyperslab verify FRAMES... REFS``: a frame-series map against its TIFF/CBF files.

The map is read the way :mod:`hyperslab.convert.verify` reads HDF5 maps: plain
fsspec ``reference://`` + zarr (:func:`~hyperslab.convert.verify.open_refs_store`),
so the codecs and byte ranges it names are exercised exactly as a user's reader
would. Every frame of ``entry/data/data`` is compared bit for bit with the same
frame decoded by a reader that shares no code with the map:

* TIFF: tifffile (a dependency of hyperslab), page by page;
* CBF: fabio when it is installed. Without it, no independent byte-offset decoder
  is at hand, and comparing our codec with itself would prove nothing about the
  codec. The frame is then checked as far as honesty allows: the binary section's
  bytes are hashed against the header's ``Content-MD5`` and its decoded size
  against ``X-Binary-Number-of-Elements``, and the map's frame is compared with
  hyperslab's codec on those checked bytes. That proves the map points at the
  right, intact bytes; the detail says the codec itself was not independently
  checked. A frame whose header has no ``Content-MD5`` is reported unverifiable.

The per-frame coordinate arrays (``entry/data/<field>``) are compared with the
values parsed afresh from the files' headers (NaN where a frame has none).

The report has the HDF5 report's shape: one check per frame of ``entry/data/data``
(``source`` names its file, ``detail`` the frame on failure) and one per coordinate
array. Frames of the files the map lacks, and header fields it lacks, are
``missing``. Files are taken in the order the map records them when they are the
same files; otherwise in the order given (frames that were moved or copied).
"""

from __future__ import annotations

import base64
import hashlib
import math
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hyperslab.convert.frames import SIGNAL, frame_format, is_glob, scan_frames
from hyperslab.convert.verify import (
    ArrayCheck,
    VerifyReport,
    map_record,
    open_refs_store,
    value_bytes,
)
from hyperslab.errors import BadInputError
from hyperslab.references.refmap import RefMap

__all__ = ["frames_check", "frames_record", "verify_frames"]


def frames_record(store: Any) -> dict[str, Any] | None:
    """The ``frames`` record of a map's root ``hyperslab`` attribute (a frame-series
    map), or None."""
    return map_record(store, "frames")


def recorded_sources(store: Any) -> list[str]:
    """The files a frame map names, in the order it took them."""
    import zarr

    attrs: dict[str, Any] = dict(zarr.open_group(store, mode="r", zarr_format=2).attrs.asdict())
    meta = attrs.get("hyperslab") or {}
    return [str(s.get("url", "")) for s in meta.get("sources") or [] if isinstance(s, dict)]


def verify_frames(
    files: Sequence[str | Path],
    refs: str | Path,
    *,
    progress: Callable[[str, int, int], None] | None = None,
) -> VerifyReport:
    """Compare every frame and coordinate array of the frame map ``refs`` with ``files``
    (no files: the ones the map names). See the module doc."""
    import zarr

    from hyperslab.convert.api import source_url

    store, paths = open_refs_store(refs)
    record = frames_record(store)
    if record is None:
        raise BadInputError(
            f"{refs} is not the map of a detector frame series (hyperslab refs FRAMES -o MAP); "
            "give the HDF5 file(s) it was made from instead"
        )
    recorded = recorded_sources(store)
    given = [str(f) for f in files]
    if not given:
        remote = [u for u in recorded if "://" in u and not u.startswith("file://")]
        if remote or not recorded:
            raise BadInputError(
                f"{refs} names its frames by URL ({(remote or ['nothing'])[0]}); give the "
                f"frame files: hyperslab verify FRAMES... {refs}"
            )
        given = recorded
    elif sorted(source_url(f) for f in given) == sorted(recorded):
        by_url = {source_url(f): f for f in given}
        given = [by_url[u] for u in recorded]
    fmts = {frame_format(f) for f in given}
    if None in fmts or len(fmts) != 1:
        bad = next((f for f in given if frame_format(f) is None), given[0])
        raise BadInputError(f"{bad}: give the TIFF or CBF frames of one series")
    fmt = str(fmts.pop())

    t0 = time.perf_counter()
    fresh = scan_frames(given, url_for=str).refmap  # unreadable frames: named errors, first
    report = VerifyReport(source=given[0], refs=str(refs))
    z = zarr.open_array(store, path=SIGNAL, mode="r", zarr_format=2)
    n = int(z.shape[0])
    reader, frames = _reader(fmt)
    report.frames = {"format": fmt, "files": len(given), "frames": n, "reader": reader}
    k = 0
    for path in given:
        for want, note in frames(path):
            if progress:
                progress(f"{SIGNAL}[{k}]", k, n)
            if k >= n:
                report.missing.append(f"{SIGNAL}[{k}] ({path})")
            else:
                report.arrays.append(_check_frame(z, k, path, want, note))
            k += 1
    for extra in range(k, n):
        report.arrays.append(
            ArrayCheck(
                SIGNAL,
                False,
                "virtual",
                f"frame {extra}: the map has {n} frames, the files {k}",
                source="",
            )
        )
    _check_coordinates(store, paths, fresh, report)
    report.seconds = time.perf_counter() - t0
    return report


def frames_check(
    given: Sequence[str | Path],
    refs: str | Path,
    progress: Callable[[str, int, int], None] | None = None,
) -> VerifyReport | None:
    """What ``hyperslab verify`` tries first: a frame series' map checked against its
    frames (directories and globs expanded), or None for the map of HDF5 files (for
    :func:`hyperslab.convert.verify.verify`); frames given with such a map are a
    :class:`~hyperslab.errors.BadInputError`."""
    from hyperslab.convert.api import expand_sources, is_frame_series

    store, _ = open_refs_store(refs)
    is_frames_map = frames_record(store) is not None
    looks_frames = any(Path(g).is_dir() or is_glob(str(g)) for g in given) and not is_frames_map
    files = expand_sources(given) if is_frames_map or looks_frames else [str(g) for g in given]
    if is_frames_map:
        return verify_frames(files, refs, progress=progress)
    if files and is_frame_series(files):
        raise BadInputError(
            f"{refs} is not the map of a detector frame series; make one with "
            f"hyperslab refs FRAMES -o MAP, or give the HDF5 file(s) {refs} was made from"
        )
    return None


# ------------------------------------------------------------------ the readers

Frames = Callable[[str], Iterator[tuple[np.ndarray | None, str]]]


def _reader(fmt: str) -> tuple[str, Frames]:
    """Name and frame iterator of the independent reader for ``fmt``: each frame's
    values, or None with why it cannot be checked; and a note on how it was read."""
    if fmt == "tiff":
        return "tifffile", _tiff_frames
    try:
        import fabio
    except ImportError:
        return "hyperslab codec on MD5-checked bytes (fabio not installed)", _cbf_md5_frames

    def fabio_frames(path: str) -> Iterator[tuple[np.ndarray | None, str]]:
        yield np.asarray(fabio.open(path).data), ""

    return "fabio", fabio_frames


def _tiff_frames(path: str) -> Iterator[tuple[np.ndarray | None, str]]:
    import tifffile

    with tifffile.TiffFile(path) as tf:
        for page in tf.pages:
            yield np.asarray(page.asarray()), ""


def _cbf_md5_frames(path: str) -> Iterator[tuple[np.ndarray | None, str]]:
    from hyperslab.convert.cbf import byte_offset_decode, scan_cbf

    c = scan_cbf(path)
    with open(path, "rb") as fh:
        fh.seek(c.offset)
        data = fh.read(c.length)
        fh.seek(0)
        head = fh.read(c.offset).decode("latin-1")
    fields = {}
    for line in head.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields[key.strip().lower()] = value.strip().strip('"')
    md5 = fields.get("content-md5")
    if not md5:
        yield None, "unverifiable: no independent CBF reader (fabio) and no Content-MD5 header"
        return
    if base64.b64encode(hashlib.md5(data).digest()).decode() != md5:
        yield None, "the file's binary section does not match its Content-MD5"
        return
    values = byte_offset_decode(data, c.dtype)
    elements = fields.get("x-binary-number-of-elements")
    if elements is not None and elements.isdigit() and int(elements) != values.size:
        yield None, f"decodes to {values.size} pixels, its header says {elements}"
        return
    if values.size != math.prod(c.shape):
        yield None, f"decodes to {values.size} pixels, not {c.shape[0]}x{c.shape[1]}"
        return
    yield (
        values.reshape(c.shape),
        "bytes checked against Content-MD5; decoded by hyperslab's own codec "
        "(fabio not installed: the codec is not independently checked)",
    )


# ------------------------------------------------------------------ the checks


def _check_frame(z: Any, k: int, path: str, want: np.ndarray | None, note: str) -> ArrayCheck:
    def result(ok: bool, detail: str, nbytes: int = 0, unverifiable: bool = False) -> ArrayCheck:
        return ArrayCheck(SIGNAL, ok, "virtual", detail, nbytes, unverifiable, source=path)

    if want is None:
        unverifiable = note.startswith("unverifiable")
        return result(False, f"frame {k}: {note}", unverifiable=unverifiable)
    try:
        got = np.asarray(z[k])
    except Exception as exc:  # every failure is reported per frame, never stops the run
        return result(False, f"frame {k}: {type(exc).__name__}: {exc}")
    if got.shape != want.shape:
        return result(False, f"frame {k}: shape {got.shape} != {want.shape}")
    if got.dtype != want.dtype:
        if got.dtype.newbyteorder("=") != want.dtype.newbyteorder("="):
            return result(False, f"frame {k}: dtype {got.dtype} != {want.dtype}")
        want = want.astype(got.dtype)  # the same type in the other byte order: lossless
    w, g = np.ascontiguousarray(want), np.ascontiguousarray(got)
    if value_bytes(w) != value_bytes(g):
        bad = np.unravel_index(int(np.argmax(w.reshape(-1) != g.reshape(-1))), w.shape)
        return result(False, f"frame {k}: values differ (first at {tuple(int(i) for i in bad)})")
    return result(True, note, g.nbytes)


def _check_coordinates(store: Any, paths: list[str], fresh: RefMap, report: VerifyReport) -> None:
    """The map's per-frame header arrays against ``fresh``: the headers, read afresh."""
    import zarr

    want = {p: a for p, a in fresh.arrays.items() if p != SIGNAL}
    have = [p for p in paths if p.startswith("entry/data/") and p != SIGNAL]
    for path in have:
        if path not in want:
            report.arrays.append(
                ArrayCheck(path, False, "materialised", "not in the frames' headers")
            )
            continue
        expect = np.frombuffer(want[path].inline[0], "<f8")
        try:
            got = np.asarray(zarr.open_array(store, path=path, mode="r", zarr_format=2)[...])
        except Exception as exc:
            report.arrays.append(
                ArrayCheck(path, False, "materialised", f"{type(exc).__name__}: {exc}")
            )
            continue
        got = np.ascontiguousarray(got, "<f8") if got.dtype.kind == "f" else got
        if got.shape != expect.shape:
            detail = f"shape {got.shape} != {expect.shape}"
        elif got.dtype != expect.dtype or got.tobytes() != expect.tobytes():
            bad = int(np.argmax(~((got == expect) | (np.isnan(got) & np.isnan(expect)))))
            detail = f"frame {bad}: {got[bad]!r} != {expect[bad]!r} (header)"
        else:
            detail = ""
        report.arrays.append(ArrayCheck(path, not detail, "materialised", detail, int(got.nbytes)))
    report.missing.extend(sorted(set(want) - set(have)))
