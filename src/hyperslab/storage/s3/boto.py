"""The botocore transport: every S3 call through aiobotocore's public client API.

For sites whose ``options`` hold settings only botocore understands
(``client_kwargs``, ``config_kwargs`` beyond timeouts and retries,
``s3_additional_kwargs``, ``requester_pays``, ``use_ssl``), or when
``HYPERSLAB_S3_CLIENT=botocore``. The names and meanings are s3fs's, so a
``[sites.NAME.options]`` table written for s3fs keeps working; any other option is
refused by name. The client is created on fsspec's IO loop thread (where every
call runs) when the site opens, so bad options fail there, not on first use.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import weakref
from collections.abc import Awaitable, Callable, Iterator, Mapping
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from hyperslab.errors import ConfigError
from hyperslab.storage.s3.transport import (
    Fetched,
    S3ErrorReply,
    S3NoCredentials,
    S3Unreachable,
    Transport,
    TransportSettings,
)
from hyperslab.storage.site import ObjectInfo

__all__ = ["BOTOCORE_OPTIONS", "BotocoreTransport"]

#: site ``options`` this transport understands (s3fs's names)
BOTOCORE_OPTIONS = frozenset(
    {
        "retries",
        "config_kwargs",
        "client_kwargs",
        "s3_additional_kwargs",
        "requester_pays",
        "use_ssl",
    }
)
_T = TypeVar("_T")
_PUT_HEADERS = {"content-md5": "ContentMD5", "if-none-match": "IfNoneMatch", "if-match": "IfMatch"}

_loader_lock = threading.Lock()
_loader: list[Any] = []


def _session(profile: str | None) -> Any:
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


class BotocoreTransport(Transport):
    """S3 calls through one aiobotocore client, created on the IO loop."""

    name = "botocore"

    def __init__(self, settings: TransportSettings, options: Mapping[str, Any]) -> None:
        unknown = sorted(set(options) - BOTOCORE_OPTIONS)
        if unknown:
            raise ConfigError(
                f"S3 site options {', '.join(unknown)} are not supported; use "
                + ", ".join(sorted(BOTOCORE_OPTIONS))
            )
        self.settings = settings
        self.bucket = settings.bucket
        self._options = dict(options)
        self._extra = dict(options.get("s3_additional_kwargs") or {})
        if options.get("requester_pays"):
            self._extra["RequestPayer"] = "requester"
        self._client: Any = None
        self._finalizer: weakref.finalize[Any, Any] | None = None
        self._run(self._open)  # bad options fail here, not on first use

    @property
    def io_loop(self) -> asyncio.AbstractEventLoop:
        from fsspec.asyn import get_loop

        return get_loop()

    def _run(self, fn: Callable[[], Awaitable[_T]]) -> _T:
        from fsspec.asyn import sync

        return sync(self.io_loop, fn)

    async def _open(self) -> Any:
        if self._client is not None:
            return self._client
        from aiobotocore.config import AioConfig
        from botocore import UNSIGNED

        config = dict(self._options.get("config_kwargs") or {})
        if self._options.get("retries") is not None and "retries" not in config:
            config["retries"] = {"total_max_attempts": max(1, int(self._options["retries"]))}
        if self.settings.anon:
            config["signature_version"] = UNSIGNED
        client_kwargs = dict(self._options.get("client_kwargs") or {})
        if self.settings.region:
            client_kwargs.setdefault("region_name", self.settings.region)
        if self.settings.endpoint_url:
            client_kwargs.setdefault("endpoint_url", self.settings.endpoint_url)
        if self._options.get("use_ssl") is not None:
            client_kwargs.setdefault("use_ssl", bool(self._options["use_ssl"]))
        stack = contextlib.AsyncExitStack()
        try:
            creator = _session(self.settings.profile).create_client(
                "s3", config=AioConfig(**config), **client_kwargs
            )
            self._client = await stack.enter_async_context(creator)
            # a site nobody closes still closes its client (and its connections) when
            # collected; each client opened (again after close()) has its own
            self._finalizer = weakref.finalize(self, _close_stack, stack, self.io_loop)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"S3 site options: {exc}") from exc
        except Exception as exc:
            raise _failure(exc) from exc
        return self._client

    async def _call(self, operation: str, **params: Any) -> Any:
        """One S3 operation with the site's extra arguments (those it accepts)."""
        client = await self._open()
        model = client.meta.service_model.operation_model(operation)
        accepted = model.input_shape.members if model.input_shape is not None else {}
        params.update({k: v for k, v in self._extra.items() if k in accepted})
        method = getattr(client, _snake(operation))  # botocore generates one method per operation
        try:
            return await method(Bucket=self.bucket, **params)
        except Exception as exc:
            raise _failure(exc) from exc

    # ----- coroutines
    async def aget(self, key: str, start: int | None = None, length: int | None = None) -> Fetched:
        params: dict[str, Any] = {"Key": key}
        if start is not None and length is not None:
            params["Range"] = f"bytes={start}-{start + length - 1}"
        resp = await self._call("GetObject", **params)
        body = resp["Body"]
        try:
            data: bytes = await body.read()
        except Exception as exc:
            raise _failure(exc) from exc
        finally:
            body.close()
        total = str(resp.get("ContentRange") or "").rpartition("/")[2]
        return Fetched(data, str(resp.get("ETag", "")), int(total) if total.isdigit() else None)

    async def ahead(self, key: str) -> ObjectInfo:
        out = await self._call("HeadObject", Key=key)
        mtime = out.get("LastModified")
        if not isinstance(mtime, datetime):
            mtime = datetime.now(UTC)
        return ObjectInfo(size=int(out["ContentLength"]), etag=str(out["ETag"]), mtime=mtime)

    async def aput(self, key: str, data: bytes, headers: Mapping[str, str]) -> str:
        params = {_PUT_HEADERS[k]: v for k, v in headers.items()}
        out = await self._call("PutObject", Key=key, Body=data, **params)
        return str(out.get("ETag", ""))

    async def _adelete(self, key: str) -> None:
        await self._call("DeleteObject", Key=key)

    async def _alist_page(self, prefix: str, token: str | None) -> tuple[list[str], str | None]:
        params: dict[str, Any] = {"Prefix": prefix}
        if token:
            params["ContinuationToken"] = token
        page = await self._call("ListObjectsV2", **params)
        keys = [str(obj["Key"]) for obj in page.get("Contents", [])]
        return keys, (page.get("NextContinuationToken") if page.get("IsTruncated") else None)

    async def _aupload_file(self, key: str, path: Path) -> str:
        part = self.part_size(path.stat().st_size)
        if part is None:
            data = await asyncio.to_thread(path.read_bytes)
            return await self.aput(key, data, {})
        created = await self._call("CreateMultipartUpload", Key=key)
        upload_id = created["UploadId"]
        parts: list[dict[str, Any]] = []
        try:
            with open(path, "rb") as fh:
                while block := await asyncio.to_thread(fh.read, part):
                    n = len(parts) + 1
                    out = await self._call(
                        "UploadPart", Key=key, UploadId=upload_id, PartNumber=n, Body=block
                    )
                    parts.append({"PartNumber": n, "ETag": out["ETag"]})
            done = await self._call(
                "CompleteMultipartUpload",
                Key=key,
                UploadId=upload_id,
                MultipartUpload={"Parts": parts},
            )
            return str(done.get("ETag", ""))
        except BaseException:
            with contextlib.suppress(Exception):
                await self._call("AbortMultipartUpload", Key=key, UploadId=upload_id)
            raise

    # ----- blocking: the coroutines, run on the IO loop
    def get(self, key: str, start: int | None = None, length: int | None = None) -> Fetched:
        return self._run(lambda: self.aget(key, start, length))

    def head(self, key: str) -> ObjectInfo:
        return self._run(lambda: self.ahead(key))

    def put(self, key: str, data: bytes, headers: Mapping[str, str]) -> str:
        return self._run(lambda: self.aput(key, data, headers))

    def delete(self, key: str) -> None:
        self._run(lambda: self._adelete(key))

    def list(self, prefix: str) -> Iterator[str]:
        token: str | None = None
        while True:
            keys, token = self._run(partial(self._alist_page, prefix, token))
            yield from keys
            if not token:
                return

    def upload_file(self, key: str, path: Path) -> str:
        return self._run(lambda: self._aupload_file(key, path))

    def close(self) -> None:
        self._client = None
        if self._finalizer is not None:
            self._finalizer()


def _close_stack(stack: contextlib.AsyncExitStack, loop: asyncio.AbstractEventLoop) -> None:
    """Close a client's context on its loop, if that loop still runs."""
    from fsspec.asyn import sync

    if loop.is_running() and not loop.is_closed():
        with contextlib.suppress(Exception):
            sync(loop, stack.aclose, timeout=5)


def _snake(operation: str) -> str:
    """botocore's Python name of an operation (``GetObject`` → ``get_object``)."""
    from botocore import xform_name

    return str(xform_name(operation))


def _failure(exc: BaseException) -> BaseException:
    """botocore's and aiohttp's exceptions as the transport failures of :mod:`.transport`."""
    import botocore.exceptions as bx

    if isinstance(exc, bx.ClientError):
        err = exc.response.get("Error", {})
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        return S3ErrorReply(status, str(err.get("Code", "")), str(err.get("Message", "")))
    if isinstance(exc, bx.NoCredentialsError | bx.PartialCredentialsError | bx.ProfileNotFound):
        return S3NoCredentials(str(exc))
    if isinstance(exc, bx.BotoCoreError | OSError | TimeoutError) or _is_aiohttp_error(exc):
        return S3Unreachable(f"{type(exc).__name__}: {exc}")
    return exc


def _is_aiohttp_error(exc: BaseException) -> bool:
    import aiohttp

    return isinstance(exc, aiohttp.ClientError)
