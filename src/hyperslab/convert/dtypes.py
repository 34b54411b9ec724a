"""HDF5 datatypes → Zarr v2 dtypes, fill values and JSON attributes.

Three outcomes for a dataset's type (:func:`plan_dtype`):

* **native**: Zarr v2 has the same dtype with the same bytes (integers, floats,
  complex, bool, fixed strings, flat compounds, opaque). Chunks are referenced
  in place and any Zarr reader decodes them.
* **void view**: the bytes are fine but Zarr has no such dtype (long double,
  compounds with nested/array members or gaps). Chunks are still referenced in
  place, stored as ``|V<itemsize>``; the true numpy dtype is recorded in the
  ``hyperslab:dtype`` attribute and hyperslab's readers view the bytes as it (:mod:`hyperslab.reading.values`).
* **materialise**: the file's bytes are not the values (variable-length data
  lives in the global heap, space-padded strings, references, odd bit
  precisions). The values are read through h5py and stored inside the map; the
  reason is reported.
"""

from __future__ import annotations

import base64
import math
from dataclasses import dataclass
from typing import Any, Literal

import h5py
import numpy as np

from hyperslab.reading.values import DTYPE_ATTR, ENCODING_ATTR, dtype_from_json, dtype_to_json

__all__ = [
    "DTYPE_ATTR",
    "ENCODING_ATTR",
    "DtypePlan",
    "attr_to_json",
    "dtype_from_json",
    "dtype_to_json",
    "fill_value_json",
    "plan_dtype",
    "value_bytes",
    "value_bytes_mask",
]

Kind = Literal["native", "void", "vlen-str", "vlen-bytes", "vlen-array", "reference", "json"]


@dataclass(frozen=True)
class DtypePlan:
    kind: Kind
    #: the numpy dtype of the Zarr array (object for vlen kinds)
    zarr_dtype: np.dtype
    #: the value of ``.zarray["dtype"]``
    zarr_dtype_json: Any
    #: numpy dtype h5py returns (what verification compares against)
    h5_dtype: np.dtype
    #: trailing dimensions added by an HDF5 array datatype (``('<i2', (2, 3))``)
    extra_shape: tuple[int, ...] = ()
    #: set when the values must be materialised instead of referenced
    materialise_reason: str | None = None
    #: extra .zattrs describing the encoding
    attrs: tuple[tuple[str, Any], ...] = ()


def _zarr_native_json(dt: np.dtype) -> Any | None:
    """The Zarr v2 dtype JSON if zarr 3.1 reads ``dt`` natively with identical bytes."""
    if dt.fields is not None:
        names = dt.names or ()
        fields = [dt.fields[n] for n in names]
        offset = 0
        out = []
        for name, (fdt, foff, *_) in zip(names, fields, strict=True):
            if foff != offset or fdt.fields is not None or fdt.subdtype is not None:
                return None  # gaps, nested or array members: zarr 3.1 cannot express them
            sub = _zarr_native_json(fdt)
            if sub is None:
                return None
            out.append([name, sub])
            offset += fdt.itemsize
        return out if offset == dt.itemsize else None
    if dt.subdtype is not None:
        return None
    if dt.kind in "biu" or (dt.kind == "f" and dt.itemsize in (2, 4, 8)):
        return dt.str
    if dt.kind == "c" and dt.itemsize in (8, 16):
        return dt.str
    if dt.kind in "SV" and dt.itemsize > 0:
        return dt.str
    return None


def _is_standard_numeric(tid: h5py.h5t.TypeID) -> bool:
    """True when an integer/float file type has the standard layout numpy assumes."""
    cls = tid.get_class()
    if not hasattr(tid, "get_precision"):
        return True  # h5py exposes no bit layout for this class (bitfield): plain bytes
    if cls == h5py.h5t.INTEGER or cls == h5py.h5t.BITFIELD:
        return bool(tid.get_precision() == tid.get_size() * 8 and tid.get_offset() == 0)
    if cls == h5py.h5t.FLOAT:
        size = tid.get_size()
        std = {2: h5py.h5t.IEEE_F16LE, 4: h5py.h5t.IEEE_F32LE, 8: h5py.h5t.IEEE_F64LE}.get(size)
        if std is None:
            return size == np.dtype(np.longdouble).itemsize and size > 8  # platform long double
        return bool(
            tid.get_precision() == size * 8
            and tid.get_offset() == 0
            and tid.get_fields() == std.get_fields()
            and tid.get_ebias() == std.get_ebias()
        )
    return True


def _materialise_reason(tid: h5py.h5t.TypeID) -> str | None:
    """Why the stored bytes of this file type are not the values h5py returns."""
    cls = tid.get_class()
    if cls == h5py.h5t.STRING:
        if tid.is_variable_str():
            return "variable-length strings live in the HDF5 global heap"
        if tid.get_strpad() == h5py.h5t.STR_SPACEPAD:
            return "space-padded fixed strings are converted on read"
        return None
    if cls == h5py.h5t.VLEN:
        return "variable-length sequences live in the HDF5 global heap"
    if cls == h5py.h5t.REFERENCE:
        return "object/region references are file addresses"
    if cls in (h5py.h5t.INTEGER, h5py.h5t.FLOAT, h5py.h5t.BITFIELD) and not _is_standard_numeric(
        tid
    ):
        return "non-standard numeric bit layout"
    if cls == h5py.h5t.ENUM:
        return _materialise_reason(tid.get_super())
    if cls == h5py.h5t.ARRAY:
        return _materialise_reason(tid.get_super())
    if cls == h5py.h5t.COMPOUND:
        for i in range(tid.get_nmembers()):
            why = _materialise_reason(tid.get_member_type(i))
            if why:
                return f"compound member {tid.get_member_name(i).decode(errors='replace')!r}: {why}"
    return None


#: attribute describing an HDF5 type that has no numpy equivalent (H5T_TIME, IEEE quad...)
RAW_TYPE_ATTR = "hyperslab:hdf5_type"


def describe_type(tid: h5py.h5t.TypeID) -> dict[str, Any]:
    """What we can say about an HDF5 type h5py cannot convert."""
    names = {
        getattr(h5py.h5t, n): n
        for n in (
            "INTEGER",
            "FLOAT",
            "TIME",
            "STRING",
            "BITFIELD",
            "OPAQUE",
            "COMPOUND",
            "REFERENCE",
            "ENUM",
            "VLEN",
            "ARRAY",
        )
    }
    out: dict[str, Any] = {
        "class": names.get(tid.get_class(), str(tid.get_class())),
        "size": tid.get_size(),
    }
    if hasattr(tid, "get_order"):
        out["order"] = "big" if tid.get_order() == h5py.h5t.ORDER_BE else "little"
    if hasattr(tid, "get_fields"):
        out["fields"] = list(tid.get_fields())
    if tid.get_class() == h5py.h5t.COMPOUND:
        out["members"] = [
            {
                "name": tid.get_member_name(i).decode(errors="replace"),
                "offset": tid.get_member_offset(i),
                **describe_type(tid.get_member_type(i)),
            }
            for i in range(tid.get_nmembers())
        ]
    return out


def plan_dtype(dset: h5py.Dataset) -> DtypePlan:
    """Decide how ``dset``'s values are represented in Zarr."""
    tid = dset.id.get_type()
    try:
        h5dt = dset.dtype
    except (TypeError, ValueError):
        # no numpy equivalent: the stored bytes are still exact, so reference them as raw
        size = tid.get_size()
        return DtypePlan(
            "void",
            np.dtype(f"V{size}"),
            f"|V{size}",
            np.dtype(f"V{size}"),
            (),
            None,
            ((RAW_TYPE_ATTR, describe_type(tid)),),
        )
    why = _materialise_reason(tid)
    extra: tuple[int, ...] = ()
    base = h5dt
    if h5dt.subdtype is not None:  # top-level HDF5 array type: becomes extra trailing dims
        base, extra = h5dt.subdtype
    if h5dt.hasobject or tid.get_class() == h5py.h5t.REFERENCE:
        return _plan_object(dset, tid, h5dt, why or "variable-length data")
    # a fixed-size compound with a member h5py converts (space-padded string...) keeps its
    # exact layout as a void view; its values are materialised through h5py
    materialised_compound = why is not None and base.fields is not None
    native = None if materialised_compound else _zarr_native_json(base)
    if native is not None:
        return DtypePlan("native", base, native, h5dt, extra, why)
    return DtypePlan(
        "void",
        np.dtype(f"V{base.itemsize}"),
        f"|V{base.itemsize}",
        h5dt,
        extra,
        why,
        ((DTYPE_ATTR, dtype_to_json(base)),),
    )


def _plan_object(dset: h5py.Dataset, tid: h5py.h5t.TypeID, h5dt: np.dtype, why: str) -> DtypePlan:
    obj = np.dtype(object)
    info = h5py.check_string_dtype(h5dt)
    if info is not None:
        if info.encoding == "utf-8":
            return DtypePlan("vlen-str", obj, "|O", h5dt, (), why, ((ENCODING_ATTR, "vlen-utf8"),))
        return DtypePlan("vlen-bytes", obj, "|O", h5dt, (), why, ((ENCODING_ATTR, "vlen-bytes"),))
    if h5py.check_opaque_dtype(h5dt):
        return DtypePlan("vlen-bytes", obj, "|O", h5dt, (), why, ((ENCODING_ATTR, "vlen-bytes"),))
    ref = h5py.check_ref_dtype(h5dt)
    if ref is not None:
        kind = "region" if ref is h5py.RegionReference else "object"
        return DtypePlan(
            "reference",
            obj,
            "|O",
            h5dt,
            (),
            why,
            ((ENCODING_ATTR, "reference-path"), ("hyperslab:reference", kind)),
        )
    vlen = h5py.check_vlen_dtype(h5dt)
    if vlen is not None and not vlen.hasobject:
        return DtypePlan(
            "vlen-array",
            obj,
            "|O",
            h5dt,
            (),
            why,
            ((ENCODING_ATTR, "vlen-array-bytes"), (DTYPE_ATTR, dtype_to_json(vlen))),
        )
    # compounds with vlen members, vlen of vlen ...: one JSON document per element, and
    # h5py's dtype, so that readers rebuild h5py's records (reading/values.py)
    return DtypePlan(
        "json",
        obj,
        "|O",
        h5dt,
        (),
        why,
        ((ENCODING_ATTR, "json"), (DTYPE_ATTR, dtype_to_json(h5dt))),
    )


# --------------------------------------------------------------- fill value
def value_bytes_mask(dt: np.dtype) -> np.ndarray:
    """Which bytes of one ``dt`` item carry its value: not the gaps between a compound's
    fields, nor the 6 padding bytes of an 80-bit x87 long double stored in 16. Those
    hold whatever memory HDF5's type conversion left there, different on every run."""
    mask = np.zeros(dt.itemsize, bool)
    if dt.fields is not None:
        for field_dt, offset, *_ in dt.fields.values():
            mask[offset : offset + field_dt.itemsize] |= value_bytes_mask(field_dt)
    elif dt.subdtype is not None:
        base, shape = dt.subdtype
        mask[:] = np.tile(value_bytes_mask(base), int(np.prod(shape)))
    elif dt.kind in "fc" and dt.itemsize in (16, 32) and np.finfo(dt).nmant == 63:
        part = dt.itemsize // (2 if dt.kind == "c" else 1)  # (real, imaginary)
        for start in range(0, dt.itemsize, part):
            sl = (
                slice(start + part - 10, start + part)
                if dt.byteorder == ">"
                else slice(start, start + 10)
            )
            mask[sl] = True
    else:
        mask[:] = True
    return mask


def value_bytes(value: Any, dt: np.dtype) -> bytes:
    """The bytes of ``value`` as ``dt`` items, with the bytes that carry no value
    (:func:`value_bytes_mask`) zeroed: the same on every run."""
    raw = np.frombuffer(np.asarray(value, dtype=dt).tobytes(), np.uint8).copy()
    if dt.itemsize:
        raw.reshape(-1, dt.itemsize)[:, ~value_bytes_mask(dt)] = 0
    return raw.tobytes()


def fill_value_json(value: Any, plan: DtypePlan) -> Any:
    """Zarr v2 ``fill_value`` for a Zarr dtype (NaN/Infinity as strings, bytes as base64)."""
    if plan.kind != "native" and plan.kind != "void":
        return None
    dt = plan.zarr_dtype
    if value is None:
        return None
    h5dt = plan.h5_dtype.base if plan.h5_dtype.subdtype else plan.h5_dtype
    try:
        raw = value_bytes(value, h5dt)
    except (TypeError, ValueError):
        raw = None
    if raw is not None and not any(raw):
        # all-zero fill == zarr's default; null keeps xarray from masking real zeros as NaN
        return None
    arr = np.asarray(value)
    if plan.kind == "void" or dt.fields is not None or dt.kind in "SV":
        if raw is None:  # (the named failure of the first try)
            raw = value_bytes(value, h5dt)
        return base64.b64encode(raw[: dt.itemsize].ljust(dt.itemsize, b"\0")).decode()
    if dt.kind == "b":
        return bool(arr)
    if dt.kind in "iu":
        return int(arr)
    if dt.kind == "f":
        return _float_json(float(arr))
    if dt.kind == "c":
        c = complex(arr)
        return [_float_json(c.real), _float_json(c.imag)]
    return None


def _float_json(x: float) -> Any:
    if math.isnan(x):
        return "NaN"
    if math.isinf(x):
        return "Infinity" if x > 0 else "-Infinity"
    return x


# ---------------------------------------------------------------- attributes
def attr_to_json(value: Any) -> Any:
    """An HDF5 attribute value as JSON (xarray/zarr attrs); never raises."""
    if isinstance(value, h5py.Empty):
        return None
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return {"hyperslab:base64": base64.b64encode(value).decode()}
    if isinstance(value, str | bool | int | type(None)):
        return value
    if isinstance(value, float):
        return value
    if isinstance(value, h5py.Reference | h5py.RegionReference):
        return "<HDF5 reference>" if not value else f"<HDF5 reference {value!r}>"
    if isinstance(value, np.generic):
        if isinstance(value, np.void) and value.dtype.fields:
            return {name: attr_to_json(value[name]) for name in value.dtype.names or ()}
        if isinstance(value, np.void):
            return {"hyperslab:base64": base64.b64encode(value.tobytes()).decode()}
        if isinstance(value, np.bytes_):
            return attr_to_json(bytes(value))
        if isinstance(value, np.complexfloating):
            return [float(value.real), float(value.imag)]
        if isinstance(value, np.floating) and value.dtype.itemsize > 8:
            return float(value)
        return value.item()
    if isinstance(value, np.ndarray):
        if value.ndim == 0:
            return attr_to_json(value[()])
        return (
            [attr_to_json(v) for v in value.tolist()]
            if value.dtype.kind not in "OVS"
            else [attr_to_json(v) for v in value]
        )
    if isinstance(value, list | tuple):
        return [attr_to_json(v) for v in value]
    return str(value)
