"""PyTorch where it is installed, plain Python where it is not.

The data sets subclass PyTorch's ``IterableDataset``/``Dataset``/``Sampler`` when torch
imports (so ``DataLoader`` treats them as such) and plain ``object`` otherwise (an
iterator of NumPy samples, for JAX or scikit-learn). Which worker and which distributed
rank a process is comes from torch when it is there, or from the caller.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = [
    "HAS_TORCH",
    "IterableBase",
    "MapBase",
    "SamplerBase",
    "distributed_slot",
    "to_device",
    "to_tensor",
    "worker_slot",
]

try:
    import torch
    from torch.utils.data import Dataset as MapBase
    from torch.utils.data import IterableDataset as IterableBase
    from torch.utils.data import Sampler as SamplerBase

    HAS_TORCH = True
except ImportError:  # a plain iterator of NumPy samples
    torch = None  # type: ignore[assignment]
    IterableBase = object  # type: ignore[assignment,misc]
    MapBase = object  # type: ignore[assignment,misc]
    SamplerBase = object  # type: ignore[assignment,misc]
    HAS_TORCH = False


def worker_slot() -> tuple[int, int]:
    """``(worker id, workers)`` of the DataLoader worker this runs in (``(0, 1)`` outside
    one, and without torch)."""
    if torch is None:
        return 0, 1
    info = torch.utils.data.get_worker_info()
    return (0, 1) if info is None else (int(info.id), int(info.num_workers))


def distributed_slot(rank: int | None, world_size: int | None) -> tuple[int, int]:
    """``(rank, world size)``: as given, else torch.distributed's when it is initialised,
    else ``(0, 1)``."""
    if rank is not None or world_size is not None:
        r, w = int(rank or 0), int(world_size or 1)
    elif (
        torch is not None
        and torch.distributed.is_available()
        and torch.distributed.is_initialized()
    ):
        r, w = int(torch.distributed.get_rank()), int(torch.distributed.get_world_size())
    else:
        r, w = 0, 1
    if w < 1 or not 0 <= r < w:
        from hyperslab.errors import BadInputError

        raise BadInputError(f"rank {r} is not one of world_size {w}")
    return r, w


def to_tensor(x: Any) -> Any:
    """A NumPy array (or scalar) as a torch tensor sharing its memory (a copy when the
    array is read-only or not writeable, which torch does not support)."""
    if torch is None:
        return x
    arr = np.asarray(x)
    if not arr.flags.writeable:
        arr = arr.copy()
    return torch.from_numpy(arr)


def to_device(batch: Any, device: Any, *, non_blocking: bool = True) -> Any:
    """``batch`` (a collated dict, list or tensor) with every tensor moved to ``device``
    (e.g. ``"cuda"``); entry names and other non-tensors stay as they are. With a
    DataLoader's ``pin_memory=True`` and ``non_blocking`` the copy overlaps the GPU's
    work on the previous batch."""
    if torch is None:
        from hyperslab.errors import BadInputError

        raise BadInputError("to_device needs PyTorch (pip install hyperslab[ml])")
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=non_blocking)
    if isinstance(batch, dict):
        return {k: to_device(v, device, non_blocking=non_blocking) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)) and any(isinstance(v, torch.Tensor) for v in batch):
        return type(batch)(to_device(v, device, non_blocking=non_blocking) for v in batch)
    return batch
