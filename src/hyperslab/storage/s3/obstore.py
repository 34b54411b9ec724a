"""The obstore transport: S3 calls through Rust's ``object_store`` (obstore 0.12).

``HYPERSLAB_S3_CLIENT=obstore``. Requests, signing, retries and multipart uploads
run in Rust (tokio) with the GIL released. Where obstore's semantics differ from
what a site promises, this module or the site makes up for it:

* **Byte ranges**: obstore cuts a range that runs past the end of the object
  short; the site checks every length, so a short read is still an error naming the
  object's size.
* **Content-MD5**: obstore cannot send it (a ``Content-MD5`` attribute goes out as
  user metadata); the site compares the returned ETag with the MD5 of what it sent,
  as it does for every transport, and the body is protected on the way by the signed
  SHA-256 (``x-amz-content-sha256``), which obstore sends too.
* **Listings**: obstore lists whole path segments (``a/b`` never matches
  ``a/bc``); a site lists by string prefix, so the parent "directory" is listed from
  just before the prefix and filtered.
* **Errors**: missing objects are Python's ``FileNotFoundError``, everything else
  obstore's exception classes, and the S3 error code only appears in the message;
  :func:`_failure` reads it out.
* **No streamed single PUT**: obstore streams uploads only as multipart, whose ETag
  is no MD5, so :attr:`supports_streaming` is False and sync copies large objects
  through a temporary file with this transport.
* **Coroutines** are the blocking calls on worker threads: obstore's own asyncio
  bridge sometimes aborts the interpreter at exit, after the last line ran (SIGABRT,
  exit status 134; with obstore 0.12.1 here, 5 of 20 runs of 600 async calls under
  ``asyncio.run``, and 1 of 30 on fsspec's IO loop thread, which never closes). No
  command line may exit like that.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from hyperslab.storage.s3.auth import CredentialSource
from hyperslab.storage.s3.transport import (
    Fetched,
    S3ErrorReply,
    S3Failure,
    S3NoCredentials,
    S3Unreachable,
    Transport,
    TransportSettings,
)
from hyperslab.storage.site import ObjectInfo

__all__ = ["ObstoreTransport"]

_STATUS = re.compile(r"status code: (\d{3})")
_CODE = re.compile(r"<Code>([^<]+)</Code>")
_NO_ANSWER = ("error sending request", "connection", "timed out", "timeout", "dns error")


class ObstoreTransport(Transport):
    """One ``obstore.store.S3Store`` for the bucket; coroutines on fsspec's IO loop."""

    name = "obstore"

    def __init__(self, settings: TransportSettings) -> None:
        import os

        from obstore.store import S3Store

        self.settings = settings
        endpoint = (
            settings.endpoint_url
            or os.environ.get("AWS_ENDPOINT_URL_S3")
            or os.environ.get("AWS_ENDPOINT_URL")
        )
        client: dict[str, Any] = {}
        config: dict[str, Any] = {}
        if endpoint:
            config["endpoint"] = endpoint
            config["virtual_hosted_style_request"] = False
            client["allow_http"] = endpoint.startswith("http://")
        if settings.connect_timeout is not None:
            client["connect_timeout"] = f"{settings.connect_timeout}s"
        if settings.read_timeout is not None:
            client["timeout"] = f"{settings.read_timeout}s"
        retry: dict[str, Any] = {}
        if settings.retries is not None:
            retry["max_retries"] = max(0, settings.retries - 1)
        region = (
            settings.region
            or os.environ.get("AWS_REGION")
            or os.environ.get("AWS_DEFAULT_REGION")
            or "us-east-1"
        )
        kwargs: dict[str, Any] = {"region": region, "client_options": client, **config}
        if retry:
            kwargs["retry_config"] = retry
        if settings.anon:
            kwargs["skip_signature"] = True
        else:
            # the same credential chain as hyperslab's own client (environment, then
            # botocore's: profiles, SSO, roles), refreshed through obstore's provider hook
            kwargs["credential_provider"] = _Credentials(
                CredentialSource(settings.profile, settings.anon)
            )
        try:
            self.store = S3Store(settings.bucket, **kwargs)
        except Exception as exc:
            raise ValueError(f"obstore refused the site's settings: {exc}") from exc

    @property
    def io_loop(self) -> asyncio.AbstractEventLoop:
        from fsspec.asyn import get_loop

        return get_loop()

    # ----- blocking
    def get(self, key: str, start: int | None = None, length: int | None = None) -> Fetched:
        import obstore

        try:
            if start is None or length is None:
                result = obstore.get(self.store, key)
            else:
                result = obstore.get(self.store, key, options={"range": (start, start + length)})
            data = bytes(result.bytes())
        except Exception as exc:
            raise _failure(exc) from exc
        meta = result.meta
        return Fetched(data, str(meta["e_tag"] or ""), int(meta["size"]))

    def head(self, key: str) -> ObjectInfo:
        import obstore

        try:
            meta = obstore.head(self.store, key)
        except Exception as exc:
            raise _failure(exc) from exc
        mtime = meta["last_modified"]
        if not isinstance(mtime, datetime):
            mtime = datetime.now(UTC)
        return ObjectInfo(int(meta["size"]), str(meta["e_tag"] or ""), mtime)

    def put(self, key: str, data: bytes, headers: Mapping[str, str]) -> str:
        import obstore

        mode: Any = "overwrite"
        if headers.get("if-none-match") == "*":
            mode = "create"
        elif headers.get("if-match"):
            mode = {"e_tag": headers["if-match"]}
        try:
            result = obstore.put(self.store, key, data, mode=mode, use_multipart=False)
        except Exception as exc:
            raise _failure(exc) from exc
        return str(result["e_tag"] or "")

    def delete(self, key: str) -> None:
        import obstore

        try:
            obstore.delete(self.store, key)
        except Exception as exc:
            raise _failure(exc) from exc

    def list(self, prefix: str) -> Iterator[str]:
        import obstore

        parent = prefix.rpartition("/")[0]
        # start just before the prefix: every key that starts with it sorts after this
        offset = prefix[:-1] if len(prefix) > len(parent) + 1 else None
        try:
            stream = obstore.list(self.store, prefix=parent or None, offset=offset, chunk_size=1000)
            for batch in stream:
                for meta in batch:
                    path = str(meta["path"])
                    if path.startswith(prefix):
                        yield path
                    elif path > prefix:
                        return  # sorted: nothing further can match
        except Exception as exc:
            raise _failure(exc) from exc

    def upload_file(self, key: str, path: Path) -> str:
        import obstore

        part = self.part_size(Path(path).stat().st_size)
        try:
            result = obstore.put(
                self.store,
                key,
                Path(path),
                use_multipart=part is not None,
                chunk_size=part or 5 << 20,
                max_concurrency=4,
            )
        except Exception as exc:
            raise _failure(exc) from exc
        return str(result["e_tag"] or "")

    # ----- coroutines: the blocking calls on worker threads (see the module doc)
    async def aget(self, key: str, start: int | None = None, length: int | None = None) -> Fetched:
        return await asyncio.to_thread(self.get, key, start, length)

    async def ahead(self, key: str) -> ObjectInfo:
        return await asyncio.to_thread(self.head, key)

    async def aput(self, key: str, data: bytes, headers: Mapping[str, str]) -> str:
        return await asyncio.to_thread(self.put, key, data, headers)


class _Credentials:
    """obstore's credential provider: hyperslab's credential chain, asked on each refresh."""

    def __init__(self, source: CredentialSource) -> None:
        self.source = source

    def __call__(self) -> dict[str, Any]:
        creds = self.source.get()
        if creds is None:  # anonymous sites skip signing instead
            raise S3NoCredentials("no credentials for a signed request")
        out: dict[str, Any] = {
            "access_key_id": creds.access_key,
            "secret_access_key": creds.secret_key,
            "expires_at": None,
        }
        if creds.token:
            out["token"] = creds.token
        return out


def _failure(exc: BaseException) -> BaseException:
    """obstore's exceptions as the transport failures of :mod:`.transport`."""
    if isinstance(exc, S3Failure):
        return exc
    import obstore.exceptions as ox

    text = str(exc)
    status_match = _STATUS.search(text)
    code_match = _CODE.search(text)
    status = int(status_match.group(1)) if status_match else 0
    code = code_match.group(1) if code_match else ""
    cause = exc.__cause__ or exc.__context__
    if isinstance(cause, S3NoCredentials):
        return cause
    if isinstance(exc, FileNotFoundError):
        return S3ErrorReply(404, code or "NoSuchKey", text.split(":", 1)[0])
    if isinstance(exc, ox.AlreadyExistsError | ox.PreconditionError):
        if status == 404:  # a conditional write of an object that is not there
            return S3ErrorReply(404, code or "NoSuchKey", text.split(":", 1)[0])
        return S3ErrorReply(412, code or "PreconditionFailed", text.split(":", 1)[0])
    if isinstance(exc, ox.UnauthenticatedError) and "credential provider" in text:
        return S3NoCredentials("no AWS credentials found")  # our provider found none
    if isinstance(exc, ox.PermissionDeniedError | ox.UnauthenticatedError):
        return S3ErrorReply(status or 403, code or "AccessDenied", text.split(":", 1)[0])
    if status:
        return S3ErrorReply(status, code or str(status), code or text[:200])
    lowered = text.lower()
    if isinstance(exc, ox.GenericError) and any(word in lowered for word in _NO_ANSWER):
        return S3Unreachable(text.split("\n", 1)[0][:300])
    return S3Failure(f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"[:300])
