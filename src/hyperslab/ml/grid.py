"""How one entry's array splits into samples, and samples into reading units.

A sample is a slice along the first axis (a frame; ``sample_shape=None``) or a patch of
``sample_shape`` (the array tiled without overlap, from the origin; a remainder that
does not fill a whole patch is left out). A *unit* is what one read fetches and decodes:
whole chunk rows along the first axis, as few as hold whole rows of samples
(``lcm(chunk rows, sample rows)`` array rows). An epoch reads every unit once, so bytes
fetched per epoch stay at the compressed size of the data set.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

from hyperslab.errors import BadInputError

__all__ = ["SampleGrid"]


@dataclass(frozen=True)
class SampleGrid:
    """Samples and units of one array of ``shape`` stored in ``chunks``."""

    shape: tuple[int, ...]
    chunks: tuple[int, ...]
    sample: tuple[int, ...]  # the sample's extent on every axis
    frames: bool  # samples are whole frames
    squeeze: bool  # samples drop the first axis (frames, and patches of single frames)

    @classmethod
    def of(
        cls,
        shape: Sequence[int],
        chunks: Sequence[int],
        sample_shape: Sequence[int] | None,
        where: str = "",
    ) -> SampleGrid:
        """The grid of an array; ``sample_shape`` None: frames; ``ndim - 1`` long: patches
        of single frames; ``ndim`` long: patches spanning frames too."""
        shape, chunks = tuple(int(n) for n in shape), tuple(int(c) for c in chunks)
        if sample_shape is None:
            return cls(shape, chunks, (1, *shape[1:]), True, True)
        sample = tuple(int(n) for n in sample_shape)
        squeeze = len(sample) == len(shape) - 1
        if squeeze:
            sample = (1, *sample)
        if len(sample) != len(shape):
            raise BadInputError(
                f"sample_shape {tuple(sample_shape)} has {len(sample_shape)} axes; the array"
                f"{where} has {len(shape)} ({shape}): give {len(shape)} (or {len(shape) - 1}, "
                "patches of single frames)"
            )
        if any(s < 1 for s in sample):
            raise BadInputError(f"sample_shape {tuple(sample_shape)} must be positive")
        too_big = [d for d, (s, n) in enumerate(zip(sample, shape, strict=True)) if s > n]
        if too_big:
            raise BadInputError(
                f"sample_shape {tuple(sample_shape)} is larger than the array{where} "
                f"{shape} on axis {too_big[0]}"
            )
        return cls(shape, chunks, sample, False, squeeze)

    @cached_property
    def patches(self) -> tuple[int, ...]:
        """Samples along each axis after the first."""
        return tuple(n // s for n, s in zip(self.shape[1:], self.sample[1:], strict=True))

    @cached_property
    def per_row(self) -> int:
        """Samples in one row of samples (one sample extent along the first axis)."""
        return math.prod(self.patches)

    @property
    def sample_rows(self) -> int:
        return self.shape[0] // self.sample[0]

    @property
    def rows_per_unit(self) -> int:
        c0 = self.chunks[0] if self.chunks else 1
        return math.lcm(max(1, c0), self.sample[0])

    @property
    def n_samples(self) -> int:
        return self.sample_rows * self.per_row

    @property
    def n_units(self) -> int:
        used = self.sample_rows * self.sample[0]
        return -(-used // self.rows_per_unit) if used else 0

    def unit_rows(self, unit: int) -> tuple[int, int]:
        """Array rows ``[a, b)`` that unit ``unit`` holds."""
        a = unit * self.rows_per_unit
        return a, min(a + self.rows_per_unit, self.sample_rows * self.sample[0])

    def unit_samples(self, unit: int) -> int:
        a, b = self.unit_rows(unit)
        return (b - a) // self.sample[0] * self.per_row

    def first_sample(self, unit: int) -> int:
        """Index (in this array's sample order) of the first sample of ``unit``."""
        return unit * (self.rows_per_unit // self.sample[0]) * self.per_row

    def locate(self, index: int) -> tuple[int, int]:
        """``(unit, sample within the unit)`` of sample ``index`` of this array."""
        per_unit = (self.rows_per_unit // self.sample[0]) * self.per_row
        return divmod(index, per_unit)

    def origin(self, unit: int, j: int) -> tuple[int, ...]:
        """Where sample ``j`` of ``unit`` starts in the array (one index per axis)."""
        a, _ = self.unit_rows(unit)
        row, rest = divmod(j, self.per_row)
        out = [a + row * self.sample[0]]
        for n, s in zip(reversed(self.patches), reversed(self.sample[1:]), strict=True):
            rest, i = divmod(rest, n)
            out.insert(1, i * s)
        return tuple(out)

    def unit_nbytes(self, itemsize: int) -> int:
        """Bytes of one decoded unit (all of its rows, every column)."""
        return self.rows_per_unit * math.prod(self.shape[1:]) * itemsize
