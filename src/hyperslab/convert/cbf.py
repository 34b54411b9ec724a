"""CBF detector frames (Pilatus and other CBFlib writers): parsing and the byte-offset codec.

A CBF file is CIF text with one binary section: a MIME-like header
(``X-Binary-Size``, element type, dimensions, ``conversions="x-CBF_BYTE_OFFSET"``),
the four bytes ``0C 1A 04 D5``, then the compressed image. That byte range is the
frame's one chunk; :class:`CbfByteOffset` (``hyperslab.cbf_byte_offset``) decodes it
bit-exactly. The Pilatus mini-header (``# Exposure_time 0.1 s`` lines of
``_array_data.header_contents``) is parsed into per-frame metadata.

Byte-offset compression (CBFlib's ``CBF_BYTE_OFFSET``): each pixel is stored as the
difference from the previous one (the first from 0), in one signed byte when it fits
in -127..127; otherwise the byte ``0x80`` and a little-endian ``int16``; ``-32768``
there escapes to an ``int32``, whose ``-2**31`` escapes to an ``int64``.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
from numcodecs.abc import Codec
from numcodecs.compat import ensure_contiguous_ndarray, ndarray_copy
from numcodecs.registry import register_codec

from hyperslab.errors import BadFrameError, UnsupportedFeatureError

__all__ = [
    "BINARY_MARKER",
    "CbfByteOffset",
    "CbfFrame",
    "byte_offset_decode",
    "byte_offset_encode",
    "parse_mini_header",
    "scan_cbf",
]

#: the four bytes that start a CBF binary section
BINARY_MARKER = b"\x0c\x1a\x04\xd5"

_ELEMENT_TYPES = {
    "signed 8-bit integer": "i1",
    "unsigned 8-bit integer": "u1",
    "signed 16-bit integer": "i2",
    "unsigned 16-bit integer": "u2",
    "signed 32-bit integer": "i4",
    "unsigned 32-bit integer": "u4",
}


# ------------------------------------------------------------------------ the codec


def byte_offset_decode(data: Any, dtype: str | np.dtype[Any] = "<i4") -> np.ndarray:
    """Pixel values of a byte-offset stream, as a flat array of ``dtype``."""
    buf = np.frombuffer(ensure_contiguous_ndarray(data).reshape(-1).view(np.uint8), np.uint8)
    n = buf.size
    escapes = np.flatnonzero(buf == 0x80)
    if escapes.size == 0:
        deltas = buf.view(np.int8).astype(np.int64)
    else:
        pieces: list[np.ndarray] = []
        pos = 0
        k = 0
        while True:
            k = int(np.searchsorted(escapes, pos, side="left"))
            if k >= escapes.size:
                pieces.append(buf[pos:].view(np.int8).astype(np.int64))
                break
            e = int(escapes[k])
            if e > pos:
                pieces.append(buf[pos:e].view(np.int8).astype(np.int64))
            p = e + 1
            value = -32768
            for width, escape in ((2, -(1 << 15)), (4, -(1 << 31)), (8, None)):
                if p + width > n:
                    raise ValueError(f"byte-offset stream truncated at byte {p} of {n}")
                value = int.from_bytes(buf[p : p + width].tobytes(), "little", signed=True)
                p += width
                if value != escape:
                    break
            pieces.append(np.array([value], np.int64))
            pos = p
        deltas = np.concatenate(pieces)
    return np.cumsum(deltas).astype(np.dtype(dtype))


def byte_offset_encode(values: Any) -> bytes:
    """The byte-offset stream of ``values`` (integers, C order)."""
    v = np.asarray(values).astype(np.int64).reshape(-1)
    d = np.diff(v, prepend=np.int64(0))
    a = np.abs(d)
    size = np.where(a < 128, 1, np.where(a < 32768, 3, np.where(a < (1 << 31), 7, 15)))
    off = np.cumsum(size) - size
    out = np.zeros(int(size.sum()), np.uint8)
    one = size == 1
    out[off[one]] = d[one].astype(np.int8).view(np.uint8)
    esc = ~one
    out[off[esc]] = 0x80
    for width, lo, sel_size in ((2, 1, 3), (4, 3, 7), (8, 7, 15)):
        here = size == sel_size
        if here.any():
            kind = {2: "<i2", 4: "<i4", 8: "<i8"}[width]
            raw = d[here].astype(kind).view(np.uint8).reshape(-1, width)
            out[off[here][:, None] + lo + np.arange(width)] = raw
        bigger = size > sel_size
        if bigger.any():  # the escape of this width: its most negative value
            esc_bytes = np.zeros(width, np.uint8)
            esc_bytes[-1] = 0x80
            out[off[bigger][:, None] + lo + np.arange(width)] = esc_bytes
    return out.tobytes()


class CbfByteOffset(Codec):
    """CBF byte-offset compression of one frame (``dtype``: the pixel type, e.g. ``<i4``)."""

    codec_id = "hyperslab.cbf_byte_offset"

    def __init__(self, dtype: str = "<i4") -> None:
        self.dtype = str(np.dtype(dtype).str)

    def encode(self, buf: Any) -> bytes:
        arr = ensure_contiguous_ndarray(buf).reshape(-1).view(self.dtype)
        return byte_offset_encode(arr)

    def decode(self, buf: Any, out: Any = None) -> Any:
        result = byte_offset_decode(buf, self.dtype)
        if out is None:
            return result
        return ndarray_copy(result.view(np.uint8), out)

    def get_config(self) -> dict[str, Any]:
        return {"id": self.codec_id, "dtype": self.dtype}


register_codec(CbfByteOffset)


# ----------------------------------------------------------------------- the header

_FLOAT = r"([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)"
#: mini-header line → (metadata name, pattern, units); numbers scaled to these units
_MINI: tuple[tuple[str, str, str], ...] = (
    ("exposure_time", rf"^Exposure_time\s+{_FLOAT}", "s"),
    ("exposure_period", rf"^Exposure_period\s+{_FLOAT}", "s"),
    ("wavelength", rf"^Wavelength\s+{_FLOAT}", "angstrom"),
    ("detector_distance", rf"^Detector_distance\s+{_FLOAT}", "m"),
    ("start_angle", rf"^Start_angle\s+{_FLOAT}", "deg"),
    ("angle_increment", rf"^Angle_increment\s+{_FLOAT}", "deg"),
    ("count_cutoff", rf"^Count_cutoff\s+{_FLOAT}", "counts"),
    ("threshold_energy", rf"^Threshold_setting:?\s+{_FLOAT}", "eV"),
)
#: units of every per-frame field a mini-header can give
MINI_UNITS: dict[str, str] = {
    **{name: units for name, _, units in _MINI},
    "beam_center_x": "pixel",
    "beam_center_y": "pixel",
    "x_pixel_size": "m",
    "y_pixel_size": "m",
    "timestamp": "seconds since 1970-01-01 00:00:00",
}
_TIME_FORMATS = ("%Y-%m-%dT%H:%M:%S.%f", "%Y-%m-%dT%H:%M:%S", "%Y/%b/%d %H:%M:%S.%f")
#: a line's first word (without a trailing colon) → its _MINI entry, compiled once
_MINI_BY_WORD: dict[str, tuple[str, re.Pattern[str]]] = {
    pattern[1:].split("\\", 1)[0].rstrip(":?"): (name, re.compile(pattern))
    for name, pattern, _ in _MINI
}
_BEAM_XY = re.compile(rf"^Beam_xy\s*\(\s*{_FLOAT}\s*,\s*{_FLOAT}\s*\)")
_PIXEL_SIZE = re.compile(rf"^Pixel_size\s+{_FLOAT}\s*m\s*x\s*{_FLOAT}\s*m")
_DATE_START = re.compile(r"^\d{4}[-/]")


def parse_mini_header(text: str) -> dict[str, Any]:
    """Per-frame metadata of a Pilatus mini-header (``# Key value`` lines); numbers as
    floats in :data:`MINI_UNITS`, ``detector`` as text; unknown lines are ignored."""
    out: dict[str, Any] = {}
    for raw in text.splitlines():
        line = raw.strip().lstrip("#").strip()
        if not line:
            continue
        # one dictionary look-up per line: a regex per known key and line cost more than
        # the rest of scanning a frame
        known = _MINI_BY_WORD.get(line.split(None, 1)[0].rstrip(":"))
        if known is not None and known[0] not in out:
            m = known[1].match(line)
            if m:
                out[known[0]] = float(m.group(1))
        elif line.startswith("Detector:"):
            out.setdefault("detector", line.split(":", 1)[1].strip())
        elif line.startswith("Beam_xy"):
            if m := _BEAM_XY.match(line):
                out["beam_center_x"], out["beam_center_y"] = float(m.group(1)), float(m.group(2))
        elif line.startswith("Pixel_size"):
            if m := _PIXEL_SIZE.match(line):
                out["x_pixel_size"], out["y_pixel_size"] = float(m.group(1)), float(m.group(2))
        elif "timestamp" not in out and _DATE_START.match(line):
            for fmt in _TIME_FORMATS:
                try:
                    t = datetime.strptime(line, fmt)
                except ValueError:
                    continue
                out["timestamp"] = (t - datetime(1970, 1, 1)).total_seconds()
                out["timestamp_text"] = line
                break
    return out


@dataclass
class CbfFrame:
    """One CBF file: its image's byte range and how it is encoded, plus its metadata."""

    path: str
    shape: tuple[int, int]
    dtype: str
    offset: int
    length: int
    meta: dict[str, Any] = field(default_factory=dict)


_HEAD_BYTES = 1 << 16


def scan_cbf(path: str) -> CbfFrame:
    """The binary section of a single-image CBF file (named errors for anything else)."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            head = f.read(_HEAD_BYTES)
    except OSError as exc:
        raise BadFrameError(f"{path}: cannot read: {exc.strerror}", path=path) from exc
    if not head.startswith(b"###CBF") and b"_array_data" not in head:
        raise BadFrameError(f"{path} is not a CBF file (no ###CBF signature)", path=path)
    start = head.find(BINARY_MARKER)
    if start < 0:
        raise BadFrameError(f"{path}: no binary image section (truncated CBF?)", path=path)
    text = head[:start].decode("latin-1")
    section = text.rfind("--CIF-BINARY-FORMAT-SECTION--")
    mime = text[section:] if section >= 0 else text
    fields: dict[str, str] = {}
    for line in mime.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields[key.strip().lower()] = value.strip()
    conv = re.search(r'conversions\s*=\s*"?([\w-]+)', mime, re.IGNORECASE)
    if conv is None or conv.group(1).lower() != "x-cbf_byte_offset":
        what = conv.group(1) if conv else "none given"
        raise UnsupportedFeatureError(
            f"{path}: CBF compression {what!r} is not supported (only x-CBF_BYTE_OFFSET)",
            path=path,
        )
    try:
        nbytes = int(fields["x-binary-size"])
        fast = int(fields["x-binary-size-fastest-dimension"])
        slow = int(fields.get("x-binary-size-second-dimension", "1"))
        third = int(fields.get("x-binary-size-third-dimension", "1"))
        kind = fields.get("x-binary-element-type", "signed 32-bit integer").strip('"').lower()
    except (KeyError, ValueError) as exc:
        raise BadFrameError(f"{path}: CBF binary header lacks {exc}", path=path) from exc
    if third != 1:
        raise UnsupportedFeatureError(f"{path}: 3-D CBF images are not supported", path=path)
    code = _ELEMENT_TYPES.get(kind)
    if code is None:
        raise UnsupportedFeatureError(f"{path}: CBF element type {kind!r}", path=path)
    order = fields.get("x-binary-element-byte-order", "LITTLE_ENDIAN").upper()
    if order != "LITTLE_ENDIAN":
        raise UnsupportedFeatureError(f"{path}: CBF byte order {order}", path=path)
    offset = start + len(BINARY_MARKER)
    if offset + nbytes > size:
        raise BadFrameError(
            f"{path} is truncated: its image needs bytes {offset}..{offset + nbytes} "
            f"but the file has {size}",
            path=path,
        )
    contents = re.search(r"_array_data\.header_contents\s*;(.*?)\n;", text, re.DOTALL)
    meta = parse_mini_header(contents.group(1) if contents else "")
    return CbfFrame(path, (slow, fast), np.dtype("<" + code).str, offset, nbytes, meta)
