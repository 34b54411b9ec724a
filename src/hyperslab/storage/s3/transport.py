"""The S3 transport interface: the handful of S3 calls an :class:`~.site.S3Site` makes.

A site keeps the contract (key validation, prefixes, strict ranges, CAS semantics,
verified uploads, error messages); a transport only moves requests for one bucket:

* ``get`` (whole or one byte range), ``head``, ``put`` (with ``Content-MD5``,
  ``If-None-Match: *`` or ``If-Match``), ``delete``, a listing (``ListObjectsV2``),
  and ``upload_file`` (multipart for large files);
* each call twice: blocking (from any thread) and as a coroutine on :attr:`io_loop`;
* optionally :meth:`aopen_get` / :meth:`aput_stream`, a GET whose body is consumed as
  it arrives and a PUT whose body is an async iterator (sync's streamed copy).

Transports raise only the failures below; :mod:`.errors` turns them into named
:mod:`hyperslab.errors` naming the site, the key and the operation. Three
transports implement it: :mod:`.wire` (hyperslab's SigV4 client, the default),
:mod:`.boto` (aiobotocore, for sites whose ``options`` need botocore) and
:mod:`.obstore` (Rust ``object_store``); :mod:`.clients` picks one per site.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:
    from hyperslab.storage.site import ObjectInfo

__all__ = [
    "Fetched",
    "S3ErrorReply",
    "S3Failure",
    "S3NoCredentials",
    "S3Unreachable",
    "Transport",
    "TransportSettings",
    "multipart_etag",
]

#: uploads of local files at least this large go in parts (S3's single-PUT limit is 5 GiB)
MULTIPART_THRESHOLD = 100 << 20
#: size of each part of a multipart upload (S3 allows 10,000 parts: 500 GB files)
PART_SIZE = 50 << 20


# --------------------------------------------------------------------------- failures


class S3Failure(Exception):
    """What a transport raises when a call fails; the site names it (:mod:`.errors`)."""


class S3ErrorReply(S3Failure):
    """The server answered with an error (``code`` as in S3's ``<Error><Code>``)."""

    def __init__(self, status: int, code: str, message: str = "", method: str = "") -> None:
        code = code or str(status)
        super().__init__(
            f"{method + ': ' if method else ''}{code}: {message or code} (HTTP {status})"
        )
        self.status = status
        self.code = code
        self.message = message or code


class S3NoCredentials(S3Failure):
    """No usable AWS credentials were found anywhere in the chain."""


class S3Unreachable(S3Failure):
    """No answer: the connection failed or timed out (after the transport's retries)."""


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class Fetched:
    """A GET's body, the ETag describing it, and the object's size when the reply said
    (``Content-Range`` of a ranged GET)."""

    data: bytes
    etag: str
    total: int | None = None


@dataclass(frozen=True)
class TransportSettings:
    """What every transport is built from (one bucket of one endpoint)."""

    bucket: str
    endpoint_url: str | None = None
    region: str | None = None
    profile: str | None = None
    anon: bool = False
    retries: int | None = None  # attempts in all, None: the transport's default
    connect_timeout: float | None = None
    read_timeout: float | None = None


class Transport(ABC):
    """The S3 calls of one bucket (keys are full object keys, prefix included)."""

    #: the name ``HYPERSLAB_S3_CLIENT`` and ``S3Site.client`` use
    name: ClassVar[str]
    #: whether :meth:`aopen_get` and :meth:`aput_stream` work
    supports_streaming: ClassVar[bool] = False

    # ----- blocking calls (any thread)
    @abstractmethod
    def get(self, key: str, start: int | None = None, length: int | None = None) -> Fetched:
        """The object, or ``length`` bytes of it from ``start``."""

    @abstractmethod
    def head(self, key: str) -> ObjectInfo: ...

    @abstractmethod
    def put(self, key: str, data: bytes, headers: Mapping[str, str]) -> str:
        """PUT ``data``; ``headers`` may hold ``content-md5``, ``if-none-match: *`` or
        ``if-match: ETAG``. Returns the new ETag."""

    @abstractmethod
    def delete(self, key: str) -> None: ...

    @abstractmethod
    def list(self, prefix: str) -> Iterator[str]:
        """Every key that starts with ``prefix`` (a string prefix), in sorted order."""

    @abstractmethod
    def upload_file(self, key: str, path: Path) -> str:
        """Upload a local file (in parts of :meth:`part_size` when that is not None);
        the object appears only when the whole upload completed. Returns the ETag."""

    def part_size(self, size: int) -> int | None:
        """The part size :meth:`upload_file` uses for a file of ``size`` bytes, or None
        for one PUT (the ETag of the object depends on it, see :func:`multipart_etag`)."""
        return PART_SIZE if size >= MULTIPART_THRESHOLD else None

    # ----- coroutines on io_loop
    @property
    @abstractmethod
    def io_loop(self) -> asyncio.AbstractEventLoop:
        """The event loop this transport's coroutines run on."""

    @abstractmethod
    async def aget(
        self, key: str, start: int | None = None, length: int | None = None
    ) -> Fetched: ...

    @abstractmethod
    async def ahead(self, key: str) -> ObjectInfo: ...

    @abstractmethod
    async def aput(self, key: str, data: bytes, headers: Mapping[str, str]) -> str: ...

    # ----- streaming (sync's large copies)
    @contextlib.asynccontextmanager
    async def aopen_get(self, key: str) -> AsyncIterator[tuple[int, AsyncIterator[bytes]]]:
        """``(size, blocks)``: the object's bytes as they arrive."""
        raise S3Failure(f"the {self.name} transport does not stream")
        yield  # pragma: no cover - makes this an async generator

    async def aput_stream(
        self, key: str, size: int, body: AsyncIterator[bytes], sha256: str
    ) -> str:
        """One PUT of ``size`` bytes arriving as ``body``, signed with ``sha256`` (the
        server refuses a body that does not hash to it); an exception from ``body``
        aborts the request, so the object is never completed. Returns the ETag."""
        raise S3Failure(f"the {self.name} transport does not stream")

    def close(self) -> None:  # noqa: B027 - optional: most transports hold nothing to close
        """Release connections (blocking)."""


# --------------------------------------------------------------------------- choosing


def multipart_etag(path: Path, part_size: int | None) -> str:
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
