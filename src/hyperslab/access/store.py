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
  healthy site holding the source file, else the next (see :mod:`.routing`).
* **Batched**: chunk requests that zarr issues together are answered together, so
  neighbouring byte ranges coalesce into single requests and the rest run
  concurrently. The store's I/O runs on its own threads, never on the caller's
  event loop, so it works from scripts, from Jupyter (a loop already running) and
  from ``async`` code alike, with no ``asynchronous=True``-style flags.
* **Picklable**: it pickles as its address (repository, entry, snapshot id, sites),
  so dask workers reopen the same pinned view.
* **Counted**: each chunk read is counted in the local access statistics
  (:mod:`.stats`, for the sync engine's hot-chunk policy) unless opted out.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from zarr.abc.store import (
    ByteRequest,
    OffsetByteRequest,
    RangeByteRequest,
    Store,
    SuffixByteRequest,
)
from zarr.core.buffer import Buffer, BufferPrototype

from hyperslab.config import Config, load_config, parse_size
from hyperslab.errors import BadInputError, CorruptError, HyperslabError, NotFoundError
from hyperslab.reading.access_stats import AccessStats, resolve_stats
from hyperslab.reading.chunk_tables import EagerChunks, LazyChunks, LazyRows
from hyperslab.reading.decode import ChunkDecoder, DecodedCache, decode_pool, shared_decoded_cache
from hyperslab.reading.routing import ChunkRef, Location, Router
from hyperslab.references.checksums import aligned, read_checksums_meta, unpack_checksums
from hyperslab.references.chunk_replicas import ReplicaIndex, load_replicas
from hyperslab.references.keys import (
    REFMAP_EXTENSIONS,
    chunk_pack_key,
    logical_source_id,
    source_key,
)
from hyperslab.references.refmap import ArrayRefs, RefMap, chunk_index
from hyperslab.references.refmap_objects import decode_refmap, read_object_meta
from hyperslab.references.repository import DEFAULT_BRANCH, Repository
from hyperslab.storage import FileSite, Site, open_site

if TYPE_CHECKING:
    from hyperslab.reading.chunk_cache import ChunkCache

_T = TypeVar("_T")

__all__ = ["EntryView", "HyperslabStore", "open_store"]

log = logging.getLogger(__name__)

_READ_ONLY = "store was opened in read-only mode and does not support writing"


# ----------------------------------------------------------------------- the view


def _background(fn: Callable[[], _T]) -> Future[_T]:
    """Run ``fn`` on a daemon thread; its result (or exception) arrives in the future."""
    fut: Future[_T] = Future()

    def run() -> None:
        try:
            fut.set_result(fn())
        except BaseException as exc:  # handed to whoever waits for the result
            fut.set_exception(exc)

    threading.Thread(target=run, name="hyperslab-replicas", daemon=True).start()
    return fut


@dataclass(frozen=True)
class StoreAddress:
    """Everything needed to reopen the same pinned view (what a store pickles as)."""

    repo: str
    entry: str
    snapshot: str
    sites: tuple[str, ...]
    cache: bool
    stats: bool | str = True  # False: none; a path: that statistics database
    memory_cache: bool | int = True  # decoded chunks in memory: the configured size, or bytes


class EntryView:
    """One entry of one snapshot: its reference map and where each source can be read."""

    def __init__(
        self,
        repo: Repository,
        entry: str,
        snapshot: str,
        *,
        replicas: Sequence[tuple[str, Site]] = (),
    ) -> None:
        self.repo = repo
        self.entry = entry
        self.snapshot = snapshot
        self.record = repo.entry(snapshot, entry)
        self.source_names = {s["id"]: s["name"] for s in self.record.get("sources", [])}
        # the repository itself first unless the caller ordered sites explicitly
        self.sites: list[tuple[str, Site]] = list(replicas) or [(repo.display, repo.site)]
        # which hot chunks each site holds: listed while the refmap downloads
        self._replicas: Future[dict[tuple[str, str], list[ReplicaIndex]]] | None = None
        if self.source_names:
            self._replicas = _background(self._load_replicas)
        rm = self.record.get("refmap") or {}
        fmt = rm.get("format", "json")
        if fmt not in REFMAP_EXTENSIONS:
            raise CorruptError(f"entry {entry!r} names an unknown refmap format {fmt!r}")
        data = repo.get_object("refmap", rm["id"], REFMAP_EXTENSIONS[fmt])
        sums = self.record.get("checksums")
        sums_data = (
            repo.get_object("checksums", sums["id"], ".parquet")
            if isinstance(sums, dict) and sums.get("id")
            else None
        )
        self.refmap: RefMap
        self.chunks: EagerChunks | LazyChunks
        if fmt == "parquet":
            # large maps: metadata now, rows one row group at a time when asked for
            refs = LazyRows(data, ["source", "offset", "length", "raw"])
            meta = read_object_meta(refs.metadata)
            self.refmap = RefMap.from_metadata(meta["metadata"])
            self.refmap.sources = list(meta["sources"])
            paths = list(meta["arrays"])
            lazy_sums = None
            if sums_data is not None:
                lazy_sums = LazyRows(sums_data, ["crc32c"])
                if read_checksums_meta(lazy_sums.metadata)["arrays"] != paths:
                    raise CorruptError(f"chunk checksums of entry {entry!r} list other arrays")
            self.chunks = LazyChunks(paths, refs, lazy_sums)
        else:
            self.refmap = decode_refmap(data, fmt)
            checks = (
                aligned(self.refmap, unpack_checksums(sums_data)) if sums_data is not None else {}
            )
            self.chunks = EagerChunks(self.refmap, checks)
        self.verified = sums_data is not None
        self.source_ids: list[str | None] = [logical_source_id(s) for s in self.refmap.sources]
        self._held: dict[tuple[str, str], bool] = {}
        self._lock = threading.Lock()

    def _load_replicas(self) -> dict[tuple[str, str], list[ReplicaIndex]]:
        out: dict[tuple[str, str], list[ReplicaIndex]] = {}
        for display, site in self.sites:
            try:
                found = load_replicas(site, self.source_names)
            except HyperslabError as exc:  # the site is down: its replicas cannot help now
                log.info("cannot list chunk replicas at %s: %s", display, exc.message)
                continue
            for source, indexes in found.items():
                if indexes:
                    out[(display, source)] = indexes
        return out

    def replicas(self) -> dict[tuple[str, str], list[ReplicaIndex]]:
        """``(site display, source) → replica indexes`` of hot chunks held at each site."""
        return self._replicas.result() if self._replicas is not None else {}

    def locations(self, source: str) -> list[Location]:
        """Sites that may hold ``source``, in preference order.

        No request is made here: the first range read at a site tells (a site that
        answers "no such object" is remembered as not holding it, see :meth:`absent`),
        which saves a round trip on every cold open.
        """
        name = self.source_names.get(source)
        if name is None:
            return []
        key = source_key(source, name)
        replicas = self.replicas()
        out = []
        for display, site in self.sites:
            # a site's hot-chunk packs first: they hold just the chunks, nothing else
            for index in replicas.get((display, source), ()):
                out.append(Location(site, chunk_pack_key(index.pack), display, index))
            out.append(Location(site, key, display))
        with self._lock:
            out = [loc for loc in out if self._held.get((loc.name, loc.key)) is not False]
        origin = self._origin(source)
        if origin is not None:
            out.append(origin)
        return out

    def absent(self, location: Location) -> None:
        """``location`` answered that it does not hold its object: skip it from now on."""
        with self._lock:
            self._held[(location.name, location.key)] = False

    def _origin(self, source: str) -> Location | None:
        """The file ingest read, if it is here with its recorded size: a last resort.

        Only for entries with chunk checksums: every chunk read from it is checked, so a
        file rewritten since ingest is refused chunk by chunk, never served.
        """
        if not self.verified:
            return None
        rec = next((s for s in self.record.get("sources", []) if s.get("id") == source), None)
        if rec is None or not isinstance(rec.get("origin"), str) or "://" in rec["origin"]:
            return None
        p = Path(rec["origin"])
        try:
            if not p.is_file() or p.stat().st_size != int(rec.get("size", -1)):
                return None
        except OSError:
            return None
        return Location(FileSite(p.parent, fsync=False), p.name, f"origin {p}")


# ----------------------------------------------------------------------- the store


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

    def __init__(
        self,
        view: EntryView,
        router: Router,
        address: StoreAddress | None = None,
        *,
        read_only: bool = True,
        stats: AccessStats | None = None,
        decode: bool = True,
        memory: DecodedCache | None = None,
    ) -> None:
        if not read_only:
            raise BadInputError("hyperslab stores are read-only: snapshots never change")
        super().__init__(read_only=True)
        self.view = view
        self.router = router
        self.address = address
        self.memory = memory
        self._docs = _metadata(view.refmap)
        # arrays whose chunks this store decodes itself (see .decode): served codec-free
        self._decoders: dict[str, ChunkDecoder] = {}
        for key, doc in list(self._docs.items()) if decode else ():
            if key == ".zarray" or key.endswith("/.zarray"):
                decoder = ChunkDecoder.for_array(doc)
                if decoder is not None:
                    self._decoders[key[: -len(".zarray")].rstrip("/")] = decoder
                    self._docs[key] = {**doc, "filters": None, "compressor": None}
        self._meta = {k: json.dumps(v, allow_nan=True).encode() for k, v in self._docs.items()}
        self._meta[".zmetadata"] = _consolidated(self._docs)
        self._arrays: dict[str, ArrayRefs] = view.refmap.arrays
        self._batchers: dict[asyncio.AbstractEventLoop, _Batcher] = {}
        self._block = threading.Lock()
        self.stats = stats
        repo = view.repo
        self._count = (
            stats.recorder(repo.id or repo.display, view.snapshot, view.entry, repo.display)
            if stats is not None
            else None
        )

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
        if self.stats is not None:
            self.stats.flush()
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
        path, sep, name = key.rpartition("/")
        path = path if sep else ""
        arr = self._arrays.get(path)
        if arr is None or name.startswith("."):
            return None
        try:
            lin = chunk_index(name, arr.grid, key)
        except CorruptError:
            return None
        found = self.view.chunks.find(path, lin)
        if found is None or isinstance(found, bytes):
            return found  # never written (zarr fills it) or inline bytes
        src, offset, length, crc = found
        source = self.view.source_ids[src] if 0 <= src < len(self.view.source_ids) else None
        if source is None:
            raise CorruptError(f"{key}: source #{src} is not a repository source")
        return ChunkRef(source, offset, length, checksum=crc, label=key)

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
        return self._decoders.get(key.rpartition("/")[0]) if self._decoders else None

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
        if self._count is not None:
            self._count(key)  # a chunk read: buffered in memory, never raises
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
        for path, arr in self._arrays.items():
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
        task = loop.create_task(self._run(loop, batch))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _run(
        self,
        loop: asyncio.AbstractEventLoop,
        batch: list[tuple[ChunkRef, asyncio.Future[bytes]]],
    ) -> None:
        try:
            results = await loop.run_in_executor(
                self.router._pool, self.router.fetch, [r for r, _ in batch]
            )
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


def _reopen(address: StoreAddress) -> HyperslabStore:
    return open_store(
        address.repo,
        address.entry,
        snapshot=address.snapshot,
        sites=list(address.sites) or None,
        cache=address.cache,
        stats=address.stats,
        memory_cache=address.memory_cache,
    )


def _replica_specs(repo: str, config: Config) -> list[str]:
    """``SITE:path`` → the same path at every configured site, in preference order."""
    name, colon, path = repo.partition(":")
    if not colon or "/" in name or name not in config.sites:
        return []
    order = list(config.preference) or list(config.sites)
    order += [s for s in config.sites if s not in order]
    return [f"{s}:{path}" for s in order]


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
    if sum(x is not None for x in (branch, tag, snapshot)) > 1:
        raise BadInputError("give at most one of branch=, tag= and snapshot=")
    cfg = config if config is not None else load_config()
    spec = repo if isinstance(repo, str) else None
    r = Repository.open(repo, config=cfg) if isinstance(repo, str) else repo
    if tag is not None:
        tags = r.tags()
        if tag not in tags:
            raise NotFoundError(
                f"no tag {tag!r} in {r.display} (tags: {', '.join(sorted(tags)) or 'none'})",
                tag=tag,
            )
        sid = tags[tag]
    elif snapshot is not None:
        sid = r.resolve(snapshot)
    else:
        sid = r.branch_head(branch or DEFAULT_BRANCH)[0]
    replica_specs = list(sites) if sites else (_replica_specs(spec, cfg) if spec else [])
    replicas: list[tuple[str, Site]] = []
    for s in replica_specs:
        if s == spec:
            replicas.append((r.display, r.site))
            continue
        site, display = open_site(s, cfg)
        replicas.append((display, site))
    if replicas and not any(site is r.site for _, site in replicas):
        replicas.append((r.display, r.site))
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
    memory: DecodedCache | None = None
    if isinstance(memory_cache, DecodedCache):
        memory, memory_bytes = memory_cache, memory_cache.limit
    else:
        if memory_cache is True:
            memory_bytes = cfg.cache_memory
        elif memory_cache is False:
            memory_bytes = 0
        else:
            memory_bytes = parse_size(memory_cache, where="memory_cache")
        memory = shared_decoded_cache(memory_bytes)
    _more_zarr_concurrency()
    counts = resolve_stats(stats, cfg)
    # a pickled store reopens with the same database, the default one, or none
    explicit = counts is not None and isinstance(stats, AccessStats | str)
    stats_address = str(counts.path) if counts is not None and explicit else stats is not False
    address = (
        StoreAddress(
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
    return HyperslabStore(
        view,
        router,
        address,
        stats=counts,
        decode=decode,
        memory=memory if decode else None,
    )
