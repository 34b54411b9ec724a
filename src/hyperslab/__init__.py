"""hyperslab: HDF5/NeXus files as versioned, replicated virtual Zarr stores.

The ingest side reads only each file's chunk index and writes kerchunk-format
reference maps; see :mod:`hyperslab.convert`.
"""

from __future__ import annotations

__version__ = "0.1.0"
