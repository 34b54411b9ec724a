"""ML loaders: training data read straight from a repository, chunk by chunk.

:class:`ArrayDataset` (iterable; PyTorch's ``IterableDataset`` where torch is
installed), :class:`ArraySamples` (map-style), :class:`ChunkAwareSampler` and
:func:`to_device` (a collated batch onto the GPU); see
:mod:`.dataset`. ``selection.py`` picks entries and checks the array; ``grid.py`` splits
arrays into samples and reading units; ``order.py`` shuffles, shards and buffers an
epoch; ``units.py`` reads units in each worker process; ``torch_compat.py`` is the
line between PyTorch and plain NumPy.
"""

from hyperslab.ml.dataset import ArrayDataset, ArraySamples, ChunkAwareSampler
from hyperslab.ml.torch_compat import to_device

__all__ = ["ArrayDataset", "ArraySamples", "ChunkAwareSampler", "to_device"]
