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
        return self._read(part, [(a, b)], array)[0]

    def read_unit(self, part: int, unit: int) -> np.ndarray:
        """The decoded rows of one unit (see :mod:`.grid`)."""
        return self.read_units(part, unit, 1)[0]

    def read_units(self, part: int, first: int, n: int) -> list[np.ndarray]:
        """Units ``first .. first + n - 1`` of part ``part``, fetched together (one
        routed batch: one request where their chunks lie next to each other in the file)
        and decoded on all cores; one block each."""
        grid = self.spec.grids[part]
        return self._read(part, [grid.unit_rows(u) for u in range(first, first + n)], None)

    def _read(self, part: int, spans: list[tuple[int, int]], array: str | None) -> list[np.ndarray]:
        """Rows ``[a, b)`` of each span, every chunk of all of them decoded in one batch.

        A span that is exactly one chunk (every column in it) is that chunk's decoded
        array, not a copy, unless the reader keeps decoded chunks in memory (then the
        array is shared and read-only)."""
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
        across = list(np.ndindex(*(-(-n // c) for n, c in zip(shape[1:], chunks[1:], strict=True))))
        coords = [
            [(k, *rest) for k in range(a // chunks[0], -(-b // chunks[0])) for rest in across]
            for a, b in spans
        ]
        keys = [f"{path}/{sep.join(map(str, c))}" for span in coords for c in span]
        decoded = iter(reader.decoded(keys, decoder))
        fill = zarray.get("fill_value")
        out: list[np.ndarray] = []
        for (a, b), span in zip(spans, coords, strict=True):
            flats = [next(decoded) for _ in span]
            single = flats[0] if len(flats) == 1 else None
            if (
                single is not None
                and chunks[1:] == shape[1:]
                and a % chunks[0] == 0
                and b - a == chunks[0]
                and reader.memory is None
            ):
                out.append(_own(single.view(stored).reshape(chunks, order=order)))
                continue
            if all(f is not None for f in flats):  # every row is written over below
                block = np.empty((b - a, *shape[1:]), dtype=stored)
            else:
                block = np.full((b - a, *shape[1:]), 0 if fill is None else fill, dtype=stored)
            for c, flat in zip(span, flats, strict=True):
                if flat is None:
                    continue  # never written: the fill value is there
                chunk = flat.view(stored).reshape(chunks, order=order)
                src, dst = [], []
                for d, (ci, n, size) in enumerate(zip(c, chunks, shape, strict=True)):
                    start = ci * n
                    lo, hi = (a, b) if d == 0 else (0, size)
                    s0, s1 = max(start, lo), min(start + n, hi)
                    shift = a if d == 0 else 0
                    src.append(slice(s0 - start, s1 - start))
                    dst.append(slice(s0 - shift, s1 - shift))
                block[tuple(dst)] = chunk[tuple(src)]
            out.append(_own(block))
        return out

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


def _own(block: np.ndarray) -> np.ndarray:
    """``block`` native-endian and writable (the caller's to change, as torch wants)."""
    if not block.dtype.isnative:
        return block.astype(block.dtype.newbyteorder("="))
    if not block.flags.writeable:
        try:
            block.flags.writeable = True  # a fresh decode nobody else holds
        except ValueError:  # its memory is read-only (bytes): copy
            return block.copy()
    return block


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
