"""An entry opened for reading chunks: the view, its router, decoders, caches and counts.

:func:`open_reader` is what every reading face opens (``open_store``'s Zarr store,
``open_array``): it pins the snapshot, picks the sites, the disk and memory caches
and the access statistics, and returns an :class:`EntryReader`, which answers

* :meth:`~EntryReader.locate`: a chunk's inline bytes, its :class:`ChunkRef`, or
  None (never written);
* :meth:`~EntryReader.decoder`: the store-side decoder of an array, if it has one;
* :meth:`~EntryReader.decoded`: many chunks at once, decoded (memory cache, one routed
  fetch for the rest, parallel decode);
* :meth:`~EntryReader.count`: one chunk read, for the access statistics.

Nothing here imports zarr: the faces put their own API on top.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from hyperslab.config import Config, load_config, parse_size
from hyperslab.errors import CorruptError
from hyperslab.reading.access_stats import AccessStats, resolve_stats
from hyperslab.reading.decode import ChunkDecoder, DecodedCache, decode_pool, shared_decoded_cache
from hyperslab.reading.entry import EntryAddress, EntryView, pinned_snapshot, replica_sites
from hyperslab.reading.routing import ChunkRef, Router
from hyperslab.references.refmap import chunk_index
from hyperslab.references.repository import Repository

if TYPE_CHECKING:
    from hyperslab.reading.chunk_cache import ChunkCache

__all__ = ["EntryReader", "open_reader", "reopen_reader"]


class EntryReader:
    """Chunks of one pinned entry (build it with :func:`open_reader`).

    ``decode``: arrays whose chunks this reader can decode itself (see
    :mod:`.decode`) get a :meth:`decoder`; with False every chunk is served as stored.
    """

    def __init__(
        self,
        view: EntryView,
        router: Router,
        address: EntryAddress | None = None,
        *,
        stats: AccessStats | None = None,
        decode: bool = True,
        memory: DecodedCache | None = None,
    ) -> None:
        self.view = view
        self.router = router
        self.address = address
        self.stats = stats
        self.memory = memory if decode else None
        self.decoders: dict[str, ChunkDecoder] = {}
        if decode:
            for path, arr in view.refmap.arrays.items():
                decoder = ChunkDecoder.for_array(arr.zarray)
                if decoder is not None:
                    self.decoders[path] = decoder
        repo = view.repo
        self._record: Callable[[str], None] | None = (
            stats.recorder(repo.id or repo.display, view.snapshot, view.entry, repo.display)
            if stats is not None
            else None
        )

    def __repr__(self) -> str:
        return (
            f"EntryReader({self.view.repo.display!r}, {self.view.entry!r}, "
            f"snapshot={self.view.snapshot[:12]!r})"
        )

    def decoder(self, array: str) -> ChunkDecoder | None:
        """The decoder of ``array``'s chunks (None: they are served as stored)."""
        return self.decoders.get(array)

    def locate(self, key: str) -> bytes | ChunkRef | None:
        """Chunk ``key`` (``array/i.j.k``): its bytes if inline, its reference if it lies
        in a source, None if never written or not a chunk of an array."""
        path, sep, name = key.rpartition("/")
        path = path if sep else ""
        arr = self.view.refmap.arrays.get(path)
        if arr is None or name.startswith("."):
            return None
        try:
            lin = chunk_index(name, arr.grid, key)
        except CorruptError:
            return None
        found = self.view.chunks.find(path, lin)
        if found is None or isinstance(found, bytes):
            return found  # never written (read as the fill value) or inline bytes
        src, offset, length, crc = found
        ids = self.view.source_ids
        source = ids[src] if 0 <= src < len(ids) else None
        if source is None:
            raise CorruptError(f"{key}: source #{src} is not a repository source")
        return ChunkRef(source, offset, length, checksum=crc, label=key)

    def count(self, key: str) -> None:
        """Count one read of chunk ``key`` (buffered in memory; never raises)."""
        if self._record is not None:
            self._record(key)

    def decoded(self, keys: Sequence[str], decoder: ChunkDecoder) -> list[np.ndarray | None]:
        """Chunks ``keys`` of one array, decoded (flat arrays of the chunk's bytes), None
        for chunks never written. Each read is counted; what is not in the memory cache
        is fetched in one routed batch and decoded on every core."""
        out: list[np.ndarray | None] = [None] * len(keys)
        fetch: list[tuple[int, ChunkRef, str]] = []
        for i, key in enumerate(keys):
            found = self.locate(key)
            if found is None:
                continue
            self.count(key)
            if isinstance(found, bytes):
                out[i] = decoder(found, key)
                continue
            ckey = decoder.memory_key(found)
            cached = self.memory.get(ckey) if self.memory is not None else None
            if cached is not None:
                out[i] = cached
            else:
                fetch.append((i, found, ckey))
        if fetch:
            results = self.router.fetch([ref for _, ref, _ in fetch])
            for res in results:
                if isinstance(res, BaseException):
                    raise res
            arrays = decode_pool().map(
                lambda item: decoder(item[0], item[1].label),
                [(res, ref) for res, (_, ref, _) in zip(results, fetch, strict=True)],
            )
            for (i, _, ckey), arr in zip(fetch, arrays, strict=True):
                out[i] = arr
                if self.memory is not None:
                    self.memory.put(ckey, arr)
        return out

    def close(self) -> None:
        """Write buffered access counts (the reader stays usable)."""
        if self.stats is not None:
            self.stats.flush()


def open_reader(
    repo: str | Repository,
    entry: str,
    *,
    branch: str | None = None,
    tag: str | None = None,
    snapshot: str | None = None,
    sites: Sequence[str] | None = None,
    cache: bool | ChunkCache | None = True,
    config: Config | None = None,
    stats: bool | str | AccessStats | None = None,
    memory_cache: bool | int | str | DecodedCache | None = None,
    decode: bool = True,
) -> EntryReader:
    """``entry`` at one snapshot of ``repo``, opened for reading chunks.

    The arguments are :func:`~hyperslab.access.store.open_store`'s (which documents
    them); the snapshot is pinned now. A reader opened from a repository spec (not a
    :class:`Repository` object) carries the :class:`EntryAddress` that reopens it.
    """
    cfg = config if config is not None else load_config()
    spec = repo if isinstance(repo, str) else None
    r = Repository.open(repo, config=cfg) if isinstance(repo, str) else repo
    sid = pinned_snapshot(r, branch=branch, tag=tag, snapshot=snapshot)
    replica_specs, replicas = replica_sites(r, spec, sites, cfg)
    view = EntryView(r, entry, sid, replicas=replicas)
    chunk_cache: ChunkCache | None
    if cache is True:
        from hyperslab.reading.chunk_cache import ChunkCache

        chunk_cache = ChunkCache.from_config(cfg)
    elif cache is False or cache is None:
        chunk_cache = None
    else:
        chunk_cache = cache
    router = Router(view.locations, cache=chunk_cache, on_absent=view.absent)
    if memory_cache is None:
        memory_cache = cache is not False and cache is not None
    memory, memory_bytes = _memory_cache(memory_cache, cfg)
    counts = resolve_stats(stats, cfg)
    # a pickled reader reopens with the same database, the default one, or none
    explicit = counts is not None and isinstance(stats, AccessStats | str)
    stats_address = str(counts.path) if counts is not None and explicit else stats is not False
    address = (
        EntryAddress(
            spec,
            entry,
            sid,
            tuple(replica_specs),
            cache is True,
            stats_address,
            memory_cache if isinstance(memory_cache, bool) else memory_bytes,
        )
        if spec
        else None
    )
    return EntryReader(view, router, address, stats=counts, decode=decode, memory=memory)


def reopen_reader(address: EntryAddress) -> EntryReader:
    """The reader an :class:`EntryAddress` describes (the same pinned snapshot)."""
    return open_reader(
        address.repo,
        address.entry,
        snapshot=address.snapshot,
        sites=list(address.sites) or None,
        cache=address.cache,
        stats=address.stats,
        memory_cache=address.memory_cache,
    )


def _memory_cache(
    setting: bool | int | str | DecodedCache, config: Config
) -> tuple[DecodedCache | None, int]:
    """``memory_cache=`` as a decoded-chunk cache (shared per size) and its size."""
    if isinstance(setting, DecodedCache):
        return setting, setting.limit
    size: Any
    if setting is True:
        size = config.cache_memory
    elif setting is False:
        size = 0
    else:
        size = parse_size(setting, where="memory_cache")
    return shared_decoded_cache(size), size
