"""h5py's values from what a map stores: the encodings of types Zarr v2 cannot describe.

A map keeps every HDF5 type exact, but some only as an encoding that a plain Zarr
reader sees (``hyperslab:dtype`` and ``hyperslab:encoding`` attributes, written by
``convert/dtypes.py``):

================================  ======================  ===============================
HDF5 type                         a plain Zarr reader     :func:`h5py_values` gives
================================  ======================  ===============================
compound with gaps, nested or     ``|V<itemsize>`` raw    a structured array with h5py's
array members; long double        records                 fields and offsets; ``longdouble``
variable-length sequences         ``bytes`` per element   an object array of typed arrays
(``encoding: vlen-array-bytes``)  (the packed values)     (h5py's ragged arrays)
compound with variable-length     one JSON document per   h5py's records (vlen members as
members, vlen of vlen             element                 typed arrays or bytes)
(``encoding: json``)
================================  ======================  ===============================

Variable-length strings and bytes are the same for both readers; references are
the referenced object's path (HDF5 references are file addresses, meaningless
outside the file). ``open_array`` and ``open_dataset`` apply this on every read; for
plain zarr (``open_store``, an exported map) call :func:`h5py_values` on what zarr
returns, with the array's attributes.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = [
    "DTYPE_ATTR",
    "ENCODING_ATTR",
    "dtype_from_json",
    "dtype_to_json",
    "first_difference",
    "h5py_values",
    "needs_decoding",
    "value_dtype",
    "zarr_fill_value",
]

#: attribute recording the real numpy dtype of a ``|V`` array (or a vlen array's element type)
DTYPE_ATTR = "hyperslab:dtype"
#: attribute recording how a materialised non-native array is encoded
ENCODING_ATTR = "hyperslab:encoding"

#: encodings whose stored elements are not yet h5py's values
_DECODED_ENCODINGS = ("vlen-array-bytes", "json")


def dtype_to_json(dt: np.dtype) -> Any:
    """A JSON form of any numpy dtype h5py returns, incl. offsets/itemsize and h5py's
    variable-length types (inverse: :func:`dtype_from_json`)."""
    if dt.fields is None:
        if dt.subdtype is not None:
            base, shape = dt.subdtype
            return {"base": dtype_to_json(base), "shape": list(shape)}
        if dt.kind == "O":
            return _object_dtype_to_json(dt)
        return dt.str
    return {
        "names": list(dt.names or ()),
        "formats": [dtype_to_json(dt.fields[n][0]) for n in dt.names or ()],
        "offsets": [int(dt.fields[n][1]) for n in dt.names or ()],
        "itemsize": int(dt.itemsize),
    }


def _object_dtype_to_json(dt: np.dtype) -> Any:
    import h5py

    string = h5py.check_string_dtype(dt)
    if string is not None:
        return {"vlen_str": string.encoding}
    vlen = h5py.check_vlen_dtype(dt)
    if vlen is not None:
        return {"vlen": dtype_to_json(vlen)}
    return "|O"


def dtype_from_json(obj: Any) -> np.dtype:
    """The numpy dtype :func:`dtype_to_json` described (h5py's vlen types included)."""
    if isinstance(obj, str):
        return np.dtype(obj)
    if isinstance(obj, dict) and "base" in obj:
        return np.dtype((dtype_from_json(obj["base"]), tuple(obj["shape"])))
    if isinstance(obj, dict) and "names" in obj:
        return np.dtype(
            {
                "names": obj["names"],
                "formats": [dtype_from_json(f) for f in obj["formats"]],
                "offsets": obj["offsets"],
                "itemsize": obj["itemsize"],
            }
        )
    if isinstance(obj, dict) and ("vlen" in obj or "vlen_str" in obj):
        import h5py

        if "vlen_str" in obj:
            return h5py.string_dtype(obj["vlen_str"])
        return h5py.vlen_dtype(dtype_from_json(obj["vlen"]))
    raise ValueError(f"not a dtype description: {obj!r}")


def needs_decoding(attrs: Mapping[str, Any]) -> bool:
    """Whether what zarr returns for an array with these attributes is not h5py's values."""
    encoding = attrs.get(ENCODING_ATTR)
    if encoding is None:
        return DTYPE_ATTR in attrs
    return encoding in _DECODED_ENCODINGS and (encoding != "json" or DTYPE_ATTR in attrs)


def value_dtype(attrs: Mapping[str, Any], stored: np.dtype) -> np.dtype:
    """The dtype h5py gives for an array zarr describes as ``stored``."""
    if not needs_decoding(attrs):
        return stored
    if attrs.get(ENCODING_ATTR) == "vlen-array-bytes":
        import h5py

        return h5py.vlen_dtype(dtype_from_json(attrs[DTYPE_ATTR]))
    return dtype_from_json(attrs[DTYPE_ATTR])


def h5py_values(values: Any, attrs: Mapping[str, Any]) -> Any:
    """``values`` as zarr returns them for an array with ``attrs``, as h5py returns them
    (see the module doc); anything that needs no decoding comes back as it is."""
    if not needs_decoding(attrs):
        return values
    arr = np.asarray(values)
    encoding = attrs.get(ENCODING_ATTR)
    if encoding is None:  # a void view: the same bytes, seen as the real dtype
        real = dtype_from_json(attrs[DTYPE_ATTR])
        if arr.dtype == real:
            return values  # decoded already
        out = np.ascontiguousarray(arr).view(real).reshape(arr.shape)
        return out[()] if out.ndim == 0 and np.ndim(values) == 0 else out
    dt = value_dtype(attrs, arr.dtype)
    flat = arr.reshape(-1)
    if arr.dtype.fields is not None or any(isinstance(v, np.ndarray) for v in flat[:1]):
        return values  # decoded already
    if encoding == "vlen-array-bytes":
        inner = dtype_from_json(attrs[DTYPE_ATTR])
        native = inner.newbyteorder("=")  # h5py gives a sequence's values in native order
        out = np.empty(flat.shape, dtype=dt)
        for i, v in enumerate(flat):
            out[i] = np.frombuffer(_as_bytes(v), dtype=inner).astype(native)
    else:
        docs = [json.loads(v) if isinstance(v, str | bytes) and v else None for v in flat]
        out = _column(docs, dt)
    out = out.reshape(arr.shape)
    return out[()] if out.ndim == 0 and np.ndim(values) == 0 else out


def first_difference(want: Any, got: Any) -> str | None:
    """Where ``got`` differs from h5py's ``want`` (None: the same values, bit for bit for
    numbers, field by field for records, element by element for object arrays)."""
    a, b = np.asarray(want), np.asarray(got)
    if a.shape != b.shape:
        return f"shape {b.shape} != {a.shape}"
    if a.dtype.fields is not None or b.dtype.fields is not None:
        if a.dtype.names != b.dtype.names:
            return f"fields {b.dtype.names} != {a.dtype.names}"
        for name in a.dtype.names or ():
            why = first_difference(a[name], b[name])
            if why is not None:
                return f"field {name!r}: {why}"
        return None
    if a.dtype.kind == "O" or b.dtype.kind == "O":
        for i, (x, y) in enumerate(zip(a.reshape(-1), b.reshape(-1), strict=True)):
            if isinstance(x, np.ndarray) or isinstance(y, np.ndarray):
                why = first_difference(x, y)
            else:
                why = None if x == y else f"{y!r} != {x!r}"
            if why is not None:
                return f"element {i}: {why}"
        return None
    if a.dtype.newbyteorder("=") != b.dtype.newbyteorder("="):
        return f"dtype {b.dtype} != {a.dtype}"
    native = a.dtype.newbyteorder("=")
    if a.astype(native).tobytes() != b.astype(native).tobytes():
        return "values differ"
    return None


def _as_bytes(v: Any) -> bytes:
    if isinstance(v, bytes):
        return v
    if isinstance(v, str):
        return v.encode("latin-1")
    return b"" if v is None else bytes(v)


def _column(docs: list[Any], dt: np.dtype) -> np.ndarray:
    """Elements of dtype ``dt`` from their JSON documents (``attr_to_json``'s form)."""
    if dt.fields is not None:
        out = np.zeros(len(docs), dtype=dt)
        for name in dt.names or ():
            member = [d.get(name) if isinstance(d, dict) else None for d in docs]
            out[name] = _column(member, dt.fields[name][0])
        return out
    if dt.subdtype is not None:
        base, shape = dt.subdtype
        rows = [np.zeros(shape, base) if d is None else _column(_flat(d), base) for d in docs]
        return np.array([r.reshape(shape) for r in rows], dtype=base).reshape(len(docs), *shape)
    if dt.kind == "O":
        out = np.empty(len(docs), dtype=object)
        for i, d in enumerate(docs):
            out[i] = _object(d, dt)
        return out
    if dt.kind in "SV":
        return np.array([_scalar_bytes(d) for d in docs], dtype=dt)
    return np.array([_number(d) for d in docs], dtype=dt)


def _flat(doc: Any) -> list[Any]:
    return list(np.asarray(doc, dtype=object).reshape(-1)) if isinstance(doc, list) else [doc]


def _object(doc: Any, dt: np.dtype) -> Any:
    import h5py

    if h5py.check_string_dtype(dt) is not None:
        return _scalar_bytes(doc)  # h5py returns a record's vlen strings as bytes
    inner = h5py.check_vlen_dtype(dt)
    if inner is not None:
        items = doc if isinstance(doc, list) else [] if doc is None else [doc]
        return _column(items, inner.newbyteorder("="))
    return doc


def _scalar_bytes(doc: Any) -> bytes:
    if isinstance(doc, dict) and "hyperslab:base64" in doc:
        return base64.b64decode(doc["hyperslab:base64"])
    if doc is None:
        return b""
    return str(doc).encode("utf-8", "surrogateescape")


def _number(doc: Any) -> Any:
    if isinstance(doc, list) and len(doc) == 2:  # complex, as [real, imag]
        return complex(doc[0], doc[1])
    return 0 if doc is None else doc


_SPECIAL_FLOATS: dict[Any, float] = {"NaN": np.nan, "Infinity": np.inf, "-Infinity": -np.inf}


def zarr_fill_value(zarray: Mapping[str, Any], dtype: np.dtype[Any]) -> Any:
    """The fill value a Zarr v2 ``.zarray`` gives for ``dtype``, as a value numpy fills
    with: zero when there is none, the ``NaN``/``Infinity`` strings as floats, complex
    ``[re, im]`` pairs, and base64 bytes for records and fixed strings."""
    fv = zarray["fill_value"]
    if fv is None:
        return np.zeros((), dtype)
    if dtype.kind == "V" or dtype.fields is not None or dtype.kind == "S":
        return np.frombuffer(base64.b64decode(fv), dtype=dtype)[0]
    if isinstance(fv, str):
        return _SPECIAL_FLOATS[fv]
    if isinstance(fv, list):
        re, im = (_SPECIAL_FLOATS[x] if x in _SPECIAL_FLOATS else float(x) for x in fv)
        return complex(re, im)
    return fv
