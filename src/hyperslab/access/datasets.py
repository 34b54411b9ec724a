"""Many entries of a repository as one lazy :class:`xarray.Dataset`.

::

    ds = hyperslab.open_datasets("s3://beamline/repo", entries="run42/*")           # new dim "entry"
    ds = hyperslab.open_datasets(repo, query="sample~insulin", concat_dim="frame_number")

Every entry is opened as :func:`~hyperslab.access.dataset.open_dataset` opens one
(its NeXus default NXdata, or ``group``), all at one snapshot pinned when the call
is made, and the datasets are combined:

* ``concat_dim=None`` (default): stacked along a new dimension ``entry`` whose
  coordinate holds the entry names. The entries must agree on every other
  dimension and its coordinate (the same frame numbers, the same detector shape).
* ``concat_dim="frame_number"`` (a dimension the datasets have, e.g. the NeXus scan
  axis): concatenated along it; variables without that dimension are taken from
  the first entry.
* any other name: stacked along a new dimension of that name.

Nothing is read but metadata and the indexed coordinates: the arrays stay dask
arrays with one dask chunk per stored chunk. Each entry's store pickles as its
address (repository URL, entry, pinned snapshot, sites), so the dataset computes
unchanged on a ``dask.distributed`` cluster: every worker reopens the stores, routes
and caches on its own.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from hyperslab.access.dataset import ZARR_CHUNKS, open_dataset
from hyperslab.errors import BadInputError
from hyperslab.reading.entry import pinned_snapshot
from hyperslab.references.repository import Repository
from hyperslab.references.selection import select_entries

if TYPE_CHECKING:
    import xarray as xr

    from hyperslab.config import Config
    from hyperslab.reading.chunk_cache import ChunkCache

__all__ = ["ENTRY_DIM", "open_datasets"]

#: the dimension entries are stacked along unless ``concat_dim`` names another
ENTRY_DIM = "entry"


def open_datasets(
    repo: str | Repository,
    entries: str | Sequence[str] | None = None,
    *,
    query: str | None = None,
    group: str | None = None,
    concat_dim: str | None = None,
    branch: str | None = None,
    tag: str | None = None,
    snapshot: str | None = None,
    sites: Sequence[str] | None = None,
    cache: bool | ChunkCache | None = True,
    chunks: Mapping[str, Any] | str | int | None = ZARR_CHUNKS,
    config: Config | None = None,
    **xarray_kwargs: Any,
) -> xr.Dataset:
    """The entries that ``entries`` (names or shell globs) and ``query`` (the catalog
    search language) select, as one Dataset combined along ``concat_dim`` (see the
    module doc), in the order named, or sorted by name when globs or a query select. ``group``, ``sites``, ``cache``, ``chunks``, ``config`` and the
    xarray keyword arguments are :func:`open_dataset`'s; ``branch``/``tag``/``snapshot``
    pick the one snapshot every entry is read at (``ds.encoding["hyperslab"]`` names it).

    Named errors: nothing selected, an entry named that is not there, entries whose
    datasets do not line up along the other dimensions (naming the first that differs
    and the dimension).
    """
    import xarray as xr

    r = Repository.open(repo, config=config) if isinstance(repo, str) else repo
    sid = pinned_snapshot(r, branch=branch, tag=tag, snapshot=snapshot)
    names = select_entries(r, sid, entries, query, purpose="open_datasets")
    if not isinstance(entries, str) and entries and not any(c in e for e in entries for c in "*?["):
        names = [e for e in entries if e in set(names)]  # named one by one: in that order
    # stores opened from the URL carry the address they pickle as (dask workers reopen them)
    spec = repo if isinstance(repo, str) else r.display
    parts = [
        open_dataset(
            spec,
            name,
            group,
            snapshot=sid,
            sites=sites,
            cache=cache,
            chunks=chunks,
            config=config,
            **xarray_kwargs,
        )
        for name in names
    ]
    dim = concat_dim or ENTRY_DIM
    along_existing = all(dim in p.dims for p in parts)
    if not along_existing and any(dim in p.dims for p in parts):
        have = [n for n, p in zip(names, parts, strict=True) if dim in p.dims]
        raise BadInputError(
            f"dimension {dim!r} is in {len(have)} of the {len(names)} entries selected "
            f"({have[0]} has it, {next(n for n in names if n not in have)} does not): "
            "concatenate along a dimension all of them have, or stack along a new one"
        )
    _check_alignment(names, parts, dim)
    if along_existing:
        combined = xr.concat(
            parts,
            dim=dim,
            data_vars="minimal",
            coords="minimal",
            compat="override",
            join="exact",
            combine_attrs="override",
        )
    else:
        combined = xr.concat(
            parts,
            dim=xr.DataArray(names, dims=dim, name=dim),
            data_vars="all",
            coords="minimal",
            compat="override",
            join="exact",
            combine_attrs="override",
        )
    combined.encoding["hyperslab"] = {
        "repository": r.display,
        "snapshot": sid,
        "entries": names,
        "group": parts[0].encoding.get("hyperslab", {}).get("group"),
        "concat_dim": dim,
    }
    return combined


def _check_alignment(names: Sequence[str], parts: Sequence[xr.Dataset], dim: str) -> None:
    """Every dimension but ``dim`` has one length, and every index one set of values,
    across the entries; a named error for the first that does not."""
    first_name, first = names[0], parts[0]
    for name, ds in zip(names[1:], parts[1:], strict=True):
        for var in ds.data_vars:
            if var in first.data_vars:
                mine = tuple(d for d in ds[var].dims if d != dim)
                theirs = tuple(d for d in first[var].dims if d != dim)
                if mine != theirs:
                    raise BadInputError(
                        f"entries {first_name!r} and {name!r} do not line up: {var!r} has "
                        f"dimensions {theirs} in one and {mine} in the other (NeXus axes "
                        "named differently?); select entries written alike"
                    )
        for d, n in ds.sizes.items():
            if d != dim and d in first.sizes and first.sizes[d] != n:
                raise BadInputError(
                    f"entries {first_name!r} and {name!r} do not line up: dimension {d!r} is "
                    f"{first.sizes[d]} long in one and {n} in the other (only {dim!r} may differ)"
                )
        for d, index in ds.indexes.items():
            if d != dim and d in first.indexes and not index.equals(first.indexes[d]):
                raise BadInputError(
                    f"entries {first_name!r} and {name!r} do not line up: their {d!r} "
                    f"coordinates differ; concatenate along it (concat_dim={str(d)!r}) or "
                    "select entries that share it"
                )
