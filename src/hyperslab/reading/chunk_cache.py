"""The bounded local chunk cache: bytes of immutable content on local disk, LRU-evicted.

Keys name immutable content (``"<source sha256>/<offset>/<length>"``,
``"sha256:<hex>"``): the bytes under a key never change, so the cache is coherent by
construction and never needs invalidating. Keys are hashed (BLAKE2b, 160 bits) into
file names; a key is never used as a path.

Layout under the cache directory (default ``<user cache dir>/hyperslab/chunks``, see
:meth:`ChunkCache.__init__`)::

    index.sqlite            name -> size, last access (WAL mode); running totals
    data/<ab>/<ab...40 hex> one file per entry: 16-byte header + the bytes

The file system holds the bytes; the SQLite index holds sizes and recency. Each file
starts with ``b"HSC1"``, the CRC32C of the data and its length, and a read checks
both: a truncated, corrupted or half-written file (a crash, a power cut, a stray
writer) is a miss and is deleted, never returned as data.

Concurrency (threads and processes on one machine; the directory must be on a local
file system, since SQLite's WAL needs shared memory that NFS does not give):

- ``put`` writes a temporary file beside its final name, then, inside one SQLite
  write transaction (``BEGIN IMMEDIATE``: one writer at a time, busy timeout 30 s),
  renames it into place, records it and evicts least-recently-used entries until the
  indexed bytes are within the limit. Renames and evictions are therefore serialised,
  so the index and the files agree, and after every ``put`` the indexed bytes (files
  including their headers) are ``<= max_bytes``.
- ``get`` never touches SQLite: it opens the file, reads and checks it. A file evicted
  or replaced by another process meanwhile is either read whole (an open file survives
  its unlink, and a rename swaps whole files) or not found: a miss, never torn bytes.
- A hit's recency is kept in memory and written in batches (every 1024 hits or 1 s, and
  before every ``put``/eviction), so a hit costs microseconds, not a transaction.

Bounded overshoot: the bytes on disk can exceed ``max_bytes`` by the temporary files
of ``put`` calls in flight (at most the sum of their sizes), file system block
rounding, the index itself (about 100 bytes an entry), and files orphaned by a process
killed between its rename and its commit (a window of microseconds). :meth:`reconcile`
adopts such orphans and removes temporary files older than an hour; it runs by itself
when the index is created over an existing data directory.

The cache never breaks a read: ``put`` on a full disk or a read-only directory warns
once (:class:`CacheWarning`), pauses disk writes for 30 s and carries on uncached;
``get`` treats every read failure as a miss. :meth:`info` makes the failures visible.

An optional in-memory LRU layer (``memory_bytes``) sits in front of the disk.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import struct
import threading
import time
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import google_crc32c

from hyperslab.config import Config, load_config, parse_size
from hyperslab.errors import CorruptError, HyperslabError
from hyperslab.reading.local_db import LocalDatabase, in_transaction
from hyperslab.reading.local_db import reason as local_reason

__all__ = ["CHUNKS_SUBDIR", "HEADER_SIZE", "CacheInfo", "CacheWarning", "ChunkCache"]

CHUNKS_SUBDIR = "chunks"  # below Config.cache_dir
_MAGIC = b"HSC1"
_HEADER = struct.Struct("<4sIQ")  # magic, CRC32C of the data, length of the data
HEADER_SIZE = _HEADER.size
_SCHEMA_VERSION = 1
_INDEX = "index.sqlite"
_DATA = "data"
_TMP_PREFIX = ".tmp-"
_NAME_CHARS = frozenset("0123456789abcdef")
_NAME_LEN = 40
_STALE_TMP_NS = 3600 * 10**9
_FLUSH_EVERY = 1024
_FLUSH_SECONDS = 1.0
_MAX_PENDING = 1 << 16
_WRITE_PAUSE_SECONDS = 30.0
_BUSY_TIMEOUT_S = 30.0
_FLUSH_BUSY_MS = 100  # a hit that happens to flush waits at most this long for the lock
_EVICT_BATCH = 256
_MAX_ENTRY = 1 << 30  # larger entries are not cached (one os.read must return them whole)
_O_RDONLY = os.O_RDONLY | getattr(os, "O_BINARY", 0)

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS entries ("
    " name TEXT PRIMARY KEY, size INTEGER NOT NULL, atime INTEGER NOT NULL) WITHOUT ROWID",
    "CREATE INDEX IF NOT EXISTS entries_atime ON entries (atime)",
    "CREATE TABLE IF NOT EXISTS stats ("
    " id INTEGER PRIMARY KEY CHECK (id = 0), entries INTEGER NOT NULL, bytes INTEGER NOT NULL)",
    "INSERT OR IGNORE INTO stats VALUES (0, 0, 0)",
    # Totals follow the rows by construction, whatever statement changes them.
    "CREATE TRIGGER IF NOT EXISTS entries_ins AFTER INSERT ON entries BEGIN"
    " UPDATE stats SET entries = entries + 1, bytes = bytes + NEW.size; END",
    "CREATE TRIGGER IF NOT EXISTS entries_del AFTER DELETE ON entries BEGIN"
    " UPDATE stats SET entries = entries - 1, bytes = bytes - OLD.size; END",
    "CREATE TRIGGER IF NOT EXISTS entries_upd AFTER UPDATE OF size ON entries BEGIN"
    " UPDATE stats SET bytes = bytes - OLD.size + NEW.size; END",
)
_UPSERT = (
    "INSERT INTO entries (name, size, atime) VALUES (?, ?, ?) "
    "ON CONFLICT (name) DO UPDATE SET size = excluded.size, atime = excluded.atime"
)

T = TypeVar("T")
Buffer = bytes | bytearray | memoryview


class CacheWarning(RuntimeWarning):
    """The cache could not store data (full disk, read-only directory, locked index).

    Reads carry on uncached; :meth:`ChunkCache.info` counts the failures."""


@dataclass(frozen=True)
class CacheInfo:
    """What a cache holds (all processes) and what this process did with it."""

    path: Path
    entries: int  # on disk, from the index
    bytes: int  # on disk, files including their 16-byte headers
    limit: int
    memory_entries: int
    memory_bytes: int
    memory_limit: int
    hits: int  # this process, memory and disk
    memory_hits: int
    misses: int
    puts: int
    evictions: int  # entries this process evicted
    corrupt: int  # files this process found damaged and dropped
    write_errors: int
    last_error: str | None

    def to_json(self) -> dict[str, Any]:
        return {**self.__dict__, "path": str(self.path)}


def _name(key: str) -> str:
    if not isinstance(key, str):
        raise TypeError(f"cache keys are str, not {type(key).__name__}")
    return hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=20).hexdigest()


def _is_name(entry: str) -> bool:
    return len(entry) == _NAME_LEN and _NAME_CHARS.issuperset(entry)


class ChunkCache:
    """A bounded, process-safe disk cache of immutable bytes, with an optional memory layer.

    ``path`` is the cache directory itself; ``max_bytes`` the disk limit. Either left as
    None comes from :func:`hyperslab.config.load_config`: ``<cache dir>/chunks`` (cache
    dir: ``$HYPERSLAB_CACHE_DIR``, ``[cache] dir`` in ``hyperslab.toml``, else the
    platform's user cache dir, honouring ``$XDG_CACHE_HOME``) and
    ``$HYPERSLAB_CACHE_SIZE`` / ``[cache] size`` (default 20 GB). A size that does not
    parse is a :class:`~hyperslab.errors.ConfigError`. ``memory_bytes`` > 0 keeps the
    most recently used entries in this process's memory too.

    Creating a cache touches nothing on disk; the directory and index appear on the
    first ``put``.
    """

    def __init__(
        self,
        path: Path | str | None = None,
        max_bytes: int | None = None,
        memory_bytes: int = 0,
    ) -> None:
        if path is None or max_bytes is None:
            config = load_config()
            if path is None:
                path = config.cache_dir / CHUNKS_SUBDIR
            if max_bytes is None:
                max_bytes = config.cache_size
        self.path = Path(path).expanduser()
        self.max_bytes = parse_size(max_bytes, where="chunk cache size")
        self.memory_limit = parse_size(memory_bytes, where="chunk cache memory size")
        self._data = str(self.path / _DATA)
        self._db = LocalDatabase(
            self.path / _INDEX,
            what="chunk cache index",
            schema=_SCHEMA,
            version=_SCHEMA_VERSION,
            busy_timeout=_BUSY_TIMEOUT_S,
            clear_hint="run `hyperslab cache clear`",
            after_create=self._adopt_existing,
            owned=True,  # a fixed name inside the cache directory
        )
        # _db.lock guards the connection; _lock guards everything else. Order: _db.lock
        # before _lock, never the other way.
        self._lock = threading.Lock()
        self._memory: OrderedDict[str, bytes] = OrderedDict()
        self._memory_used = 0
        self._pending: dict[str, int] = {}  # name -> last access (ns), not yet in the index
        self._last_flush = time.monotonic()
        self._write_paused_until = 0.0
        self._warned = False
        self._hits = self._memory_hits = self._misses = self._puts = 0
        self._evictions = self._corrupt = self._write_errors = 0
        self._last_error: str | None = None

    @classmethod
    def from_config(cls, config: Config, *, memory_bytes: int = 0) -> ChunkCache:
        """The cache a loaded configuration describes."""
        return cls(config.cache_dir / CHUNKS_SUBDIR, config.cache_size, memory_bytes)

    def __repr__(self) -> str:
        return f"ChunkCache({str(self.path)!r}, max_bytes={self.max_bytes})"

    def __enter__(self) -> ChunkCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ reads
    def get(self, key: str) -> bytes | None:
        """The bytes stored under ``key``, or None (never stale, torn or corrupt bytes)."""
        name = _name(key)
        if self.memory_limit:
            with self._lock:
                data = self._memory.get(name)
                if data is not None:
                    self._memory.move_to_end(name)
                    self._hits += 1
                    self._memory_hits += 1
                    self._pending[name] = time.time_ns()
            if data is not None:
                self._maybe_flush()
                return data
        data = self._read(name)
        with self._lock:
            if data is None:
                self._misses += 1
                return None
            self._hits += 1
            self._pending[name] = time.time_ns()
            if self.memory_limit:
                self._remember(name, data)
        self._maybe_flush()
        return data

    def get_many(self, keys: Iterable[str]) -> dict[str, bytes]:
        """``{key: bytes}`` for the keys that are cached; the others are left out."""
        found: dict[str, bytes] = {}
        for key in keys:
            data = self.get(key)
            if data is not None:
                found[key] = data
        return found

    def contains(self, key: str) -> bool:
        """Whether ``key`` is cached now (a later ``get`` may still miss: eviction, damage)."""
        name = _name(key)
        with self._lock:
            if name in self._memory:
                return True
        return os.path.exists(self._file(name))

    __contains__ = contains

    def _file(self, name: str) -> str:
        return f"{self._data}{os.sep}{name[:2]}{os.sep}{name}"

    def _read(self, name: str) -> bytes | None:
        path = self._file(name)
        try:
            fd = os.open(path, _O_RDONLY)
        except OSError:  # not there (never stored, evicted meanwhile), unreadable: a miss
            return None
        try:
            head = os.read(fd, HEADER_SIZE)
            if len(head) == HEADER_SIZE:
                magic, crc, length = _HEADER.unpack(head)
                if magic == _MAGIC and length <= _MAX_ENTRY:
                    data = os.read(fd, length + 1)  # one byte more: a longer file is damaged
                    if len(data) == length and google_crc32c.value(data) == crc:
                        return data
            inode = os.fstat(fd).st_ino
        except OSError:
            return None
        finally:
            os.close(fd)
        self._drop_damaged(name, path, inode)
        return None

    def _drop_damaged(self, name: str, path: str, inode: int) -> None:
        with self._lock:
            self._corrupt += 1

        def drop(conn: sqlite3.Connection | None) -> None:
            # Another process may have put a good copy since we read: keep that one.
            with suppress(OSError):
                if os.stat(path).st_ino == inode:
                    os.unlink(path)
                    if conn is not None:
                        conn.execute("DELETE FROM entries WHERE name = ?", (name,))

        try:
            self._transaction(drop, create=False)
        except (OSError, sqlite3.Error, HyperslabError):
            drop(None)

    # ------------------------------------------------------------------ writes
    def put(self, key: str, data: Buffer) -> None:
        """Store ``data`` under ``key``. Never raises for disk trouble: warns once instead.

        Entries larger than the whole limit (or 1 GiB) are not stored on disk. Storing a
        key that is already on disk only refreshes its recency (its bytes cannot differ).
        """
        self.put_many(((key, data),))

    def put_many(self, items: Mapping[str, Buffer] | Iterable[tuple[str, Buffer]]) -> None:
        """Store several entries with one index transaction (faster than one ``put`` each)."""
        pairs = items.items() if isinstance(items, Mapping) else items
        staged: list[tuple[str, str, str, int]] = []  # temp file, final path, name, size
        try:
            for key, data in pairs:
                name = _name(key)
                blob = bytes(data)
                with self._lock:
                    self._puts += 1
                    if self.memory_limit:
                        self._remember(name, blob)
                size = HEADER_SIZE + len(blob)
                if (
                    size > min(self.max_bytes, _MAX_ENTRY)
                    or time.monotonic() < self._write_paused_until
                ):
                    continue
                path = self._file(name)
                if os.path.exists(path):
                    with self._lock:
                        self._pending[name] = time.time_ns()
                    continue
                staged.append((self._write_temp(name, blob), path, name, size))
            if staged:
                self._transaction(lambda conn: self._commit(conn, staged))
        except (OSError, sqlite3.Error, HyperslabError) as exc:
            self._write_failed(exc)
        finally:
            for tmp, *_ in staged:
                with suppress(OSError):
                    os.unlink(tmp)  # still there only if its commit did not happen

    def _write_temp(self, name: str, blob: bytes) -> str:
        shard = f"{self._data}{os.sep}{name[:2]}"
        tmp = f"{shard}{os.sep}{_TMP_PREFIX}{os.getpid()}-{os.urandom(6).hex()}"
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
        try:
            fd = os.open(tmp, flags, 0o644)
        except FileNotFoundError:
            os.makedirs(shard, exist_ok=True)
            fd = os.open(tmp, flags, 0o644)
        # No fsync: after a power cut the header's length and CRC catch what was lost.
        try:
            with open(fd, "wb", buffering=0) as f:
                for part in (_HEADER.pack(_MAGIC, google_crc32c.value(blob), len(blob)), blob):
                    view = memoryview(part)
                    while view:
                        view = view[f.write(view) :]
        except BaseException:
            with suppress(OSError):
                os.unlink(tmp)
            raise
        return tmp

    def _commit(
        self, conn: sqlite3.Connection | None, staged: list[tuple[str, str, str, int]]
    ) -> None:
        if conn is None:
            raise HyperslabError("no cache index")
        self._flush(conn)
        renamed: list[str] = []
        try:
            now = time.time_ns()
            for tmp, path, name, size in staged:
                os.replace(tmp, path)
                renamed.append(path)
                conn.execute(_UPSERT, (name, size, now))
            self._evict(conn, self.max_bytes)
        except BaseException:
            for path in renamed:  # the transaction rolls back: leave no unindexed file
                with suppress(OSError):
                    os.unlink(path)
            raise

    def _write_failed(self, exc: BaseException) -> None:
        reason = local_reason(exc)
        with self._lock:
            self._write_errors += 1
            self._last_error = reason
            self._write_paused_until = time.monotonic() + _WRITE_PAUSE_SECONDS
            first, self._warned = not self._warned, True
        if first:
            warnings.warn(
                f"chunk cache {self.path} cannot store data ({reason}); reading on without "
                "caching. Free some space, fix the directory's permissions, or point "
                "HYPERSLAB_CACHE_DIR elsewhere",
                CacheWarning,
                stacklevel=3,
            )

    def _remember(self, name: str, blob: bytes) -> None:
        """Put ``blob`` in the memory layer (caller holds ``_lock``)."""
        if len(blob) > self.memory_limit:
            return
        old = self._memory.pop(name, None)
        if old is not None:
            self._memory_used -= len(old)
        self._memory[name] = blob
        self._memory_used += len(blob)
        while self._memory_used > self.memory_limit:
            _, evicted = self._memory.popitem(last=False)
            self._memory_used -= len(evicted)

    # ------------------------------------------------------------------ the index
    def _adopt_existing(self, conn: sqlite3.Connection) -> None:
        """A new index over old data (the index was deleted): adopt what is there."""
        if os.path.isdir(self._data):
            self._reconcile(conn)

    def _transaction(
        self, fn: Callable[[sqlite3.Connection | None], T], *, create: bool = True
    ) -> T:
        return self._db.transaction(fn, create=create)

    def _flush(self, conn: sqlite3.Connection) -> None:
        """Write the recency of recent hits (inside a write transaction)."""
        with self._lock:
            pending, self._pending = self._pending, {}
            self._last_flush = time.monotonic()
        if pending:
            conn.executemany(
                "UPDATE entries SET atime = ? WHERE name = ? AND atime < ?",
                [(t, n, t) for n, t in pending.items()],
            )

    def _maybe_flush(self) -> None:
        """Flush recency now and then; never block a read for long."""
        if (
            len(self._pending) < _FLUSH_EVERY
            and time.monotonic() - self._last_flush < _FLUSH_SECONDS
        ):
            return
        if not self._db.lock.acquire(blocking=False):
            return  # another thread is writing; it flushes
        try:
            conn = self._db.connection(create=False)
            if conn is None:
                with self._lock:
                    self._pending.clear()  # nothing indexed yet: no recency to keep
                    self._last_flush = time.monotonic()
                return
            conn.execute(f"PRAGMA busy_timeout = {_FLUSH_BUSY_MS}")
            try:
                in_transaction(conn, self._flush)
            finally:
                conn.execute(f"PRAGMA busy_timeout = {int(_BUSY_TIMEOUT_S * 1000)}")
        except (OSError, sqlite3.Error, HyperslabError):
            with self._lock:
                self._last_flush = time.monotonic()
                if len(self._pending) > _MAX_PENDING:
                    self._pending.clear()
        finally:
            self._db.lock.release()

    def _evict(self, conn: sqlite3.Connection, limit: int) -> int:
        """Delete least-recently-used entries until the index holds ``<= limit`` bytes."""
        total = conn.execute("SELECT bytes FROM stats").fetchone()[0]
        evicted = 0
        while total > limit:
            rows = conn.execute(
                "SELECT name, size FROM entries ORDER BY atime LIMIT ?", (_EVICT_BATCH,)
            ).fetchall()
            if not rows:
                break
            victims = []
            for name, size in rows:
                if total <= limit:
                    break
                victims.append(name)
                total -= size
            conn.executemany("DELETE FROM entries WHERE name = ?", [(n,) for n in victims])
            for name in victims:
                with suppress(FileNotFoundError):
                    os.unlink(self._file(name))
            evicted += len(victims)
        with self._lock:
            self._evictions += evicted
        return evicted

    # ------------------------------------------------------------------ maintenance
    def info(self) -> CacheInfo:
        """Totals of the cache on disk and this process's counters."""
        entries = size = 0
        with self._db.lock:
            conn = self._db.connection(create=False)
            if conn is not None:
                try:
                    entries, size = conn.execute("SELECT entries, bytes FROM stats").fetchone()
                except sqlite3.Error as exc:
                    raise self._db.error(exc) from exc
        with self._lock:
            return CacheInfo(
                path=self.path,
                entries=entries,
                bytes=size,
                limit=self.max_bytes,
                memory_entries=len(self._memory),
                memory_bytes=self._memory_used,
                memory_limit=self.memory_limit,
                hits=self._hits,
                memory_hits=self._memory_hits,
                misses=self._misses,
                puts=self._puts,
                evictions=self._evictions,
                corrupt=self._corrupt,
                write_errors=self._write_errors,
                last_error=self._last_error,
            )

    def evict_to(self, limit: int) -> int:
        """Evict least-recently-used entries until the disk holds ``<= limit`` bytes;
        returns how many were evicted."""
        limit = parse_size(limit, where="evict_to limit")

        def evict(conn: sqlite3.Connection | None) -> int:
            if conn is None:
                return 0
            self._flush(conn)
            return self._evict(conn, limit)

        return self._transaction(evict, create=False)

    def clear(self) -> int:
        """Remove every entry (all processes' entries, and this process's memory layer);
        returns how many entries the index held."""
        with self._lock:
            self._memory.clear()
            self._memory_used = 0
            self._pending.clear()

        def batch(conn: sqlite3.Connection | None) -> int:
            if conn is None:
                return 0
            names = [r[0] for r in conn.execute("SELECT name FROM entries LIMIT 1000")]
            conn.executemany("DELETE FROM entries WHERE name = ?", [(n,) for n in names])
            for name in names:
                with suppress(FileNotFoundError):
                    os.unlink(self._file(name))
            return len(names)

        def rest(conn: sqlite3.Connection | None) -> int:
            # Entries put since the batches, files the index never knew (orphans), and
            # stale temporary files (live ones belong to puts in flight elsewhere).
            n = conn.execute("DELETE FROM entries").rowcount if conn is not None else 0
            now = time.time_ns()
            for shard, entry in self._files():
                path = os.path.join(shard, entry)
                with suppress(FileNotFoundError):
                    if _is_name(entry) or (
                        entry.startswith(_TMP_PREFIX)
                        and now - os.stat(path).st_mtime_ns > _STALE_TMP_NS
                    ):
                        os.unlink(path)
            return n

        removed = 0
        try:
            # Small transactions first, so that other processes' puts are not held up long.
            while n := self._transaction(batch, create=False):
                removed += n
        except CorruptError:
            # A damaged index cannot be trusted or repaired: start afresh.
            self._db.discard()
        return removed + self._transaction(rest, create=False)

    def reconcile(self) -> dict[str, int]:
        """Make the index agree with the files: adopt unindexed files (as least recently
        used), forget entries whose file is gone, delete temporary files older than an
        hour, then evict to the limit."""
        result = self._transaction(self._reconcile, create=False)
        return result or {"adopted": 0, "forgotten": 0, "temp_removed": 0, "evicted": 0}

    def _reconcile(self, conn: sqlite3.Connection | None) -> dict[str, int]:
        counts = {"adopted": 0, "forgotten": 0, "temp_removed": 0, "evicted": 0}
        if conn is None:
            return counts
        now = time.time_ns()
        on_disk: set[str] = set()
        for shard, entry in self._files():
            path = os.path.join(shard, entry)
            try:
                st = os.stat(path)
            except FileNotFoundError:
                continue
            if entry.startswith(_TMP_PREFIX):
                if now - st.st_mtime_ns > _STALE_TMP_NS:
                    with suppress(FileNotFoundError):
                        os.unlink(path)
                    counts["temp_removed"] += 1
            elif _is_name(entry) and entry[:2] == os.path.basename(shard):
                on_disk.add(entry)
                cur = conn.execute(
                    "INSERT OR IGNORE INTO entries (name, size, atime) VALUES (?, ?, ?)",
                    (entry, st.st_size, st.st_mtime_ns),
                )
                counts["adopted"] += cur.rowcount
        gone = [(n,) for (n,) in conn.execute("SELECT name FROM entries") if n not in on_disk]
        conn.executemany("DELETE FROM entries WHERE name = ?", gone)
        counts["forgotten"] = len(gone)
        counts["evicted"] = self._evict(conn, self.max_bytes)
        return counts

    def _files(self) -> Iterator[tuple[str, str]]:
        """(shard directory, file name) of every file in the two-hex-digit shards."""
        try:
            shards = os.listdir(self._data)
        except OSError:
            return
        for shard in shards:
            if len(shard) != 2 or not _NAME_CHARS.issuperset(shard):
                continue
            d = os.path.join(self._data, shard)
            with suppress(OSError):
                for entry in os.listdir(d):
                    yield d, entry

    def close(self) -> None:
        """Write pending recency and close the index (the cache stays usable)."""
        if self._pending:

            def flush(conn: sqlite3.Connection | None) -> None:
                if conn is not None:
                    self._flush(conn)

            with suppress(OSError, sqlite3.Error, HyperslabError):
                self._transaction(flush, create=False)
        self._db.close()
