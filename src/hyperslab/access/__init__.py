"""Reading repository entries: read-only Zarr stores over snapshots, routing, caching,
and xarray datasets with NeXus semantics.

``open_store`` (:mod:`.store`) and ``open_dataset`` (:mod:`.dataset`) are imported on
first use, so that importing this package (e.g. for :mod:`.cache`) stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hyperslab.access.array import HyperslabArray, open_array
    from hyperslab.access.dataset import open_dataset
    from hyperslab.access.store import HyperslabStore, open_store

__all__ = ["HyperslabArray", "HyperslabStore", "open_array", "open_dataset", "open_store"]

_LAZY = {
    "open_array": "hyperslab.access.array",
    "HyperslabArray": "hyperslab.access.array",
    "open_dataset": "hyperslab.access.dataset",
    "open_store": "hyperslab.access.store",
    "HyperslabStore": "hyperslab.access.store",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
