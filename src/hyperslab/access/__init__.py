"""The reading faces: a read-only Zarr store over one pinned entry (:mod:`.store`),
NumPy-style arrays without zarr's pipeline (:mod:`.array`), xarray datasets with NeXus
semantics (:mod:`.dataset`), many entries as one dataset (:mod:`.datasets`) and plain
kerchunk exports (:mod:`.export`).

Routing, checksums, caches, decoding and statistics are the reading layer's
(:mod:`hyperslab.reading`), which sync uses too. ``open_store``, ``open_array`` and
``open_dataset`` are imported on first use, so that importing this package stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hyperslab.access.array import HyperslabArray, open_array
    from hyperslab.access.dataset import open_dataset
    from hyperslab.access.datasets import open_datasets
    from hyperslab.access.store import HyperslabStore, open_store

__all__ = [
    "HyperslabArray",
    "HyperslabStore",
    "open_array",
    "open_dataset",
    "open_datasets",
    "open_store",
]

_LAZY = {
    "open_array": "hyperslab.access.array",
    "HyperslabArray": "hyperslab.access.array",
    "open_dataset": "hyperslab.access.dataset",
    "open_datasets": "hyperslab.access.datasets",
    "open_store": "hyperslab.access.store",
    "HyperslabStore": "hyperslab.access.store",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
