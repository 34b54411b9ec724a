"""The order of an epoch: chunk-aware shuffling, sharding across ranks and workers.

A random permutation of samples would read every chunk once per sample it holds. Here
an epoch visits each unit (whole chunk rows, see :mod:`.grid`) once:

1. **Units shuffled.** The units of every entry, in a random order (seeded by ``seed``
   and the epoch number: the same seed and epoch give the same order everywhere). With
   ``block`` > 1, runs of ``block`` consecutive units of an entry stay together (the
   runs are shuffled), so a worker fetches a run in one request: fewer, larger requests
   for chunks much smaller than a request is worth, at the price of mixing neighbours
   more than across runs (:func:`mixing` measures it).
2. **Sharded.** The samples of the shuffled units, one after the other, form the
   epoch's stream; each distributed rank takes a contiguous share of it, and each
   DataLoader worker of a rank a contiguous share of that. Shares are in samples, so
   every sample is read by exactly one worker of one rank; with ``drop_last`` every
   rank gets the same number (the stream's last ``N % world_size`` samples are left out,
   as PyTorch's ``DistributedSampler`` does), without it the shares differ by at most one
   sample and nothing is repeated (``DistributedSampler`` pads by repeating instead). A
   unit cut by a share boundary is read by both neighbours: at most one extra unit read
   per boundary.
3. **Drawn from a buffer.** Each worker keeps ``buffer`` units decoded and draws its next
   sample uniformly at random from all the samples those units have left; a spent unit
   makes room for the next.

How well that mixes, against a full random permutation, is :func:`mixing`'s answer.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from hyperslab.ml.grid import SampleGrid

__all__ = ["Piece", "draw", "epoch_pieces", "mixing", "rng_for", "share", "unit_order"]


@dataclass(frozen=True)
class Piece:
    """Samples ``[lo, hi)`` of unit ``unit`` of part ``part`` (an entry's array)."""

    part: int
    unit: int
    lo: int
    hi: int

    @property
    def size(self) -> int:
        return self.hi - self.lo


def rng_for(seed: int, *path: int) -> np.random.Generator:
    """The random generator of one stream of choices: ``seed`` and where (epoch, rank,
    worker ...), so every process derives the same choices for the same place."""
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, *(int(p) & 0xFFFFFFFF for p in path)])


def unit_order(
    grids: Sequence[SampleGrid], *, shuffle: bool, seed: int, epoch: int, block: int = 1
) -> list[Piece]:
    """Every unit of every part as a whole piece: shuffled (in runs of ``block``
    consecutive units of a part, the runs shuffled), or in storage order."""
    block = max(1, int(block))
    runs = [
        [Piece(p, u, 0, g.unit_samples(u)) for u in range(r, min(r + block, g.n_units))]
        for p, g in enumerate(grids)
        for r in range(0, g.n_units, block)
    ]
    if shuffle and runs:
        order = rng_for(seed, epoch, 0).permutation(len(runs))
        runs = [runs[i] for i in order]
    return [unit for run in runs for unit in run]


def share(pieces: Sequence[Piece], index: int, count: int, *, drop_last: bool) -> list[Piece]:
    """Share ``index`` of ``count`` of the sample stream ``pieces`` make (contiguous)."""
    total = sum(p.size for p in pieces)
    if drop_last:
        per = total // count
        lo, hi = index * per, (index + 1) * per
    else:
        lo, hi = index * total // count, (index + 1) * total // count
    out: list[Piece] = []
    at = 0
    for p in pieces:
        start, end = at, at + p.size
        at = end
        if end <= lo or start >= hi:
            continue
        a, b = max(lo, start) - start, min(hi, end) - start
        out.append(Piece(p.part, p.unit, p.lo + a, p.lo + b))
    return out


def epoch_pieces(
    grids: Sequence[SampleGrid],
    *,
    shuffle: bool,
    seed: int,
    epoch: int,
    rank: int = 0,
    world_size: int = 1,
    worker: int = 0,
    workers: int = 1,
    drop_last: bool = False,
    block: int = 1,
) -> list[Piece]:
    """The pieces one worker of one rank reads in an epoch, in reading order."""
    units = unit_order(grids, shuffle=shuffle, seed=seed, epoch=epoch, block=block)
    mine = share(units, rank, world_size, drop_last=drop_last)
    return share(mine, worker, workers, drop_last=False)


def draw(
    pieces: Sequence[Piece], *, buffer: int, shuffle: bool, rng: np.random.Generator
) -> Iterator[tuple[int, int]]:
    """``(piece index, sample within its unit)`` in the order a worker yields them: each
    piece's samples in order when not shuffling, else drawn uniformly from the samples
    left in the ``buffer`` pieces open at a time (a piece opens when the one before it in
    ``pieces`` is open and there is room: pieces open in order, so reads can run ahead)."""
    if not shuffle:
        for i, p in enumerate(pieces):
            for j in range(p.lo, p.hi):
                yield i, j
        return
    buffer = max(1, buffer)
    open_: list[tuple[int, np.ndarray]] = []  # (piece index, its samples left, shuffled)
    left: list[int] = []
    nxt = 0
    while open_ or nxt < len(pieces):
        while len(open_) < buffer and nxt < len(pieces):
            p = pieces[nxt]
            open_.append((nxt, rng.permutation(np.arange(p.lo, p.hi))))
            left.append(p.size)
            nxt += 1
        total = sum(left)
        if total == 0:  # empty pieces (cannot happen with sizes > 0, but never loop)
            open_.clear()
            left.clear()
            continue
        pick = int(rng.integers(total))
        k = 0
        while pick >= left[k]:
            pick -= left[k]
            k += 1
        i, samples = open_[k]
        left[k] -= 1
        yield i, int(samples[left[k]])
        if left[k] == 0:
            del open_[k], left[k]


def mixing(
    emitted: Sequence[tuple[int, int]], unit_of: dict[tuple[int, int], int], window: int = 0
) -> dict:
    """How well an emitted order of ``(part, sample)`` mixes, next to a full random
    permutation of the same samples:

    * ``same_unit_neighbours``: the share of consecutive samples that come from the same
      unit (chunk rows); a full permutation's expected share is
      ``Σ n_u (n_u - 1) / (N (N - 1))``.
    * ``near_neighbours`` (with ``window`` > 0): the share of consecutive samples that
      lie fewer than ``window`` samples apart in the same part (e.g. in the same run of
      units fetched together), and a full permutation's expected share of such pairs.
    * ``displacement``: the mean distance between a sample's place in storage order and
      in the emitted order, over N; a full permutation's expectation is 1/3.
    """
    n = len(emitted)
    if n < 2:
        return {"samples": n}
    units = [unit_of[x] for x in emitted]
    same = sum(a == b for a, b in itertools.pairwise(units)) / (n - 1)
    sizes = np.bincount(np.unique(units, return_inverse=True)[1]).astype(np.float64)
    expected = float((sizes * (sizes - 1)).sum() / (n * (n - 1)))
    natural = {x: i for i, x in enumerate(sorted(emitted))}
    displacement = float(np.mean([abs(natural[x] - i) for i, x in enumerate(emitted)])) / n
    out: dict[str, Any] = {
        "samples": n,
        "same_unit_neighbours": same,
        "same_unit_neighbours_permutation": expected,
    }
    if window > 0:
        near = sum(
            a[0] == b[0] and abs(a[1] - b[1]) < window for a, b in itertools.pairwise(emitted)
        )
        # ordered pairs of distinct emitted samples of one part fewer than `window` apart
        close = 0
        for part in {p for p, _ in emitted}:
            v = np.sort(np.array([i for p, i in emitted if p == part], dtype=np.int64))
            ahead = np.searchsorted(v, v + window, side="left") - np.arange(len(v)) - 1
            close += 2 * int(ahead.sum())
        out["near_neighbours"] = near / (n - 1)
        out["near_neighbours_permutation"] = close / (n * (n - 1))
    out["displacement"] = displacement
    out["displacement_permutation"] = (n * n - 1) / (3 * n * n)
    return out
