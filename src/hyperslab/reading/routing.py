"""Per-chunk routing: local cache → the most preferred healthy site holding the bytes → the next.

A chunk is a byte range of an immutable, content-addressed source (``sha256`` of the
whole HDF5 file), so any site holding that source serves it, and the local cache
can key it by ``<sha256>/<offset>/<length>`` without ever going stale.

:meth:`Router.fetch` takes a batch of chunk references (what zarr asks for at once)
and, per source:

1. answers what it can from the cache;
2. *coalesces* the rest: ranges closer than ``max_gap`` bytes become one request,
   capped at ``max_request`` bytes so a large read still runs as several concurrent
   requests;
3. asks the first healthy site holding the source, all ranges at once (S3 sites run
   them concurrently); a site that fails (down, timeout, denied, missing object,
   short read, checksum mismatch) is marked unhealthy with exponential backoff and
   the ranges it did not deliver go to the next site;
4. fills the cache.

A chunk no site can deliver gets :class:`ChunkUnavailableError` naming the chunk and
every site tried with its error (or :class:`AccessDeniedError` when every site
refused the credentials). Errors never carry credentials: they are built from site
URLs, which sites redact.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

from google_crc32c import value as _crc32c

from hyperslab.errors import AccessDeniedError, HyperslabError, NotFoundError, TransientError
from hyperslab.references.chunk_replicas import ReplicaIndex
from hyperslab.storage import Site

__all__ = [
    "ChunkRef",
    "ChunkUnavailableError",
    "Location",
    "Router",
    "SiteHealth",
    "coalesce",
]

log = logging.getLogger(__name__)

#: ranges this close are fetched as one request (a request costs about as much as
#: ~0.5 MB on loopback S3; we stay well below so bytes moved stay near bytes needed)
DEFAULT_MAX_GAP = 16 << 10
#: a coalesced request never grows beyond this, so big reads stay parallel
DEFAULT_MAX_REQUEST = 8 << 20


class ChunkUnavailableError(HyperslabError):
    """No site could deliver a chunk (each site tried is named with its error)."""

    code = "chunk_unavailable"
    exit_status = TransientError.exit_status


class ByteCache(Protocol):
    """What the router needs of a cache (:class:`~.chunk_cache.ChunkCache` is one)."""

    def get_many(self, keys: Iterable[str]) -> dict[str, bytes]: ...

    def put_many(self, items: Iterable[tuple[str, bytes]]) -> None: ...


@dataclass(frozen=True, eq=False)
class Location:
    """One place the bytes of a source can be read: ``key`` at ``site``.

    With ``replica``, ``key`` is a pack of hot chunks (``chunks/<sha256>``) holding only
    the source ranges its index lists, at other offsets; chunks it does not hold go on
    to the next location at no cost.
    """

    site: Site
    key: str
    name: str  # the site's display name (redacted URL or configured name)
    replica: ReplicaIndex | None = None


@dataclass(frozen=True)
class ChunkRef:
    """The encoded bytes of one chunk: a range of a content-addressed source."""

    source: str  # sha256 of the source file
    offset: int
    length: int
    checksum: int | None = None  # crc32c of the bytes, when recorded at ingest
    label: str = ""  # for messages: the Zarr key

    @property
    def cache_key(self) -> str:
        return f"{self.source}/{self.offset}/{self.length}"


@dataclass
class SiteHealth:
    """Consecutive failures of one site and when to try it again (exponential backoff)."""

    failures: int = 0
    down_until: float = 0.0
    last_error: str = ""
    base: float = 1.0
    cap: float = 60.0

    def ok(self) -> None:
        self.failures = 0
        self.down_until = 0.0

    def failed(self, error: str, now: float | None = None) -> None:
        self.failures += 1
        self.last_error = error
        delay = min(self.cap, self.base * 2 ** (self.failures - 1))
        self.down_until = (time.monotonic() if now is None else now) + delay

    def up(self, now: float | None = None) -> bool:
        return (time.monotonic() if now is None else now) >= self.down_until


def coalesce(
    ranges: Sequence[tuple[int, int]], max_gap: int, max_request: int
) -> list[tuple[int, int, list[int]]]:
    """Merge ``(offset, length)`` ranges into ``(start, length, members)`` requests.

    ``members`` index into ``ranges``. Ranges overlapping or within ``max_gap`` of
    each other merge while the request stays within ``max_request`` bytes.
    """
    order = sorted(range(len(ranges)), key=lambda i: ranges[i][0])
    out: list[tuple[int, int, list[int]]] = []
    for i in order:
        off, n = ranges[i]
        if out:
            start, length, members = out[-1]
            end = start + length
            new_end = max(end, off + n)
            if off - end <= max_gap and new_end - start <= max_request:
                out[-1] = (start, new_end - start, [*members, i])
                continue
        out.append((off, n, [i]))
    return out


@dataclass
class _Attempt:
    site: str
    error: str
    denied: bool = False
    absent: bool = False  # the site answered that it does not hold the object


@dataclass
class FetchStats:
    """What this router moved (for benchmarks and ``--json`` reports)."""

    requests: int = 0
    bytes_fetched: int = 0
    bytes_needed: int = 0
    cache_hits: int = 0
    fallbacks: int = 0
    by_site: dict[str, int] = field(default_factory=dict)


class Router:
    """Fetch chunk bytes for many :class:`ChunkRef` at once (thread-safe)."""

    def __init__(
        self,
        locations: Callable[[str], Sequence[Location]],
        *,
        cache: ByteCache | None = None,
        max_gap: int = DEFAULT_MAX_GAP,
        max_request: int = DEFAULT_MAX_REQUEST,
        workers: int = 8,
        on_absent: Callable[[Location], None] | None = None,
    ) -> None:
        self._locations = locations
        self._on_absent = on_absent
        self.cache = cache
        self.max_gap = max_gap
        self.max_request = max_request
        self.health: dict[str, SiteHealth] = {}
        self.stats = FetchStats()
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="hyperslab-fetch")

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    async def afetch(self, refs: Sequence[ChunkRef]) -> list[bytes | BaseException]:
        """:meth:`fetch` awaited from an event loop: it runs on the router's own threads,
        never on the caller's loop."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self.fetch, refs)

    def _health(self, site: str) -> SiteHealth:
        with self._lock:
            return self.health.setdefault(site, SiteHealth())

    # ------------------------------------------------------------------ fetch
    def fetch(self, refs: Sequence[ChunkRef]) -> list[bytes | BaseException]:
        """Bytes of each ref, in order; a ref no site delivers gets its exception instead."""
        out: list[bytes | BaseException | None] = [None] * len(refs)
        todo: dict[str, list[int]] = {}
        cached = self.cache.get_many([r.cache_key for r in refs]) if self.cache is not None else {}
        for i, ref in enumerate(refs):
            data = cached.get(ref.cache_key)
            if data is not None:
                out[i] = data
                with self._lock:
                    self.stats.cache_hits += 1
            else:
                todo.setdefault(ref.source, []).append(i)
        groups = list(todo.values())
        if len(groups) == 1:
            self._fetch_source(refs, groups[0], out)
        elif groups:
            list(self._pool.map(lambda g: self._fetch_source(refs, g, out), groups))
        return [x if x is not None else ChunkUnavailableError("internal: no result") for x in out]

    def _fetch_source(
        self, refs: Sequence[ChunkRef], idx: list[int], out: list[bytes | BaseException | None]
    ) -> None:
        source = refs[idx[0]].source
        locations = list(self._locations(source))
        # healthy sites in preference order, then the ones backing off (last resort)
        now = time.monotonic()
        ordered = [loc for loc in locations if self._health(loc.name).up(now)]
        ordered += [loc for loc in locations if loc not in ordered]
        attempts: list[_Attempt] = []
        pending = list(idx)
        failed: set[str] = set()  # sites that failed in this call go to the back of the queue
        queue = list(ordered)
        tried_any = False
        while queue and pending:
            loc = queue.pop(0)
            if loc.name in failed and any(q.name not in failed for q in queue):
                queue.append(loc)
                continue
            if tried_any and loc.replica is None:
                with self._lock:
                    self.stats.fallbacks += 1
            before = len(attempts)
            pending = self._from_location(loc, refs, pending, out, attempts)
            tried_any = tried_any or loc.replica is None or len(attempts) > before
            if len(attempts) > before and not attempts[-1].absent:
                failed.add(loc.name)
        for i in pending:
            out[i] = self._unavailable(refs[i], attempts, locations)

    def _from_location(
        self,
        loc: Location,
        refs: Sequence[ChunkRef],
        idx: list[int],
        out: list[bytes | BaseException | None],
        attempts: list[_Attempt],
    ) -> list[int]:
        """Fetch ``idx`` from one site; returns the indices it did not deliver."""
        skipped: list[int] = []
        crcs: list[int | None] = [refs[i].checksum for i in idx]
        if loc.replica is None:
            starts = [refs[i].offset for i in idx]
        else:  # a pack: only the chunks its index lists, at their places in the pack
            held, starts, crcs = [], [], []
            for i in idx:
                found = loc.replica.find(refs[i].offset, refs[i].length)
                if found is None:
                    skipped.append(i)
                else:
                    held.append(i)
                    starts.append(found[0])
                    # the ingest checksum when there is one, else the one taken at copy time
                    crcs.append(refs[i].checksum if refs[i].checksum is not None else found[1])
            if not held:
                return idx
            idx = held
        requests = coalesce(
            [(at, refs[i].length) for at, i in zip(starts, idx, strict=True)],
            self.max_gap,
            self.max_request,
        )
        health = self._health(loc.name)
        try:
            blobs = loc.site.get_ranges([(loc.key, start, n) for start, n, _ in requests])
        except NotFoundError as exc:
            # the site is fine, it just does not hold this object: no penalty, remember it
            attempts.append(_Attempt(loc.name, exc.message, absent=True))
            if self._on_absent is not None:
                self._on_absent(loc)
            return idx + skipped
        except HyperslabError as exc:
            health.failed(exc.message)
            attempts.append(_Attempt(loc.name, exc.message, isinstance(exc, AccessDeniedError)))
            log.info("site %s failed for %s: %s", loc.name, loc.key, exc.message)
            return idx + skipped
        left: list[int] = list(skipped)
        bad: list[str] = []
        fresh: list[tuple[str, bytes]] = []
        fetched = 0
        for (start, _n, members), blob in zip(requests, blobs, strict=True):
            fetched += len(blob)
            for m in members:
                i = idx[m]
                ref = refs[i]
                lo = starts[m] - start
                data = bytes(blob[lo : lo + ref.length])
                if len(data) != ref.length:
                    bad.append(f"{ref.label or ref.cache_key}: short read ({len(data)} bytes)")
                    left.append(i)
                    continue
                if crcs[m] is not None and _crc32c(data) != crcs[m]:
                    bad.append(f"{ref.label or ref.cache_key}: checksum mismatch")
                    left.append(i)
                    continue
                out[i] = data
                fresh.append((ref.cache_key, data))
        if fresh and self.cache is not None:
            self.cache.put_many(fresh)  # one index transaction for the whole batch
        with self._lock:
            self.stats.requests += len(requests)
            self.stats.bytes_fetched += fetched
            self.stats.bytes_needed += sum(refs[i].length for i in idx)
            self.stats.by_site[loc.name] = self.stats.by_site.get(loc.name, 0) + fetched
        if bad:
            msg = f"{len(bad)} chunk(s) failed verification ({bad[0]})"
            health.failed(msg)
            attempts.append(_Attempt(loc.name, msg))
            log.warning("site %s served bad bytes for %s: %s", loc.name, loc.key, msg)
        else:
            health.ok()
        return left

    @staticmethod
    def _unavailable(
        ref: ChunkRef, attempts: list[_Attempt], locations: Sequence[Location]
    ) -> HyperslabError:
        what = ref.label or ref.cache_key
        if not locations:
            return ChunkUnavailableError(
                f"chunk {what}: no known site holds source {ref.source[:12]}… "
                "(upload it with `ingest --upload-sources` or sync it to a site you can read)",
                chunk=what,
                source=ref.source,
                sites=[],
            )
        tried = "; ".join(f"{a.site}: {a.error}" for a in attempts)
        details: dict[str, Any] = {
            "chunk": what,
            "source": ref.source,
            "sites": [a.site for a in attempts],
        }
        if attempts and all(a.denied for a in attempts):
            return AccessDeniedError(
                f"chunk {what}: access denied at every site ({tried}); check credentials",
                **details,
            )
        return ChunkUnavailableError(
            f"chunk {what}: no site could deliver it; tried {tried}", **details
        )
