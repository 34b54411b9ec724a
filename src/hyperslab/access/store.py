"""A read-only Zarr v3 ``Store`` over one entry of one repository snapshot.

::

    store = hyperslab.open_store("s3://beamline/repo", "run42/scan_0007")
    ds = xr.open_zarr(store)                       # or zarr.open_group(store, mode="r")

The entry's HDF5 hierarchy is served as Zarr (format 2 metadata, the kerchunk
model): HDF5 dataset ``/entry/data/data`` is array ``entry/data/data``, with
consolidated metadata at ``.zmetadata`` so opening costs no extra requests.

* **Pinned**: the snapshot is resolved once, when the store opens (``branch=``,
  ``tag=`` or ``snapshot=``); later commits never change what it shows.
* **Routed**: chunk bytes come from the local cache, else the most preferred
  healthy site holding the source file, else the next (see :mod:`hyperslab.reading.routing`).
* **Batched**: chunk requests that zarr issues together are answered together, so
  neighbouring byte ranges coalesce into single requests and the rest run
  concurrently. The store's I/O runs on its own threads, never on the caller's
  event loop, so it works from scripts, from Jupyter (a loop already running) and
  from ``async`` code alike, with no ``asynchronous=True``-style flags.
* **Picklable**: it pickles as its address (repository, entry, snapshot id, sites),
  so dask workers reopen the same pinned view.
Everything but the Zarr API is the reader's (:mod:`hyperslab.reading.reader`), which
``open_array`` shares.

* **Counted**: each chunk read is counted in the local access statistics
  (:mod:`hyperslab.reading.access_stats`, for the sync engine's hot-chunk policy) unless opted out.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from zarr.abc.store import (
    ByteRequest,
    OffsetByteRequest,
    RangeByteRequest,
    Store,
    SuffixByteRequest,
)
from zarr.core.buffer import Buffer, BufferPrototype

from hyperslab.config import Config
from hyperslab.errors import BadInputError
from hyperslab.reading.access_stats import AccessStats
from hyperslab.reading.decode import ChunkDecoder, DecodedCache, decode_pool
from hyperslab.reading.entry import EntryAddress, EntryView
from hyperslab.reading.reader import EntryReader, open_reader, reopen_reader
from hyperslab.reading.routing import ChunkRef, Router
from hyperslab.references.refmap import RefMap
from hyperslab.references.repository import Repository

if TYPE_CHECKING:
    from hyperslab.reading.chunk_cache import ChunkCache

__all__ = ["HyperslabStore", "open_store"]


_READ_ONLY = "store was opened in read-only mode and does not support writing"


# ----------------------------------------------------------------------- the view


def _node_order(key: str) -> tuple[str, ...]:
    path = key.rsplit("/.", 1)[0] if "/." in key else ""
    return tuple(path.split("/")) if path else ()


def _metadata(refmap: RefMap) -> dict[str, Any]:
    """Every v2 metadata document, keyed and ordered so that siblings are adjacent:
    zarr 3.1 nests a flat consolidated listing with itertools.groupby and loses nodes
    otherwise."""
    return dict(sorted(refmap.metadata_items(), key=lambda kv: _node_order(kv[0])))


def _consolidated(docs: Mapping[str, Any]) -> bytes:
    return json.dumps({"zarr_consolidated_format": 1, "metadata": docs}, allow_nan=True).encode()


def _slice(data: bytes, byte_range: ByteRequest | None) -> bytes:
    if byte_range is None:
        return data
    if isinstance(byte_range, RangeByteRequest):
        return data[byte_range.start : byte_range.end]
    if isinstance(byte_range, OffsetByteRequest):
        return data[byte_range.offset :]
    if isinstance(byte_range, SuffixByteRequest):
        return data[-byte_range.suffix :] if byte_range.suffix else b""
    raise TypeError(f"Unexpected byte_range, got {byte_range!r}")


class HyperslabStore(Store):
    """Read-only Zarr store of one pinned entry; build it with :func:`open_store`."""

    supports_writes = False
    supports_deletes = False
    supports_partial_writes = False
    supports_listing = True

    def __init__(self, reader: EntryReader, *, read_only: bool = True) -> None:
        if not read_only:
            raise BadInputError("hyperslab stores are read-only: snapshots never change")
        super().__init__(read_only=True)
        self.reader = reader
        self._docs = _metadata(reader.view.refmap)
        for path in reader.decoders:  # decoded by the reader: served codec-free
            key = f"{path}/.zarray" if path else ".zarray"
            self._docs[key] = {**self._docs[key], "filters": None, "compressor": None}
        self._meta = {k: json.dumps(v, allow_nan=True).encode() for k, v in self._docs.items()}
        self._meta[".zmetadata"] = _consolidated(self._docs)
        self._batchers: dict[asyncio.AbstractEventLoop, _Batcher] = {}
        self._block = threading.Lock()

    # the reader's parts, for callers that look inside (tests, benchmarks, open_dataset)
    @property
    def view(self) -> EntryView:
        return self.reader.view

    @property
    def router(self) -> Router:
        return self.reader.router

    @property
    def memory(self) -> DecodedCache | None:
        return self.reader.memory

    @property
    def stats(self) -> AccessStats | None:
        return self.reader.stats

    @property
    def address(self) -> EntryAddress | None:
        return self.reader.address

    # ------------------------------------------------------------ identity
    def __repr__(self) -> str:
        return (
            f"HyperslabStore({self.view.repo.display!r}, {self.view.entry!r}, "
            f"snapshot={self.view.snapshot[:12]!r})"
        )

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, HyperslabStore)
            and other.view.repo.display == self.view.repo.display
            and other.view.entry == self.view.entry
            and other.view.snapshot == self.view.snapshot
        )

    def __hash__(self) -> int:
        return hash((self.view.repo.display, self.view.entry, self.view.snapshot))

    def __reduce__(self) -> tuple[Any, ...]:
        if self.address is None:
            raise TypeError("this store was built from objects, not an address: cannot pickle")
        return (_reopen, (self.address,))

    def with_read_only(self, read_only: bool = False) -> HyperslabStore:
        if not read_only:
            raise ValueError(_READ_ONLY)
        return self

    def close(self) -> None:
        self.reader.close()
        super().close()

    # ------------------------------------------------------------ lookups
    def _group_zmetadata(self, key: str) -> bytes | None:
        """Consolidated metadata of a sub-group (``entry/data/.zmetadata``), built on demand."""
        group = key[: -len("/.zmetadata")]
        if f"{group}/.zgroup" not in self._meta:
            return None
        base = group + "/"
        data = _consolidated(
            {k[len(base) :]: v for k, v in self._docs.items() if k.startswith(base)}
        )
        self._meta[key] = data
        return data

    def _locate(self, key: str) -> bytes | ChunkRef | None:
        """Metadata bytes, an inline chunk's bytes, a chunk reference, or None (absent)."""
        meta = self._meta.get(key)
        if meta is not None:
            return meta
        if key.endswith("/.zmetadata"):
            return self._group_zmetadata(key)
        return self.reader.locate(key)

    def _batcher(self) -> _Batcher:
        loop = asyncio.get_running_loop()
        b = self._batchers.get(loop)
        if b is None:
            with self._block:
                b = self._batchers.setdefault(loop, _Batcher(self.router))
        return b

    # ------------------------------------------------------------ reads
    def _decoder(self, key: str) -> ChunkDecoder | None:
        """The decoder of the array holding chunk ``key`` (None: served as stored)."""
        return self.reader.decoder(key.rpartition("/")[0]) if self.reader.decoders else None

    async def get(
        self, key: str, prototype: BufferPrototype, byte_range: ByteRequest | None = None
    ) -> Buffer | None:
        found = self._locate(key)
        if found is None:
            return None
        if key in self._meta:  # metadata
            return prototype.buffer.from_bytes(_slice(found, byte_range))  # type: ignore[arg-type]
        decoder = self._decoder(key)
        data: Any
        if decoder is None:
            data = found if isinstance(found, bytes) else await self._batcher().get(found)
        elif isinstance(found, bytes):
            data = decoder(found, key)  # inline: a few hundred stored bytes
        else:
            ckey = decoder.memory_key(found)
            data = self.memory.get(ckey) if self.memory is not None else None
            if data is None:
                stored = await self._batcher().get(found)
                # each chunk decodes on the decode threads as soon as its batch arrives
                loop = asyncio.get_running_loop()
                data = await loop.run_in_executor(decode_pool(), decoder, stored, key)
                if self.memory is not None:
                    self.memory.put(ckey, data)
        self.reader.count(key)  # a chunk read: buffered in memory, never raises
        return prototype.buffer.from_bytes(_slice(data, byte_range))

    async def get_partial_values(
        self,
        prototype: BufferPrototype,
        key_ranges: Iterable[tuple[str, ByteRequest | None]],
    ) -> list[Buffer | None]:
        return list(await asyncio.gather(*(self.get(k, prototype, r) for k, r in key_ranges)))

    async def exists(self, key: str) -> bool:
        return self._locate(key) is not None

    async def getsize(self, key: str) -> int:
        found = self._locate(key)
        if found is None:
            raise FileNotFoundError(key)
        decoder = self._decoder(key) if key not in self._meta else None
        if decoder is not None:
            return decoder.nbytes
        return len(found) if isinstance(found, bytes) else found.length

    # ------------------------------------------------------------ writes: never
    async def set(self, key: str, value: Buffer) -> None:
        raise ValueError(_READ_ONLY)

    async def set_if_not_exists(self, key: str, value: Buffer) -> None:
        raise ValueError(_READ_ONLY)

    async def delete(self, key: str) -> None:
        raise ValueError(_READ_ONLY)

    # ------------------------------------------------------------ listing
    def _keys(self) -> Iterable[str]:
        yield from self._meta
        for path, arr in self.view.refmap.arrays.items():
            prefix = f"{path}/" if path else ""
            for name in arr.chunk_names(self.view.chunks.indices(path)):
                yield prefix + name

    async def list(self) -> AsyncIterator[str]:
        for key in self._keys():
            yield key

    async def list_prefix(self, prefix: str) -> AsyncIterator[str]:
        for key in self._keys():
            if key.startswith(prefix):
                yield key

    async def list_dir(self, prefix: str) -> AsyncIterator[str]:
        prefix = prefix.rstrip("/")
        base = f"{prefix}/" if prefix else ""
        seen: set[str] = set()
        for key in self._keys():
            if not key.startswith(base):
                continue
            child = key[len(base) :].split("/", 1)[0]
            if child not in seen:
                seen.add(child)
                yield child


class _Batcher:
    """Collects the chunk requests of one event-loop turn and fetches them together."""

    def __init__(self, router: Router) -> None:
        self.router = router
        self.pending: list[tuple[ChunkRef, asyncio.Future[bytes]]] = []
        self.tasks: set[asyncio.Task[None]] = set()

    async def get(self, ref: ChunkRef) -> bytes:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[bytes] = loop.create_future()
        self.pending.append((ref, fut))
        if len(self.pending) == 1:
            loop.call_soon(self._flush, loop)
        return await fut

    def _flush(self, loop: asyncio.AbstractEventLoop) -> None:
        batch, self.pending = self.pending, []
        task = loop.create_task(self._run(batch))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _run(
        self,
        batch: list[tuple[ChunkRef, asyncio.Future[bytes]]],
    ) -> None:
        try:
            results = await self.router.afetch([r for r, _ in batch])
        except BaseException as exc:
            for _, fut in batch:
                if not fut.done():
                    fut.set_exception(exc)
            return
        for (_, fut), res in zip(batch, results, strict=True):
            if fut.done():
                continue
            if isinstance(res, BaseException):
                fut.set_exception(res)
            else:
                fut.set_result(res)


# ----------------------------------------------------------------------- opening


def _reopen(address: EntryAddress) -> HyperslabStore:
    return HyperslabStore(reopen_reader(address))


#: zarr's default number of chunk reads in flight (``async.concurrency``)
_ZARR_DEFAULT_CONCURRENCY = 10
#: what open_store raises it to when the user has not chosen: enough chunks per batch
#: for neighbouring ranges to coalesce and for fetching to overlap decoding
ZARR_CONCURRENCY = 64


def _more_zarr_concurrency() -> None:
    import zarr

    if zarr.config.get("async.concurrency") == _ZARR_DEFAULT_CONCURRENCY:
        zarr.config.set({"async.concurrency": ZARR_CONCURRENCY})


def open_store(
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
) -> HyperslabStore:
    """A read-only Zarr store of ``entry`` at one snapshot of ``repo``.

    ``repo``: a repository URL (``file://``, ``s3://``), path, ``SITE:path`` or an
    open :class:`Repository`. Pick the snapshot with at most one of ``branch``
    (default ``main``), ``tag`` or ``snapshot`` (an id or unique prefix); it is
    pinned for the life of the store.

    ``sites``: repository locations to read chunk bytes from, most preferred first
    (replicas of the same repository, e.g. ``["cloud:repo", "beamline:repo"]``).
    Default: for ``SITE:path``, that path at every site in ``hyperslab.toml``'s
    preference order; otherwise the repository itself.

    ``cache``: True (default) for the bounded local cache of ``hyperslab.toml``
    (``hyperslab cache info``), False for none, or a :class:`ChunkCache`.

    Side effect: if zarr's ``async.concurrency`` is still zarr's default (10), it is
    raised to :data:`ZARR_CONCURRENCY` (64), so that a read of many chunks hands
    them to the store together (coalesced, fetched concurrently, decoded on every
    core). Set it yourself (``zarr.config.set``) to keep another value.

    ``memory_cache``: decoded chunks kept in this process's memory, so that re-reading a
    frame skips the fetch and the decode (HDF5's chunk cache does the same). True: the
    process-wide cache of ``[cache] memory`` bytes (256 MiB unless configured,
    ``HYPERSLAB_CACHE_MEMORY``), shared by every store; a size (bytes or ``"1GiB"``): a
    cache of that size, shared with stores asking for the same size; a
    :class:`~hyperslab.reading.decode.DecodedCache`: that one; False or 0: none.
    None (default): True, unless ``cache=False`` asked for no caching at all.

    ``decode``: True (default) decodes chunks in the store (libdeflate, multi-core; see
    :mod:`.decode`) and serves arrays without codecs; False serves the bytes as
    stored, with the original codecs, for zarr to decode.

    ``stats``: where chunk reads are counted for hot-chunk replication (see
    ``hyperslab stats --help``). None/True (default): the shared local database,
    unless ``HYPERSLAB_ACCESS_STATS=0``; False: not counted; an
    :class:`~hyperslab.reading.access_stats.AccessStats` or a database path: that one.
    """
    reader = open_reader(
        repo,
        entry,
        branch=branch,
        tag=tag,
        snapshot=snapshot,
        sites=sites,
        cache=cache,
        config=config,
        stats=stats,
        memory_cache=memory_cache,
        decode=decode,
    )
    _more_zarr_concurrency()
    return HyperslabStore(reader)
