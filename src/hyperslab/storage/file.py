"""Directory sites: ``file:///path`` or a plain path, with atomic writes and CAS."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import shutil
import threading
import uuid
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

from hyperslab.errors import (
    AccessDeniedError,
    BadInputError,
    HyperslabError,
    TransientError,
    redact,
)
from hyperslab.storage.keys import LOCK_NAME, TMP_PREFIX, join_key, validate_key, validate_prefix
from hyperslab.storage.site import ObjectInfo, Site, check_range, range_error

__all__ = ["FileSite"]


class _Mutex:
    __slots__ = ("__weakref__", "lock")

    def __init__(self) -> None:
        self.lock = threading.Lock()


# flock() is emulated with per-process POSIX locks on NFS, so threads of one process
# must also exclude each other in-process. Entries vanish when no thread holds them.
_dir_mutexes: weakref.WeakValueDictionary[str, _Mutex] = weakref.WeakValueDictionary()
_dir_mutexes_lock = threading.Lock()

_TRANSIENT_ERRNOS = {errno.ETIMEDOUT, errno.ESTALE, errno.EAGAIN, errno.EINTR, errno.EBUSY}


class FileSite(Site):
    """A directory. Writes go to a temp file in the target's directory, then ``os.replace``.

    Mutations of a directory's entries (put, CAS, delete) serialise on an ``fcntl.flock``
    of one ``.hyperslab-lock`` file per directory rather than one lock file per key:
    chunk directories hold many thousands of immutable objects and a lock file each
    would double their inode count, while the lock is held only for a rename (plus,
    for CAS, hashing the small current object). Because the lock lives next to the
    objects, sites rooted at different levels of one tree share it. ``put_if_absent``
    is a hard link of a finished temp file (atomic across processes, also on NFS).

    As with any directory tree, a key cannot be an object and a prefix of other
    objects at once (``a`` and ``a/b``); directories are not pruned on delete (the
    lock file lives in them), so ``a`` stays unusable as an object after ``a/b`` is
    deleted. Such writes raise BadInputError. hyperslab's own layout never needs both.
    """

    def __init__(self, root: Path | str, *, fsync: bool = True) -> None:
        self.root = Path(root).expanduser().absolute()
        self._fsync = fsync
        self._etag_cache: OrderedDict[tuple[str, int, int, int, int, int], str] = OrderedDict()
        self._etag_cache_lock = threading.Lock()

    @property
    def url(self) -> str:
        return redact(f"file://{self.root}")

    def _path(self, key: str) -> Path:
        return self.root.joinpath(*validate_key(key).split("/"))

    def _os_error(self, exc: OSError, key: str, op: str) -> HyperslabError:
        if isinstance(exc, FileNotFoundError | NotADirectoryError | IsADirectoryError):
            return self._not_found(key)
        if isinstance(exc, PermissionError):
            return AccessDeniedError(
                f"permission denied to {op} {key!r} at {self.url}", key=key, site=self.url
            )
        if exc.errno in _TRANSIENT_ERRNOS:
            return TransientError(
                f"cannot {op} {key!r} at {self.url}: {exc.strerror}", key=key, site=self.url
            )
        return HyperslabError(
            f"cannot {op} {key!r} at {self.url}: {exc.strerror or exc}", key=key, site=self.url
        )

    def _write_error(self, exc: OSError, key: str, op: str) -> HyperslabError:
        if isinstance(exc, NotADirectoryError | FileExistsError | IsADirectoryError):
            return BadInputError(
                f"cannot {op} {key!r} at {self.url}: a path component is an object, or the key "
                "is a directory of other objects",
                key=key,
                site=self.url,
            )
        if isinstance(exc, FileNotFoundError):
            return TransientError(
                f"cannot {op} {key!r} at {self.url}: its directory vanished", key=key, site=self.url
            )
        return self._os_error(exc, key, op)

    # ----- reads

    def get(self, key: str) -> bytes:
        path = self._path(key)
        try:
            with open(path, "rb") as f:
                return f.read()
        except OSError as exc:
            raise self._os_error(exc, key, "read") from exc

    def get_range(self, key: str, start: int, length: int) -> bytes:
        check_range(key, start, length)
        path = self._path(key)
        try:
            with open(path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                if start + length > size:
                    raise range_error(key, self.url, start, length, size)
                data = os.pread(f.fileno(), length, start)
        except OSError as exc:
            raise self._os_error(exc, key, "read") from exc
        if len(data) != length:  # the file shrank under us
            raise range_error(key, self.url, start, length, start + len(data))
        return data

    def get_with_etag(self, key: str) -> tuple[bytes, str]:
        data = self.get(key)  # one open: the etag is the sha256 of exactly these bytes
        return data, hashlib.sha256(data).hexdigest()

    def _hash_file(self, path: Path) -> str:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            while block := f.read(1 << 20):
                h.update(block)
        return h.hexdigest()

    def head(self, key: str) -> ObjectInfo:
        path = self._path(key)
        try:
            st = path.stat()
            if not path.is_file():
                raise self._not_found(key)
            # Hashing a multi-GB source on every head() would be ruinous; cache per
            # (inode, size, mtime, ctime). Our writes always make a new inode.
            ck = (str(path), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
            with self._etag_cache_lock:
                etag = self._etag_cache.get(ck)
            if etag is None:
                etag = self._hash_file(path)
                with self._etag_cache_lock:
                    self._etag_cache[ck] = etag
                    while len(self._etag_cache) > 4096:
                        self._etag_cache.popitem(last=False)
        except OSError as exc:
            raise self._os_error(exc, key, "stat") from exc
        return ObjectInfo(
            size=st.st_size, etag=etag, mtime=datetime.fromtimestamp(st.st_mtime, tz=UTC)
        )

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def list(self, prefix: str = "") -> Iterator[str]:
        validate_prefix(prefix)
        head, _, _ = prefix.rpartition("/")
        base = self.root.joinpath(*head.split("/")) if head else self.root
        found: list[str] = []
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames[:] = [d for d in dirnames if not d.startswith(TMP_PREFIX)]
            rel = os.path.relpath(dirpath, self.root)
            rel = "" if rel == "." else rel.replace(os.sep, "/")
            for name in filenames:
                if name.startswith(TMP_PREFIX) or name == LOCK_NAME:
                    continue
                key = join_key(rel, name)
                if key.startswith(prefix):
                    found.append(key)
        found.sort()
        yield from found

    # ----- writes

    @contextlib.contextmanager
    def _locked(self, directory: Path) -> Iterator[None]:
        lock_path = directory / LOCK_NAME
        with _dir_mutexes_lock:
            mutex = _dir_mutexes.get(str(lock_path))
            if mutex is None:
                mutex = _Mutex()
                _dir_mutexes[str(lock_path)] = mutex
        with mutex.lock:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                yield
            finally:
                os.close(fd)  # releases the flock

    def _write_temp(self, directory: Path, data: bytes | Path | str) -> Path:
        """A finished (flushed, fsynced) temp file holding ``data`` or a copy of that file."""
        directory.mkdir(parents=True, exist_ok=True)
        tmp = directory / f"{TMP_PREFIX}.{uuid.uuid4().hex}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            with os.fdopen(fd, "wb") as f:
                if isinstance(data, bytes):
                    f.write(data)
                else:
                    with open(data, "rb") as src:
                        shutil.copyfileobj(src, f, 8 << 20)
                f.flush()
                if self._fsync:
                    os.fsync(f.fileno())
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return tmp

    def _sync_dir(self, directory: Path) -> None:
        if not self._fsync:
            return
        try:
            fd = os.open(directory, os.O_RDONLY)
        except OSError:
            return
        try:
            os.fsync(fd)
        except OSError:
            pass  # some filesystems refuse fsync on directories; the rename is still atomic
        finally:
            os.close(fd)

    def _replace_with(self, key: str, make_temp: Callable[[Path], Path]) -> None:
        """Write a finished temp file in the key's directory, then rename it over the key."""
        path = self._path(key)
        tmp: Path | None = None
        try:
            tmp = make_temp(path.parent)
            with self._locked(path.parent):
                os.replace(tmp, path)
            tmp = None
        except OSError as exc:
            raise self._write_error(exc, key, "write") from exc
        finally:
            if tmp is not None:
                tmp.unlink(missing_ok=True)
        self._sync_dir(path.parent)

    def put(self, key: str, data: bytes) -> None:
        self._replace_with(key, lambda directory: self._write_temp(directory, data))

    def put_file(self, key: str, path: Path | str) -> None:
        self._replace_with(key, lambda directory: self._write_temp(directory, Path(path)))

    def iter_bytes(self, key: str, block_size: int = 8 << 20) -> Iterator[bytes]:
        try:
            f = open(self._path(key), "rb")  # noqa: SIM115 - closed below, generator
        except OSError as exc:
            raise self._os_error(exc, key, "read") from exc
        with f:
            while block := f.read(block_size):
                yield block

    def _current_etag(self, path: Path) -> str | None:
        try:
            if path.is_dir():
                return None
            return self._hash_file(path)
        except FileNotFoundError:
            return None

    def put_if_match(self, key: str, data: bytes, expected_etag: str | None) -> str:
        path = self._path(key)
        new_etag = hashlib.sha256(data).hexdigest()
        tmp: Path | None = None
        try:
            tmp = self._write_temp(path.parent, data)
            if expected_etag is None:
                self._link_exclusive(tmp, path, key)
            else:
                with self._locked(path.parent):
                    actual = self._current_etag(path)
                    if actual != expected_etag:
                        raise self._conflict(key, expected_etag, actual, "conditional write of")
                    os.replace(tmp, path)
                    tmp = None
        except OSError as exc:
            raise self._write_error(exc, key, "write") from exc
        finally:
            if tmp is not None:
                tmp.unlink(missing_ok=True)
        self._sync_dir(path.parent)
        return new_etag

    def _link_exclusive(self, tmp: Path, path: Path, key: str) -> None:
        try:
            os.link(tmp, path)
            return
        except FileExistsError:
            raise self._conflict(key, None, self._current_etag(path), "create") from None
        except OSError as exc:
            if exc.errno not in {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK}:
                raise
        # No hard links on this filesystem: check-and-rename under the directory lock.
        with self._locked(path.parent):
            if os.path.lexists(path):
                raise self._conflict(key, None, self._current_etag(path), "create")
            os.replace(tmp, path)

    def delete(self, key: str) -> None:
        path = self._path(key)
        try:
            if not path.parent.is_dir():
                return
            with self._locked(path.parent):
                path.unlink(missing_ok=True)
        except (IsADirectoryError, NotADirectoryError):
            return  # not an object: nothing to delete
        except OSError as exc:
            raise self._os_error(exc, key, "delete") from exc
