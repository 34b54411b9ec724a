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
* ``png``: 2-D only, 8-bit grayscale: ``(value - vmin) / (vmax - vmin)`` clipped to 0..1,
  times 255, rounded to the nearest integer; ``vmin`` and ``vmax`` are the 1st and 99th
  percentiles of the finite values unless given; NaN is 0; with ``vmax <= vmin`` a value
  above ``vmin`` is 255 and any other 0.
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
    "FORMATS",
    "Selection",
    "encode",
    "h5_tree",
    "parse_selection",
    "png_scale",
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


def png_scale(arr: np.ndarray, vmin: float | None, vmax: float | None) -> np.ndarray:
    """``arr`` scaled to uint8 as the module's description says."""
    values = arr.astype(np.float64)
    finite = values[np.isfinite(values)]
    if vmin is None:
        vmin = float(np.percentile(finite, 1)) if finite.size else 0.0
    if vmax is None:
        vmax = float(np.percentile(finite, 99)) if finite.size else 0.0
    with np.errstate(invalid="ignore", divide="ignore"):
        if vmax > vmin:
            scaled = np.clip((values - vmin) / (vmax - vmin), 0.0, 1.0) * 255.0
        else:
            scaled = np.where(values > vmin, 255.0, 0.0)
    return np.rint(np.nan_to_num(scaled, nan=0.0)).astype(np.uint8)


def _png(arr: np.ndarray, vmin: float | None, vmax: float | None) -> bytes:
    import imagecodecs

    if arr.ndim != 2 or arr.dtype.kind not in "biuf":
        raise BadInputError(f"png needs a 2-D numeric selection, not shape {arr.shape}")
    return bytes(imagecodecs.png_encode(png_scale(arr, vmin, vmax)))


def _h5_attr(value: Any) -> Any:
    if isinstance(value, dict | list) and not (
        isinstance(value, list) and all(isinstance(v, int | float | str) for v in value)
    ):
        return json.dumps(value)
    return value


#: attributes of the store that describe its encoding, not the data: never written to HDF5
_INTERNAL = ("_ARRAY_DIMENSIONS", "hyperslab:")


def _set_attrs(obj: Any, attrs: dict[str, Any]) -> None:
    for name, value in attrs.items():
        if name.startswith(_INTERNAL):
            continue
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
) -> tuple[bytes, dict[str, str]]:
    """``(body, extra headers)`` of ``arr`` in format ``fmt``."""
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
        return _png(arr, vmin, vmax), {}
    if fmt == "h5":
        return _h5(arr, attrs or {}), {}
    raise BadInputError(f"format must be one of {', '.join(FORMATS)}, not {fmt!r}")
