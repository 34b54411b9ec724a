"""S3-compatible bucket prefixes: ``s3://bucket/prefix`` (MinIO, AWS S3).

:class:`S3Site` keeps the :class:`~hyperslab.storage.site.Site` contract over one
:class:`~.transport.Transport` (which moves the requests): key validation and
prefixes, strict byte ranges, compare-and-swap writes, uploads verified against
their MD5 or SHA-256, and named errors (:mod:`.errors`). Blocking calls work from
plain scripts and from code already inside a running event loop (Jupyter);
concurrent ones (:meth:`S3Site.get_ranges`, sync's copy) are coroutines on the
transport's IO loop.

Credentials come only from the AWS chain (environment, ``profile``, instance role);
``AWS_ENDPOINT_URL`` works when ``endpoint_url`` is not given.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from hyperslab.errors import (
    BadInputError,
    ConfigError,
    ConflictError,
    HyperslabError,
    NotFoundError,
    UnsafeNameError,
    redact,
)
from hyperslab.storage.keys import join_key, validate_key, validate_prefix
from hyperslab.storage.s3.clients import choose_transport
from hyperslab.storage.s3.errors import RANGE_CODES, site_error
from hyperslab.storage.s3.transport import Transport, TransportSettings, multipart_etag
from hyperslab.storage.site import ObjectInfo, Site, check_range, probe_cas, range_error

__all__ = ["S3Site"]

log = logging.getLogger(__name__)

_T = TypeVar("_T")
_BUCKET = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{1,254}$")
_S3_CREDENTIAL_OPTIONS = {"key", "secret", "token", "username", "password"}
_PLAIN_ETAG = re.compile(r"^[0-9a-f]{32}$")
_MULTIPART_ETAG = re.compile(r"^[0-9a-f]{32}-\d+$")


def _md5(data: bytes) -> Any:
    return hashlib.md5(data, usedforsecurity=False)


def _md5_header(digest: Any) -> dict[str, str]:
    return {"content-md5": base64.b64encode(digest.digest()).decode()}


class S3Site(Site):
    """An S3-compatible bucket prefix.

    Requests go through hyperslab's own SigV4 client (:mod:`.wire`) unless
    ``HYPERSLAB_S3_CLIENT`` names another transport or ``options`` hold settings only
    botocore understands (:func:`~.clients.choose_transport`).

    ``cas``: whether the server enforces conditional writes; None (default) means find
    out with :func:`~hyperslab.storage.site.probe_cas` the first time
    :attr:`supports_cas` is read. ``options``: s3fs-style settings (``retries``,
    ``config_kwargs`` timeouts; for botocore also ``client_kwargs`` ...); credentials
    are refused there. ``client``: the transport by name (``wire``, ``obstore``,
    ``botocore``), over ``HYPERSLAB_S3_CLIENT``.
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
        client: str | None = None,
    ) -> None:
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
        settings = TransportSettings(bucket, endpoint_url, region, profile, anon)
        try:
            self.transport: Transport = choose_transport(settings, kwargs, client)
        except HyperslabError:
            raise
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"S3 site {self.url}: {exc}") from exc
        except Exception as exc:  # the botocore client could not be created
            raise self._error(exc, "open", "") from exc

    @property
    def url(self) -> str:
        return redact(f"s3://{self.bucket}/{self.prefix}".rstrip("/"))

    def __repr__(self) -> str:
        endpoint = f", endpoint_url={redact(self.endpoint_url)!r}" if self.endpoint_url else ""
        return f"S3Site({self.url!r}{endpoint})"

    @property
    def client(self) -> str:
        """The transport's name: ``"wire"``, ``"obstore"`` or ``"botocore"``."""
        return self.transport.name

    @property
    def supports_cas(self) -> bool:
        if self._cas is None:
            self._cas = probe_cas(self)
        return self._cas

    def close(self) -> None:
        self.transport.close()

    # ----- plumbing

    def _s3key(self, key: str) -> str:
        return join_key(self.prefix, validate_key(key))

    def _error(self, exc: BaseException, op: str, key: str) -> HyperslabError:
        return site_error(
            exc, op=op, key=key, url=self.url, bucket=self.bucket, endpoint_url=self.endpoint_url
        )

    def _call(self, op: str, key: str, fn: Callable[[], _T]) -> _T:
        """One blocking transport call, its failures as our errors."""
        try:
            return fn()
        except HyperslabError:
            raise
        except Exception as exc:
            raise self._error(exc, op, key) from exc

    async def _acall(self, op: str, key: str, coro: Awaitable[_T]) -> _T:
        """:meth:`_call` for a coroutine awaited on :attr:`io_loop`."""
        try:
            return await coro
        except HyperslabError:
            raise
        except Exception as exc:
            raise self._error(exc, op, key) from exc

    def _run(self, op: str, key: str, fn: Callable[[], Awaitable[_T]]) -> _T:
        """Run a coroutine on the IO loop from blocking code and wait for it."""
        from fsspec.asyn import sync

        try:
            return sync(self.io_loop, fn)
        except HyperslabError:
            raise
        except Exception as exc:
            raise self._error(exc, op, key) from exc

    async def _aget_range(self, key: str, start: int, length: int) -> bytes:
        check_range(key, start, length)
        s3key = self._s3key(key)
        t = self.transport
        if length == 0:
            info = await self._acall("head", key, t.ahead(s3key))
            if start > info.size:
                raise range_error(key, self.url, start, length, info.size)
            return b""
        try:
            got = await self._acall("get range of", key, t.aget(s3key, start, length))
        except BadInputError as exc:
            if exc.details.get("s3_code") not in RANGE_CODES:
                raise
            info = await self._acall("head", key, t.ahead(s3key))
            raise range_error(key, self.url, start, length, info.size) from None
        if len(got.data) != length:
            raise range_error(key, self.url, start, length, got.total or 0)
        return bytes(got.data)

    # ----- reads

    def get(self, key: str) -> bytes:
        s3key = self._s3key(key)
        return self._call("get", key, lambda: self.transport.get(s3key)).data

    def get_range(self, key: str, start: int, length: int) -> bytes:
        return self._run("get range of", key, lambda: self._aget_range(key, start, length))

    def get_with_etag(self, key: str) -> tuple[bytes, str]:
        """One GET: the response's ETag describes its body."""
        s3key = self._s3key(key)
        got = self._call("get", key, lambda: self.transport.get(s3key))
        return got.data, got.etag

    def get_ranges(self, ranges: Sequence[tuple[str, int, int]]) -> list[bytes]:
        ranges = list(ranges)
        for key, start, length in ranges:
            validate_key(key)
            check_range(key, start, length)
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
        s3key = self._s3key(key)
        return self._call("head", key, lambda: self.transport.head(s3key))

    def list(self, prefix: str = "") -> Iterator[str]:
        validate_prefix(prefix)
        full = (
            join_key(self.prefix, prefix) if prefix else (self.prefix + "/" if self.prefix else "")
        )
        cut = len(self.prefix) + 1 if self.prefix else 0
        keys = self._call("list", prefix, partial(self.transport.list, full))
        end = ""  # no key is empty
        while raw := self._call("list", prefix, partial(next, keys, end)):
            key = raw[cut:]
            try:
                validate_key(key)
            except UnsafeNameError:
                # Written by some other tool (directory markers, '//' ...): not ours.
                log.debug("skipping unaddressable object %r at %s", key, self.url)
                continue
            yield key

    # ----- writes

    def put(self, key: str, data: bytes) -> None:
        s3key = self._s3key(key)
        self._call("put", key, lambda: self.transport.put(s3key, data, {}))

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
        digest = _md5(data)
        s3key = self._s3key(key)
        etag = self._call("put", key, lambda: self.transport.put(s3key, data, _md5_header(digest)))
        if not self._etag_verifies(key, etag, digest) and self.get(key) != data:
            raise self._not_stored(key, "bytes read back differ from the upload")

    def put_file(self, key: str, path: Path | str) -> None:
        """Upload a local file; large ones in parts (the object appears when all landed)."""
        s3key = self._s3key(key)
        self._call("upload", key, lambda: self.transport.upload_file(s3key, Path(path)))

    def put_file_verified(self, key: str, path: Path | str, sha256: str) -> None:
        """Upload, then compare the ETag with the MD5 (multipart: MD5 of part MD5s) of the
        file as the transport split it; read the object back only if the ETag is not an MD5."""
        path = Path(path)
        self.put_file(key, path)
        expected = multipart_etag(path, self.transport.part_size(path.stat().st_size))
        etag = self.head(key).etag.strip('"')
        if etag == expected:
            return
        if _PLAIN_ETAG.match(etag) or _MULTIPART_ETAG.match(etag):
            raise self._not_stored(key, f"ETag {etag} differs from the file's {expected}")
        digest, _ = self.sha256(key)
        if digest != sha256:
            raise self._not_stored(key, "sha256 of the stored object differs from the file's")

    def put_if_match(self, key: str, data: bytes, expected_etag: str | None) -> str:
        cond = {"if-none-match": "*"} if expected_etag is None else {"if-match": expected_etag}
        what = "create" if expected_etag is None else "conditional write of"
        s3key = self._s3key(key)
        try:
            return self._call("put", key, lambda: self.transport.put(s3key, data, cond))
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

    def delete(self, key: str) -> None:
        s3key = self._s3key(key)
        self._call("delete", key, lambda: self.transport.delete(s3key))

    # ----- coroutines for callers on the IO loop (sync's copy runs there)

    @property
    def io_loop(self) -> asyncio.AbstractEventLoop:
        """The event loop this site's coroutines run on (shared by every S3 site)."""
        return self.transport.io_loop

    async def aget(self, key: str) -> bytes:
        got = await self._acall("get", key, self.transport.aget(self._s3key(key)))
        return got.data

    async def aput_verified(self, key: str, data: bytes) -> None:
        if len(data) > 1 << 20:  # off the IO loop: other requests go on meanwhile
            digest = await asyncio.to_thread(_md5, data)
        else:
            digest = _md5(data)
        s3key = self._s3key(key)
        etag = await self._acall("put", key, self.transport.aput(s3key, data, _md5_header(digest)))
        if not self._etag_verifies(key, etag, digest):
            got = await self._acall("get", key, self.transport.aget(s3key))
            if got.data != data:
                raise self._not_stored(key, "bytes read back differ from the upload")

    # ----- streaming copies: one GET piped into one PUT

    @property
    def supports_streaming(self) -> bool:
        return self.transport.supports_streaming

    @contextlib.asynccontextmanager
    async def aget_stream(self, key: str) -> AsyncIterator[tuple[int, AsyncIterator[bytes]]]:
        s3key = self._s3key(key)
        opened = False
        try:
            async with self.transport.aopen_get(s3key) as (size, blocks):
                opened = True
                yield size, blocks
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
        sha, md5 = hashlib.sha256(), _md5(b"")
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
            etag = await self.transport.aput_stream(s3key, size, body(), sha256)
        except Exception as exc:
            cause = failed[0] if failed else exc
            if isinstance(cause, HyperslabError):
                raise cause from exc
            raise self._error(cause, "get" if failed else "put", key) from exc
        if not self._etag_verifies(key, etag, md5):
            digest, _ = await asyncio.to_thread(self.sha256, key)
            if digest != sha256:
                raise self._not_stored(key, "sha256 of the stored object differs")
