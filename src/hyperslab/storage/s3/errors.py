"""What an S3 failure means to the caller: the transport's failure as a named error.

Every transport raises :class:`~.transport.S3Failure` subclasses (an error reply,
no credentials, no answer); :func:`site_error` turns one into the
:mod:`hyperslab.errors` class the caller acts on (not found, access denied,
conflict, transient, bad input), with a message naming the operation, the key and
the site, never credentials.
"""

from __future__ import annotations

from hyperslab.errors import (
    AccessDeniedError,
    BadInputError,
    ConflictError,
    HyperslabError,
    NotFoundError,
    TransientError,
)
from hyperslab.storage.s3.transport import S3ErrorReply, S3NoCredentials, S3Unreachable

__all__ = ["RANGE_CODES", "site_error"]

NOT_FOUND_CODES = frozenset({"NoSuchKey", "NotFound", "404", "NoSuchBucket"})
DENIED_CODES = frozenset(
    {
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
)
CONFLICT_CODES = frozenset({"PreconditionFailed", "412", "ConditionalRequestConflict", "409"})
TRANSIENT_CODES = frozenset(
    {
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
)
#: an error reply to a ranged GET outside the object (the site re-checks the size)
RANGE_CODES = frozenset({"InvalidRange", "416"})


def site_error(
    exc: BaseException,
    *,
    op: str,
    key: str,
    url: str,
    bucket: str,
    endpoint_url: str | None = None,
) -> HyperslabError:
    """The named error for ``exc``, raised by ``op`` on ``key`` at the site ``url``."""
    where = f"{op} {key!r} at {url}" if key else f"{op} at {url}"
    if endpoint_url:
        where += f" (endpoint {endpoint_url})"
    if isinstance(exc, S3ErrorReply):
        return _reply_error(exc, where, key, url, bucket)
    if isinstance(exc, S3NoCredentials):
        return AccessDeniedError(
            f"{where}: no usable AWS credentials ({exc}); set AWS_ACCESS_KEY_ID/"
            "AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or anon = true for public buckets",
            key=key,
            site=url,
        )
    if isinstance(exc, S3Unreachable):
        return TransientError(f"{where}: {exc}", key=key, site=url)
    # what a transport let through: a local file (uploads), or a connection that broke
    # while a body streamed, named as before transports existed
    if isinstance(exc, FileNotFoundError):
        return NotFoundError(f"{where}: {exc.strerror or exc}", key=key, site=url)
    if isinstance(exc, PermissionError):
        return AccessDeniedError(f"{where}: access denied ({exc})", key=key, site=url)
    if isinstance(exc, _no_answer()):
        return TransientError(f"{where}: {type(exc).__name__}: {exc}", key=key, site=url)
    return HyperslabError(f"{where}: {type(exc).__name__}: {exc}", key=key, site=url)


def _no_answer() -> tuple[type[BaseException], ...]:
    """Exceptions that mean the other side did not answer (or stopped answering): the
    network's and, if they are loaded, aiohttp's and botocore's."""
    import http.client
    import sys

    out: tuple[type[BaseException], ...] = (OSError, TimeoutError, http.client.HTTPException)
    aiohttp = sys.modules.get("aiohttp")
    if aiohttp is not None:
        out += (aiohttp.ClientError,)
    botocore_exceptions = sys.modules.get("botocore.exceptions")
    if botocore_exceptions is not None:
        out += (botocore_exceptions.BotoCoreError,)
    return out


def _reply_error(exc: S3ErrorReply, where: str, key: str, url: str, bucket: str) -> HyperslabError:
    code, status, text = exc.code, exc.status, exc.message
    details = {"key": key, "site": url, "s3_code": code}
    if code in NOT_FOUND_CODES or status == 404:
        if code == "NoSuchBucket":
            return NotFoundError(f"{where}: bucket {bucket!r} does not exist", **details)
        return NotFoundError(f"{key!r} not found at {url}", **details)
    if code in DENIED_CODES or status in (401, 403):
        return AccessDeniedError(
            f"{where}: access denied ({code}: {text}); check AWS_ACCESS_KEY_ID/"
            "AWS_SECRET_ACCESS_KEY or AWS_PROFILE and the bucket policy",
            **details,
        )
    if code in CONFLICT_CODES or status in (409, 412):
        return ConflictError(f"{where}: {code}: {text}", **details)
    if code in TRANSIENT_CODES or status >= 500:
        return TransientError(f"{where}: {code}: {text}", **details)
    if code in RANGE_CODES or status == 416:
        return BadInputError(f"{where}: {code}: {text}", **details)
    return HyperslabError(f"{where}: {code}: {text}", **details)
