"""hyperslab's own S3 client: SigV4-signed requests without botocore's request pipeline.

botocore spends about 1.25 ms of CPU on every request (parameter validation, the
endpoint rule set, event hooks, response parsing), and importing aiobotocore costs
0.4 s, because it pulls in aiohttp and httpx. A replication job that copies
thousands of small immutable objects, or compares two branch heads and stops, is
bound by exactly that. This module speaks the handful of S3 calls hyperslab needs
(GET, ranged GET, HEAD, PUT with Content-MD5 or a condition, DELETE,
ListObjectsV2, multipart uploads) directly, signed by :mod:`.auth`:

* **Two ways to send, one request model**: :meth:`S3Wire.request` blocks on a
  per-thread keep-alive :mod:`http.client` connection (nothing heavy to import:
  a one-shot ``hyperslab sync`` that only compares heads never imports aiohttp
  or botocore); :meth:`S3Wire.arequest` is a coroutine on an aiohttp session of
  the running loop (the bulk copy and concurrent range reads).
* **Retries**: connection failures, 5xx, ``SlowDown`` and ``RequestTimeout``
  are retried with exponential backoff and jitter, ``retries`` attempts in all;
  a keep-alive connection the server closed meanwhile is reopened at once.
* **Region**: a reply naming another region in ``x-amz-bucket-region`` re-signs
  the request for that region (AWS buckets outside ``us-east-1`` with no region
  configured).

Failures raise :class:`~.transport.S3ErrorReply` (the server's ``<Error>``) or
:class:`~.transport.S3Unreachable` (no answer after the retries);
:class:`WireTransport` is this client behind the :class:`~.transport.Transport`
interface.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import hashlib
import os
import random
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import urlsplit

from hyperslab.storage.s3.auth import CredentialSource, sign_v4, uri_encode
from hyperslab.storage.s3.transport import (
    Fetched,
    S3ErrorReply,
    S3Unreachable,
    Transport,
    TransportSettings,
)
from hyperslab.storage.site import ObjectInfo

__all__ = [
    "EMPTY_SHA256",
    "Response",
    "S3Wire",
    "WireTransport",
    "aclose_session",
    "parse_list_page",
]

EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
_S3_NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"
_RETRY_STATUS = {500, 502, 503, 504}
_RETRY_CODES = {"SlowDown", "RequestTimeout", "InternalError", "ServiceUnavailable", "Throttling"}


@dataclass
class Response:
    status: int
    headers: Mapping[str, str]  # lower-case names
    body: bytes

    def header(self, name: str, default: str = "") -> str:
        return self.headers.get(name, default)


def _error_fields(body: bytes) -> dict[str, str]:
    """The child elements of an S3 ``<Error>`` document ({} if the body is not one)."""
    if not body.lstrip().startswith(b"<"):
        return {}
    try:
        root = ET.fromstring(body)
    except ET.ParseError:
        return {}
    return {child.tag.rpartition("}")[2]: (child.text or "") for child in root}


def parse_list_page(body: bytes) -> tuple[list[tuple[str, int]], str | None]:
    """``(key, size)`` pairs and the continuation token of a ListObjectsV2 page."""
    from urllib.parse import unquote_plus

    root = ET.fromstring(body)
    url_encoded = (root.findtext(f"{_S3_NS}EncodingType") or "").lower() == "url"
    out = []
    for item in root.iterfind(f"{_S3_NS}Contents"):
        key = item.findtext(f"{_S3_NS}Key") or ""
        out.append(
            (unquote_plus(key) if url_encoded else key, int(item.findtext(f"{_S3_NS}Size") or 0))
        )
    truncated = (root.findtext(f"{_S3_NS}IsTruncated") or "").lower() == "true"
    return out, (root.findtext(f"{_S3_NS}NextContinuationToken") if truncated else None)


def _give_up(error: BaseException) -> NoReturn:
    """Raise what a request's last attempt got: the server's error reply, or
    S3Unreachable for a connection that failed or timed out."""
    if isinstance(error, S3ErrorReply):
        raise error
    raise S3Unreachable(f"{type(error).__name__}: {error}") from error


class _Retry(Exception):
    """Internal: the attempt failed in a way worth retrying (carries the final error)."""

    def __init__(self, error: BaseException, immediately: bool = False) -> None:
        self.error = error
        self.immediately = immediately


class S3Wire:
    """Signed requests to one bucket of one endpoint (path-style for custom endpoints,
    virtual-hosted for AWS). Thread-safe; usable from any number of threads and loops.
    """

    def __init__(
        self,
        bucket: str,
        endpoint_url: str | None = None,
        region: str | None = None,
        credentials: CredentialSource | None = None,
        *,
        retries: int = 5,
        connect_timeout: float = 10.0,
        read_timeout: float = 60.0,
    ) -> None:
        endpoint_url = (
            endpoint_url
            or os.environ.get("AWS_ENDPOINT_URL_S3")
            or os.environ.get("AWS_ENDPOINT_URL")
        )
        self.bucket = bucket
        self.region = (
            region
            or os.environ.get("AWS_REGION")
            or os.environ.get("AWS_DEFAULT_REGION")
            or "us-east-1"
        )
        self.credentials = credentials or CredentialSource()
        self.retries = max(1, int(retries))
        self.connect_timeout = float(connect_timeout)
        self.read_timeout = float(read_timeout)
        self._custom = endpoint_url is not None
        if endpoint_url is not None:
            parts = urlsplit(endpoint_url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError(f"bad S3 endpoint URL {endpoint_url!r}")
            self.scheme = parts.scheme
            self._host = parts.hostname
            self._port = parts.port
            self._base = parts.path.rstrip("/")
        else:
            self.scheme = "https"
            self._port = None
            self._base = ""
            self._host = ""
        self._local = threading.local()
        self._ssl: Any = None

    # ----- addressing

    def _target(self, key: str) -> tuple[str, int | None, str]:
        """``(host, port, encoded path)`` of ``key`` (``""``: the bucket itself)."""
        if self._custom:
            path = f"{self._base}/{self.bucket}" + (f"/{uri_encode(key)}" if key else "")
            return self._host, self._port, path
        host = f"{self.bucket}.s3.{self.region}.amazonaws.com"
        if "." in self.bucket:  # dotted names break TLS on virtual hosts
            return f"s3.{self.region}.amazonaws.com", None, f"/{self.bucket}/{uri_encode(key)}"
        return host, None, "/" + uri_encode(key)

    def _prepare(
        self,
        method: str,
        key: str,
        query: list[tuple[str, str]],
        headers: dict[str, str] | None,
        body_sha: str,
    ) -> tuple[str, int | None, str, dict[str, str]]:
        host, port, path = self._target(key)
        default = 443 if self.scheme == "https" else 80
        host_header = host if port in (None, default) else f"{host}:{port}"
        hdrs = dict(headers or {})
        creds = self.credentials.get()
        if creds is None:
            hdrs["host"] = host_header
            hdrs["x-amz-content-sha256"] = body_sha
        else:
            amz_date = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
            sign_v4(method, host_header, path, query, hdrs, body_sha, creds, self.region, amz_date)
        if query:
            path += "?" + "&".join(f"{uri_encode(k, '')}={uri_encode(v, '')}" for k, v in query)
        return host, port, path, hdrs

    def _ssl_context(self) -> Any:
        if self._ssl is None:
            import ssl

            self._ssl = ssl.create_default_context(cafile=os.environ.get("AWS_CA_BUNDLE") or None)
        return self._ssl

    # ----- outcome of one attempt

    def _judge(self, method: str, resp: Response, ok: Iterable[int]) -> Response:
        if resp.status in ok:
            return resp
        fields = _error_fields(resp.body)
        err = S3ErrorReply(resp.status, fields.get("Code", ""), fields.get("Message", ""), method)
        region = resp.header("x-amz-bucket-region")
        if region and region != self.region and resp.status in (301, 307, 400, 403):
            self.region = region
            raise _Retry(err, immediately=True)
        if resp.status in _RETRY_STATUS or err.code in _RETRY_CODES:
            raise _Retry(err)
        raise err

    def _backoff(self, attempt: int) -> float:
        return min(0.1 * 2**attempt, 5.0) * (0.5 + random.random() / 2)

    @staticmethod
    def _body_sha(body: bytes, body_sha: str | None) -> str:
        if body_sha is not None:
            return body_sha
        return hashlib.sha256(body).hexdigest() if body else EMPTY_SHA256

    # ----- blocking transport (http.client, one keep-alive connection per thread)

    def _connection(self, host: str, port: int | None) -> Any:
        import http.client

        local = self._local
        pid = os.getpid()
        conn = getattr(local, "conn", None)
        if conn is not None and getattr(local, "pid", None) == pid and local.target == (host, port):
            return conn
        if conn is not None and getattr(local, "pid", None) == pid:
            conn.close()  # another host (region switch): never reuse a forked parent's socket
        if self.scheme == "https":
            conn = http.client.HTTPSConnection(
                host, port, timeout=self.connect_timeout, context=self._ssl_context()
            )
        else:
            conn = http.client.HTTPConnection(host, port, timeout=self.connect_timeout)
        local.conn, local.pid, local.target = conn, pid, (host, port)
        return conn

    def _drop_connection(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None and getattr(self._local, "pid", None) == os.getpid():
            conn.close()
        self._local.conn = None

    def request(
        self,
        method: str,
        key: str = "",
        *,
        query: list[tuple[str, str]] | None = None,
        headers: dict[str, str] | None = None,
        body: bytes = b"",
        body_sha: str | None = None,
        ok: Iterable[int] = (200, 204, 206),
    ) -> Response:
        """One request, retried as the class doc says; raises S3ErrorReply, or
        S3Unreachable when the attempts are used up without an answer."""
        import http.client

        sha = self._body_sha(body, body_sha)
        attempt = 0
        reopened = False
        while True:
            host, port, path, hdrs = self._prepare(method, key, query or [], headers, sha)
            conn = self._connection(host, port)
            fresh = conn.sock is None
            try:
                conn.request(method, path, body=body or None, headers=hdrs)
                if conn.sock is not None:
                    conn.sock.settimeout(self.read_timeout)
                raw = conn.getresponse()
                data = raw.read()
                resp = Response(raw.status, {k.lower(): v for k, v in raw.getheaders()}, data)
                return self._judge(method, resp, ok)
            except _Retry as retry:
                error: BaseException = retry.error
                if retry.immediately:
                    continue
            except (OSError, http.client.HTTPException) as exc:
                self._drop_connection()
                if not fresh and not reopened:  # the server closed an idle keep-alive socket
                    reopened = True
                    continue
                error = exc
            attempt += 1
            if attempt >= self.retries:
                _give_up(error)
            time.sleep(self._backoff(attempt))

    # ----- coroutine transport (aiohttp, one session per event loop)

    def _aio_target(
        self,
        method: str,
        key: str,
        query: list[tuple[str, str]],
        headers: dict[str, str] | None,
        body_sha: str,
    ) -> tuple[Any, dict[str, str]]:
        """The signed request's URL (a yarl URL, already encoded) and headers."""
        from yarl import URL

        host, port, path, hdrs = self._prepare(method, key, query, headers, body_sha)
        netloc = host if port is None else f"{host}:{port}"
        return URL(f"{self.scheme}://{netloc}{path}", encoded=True), hdrs

    def _aio_options(self) -> dict[str, Any]:
        import aiohttp

        return {
            "timeout": aiohttp.ClientTimeout(
                sock_connect=self.connect_timeout, sock_read=self.read_timeout
            ),
            "ssl": self._ssl_context() if self.scheme == "https" else False,
        }

    async def arequest(
        self,
        method: str,
        key: str = "",
        *,
        query: list[tuple[str, str]] | None = None,
        headers: dict[str, str] | None = None,
        body: bytes | AsyncIterator[bytes] = b"",
        body_sha: str | None = None,
        ok: Iterable[int] = (200, 204, 206),
    ) -> Response:
        """:meth:`request` as a coroutine on the running loop. ``body`` may also be an
        async iterator of blocks (with ``body_sha`` and a ``content-length`` header):
        it is sent once, and an exception it raises aborts the request, so the server
        never completes the object."""
        import aiohttp

        if isinstance(body, bytes):
            streamed = False
            if body_sha is None and len(body) > 1 << 20:  # big bodies hash off the loop
                body_sha = await asyncio.to_thread(self._body_sha, body, None)
            sha = self._body_sha(body, body_sha)
        else:  # an async iterator of blocks: sent once, never replayed
            streamed = True
            if body_sha is None or "content-length" not in (headers or {}):
                raise ValueError("a streamed body needs body_sha and a content-length header")
            sha = body_sha
        retries = 1 if streamed else self.retries
        session, options = _session(), self._aio_options()
        attempt = 0
        while True:
            url, hdrs = self._aio_target(method, key, query or [], headers, sha)
            try:
                async with session.request(
                    method, url, headers=hdrs, data=body or None, **options
                ) as raw:
                    data = await raw.read()
                    resp = Response(
                        raw.status, {k.lower(): v for k, v in raw.headers.items()}, data
                    )
                return self._judge(method, resp, ok)
            except _Retry as retry:
                error: BaseException = retry.error
                if retry.immediately:
                    continue
            except (TimeoutError, OSError, aiohttp.ClientError) as exc:
                error = exc
            attempt += 1
            if attempt >= retries:
                _give_up(error)
            await asyncio.sleep(self._backoff(attempt))

    @contextlib.asynccontextmanager
    async def aopen(
        self,
        method: str,
        key: str = "",
        *,
        headers: dict[str, str] | None = None,
        ok: Iterable[int] = (200, 206),
    ) -> AsyncIterator[tuple[Response, Any]]:
        """A request whose reply body the caller streams: yields ``(reply without body,
        aiohttp StreamReader)``. Retried like :meth:`arequest` until the reply arrives."""
        import aiohttp

        session, options = _session(), self._aio_options()
        attempt = 0
        while True:
            url, hdrs = self._aio_target(method, key, [], headers, EMPTY_SHA256)
            try:
                raw = await session.request(method, url, headers=hdrs, **options)
            except (TimeoutError, OSError, aiohttp.ClientError) as exc:
                error: BaseException = exc
            else:
                head = Response(raw.status, {k.lower(): v for k, v in raw.headers.items()}, b"")
                if raw.status in ok:
                    try:
                        yield head, raw.content
                    finally:
                        raw.release()
                    return
                try:
                    head.body = await raw.read()
                    self._judge(method, head, ok)
                except _Retry as retry:
                    error = retry.error
                    if retry.immediately:
                        continue
                finally:
                    raw.release()
            attempt += 1
            if attempt >= self.retries:
                _give_up(error)
            await asyncio.sleep(self._backoff(attempt))

    # ----- lifecycle

    def close_blocking(self) -> None:
        """Close this thread's connection (other threads' close when they are collected)."""
        self._drop_connection()


# One aiohttp session per event loop and process, shared by every S3Wire: connections
# to the same endpoint are reused across sites, and no site has a session to leak.
_sessions: dict[tuple[int, int], tuple[asyncio.AbstractEventLoop, Any]] = {}
_sessions_lock = threading.Lock()
MAX_CONNECTIONS = 128


def _session() -> Any:
    import aiohttp

    loop = asyncio.get_running_loop()
    key = (os.getpid(), id(loop))
    entry = _sessions.get(key)
    if entry is not None and entry[0] is loop and not entry[1].closed:
        return entry[1]
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=MAX_CONNECTIONS),
        auto_decompress=False,
        skip_auto_headers=("Accept-Encoding", "Content-Type", "User-Agent"),
    )
    with _sessions_lock:
        for k in [k for k, (other, _) in _sessions.items() if other.is_closed()]:
            del _sessions[k]  # loops that are gone (asyncio.run in a script or a test)
        _sessions[key] = (loop, session)
        if len(_sessions) == 1:
            atexit.register(_close_sessions)
    return session


async def aclose_session() -> None:
    """Close the shared session of the running loop (before closing a loop of one's own)."""
    loop = asyncio.get_running_loop()
    with _sessions_lock:
        entry = _sessions.pop((os.getpid(), id(loop)), None)
    if entry is not None and entry[0] is loop:
        await entry[1].close()


def _close_sessions() -> None:
    """At exit: close the sessions whose loops still run (so aiohttp has nothing to warn about)."""
    with _sessions_lock:
        entries = [e for k, e in _sessions.items() if k[0] == os.getpid()]
        _sessions.clear()
    for loop, session in entries:
        if loop.is_running() and not loop.is_closed():
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(session.close(), loop).result(timeout=5)


# --------------------------------------------------------------------------- the transport


def _content_range_size(value: str | None) -> int | None:
    total = str(value or "").rpartition("/")[2]
    return int(total) if total.isdigit() else None


def _range_header(start: int | None, length: int | None) -> dict[str, str]:
    if start is None or length is None:
        return {}
    return {"range": f"bytes={start}-{start + length - 1}"}


def _fetched(r: Response, start: int | None, length: int | None) -> Fetched:
    data, total = r.body, _content_range_size(r.header("content-range"))
    if start is not None and length is not None and r.status == 200:
        total, data = len(data), data[start : start + length]  # a server that ignores Range
    return Fetched(data, r.header("etag"), total)


def _object_info(r: Response) -> ObjectInfo:
    from datetime import UTC, datetime
    from email.utils import parsedate_to_datetime

    try:
        mtime = parsedate_to_datetime(r.header("last-modified"))
    except (TypeError, ValueError):
        mtime = datetime.now(UTC)
    return ObjectInfo(int(r.header("content-length", "0")), r.header("etag"), mtime)


class WireTransport(Transport):
    """:class:`S3Wire` behind the transport interface; its coroutines run on fsspec's IO
    loop thread, shared with every other S3 site of the process."""

    name = "wire"
    supports_streaming = True

    def __init__(self, settings: TransportSettings) -> None:
        options = {
            name: getattr(settings, name)
            for name in ("retries", "connect_timeout", "read_timeout")
            if getattr(settings, name) is not None
        }
        self.wire = S3Wire(
            settings.bucket,
            settings.endpoint_url,
            settings.region,
            CredentialSource(settings.profile, settings.anon),
            **options,
        )

    @property
    def io_loop(self) -> asyncio.AbstractEventLoop:
        from fsspec.asyn import get_loop

        return get_loop()

    # ----- blocking
    def get(self, key: str, start: int | None = None, length: int | None = None) -> Fetched:
        r = self.wire.request("GET", key, headers=_range_header(start, length))
        return _fetched(r, start, length)

    def head(self, key: str) -> ObjectInfo:
        return _object_info(self.wire.request("HEAD", key))

    def put(self, key: str, data: bytes, headers: Mapping[str, str]) -> str:
        return self.wire.request("PUT", key, body=data, headers=dict(headers)).header("etag")

    def delete(self, key: str) -> None:
        self.wire.request("DELETE", key)

    def list(self, prefix: str) -> Iterator[str]:
        token: str | None = None
        while True:
            query = [("list-type", "2"), ("prefix", prefix), ("encoding-type", "url")]
            if token:
                query.append(("continuation-token", token))
            items, token = parse_list_page(self.wire.request("GET", "", query=query).body)
            yield from (k for k, _ in items)
            if not token:
                return

    def upload_file(self, key: str, path: Path) -> str:
        part = self.part_size(path.stat().st_size)
        if part is None:
            return self.put(key, path.read_bytes(), {})
        return _multipart_upload(self.wire, key, path, part)

    # ----- coroutines
    async def aget(self, key: str, start: int | None = None, length: int | None = None) -> Fetched:
        r = await self.wire.arequest("GET", key, headers=_range_header(start, length))
        return _fetched(r, start, length)

    async def ahead(self, key: str) -> ObjectInfo:
        return _object_info(await self.wire.arequest("HEAD", key))

    async def aput(self, key: str, data: bytes, headers: Mapping[str, str]) -> str:
        r = await self.wire.arequest("PUT", key, body=data, headers=dict(headers))
        return r.header("etag")

    @contextlib.asynccontextmanager
    async def aopen_get(self, key: str) -> AsyncIterator[tuple[int, AsyncIterator[bytes]]]:
        async with self.wire.aopen("GET", key) as (head, content):
            yield int(head.header("content-length", "0")), content.iter_chunked(STREAM_BLOCK)

    async def aput_stream(
        self, key: str, size: int, body: AsyncIterator[bytes], sha256: str
    ) -> str:
        r = await self.wire.arequest(
            "PUT", key, body=body, body_sha=sha256, headers={"content-length": str(size)}
        )
        return r.header("etag")

    def close(self) -> None:
        self.wire.close_blocking()


#: block size of streamed GETs (:meth:`WireTransport.aopen_get`)
STREAM_BLOCK = 1 << 20


def _xml_text(body: bytes, name: str) -> str:
    """The text of the first element called ``name`` in an S3 reply, whether or not the
    server puts its elements in S3's namespace (s3rver does not, in multipart replies)."""
    try:
        root = ET.fromstring(body)
    except ET.ParseError:
        return ""
    for element in root.iter():
        if element.tag.rpartition("}")[2] == name:
            return element.text or ""
    return ""


def _multipart_upload(wire: S3Wire, key: str, path: Path, part_size: int) -> str:
    """Upload ``path`` in parts of ``part_size``: the object appears when the last call
    completes it; any failure aborts the upload, so no parts are left to pay for."""
    from xml.sax.saxutils import escape

    created = wire.request("POST", key, query=[("uploads", "")])
    upload_id = _xml_text(created.body, "UploadId")
    if not upload_id:
        raise S3ErrorReply(created.status, "MalformedReply", "no UploadId in the reply", "POST")
    done: list[tuple[int, str]] = []
    try:
        with open(path, "rb") as fh:
            while block := fh.read(part_size):
                n = len(done) + 1
                query = [("partNumber", str(n)), ("uploadId", upload_id)]
                done.append((n, wire.request("PUT", key, query=query, body=block).header("etag")))
        body = (
            "<CompleteMultipartUpload>"
            + "".join(
                f"<Part><PartNumber>{n}</PartNumber><ETag>{escape(etag)}</ETag></Part>"
                for n, etag in done
            )
            + "</CompleteMultipartUpload>"
        ).encode()
        completed = wire.request("POST", key, query=[("uploadId", upload_id)], body=body)
        fields = _error_fields(completed.body)  # S3 may report a failure with status 200
        if "Code" in fields:
            raise S3ErrorReply(completed.status, fields["Code"], fields.get("Message", ""), "POST")
        return _xml_text(completed.body, "ETag")
    except BaseException:
        with contextlib.suppress(Exception):
            wire.request("DELETE", key, query=[("uploadId", upload_id)])
        raise
