"""AWS credentials and Signature Version 4, for hyperslab's own S3 client (:mod:`.wire`).

* **Credentials**: ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY`` (and
  ``AWS_SESSION_TOKEN``) are read directly. Anything else (a named profile, SSO,
  ``credential_process``, assumed roles, instance metadata) goes through botocore's
  own credential chain, refreshed before expiry.
* **Signing**: AWS Signature Version 4 with the body's SHA-256 signed
  (``x-amz-content-sha256``), so the server also refuses a body damaged on the way.
  Tested against AWS's published example and against botocore's own signer.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from hyperslab.storage.s3.transport import S3NoCredentials, S3Unreachable

__all__ = ["CredentialSource", "Credentials", "sign_v4", "uri_encode"]


@dataclass(frozen=True)
class Credentials:
    access_key: str
    secret_key: str
    token: str | None = None

    def __repr__(self) -> str:  # never print the secret
        return f"Credentials(access_key={self.access_key[:4]}…)"


class CredentialSource:
    """Where a site's credentials come from (resolved on first use, then cached).

    ``profile`` set: botocore's chain for that profile (it skips the environment
    keys, as botocore does). Otherwise the environment keys if both are set, else
    botocore's default chain. ``anon``: unsigned requests.
    """

    def __init__(self, profile: str | None = None, anon: bool = False) -> None:
        self.profile = profile
        self.anon = anon
        self._lock = threading.Lock()
        self._static: Credentials | None = None
        self._botocore: Any = None

    def get(self) -> Credentials | None:
        """The credentials to sign with now (None: anonymous). Raises S3NoCredentials
        when the chain has none (a missing profile included), S3Unreachable when a
        provider could not be asked (a metadata service or SSO endpoint down)."""
        if self.anon:
            return None
        if self._static is not None:
            return self._static
        try:
            if self._botocore is None:
                with self._lock:
                    if self._static is None and self._botocore is None:
                        self._resolve()
                if self._static is not None:
                    return self._static
            frozen = self._botocore.get_frozen_credentials()  # refreshes before expiry
        except S3NoCredentials:
            raise
        except Exception as exc:
            raise _credential_failure(exc) from exc
        if not frozen.access_key or not frozen.secret_key:
            raise S3NoCredentials("the credential provider returned empty keys")
        return Credentials(frozen.access_key, frozen.secret_key, frozen.token or None)

    def _resolve(self) -> None:
        key = os.environ.get("AWS_ACCESS_KEY_ID")
        secret = os.environ.get("AWS_SECRET_ACCESS_KEY")
        if self.profile is None and key and secret:
            token = os.environ.get("AWS_SESSION_TOKEN") or os.environ.get("AWS_SECURITY_TOKEN")
            self._static = Credentials(key, secret, token or None)
            return
        import botocore.session

        creds = botocore.session.Session(profile=self.profile).get_credentials()
        if creds is None:
            raise S3NoCredentials("no AWS credentials found")
        self._botocore = creds


def _credential_failure(exc: BaseException) -> Exception:
    """botocore's credential errors as transport failures: no credentials (a missing
    profile, partial or absent keys) or no answer (any other provider failure)."""
    import botocore.exceptions as bx

    if isinstance(exc, bx.NoCredentialsError | bx.PartialCredentialsError | bx.ProfileNotFound):
        return S3NoCredentials(str(exc))
    return S3Unreachable(f"credentials: {type(exc).__name__}: {exc}")


def uri_encode(text: str, safe: str = "/") -> str:
    """S3's URI encoding (RFC 3986 unreserved characters and ``safe`` kept)."""
    return quote(text, safe=safe + "~")


def _hmac(key: bytes, msg: str) -> bytes:
    return hmac.new(key, msg.encode(), hashlib.sha256).digest()


_signing_keys: dict[tuple[str, str, str], bytes] = {}


def sign_v4(
    method: str,
    host: str,
    path: str,
    query: Iterable[tuple[str, str]],
    headers: dict[str, str],
    payload_sha256: str,
    creds: Credentials,
    region: str,
    amz_date: str,
) -> dict[str, str]:
    """Add SigV4 ``Authorization`` (and the headers it covers) to ``headers``.

    ``path`` is already URI-encoded (S3 encodes it once); ``amz_date`` is
    ``YYYYMMDDTHHMMSSZ``. Every header in ``headers`` is signed.
    """
    headers["host"] = host
    headers["x-amz-date"] = amz_date
    headers["x-amz-content-sha256"] = payload_sha256
    if creds.token:
        headers["x-amz-security-token"] = creds.token
    canon = sorted((k.lower(), " ".join(str(v).split())) for k, v in headers.items())
    signed = ";".join(k for k, _ in canon)
    canonical_query = "&".join(f"{uri_encode(k, '')}={uri_encode(v, '')}" for k, v in sorted(query))
    request = "\n".join(
        (
            method,
            path,
            canonical_query,
            "".join(f"{k}:{v}\n" for k, v in canon),
            signed,
            payload_sha256,
        )
    )
    day = amz_date[:8]
    scope = f"{day}/{region}/s3/aws4_request"
    to_sign = "\n".join(
        ("AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(request.encode()).hexdigest())
    )
    cache_key = (creds.secret_key, day, region)
    key = _signing_keys.get(cache_key)
    if key is None:
        key = _hmac(
            _hmac(_hmac(_hmac(b"AWS4" + creds.secret_key.encode(), day), region), "s3"),
            "aws4_request",
        )
        if len(_signing_keys) > 64:
            _signing_keys.clear()
        _signing_keys[cache_key] = key
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    headers["Authorization"] = (
        f"AWS4-HMAC-SHA256 Credential={creds.access_key}/{scope}, "
        f"SignedHeaders={signed}, Signature={signature}"
    )
    return headers
