"""Access statistics: which chunks this machine read, how often, on which days.

The sync engine's "hot by use" policy asks: which chunks of a repository were read
at least K times in the last D days? This module records the answer locally, on
the machine that reads, and nowhere else.

What is recorded: one count per chunk that a store *returned data for* (each zarr
chunk ``get``, whether the bytes came from the local cache, were inlined in the
reference map or were fetched from a site), per UTC day, under the repository id,
snapshot id, entry name, array path and chunk name. Metadata reads, chunks zarr
asks for that were never written (fill value) and failed reads are not counted.
No file paths, site URLs, credentials or data are recorded, except the
repository's display name (its redacted URL or path) so that listings can say
which repository an id is.

Where: ``<cache dir>/access-stats.sqlite`` beside the chunk cache (``hyperslab
cache --help`` says where the cache dir is), or the ``path`` given. Opt out with
``HYPERSLAB_ACCESS_STATS=0`` (also ``false``/``no``/``off``), or per store with
``open_store(..., stats=False)``.

Schema (SQLite, ``PRAGMA user_version`` 1)::

    repos  (id TEXT PRIMARY KEY, display TEXT)
    arrays (id INTEGER PRIMARY KEY, repo, snapshot, entry, path,
            UNIQUE (repo, entry, path, snapshot))
    reads  (array -> arrays.id, chunk TEXT e.g. "3.0.0", day INTEGER (UTC days since
            1970-01-01), count INTEGER, PRIMARY KEY (array, chunk, day))

A per-day count makes "read >= K times in the last D days" exact; first and last
read days are ``MIN(day)`` and ``MAX(day)``.

Cost on the read path: a recorder (:meth:`AccessStats.recorder`) adds one to an
in-memory counter under a lock (1-3 µs a read, measured) and never touches SQLite.
A background thread writes the counts in one transaction every ``flush_every``
reads or ``flush_seconds`` seconds, and :meth:`AccessStats.flush` runs at store
close and at interpreter exit (also in multiprocessing's forked workers, which skip
``atexit``). Many processes share one database safely (WAL mode, ``BEGIN
IMMEDIATE``, busy timeout); counts add up, never overwrite. A forked child starts
with an empty buffer (its parent flushes its own counts).

Recording never breaks a read: a database that is locked for longer than the busy
timeout, on a full disk, read-only or damaged makes :meth:`flush` warn once
(:class:`StatsWarning`) and drop that batch of counts; :meth:`summary` counts the
drops.
"""

from __future__ import annotations

import atexit
import datetime as dt
import functools
import os
import sqlite3
import sys
import threading
import time
import warnings
import weakref
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from hyperslab.config import Config, load_config
from hyperslab.errors import BadInputError, ConfigError, CorruptError
from hyperslab.reading.local_db import LocalDatabase, in_transaction, reason

__all__ = [
    "ENV_VAR",
    "STATS_FILE",
    "AccessStats",
    "ChunkReads",
    "RepoStats",
    "StatsSummary",
    "StatsWarning",
    "resolve_stats",
    "shared_stats",
    "stats_enabled",
]

ENV_VAR = "HYPERSLAB_ACCESS_STATS"
STATS_FILE = "access-stats.sqlite"  # below Config.cache_dir
_OFF = frozenset({"0", "false", "no", "off"})
_ON = frozenset({"", "1", "true", "yes", "on"})
_SCHEMA_VERSION = 1
_DAY = 86400
_FLUSH_EVERY = 4096
_FLUSH_SECONDS = 5.0
_BUSY_TIMEOUT_S = 5.0


_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS repos (id TEXT PRIMARY KEY, display TEXT NOT NULL) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS arrays ("
    " id INTEGER PRIMARY KEY, repo TEXT NOT NULL, snapshot TEXT NOT NULL,"
    " entry TEXT NOT NULL, path TEXT NOT NULL, UNIQUE (repo, entry, path, snapshot))",
    "CREATE TABLE IF NOT EXISTS reads ("
    " array INTEGER NOT NULL, chunk TEXT NOT NULL, day INTEGER NOT NULL,"
    " count INTEGER NOT NULL, PRIMARY KEY (array, chunk, day)) WITHOUT ROWID",
    "CREATE INDEX IF NOT EXISTS reads_day ON reads (day)",
)
_ADD_READS = (
    "INSERT INTO reads (array, chunk, day, count) VALUES (?, ?, ?, ?) "
    "ON CONFLICT (array, chunk, day) DO UPDATE SET count = count + excluded.count"
)

# (repository id, snapshot id, entry, repository display name)
_View = tuple[str, str, str, str]
# (index of the view in AccessStats._views, Zarr key, day) -> reads
_Pending = dict[tuple[int, str, int], int]


class StatsWarning(RuntimeWarning):
    """Access statistics could not be written (locked, full, read-only or damaged
    database); reads carry on and those counts are dropped."""


class ChunkReads(NamedTuple):
    """One chunk and how often it was read (in the window asked for)."""

    entry: str
    array: str
    key: str  # the Zarr key, e.g. "entry/data/data/3.0.0"
    reads: int


@dataclass(frozen=True)
class RepoStats:
    """What the database holds for one repository."""

    repo: str
    display: str
    entries: int
    chunks: int  # distinct (entry, array, chunk), over every snapshot
    reads: int
    first_day: str  # ISO date (UTC) of the first and last recorded read
    last_day: str


@dataclass(frozen=True)
class StatsSummary:
    """The database's totals (all processes) and this process's counters."""

    path: Path
    enabled: bool  # whether HYPERSLAB_ACCESS_STATS lets stores record by default
    reads: int
    chunks: int
    repositories: list[RepoStats] = field(default_factory=list)
    recorded: int = 0  # this process: chunk reads counted
    flushed: int = 0  # ... written to the database
    pending: int = 0  # ... still in memory
    dropped: int = 0  # ... lost to write errors
    write_errors: int = 0
    last_error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            **self.__dict__,
            "path": str(self.path),
            "repositories": [r.__dict__ for r in self.repositories],
        }


def stats_enabled(env: Mapping[str, str] = os.environ) -> bool:
    """False when ``HYPERSLAB_ACCESS_STATS`` opts out (0/false/no/off)."""
    value = env.get(ENV_VAR, "").strip().lower()
    if value in _OFF:
        return False
    if value in _ON:
        return True
    raise ConfigError(f"{ENV_VAR}={value!r}: use 0 to turn access statistics off, 1 for on")


def _iso(day: int | None) -> str:
    return "" if day is None else (dt.date(1970, 1, 1) + dt.timedelta(days=day)).isoformat()


class AccessStats:
    """Per-chunk read counts in a small SQLite database shared by every process here.

    ``path``: the database file (default ``<cache dir>/access-stats.sqlite``, the
    cache dir from :func:`hyperslab.config.load_config`). ``clock`` gives the time
    in seconds since the epoch (days are UTC days); tests inject their own.
    Creating one touches nothing on disk: the file appears with the first flush.
    Stores opened with the default ``stats=None`` share one instance per path
    (:func:`shared_stats`).
    """

    def __init__(
        self,
        path: Path | str | None = None,
        *,
        flush_every: int = _FLUSH_EVERY,
        flush_seconds: float = _FLUSH_SECONDS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if path is None:
            path = load_config().cache_dir / STATS_FILE
        self.path = Path(path).expanduser()
        self.flush_every = max(1, int(flush_every))
        self.flush_seconds = float(flush_seconds)
        self.clock = clock
        self._views: list[_View] = []  # what recorders count for, by index
        self._view_ids: dict[_View, int] = {}
        self._db = LocalDatabase(
            self.path,
            what="access statistics",
            schema=_SCHEMA,
            version=_SCHEMA_VERSION,
            busy_timeout=_BUSY_TIMEOUT_S,
            clear_hint="run `hyperslab stats clear`",
        )
        self._init_process_state()
        self._recorded = self._flushed = self._dropped = self._write_errors = 0
        self._last_error: str | None = None
        self._warned = False
        _LIVE.add(self)

    def _init_process_state(self) -> None:
        # _db.lock guards the connection, _lock the buffer and counters; _db.lock first.
        self._lock = threading.Lock()
        self._pending: _Pending = {}
        self._n_pending = 0
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def after_fork(self) -> None:
        """In a forked child: the parent flushes what it buffered; start empty."""
        self._db.after_fork()
        self._init_process_state()

    def __repr__(self) -> str:
        return f"AccessStats({str(self.path)!r})"

    # ------------------------------------------------------------------ recording
    def recorder(
        self, repo: str, snapshot: str, entry: str, display: str = ""
    ) -> Callable[[str], None]:
        """``record(key)``: count one read of chunk ``key`` (a Zarr key, e.g.
        ``entry/data/data/3.0.0``) of ``entry`` at ``snapshot`` of repository ``repo``
        (an id; ``display`` names it in listings). It never raises."""
        view = (repo, snapshot, entry, display or repo)
        with self._lock:
            vid = self._view_ids.get(view)
            if vid is None:
                vid = self._view_ids[view] = len(self._views)
                self._views.append(view)
        return functools.partial(self._record, vid)

    def _record(self, vid: int, key: str) -> None:
        try:
            k = (vid, key, int(self.clock() // _DAY))
            with self._lock:
                self._pending[k] = self._pending.get(k, 0) + 1
                self._n_pending += 1
                self._recorded += 1
                if self._thread is None:
                    thread = threading.Thread(target=self._run, name="hyperslab-stats", daemon=True)
                    thread.start()
                    self._thread = thread
                elif self._n_pending >= self.flush_every:
                    self._wake.set()
        except Exception:  # pragma: no cover - a counter must never break a read
            pass

    def _run(self) -> None:
        """Background writer: flush every ``flush_seconds`` (or when woken); stop when idle."""
        while True:
            self._wake.wait(self.flush_seconds)
            self._wake.clear()
            self.flush()
            with self._lock:
                if not self._pending:
                    self._thread = None
                    return

    def flush(self) -> int:
        """Write the buffered counts in one transaction; returns how many reads it wrote.
        Never raises: a failure warns once and drops the batch."""
        with self._db.lock:
            with self._lock:
                pending, self._pending = self._pending, {}
                self._n_pending = 0
            if not pending:
                return 0
            n = sum(pending.values())
            try:
                conn = self._db.connection(create=True)
                views = list(self._views)
                if conn is not None:  # always, when creating
                    in_transaction(conn, lambda c: self._add(c, pending, views))
            except Exception as exc:
                self._failed(exc, n)
                return 0
        with self._lock:
            self._flushed += n
        return n

    @staticmethod
    def _add(conn: sqlite3.Connection, pending: _Pending, views: list[_View]) -> None:
        ids: dict[tuple[int, str], int] = {}
        rows = []
        for (vid, key, day), n in pending.items():
            array, _, chunk = key.rpartition("/")
            aid = ids.get((vid, array))
            if aid is None:
                repo, snapshot, entry, display = views[vid]
                conn.execute(
                    "INSERT INTO repos (id, display) VALUES (?, ?) "
                    "ON CONFLICT (id) DO UPDATE SET display = excluded.display",
                    (repo, display),
                )
                args = (repo, snapshot, entry, array)
                conn.execute(
                    "INSERT OR IGNORE INTO arrays (repo, snapshot, entry, path) VALUES (?,?,?,?)",
                    args,
                )
                aid = conn.execute(
                    "SELECT id FROM arrays WHERE repo = ? AND snapshot = ? AND entry = ? "
                    "AND path = ?",
                    args,
                ).fetchone()[0]
                ids[(vid, array)] = aid
            rows.append((aid, chunk, day, n))
        conn.executemany(_ADD_READS, rows)

    def _failed(self, exc: BaseException, n: int) -> None:
        why = reason(exc)
        with self._lock:
            self._dropped += n
            self._write_errors += 1
            self._last_error = why
            first, self._warned = not self._warned, True
        if first:
            with suppress(Exception):  # a warnings filter set to "error" must not escape
                warnings.warn(
                    f"access statistics {self.path} cannot be written ({why}); reads "
                    f"carry on without them. Fix the file or its directory, run `hyperslab "
                    f"stats clear`, or set {ENV_VAR}=0",
                    StatsWarning,
                    stacklevel=2,
                )

    # ------------------------------------------------------------------ the database
    @contextmanager
    def _reading(self) -> Iterator[sqlite3.Connection | None]:
        """A connection for queries, after flushing this process's counts (None: no file)."""
        self.flush()
        with self._db.lock:
            try:
                yield self._db.connection(create=False)
            except sqlite3.Error as exc:
                raise self._db.error(exc) from exc

    def _today(self) -> int:
        return int(self.clock() // _DAY)

    # ------------------------------------------------------------------ queries
    def hot_chunks(
        self,
        repo_id: str,
        *,
        entry_glob: str = "*",
        array_glob: str = "*",
        min_reads: int = 1,
        days: int | None = None,
        snapshot: str | None = None,
        limit: int | None = None,
    ) -> list[ChunkReads]:
        """Chunks of repository ``repo_id`` read at least ``min_reads`` times in the last
        ``days`` UTC days (today included; None: ever), most read first.

        Reads of the same entry, array and chunk under different snapshots add up
        unless ``snapshot`` picks one. ``entry_glob`` and ``array_glob`` are
        case-sensitive shell patterns (``*``, ``?``, ``[...]``; ``*`` also matches ``/``).
        """
        if min_reads < 1:
            raise BadInputError(f"min_reads must be at least 1, got {min_reads}")
        if days is not None and days < 1:
            raise BadInputError(f"days must be at least 1, got {days}")
        sql = (
            "SELECT a.entry, a.path, r.chunk, SUM(r.count) AS n "
            "FROM arrays a JOIN reads r ON r.array = a.id "
            "WHERE a.repo = ? AND a.entry GLOB ? AND a.path GLOB ?"
        )
        args: list[Any] = [repo_id, entry_glob, array_glob]
        if snapshot is not None:
            sql += " AND a.snapshot = ?"
            args.append(snapshot)
        if days is not None:
            sql += " AND r.day > ?"
            args.append(self._today() - days)
        sql += " GROUP BY a.entry, a.path, r.chunk HAVING n >= ? ORDER BY n DESC, 1, 2, 3"
        args.append(min_reads)
        if limit is not None:
            sql += " LIMIT ?"
            args.append(max(0, limit))
        with self._reading() as conn:
            rows = conn.execute(sql, args).fetchall() if conn is not None else []
        return [ChunkReads(e, p, f"{p}/{c}" if p else c, n) for e, p, c, n in rows]

    def repositories(self) -> dict[str, str]:
        """``{repository id: display name}`` of every repository with recorded reads."""
        with self._reading() as conn:
            rows = []
            if conn is not None:
                rows = conn.execute("SELECT id, display FROM repos").fetchall()
        return dict(rows)

    def summary(self) -> StatsSummary:
        """Totals per repository (all processes) and this process's counters."""
        repos: list[RepoStats] = []
        with self._reading() as conn:
            if conn is not None:
                rows = conn.execute(
                    "SELECT c.repo, COALESCE(p.display, c.repo), COUNT(DISTINCT c.entry),"
                    " COUNT(*), SUM(c.n), MIN(c.first), MAX(c.last) FROM"
                    " (SELECT a.repo, a.entry, SUM(r.count) AS n, MIN(r.day) AS first,"
                    "  MAX(r.day) AS last FROM arrays a JOIN reads r ON r.array = a.id"
                    "  GROUP BY a.repo, a.entry, a.path, r.chunk) c"
                    " LEFT JOIN repos p ON p.id = c.repo GROUP BY c.repo ORDER BY 5 DESC, 1"
                ).fetchall()
                repos = [
                    RepoStats(r, d, e, c, n, _iso(first), _iso(last))
                    for r, d, e, c, n, first, last in rows
                ]
        try:
            enabled = stats_enabled()
        except ConfigError:
            enabled = True
        with self._lock:
            return StatsSummary(
                path=self.path,
                enabled=enabled,
                reads=sum(r.reads for r in repos),
                chunks=sum(r.chunks for r in repos),
                repositories=repos,
                recorded=self._recorded,
                flushed=self._flushed,
                pending=self._n_pending,
                dropped=self._dropped,
                write_errors=self._write_errors,
                last_error=self._last_error,
            )

    # ------------------------------------------------------------------ maintenance
    def clear(self, *, older_than: int | None = None) -> int:
        """Forget recorded reads (all processes'): all of them, or with ``older_than=D``
        those before the last D days. Returns how many reads were forgotten. A damaged
        database is deleted and started afresh."""
        if older_than is not None and older_than < 1:
            raise BadInputError(f"older_than must be at least 1 day, got {older_than}")
        if older_than is None:
            with self._lock:
                self._pending.clear()
                self._n_pending = 0
        cut = self._today() - older_than if older_than is not None else None

        def forget(conn: sqlite3.Connection) -> int:
            where, args = ("WHERE day <= ?", (cut,)) if cut is not None else ("", ())
            n = conn.execute(f"SELECT COALESCE(SUM(count), 0) FROM reads {where}", args)
            conn.execute(f"DELETE FROM reads {where}", args)
            conn.execute(
                "DELETE FROM arrays WHERE NOT EXISTS (SELECT 1 FROM reads WHERE array = arrays.id)"
            )
            conn.execute(
                "DELETE FROM repos WHERE NOT EXISTS (SELECT 1 FROM arrays WHERE repo = repos.id)"
            )
            return int(n.fetchone()[0])

        try:
            with self._reading() as conn:
                return in_transaction(conn, forget) if conn is not None else 0
        except CorruptError:
            if older_than is not None:
                raise
            self._db.discard()
            return 0

    def close(self) -> None:
        """Flush and close the database connection (the object stays usable)."""
        self.flush()
        self._db.close()


# ---------------------------------------------------------------------- process-wide

_LIVE: weakref.WeakSet[AccessStats] = weakref.WeakSet()
_SHARED: dict[Path, AccessStats] = {}
_SHARED_LOCK = threading.Lock()


def _flush_all() -> None:
    for stats in list(_LIVE):
        stats.flush()


def _before_fork() -> None:
    # multiprocessing's forked workers leave through os._exit(), skipping atexit: have
    # them flush with multiprocessing's own exit finalizers instead.
    global _MP_HOOKED
    mp_util = sys.modules.get("multiprocessing.util")
    if mp_util is not None and not _MP_HOOKED:
        _MP_HOOKED = True
        mp_util.register_after_fork(_flush_all, _flush_at_worker_exit)


def _flush_at_worker_exit(_: object) -> None:
    from multiprocessing import util

    util.Finalize(None, _flush_all, exitpriority=0)


def _after_fork_in_child() -> None:
    global _SHARED_LOCK
    _SHARED_LOCK = threading.Lock()
    for stats in list(_LIVE):
        stats.after_fork()


_MP_HOOKED = False
atexit.register(_flush_all)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_before_fork, after_in_child=_after_fork_in_child)


def shared_stats(path: Path | str | None = None, config: Config | None = None) -> AccessStats:
    """The one :class:`AccessStats` of this process for ``path`` (default: the one in
    ``config``'s cache dir), so that every store buffers into the same counters."""
    if path is None:
        path = (config if config is not None else load_config()).cache_dir / STATS_FILE
    key = Path(path).expanduser()
    with _SHARED_LOCK:
        stats = _SHARED.get(key)
        if stats is None:
            stats = _SHARED[key] = AccessStats(key)
        return stats


def resolve_stats(
    stats: bool | str | Path | AccessStats | None, config: Config | None = None
) -> AccessStats | None:
    """What ``open_store(stats=...)`` means: an :class:`AccessStats` or a database path
    as given; False: none; None or True: the shared default unless
    ``HYPERSLAB_ACCESS_STATS`` opts out."""
    if isinstance(stats, AccessStats):
        return stats
    if isinstance(stats, str | Path):
        return shared_stats(stats)
    if stats is False or not stats_enabled():
        return None
    return shared_stats(config=config)
