"""A small SQLite database on local disk, shared safely by every process of the machine.

The chunk cache's index and the access statistics are both one of these: WAL
journal (readers never wait for the writer), ``synchronous=NORMAL`` (a crash loses
at most the last transactions, never the database), a busy timeout, one writer at a
time (``BEGIN IMMEDIATE``), and a schema version in ``PRAGMA user_version``, created
by whichever process comes first. Each process opens its own connection; one
inherited through ``fork()`` is never used, nor closed (closing it would release the
parent's locks), in the child.

Failures become named errors: a read-only or unreadable file is access denied, a
database locked past the timeout is transient, a damaged one is corrupt (with the
command that starts afresh).
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Callable, Sequence
from contextlib import suppress
from pathlib import Path
from typing import TypeVar

from hyperslab.errors import (
    AccessDeniedError,
    BadInputError,
    CorruptError,
    FormatVersionError,
    HyperslabError,
    TransientError,
    local_path_error,
)

__all__ = ["LocalDatabase", "in_transaction", "reason"]

T = TypeVar("T")

#: the first bytes of every SQLite 3 database file
SQLITE_HEADER = b"SQLite format 3\x00"

# connections this process inherited from its parent through fork(): kept referenced,
# so that garbage collection never closes them (closing would drop the parent's locks)
_INHERITED: list[sqlite3.Connection] = []


def in_transaction(conn: sqlite3.Connection, fn: Callable[[sqlite3.Connection], T]) -> T:
    """``fn(conn)`` inside ``BEGIN IMMEDIATE`` … ``COMMIT`` (one writer at a time), rolled
    back if it raises."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        result = fn(conn)
        conn.execute("COMMIT")
    except BaseException:
        with suppress(sqlite3.Error):
            conn.execute("ROLLBACK")
        raise
    return result


def reason(exc: BaseException) -> str:
    """A short human reason for a failure (``No space left on device``, …)."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    if isinstance(exc, HyperslabError):
        return exc.message
    return str(exc) or type(exc).__name__


class LocalDatabase:
    """The database at ``path``, described as ``what`` in messages.

    ``schema``: the statements that create it, run once, in one transaction, by the
    first process; ``after_create(conn)`` then runs in a transaction of its own.
    ``clear_hint``: what a user does about a damaged or too new database. ``owned``:
    the file is hyperslab's own (a fixed name in a directory it manages), so
    :meth:`discard` deletes it whatever it holds; otherwise a file that is not a SQLite
    database at all is taken for a wrong path and kept.
    Callers hold :attr:`lock` around :meth:`connection` and the statements they run
    on it (:meth:`transaction` takes it itself).
    """

    def __init__(
        self,
        path: Path,
        *,
        what: str,
        schema: Sequence[str],
        version: int,
        busy_timeout: float,
        clear_hint: str,
        after_create: Callable[[sqlite3.Connection], object] | None = None,
        owned: bool = False,
    ) -> None:
        self.path = path
        self.what = what
        self.schema = tuple(schema)
        self.version = version
        self.busy_timeout = busy_timeout
        self.clear_hint = clear_hint
        self.after_create = after_create
        self.owned = owned
        self.lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._pid = os.getpid()

    def __repr__(self) -> str:
        return f"LocalDatabase({str(self.path)!r})"

    def error(self, exc: sqlite3.Error) -> HyperslabError:
        """The named error for ``exc`` (denied, busy, corrupt or other)."""
        text = str(exc).lower()
        message = f"{self.what} {self.path}: {exc}"
        if "readonly" in text or "unable to open" in text or "permission" in text:
            return AccessDeniedError(message)
        if "locked" in text or "busy" in text:
            return TransientError(message)
        if "malformed" in text or "not a database" in text:
            return CorruptError(f"{message}; {self.clear_hint} to start afresh")
        return HyperslabError(message)

    def connection(self, create: bool) -> sqlite3.Connection | None:
        """This process's connection (the caller holds :attr:`lock`); None if there is no
        database and ``create`` is false."""
        pid = os.getpid()
        if self._conn is not None:
            if self._pid == pid:
                return self._conn
            _INHERITED.append(self._conn)  # a parent's: never use it, never close it
            self._conn = None
        if not create and not self.path.exists():
            return None
        try:
            if create:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(
                str(self.path),
                timeout=self.busy_timeout,
                isolation_level=None,
                check_same_thread=False,
            )
        except sqlite3.Error as exc:
            raise self.error(exc) from exc
        try:
            if conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")  # no fsync per commit
            found = conn.execute("PRAGMA user_version").fetchone()[0]
            if found == 0:
                self._create(conn)
            elif found != self.version:
                raise FormatVersionError(
                    f"{self.what} {self.path} has format {found}; this hyperslab reads format "
                    f"{self.version}. Upgrade, or {self.clear_hint}",
                    found=found,
                    expected=self.version,
                )
        except sqlite3.Error as exc:
            conn.close()
            raise self.error(exc) from exc
        except BaseException:
            conn.close()
            raise
        self._conn, self._pid = conn, pid
        return conn

    def _create(self, conn: sqlite3.Connection) -> None:
        def create(c: sqlite3.Connection) -> bool:
            if c.execute("PRAGMA user_version").fetchone()[0] != 0:
                return False  # another process created it meanwhile
            for statement in self.schema:
                c.execute(statement)
            c.execute(f"PRAGMA user_version = {self.version}")
            return True

        if in_transaction(conn, create) and self.after_create is not None:
            in_transaction(conn, self.after_create)

    def transaction(
        self, fn: Callable[[sqlite3.Connection | None], T], *, create: bool = True
    ) -> T:
        """``fn`` in one write transaction (other writers wait); ``fn(None)`` when there is
        no database and ``create`` is false."""
        with self.lock:
            conn = self.connection(create)
            if conn is None:
                return fn(None)
            try:
                return in_transaction(conn, fn)
            except sqlite3.Error as exc:
                raise self.error(exc) from exc

    def after_fork(self) -> None:
        """In a forked child: a fresh lock (another thread of the parent may have held
        it), and the parent's connection put aside, never used or closed here."""
        self.lock = threading.Lock()
        if self._conn is not None and self._pid != os.getpid():
            _INHERITED.append(self._conn)
            self._conn = None

    def discard(self) -> None:
        """Close the connection and delete the database with its WAL and shared memory
        (a damaged database cannot be trusted or repaired). Unless the file is
        :attr:`owned`, one that is not a SQLite database at all (a path given by mistake)
        is refused, never deleted."""
        with self.lock:
            try:
                with open(self.path, "rb") as fh:
                    head = fh.read(len(SQLITE_HEADER))
            except FileNotFoundError:
                head = b""
            except OSError as exc:
                raise local_path_error(exc, self.path, "check") from exc
            if head and head != SQLITE_HEADER and not self.owned:
                raise BadInputError(
                    f"{self.path} is not a SQLite database, so not a {self.what}: "
                    "not deleting it (is the path right?)",
                    path=str(self.path),
                )
            self._close()
            for suffix in ("", "-wal", "-shm"):
                with suppress(FileNotFoundError):
                    os.unlink(f"{self.path}{suffix}")

    def close(self) -> None:
        """Close this process's connection (the next use opens a new one)."""
        with self.lock:
            self._close()

    def _close(self) -> None:
        if self._conn is not None:
            if self._pid == os.getpid():
                with suppress(sqlite3.Error):
                    self._conn.close()
            else:
                _INHERITED.append(self._conn)
        self._conn = None
