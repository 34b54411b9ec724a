"""Training data straight from a repository: chunk-aware, sharded, fork- and spawn-safe.

::

    from torch.utils.data import DataLoader
    from hyperslab.ml import ArrayDataset

    ds = ArrayDataset("s3://beamline/repo", "entry/data/data", query="sample~insulin energy>12")
    for epoch in range(10):
        ds.set_epoch(epoch)
        for batch in DataLoader(ds, batch_size=32, num_workers=4):
            batch["data"]              # (32, 1024, 1024) frames, a tensor
            batch["entry"], batch["index"]

* :class:`ArrayDataset` is iterable (PyTorch's ``IterableDataset``): each worker of each
  rank reads its own share of the epoch, unit by unit (whole chunk rows, read once per
  epoch), draws samples at random from ``buffer_chunks`` decoded units and reads the next
  ones ahead while it does (:mod:`.order`).
* :class:`ArraySamples` is map-style (``len``, ``[i]``), for code that wants indices;
  :class:`ChunkAwareSampler` gives them in the same chunk-aware, sharded order.

Samples are frames (slices along the first axis of the array) or patches of
``sample_shape``, from every selected entry of one pinned snapshot. Each is a dict:
``data`` (a NumPy array; a ``torch.Tensor`` where torch is installed, unless
``as_tensors=False``), ``entry``, ``index`` (along the first axis), ``origin`` (patches:
where the patch starts), and the NeXus axes along the first axis (``frame_number``,
``omega`` ...) at that index. Nothing open is pickled: every process opens its own
connections, decoders and readers on first use; the local chunk cache on disk is shared
safely by all of them.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from hyperslab.config import Config, load_config
from hyperslab.errors import BadInputError
from hyperslab.ml.order import Piece, draw, epoch_pieces, mixing, rng_for
from hyperslab.ml.selection import describe_parts, select_entries
from hyperslab.ml.torch_compat import HAS_TORCH as _HAS_TORCH
from hyperslab.ml.torch_compat import (
    IterableBase,
    MapBase,
    SamplerBase,
    distributed_slot,
    to_tensor,
    worker_slot,
)
from hyperslab.ml.units import DataSpec, UnitReader
from hyperslab.reading.entry import pinned_snapshot
from hyperslab.references.repository import Repository

__all__ = ["ArrayDataset", "ArraySamples", "ChunkAwareSampler"]

#: decoded bytes each worker keeps to draw samples from, by default (as units: at least
#: BUFFER_UNITS[0], at most BUFFER_UNITS[1])
BUFFER_BYTES = 64 << 20
BUFFER_UNITS = (16, 256)
#: units each worker reads ahead of the ones it draws from, by default
READAHEAD = 4
#: compressed bytes worth one request: below that, consecutive units are fetched together
FETCH_BYTES = 1 << 20


def _open_spec(
    repo: str,
    array: str,
    *,
    entries: str | Sequence[str] | None,
    query: str | None,
    branch: str | None,
    tag: str | None,
    snapshot: str | None,
    sample_shape: Sequence[int] | None,
    sites: Sequence[str] | None,
    cache: bool,
    memory_cache: bool | int,
    config: Config | str | None,
) -> DataSpec:
    if not isinstance(repo, str):
        raise BadInputError(
            "repo must be a repository address (a path, file:// or s3:// URL, or SITE:path): "
            "every worker process opens it again"
        )
    config_path = config if isinstance(config, str) else None
    cfg = (
        config
        if isinstance(config, Config)
        else load_config(Path(config_path) if config_path else None)
    )
    r = Repository.open(repo, config=cfg)
    try:
        sid = pinned_snapshot(r, branch=branch, tag=tag, snapshot=snapshot)
        names = select_entries(r, sid, entries, query)
        parts = tuple(describe_parts(r, sid, names, array))
    finally:
        r.close()
    spec = DataSpec(
        repo,
        sid,
        array.strip("/"),
        parts,
        tuple(int(n) for n in sample_shape) if sample_shape is not None else None,
        tuple(sites or ()),
        bool(cache),
        memory_cache,
        config_path,
    )
    if sum(g.n_samples for g in spec.grids) == 0:
        raise BadInputError(f"the selection holds no whole sample of {array!r}")
    return spec


class _Samples:
    """What both data set forms share: the spec, the reader of this process, items."""

    spec: DataSpec
    as_tensors: bool
    transform: Callable[[Any], Any] | None
    coordinates: bool

    def _unit_reader(self) -> UnitReader:
        reader: UnitReader | None = self.__dict__.get("_reader")
        if reader is None:
            reader = UnitReader(self.spec)
            self.__dict__["_reader"] = reader
        return reader

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.pop("_reader", None)  # nothing open travels to another process
        return state

    @property
    def entries(self) -> list[str]:
        return [p.entry for p in self.spec.parts]

    @property
    def snapshot(self) -> str:
        return self.spec.snapshot

    @property
    def sample_shape(self) -> tuple[int, ...]:
        g = self.spec.grids[0]
        return g.sample[1:] if g.squeeze else g.sample

    @property
    def dtype(self) -> np.dtype[Any]:
        return np.dtype(self.spec.parts[0].dtype).newbyteorder("=")

    def _item(self, part: int, unit: int, j: int, block: np.ndarray) -> dict[str, Any]:
        grid = self.spec.grids[part]
        origin = grid.origin(unit, j)
        a, _ = grid.unit_rows(unit)
        region = (
            slice(origin[0] - a, origin[0] - a + grid.sample[0]),
            *(slice(o, o + s) for o, s in zip(origin[1:], grid.sample[1:], strict=True)),
        )
        data = block[region]
        if grid.squeeze:
            data = data[0]
        item: dict[str, Any] = {
            "data": to_tensor(data) if self.as_tensors else data,
            "entry": self.spec.parts[part].entry,
            "index": origin[0],
        }
        if not grid.frames:
            item["origin"] = np.asarray(origin, dtype=np.int64)
        if self.coordinates:
            for name, values in self._unit_reader().coordinates(part).items():
                item.setdefault(name, values[origin[0]])
        if self.transform is not None:
            item["data"] = self.transform(item["data"])
        return item

    def memory_bound(
        self, buffer: int, readahead: int, fetch_units: int = 1, batch_size: int = 0
    ) -> int:
        """Bytes of decoded units one worker holds at most: ``buffer + max(readahead,
        fetch_units)`` units of the largest unit, and the units that the samples of the
        batch being built still view (``batch_size`` at most: a sample is a view of its
        unit until the DataLoader collates it)."""
        itemsize = self.dtype.itemsize
        unit = max(g.unit_nbytes(itemsize) for g in self.spec.grids)
        units = sum(g.n_units for g in self.spec.grids)
        return (buffer + max(readahead, fetch_units) + min(batch_size, units)) * unit


class ArrayDataset(_Samples, IterableBase):
    """One shuffled epoch after another over ``array`` of the selected entries.

    ``repo``: a repository address; ``array``: e.g. ``"entry/data/data"``. ``entries``:
    names or globs; ``query``: the catalog search language (``hyperslab search``); both
    None: every entry. ``branch``/``tag``/``snapshot``: which snapshot (pinned now).
    ``sample_shape``: None for frames (slices along the first axis), else the patch shape
    (``ndim`` long, or ``ndim - 1`` for patches of single frames). ``shuffle``, ``seed``:
    the order (the same for the same seed and epoch, :meth:`set_epoch`). ``buffer_chunks``
    and ``readahead``: decoded units a worker draws from (None: as many as fit in
    :data:`BUFFER_BYTES`, 16 to 256), and reads ahead (at least ``fetch_units``); memory
    stays under :meth:`memory_bound`. ``fetch_units``: how many consecutive units of an
    entry stay together in the shuffled order and are fetched in one request (None:
    enough for :data:`FETCH_BYTES` compressed, at most a quarter of ``buffer_chunks``; 1:
    every unit on its own, the best mixing). ``drop_last``, ``rank``, ``world_size``:
    distributed sharding (default: torch.distributed's rank when it is initialised). ``sites``,
    ``cache``, ``memory_cache``, ``config``: as for ``open_store``.
    """

    def __init__(
        self,
        repo: str,
        array: str,
        *,
        entries: str | Sequence[str] | None = None,
        query: str | None = None,
        branch: str | None = None,
        tag: str | None = None,
        snapshot: str | None = None,
        sample_shape: Sequence[int] | None = None,
        shuffle: bool = True,
        seed: int = 0,
        buffer_chunks: int | None = None,
        readahead: int = READAHEAD,
        fetch_units: int | None = None,
        drop_last: bool = False,
        rank: int | None = None,
        world_size: int | None = None,
        transform: Callable[[Any], Any] | None = None,
        as_tensors: bool | None = None,
        coordinates: bool = True,
        sites: Sequence[str] | None = None,
        cache: bool = True,
        memory_cache: bool | int = False,
        config: Config | str | None = None,
    ) -> None:
        if any(n is not None and n < 1 for n in (buffer_chunks, fetch_units)) or readahead < 0:
            raise BadInputError("buffer_chunks and fetch_units must be >= 1, and readahead >= 0")
        self.spec = _open_spec(
            repo,
            array,
            entries=entries,
            query=query,
            branch=branch,
            tag=tag,
            snapshot=snapshot,
            sample_shape=sample_shape,
            sites=sites,
            cache=cache,
            memory_cache=memory_cache,
            config=config,
        )
        self.shuffle = shuffle
        self.seed = int(seed)
        self.epoch = 0
        self.buffer_chunks = (
            _auto_buffer(self.spec, self.dtype.itemsize)
            if buffer_chunks is None
            else int(buffer_chunks)
        )
        self.readahead = int(readahead)
        self.fetch_units = (
            _auto_fetch_units(self.spec, self.buffer_chunks)
            if fetch_units is None
            else int(fetch_units)
        )
        self.drop_last = drop_last
        self.rank, self.world_size = rank, world_size
        distributed_slot(rank, world_size)  # a bad pair fails now, not in a worker
        self.transform = transform
        self.as_tensors = _HAS_TORCH if as_tensors is None else bool(as_tensors)
        if self.as_tensors and not _HAS_TORCH:
            raise BadInputError("as_tensors=True needs PyTorch (pip install hyperslab[ml])")
        self.coordinates = coordinates

    def __repr__(self) -> str:
        return (
            f"<ArrayDataset {self.spec.array!r} of {len(self.spec.parts)} entries "
            f"({sum(g.n_samples for g in self.spec.grids)} samples) at snapshot "
            f"{self.spec.snapshot[:12]} of {self.spec.repo}>"
        )

    def set_epoch(self, epoch: int) -> None:
        """The epoch whose order the next iteration follows (as ``DistributedSampler``;
        with ``persistent_workers=True`` a DataLoader does not see later calls)."""
        self.epoch = int(epoch)

    def pieces(self, worker: int = 0, workers: int = 1) -> list[Piece]:
        """The units (and sample ranges of them) one worker of this rank reads this epoch."""
        rank, world = distributed_slot(self.rank, self.world_size)
        return epoch_pieces(
            self.spec.grids,
            shuffle=self.shuffle,
            seed=self.seed,
            epoch=self.epoch,
            rank=rank,
            world_size=world,
            worker=worker,
            workers=workers,
            drop_last=self.drop_last,
            block=self.fetch_units,
        )

    def order(self, worker: int = 0, workers: int = 1) -> Iterator[tuple[int, int, int]]:
        """``(part, unit, sample in the unit)`` in the order the worker yields them."""
        pieces = self.pieces(worker, workers)
        rank, _ = distributed_slot(self.rank, self.world_size)
        rng = rng_for(self.seed, self.epoch, rank + 1, worker + 1)
        for i, j in draw(pieces, buffer=self.buffer_chunks, shuffle=self.shuffle, rng=rng):
            yield pieces[i].part, pieces[i].unit, j

    def __len__(self) -> int:
        """Samples this rank reads in an epoch (all workers together)."""
        return sum(p.size for p in self.pieces())

    def __iter__(self) -> Iterator[dict[str, Any]]:
        worker, workers = worker_slot()
        pieces = self.pieces(worker, workers)
        rank, _ = distributed_slot(self.rank, self.world_size)
        rng = rng_for(self.seed, self.epoch, rank + 1, worker + 1)
        order = draw(pieces, buffer=self.buffer_chunks, shuffle=self.shuffle, rng=rng)
        ahead = _ReadAhead(
            self._unit_reader(),
            pieces,
            self.buffer_chunks + max(self.readahead, self.fetch_units),
            self.fetch_units,
        )
        left = [p.size for p in pieces]
        try:
            for i, j in order:
                block = ahead.get(i)
                yield self._item(pieces[i].part, pieces[i].unit, j, block)
                left[i] -= 1
                if left[i] == 0:
                    ahead.release(i)
        finally:
            ahead.close()

    def mixing(self) -> dict[str, Any]:
        """How well this epoch's order (all workers of this rank, as one stream) mixes,
        next to a full random permutation of the same samples (:func:`.order.mixing`;
        ``near_neighbours`` counts pairs within one run of ``fetch_units`` units)."""
        emitted: list[tuple[int, int]] = []
        unit_of: dict[tuple[int, int], int] = {}
        for part, unit, j in self.order():
            key = (part, self.spec.grids[part].first_sample(unit) + j)
            emitted.append(key)
            unit_of[key] = hash((part, unit))
        window = max(g.unit_samples(0) for g in self.spec.grids if g.n_units) * self.fetch_units
        return mixing(emitted, unit_of, window)

    def samples(self) -> ArraySamples:
        """The same selection as a map-style data set (indices, ``len``)."""
        out = ArraySamples.__new__(ArraySamples)
        out.spec = self.spec
        out.transform = self.transform
        out.as_tensors = self.as_tensors
        out.coordinates = self.coordinates
        out.units_kept = self.buffer_chunks
        return out

    def memory_bound(
        self,
        buffer: int | None = None,
        readahead: int | None = None,
        fetch_units: int | None = None,
        batch_size: int = 0,
    ) -> int:
        return super().memory_bound(
            self.buffer_chunks if buffer is None else buffer,
            self.readahead if readahead is None else readahead,
            self.fetch_units if fetch_units is None else fetch_units,
            batch_size,
        )


def _auto_buffer(spec: DataSpec, itemsize: int) -> int:
    """Units of the largest size that fit in :data:`BUFFER_BYTES` (within BUFFER_UNITS)."""
    unit = max(g.unit_nbytes(itemsize) for g in spec.grids)
    lo, hi = BUFFER_UNITS
    return max(lo, min(hi, BUFFER_BYTES // max(1, unit)))


def _auto_fetch_units(spec: DataSpec, buffer_chunks: int) -> int:
    """Consecutive units worth one request (:data:`FETCH_BYTES` compressed), at most a
    quarter of the buffer so that it still draws from four runs or more."""
    stored = [
        p.stored / g.n_units for p, g in zip(spec.parts, spec.grids, strict=True) if g.n_units
    ]
    per_unit = min(stored) if stored else 0
    want = -(-FETCH_BYTES // int(per_unit)) if per_unit >= 1 else 1
    return max(1, min(want, buffer_chunks // 4))


class _ReadAhead:
    """Decoded units of ``pieces``, read in their order, ``ahead`` at most at a time.

    Pieces that follow each other in the file (the same part, consecutive units) are
    read together, ``run`` units at most: one ``read_units`` call, so one coalesced
    request for their chunks, decoded on all cores."""

    def __init__(
        self, reader: UnitReader, pieces: Sequence[Piece], ahead: int, run: int = 1
    ) -> None:
        self.reader = reader
        self.pieces = pieces
        self.ahead = max(1, ahead)
        self.run = max(1, run)
        self.started = 0
        # piece index -> (the read of its run, its place in the run)
        self.blocks: dict[int, tuple[Future[list[np.ndarray | None]], int]] = {}
        self.pool = ThreadPoolExecutor(2, thread_name_prefix="hyperslab-ml-read")

    def _start(self, upto: int, force: bool = False) -> None:
        """Start reads in order up to piece ``upto``: a run when there is room for all of
        it (reading it piecemeal would lose the single request), or the next one at once
        when ``force``d (a piece is wanted now)."""
        while self.started < min(upto, len(self.pieces)):
            first = self.pieces[self.started]
            n = 1
            while (
                n < self.run
                and self.started + n < len(self.pieces)
                and self.pieces[self.started + n].part == first.part
                and self.pieces[self.started + n].unit == first.unit + n
            ):
                n += 1
            if len(self.blocks) + n > self.ahead and not force:
                return
            force = False
            fut = self.pool.submit(self._read_run, first.part, first.unit, n)
            for k in range(n):
                self.blocks[self.started + k] = (fut, k)
            self.started += n

    def _read_run(self, part: int, first: int, n: int) -> list[np.ndarray | None]:
        """The run's units, in a list whose slots :meth:`release` empties one by one."""
        return list(self.reader.read_units(part, first, n))

    def get(self, i: int) -> np.ndarray:
        if i not in self.blocks:
            self._start(i + 1)
            if i not in self.blocks:
                self._start(i + 1, force=True)
        fut, k = self.blocks[i]
        block = fut.result()[k]
        assert block is not None  # dropped only when its piece is released
        self._start(i + self.ahead)
        return block

    def release(self, i: int) -> None:
        """Piece ``i`` is spent: its unit goes now, not when the rest of its run does."""
        held = self.blocks.pop(i, None)
        if held is not None and held[0].done() and not held[0].exception():
            held[0].result()[held[1]] = None
        self._start(self.started + 1)

    def close(self) -> None:
        for fut, _ in self.blocks.values():
            fut.cancel()
        self.blocks.clear()
        self.pool.shutdown(wait=False, cancel_futures=True)


class ArraySamples(_Samples, MapBase):
    """The samples of a data set by index (map-style): ``len(s)``, ``s[i]``.

    Build it with :meth:`ArrayDataset.samples` (or with the same arguments as
    :class:`ArrayDataset`). Index ``i`` counts samples entry by entry, unit by unit in
    storage order; read them in a chunk-aware order with :class:`ChunkAwareSampler`,
    which keeps each worker's reads on few units. Each process keeps the last
    ``units_kept`` decoded units.
    """

    units_kept: int

    def __init__(self, repo: str, array: str, **kwargs: Any) -> None:
        ds = ArrayDataset(repo, array, **kwargs)
        self.__dict__.update(ds.samples().__dict__)

    def __len__(self) -> int:
        return sum(g.n_samples for g in self.spec.grids)

    def locate(self, index: int) -> tuple[int, int, int]:
        """``(part, unit, sample in the unit)`` of sample ``index``."""
        if not 0 <= index < len(self):
            raise IndexError(f"sample {index} of {len(self)}")
        for part, g in enumerate(self.spec.grids):
            if index < g.n_samples:
                return (part, *g.locate(index))
            index -= g.n_samples
        raise IndexError(index)  # pragma: no cover - the bounds check above holds

    def index_of(self, part: int, unit: int, j: int) -> int:
        """The index of sample ``j`` of ``unit`` of ``part`` (:meth:`locate`'s inverse)."""
        before = sum(g.n_samples for g in self.spec.grids[:part])
        return before + self.spec.grids[part].first_sample(unit) + j

    def _unit(self, part: int, unit: int) -> np.ndarray:
        kept: OrderedDict[tuple[int, int], np.ndarray] | None = self.__dict__.get("_kept")
        lock: threading.Lock | None = self.__dict__.get("_kept_lock")
        if kept is None or lock is None:
            kept, lock = OrderedDict(), threading.Lock()
            self.__dict__["_kept"], self.__dict__["_kept_lock"] = kept, lock
        with lock:
            block = kept.get((part, unit))
            if block is not None:
                kept.move_to_end((part, unit))
                return block
        block = self._unit_reader().read_unit(part, unit)
        with lock:
            kept[(part, unit)] = block
            while len(kept) > max(1, self.units_kept):
                kept.popitem(last=False)
        return block

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = int(index)
        if index < 0:
            index += len(self)
        part, unit, j = self.locate(index)
        return self._item(part, unit, j, self._unit(part, unit))

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state.pop("_kept", None)
        state.pop("_kept_lock", None)
        return state


class ChunkAwareSampler(SamplerBase):
    """Indices of an :class:`ArraySamples` in chunk-aware order, sharded by rank.

    The order is :class:`ArrayDataset`'s: units shuffled (``seed``, :meth:`set_epoch`),
    each rank a contiguous share of the sample stream (``drop_last`` as PyTorch's
    ``DistributedSampler``; ``rank``/``world_size`` default to torch.distributed's), and
    samples drawn at random from ``buffer_chunks`` units at a time (default: as many as
    the data set keeps decoded per process, ``samples.units_kept``). Use it with
    ``batch_size`` a few times smaller than a unit's samples times ``buffer_chunks``, so
    a DataLoader worker's batch needs few units.
    """

    def __init__(
        self,
        samples: ArraySamples,
        *,
        shuffle: bool = True,
        seed: int = 0,
        buffer_chunks: int | None = None,
        drop_last: bool = False,
        rank: int | None = None,
        world_size: int | None = None,
    ) -> None:
        self.samples = samples
        self.shuffle = shuffle
        self.seed = int(seed)
        self.epoch = 0
        self.buffer_chunks = (
            int(buffer_chunks) if buffer_chunks is not None else max(1, samples.units_kept)
        )
        self.drop_last = drop_last
        self.rank, self.world_size = distributed_slot(rank, world_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _pieces(self) -> list[Piece]:
        return epoch_pieces(
            self.samples.spec.grids,
            shuffle=self.shuffle,
            seed=self.seed,
            epoch=self.epoch,
            rank=self.rank,
            world_size=self.world_size,
            drop_last=self.drop_last,
        )

    def __iter__(self) -> Iterator[int]:
        pieces = self._pieces()
        rng = rng_for(self.seed, self.epoch, self.rank + 1, 1)
        for i, j in draw(pieces, buffer=self.buffer_chunks, shuffle=self.shuffle, rng=rng):
            p = pieces[i]
            yield self.samples.index_of(p.part, p.unit, j)

    def __len__(self) -> int:
        return sum(p.size for p in self._pieces())
