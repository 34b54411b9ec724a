"""The :class:`Site` interface: one small synchronous object store rooted at a prefix.

Keys are ``/``-separated paths relative to the root, validated on every call
(:func:`~hyperslab.storage.keys.validate_key`). Every backend (``file.py``,
``memory.py``, ``s3/``) passes the same contract suite (``tests/storage/``):

* ``put`` is atomic: readers see the old or the new whole object, never a part.
* ``put_if_absent`` / ``put_if_match`` are compare-and-swap writes; losers get
  :class:`~hyperslab.errors.ConflictError` with ``expected``/``actual`` details.
* ``etag`` is an opaque content token, only meaningful for ``put_if_match`` on the
  same site (sha256 hex for file and memory sites, the S3 ETag for S3).
* ``get_range(key, start, length)`` is strict: the range must lie inside the object
  (a short object means the caller's offsets are stale; it is never padded or cut).
* ``list(prefix)`` yields keys (string-prefix match, recursive, sorted).
* Missing objects raise NotFoundError; ``delete`` of a missing key is a no-op.

Capabilities beyond the contract are properties of the interface, never probed with
``getattr``: :attr:`Site.io_loop` (the event loop a site's coroutines run on, None
for sites whose coroutines are threads) and :attr:`Site.supports_streaming`
(:meth:`Site.aget_stream` / :meth:`Site.aput_stream`).

Not every S3-compatible server honours conditional writes (s3rver ignores them);
:func:`probe_cas` finds out by trying, and ``S3Site.supports_cas`` uses it.
"""

from __future__ import annotations

import contextlib
import hashlib
import uuid
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Self

from hyperslab.errors import (
    BadInputError,
    ConflictError,
    CorruptError,
    HyperslabError,
    NotFoundError,
)

if TYPE_CHECKING:
    import asyncio
from hyperslab.storage.keys import PROBE_PREFIX

__all__ = ["ObjectInfo", "Site", "check_range", "probe_cas", "range_error"]


def check_range(key: str, start: int, length: int) -> None:
    """BadInputError unless ``start`` and ``length`` are both >= 0."""
    if start < 0 or length < 0:
        raise BadInputError(
            f"bad byte range for {key!r}: start={start}, length={length} (both must be >= 0)",
            key=key,
            start=start,
            length=length,
        )


def range_error(key: str, url: str, start: int, length: int, size: int) -> BadInputError:
    """The error for a byte range that does not lie inside an object of ``size`` bytes."""
    return BadInputError(
        f"byte range [{start}, {start + length}) of {key!r} at {url} lies beyond the end of "
        f"the object ({size} bytes)",
        key=key,
        site=url,
        start=start,
        length=length,
        size=size,
    )


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

    # ----- coroutines (sync's copy awaits these on :attr:`io_loop`)

    @property
    def io_loop(self) -> asyncio.AbstractEventLoop | None:
        """The event loop this site's coroutines run on, when they are real requests on a
        loop (S3); None when they are the blocking calls run on worker threads."""
        return None

    async def aget(self, key: str) -> bytes:
        """:meth:`get` as a coroutine (with the same errors)."""
        import asyncio  # only where coroutines are used (sync): not at import

        return await asyncio.to_thread(self.get, key)

    async def aput_verified(self, key: str, data: bytes) -> None:
        """:meth:`put_verified` as a coroutine (with the same errors)."""
        import asyncio  # only where coroutines are used (sync): not at import

        await asyncio.to_thread(self.put_verified, key, data)

    @property
    def supports_streaming(self) -> bool:
        """Whether :meth:`aget_stream` and :meth:`aput_stream` pipe bytes through."""
        return False

    @contextlib.asynccontextmanager
    async def aget_stream(self, key: str) -> AsyncIterator[tuple[int, AsyncIterator[bytes]]]:
        """``(size, blocks)`` of ``key``: its bytes in blocks as they arrive."""
        raise HyperslabError(f"{self.url} does not stream objects")
        yield  # pragma: no cover - makes this an async generator

    async def aput_stream(
        self,
        key: str,
        size: int,
        blocks: AsyncIterator[bytes],
        sha256: str,
        check: Callable[[int, str], None],
    ) -> None:
        """Store ``size`` bytes arriving as ``blocks`` at ``key``, completed only if
        ``check(n, sha256 hex)`` passes after the last byte (see ``S3Site.aput_stream``)."""
        raise HyperslabError(f"{self.url} does not stream objects")

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
