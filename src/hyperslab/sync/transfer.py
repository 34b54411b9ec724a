"""Copying: every missing object read, checked against its name, uploaded and verified.

Three ways, chosen per object:

* between two S3 sites, objects up to :data:`LOOP_COPY_MAX` as coroutines on the
  shared IO loop (one GET, one Content-MD5 PUT, no thread hop per request);
* larger ones up to :data:`STREAM_COPY_MAX` piped from one GET into one PUT, completed
  only once every byte hashed right, where both sites stream;
* everything else (hot-chunk packs and catalogs, which are built; other sites;
  ``--bwlimit``) on threads, with source files over :data:`SMALL_SOURCE` streamed
  through a temporary file.

Data first, metadata last: a failure in the data phase stops before any metadata is
written.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from hyperslab.errors import CorruptError, HyperslabError, NotFoundError
from hyperslab.references.keys import (
    CHUNK_PREFIX,
    REPLICA_PREFIX,
    object_pack_key,
    split_object_key,
)
from hyperslab.references.repository import Repository
from hyperslab.storage import Site
from hyperslab.sync.packing import Packing, pack_counts, pack_ready, write_locators
from hyperslab.sync.plan import CopyItem
from hyperslab.sync.report import CHUNK_PACK, REPLICA_INDEX, Progress, SyncReport

__all__ = [
    "LOOP_COPY_MAX",
    "SMALL_SOURCE",
    "STREAM_COPY_MAX",
    "RateLimiter",
    "copy_all",
    "shared_loop",
]

log = logging.getLogger(__name__)


#: source files up to this size are copied in memory (one GET, one verified PUT)
#: rather than streamed through a temporary file
SMALL_SOURCE = 64 << 20


class RateLimiter:
    """Token bucket over bytes, shared by the copy threads (``--bwlimit``)."""

    def __init__(self, rate: int | None) -> None:
        self.rate = rate
        self._lock = threading.Lock()
        self._next = time.monotonic()

    def take(self, n: int) -> None:
        if not self.rate:
            return
        with self._lock:
            now = time.monotonic()
            start = max(now, self._next)
            self._next = start + n / self.rate
            wait = start - now
        if wait > 0:
            time.sleep(wait)


def copy_all(
    src: Repository,
    dst: Repository,
    objs: list[CopyItem],
    report: SyncReport,
    jobs: int,
    limiter: RateLimiter,
    progress: Progress | None,
    packing: Packing,
) -> None:
    lock = threading.Lock()
    tally = report.result  # counted as plan_tally counts the plan

    def done(kind: str, n: int, chunks: int = 0) -> None:
        with lock:
            tally.add(kind)
            tally.bytes = (tally.bytes or 0) + n
            tally.hot_chunks += chunks
        if progress:
            progress(kind, 1, n)

    def landed(counts: list[tuple[str, int]], packs: int, packed: int) -> None:
        with lock:
            tally.packs += packs
            tally.packed += packed
        for kind, n in counts:
            done(kind, n)

    def wrote(o: CopyItem, written: list[tuple[str, int]]) -> None:
        for key, n in written:  # a hot-chunk pack (unless there already) and its index
            if key.startswith(CHUNK_PREFIX) and o.kind == CHUNK_PACK:
                done(CHUNK_PACK, n, o.chunks)
            elif key.startswith(REPLICA_PREFIX) and o.kind == CHUNK_PACK:
                done(REPLICA_INDEX, n)
            else:
                done(o.kind, n)

    def failed(o: CopyItem, exc: HyperslabError, absent: bool = False) -> None:
        if absent:  # see _absent_source: nothing to copy, no reason to fail the sync
            with lock:
                report.sources_absent.append(o.key)
            return
        with lock:
            report.failures.append({"key": o.key, "kind": o.kind, "error": exc.message,
                                    "code": exc.code})  # fmt: skip
        log.warning("sync: %s failed: %s", o.key, exc.message)

    def one(o: CopyItem) -> None:
        try:
            if o.packer is not None:
                return landed(*_pack_one(src, dst, o, packing, limiter))
            written = _copy_one(src, dst, o, limiter)
        except HyperslabError as exc:
            return failed(o, exc, _absent_source(src, o, exc))
        wrote(o, written)

    async def fast(o: CopyItem) -> None:

        try:
            if o.packer is not None:
                return landed(*await _pack_on_loop(src, dst, o, packing))
            n = await _copy_on_loop(src, dst, o)
        except HyperslabError as exc:
            # asking the source site is a blocking request: not on the IO loop
            return failed(o, exc, await asyncio.to_thread(_absent_source, src, o, exc))
        wrote(o, [(o.key, n)])

    loop = shared_loop(src.site, dst.site) if not limiter.rate else None
    streams = loop is not None and src.site.supports_streaming and dst.site.supports_streaming

    def on_loop(o: CopyItem) -> bool:
        if o.make is not None or (o.packer is None and src.packs.location(o.key)):
            return False  # built, or read out of a source pack through the repository
        size = o.size or 0
        return size <= LOOP_COPY_MAX or (streams and size <= STREAM_COPY_MAX)

    for phase in (0, 2):
        # largest first: a big file started last would be the whole tail of the copy
        # (a stable sort: packed objects stay in pack order, so packs complete early)
        batch = sorted((o for o in objs if o.phase == phase), key=lambda o: -(o.size or 0))
        if report.failures and phase == 2:
            return  # never write metadata over missing data
        if phase == 2:
            write_locators(dst, packing, report, jobs)
            if report.failures:
                return
        if not batch:
            continue
        with ThreadPoolExecutor(min(jobs, len(batch))) as pool:
            if loop is None:
                list(pool.map(one, batch))
            else:
                from fsspec.asyn import sync as run_on

                run_on(loop, _drain, batch, jobs, on_loop, fast, one, pool)


def _absent_source(src: Repository, o: CopyItem, exc: HyperslabError) -> bool:
    """Whether ``exc`` means that source file ``o`` is not stored at the source site
    (never uploaded there; it may be at another site, which the report then says):
    readers keep using the sites that hold it. A NotFound from anywhere else, or one
    that cannot be confirmed, is a failure."""
    if o.kind != "source" or not isinstance(exc, NotFoundError):
        return False
    try:
        return not src.site.exists(o.key)
    except HyperslabError:
        return False


def _pack_one(
    src: Repository, dst: Repository, o: CopyItem, packing: Packing, limiter: RateLimiter
) -> tuple[list[tuple[str, int]], int, int]:
    """Thread twin of :func:`_pack_on_loop`."""
    data = o.data if o.data is not None else src.get_key(o.key)  # sha256-checked
    loose, ready = pack_ready(o, data)
    counts: list[tuple[str, int]] = []
    if loose:
        limiter.take(len(data))
        dst.site.put_verified(o.key, data)
        counts.append((o.kind, len(data)))
    uploaded = packed = 0
    for pid, pack, where in ready:
        key = object_pack_key(pid)
        if packing.fresh or not dst.site.exists(key):  # else a killed sync's upload
            limiter.take(len(pack))
            dst.site.put_verified(key, pack)
            counts += pack_counts(where)
            uploaded += 1
            packed += len(where)
        packing.record(where)
    return counts, uploaded, packed


async def _pack_on_loop(
    src: Repository, dst: Repository, o: CopyItem, packing: Packing
) -> tuple[list[tuple[str, int]], int, int]:
    """Read one object to pack (checked against its id); upload, verified, the packs its
    bytes complete. Returns what landed, for the report: ``((kind, bytes)…, packs
    uploaded, objects inside them)``."""

    data = o.data if o.data is not None else await _aread_checked(src, o)
    loose, ready = pack_ready(o, data)
    counts: list[tuple[str, int]] = []
    if loose:
        await dst.site.aput_verified(o.key, data)
        counts.append((o.kind, len(data)))
    uploaded = packed = 0
    for pid, pack, where in ready:
        key = object_pack_key(pid)
        if packing.fresh or not await asyncio.to_thread(dst.site.exists, key):
            await dst.site.aput_verified(key, pack)
            counts += pack_counts(where)
            uploaded += 1
            packed += len(where)
        packing.record(where)
    return counts, uploaded, packed


async def _aread_checked(src: Repository, o: CopyItem) -> bytes:
    """Object ``o``'s bytes from the source, checked against its id (or, for a source
    file, its recorded size and sha256)."""

    if src.packs.location(o.key) is not None:
        return await asyncio.to_thread(src.get_key, o.key)
    data = await src.site.aget(o.key)
    # hashing a large object would stall every other request on the loop
    digest = (
        await asyncio.to_thread(_sha256_hex, data) if len(data) > 1 << 20 else _sha256_hex(data)
    )
    if o.kind == "source":
        _check_source(src, o, len(data), digest)
    else:
        src.check_object(o.key, digest)
    return data


def shared_loop(a: Site, b: Site) -> Any:
    """The IO loop both sites' requests run on (two S3 sites), else None."""
    loop = a.io_loop
    return loop if loop is not None and loop is b.io_loop else None


#: objects up to this size are copied as coroutines on the IO loop, whole in memory;
#: larger ones up to STREAM_COPY_MAX are piped from one GET into one PUT where both
#: sites can stream (S3's single-PUT limit); the rest, hot-chunk packs and catalogs
#: (built, not copied) go through threads
LOOP_COPY_MAX = 4 << 20


STREAM_COPY_MAX = 5 << 30


async def _drain(
    batch: list[CopyItem],
    jobs: int,
    on_loop: Callable[[CopyItem], bool],
    fast: Callable[[CopyItem], Any],
    slow: Callable[[CopyItem], None],
    pool: ThreadPoolExecutor,
) -> None:
    """Copy ``batch`` with ``jobs`` workers on the IO loop: an object for which
    ``on_loop`` holds is copied by ``fast`` awaited in place (no thread hop per request,
    which is what a first sync of many small objects spends its CPU on); the rest run
    ``slow`` on ``pool``."""

    loop = asyncio.get_running_loop()
    todo = iter(batch)

    async def worker() -> None:
        for o in todo:
            if on_loop(o):
                await fast(o)
            else:
                await loop.run_in_executor(pool, slow, o)

    await asyncio.gather(*(worker() for _ in range(min(jobs, len(batch)))))


async def _copy_on_loop(src: Repository, dst: Repository, o: CopyItem) -> int:
    """:func:`_copy_one` for an object copied as is, as a coroutine on the IO loop."""
    if o.data is None and (o.size or 0) > LOOP_COPY_MAX:
        return await _stream_on_loop(src, dst, o)
    data = o.data if o.data is not None else await _aread_checked(src, o)
    await dst.site.aput_verified(o.key, data)
    return len(data)


async def _stream_on_loop(src: Repository, dst: Repository, o: CopyItem) -> int:
    """Pipe a large object from one GET into one PUT; the PUT is completed only once
    every byte hashed to what the object must be (its id, or a source's checksum)."""
    if o.kind == "source":
        assert o.sha256 is not None
        expected = o.sha256

        def check(n: int, digest: str) -> None:
            _check_source(src, o, n, digest)
    else:
        expected = split_object_key(o.key)[1]

        def check(n: int, digest: str) -> None:
            src.check_object(o.key, digest)

    async with src.site.aget_stream(o.key) as (size, blocks):
        await dst.site.aput_stream(o.key, size, blocks, expected, check)
    return int(size)


def _sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _copy_one(
    src: Repository, dst: Repository, o: CopyItem, limiter: RateLimiter
) -> list[tuple[str, int]]:
    """Copy (or build and store) ``o``; returns what was written: ``[(key, bytes)…]``."""
    if o.kind == "source":
        return [(o.key, _copy_source(src, dst, o, limiter))]
    if o.make is not None:
        items = o.make()
    elif o.data is not None:
        items = [(o.key, o.data)]
    else:
        items = [(o.key, src.get_key(o.key))]  # sha256-checked
    for key, data in items:  # in order: a pack before its index
        limiter.take(len(data))
        dst.site.put_verified(key, data)
    return [(key, len(data)) for key, data in items]


def _copy_source(src: Repository, dst: Repository, o: CopyItem, limiter: RateLimiter) -> int:
    """Stream a source file through a temporary file, hashing it; upload it; verify."""
    assert o.sha256 is not None
    if o.size is not None and o.size <= SMALL_SOURCE:
        data = src.site.get(o.key)
        limiter.take(len(data))
        _check_source(src, o, len(data), hashlib.sha256(data).hexdigest())
        dst.site.put_verified(o.key, data)
        return len(data)
    h = hashlib.sha256()
    n = 0
    fd, tmp = tempfile.mkstemp(prefix="hyperslab-sync-")
    try:
        with os.fdopen(fd, "wb") as fh:
            for block in src.site.iter_bytes(o.key):
                limiter.take(len(block))
                h.update(block)
                fh.write(block)
                n += len(block)
        _check_source(src, o, n, h.hexdigest())
        dst.site.put_file_verified(o.key, Path(tmp), o.sha256)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return n


def _check_source(src: Repository, o: CopyItem, n: int, digest: str) -> None:
    if digest != o.sha256 or (o.size is not None and n != o.size):
        raise CorruptError(
            f"source {o.key} at {src.display} is corrupt: {n} bytes hashing to "
            f"{digest[:12]}…, expected {o.size} bytes hashing to {str(o.sha256)[:12]}…",
            key=o.key,
        )
