"""One entry of a repository as an :class:`xarray.Dataset`, with NeXus semantics.

::

    ds = hyperslab.open_dataset("s3://beamline/repo", "run42/scan_0007")
    ds = xr.open_dataset("s3://beamline/repo#run42/scan_0007", engine="hyperslab")

The dataset is ``xr.open_zarr`` over :func:`~hyperslab.access.store.open_store`:
dask-backed, one dask chunk per stored chunk, pinned to one snapshot. Opening
reads metadata (already in the entry's reference map) and the coordinate arrays
xarray indexes; the data is read when computed.

**Which group.** ``group=`` if given (``"entry/data"``; ``""`` is the root),
otherwise the NeXus default NXdata: the root's ``default`` attribute names the
NXentry (else the first NXentry), whose ``default`` names the NXdata (through an
NXsubentry if need be; else the first NXdata child). An entry with no NXdata
(plain HDF5) needs ``group=``; the error lists the groups that hold arrays.

**NeXus semantics** of an NXdata group (applied only there, only from its
attributes; nothing is invented):

* the signal (group ``signal``, or the pre-2014 ``signal=1`` on a field) is the
  main data variable, named in ``ds.attrs["signal"]``;
* axes (group ``axes``, a list or an ``"a:b"`` / ``"a,b"`` string, or the
  pre-2014 ``axes`` attribute of the signal field) and ``AXISNAME_indices``
  become coordinates on the signal dimensions they span, when their shape
  matches those dimensions (an axis of bin edges, one longer, stays a data
  variable on its own dimension);
* a signal dimension the converter had to call ``phony_dim_<k>`` takes the name
  of its axis. Dimension names the file gave (NXdata axes at conversion,
  HDF5 dimension scales) are never changed;
* ``FIELD_errors`` (and the pre-2014 ``errors``) of the signal and of the
  ``auxiliary_signals`` take the signal's dimensions when they have its shape;
* ``units``, ``long_name`` and other attributes stay the variables' attributes.

Other arrays of the group stay data variables (on renamed phony dimensions,
which the converter shares between arrays of one length in a group).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from xarray.backends import BackendArray, BackendEntrypoint

from hyperslab.errors import BadInputError, NotFoundError
from hyperslab.reading.values import h5py_values, needs_decoding, value_dtype

if TYPE_CHECKING:
    import xarray as xr

    from hyperslab.access.store import HyperslabStore
    from hyperslab.config import Config
    from hyperslab.reading.chunk_cache import ChunkCache
    from hyperslab.references.repository import Repository

__all__ = [
    "ZARR_CHUNKS",
    "H5pyValues",
    "HyperslabBackend",
    "dataset_from_store",
    "default_nxdata",
    "open_dataset",
    "split_url",
]

#: ``chunks=`` default: one dask chunk per stored chunk (no dask installed: plain lazy arrays)
ZARR_CHUNKS: Mapping[str, Any] = MappingProxyType({})

PHONY = "phony_dim_"
_NX_ENTRY, _NX_SUBENTRY, _NX_DATA = "NXentry", "NXsubentry", "NXdata"
_LISTED = 30  # groups named in an error message


# ----------------------------------------------------------------------- the group


def _child(groups: Mapping[str, Any], path: str, name: Any) -> str | None:
    """The group ``name`` (a ``default`` attribute) below ``path``, if it exists."""
    if not isinstance(name, str) or not name.strip("/"):
        return None
    child = name.strip("/") if name.startswith("/") else f"{path}/{name}".strip("/")
    return child if child in groups else None


def _children(groups: Mapping[str, Mapping[str, Any]], path: str, nx_class: str) -> list[str]:
    prefix = f"{path}/" if path else ""
    return [
        g
        for g in sorted(groups)
        if g.startswith(prefix)
        and g != path
        and "/" not in g[len(prefix) :]
        and groups[g].get("NX_class") == nx_class
    ]


def default_nxdata(groups: Mapping[str, Mapping[str, Any]]) -> str | None:
    """Path of the NXdata group a NeXus reader plots by default, or None (see module doc)."""
    if "" not in groups:
        return None
    entries = _children(groups, "", _NX_ENTRY)
    path = _child(groups, "", groups[""].get("default")) or (entries[0] if entries else None)
    for _ in range(8):  # NXentry → (NXsubentry →) NXdata; bounded against default cycles
        if path is None:
            break
        if groups[path].get("NX_class") == _NX_DATA:
            return path
        nxt = _child(groups, path, groups[path].get("default"))
        if nxt is None:
            found = _children(groups, path, _NX_DATA) or _children(groups, path, _NX_SUBENTRY)
            nxt = found[0] if found else None
        path = nxt
    # the default hyperslab recorded at conversion (same rules, read from the file)
    meta = groups[""].get("hyperslab")
    nexus = meta.get("nexus") if isinstance(meta, Mapping) else None
    recorded = nexus.get("default") if isinstance(nexus, Mapping) else None
    if isinstance(recorded, str) and groups.get(recorded, {}).get("NX_class") == _NX_DATA:
        return recorded
    return None


def _listing(paths: Iterable[str]) -> str:
    shown = [repr(p) for p in sorted(paths)]
    more = f" and {len(shown) - _LISTED} more" if len(shown) > _LISTED else ""
    return ", ".join(shown[:_LISTED]) + more if shown else "none"


def _resolve_group(store: HyperslabStore, group: str | None) -> str:
    refmap = store.view.refmap
    entry = store.view.entry
    with_arrays = {p.rpartition("/")[0] for p in refmap.arrays}
    if group is not None:
        if not isinstance(group, str):
            raise BadInputError(f"group must be a string such as 'entry/data', not {group!r}")
        path = group.strip("/")
        if path not in refmap.groups:
            raise NotFoundError(
                f"entry {entry!r} has no group {group!r}; groups holding arrays: "
                f"{_listing(with_arrays)}",
                entry=entry,
                group=group,
                groups=sorted(with_arrays)[:100],
            )
        return path
    found = default_nxdata(refmap.groups)
    if found is None:
        raise NotFoundError(
            f"entry {entry!r} has no NeXus NXdata group to open by default; pass group= "
            f"(groups holding arrays: {_listing(with_arrays)})",
            entry=entry,
            groups=sorted(with_arrays)[:100],
        )
    return found


# ----------------------------------------------------------------------- NeXus


def _names(raw: Any) -> list[str]:
    """Axis names of an ``axes`` attribute: a list, or one string (``"y:x"``, ``"y,x"``)."""
    if isinstance(raw, str):
        return [a.strip() for a in re.split(r"[:,]", raw)]
    if isinstance(raw, list | tuple):
        return [str(a).strip() for a in raw]
    return []


def _indices(raw: Any) -> tuple[int, ...] | None:
    if isinstance(raw, int) and not isinstance(raw, bool):
        return (raw,)
    if isinstance(raw, list) and raw and all(isinstance(i, int) for i in raw):
        return tuple(raw)
    return None


def _signal(ds: xr.Dataset, gattrs: Mapping[str, Any]) -> str | None:
    name = gattrs.get("signal")
    if isinstance(name, str) and name in ds.variables:
        return name
    # before NeXus 2014 the signal field itself said signal=1
    legacy = [n for n, v in ds.variables.items() if str(v.attrs.get("signal", "")) == "1"]
    return str(legacy[0]) if legacy else None


def _spans(
    ds: xr.Dataset, gattrs: Mapping[str, Any], axes: list[str], signal: str
) -> dict[str, tuple[int, ...]]:
    """Axis name → the signal dimensions it spans, for axes whose shape matches those."""
    shape = ds.variables[signal].shape
    spans: dict[str, tuple[int, ...]] = {}
    for i, name in enumerate(axes[: len(shape)]):
        if name not in ("", ".") and name not in spans:
            spans[name] = (i,)
    for key, val in gattrs.items():
        idx = _indices(val) if key.endswith("_indices") else None
        if idx is not None and key != "_indices":
            spans[key[: -len("_indices")]] = idx
    return {
        name: idx
        for name, idx in spans.items()
        if name != signal
        and name in ds.variables
        and len(set(idx)) == len(idx)
        and all(0 <= i < len(shape) for i in idx)
        and ds.variables[name].shape == tuple(shape[i] for i in idx)
    }


def _with_dims(var: xr.Variable, dims: tuple[str, ...]) -> xr.Variable:
    out = var.to_base_variable().copy(deep=False)
    renamed = dict(zip(var.dims, dims, strict=True))
    out.dims = dims
    preferred = out.encoding.get("preferred_chunks")
    if isinstance(preferred, Mapping):  # xarray chunks by these names (open_dataset chunks={})
        out.encoding = {
            **out.encoding,
            "preferred_chunks": {renamed.get(d, d): n for d, n in preferred.items()},
        }
    return out


def _nexus_view(ds: xr.Dataset, gattrs: Mapping[str, Any]) -> xr.Dataset:
    """Apply NXdata signal/axes semantics (module doc) to a dataset opened on an NXdata group."""
    signal = _signal(ds, gattrs)
    if signal is None:
        return ds
    sig = ds.variables[signal]
    axes = _names(gattrs["axes"] if "axes" in gattrs else sig.attrs.get("axes"))
    spans = _spans(ds, gattrs, axes, signal)
    # a name for each phony signal dimension: its axis in `axes`, else an axis indexed to it
    new = [str(d) for d in sig.dims]
    taken = {str(d) for d in ds.dims}
    used = set(new)

    def free(n: str) -> bool:  # not a dimension yet, or the axis's own (same length)
        return n not in used and (n not in taken or ds.variables[n].dims == (n,))

    for i, dim in enumerate(new):
        if not dim.startswith(PHONY):
            continue
        primary = [axes[i]] if i < len(axes) else []
        name = next((n for n in [*primary, *spans] if spans.get(n) == (i,) and free(n)), None)
        if name is not None:
            new[i] = name
            used.add(name)
    rename = {str(old): n for old, n in zip(sig.dims, new, strict=True) if old != n}
    # fields NeXus gives the signal's shape and dimensions: errors, auxiliary signals
    aux = _names(gattrs.get("auxiliary_signals"))
    alike = {f"{n}_errors" for n in [signal, *aux]} | {"errors", *aux}
    changed: dict[str, xr.Variable] = {}
    for key, var in ds.variables.items():
        vname, old = str(key), tuple(str(d) for d in var.dims)
        if not old or not all(d.startswith(PHONY) for d in old):
            dims = tuple(rename.get(d, d) for d in old)
        elif vname in spans:
            # the converter named an axis's dims by length; NeXus says which it spans
            dims = tuple(new[i] for i in spans[vname])
        elif vname in alike and var.shape == sig.shape:
            dims = tuple(new)
        else:
            dims = tuple(rename.get(d, d) for d in old)
        if dims != old:
            changed[vname] = _with_dims(var, dims)
    coords = {str(c) for c in ds.coords} | set(spans)
    if changed:
        ds = ds.drop_vars(list(changed)).assign(changed)
    ds = ds.set_coords([c for c in coords if c in ds.variables and c not in ds.coords])
    if ds.attrs.get("signal") != signal:
        ds.attrs["signal"] = signal
    return ds


# ----------------------------------------------------------------------- h5py's values


class H5pyValues(BackendArray):
    """A zarr array whose stored form is not h5py's values (compounds with gaps, long
    double, ragged sequences, records with vlen members), read lazily as h5py's values
    (:mod:`hyperslab.reading.values`)."""

    def __init__(self, array: Any, attrs: Mapping[str, Any]) -> None:
        import numpy as np

        self.array = array
        self.attrs = dict(attrs)
        self.shape = tuple(array.shape)
        self.dtype = value_dtype(self.attrs, np.dtype(array.dtype))

    def __getitem__(self, key: Any) -> Any:
        from xarray.core import indexing

        return indexing.explicit_indexing_adapter(
            key, self.shape, indexing.IndexingSupport.BASIC, self._read
        )

    def _read(self, key: tuple[Any, ...]) -> Any:
        return h5py_values(self.array[key], self.attrs)


def _stored_forms(store: HyperslabStore, path: str) -> list[str]:
    """Arrays of group ``path`` that zarr reads in a stored form, not as h5py's values
    (xarray cannot even open some: a compound's fill value is an unhashable void)."""
    base = f"{path}/" if path else ""
    return [
        p[len(base) :]
        for p, arr in store.view.refmap.arrays.items()
        if p.startswith(base) and "/" not in p[len(base) :] and needs_decoding(arr.attrs)
    ]


def _h5py_variable(store: HyperslabStore, path: str, dask: bool) -> xr.Variable:
    """Array ``path`` as a lazy variable of h5py's values (one dask chunk per stored
    chunk when ``dask``)."""
    import xarray as xr
    import zarr
    from xarray.core import indexing

    array = zarr.open_array(store, path=path, mode="r")
    attrs: dict[str, Any] = dict(array.attrs)
    named = attrs.pop("_ARRAY_DIMENSIONS", None)
    dims = (
        tuple(str(d) for d in named) if named else tuple(f"{PHONY}{i}" for i in range(array.ndim))
    )
    var = xr.Variable(dims, indexing.LazilyIndexedArray(H5pyValues(array, attrs)), attrs=attrs)
    return var.chunk(dict(zip(dims, array.chunks, strict=True))) if dask else var


# ----------------------------------------------------------------------- opening


def _default_chunks() -> dict[str, Any] | None:
    try:
        import dask.array  # noqa: F401
    except ImportError:
        return None
    return {}


def dataset_from_store(
    store: HyperslabStore,
    group: str | None = None,
    *,
    chunks: Mapping[str, Any] | str | int | None = ZARR_CHUNKS,
    **xarray_kwargs: Any,
) -> xr.Dataset:
    """:func:`open_dataset` over a store already open (group choice and NeXus semantics)."""
    import xarray as xr

    path = _resolve_group(store, group)
    chunking: Any = _default_chunks() if chunks is ZARR_CHUNKS else chunks
    if isinstance(chunking, Mapping):
        chunking = dict(chunking)
    xarray_kwargs.setdefault("zarr_format", 2)
    xarray_kwargs.setdefault("consolidated", True)
    drop = xarray_kwargs.pop("drop_variables", None) or ()
    dropped = {drop} if isinstance(drop, str) else set(drop)
    special = [n for n in _stored_forms(store, path) if n not in dropped]
    ds = xr.open_zarr(
        store,
        group=path or None,
        chunks=chunking,
        drop_variables=sorted(dropped | set(special)) or None,
        **xarray_kwargs,
    )
    for name in special:  # added back as h5py's values, past xarray's CF decoding
        full = f"{path}/{name}" if path else name
        ds = ds.assign({name: _h5py_variable(store, full, chunking is not None)})
    gattrs = store.view.refmap.groups.get(path, {})
    if gattrs.get("NX_class") == _NX_DATA:
        ds = _nexus_view(ds, gattrs)
    ds.encoding["hyperslab"] = {
        "repository": store.view.repo.display,
        "entry": store.view.entry,
        "snapshot": store.view.snapshot,
        "group": path,
    }
    return ds


def open_dataset(
    repo: str | Repository,
    entry: str,
    group: str | None = None,
    *,
    branch: str | None = None,
    tag: str | None = None,
    snapshot: str | None = None,
    sites: Sequence[str] | None = None,
    cache: bool | ChunkCache | None = True,
    chunks: Mapping[str, Any] | str | int | None = ZARR_CHUNKS,
    config: Config | None = None,
    **xarray_kwargs: Any,
) -> xr.Dataset:
    """``entry`` of ``repo`` as an xarray Dataset: its NeXus default NXdata, or ``group``.

    ``repo``, ``branch``/``tag``/``snapshot``, ``sites``, ``cache`` and ``config``
    are those of :func:`~hyperslab.access.store.open_store` (the snapshot is pinned
    for the life of the dataset; ``ds.encoding["hyperslab"]`` says which).
    ``group``: a Zarr group path such as ``"entry/data"`` (``""``: the root);
    default: the NeXus default NXdata (see the module doc for the rules and for
    what NeXus semantics are applied). ``chunks``: as for ``xr.open_zarr``; the
    default is one dask chunk per stored chunk. Other keyword arguments
    (``decode_times``, ``mask_and_scale``, ``drop_variables`` …) go to ``xr.open_zarr``.

    Raises :class:`~hyperslab.errors.NotFoundError` (listing the groups) for an
    unknown group or an entry without NXdata when no group is given.
    """
    from hyperslab.access.store import open_store

    store = open_store(
        repo,
        entry,
        branch=branch,
        tag=tag,
        snapshot=snapshot,
        sites=sites,
        cache=cache,
        config=config,
    )
    return dataset_from_store(store, group, chunks=chunks, **xarray_kwargs)


# ----------------------------------------------------------------------- xarray engine


def split_url(url: str | os.PathLike[str], entry: str | None = None) -> tuple[str, str]:
    """``REPO#ENTRY`` → ``(REPO, ENTRY)``; with ``entry`` given, the whole string is REPO.

    REPO ends at the first ``#``: a repository or entry whose name holds ``#``
    is opened with ``entry=``.
    """
    text = os.fspath(url)
    if not isinstance(text, str):
        raise BadInputError(f"a repository URL is text, not {type(text).__name__}")
    if entry is not None:
        return text, entry
    repo, sep, name = text.partition("#")
    if not sep or not name or not repo:
        raise BadInputError(
            f"name the entry: {text}#ENTRY (e.g. s3://bucket/repo#run42/scan_0007) or entry=",
            url=text,
        )
    return repo, name


class HyperslabBackend(BackendEntrypoint):
    """``xr.open_dataset("REPO#ENTRY", engine="hyperslab")``: see :func:`open_dataset`.

    REPO is any repository spec (``s3://``, ``file://``, a path, ``SITE:path``);
    ``entry=`` may name the entry instead of ``#ENTRY``. Keyword arguments:
    ``group``, ``branch``, ``tag``, ``snapshot``, ``sites`` as for
    :func:`open_dataset`, and ``chunk_cache`` (that function's ``cache``: xarray's
    own ``cache=`` means in-memory caching). ``chunks=`` is xarray's own.
    """

    description = "Entries of hyperslab repositories (HDF5/NeXus as versioned virtual Zarr)"
    url = "https://pypi.org/project/hyperslab/"
    open_dataset_parameters = (
        "filename_or_obj",
        "drop_variables",
        "entry",
        "group",
        "branch",
        "tag",
        "snapshot",
        "sites",
        "chunk_cache",
        "mask_and_scale",
        "decode_times",
        "concat_characters",
        "decode_coords",
        "use_cftime",
        "decode_timedelta",
    )

    def open_dataset(  # type: ignore[override]
        self,
        filename_or_obj: str | os.PathLike[str],
        *,
        drop_variables: str | Iterable[str] | None = None,
        entry: str | None = None,
        group: str | None = None,
        branch: str | None = None,
        tag: str | None = None,
        snapshot: str | None = None,
        sites: Sequence[str] | None = None,
        chunk_cache: bool = True,
        mask_and_scale: bool = True,
        decode_times: bool = True,
        concat_characters: bool = True,
        decode_coords: bool = True,
        use_cftime: bool | None = None,
        decode_timedelta: bool | None = None,
    ) -> xr.Dataset:
        if not isinstance(filename_or_obj, str | os.PathLike):
            raise BadInputError(
                f"engine='hyperslab' opens 'REPO#ENTRY' strings, not {type(filename_or_obj).__name__}"
            )
        repo, name = split_url(filename_or_obj, entry)
        return open_dataset(
            repo,
            name,
            group,
            branch=branch,
            tag=tag,
            snapshot=snapshot,
            sites=sites,
            cache=chunk_cache,
            chunks=None,  # xarray chunks the result itself when asked (chunks= of open_dataset)
            drop_variables=drop_variables,
            mask_and_scale=mask_and_scale,
            decode_times=decode_times,
            concat_characters=concat_characters,
            decode_coords=decode_coords,
            use_cftime=use_cftime,
            decode_timedelta=decode_timedelta,
        )

    def guess_can_open(self, filename_or_obj: Any) -> bool:
        """Only ``PATH#ENTRY`` with PATH a local repository (no guessing over a network)."""
        if not isinstance(filename_or_obj, str | os.PathLike):
            return False
        text = os.fspath(filename_or_obj)
        if not isinstance(text, str):
            return False
        repo, sep, name = text.partition("#")
        if not sep or not name or ("://" in repo and not repo.startswith("file://")):
            return False
        root = Path(repo[len("file://") :] if repo.startswith("file://") else repo)
        try:
            return (root / "repo.json").is_file()
        except OSError:
            return False
