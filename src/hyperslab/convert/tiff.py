"""TIFF detector frames: each page's strips or tiles as chunks, referenced in place.

tifffile parses the file structure (``dataoffsets``/``databytecounts``, compression,
predictor); nothing is decoded here. A page becomes one chunk when its strips are
uncompressed and contiguous, otherwise one chunk per strip (``(rowsperstrip, width)``)
or per tile. Compressions with an exact numcodecs codec are accepted: none, deflate
(``zlib``), LZW and PackBits (imagecodecs' codecs), Zstandard; others raise
:class:`~hyperslab.errors.UnsupportedFeatureError`. Strips and tiles carry
:class:`TiffStrip` (``hyperslab.tiff_strip``), which undoes the horizontal-differencing
predictor (TIFF predictor 2) and pads a short last strip to the full chunk size.
The file's byte order is kept (``>u2`` for a big-endian file).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
from numcodecs.abc import Codec
from numcodecs.compat import ensure_contiguous_ndarray, ndarray_copy
from numcodecs.registry import register_codec

from hyperslab.convert.cbf import parse_mini_header
from hyperslab.errors import BadFrameError, UnsupportedFeatureError

__all__ = ["TiffPageRefs", "TiffStrip", "scan_tiff"]

#: TIFF compression tag → numcodecs config of its decoder (None: stored raw)
_COMPRESSORS: dict[int, dict[str, Any] | None] = {
    1: None,
    5: {"id": "imagecodecs_lzw"},
    8: {"id": "zlib", "level": 6},
    32946: {"id": "zlib", "level": 6},
    32773: {"id": "imagecodecs_packbits"},
    50000: {"id": "zstd", "level": 0},
}
_NAMES = {1: "none", 5: "LZW", 8: "deflate", 32946: "deflate", 32773: "PackBits", 50000: "zstd"}


class TiffStrip(Codec):
    """Undo TIFF predictor 2 (horizontal differencing, rows of ``row`` samples) and pad
    a short strip with zeros to ``nbytes``. ``predictor`` 1 only pads."""

    codec_id = "hyperslab.tiff_strip"

    def __init__(self, dtype: str, row: int, nbytes: int, predictor: int = 1) -> None:
        self.dtype = str(np.dtype(dtype).str)
        self.row = int(row)
        self.nbytes = int(nbytes)
        self.predictor = int(predictor)

    def encode(self, buf: Any) -> bytes:
        arr = ensure_contiguous_ndarray(buf).reshape(-1).view(self.dtype)
        if self.predictor == 2:
            rows = arr.reshape(-1, self.row)
            native = rows.astype(rows.dtype.newbyteorder("="))
            diff = native.copy()
            diff[:, 1:] = native[:, 1:] - native[:, :-1]
            arr = diff.astype(self.dtype).reshape(-1)
        return arr.tobytes()

    def decode(self, buf: Any, out: Any = None) -> Any:
        raw = ensure_contiguous_ndarray(buf).reshape(-1).view(np.uint8)
        if self.predictor == 2:
            itemsize = np.dtype(self.dtype).itemsize
            usable = raw.size - raw.size % (itemsize * self.row)
            rows = raw[:usable].view(self.dtype).reshape(-1, self.row)
            native = rows.dtype.newbyteorder("=")
            summed = np.cumsum(rows.astype(native), axis=1, dtype=native)
            raw = summed.astype(self.dtype).reshape(-1).view(np.uint8)
        if raw.size < self.nbytes:
            raw = np.concatenate([raw, np.zeros(self.nbytes - raw.size, np.uint8)])
        elif raw.size > self.nbytes:
            raise ValueError(f"strip decodes to {raw.size} bytes, more than {self.nbytes}")
        if out is None:
            return raw
        return ndarray_copy(raw, out)

    def get_config(self) -> dict[str, Any]:
        return {
            "id": self.codec_id,
            "dtype": self.dtype,
            "row": self.row,
            "nbytes": self.nbytes,
            "predictor": self.predictor,
        }


register_codec(TiffStrip)


@dataclass
class TiffPageRefs:
    """One page: its chunks (row-major within the page) and how they are encoded."""

    shape: tuple[int, int]
    dtype: str
    chunks: tuple[int, int]
    filters: list[dict[str, Any]] | None
    layout: str  # what must match across a series, for the error message
    offsets: np.ndarray
    lengths: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)


def _rational(v: Any) -> float | None:
    if isinstance(v, tuple) and len(v) == 2 and v[1]:
        return float(v[0]) / float(v[1])
    return None


def _page_meta(page: Any) -> dict[str, Any]:
    meta: dict[str, Any] = {}
    # one pass over the page's tags (tifffile's tags.get(name) walks them all each
    # time); the first of a repeated tag wins, as there
    tags: dict[str, Any] = {}
    for t in page.tags.values():
        tags.setdefault(t.name, t.value)
    desc = tags.get("ImageDescription")
    if isinstance(desc, str) and desc:
        meta["description"] = desc
        meta.update(parse_mini_header(desc))  # Pilatus TIFFs carry their mini-header here
    when = tags.get("DateTime")
    if isinstance(when, str) and "timestamp" not in meta:
        try:
            t = datetime.strptime(when.strip(), "%Y:%m:%d %H:%M:%S")
            meta["timestamp"] = (t - datetime(1970, 1, 1)).total_seconds()
            meta["timestamp_text"] = when.strip()
        except ValueError:
            pass
    unit = {2: 0.0254, 3: 0.01}.get(int(tags.get("ResolutionUnit") or 2))
    for axis in ("x", "y"):
        res = _rational(tags.get(f"{axis.upper()}Resolution"))
        if res and unit and f"{axis}_pixel_size" not in meta:
            meta[f"{axis}_pixel_size"] = unit / res  # metres per pixel
    for name, key in (("Software", "software"), ("Model", "detector"), ("Artist", "artist")):
        v = tags.get(name)
        if isinstance(v, str) and v and key not in meta:
            meta[key] = v
    return meta


def scan_tiff(path: str) -> list[TiffPageRefs]:
    """Every page of a TIFF file as chunk references (named errors for what cannot be)."""
    import tifffile

    try:
        tif = tifffile.TiffFile(path)
    except (OSError, ValueError, tifffile.TiffFileError) as exc:
        raise BadFrameError(f"{path} is not a readable TIFF file: {exc}", path=path) from exc
    out: list[TiffPageRefs] = []
    with tif:
        for page in tif.pages:
            out.append(_scan_page(path, tif.byteorder, page))
    if not out:
        raise BadFrameError(f"{path} holds no image", path=path)
    return out


def _scan_page(path: str, byteorder: str, page: Any) -> TiffPageRefs:
    comp = int(page.compression)
    if comp not in _COMPRESSORS:
        name = getattr(page.compression, "name", str(comp))
        raise UnsupportedFeatureError(
            f"{path}: TIFF compression {name} ({comp}) has no exact codec here "
            f"(supported: {', '.join(sorted(set(_NAMES.values())))})",
            path=path,
        )
    predictor = int(page.predictor or 1)
    if predictor not in (1, 2):
        raise UnsupportedFeatureError(
            f"{path}: TIFF predictor {predictor} (floating point) is not supported", path=path
        )
    if page.samplesperpixel != 1 or len(page.shape) != 2:
        raise UnsupportedFeatureError(
            f"{path}: only single-sample 2-D TIFF pages are frames (this one has shape "
            f"{page.shape})",
            path=path,
        )
    dtype = np.dtype(page.dtype).newbyteorder(byteorder if byteorder in "<>" else "=")
    if page.bitspersample != dtype.itemsize * 8 or int(page.fillorder) != 1:
        raise UnsupportedFeatureError(
            f"{path}: packed {page.bitspersample}-bit TIFF samples are not supported", path=path
        )
    shape = (int(page.imagelength), int(page.imagewidth))
    offsets = np.asarray(page.dataoffsets, np.int64)
    lengths = np.asarray(page.databytecounts, np.int64)
    compressor = _COMPRESSORS[comp]
    if page.is_tiled:
        chunks = (int(page.tilelength), int(page.tilewidth))
    elif comp == 1 and predictor == 1 and page.is_contiguous:
        chunks = shape
        offsets = offsets[:1]
        lengths = np.array([shape[0] * shape[1] * dtype.itemsize], np.int64)
    else:
        chunks = (min(int(page.rowsperstrip), shape[0]), shape[1])
    nbytes = chunks[0] * chunks[1] * dtype.itemsize
    filters: list[dict[str, Any]] = []
    if chunks != shape or predictor != 1 or compressor is not None:
        filters.append(TiffStrip(dtype.str, chunks[1], nbytes, predictor).get_config())
    if compressor is not None:
        filters.append(compressor)
    kind = "tiles" if page.is_tiled else "strips"
    layout = f"{_NAMES[comp]} compression, predictor {predictor}, {kind} of {chunks[0]}x{chunks[1]}"
    return TiffPageRefs(
        shape,
        dtype.str,
        chunks,
        filters or None,
        layout,
        offsets,
        lengths,
        _page_meta(page),
    )
