"""Array slices for ``GET /api/slice/<entry>/<array>?sel=&format=``: the selection
syntax and the file formats a slice is sent in.

Selection (``sel``): comma-separated, one item per axis, NumPy style: an integer (negative
counts from the end), ``start:stop[:step]`` (any part may be left out, start and stop may
be negative, the step must be positive), ``:`` or nothing for the whole axis, and at most
one ``...`` for the axes not named; absent or empty: the whole array. An integer drops its
axis. A malformed part or an integer out of range is a :class:`BadInputError` naming it.

Formats (``format``, default ``npy``):

* ``npy``: :func:`numpy.save`'s bytes.
* ``raw``: the values' bytes in C order; the dtype (NumPy's ``str``, e.g. ``<u4``, or the
  JSON of its ``descr`` for records) and shape (``4,24,32``) come in headers.
* ``json``: ``{"shape", "dtype", "data"}``, ``data`` as nested lists; the non-finite floats
  are the strings ``"NaN"``, ``"Infinity"`` and ``"-Infinity"`` (which ``float()`` reads).
* ``csv``: 1-D (one value a line) or 2-D (a row a line) only.
* ``tiff``: 2-D or 3-D only, via tifffile.
* ``png``: 2-D only. Each value becomes a fraction ``t``: ``(value - vmin) / (vmax - vmin)``
  clipped to 0..1; ``vmin`` and ``vmax`` are the ``pmin``-th and ``pmax``-th percentiles
  (default 1 and 99) of the finite values unless given (for unsigned integers of 16 bits
  or more, of those below the dtype's largest value, which hybrid-pixel detectors write
  into module gaps and bad pixels); NaN is 0; with ``vmax <= vmin``
  a value above ``vmin`` is 1 and any other 0. ``scale=log`` (default ``linear``) then
  takes ``t = log(1 + 1000 t) / log(1001)`` (DS9's log scale: faint pixels spread out,
  0 and 1 kept). The level is ``t`` times 255 rounded to the nearest integer.
  ``cmap=gray`` (default) sends it as 8-bit grayscale; any other colour map
  (:data:`COLORMAPS`, :func:`colormap`) sends RGB, the map's colour of the level.
* ``h5``: an HDF5 file holding the slice as dataset ``data`` with the array's attributes.

:func:`h5_tree` writes many arrays and groups, under their paths, as one HDF5 file (the
``/api/download`` endpoint).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from hyperslab.errors import BadInputError

__all__ = [
    "COLORMAPS",
    "FORMATS",
    "INTERNAL_ATTRS",
    "SCALES",
    "Selection",
    "check_png",
    "colormap",
    "encode",
    "h5_tree",
    "parse_selection",
    "png_scale",
    "public_attrs",
]

#: format → media type
FORMATS = {
    "npy": "application/octet-stream",
    "raw": "application/octet-stream",
    "json": "application/json",
    "csv": "text/csv; charset=utf-8",
    "tiff": "image/tiff",
    "png": "image/png",
    "h5": "application/x-hdf5",
}


@dataclass(frozen=True)
class Selection:
    """A selection normalized against a shape: one int or positive-step slice per axis."""

    items: tuple[int | slice, ...]
    shape: tuple[int, ...]  # the result's

    def text(self) -> str:
        """A canonical spelling (the same selection, the same text)."""

        def one(i: int | slice) -> str:
            return str(i) if isinstance(i, int) else f"{i.start}:{i.stop}:{i.step}"

        return ",".join(one(i) for i in self.items)


def _int(text: str, part: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise BadInputError(
            f"selection part {part!r} is not an integer or start:stop:step"
        ) from None


def parse_selection(sel: str | None, shape: tuple[int, ...]) -> Selection:
    """``sel`` (see the module's description) normalized against ``shape``."""
    raw = [] if sel is None or not sel.strip() else [p.strip() for p in sel.split(",")]
    if raw.count("...") > 1:
        raise BadInputError(f"selection {sel!r} has more than one '...'")
    named = len(raw) - raw.count("...")
    if named > len(shape):
        raise BadInputError(
            f"selection {sel!r} names {named} axes; the array has {len(shape)} (shape {shape})"
        )
    if "..." in raw:
        at = raw.index("...")
        raw = raw[:at] + [":"] * (len(shape) - named) + raw[at + 1 :]
    raw += [":"] * (len(shape) - len(raw))
    items: list[int | slice] = []
    out: list[int] = []
    for axis, (part, n) in enumerate(zip(raw, shape, strict=True)):
        if ":" not in part and part:
            i = _int(part, part)
            if not -n <= i < n:
                raise BadInputError(f"index {i} is out of range for axis {axis} of length {n}")
            items.append(i + n if i < 0 else i)
            continue
        bits = part.split(":") if part else ["", ""]
        if len(bits) > 3:
            raise BadInputError(f"selection part {part!r} has more than start:stop:step")
        start, stop, step = (None if not b else _int(b, part) for b in (*bits, "")[:3])
        if step is not None and step <= 0:
            raise BadInputError(f"selection part {part!r}: the step must be positive")
        s = slice(*slice(start, stop, step).indices(n))
        items.append(s)
        out.append(len(range(s.start, s.stop, s.step)))
    return Selection(tuple(items), tuple(out))


# ----------------------------------------------------------------------- formats


def _npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    try:
        np.save(buf, arr, allow_pickle=False)
    except ValueError:
        raise BadInputError(f"dtype {arr.dtype} cannot be written as npy; try json") from None
    return buf.getvalue()


def _dtype_text(dtype: np.dtype[Any]) -> str:
    return json.dumps(dtype.descr) if dtype.fields else dtype.str


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, complex):
        return [value.real, value.imag]
    return str(value)


def _json(arr: np.ndarray) -> bytes:
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        obj = arr.astype(object)
        obj[np.isnan(arr)] = "NaN"
        obj[np.isposinf(arr)] = "Infinity"
        obj[np.isneginf(arr)] = "-Infinity"
        data = obj.tolist()
    else:
        data = arr.tolist()
    doc = {"shape": list(arr.shape), "dtype": _dtype_text(arr.dtype), "data": data}
    return json.dumps(doc, default=_jsonable, allow_nan=False).encode()


def _csv(arr: np.ndarray) -> bytes:
    if arr.ndim not in (1, 2) or arr.dtype.fields:
        raise BadInputError(
            f"csv needs a 1-D or 2-D selection of plain values, not shape {arr.shape}"
        )
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    rows = arr.reshape(-1, 1) if arr.ndim == 1 else arr
    for row in rows.tolist():
        writer.writerow(v.decode("utf-8", "replace") if isinstance(v, bytes) else v for v in row)
    return buf.getvalue().encode()


def _tiff(arr: np.ndarray) -> bytes:
    import tifffile

    if arr.ndim not in (2, 3) or arr.dtype.kind not in "biuf":
        raise BadInputError(f"tiff needs a 2-D or 3-D numeric selection, not shape {arr.shape}")
    buf = io.BytesIO()
    tifffile.imwrite(buf, arr)
    return buf.getvalue()


#: PNG level scales (``scale``)
SCALES = ("linear", "log")
#: PNG colour maps (``cmap``); see :func:`colormap`
COLORMAPS = ("gray", "gray_r", "hot", "cubehelix")
#: the ``a`` of the log scale ``log(1 + a t) / log(1 + a)``
LOG_A = 1000.0
#: zlib level of PNGs: 1 encodes a 1024 x 1024 detector frame in a third of the time of
#: zlib's default (6) for 3 % more bytes; a preview is wanted soon more than small
PNG_LEVEL = 1


def check_png(
    *, scale: str = "linear", cmap: str = "gray", pmin: float = 1.0, pmax: float = 99.0
) -> None:
    """A :class:`BadInputError` naming the fault unless these PNG options are valid."""
    if scale not in SCALES:
        raise BadInputError(f"scale must be one of {', '.join(SCALES)}, not {scale!r}")
    if cmap not in COLORMAPS:
        raise BadInputError(f"cmap must be one of {', '.join(COLORMAPS)}, not {cmap!r}")
    if not 0.0 <= pmin < pmax <= 100.0:
        raise BadInputError(f"need 0 <= pmin < pmax <= 100, not pmin={pmin}, pmax={pmax}")


def png_scale(
    arr: np.ndarray,
    vmin: float | None,
    vmax: float | None,
    *,
    scale: str = "linear",
    pmin: float = 1.0,
    pmax: float = 99.0,
) -> np.ndarray:
    """``arr`` scaled to uint8 levels as the module's description says."""
    check_png(scale=scale, pmin=pmin, pmax=pmax)
    values = arr.astype(np.float64)  # a copy: the steps below work in place on it
    if vmin is None or vmax is None:
        if arr.dtype.kind == "u" and arr.dtype.itemsize >= 2:  # detectors' gap marker
            finite = values[arr != np.iinfo(arr.dtype).max]
        elif arr.dtype.kind in "biu":  # integers are all finite
            finite = values
        else:
            finite = values[np.isfinite(values)]
        # both percentiles from one partition of the values (the same numbers as two calls)
        low, high = np.percentile(finite, [pmin, pmax]) if finite.size else (0.0, 0.0)
        vmin = float(low) if vmin is None else vmin
        vmax = float(high) if vmax is None else vmax
    # the formulas of the module's description, each step in place (a frame is 8 MB of
    # float64; fresh arrays for every step took 3x as long)
    with np.errstate(invalid="ignore", divide="ignore"):
        if vmax > vmin:
            t = np.subtract(values, vmin, out=values)
            np.divide(t, vmax - vmin, out=t)
            np.clip(t, 0.0, 1.0, out=t)
        else:
            t = np.where(values > vmin, 1.0, 0.0)
    np.nan_to_num(t, copy=False, nan=0.0)
    if scale == "log":
        np.multiply(t, LOG_A, out=t)
        np.log1p(t, out=t)
        np.divide(t, np.log1p(LOG_A), out=t)
    np.multiply(t, 255.0, out=t)
    return np.rint(t, out=t).astype(np.uint8)


def colormap(name: str) -> np.ndarray:
    """The ``(256, 3)`` uint8 RGB colour of each level ``k`` (``x = k / 255``) in map ``name``:

    * ``gray``: ``(x, x, x)``; ``gray_r``: ``(1 - x, 1 - x, 1 - x)`` (dark spots on white).
    * ``hot``: black, red, yellow, white: ``r = x / 0.365``, ``g = (x - 0.365) / 0.381``,
      ``b = (x - 0.746) / 0.254``, each clipped to 0..1.
    * ``cubehelix``: D. A. Green's (2011, Bull. Astr. Soc. India 39, 289), start 0.5,
      rotations -1.5, hue 1, gamma 1: ``phi = 2 pi (start / 3 + rotations x)``,
      ``a = hue x (1 - x) / 2``, ``r = x + a (-0.14861 cos phi + 1.78277 sin phi)``,
      ``g = x + a (-0.29227 cos phi - 0.90649 sin phi)``, ``b = x + a 1.97294 cos phi``:
      a colour helix whose luminance rises steadily from black to white.

    Each channel is times 255, rounded to the nearest integer."""
    x = np.arange(256, dtype=np.float64) / 255.0
    if name == "gray":
        rgb = np.stack([x, x, x], axis=1)
    elif name == "gray_r":
        rgb = np.stack([1 - x, 1 - x, 1 - x], axis=1)
    elif name == "hot":
        rgb = np.stack([x / 0.365, (x - 0.365) / 0.381, (x - 0.746) / 0.254], axis=1)
    elif name == "cubehelix":
        start, rotations, hue = 0.5, -1.5, 1.0
        phi = 2.0 * np.pi * (start / 3.0 + rotations * x)
        amp = hue * x * (1.0 - x) / 2.0
        cos, sin = np.cos(phi), np.sin(phi)
        rgb = np.stack(
            [
                x + amp * (-0.14861 * cos + 1.78277 * sin),
                x + amp * (-0.29227 * cos - 0.90649 * sin),
                x + amp * (1.97294 * cos),
            ],
            axis=1,
        )
    else:
        raise BadInputError(f"cmap must be one of {', '.join(COLORMAPS)}, not {name!r}")
    return np.rint(np.clip(rgb, 0.0, 1.0) * 255.0).astype(np.uint8)


def _png(
    arr: np.ndarray,
    vmin: float | None,
    vmax: float | None,
    scale: str,
    cmap: str,
    pmin: float,
    pmax: float,
) -> bytes:
    import imagecodecs

    if arr.ndim != 2 or arr.dtype.kind not in "biuf":
        raise BadInputError(f"png needs a 2-D numeric selection, not shape {arr.shape}")
    lut = colormap(cmap)  # an unknown map is refused before any scaling
    levels = png_scale(arr, vmin, vmax, scale=scale, pmin=pmin, pmax=pmax)
    image = levels if cmap == "gray" else lut[levels]
    return bytes(imagecodecs.png_encode(image, level=PNG_LEVEL))


def _h5_attr(value: Any) -> Any:
    if isinstance(value, dict | list) and not (
        isinstance(value, list) and all(isinstance(v, int | float | str) for v in value)
    ):
        return json.dumps(value)
    return value


#: attributes of the store that describe its encoding, not the data: never written to HDF5
INTERNAL_ATTRS = ("_ARRAY_DIMENSIONS", "hyperslab:")


def public_attrs(attrs: dict[str, Any]) -> dict[str, Any]:
    """``attrs`` without the store's encoding attributes (:data:`INTERNAL_ATTRS` prefixes)."""
    return {k: v for k, v in attrs.items() if not k.startswith(INTERNAL_ATTRS)}


def _set_attrs(obj: Any, attrs: dict[str, Any]) -> None:
    for name, value in public_attrs(attrs).items():
        try:
            obj.attrs[name] = _h5_attr(value)
        except (TypeError, ValueError):
            obj.attrs[name] = json.dumps(value, default=str)


def _dataset(parent: Any, name: str, arr: np.ndarray, attrs: dict[str, Any]) -> None:
    import h5py

    arr = np.asarray(arr)
    if arr.dtype.kind in "OTU":  # text: HDF5 variable-length UTF-8 strings
        ds = parent.create_dataset(name, data=arr.astype(object), dtype=h5py.string_dtype())
    else:
        ds = parent.create_dataset(name, data=arr)
    _set_attrs(ds, attrs)


def _h5(arr: np.ndarray, attrs: dict[str, Any]) -> bytes:
    import h5py

    buf = io.BytesIO()
    with h5py.File(buf, "w") as f:
        _dataset(f, "data", arr, attrs)
    return buf.getvalue()


def h5_tree(
    groups: dict[str, dict[str, Any]],
    arrays: Iterable[tuple[str, np.ndarray, dict[str, Any]]],
) -> bytes:
    """An HDF5 file of ``groups`` (path → attributes; ``""`` is the root) and ``arrays``
    (``(path, values, attributes)``), each under its path."""
    import h5py

    buf = io.BytesIO()
    with h5py.File(buf, "w") as f:
        for path in sorted(groups):
            _set_attrs(f.require_group(path) if path else f, groups[path])
        for path, values, attrs in arrays:
            _dataset(f, path, values, attrs)
    return buf.getvalue()


def encode(
    arr: np.ndarray,
    fmt: str,
    *,
    attrs: dict[str, Any] | None = None,
    vmin: float | None = None,
    vmax: float | None = None,
    scale: str = "linear",
    cmap: str = "gray",
    pmin: float = 1.0,
    pmax: float = 99.0,
) -> tuple[bytes, dict[str, str]]:
    """``(body, extra headers)`` of ``arr`` in format ``fmt`` (``vmin`` to ``pmax``: png's)."""
    arr = np.asarray(arr)
    if fmt == "npy":
        return _npy(arr), {}
    if fmt == "raw":
        if arr.dtype.kind == "O":
            raise BadInputError(f"dtype {arr.dtype} has no raw bytes; try json")
        shape = ",".join(map(str, arr.shape))
        return np.ascontiguousarray(arr).tobytes(), {
            "X-Dtype": _dtype_text(arr.dtype),
            "X-Shape": shape,
        }
    if fmt == "json":
        return _json(arr), {}
    if fmt == "csv":
        return _csv(arr), {}
    if fmt == "tiff":
        return _tiff(arr), {}
    if fmt == "png":
        return _png(arr, vmin, vmax, scale, cmap, pmin, pmax), {}
    if fmt == "h5":
        return _h5(arr, attrs or {}), {}
    raise BadInputError(f"format must be one of {', '.join(FORMATS)}, not {fmt!r}")
