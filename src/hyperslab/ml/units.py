"""Reading the units of an ML data set, in the process that reads them.

:class:`DataSpec` is what a data set pickles as: the repository's address, the pinned
snapshot, the array, the selected entries and how to read them. Nothing open travels:
:class:`UnitReader` opens the repository, the local chunk cache and one
:class:`~hyperslab.reading.reader.EntryReader` per entry lazily, in whichever process
(DataLoader worker, forked or spawned; Dask worker) first reads, and again after a fork.

A unit (whole chunk rows, :mod:`.grid`) is read in one batch through the entry's reader:
one routed, coalesced fetch for every chunk not already decoded in memory, then every
chunk decoded on all cores, then assembled into one dense NumPy block.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hyperslab.config import Config, load_config
from hyperslab.errors import BadInputError
from hyperslab.ml.grid import SampleGrid
from hyperslab.ml.selection import Part
from hyperslab.reading.reader import EntryReader, open_reader
from hyperslab.references.repository import Repository

__all__ = ["DataSpec", "UnitReader"]

#: entries whose readers (refmap, chunk tables, router threads) stay open per process
OPEN_ENTRIES = 16


@dataclass(frozen=True)
class DataSpec:
    """Everything needed to read a data set again, in another process."""

    repo: str
    snapshot: str
    array: str
    parts: tuple[Part, ...]
    sample_shape: tuple[int, ...] | None = None
    sites: tuple[str, ...] = ()
    cache: bool = True
    memory_cache: bool | int = True
    config_path: str | None = None  # the hyperslab.toml the data set was opened with
    grids: tuple[SampleGrid, ...] = field(default=(), compare=False)

    def __post_init__(self) -> None:
        if not self.grids:
            grids = tuple(
                SampleGrid.of(p.shape, p.chunks, self.sample_shape, f" of entry {p.entry!r}")
                for p in self.parts
            )
            object.__setattr__(self, "grids", grids)

    def config(self) -> Config:
        return load_config(Path(self.config_path) if self.config_path else None)


class UnitReader:
    """Reads units of the data set ``spec`` describes (one per process; thread-safe)."""

    def __init__(self, spec: DataSpec) -> None:
        self.spec = spec
        self._pid = -1
        self._lock = threading.Lock()
        self._repo: Repository | None = None
        self._cache: Any = None
        self._readers: OrderedDict[int, EntryReader] = OrderedDict()
        self._coords: dict[int, dict[str, np.ndarray]] = {}

    # ------------------------------------------------------------------ opening
    def _opened(self) -> Repository:
        """The repository (and cache) of this process, opened on first use."""
        if self._pid != os.getpid():  # first use, or a forked child: nothing inherited
            self._repo, self._cache, self._pid = None, None, os.getpid()
            self._readers = OrderedDict()
            self._coords = {}
        if self._repo is None:
            cfg = self.spec.config()
            self._repo = Repository.open(self.spec.repo, config=cfg)
            if self.spec.cache:
                from hyperslab.reading.chunk_cache import ChunkCache

                self._cache = ChunkCache.from_config(cfg)
        return self._repo

    def reader(self, part: int) -> EntryReader:
        """The entry reader of part ``part`` (opened on first use, the least recently used
        closed beyond :data:`OPEN_ENTRIES`)."""
        with self._lock:
            repo = self._opened()
            r = self._readers.get(part)
            if r is not None:
                self._readers.move_to_end(part)
                return r
            r = open_reader(
                repo,
                self.spec.parts[part].entry,
                snapshot=self.spec.snapshot,
                sites=list(self.spec.sites) or None,
                cache=self._cache if self._cache is not None else False,
                config=self.spec.config(),
                memory_cache=self.spec.memory_cache,
            )
            if r.decoder(self.spec.array) is None:
                raise BadInputError(
                    f"array {self.spec.array!r} of entry {self.spec.parts[part].entry!r} "
                    "cannot be decoded to numbers by hyperslab's reader"
                )
            self._readers[part] = r
            while len(self._readers) > OPEN_ENTRIES:
                _, old = self._readers.popitem(last=False)
                old.router.close()
                old.close()
            return r

    def close(self) -> None:
        """Close every open entry (the reader opens them again when asked)."""
        with self._lock:
            if self._pid == os.getpid():
                for r in self._readers.values():
                    r.router.close()
                    r.close()
                if self._repo is not None:
                    self._repo.close()
            self._readers, self._repo, self._pid = OrderedDict(), None, -1

    # ------------------------------------------------------------------ reading
    def read_rows(self, part: int, a: int, b: int, array: str | None = None) -> np.ndarray:
        """Rows ``[a, b)`` of part ``part``'s array (or of ``array``, another array of the
        same entry), every column, as a native-endian NumPy array (chunks never written
        read as the fill value)."""
        reader = self.reader(part)
        path = array or self.spec.array
        zarray = reader.view.refmap.arrays[path].zarray
        shape = tuple(zarray["shape"])
        chunks = tuple(zarray["chunks"])
        decoder = reader.decoder(path)
        assert decoder is not None  # checked when the reader opened
        stored = np.dtype(zarray["dtype"])
        order = zarray.get("order", "C")
        sep = zarray.get("dimension_separator") or "."
        grid = [range(-(-n // c)) for n, c in zip(shape[1:], chunks[1:], strict=True)]
        coords = [
            (k, *rest)
            for k in range(a // chunks[0], -(-b // chunks[0]))
            for rest in np.ndindex(*(len(g) for g in grid))
        ]
        keys = [f"{path}/{sep.join(map(str, c))}" for c in coords]
        decoded = reader.decoded(keys, decoder)
        fill = zarray.get("fill_value")
        out = np.full((b - a, *shape[1:]), 0 if fill is None else fill, dtype=stored)
        for c, flat in zip(coords, decoded, strict=True):
            if flat is None:
                continue  # never written: the fill value is there
            chunk = flat.view(stored).reshape(chunks, order=order)
            lo = [ci * n for ci, n in zip(c, chunks, strict=True)]
            src = []
            dst = []
            for d, (start, n, size) in enumerate(zip(lo, chunks, shape, strict=True)):
                first, last = (a, b) if d == 0 else (0, size)
                s0, s1 = max(start, first), min(start + n, last)
                src.append(slice(s0 - start, s1 - start))
                dst.append(slice(s0 - (a if d == 0 else 0), s1 - (a if d == 0 else 0)))
            out[tuple(dst)] = chunk[tuple(src)]
        if not out.dtype.isnative:
            out = out.astype(out.dtype.newbyteorder("="))
        return out

    def read_unit(self, part: int, unit: int) -> np.ndarray:
        """The decoded rows of one unit (see :mod:`.grid`)."""
        a, b = self.spec.grids[part].unit_rows(unit)
        return self.read_rows(part, a, b)

    def coordinates(self, part: int) -> dict[str, np.ndarray]:
        """The NeXus axes along the first axis of the array (``AXIS_indices`` = 0, or the
        first of ``axes``) in the array's NXdata group, read whole once per process."""
        with self._lock:
            cached = self._coords.get(part)
        if cached is not None:
            return cached
        reader = self.reader(part)
        refmap = reader.view.refmap
        group, _, _ = self.spec.array.rpartition("/")
        attrs = refmap.groups.get(group, {})
        n = self.spec.parts[part].shape[0]
        out: dict[str, np.ndarray] = {}
        for name in _first_axis_names(attrs):
            path = f"{group}/{name}" if group else name
            arr = refmap.arrays.get(path)
            if path == self.spec.array or arr is None or tuple(arr.zarray["shape"]) != (n,):
                continue
            if reader.decoder(path) is None:
                continue
            out[name] = self.read_rows(part, 0, n, path)
        with self._lock:
            self._coords[part] = out
        return out


def _first_axis_names(attrs: dict[str, Any]) -> list[str]:
    """NXdata axis names that label the first dimension of the signal."""
    names: list[str] = []
    for key, value in attrs.items():
        if key.endswith("_indices"):
            idx = value if isinstance(value, list) else [value]
            if idx and idx[0] == 0 and len(idx) == 1:
                names.append(key[: -len("_indices")])
    axes = attrs.get("axes")
    if isinstance(axes, str):
        axes = [a for a in axes.replace(":", " ").split() if a]
    first = axes[0] if isinstance(axes, list) and axes else None
    if isinstance(first, str) and first != "." and first not in names:
        names.append(first)
    return names
