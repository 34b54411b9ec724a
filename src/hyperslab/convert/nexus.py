"""NeXus awareness: default NXdata, signal/axes, dimension names, catalog metadata.

xarray needs a name for every dimension (``_ARRAY_DIMENSIONS``). We take them,
in order of preference, from HDF5 dimension scales (netCDF4 files), from NeXus
``NXdata`` ``axes`` / ``AXIS_indices`` attributes, and otherwise make
``phony_dim_<k>`` names, one per distinct length within a group (as h5netcdf
does), so that every group opens as a valid xarray Dataset.
"""

from __future__ import annotations

import posixpath
from typing import Any

import h5py
import numpy as np

from hyperslab.convert.dtypes import attr_to_json
from hyperslab.references.refmap import RefMap

__all__ = ["assign_dimensions", "nexus_metadata", "scale_dimensions"]

DIMS = "_ARRAY_DIMENSIONS"

#: NeXus fields recorded for the catalog: key → (NX_class path, field names tried)
_FIELDS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "title": ((), ("title",)),
    "start_time": ((), ("start_time",)),
    "end_time": ((), ("end_time",)),
    "definition": ((), ("definition",)),
    "experiment_identifier": ((), ("experiment_identifier",)),
    "sample": (("NXsample",), ("name", "chemical_formula")),
    "sample_temperature": (("NXsample",), ("temperature",)),
    "instrument": (("NXinstrument",), ("name",)),
    "beamline": (("NXinstrument",), ("name",)),
    "source": (("NXinstrument", "NXsource"), ("name",)),
    "detector": (("NXinstrument", "NXdetector"), ("description", "local_name", "name")),
    "energy": (("NXinstrument", "NXmonochromator"), ("energy",)),
    "wavelength": (("NXinstrument", "NXmonochromator"), ("wavelength",)),
}


def _nx_class(obj: h5py.HLObject) -> str | None:
    v = obj.attrs.get("NX_class")
    if v is None:
        return None
    v = attr_to_json(v)
    return v if isinstance(v, str) else None


def _children_of_class(group: h5py.Group, cls: str) -> list[h5py.Group]:
    return _ClassIndex().children(group, cls)


def _scalar(ds: h5py.Dataset) -> Any:
    try:
        if ds.shape is None or (ds.shape and int(np.prod(ds.shape)) > 16):
            return None
        v = attr_to_json(ds[()])
        if isinstance(v, list) and len(v) == 1:
            v = v[0]
        return v
    except Exception:
        return None


def _default_entry(f: h5py.File) -> h5py.Group | None:
    name = attr_to_json(f.attrs.get("default")) if "default" in f.attrs else None
    if isinstance(name, str) and name in f and isinstance(f[name], h5py.Group):
        return f[name]
    entries = _children_of_class(f["/"], "NXentry")
    return entries[0] if entries else None


def default_nxdata(f: h5py.File) -> h5py.Group | None:
    """The NXdata group a NeXus reader should plot by default (``default`` attributes)."""
    entry = _default_entry(f)
    if entry is None:
        return None
    name = attr_to_json(entry.attrs.get("default")) if "default" in entry.attrs else None
    if isinstance(name, str) and name in entry:
        obj = entry[name]
        if isinstance(obj, h5py.Group):
            return obj
    found = _children_of_class(entry, "NXdata")
    return found[0] if found else None


class _ClassIndex:
    """The NXclass children of each group, found in one pass over a group and kept
    (opening an HDF5 object through h5py costs tens of microseconds; the catalog's
    fields look under the same few groups again and again)."""

    def __init__(self) -> None:
        self.by_group: dict[str, dict[str, list[h5py.Group]]] = {}

    def children(self, group: h5py.Group, cls: str) -> list[h5py.Group]:
        classes = self.by_group.get(group.name)
        if classes is None:
            classes = self.by_group[group.name] = {}
            for name in group:
                try:
                    obj = group[name]
                except (KeyError, OSError, RuntimeError):
                    continue
                if isinstance(obj, h5py.Group):
                    c = _nx_class(obj)
                    if c is not None:
                        classes.setdefault(c, []).append(obj)
        return classes.get(cls, [])


def nexus_metadata(f: h5py.File, prefix: str = "") -> dict[str, Any]:
    """Key NeXus metadata of a file for the catalog (empty dict for plain HDF5)."""
    entry = _default_entry(f)
    if entry is None:
        return {}
    meta: dict[str, Any] = {"entry": entry.name.lstrip("/")}
    index = _ClassIndex()
    for key, (path, names) in _FIELDS.items():
        groups = [entry]
        for cls in path:
            groups = [c for g in groups for c in index.children(g, cls)]
        for g in groups:
            for n in names:
                if n in g and isinstance(g[n], h5py.Dataset):
                    v = _scalar(g[n])
                    if v is not None:
                        meta[key] = v
                        units = g[n].attrs.get("units")
                        if units is not None:
                            meta[f"{key}_units"] = attr_to_json(units)
                        break
            if key in meta:
                break
    if "beamline" in meta:
        # an instrument's short_name is the beamline name facilities search for
        for g in index.children(entry, "NXinstrument"):
            if "name" in g and "short_name" in g["name"].attrs:
                meta["beamline"] = attr_to_json(g["name"].attrs["short_name"])
    nxdata = default_nxdata(f)
    if nxdata is not None:
        zp = nxdata.name.strip("/")
        meta["default"] = f"{prefix}/{zp}" if prefix and zp else (prefix or zp)
        signal = attr_to_json(nxdata.attrs.get("signal")) if "signal" in nxdata.attrs else None
        if isinstance(signal, str):
            meta["signal"] = signal
            if signal in nxdata and isinstance(nxdata[signal], h5py.Dataset):
                sig = nxdata[signal]
                meta["signal_shape"] = list(sig.shape or ())
                meta["signal_dtype"] = str(sig.dtype)
        axes = _axes(nxdata)
        if axes:
            meta["axes"] = axes
    return meta


def _axes(nxdata: h5py.Group) -> list[str]:
    raw = attr_to_json(nxdata.attrs.get("axes")) if "axes" in nxdata.attrs else None
    if isinstance(raw, str):
        return (
            [a.strip() for a in raw.replace(":", ",").split(",") if a.strip()]
            if "," in raw or ":" in raw
            else [raw]
        )
    if isinstance(raw, list):
        return [str(a) for a in raw]
    return []


def scale_dimensions(dset: h5py.Dataset) -> list[str] | None:
    """Dimension names from attached HDF5 dimension scales (netCDF4 style), if any."""
    try:
        if dset.shape is None or not dset.shape:
            return None
        if h5py.h5ds.is_scale(dset.id):
            return [posixpath.basename(dset.name)] if len(dset.shape) == 1 else None
        if "DIMENSION_LIST" not in dset.attrs:
            return None
        names: list[str] = []
        for i in range(len(dset.shape)):
            scales = dset.dims[i]
            if len(scales) == 0:
                return None
            names.append(posixpath.basename(scales[0].name))
        return names
    except Exception:
        return None


def assign_dimensions(refmap: RefMap) -> None:
    """Give every array a consistent ``_ARRAY_DIMENSIONS`` (xarray requires one per group)."""
    by_group: dict[str, list[str]] = {}
    for path in refmap.arrays:
        by_group.setdefault(posixpath.dirname(path), []).append(path)
    for group, paths in by_group.items():
        gattrs = refmap.groups.get(group, {})
        nx_dims = _nxdata_dims(refmap, group, gattrs, paths)
        sizes: dict[str, int] = {}
        phony: dict[int, str] = {}
        pending: list[str] = []
        for path in sorted(paths, key=lambda p: (DIMS not in refmap.arrays[p].attrs, p)):
            arr = refmap.arrays[path]
            shape = arr.zarray["shape"]
            dims = arr.attrs.get(DIMS) or nx_dims.get(path)
            if dims is not None and (
                len(dims) != len(shape)
                or any(
                    d is not None and sizes.get(d, s) != s
                    for d, s in zip(dims, shape, strict=False)
                )
            ):
                dims = None
            if dims is None or None in dims:
                if dims is not None:
                    arr.attrs[DIMS] = list(dims)  # partial: completed with phony names below
                    for d, s in zip(dims, shape, strict=True):
                        if d is not None:
                            sizes[d] = s
                pending.append(path)
                continue
            arr.attrs[DIMS] = list(dims)
            for d, s in zip(dims, shape, strict=True):
                sizes[d] = s
        for path in pending:
            arr = refmap.arrays[path]
            given = arr.attrs.get(DIMS) or [None] * len(arr.zarray["shape"])
            dims = []
            for g, s in zip(given, arr.zarray["shape"], strict=True):
                if g is not None:
                    dims.append(g)
                    continue
                if s not in phony:
                    name = f"phony_dim_{len(phony)}"
                    while name in sizes:
                        name += "_"
                    phony[s] = name
                dims.append(phony[s])
            # the same length twice in one array needs two names (xarray forbids repeats)
            seen: dict[str, int] = {}
            for i, d in enumerate(dims):
                if d in seen:
                    k = 1
                    while f"{d}_{k}" in sizes or f"{d}_{k}" in dims:
                        k += 1
                    dims[i] = f"{d}_{k}"
                    sizes[dims[i]] = arr.zarray["shape"][i]
                seen[dims[i]] = i
            arr.attrs[DIMS] = dims


def _nxdata_dims(
    refmap: RefMap, group: str, gattrs: dict[str, Any], paths: list[str]
) -> dict[str, list[str]]:
    """Dimension names for an NXdata group's signal and axis arrays."""
    if gattrs.get("NX_class") != "NXdata":
        return {}
    out: dict[str, list[str]] = {}
    raw_axes = gattrs.get("axes")
    axes = [raw_axes] if isinstance(raw_axes, str) else list(raw_axes or [])
    signal = gattrs.get("signal")
    prefix = f"{group}/" if group else ""
    sig_arr = refmap.arrays.get(prefix + signal) if isinstance(signal, str) else None
    if sig_arr is None:
        return out
    shape = sig_arr.zarray["shape"]
    dims: list[str | None] = [None] * len(shape)
    for i, a in enumerate(axes[: len(shape)]):
        if isinstance(a, str) and a != ".":
            dims[i] = a
    for key, val in gattrs.items():
        if key.endswith("_indices") and isinstance(val, int | list):
            name = key[: -len("_indices")]
            idx = val if isinstance(val, int) else (val[0] if len(val) == 1 else None)
            if isinstance(idx, int) and 0 <= idx < len(shape) and dims[idx] is None:
                dims[idx] = name
    for i, d in enumerate(dims):
        ax = refmap.arrays.get(prefix + d) if d else None
        if d is not None and ax is not None and ax.zarray["shape"] == [shape[i]]:
            out[prefix + d] = [d]
        elif d is not None and ax is not None:
            dims[i] = None  # axis array of another shape: leave it its own dims
    named = [d for d in dims if d is not None]
    if named and len(set(named)) == len(named):
        out[prefix + signal] = dims  # type: ignore[operator,assignment]
    return out
