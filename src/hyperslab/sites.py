"""Sites: one small synchronous object-store interface over local files, memory and S3.

A :class:`Site` is rooted at a prefix; keys are ``/``-separated paths relative to
that root, validated on every call (:func:`validate_key`). Every backend passes
the same contract suite (``tests/test_sites.py``):

* ``put`` is atomic: readers see the old or the new whole object, never a part.
* ``put_if_absent`` / ``put_if_match`` are compare-and-swap writes; losers get
  :class:`~hyperslab.errors.ConflictError` with ``expected``/``actual`` details.
* ``etag`` is an opaque content token, only meaningful for ``put_if_match`` on the
  same site (sha256 hex for file and memory sites, the S3 ETag for S3).
* ``get_range(key, start, length)`` is strict: the range must lie inside the object
  (a short object means the caller's offsets are stale; it is never padded or cut).
* ``list(prefix)`` yields keys (string-prefix match, recursive, sorted).
* Missing objects raise NotFoundError; ``delete`` of a missing key is a no-op.

Not every S3-compatible server honours conditional writes (s3rver ignores them);
:func:`probe_cas` finds out by trying, and :attr:`S3Site.supports_cas` uses it.

Names beginning with ``.hyperslab-tmp`` and the name ``.hyperslab-lock`` are
reserved for the file backend's temporary and lock files and are refused as keys
on every site, so a key that works on one site works on all of them.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import errno
import fcntl
import hashlib
import logging
import os
import re
import shutil
import threading
import uuid
import weakref
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self, TypeVar
from urllib.parse import unquote, urlsplit

from hyperslab.errors import (
    AccessDeniedError,
    BadInputError,
    ConfigError,
    ConflictError,
    CorruptError,
    HyperslabError,
    NotFoundError,
    TransientError,
    UnsafeNameError,
    redact,
)

if TYPE_CHECKING:
    from hyperslab.config import Config, SiteConfig

__all__ = [
    "FileSite",
    "MemorySite",
    "ObjectInfo",
    "S3Site",
    "Site",
    "forget_memory_site",
    "open_site",
    "probe_cas",
    "site_from_config",
    "validate_key",
    "validate_prefix",
]

log = logging.getLogger(__name__)

_T = TypeVar("_T")

TMP_PREFIX = ".hyperslab-tmp"
LOCK_NAME = ".hyperslab-lock"
PROBE_PREFIX = ".hyperslab-probe"
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


# --------------------------------------------------------------------------- keys


def _check_segments(text: str, what: str, segments: Sequence[str]) -> None:
    for seg in segments:
        if seg in ("", ".", ".."):
            raise UnsafeNameError(
                f"unsafe {what} {text!r}: empty, '.' and '..' path segments are not allowed",
                key=text,
            )
        if seg.startswith(TMP_PREFIX) or seg == LOCK_NAME:
            raise UnsafeNameError(f"unsafe {what} {text!r}: {seg!r} is a reserved name", key=text)


def validate_key(key: str, *, what: str = "key") -> str:
    """Return ``key`` if it is a safe relative ``/``-separated path; UnsafeNameError otherwise."""
    if not isinstance(key, str):
        raise UnsafeNameError(f"{what} must be a string, got {type(key).__name__}")
    if not key:
        raise UnsafeNameError(f"{what} must not be empty")
    if _CONTROL.search(key):
        raise UnsafeNameError(f"unsafe {what} {key!r}: control characters are not allowed", key=key)
    if "\\" in key:
        raise UnsafeNameError(f"unsafe {what} {key!r}: backslashes are not allowed", key=key)
    if key.startswith("/"):
        raise UnsafeNameError(f"unsafe {what} {key!r}: must be relative (no leading '/')", key=key)
    _check_segments(key, what, key.split("/"))
    return key


def validate_prefix(prefix: str) -> str:
    """Like :func:`validate_key`, but ``""`` and a trailing ``/`` are allowed."""
    if prefix == "":
        return prefix
    validate_key(prefix.removesuffix("/"), what="prefix")
    return prefix


def _join(prefix: str, key: str) -> str:
    return f"{prefix}/{key}" if prefix else key


def _check_range(key: str, start: int, length: int) -> None:
    if start < 0 or length < 0:
        raise BadInputError(
            f"bad byte range for {key!r}: start={start}, length={length} (both must be >= 0)",
            key=key,
            start=start,
            length=length,
        )


def _range_error(key: str, url: str, start: int, length: int, size: int) -> BadInputError:
    return BadInputError(
        f"byte range [{start}, {start + length}) of {key!r} at {url} lies beyond the end of "
        f"the object ({size} bytes)",
        key=key,
        site=url,
        start=start,
        length=length,
        size=size,
    )


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------- interface


@dataclass(frozen=True)
class ObjectInfo:
    size: int
    etag: str
    mtime: datetime


class Site(ABC):
    """A synchronous object store rooted at a prefix (cf. zarr-python 3's ``Store``)."""

    @property
    @abstractmethod
    def url(self) -> str:
        """Display form of the root (credentials redacted)."""

    @property
    def supports_cas(self) -> bool:
        """Whether ``put_if_absent``/``put_if_match`` are enforced by the backend."""
        return True

    @abstractmethod
    def get(self, key: str) -> bytes: ...

    @abstractmethod
    def get_range(self, key: str, start: int, length: int) -> bytes: ...

    def get_ranges(self, ranges: Sequence[tuple[str, int, int]]) -> list[bytes]:
        """Many ranges at once, in order; backends with a network override to run them concurrently."""
        return [self.get_range(key, start, length) for key, start, length in ranges]

    @abstractmethod
    def put(self, key: str, data: bytes) -> None: ...

    def put_file(self, key: str, path: Path | str) -> None:
        """Upload a local file to ``key`` (atomically; streamed where the backend can)."""
        self.put(key, Path(path).read_bytes())

    def iter_bytes(self, key: str, block_size: int = 8 << 20) -> Iterator[bytes]:
        """The object's bytes in blocks (for hashing large objects without holding them)."""
        size = self.head(key).size
        for start in range(0, size, block_size):
            yield self.get_range(key, start, min(block_size, size - start))

    def sha256(self, key: str) -> tuple[str, int]:
        """``(sha256 hex, size)`` of the object's bytes as the site returns them now."""
        h = hashlib.sha256()
        n = 0
        for block in self.iter_bytes(key):
            h.update(block)
            n += len(block)
        return h.hexdigest(), n

    def put_verified(self, key: str, data: bytes) -> None:
        """:meth:`put`, then check that the site holds exactly ``data`` (CorruptError if not).

        Default: read the object back. S3 sites check the server's MD5 instead (no
        second transfer).
        """
        self.put(key, data)
        back = self.get(key)
        if back != data:
            raise self._not_stored(key, f"{len(back)} bytes read back differ from the upload")

    def put_file_verified(self, key: str, path: Path | str, sha256: str) -> None:
        """:meth:`put_file`, then check the stored object's sha256 (CorruptError if not)."""
        self.put_file(key, path)
        digest, _ = self.sha256(key)
        if digest != sha256:
            raise self._not_stored(key, "sha256 of the stored object differs from the file's")

    def _not_stored(self, key: str, why: str) -> CorruptError:
        return CorruptError(
            f"upload of {key!r} to {self.url} did not verify: {why}", key=key, site=self.url
        )

    def put_if_absent(self, key: str, data: bytes) -> None:
        """Create ``key``; ConflictError if it already exists."""
        self.put_if_match(key, data, None)

    @abstractmethod
    def put_if_match(self, key: str, data: bytes, expected_etag: str | None) -> str:
        """Replace ``key`` only if its etag is ``expected_etag`` (None: only if absent); new etag."""

    def etag(self, key: str) -> str:
        return self.head(key).etag

    def get_with_etag(self, key: str) -> tuple[bytes, str]:
        """The bytes of ``key`` and the etag that describes exactly those bytes."""
        while True:
            etag = self.head(key).etag
            data = self.get(key)
            if self.head(key).etag == etag:  # not replaced between the two
                return data, etag

    @abstractmethod
    def head(self, key: str) -> ObjectInfo: ...

    def exists(self, key: str) -> bool:
        try:
            self.head(key)
        except NotFoundError:
            return False
        return True

    @abstractmethod
    def list(self, prefix: str = "") -> Iterator[str]: ...

    @abstractmethod
    def delete(self, key: str) -> None: ...

    def close(self) -> None:  # noqa: B027 - optional hook, most sites hold nothing
        """Release connections; the site must not be used afterwards."""

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r})"

    # helpers shared by backends
    def _not_found(self, key: str) -> NotFoundError:
        return NotFoundError(f"{key!r} not found at {self.url}", key=key, site=self.url)

    def _conflict(
        self, key: str, expected: str | None, actual: str | None, what: str
    ) -> ConflictError:
        return ConflictError(
            f"{what} {key!r} at {self.url} failed: expected "
            f"{'no object' if expected is None else 'etag ' + expected}, found "
            f"{'no object' if actual is None else 'etag ' + actual}",
            key=key,
            site=self.url,
            expected=expected,
            actual=actual,
        )


def probe_cas(site: Site) -> bool:
    """Whether ``site`` really refuses a second create-only write (some S3 servers don't)."""
    key = f"{PROBE_PREFIX}/{uuid.uuid4().hex}"
    site.put_if_absent(key, b"first")
    try:
        try:
            site.put_if_absent(key, b"second")
        except ConflictError:
            return site.get(key) == b"first"
        return False
    finally:
        site.delete(key)


# --------------------------------------------------------------------------- memory

_memory_lock = threading.Lock()


class _MemoryStore:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.objects: dict[str, tuple[bytes, str, datetime]] = {}


# The one process-wide registry in this module: memory:// sites with the same name
# share storage (as two handles on one bucket would), so tests can open a "remote"
# twice. Nothing else is cached globally.
_memory_stores: dict[str, _MemoryStore] = {}


def forget_memory_site(name: str) -> None:
    """Drop the shared storage of ``memory://name`` (for tests)."""
    with _memory_lock:
        _memory_stores.pop(name, None)


class MemorySite(Site):
    """In-process site for tests; same ``name`` → same storage (see ``forget_memory_site``)."""

    def __init__(self, name: str, prefix: str = "") -> None:
        if not name or "/" in name or _CONTROL.search(name):
            raise BadInputError(f"bad memory site name {name!r}")
        self.name = name
        self.prefix = validate_prefix(prefix.strip("/"))
        with _memory_lock:
            self._store = _memory_stores.setdefault(name, _MemoryStore())

    @property
    def url(self) -> str:
        return redact(f"memory://{self.name}/{self.prefix}".rstrip("/"))

    def _full(self, key: str) -> str:
        return _join(self.prefix, validate_key(key))

    def _obj(self, key: str) -> tuple[bytes, str, datetime]:
        full = self._full(key)
        with self._store.lock:
            obj = self._store.objects.get(full)
        if obj is None:
            raise self._not_found(key)
        return obj

    def get(self, key: str) -> bytes:
        return self._obj(key)[0]

    def get_with_etag(self, key: str) -> tuple[bytes, str]:
        data, etag, _ = self._obj(key)
        return data, etag

    def get_range(self, key: str, start: int, length: int) -> bytes:
        _check_range(key, start, length)
        data = self._obj(key)[0]
        if start + length > len(data):
            raise _range_error(key, self.url, start, length, len(data))
        return data[start : start + length]

    def put(self, key: str, data: bytes) -> None:
        full = self._full(key)
        data = bytes(data)
        obj = (data, _sha256(data), datetime.now(UTC))
        with self._store.lock:
            self._store.objects[full] = obj

    def put_if_match(self, key: str, data: bytes, expected_etag: str | None) -> str:
        full = self._full(key)
        data = bytes(data)
        obj = (data, _sha256(data), datetime.now(UTC))
        with self._store.lock:
            current = self._store.objects.get(full)
            actual = None if current is None else current[1]
            if actual != expected_etag:
                what = "create" if expected_etag is None else "conditional write of"
                raise self._conflict(key, expected_etag, actual, what)
            self._store.objects[full] = obj
        return obj[1]

    def head(self, key: str) -> ObjectInfo:
        data, etag, mtime = self._obj(key)
        return ObjectInfo(size=len(data), etag=etag, mtime=mtime)

    def list(self, prefix: str = "") -> Iterator[str]:
        full = _join(self.prefix, validate_prefix(prefix)) if prefix else self.prefix
        if self.prefix and not prefix:
            full += "/"
        cut = len(self.prefix) + 1 if self.prefix else 0
        with self._store.lock:
            keys = sorted(k for k in self._store.objects if k.startswith(full))
        for k in keys:
            yield k[cut:]

    def delete(self, key: str) -> None:
        full = self._full(key)
        with self._store.lock:
            self._store.objects.pop(full, None)


# --------------------------------------------------------------------------- files


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
        _check_range(key, start, length)
        path = self._path(key)
        try:
            with open(path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                if start + length > size:
                    raise _range_error(key, self.url, start, length, size)
                data = os.pread(f.fileno(), length, start)
        except OSError as exc:
            raise self._os_error(exc, key, "read") from exc
        if len(data) != length:  # the file shrank under us
            raise _range_error(key, self.url, start, length, start + len(data))
        return data

    def get_with_etag(self, key: str) -> tuple[bytes, str]:
        data = self.get(key)  # one open: the etag is the sha256 of exactly these bytes
        return data, _sha256(data)

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
                key = _join(rel, name)
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
        new_etag = _sha256(data)
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


# --------------------------------------------------------------------------- S3

_BUCKET = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{1,254}$")
_NOT_FOUND_CODES = {"NoSuchKey", "NotFound", "404", "NoSuchBucket"}
_DENIED_CODES = {
    "AccessDenied",
    "403",
    "Forbidden",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "ExpiredToken",
    "InvalidToken",
    "TokenRefreshRequired",
    "AllAccessDisabled",
    "AccountProblem",
}
_CONFLICT_CODES = {"PreconditionFailed", "412", "ConditionalRequestConflict", "409"}
_TRANSIENT_CODES = {
    "SlowDown",
    "RequestTimeout",
    "RequestTimeTooSkewed",
    "InternalError",
    "ServiceUnavailable",
    "503",
    "500",
    "502",
    "504",
    "Throttling",
    "ThrottlingException",
}
_RANGE_CODES = {"InvalidRange", "416"}
_S3_CREDENTIAL_OPTIONS = {"key", "secret", "token", "username", "password"}
S3_CLIENT_VAR = "HYPERSLAB_S3_CLIENT"
#: block size of streamed copies (:meth:`S3Site.aget_stream`)
STREAM_BLOCK = 1 << 20
_BOTO_PUT_ARGS = {
    "content-md5": "ContentMD5",
    "if-none-match": "IfNoneMatch",
    "if-match": "IfMatch",
}


def _client_error(exc: BaseException) -> Any | None:
    """The S3 error reply in ``exc``'s chain: a botocore ClientError (s3fs re-raises
    them as OSError) or a :class:`~hyperslab.s3wire.WireError`, both with ``.response``."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        response = getattr(cur, "response", None)
        if isinstance(response, dict) and "Error" in response:
            return cur
        cur = cur.__cause__ or cur.__context__
    return None


_loader_lock = threading.Lock()
_loader: list[Any] = []


def _aio_session(profile: str | None) -> Any:
    """A fresh botocore session (own credentials) sharing the service-model loader.

    Loading the S3 service model JSON costs 0.1-0.3 s per session; it is immutable
    package data, so every session may share one loader. Nothing else is shared.
    """
    import aiobotocore.session
    import botocore.loaders

    with _loader_lock:
        if not _loader:
            _loader.append(botocore.loaders.create_loader())
        loader = _loader[0]
    session = aiobotocore.session.AioSession(profile=profile)
    session.register_component("data_loader", loader)
    return session


def _wire_settings(options: dict[str, Any]) -> dict[str, Any] | None:
    """:class:`~hyperslab.s3wire.S3Wire` arguments for a site's ``options``, or None when
    they need botocore (any s3fs option other than retries and timeouts), or when
    ``HYPERSLAB_S3_CLIENT=s3fs`` asks for it."""
    from hyperslab.s3wire import WIRE_CONFIG_KWARGS, WIRE_OPTIONS

    choice = os.environ.get(S3_CLIENT_VAR, "").strip().lower()
    if choice in ("s3fs", "botocore"):
        return None
    if choice not in ("", "wire", "lean"):
        raise ConfigError(f"{S3_CLIENT_VAR} must be 'wire' or 's3fs', not {choice!r}")
    config = options.get("config_kwargs") or {}
    if set(options) - WIRE_OPTIONS or not isinstance(config, dict):
        return None
    if set(config) - WIRE_CONFIG_KWARGS:
        return None
    retry = config.get("retries") or {}
    if not isinstance(retry, dict) or set(retry) - {"max_attempts", "total_max_attempts", "mode"}:
        return None
    out: dict[str, Any] = {}
    attempts = [int(options["retries"])] if options.get("retries") is not None else []
    if retry.get("total_max_attempts") is not None:
        attempts.append(int(retry["total_max_attempts"]))
    elif retry.get("max_attempts") is not None:  # botocore: retries after the first try
        attempts.append(int(retry["max_attempts"]) + 1)
    if attempts:
        out["retries"] = min(attempts)
    for name in ("connect_timeout", "read_timeout"):
        if config.get(name) is not None:
            out[name] = config[name]
    return out


def _content_range_size(value: str | None) -> int | None:
    total = str(value or "").rpartition("/")[2]
    return int(total) if total.isdigit() else None


class S3Site(Site):
    """An S3-compatible bucket prefix.

    Requests go through hyperslab's lean SigV4 client (:mod:`hyperslab.s3wire`):
    blocking calls on a keep-alive connection per thread, concurrent ones as
    coroutines on fsspec's IO loop thread, so the synchronous methods work from
    plain scripts and from code already inside a running event loop (e.g.
    Jupyter). Sites with s3fs ``options`` other than retries and timeouts (or
    with ``HYPERSLAB_S3_CLIENT=s3fs``) use s3fs/botocore for every request
    instead; multipart uploads of large files (:meth:`put_file`) always do.

    Credentials come only from the AWS chain (environment, ``profile``, instance role);
    ``AWS_ENDPOINT_URL`` works when ``endpoint_url`` is not given.

    ``cas``: whether the server enforces conditional writes; None (default) means find
    out with :func:`probe_cas` the first time :attr:`supports_cas` is read.
    ``options``: extra ``s3fs.S3FileSystem`` arguments (``config_kwargs``, ``client_kwargs``,
    ``retries`` for the number of attempts ...); credentials are refused there.
    """

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        endpoint_url: str | None = None,
        region: str | None = None,
        profile: str | None = None,
        anon: bool = False,
        *,
        options: dict[str, Any] | None = None,
        cas: bool | None = None,
        max_concurrency: int = 16,
    ) -> None:
        from hyperslab.s3wire import CredentialSource, S3Wire

        if not _BUCKET.match(bucket):
            raise BadInputError(f"bad S3 bucket name {bucket!r}")
        self.bucket = bucket
        self.prefix = validate_prefix(prefix.strip("/"))
        self.endpoint_url = endpoint_url
        self._cas = cas
        self._max_concurrency = max(1, max_concurrency)
        kwargs = dict(options or {})
        nested = kwargs.get("client_kwargs") or {}
        secrets = sorted(
            (_S3_CREDENTIAL_OPTIONS & set(kwargs))
            | {k for k in nested if str(k).lower().startswith("aws_")}
        )
        if secrets:
            raise ConfigError(
                f"S3 site options must not carry credentials ({', '.join(secrets)}); "
                "use AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or a profile"
            )
        self._s3fs_args = (dict(kwargs), region, profile, anon)
        self._s3fs: Any = None
        self._s3fs_lock = threading.Lock()
        wire = _wire_settings(kwargs)
        self._wire: S3Wire | None = None
        if wire is not None:
            try:
                self._wire = S3Wire(
                    bucket, endpoint_url, region, CredentialSource(profile, anon), **wire
                )
            except (TypeError, ValueError) as exc:
                raise ConfigError(f"S3 site {self.url}: {exc}") from exc
        else:
            self._fs  # noqa: B018 - botocore mode: build the client now, so bad options fail here

    @property
    def _fs(self) -> Any:
        """The s3fs filesystem (built on first use in wire mode: large-file uploads)."""
        if self._s3fs is None:
            with self._s3fs_lock:
                if self._s3fs is None:
                    self._s3fs = self._make_s3fs()
        return self._s3fs

    def _make_s3fs(self) -> Any:
        import s3fs

        kwargs, region, profile, anon = self._s3fs_args
        kwargs = dict(kwargs)
        retries = kwargs.pop("retries", None)
        client_kwargs = dict(kwargs.pop("client_kwargs", None) or {})
        if region:
            client_kwargs.setdefault("region_name", region)
        kwargs.setdefault("use_listings_cache", False)
        if "session" not in kwargs:
            kwargs["session"] = _aio_session(profile)
        fs = s3fs.S3FileSystem(
            skip_instance_cache=True,
            anon=anon,
            endpoint_url=self.endpoint_url,
            client_kwargs=client_kwargs,
            **kwargs,
        )
        if retries is not None:
            fs.retries = max(1, int(retries))
        return fs

    @property
    def url(self) -> str:
        return redact(f"s3://{self.bucket}/{self.prefix}".rstrip("/"))

    def __repr__(self) -> str:
        endpoint = f", endpoint_url={redact(self.endpoint_url)!r}" if self.endpoint_url else ""
        return f"S3Site({self.url!r}{endpoint})"

    @property
    def client(self) -> str:
        """``"wire"`` (hyperslab's SigV4 client) or ``"s3fs"`` (botocore)."""
        return "wire" if self._wire is not None else "s3fs"

    @property
    def supports_cas(self) -> bool:
        if self._cas is None:
            self._cas = probe_cas(self)
        return self._cas

    def close(self) -> None:
        if self._wire is not None:
            self._wire.close_blocking()
        fs = self._s3fs
        creator = getattr(fs, "_s3creator", None)
        if getattr(fs, "_s3", None) is not None and creator is not None:
            from fsspec.asyn import sync

            with contextlib.suppress(Exception):
                sync(fs.loop, creator.__aexit__, None, None, None, timeout=5)
            fs._s3 = None

    # ----- plumbing

    def _s3key(self, key: str) -> str:
        return _join(self.prefix, validate_key(key))

    def _run(self, op: str, key: str, fn: Callable[[], Awaitable[_T]]) -> _T:
        """Run a coroutine on the IO loop and translate failures into our errors."""
        from fsspec.asyn import sync

        try:
            return sync(self.io_loop, fn)
        except HyperslabError:
            raise
        except Exception as exc:
            raise self._error(exc, op, key) from exc

    def _error(self, exc: BaseException, op: str, key: str) -> HyperslabError:
        import sys

        where = f"{op} {key!r} at {self.url}" if key else f"{op} at {self.url}"
        if self.endpoint_url:
            where += f" (endpoint {self.endpoint_url})"
        ce = _client_error(exc)
        if ce is not None:
            err = ce.response.get("Error", {})
            code = str(err.get("Code", ""))
            status = ce.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            text = str(err.get("Message", "")) or code
            details: dict[str, Any] = {"key": key, "site": self.url, "s3_code": code}
            if code in _NOT_FOUND_CODES or status == 404:
                if code == "NoSuchBucket":
                    return NotFoundError(
                        f"{where}: bucket {self.bucket!r} does not exist", **details
                    )
                return NotFoundError(f"{key!r} not found at {self.url}", **details)
            if code in _DENIED_CODES or status in (401, 403):
                return AccessDeniedError(
                    f"{where}: access denied ({code}: {text}); check AWS_ACCESS_KEY_ID/"
                    "AWS_SECRET_ACCESS_KEY or AWS_PROFILE and the bucket policy",
                    **details,
                )
            if code in _CONFLICT_CODES or status in (409, 412):
                return ConflictError(f"{where}: {code}: {text}", **details)
            if code in _TRANSIENT_CODES or (isinstance(status, int) and status >= 500):
                return TransientError(f"{where}: {code}: {text}", **details)
            if code in _RANGE_CODES or status == 416:
                return BadInputError(f"{where}: {code}: {text}", **details)
            return HyperslabError(f"{where}: {code}: {text}", **details)

        import http.client

        from hyperslab.s3wire import NoCredentials

        no_credentials: tuple[type[BaseException], ...] = (NoCredentials,)
        botocore_exc = sys.modules.get("botocore.exceptions")
        if botocore_exc is not None:
            no_credentials += (
                botocore_exc.NoCredentialsError,
                botocore_exc.PartialCredentialsError,
            )
            if isinstance(exc, botocore_exc.ProfileNotFound):
                return AccessDeniedError(f"{where}: {exc}", key=key, site=self.url)
        if isinstance(exc, no_credentials):
            return AccessDeniedError(
                f"{where}: no usable AWS credentials; set AWS_ACCESS_KEY_ID/"
                "AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or anon = true for public buckets",
                key=key,
                site=self.url,
            )
        if isinstance(exc, FileNotFoundError):
            return NotFoundError(f"{key!r} not found at {self.url}", key=key, site=self.url)
        if isinstance(exc, PermissionError):
            return AccessDeniedError(f"{where}: access denied", key=key, site=self.url)
        transient: tuple[type[BaseException], ...] = (
            OSError,
            asyncio.TimeoutError,
            TimeoutError,
            http.client.HTTPException,
        )
        if botocore_exc is not None:
            transient += (botocore_exc.BotoCoreError,)
        aiohttp = sys.modules.get("aiohttp")
        if aiohttp is not None:
            transient += (aiohttp.ClientError,)
        if isinstance(exc, transient):
            return TransientError(f"{where}: {type(exc).__name__}: {exc}", key=key, site=self.url)
        return HyperslabError(f"{where}: {type(exc).__name__}: {exc}", key=key, site=self.url)

    # ----- the five S3 calls, for the wire client (request + parse) and for botocore

    def _req_get(
        self, s3key: str, start: int | None = None, length: int | None = None
    ) -> tuple[dict[str, Any], Callable[[Any], tuple[bytes, str, int | None]]]:
        ranged = start is not None and length is not None
        headers = {"range": f"bytes={start}-{start + length - 1}"} if ranged else {}  # type: ignore[operator]

        def parse(r: Any) -> tuple[bytes, str, int | None]:
            data, total = r.body, _content_range_size(r.header("content-range"))
            if ranged and r.status == 200:  # a server that ignores Range sends it all
                total, data = len(data), data[start : start + length]  # type: ignore[operator]
            return data, r.header("etag"), total

        return {"method": "GET", "key": s3key, "headers": headers}, parse

    async def _boto_get(
        self, s3key: str, start: int | None = None, length: int | None = None
    ) -> tuple[bytes, str, int | None]:
        kw: dict[str, Any] = {}
        if start is not None and length is not None:
            kw["Range"] = f"bytes={start}-{start + length - 1}"
        resp = await self._fs._call_s3("get_object", Bucket=self.bucket, Key=s3key, **kw)
        body = resp["Body"]
        try:
            data: bytes = await body.read()
        finally:
            body.close()
        return data, str(resp.get("ETag", "")), _content_range_size(resp.get("ContentRange"))

    def _req_head(self, s3key: str) -> tuple[dict[str, Any], Callable[[Any], ObjectInfo]]:
        from email.utils import parsedate_to_datetime

        def parse(r: Any) -> ObjectInfo:
            try:
                mtime = parsedate_to_datetime(r.header("last-modified"))
            except (TypeError, ValueError):
                mtime = datetime.now(UTC)
            return ObjectInfo(int(r.header("content-length", "0")), r.header("etag"), mtime)

        return {"method": "HEAD", "key": s3key}, parse

    async def _boto_head(self, s3key: str) -> ObjectInfo:
        out = await self._fs._call_s3("head_object", Bucket=self.bucket, Key=s3key)
        mtime = out.get("LastModified")
        if not isinstance(mtime, datetime):
            mtime = datetime.now(UTC)
        return ObjectInfo(size=int(out["ContentLength"]), etag=str(out["ETag"]), mtime=mtime)

    def _req_put(
        self, s3key: str, data: bytes, headers: dict[str, str]
    ) -> tuple[dict[str, Any], Callable[[Any], str]]:
        req = {"method": "PUT", "key": s3key, "body": data, "headers": headers}
        return req, lambda r: r.header("etag")

    async def _boto_put(self, s3key: str, data: bytes, headers: dict[str, str]) -> str:
        kw = {_BOTO_PUT_ARGS[k]: v for k, v in headers.items()}
        out = await self._fs._call_s3("put_object", Bucket=self.bucket, Key=s3key, Body=data, **kw)
        return str(out.get("ETag", ""))

    def _req_delete(self, s3key: str) -> tuple[dict[str, Any], Callable[[Any], None]]:
        return {"method": "DELETE", "key": s3key}, lambda r: None

    async def _boto_delete(self, s3key: str) -> None:
        await self._fs._call_s3("delete_object", Bucket=self.bucket, Key=s3key)

    def _req_list(
        self, prefix: str, token: str | None
    ) -> tuple[dict[str, Any], Callable[[Any], tuple[list[str], str | None]]]:
        from hyperslab.s3wire import parse_list_page

        query = [("list-type", "2"), ("prefix", prefix), ("encoding-type", "url")]
        if token:
            query.append(("continuation-token", token))

        def parse(r: Any) -> tuple[list[str], str | None]:
            items, nxt = parse_list_page(r.body)
            return [k for k, _ in items], nxt

        return {"method": "GET", "key": "", "query": query}, parse

    async def _boto_list(self, prefix: str, token: str | None) -> tuple[list[str], str | None]:
        kw: dict[str, Any] = {"Bucket": self.bucket, "Prefix": prefix}
        if token:
            kw["ContinuationToken"] = token
        page = await self._fs._call_s3("list_objects_v2", **kw)
        keys = [str(obj["Key"]) for obj in page.get("Contents", [])]
        return keys, (page.get("NextContinuationToken") if page.get("IsTruncated") else None)

    def _call(self, op: str, key: str, call: str, *args: Any) -> Any:
        """One S3 call, blocking: the wire client's own connection, or botocore on the loop."""
        if self._wire is None:
            return self._run(op, key, lambda: getattr(self, f"_boto_{call}")(*args))
        request, parse = getattr(self, f"_req_{call}")(*args)
        try:
            return parse(self._wire.request(**request))
        except HyperslabError:
            raise
        except Exception as exc:
            raise self._error(exc, op, key) from exc

    async def _acall(self, op: str, key: str, call: str, *args: Any) -> Any:
        """:meth:`_call` as a coroutine on :attr:`io_loop`."""
        try:
            if self._wire is None:
                return await getattr(self, f"_boto_{call}")(*args)
            request, parse = getattr(self, f"_req_{call}")(*args)
            return parse(await self._wire.arequest(**request))
        except HyperslabError:
            raise
        except Exception as exc:
            raise self._error(exc, op, key) from exc

    async def _aget_range(self, key: str, start: int, length: int) -> bytes:
        _check_range(key, start, length)
        s3key = self._s3key(key)
        if length == 0:
            info = await self._acall("head", key, "head", s3key)
            if start > info.size:
                raise _range_error(key, self.url, start, length, info.size)
            return b""
        try:
            data, _, total = await self._acall("get range of", key, "get", s3key, start, length)
        except BadInputError as exc:
            if exc.details.get("s3_code") not in _RANGE_CODES:
                raise
            info = await self._acall("head", key, "head", s3key)
            raise _range_error(key, self.url, start, length, info.size) from None
        if len(data) != length:
            raise _range_error(key, self.url, start, length, total or 0)
        return bytes(data)

    # ----- reads

    def get(self, key: str) -> bytes:
        data: bytes = self._call("get", key, "get", self._s3key(key))[0]
        return data

    def get_range(self, key: str, start: int, length: int) -> bytes:
        return self._run("get range of", key, lambda: self._aget_range(key, start, length))

    def get_with_etag(self, key: str) -> tuple[bytes, str]:
        """One GET: the response's ETag describes its body."""
        data, etag, _ = self._call("get", key, "get", self._s3key(key))
        return data, etag

    def get_ranges(self, ranges: Sequence[tuple[str, int, int]]) -> list[bytes]:
        ranges = list(ranges)
        for key, start, length in ranges:
            validate_key(key)
            _check_range(key, start, length)
        if not ranges:
            return []

        async def all_ranges() -> list[bytes]:
            sem = asyncio.Semaphore(self._max_concurrency)

            async def one(key: str, start: int, length: int) -> bytes:
                async with sem:
                    return await self._aget_range(key, start, length)

            return list(await asyncio.gather(*(one(*r) for r in ranges)))

        return self._run("get ranges of", ranges[0][0], all_ranges)

    def head(self, key: str) -> ObjectInfo:
        info: ObjectInfo = self._call("head", key, "head", self._s3key(key))
        return info

    def list(self, prefix: str = "") -> Iterator[str]:
        validate_prefix(prefix)
        full = _join(self.prefix, prefix) if prefix else (self.prefix + "/" if self.prefix else "")
        cut = len(self.prefix) + 1 if self.prefix else 0
        token: str | None = None
        while True:
            keys, token = self._call("list", prefix, "list", full, token)
            for raw in keys:
                key = raw[cut:]
                try:
                    validate_key(key)
                except UnsafeNameError:
                    # Written by some other tool (directory markers, '//' ...): not ours.
                    log.debug("skipping unaddressable object %r at %s", key, self.url)
                    continue
                yield key
            if not token:
                return

    # ----- writes

    def put(self, key: str, data: bytes) -> None:
        self._call("put", key, "put", self._s3key(key), data, {})

    @staticmethod
    def _md5(data: bytes) -> Any:
        return hashlib.md5(data, usedforsecurity=False)

    def _md5_header(self, digest: Any) -> dict[str, str]:
        return {"content-md5": base64.b64encode(digest.digest()).decode()}

    def _etag_verifies(self, key: str, etag: str, digest: Any) -> bool:
        """True: the ETag is the MD5 sent. False: not an MD5 (SSE-KMS/-C), read back."""
        etag = etag.strip('"')
        if not _PLAIN_ETAG.match(etag):
            return False
        if etag != digest.hexdigest():
            raise self._not_stored(key, f"ETag {etag} is not the MD5 of the bytes sent")
        return True

    def put_verified(self, key: str, data: bytes) -> None:
        """PUT with Content-MD5 (the server refuses a damaged body), then compare the ETag."""
        digest = self._md5(data)
        etag = self._call("put", key, "put", self._s3key(key), data, self._md5_header(digest))
        if not self._etag_verifies(key, etag, digest) and self.get(key) != data:
            raise self._not_stored(key, "bytes read back differ from the upload")

    async def _aput_verified(self, key: str, data: bytes) -> None:
        if len(data) > 1 << 20:  # off the IO loop: other requests go on meanwhile
            digest = await asyncio.to_thread(self._md5, data)
        else:
            digest = self._md5(data)
        s3key = self._s3key(key)
        etag = await self._acall("put", key, "put", s3key, data, self._md5_header(digest))
        if not self._etag_verifies(key, etag, digest):
            back, _, _ = await self._acall("get", key, "get", s3key)
            if back != data:
                raise self._not_stored(key, "bytes read back differ from the upload")

    # ----- coroutines for callers already on the IO loop (sync's copy runs there)

    @property
    def io_loop(self) -> asyncio.AbstractEventLoop:
        """The event loop this site's coroutines run on (fsspec's, shared by every S3 site)."""
        if self._wire is None:
            loop: asyncio.AbstractEventLoop = self._fs.loop
            return loop
        from fsspec.asyn import get_loop

        return get_loop()

    async def aget(self, key: str) -> bytes:
        """:meth:`get` as a coroutine on :attr:`io_loop`, with the same errors."""
        data: bytes = (await self._acall("get", key, "get", self._s3key(key)))[0]
        return data

    async def aput_verified(self, key: str, data: bytes) -> None:
        """:meth:`put_verified` as a coroutine on :attr:`io_loop`, with the same errors."""
        await self._aput_verified(key, data)

    # ----- streaming copies (wire client only): one GET piped into one PUT

    @property
    def streams(self) -> bool:
        """Whether :meth:`aget_stream` and :meth:`aput_stream` are available."""
        return self._wire is not None

    @contextlib.asynccontextmanager
    async def aget_stream(self, key: str) -> AsyncIterator[tuple[int, AsyncIterator[bytes]]]:
        """``(size, blocks)`` of ``key``: its bytes in blocks as they arrive, on :attr:`io_loop`."""
        if self._wire is None:
            raise HyperslabError(f"{self.url}: streaming needs the wire client")
        s3key = self._s3key(key)
        opened = False
        try:
            async with self._wire.aopen("GET", s3key) as (head, content):
                opened = True
                yield int(head.header("content-length", "0")), content.iter_chunked(STREAM_BLOCK)
        except Exception as exc:
            if opened or isinstance(exc, HyperslabError):
                raise  # the caller's own failure, already ours
            raise self._error(exc, "get", key) from exc

    async def aput_stream(
        self,
        key: str,
        size: int,
        blocks: AsyncIterator[bytes],
        sha256: str,
        check: Callable[[int, str], None],
    ) -> None:
        """Store ``size`` bytes arriving as ``blocks`` at ``key`` with one PUT that is
        completed only if they check out.

        The body is signed with ``sha256``, the hash the bytes must have (S3 and MinIO
        refuse a body that does not match it). The last block is held back until every
        byte has been counted and hashed and ``check(n, sha256 hex)`` has passed;
        if it raises, or the source fails, the request is cut short, so the server
        never stores the object. Afterwards the ETag must be the MD5 of what was sent.
        """
        if self._wire is None:
            raise HyperslabError(f"{self.url}: streaming needs the wire client")
        sha, md5 = hashlib.sha256(), self._md5(b"")
        failed: list[BaseException] = []

        def absorb(block: bytes) -> None:
            sha.update(block)
            md5.update(block)

        async def body() -> AsyncIterator[bytes]:
            held: bytes | None = None
            n = 0
            try:
                async for block in blocks:
                    if held is not None:
                        yield held
                    await asyncio.to_thread(absorb, block)  # hashlib drops the GIL
                    n += len(block)
                    if n > size:
                        check(n, sha.hexdigest())  # it is not what was announced
                        raise self._not_stored(key, f"the source sent more than {size} bytes")
                    held = block
                check(n, sha.hexdigest())
                if n != size:
                    raise self._not_stored(key, f"the source sent {n} of {size} bytes")
            except BaseException as exc:
                failed.append(exc)
                raise
            if held is not None:
                yield held

        s3key = self._s3key(key)
        try:
            resp = await self._wire.arequest(
                "PUT", s3key, body=body(), body_sha=sha256, headers={"content-length": str(size)}
            )
        except Exception as exc:
            cause = failed[0] if failed else exc
            if isinstance(cause, HyperslabError):
                raise cause from exc
            raise self._error(cause, "get" if failed else "put", key) from exc
        if not self._etag_verifies(key, resp.header("etag"), md5):
            digest, _ = await asyncio.to_thread(self.sha256, key)
            if digest != sha256:
                raise self._not_stored(key, "sha256 of the stored object differs")

    def put_file_verified(self, key: str, path: Path | str, sha256: str) -> None:
        """Upload, then compare the ETag with the MD5 (multipart: MD5 of part MD5s) of the
        file as s3fs splits it; read the object back only if the ETag is not an MD5."""
        import s3fs.core

        self.put_file(key, path)
        size = os.path.getsize(path)
        part = s3fs.core.calculate_chunksize(size)
        expected = _s3_etag(Path(path), part if size >= min(5 << 30, 2 * part) else None)
        etag = self.head(key).etag.strip('"')
        if etag == expected:
            return
        if _PLAIN_ETAG.match(etag) or _MULTIPART_ETAG.match(etag):
            raise self._not_stored(key, f"ETag {etag} differs from the file's {expected}")
        digest, _ = self.sha256(key)
        if digest != sha256:
            raise self._not_stored(key, "sha256 of the stored object differs from the file's")

    def put_file(self, key: str, path: Path | str) -> None:
        s3key = self._s3key(key)
        target = f"{self.bucket}/{s3key}"
        # s3fs streams the file and switches to a multipart upload for large files;
        # S3 makes the object visible only when the upload completes.
        self._run("upload", key, lambda: self._fs._put_file(str(path), target))

    def put_if_match(self, key: str, data: bytes, expected_etag: str | None) -> str:
        cond = {"if-none-match": "*"} if expected_etag is None else {"if-match": expected_etag}
        what = "create" if expected_etag is None else "conditional write of"
        try:
            etag: str = self._call("put", key, "put", self._s3key(key), data, cond)
        except (ConflictError, NotFoundError) as exc:
            if isinstance(exc, NotFoundError) and (
                expected_etag is None or exc.details.get("s3_code") == "NoSuchBucket"
            ):
                raise  # the bucket is missing, not the object
            try:
                actual: str | None = self.etag(key)
            except NotFoundError:
                actual = None
            raise self._conflict(key, expected_etag, actual, what) from exc
        return etag

    def delete(self, key: str) -> None:
        self._call("delete", key, "delete", self._s3key(key))


_PLAIN_ETAG = re.compile(r"^[0-9a-f]{32}$")
_MULTIPART_ETAG = re.compile(r"^[0-9a-f]{32}-\d+$")


def _s3_etag(path: Path, part_size: int | None) -> str:
    """The ETag S3 gives a file uploaded in one PUT (``None``) or in ``part_size`` parts."""
    md5s = []
    whole = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as fh:
        while True:
            block = fh.read(part_size or (8 << 20))
            if not block:
                break
            if part_size is None:
                whole.update(block)
            else:
                md5s.append(hashlib.md5(block, usedforsecurity=False).digest())
    if part_size is None:
        return whole.hexdigest()
    return f"{hashlib.md5(b''.join(md5s), usedforsecurity=False).hexdigest()}-{len(md5s)}"


# --------------------------------------------------------------------------- opening


def _site_for_url(url: str, sc: SiteConfig | None = None, *, extra: str = "") -> Site:
    """A site for ``url`` (+ ``/extra``), using endpoint/region/... of ``sc`` if given."""
    options = dict(sc.options) if sc is not None else {}
    if "://" not in url:
        if sc is not None and options:
            raise ConfigError(f"site {sc.name!r}: options are only supported for s3:// sites")
        root = Path(url).expanduser()
        if extra:
            validate_prefix(extra)
            root = root.joinpath(*extra.strip("/").split("/"))
        return FileSite(root.resolve())
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    path = parts.path.strip("/")
    if extra:
        path = _join(path, extra.strip("/"))
    if scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise BadInputError(
                f"file URL {redact(url)!r} names host {parts.netloc!r}; use file:///absolute/path"
            )
        if sc is not None and options:
            raise ConfigError(f"site {sc.name!r}: options are only supported for s3:// sites")
        validate_prefix(unquote(path))
        return FileSite(Path("/" + unquote(path)))
    if scheme == "memory":
        return MemorySite(parts.netloc, validate_prefix(path))
    if scheme in ("s3", "s3a"):
        if not parts.netloc:
            raise BadInputError(f"S3 URL {redact(url)!r} has no bucket; use s3://bucket/prefix")
        if "@" in parts.netloc:
            raise ConfigError(
                f"S3 URL {redact(url)!r} contains credentials; use the AWS environment instead"
            )
        if sc is None:
            return S3Site(parts.netloc, validate_prefix(path))
        return S3Site(
            parts.netloc,
            validate_prefix(path),
            endpoint_url=sc.endpoint_url,
            region=sc.region,
            profile=sc.profile,
            anon=sc.anon,
            options=options,
        )
    raise BadInputError(
        f"unsupported URL scheme {parts.scheme!r} in {redact(url)!r}; "
        "use file:///path, a local path, s3://bucket/prefix, memory://name/prefix or SITE:path"
    )


def site_from_config(sc: SiteConfig, path: str = "") -> Site:
    """The site configured as ``sc``, rooted at ``path`` below its url."""
    return _site_for_url(sc.url, sc, extra=validate_prefix(path.strip("/")) if path else "")


def _matching_site(url: str, config: Config) -> tuple[SiteConfig, str] | None:
    """The configured S3 site whose url is the longest prefix of ``url`` (for its endpoint)."""
    best: tuple[SiteConfig, str] | None = None
    target = url.rstrip("/")
    for sc in config.sites.values():
        base = sc.url.rstrip("/")
        if not base.lower().startswith(("s3://", "s3a://")):
            continue
        if target == base or target.startswith(base + "/"):
            rest = target[len(base) :].strip("/")
            if best is None or len(base) > len(best[0].url.rstrip("/")):
                best = (sc, rest)
    return best


def open_site(spec: str, config: Config | None = None) -> tuple[Site, str]:
    """Open ``spec`` and return ``(site, display)``.

    ``spec`` is ``file:///abs/path``, a local path, ``s3://bucket/prefix``,
    ``memory://name/prefix`` or ``SITE:path`` with SITE a name in ``config.sites``.
    With ``config=None`` the configuration is loaded (:func:`hyperslab.config.load_config`)
    when the spec needs it (``SITE:path`` and ``s3://`` URLs, which pick up the endpoint
    of a configured site whose url contains them). A local path whose first component
    contains ':' must be written ``./a:b``.
    """
    from hyperslab.config import load_config

    if not isinstance(spec, str) or not spec or _CONTROL.search(spec):
        raise BadInputError(f"bad site spec {spec!r}")
    if "://" in spec:
        scheme = spec.split("://", 1)[0].lower()
        if scheme in ("s3", "s3a"):
            cfg = config if config is not None else load_config()
            match = _matching_site(spec, cfg)
            if match is not None:
                sc, rest = match
                site = site_from_config(sc, rest)
                return site, f"{site.url} (site {sc.name})"
        site = _site_for_url(spec)
        return site, site.url

    name, colon, rest = spec.partition(":")
    if colon and "/" not in name and name:
        cfg = config if config is not None else load_config()
        if name in cfg.sites:
            sc = cfg.sites[name]
            path = rest.strip("/")
            site = site_from_config(sc, path)
            return site, f"{name}:{path} ({site.url})"
        if not Path(spec).expanduser().exists():
            raise ConfigError(
                f"unknown site {name!r} in {spec!r}; "
                + (
                    f"known sites: {', '.join(cfg.sites)}"
                    if cfg.sites
                    else "no sites are configured (hyperslab.toml)"
                )
                + "; for a local path containing ':' write ./"
                + spec,
                site=name,
            )
    site = _site_for_url(spec)
    return site, site.url
