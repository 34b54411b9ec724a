"""hyperslab: HDF5/NeXus files as versioned, replicated virtual Zarr stores.

The ingest side reads only each file's chunk index and writes kerchunk-format
reference maps; see :mod:`hyperslab.convert`. Reading::

    ds = hyperslab.open_dataset("s3://beamline/repo", "run42/scan_0007")
    store = hyperslab.open_store("s3://beamline/repo", "run42/scan_0007")
    frames = hyperslab.open_array("s3://beamline/repo", "run42/scan_0007", "entry/data/data")

(both imported on first use, so ``import hyperslab`` stays cheap; see :mod:`hyperslab.access`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hyperslab.version import __version__

if TYPE_CHECKING:
    from hyperslab.access.array import open_array
    from hyperslab.access.dataset import open_dataset
    from hyperslab.access.datasets import open_datasets
    from hyperslab.access.store import open_store


__all__ = ["__version__", "open_array", "open_dataset", "open_datasets", "open_store"]


def __getattr__(name: str) -> Any:
    if name in ("open_array", "open_dataset", "open_datasets", "open_store"):
        from hyperslab import access

        return getattr(access, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
