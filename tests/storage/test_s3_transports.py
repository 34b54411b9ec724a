"""The lean S3 client: SigV4 against AWS's examples and botocore, retries, reconnects,
error shapes, list parsing, and the botocore fallback of S3Site (same contract)."""

from __future__ import annotations

import asyncio
import http.server
import threading
from collections.abc import Iterator
from typing import Any, ClassVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hyperslab.errors import ConfigError, NotFoundError, TransientError
from hyperslab.storage import S3Site, Site
from hyperslab.storage.s3.auth import Credentials, CredentialSource, sign_v4
from hyperslab.storage.s3.clients import client_choice, common_options
from hyperslab.storage.s3.transport import S3ErrorReply, S3NoCredentials
from hyperslab.storage.s3.wire import EMPTY_SHA256, S3Wire, aclose_session, parse_list_page
from tests.conftest import S3Bucket
from tests.storage import test_sites

EXAMPLE = Credentials("AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY")


# --------------------------------------------------------------------------- signing


def test_sigv4_matches_the_aws_documentation_examples() -> None:
    # "Example: GET Object" and "Example: GET Bucket (List Objects)" of the S3 SigV4 docs
    get = sign_v4(
        "GET",
        "examplebucket.s3.amazonaws.com",
        "/test.txt",
        [],
        {"Range": "bytes=0-9"},
        EMPTY_SHA256,
        EXAMPLE,
        "us-east-1",
        "20130524T000000Z",
    )
    assert get["Authorization"].endswith(
        "SignedHeaders=host;range;x-amz-content-sha256;x-amz-date, "
        "Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"
    )
    listing = sign_v4(
        "GET",
        "examplebucket.s3.amazonaws.com",
        "/",
        [("max-keys", "2"), ("prefix", "J")],
        {},
        EMPTY_SHA256,
        EXAMPLE,
        "us-east-1",
        "20130524T000000Z",
    )
    assert listing["Authorization"].endswith(
        "Signature=34b48302e7b5fa45bde8084f4b7868a86f0a534bc59db6670ed5711ef69dc6f7"
    )


_key_text = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), min_size=1, max_size=30
)


@settings(max_examples=60, deadline=None)
@given(
    key=_key_text,
    query=st.lists(
        st.tuples(st.sampled_from(["prefix", "continuation-token"]), _key_text),
        max_size=2,
        unique_by=lambda t: t[0],
    ),
    token=st.none() | st.text(alphabet="abcdefXYZ019+/=", min_size=4, max_size=20),
    body=st.binary(max_size=64),
    md5=st.booleans(),
)
def test_sigv4_agrees_with_botocore(
    key: str, query: list[tuple[str, str]], token: str | None, body: bytes, md5: bool
) -> None:
    """Our canonical request and signature equal botocore's S3SigV4Auth for any key,
    query and header set (path-style, as for MinIO)."""
    import datetime
    import hashlib
    from unittest import mock

    from botocore.auth import S3SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials as BotoCredentials

    creds = Credentials(EXAMPLE.access_key, EXAMPLE.secret_key, token)
    wire = S3Wire("bucket", "http://127.0.0.1:9000", "eu-west-2", CredentialSource())
    host, port, path = wire._target(key)
    sha = hashlib.sha256(body).hexdigest()
    headers = {"content-md5": "1B2M2Y8AsgTpgAmY7PhCfg=="} if md5 else {}
    ours = sign_v4(
        "PUT",
        f"{host}:{port}",
        path,
        query,
        dict(headers),
        sha,
        creds,
        "eu-west-2",
        "20261124T101010Z",
    )

    from urllib.parse import quote

    url = f"http://{host}:{port}{path}"
    if query:
        url += "?" + "&".join(f"{quote(k, safe='-_.~')}={quote(v, safe='-_.~')}" for k, v in query)
    req = AWSRequest(
        method="PUT", url=url, data=body, headers={**headers, "x-amz-content-sha256": sha}
    )
    frozen = datetime.datetime(2026, 11, 24, 10, 10, 10)
    with mock.patch("botocore.auth.get_current_datetime", return_value=frozen):
        S3SigV4Auth(
            BotoCredentials(creds.access_key, creds.secret_key, token), "s3", "eu-west-2"
        ).add_auth(req)
    assert ours["Authorization"] == req.headers["Authorization"]


def test_credentials_from_environment_and_never_printed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAENVKEY")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret-value-never-shown")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "tok")
    creds = CredentialSource().get()
    assert creds == Credentials("AKIAENVKEY", "secret-value-never-shown", "tok")
    assert "secret" not in repr(creds) and "tok" not in repr(creds)
    assert CredentialSource(anon=True).get() is None


def test_no_credentials_anywhere_is_named(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    with pytest.raises(S3NoCredentials):
        CredentialSource().get()


def test_profile_credentials_come_from_botocore(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    shared = tmp_path / "credentials"
    shared.write_text("[lab]\naws_access_key_id = AKIAPROFILE\naws_secret_access_key = s3cr3t\n")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(shared))
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAENV")  # a named profile wins over these
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "env")
    assert CredentialSource(profile="lab").get() == Credentials("AKIAPROFILE", "s3cr3t", None)


# --------------------------------------------------------------------------- replies


def test_list_page_parsing_decodes_url_encoded_keys() -> None:
    body = b"""<?xml version="1.0" encoding="UTF-8"?>
<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">
<Name>b</Name><Prefix>p/</Prefix><KeyCount>2</KeyCount><EncodingType>url</EncodingType>
<IsTruncated>true</IsTruncated><NextContinuationToken>tok+/=</NextContinuationToken>
<Contents><Key>p/a%20b%2Bc</Key><Size>3</Size></Contents>
<Contents><Key>p/%C3%A9t%C3%A9</Key><Size>10</Size></Contents>
</ListBucketResult>"""
    items, token = parse_list_page(body)
    assert items == [("p/a b+c", 3), ("p/été", 10)]
    assert token == "tok+/="


class _Scripted(http.server.BaseHTTPRequestHandler):
    """Answers each request with the next scripted (status, headers, body); records requests."""

    protocol_version = "HTTP/1.1"
    # each test's handler subclass gets fresh ones (the ``scripted`` fixture)
    script: ClassVar[list[tuple[int, dict[str, str], bytes]]] = []
    seen: ClassVar[list[tuple[str, str, dict[str, str]]]] = []
    close_after: ClassVar[set[int]] = set()

    def _answer(self) -> None:
        n = len(self.seen)
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        self.seen.append((self.command, self.path, dict(self.headers)))
        status, headers, body = self.script[min(n, len(self.script) - 1)]
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
        if n in self.close_after:
            self.close_connection = True

    do_GET = do_PUT = do_HEAD = do_DELETE = do_POST = _answer

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def scripted() -> Iterator[tuple[str, type[_Scripted]]]:
    handler = type("Handler", (_Scripted,), {"script": [], "seen": [], "close_after": set()})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", handler
    finally:
        server.shutdown()
        server.server_close()


def _wire(endpoint: str, retries: int = 4) -> S3Wire:
    wire = S3Wire("bkt", endpoint, "us-east-1", CredentialSource(anon=True), retries=retries)
    wire._backoff = lambda attempt: 0.0  # type: ignore[method-assign]
    return wire


_SLOW = (503, {}, b"<Error><Code>SlowDown</Code><Message>slow</Message></Error>")


def test_transient_replies_are_retried_then_succeed(scripted: tuple[str, Any]) -> None:
    endpoint, handler = scripted
    handler.script[:] = [_SLOW, (500, {}, b""), (200, {"ETag": '"e"'}, b"payload")]
    wire = _wire(endpoint)
    assert wire.request("GET", "a/b c").body == b"payload"
    assert [p for _, p, _ in handler.seen] == ["/bkt/a/b%20c"] * 3
    handler.seen.clear()

    async def on_a_loop() -> bytes:
        try:
            return (await wire.arequest("GET", "x")).body
        finally:
            await aclose_session()

    assert asyncio.run(on_a_loop()) == b"payload"


def test_retries_run_out_with_the_last_error(scripted: tuple[str, Any]) -> None:
    endpoint, handler = scripted
    handler.script[:] = [_SLOW]
    with pytest.raises(S3ErrorReply) as info:
        _wire(endpoint, retries=3).request("GET", "k")
    assert info.value.code == "SlowDown" and info.value.status == 503
    assert len(handler.seen) == 3


def test_client_errors_are_not_retried_and_carry_the_s3_code(scripted: tuple[str, Any]) -> None:
    endpoint, handler = scripted
    handler.script[:] = [
        (404, {}, b"<Error><Code>NoSuchKey</Code><Message>gone</Message><Key>k</Key></Error>")
    ]
    with pytest.raises(S3ErrorReply) as info:
        _wire(endpoint).request("GET", "k")
    assert (info.value.code, info.value.message, info.value.status) == ("NoSuchKey", "gone", 404)
    assert len(handler.seen) == 1
    handler.script[:] = [(404, {}, b"")]  # HEAD: no body, the status is the code
    with pytest.raises(S3ErrorReply) as info:
        _wire(endpoint).request("HEAD", "k")
    assert info.value.code == "404"


def test_a_closed_keep_alive_connection_is_reopened_not_failed(scripted: tuple[str, Any]) -> None:
    endpoint, handler = scripted
    handler.script[:] = [(200, {}, b"one"), (200, {}, b"two"), (200, {}, b"three")]
    handler.close_after.add(0)  # the server drops the connection after the first reply
    wire = _wire(endpoint, retries=1)  # no retries: only the reconnect may save it
    assert wire.request("GET", "k").body == b"one"
    assert wire.request("GET", "k").body == b"two"
    assert wire.request("GET", "k").body == b"three"


def test_region_named_by_the_server_is_adopted(
    scripted: tuple[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAREGION")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    endpoint, handler = scripted
    handler.script[:] = [
        (
            301,
            {"x-amz-bucket-region": "eu-central-1"},
            b"<Error><Code>PermanentRedirect</Code></Error>",
        ),
        (200, {}, b"ok"),
    ]
    wire = S3Wire("bkt", endpoint, None, CredentialSource(), retries=1)
    assert wire.request("GET", "k").body == b"ok"
    assert wire.region == "eu-central-1"
    assert "/eu-central-1/s3/aws4_request" in handler.seen[1][2]["Authorization"]


def test_body_hash_is_signed(scripted: tuple[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    import hashlib

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIABODY")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    endpoint, handler = scripted
    handler.script[:] = [(200, {"ETag": '"x"'}, b"")]
    S3Wire("bkt", endpoint, "us-east-1", CredentialSource()).request("PUT", "k", body=b"data")
    headers = {k.lower(): v for k, v in handler.seen[0][2].items()}
    assert headers["x-amz-content-sha256"] == hashlib.sha256(b"data").hexdigest()
    assert "x-amz-content-sha256" in headers["authorization"]


# --------------------------------------------------------------------------- S3Site modes


def test_options_choose_the_client(monkeypatch: pytest.MonkeyPatch) -> None:
    assert common_options({}) == {}
    assert common_options(
        {"retries": 3, "config_kwargs": {"retries": {"max_attempts": 1}, "read_timeout": 5}}
    ) == {"retries": 2, "read_timeout": 5}
    assert common_options({"client_kwargs": {"verify": False}}) is None
    assert common_options({"config_kwargs": {"s3": {"addressing_style": "virtual"}}}) is None
    assert client_choice() == "wire"
    monkeypatch.setenv("HYPERSLAB_S3_CLIENT", "botocore")  # the old name of the botocore client
    assert client_choice() == "botocore"
    monkeypatch.setenv("HYPERSLAB_S3_CLIENT", "curl")
    with pytest.raises(ConfigError, match="HYPERSLAB_S3_CLIENT"):
        client_choice()


def test_botocore_options_outside_s3fs_names_are_refused(s3_bucket: S3Bucket) -> None:
    with pytest.raises(ConfigError, match="not_an_option"):
        s3_bucket.site(options={"client_kwargs": {}, "not_an_option": 1})


def test_wire_site_reads_what_botocore_wrote_and_back(
    s3_bucket: S3Bucket, monkeypatch: pytest.MonkeyPatch
) -> None:
    wire_site = s3_bucket.site("mix")
    monkeypatch.setenv("HYPERSLAB_S3_CLIENT", "botocore")
    boto_site = s3_bucket.site("mix")
    assert (wire_site.client, boto_site.client) == ("wire", "botocore")
    key = "dir/odd name+é=&?.bin"
    wire_site.put(key, b"from wire")
    assert boto_site.get(key) == b"from wire"
    etag = boto_site.put_if_match(key, b"from botocore", wire_site.etag(key))
    assert wire_site.get_with_etag(key) == (b"from botocore", etag)
    assert list(wire_site.list("dir/")) == list(boto_site.list("dir/")) == [key]
    wire_site.delete(key)
    with pytest.raises(NotFoundError):
        boto_site.get(key)


def test_wire_site_never_imports_botocore_for_plain_calls(s3_bucket: S3Bucket) -> None:
    """A one-shot process that reads refs must not pay for s3fs/aiobotocore (0.4 s)."""
    import subprocess
    import sys

    s3_bucket.site().put("refs/main", b"head")
    code = (
        "import sys\n"
        "from hyperslab.storage import S3Site\n"
        f"s = S3Site({s3_bucket.bucket!r}, {s3_bucket.prefix!r}, endpoint_url={s3_bucket.endpoint.endpoint_url!r})\n"
        "assert s.get_with_etag('refs/main')[0] == b'head'\n"
        "s.put('refs/other', b'x'); s.head('refs/other'); list(s.list('refs/'))\n"
        "heavy = sorted(m for m in ('s3fs', 'botocore', 'aiobotocore', 'aiohttp') if m in sys.modules)\n"
        "print(heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stderr


def test_unreachable_endpoint_is_transient_on_the_loop_too() -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    site = S3Site("bucket", endpoint_url=f"http://127.0.0.1:{port}", options={"retries": 1})

    async def one() -> bytes:
        return await site.aget("k")

    import fsspec.asyn

    with pytest.raises(TransientError):
        fsspec.asyn.sync(site.io_loop, one)


class TestS3SiteBotocore(test_sites.TestS3Site):
    """The whole site contract, and the S3 site's own tests, again with every request
    through botocore."""

    atomic_sizes = (64 << 10, 256 << 10)
    atomic_rounds = 3
    cas_threads, cas_increments = 2, 2

    @pytest.fixture(autouse=True)
    def _client(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("HYPERSLAB_S3_CLIENT", "botocore")

    def test_the_client_is_botocore(self, site: Site) -> None:
        assert isinstance(site, S3Site) and site.client == "botocore"


# --------------------------------------------------------------------------- multipart uploads


@pytest.mark.parametrize("client", ["wire", "botocore", "obstore"])
def test_large_files_upload_in_parts_and_verify(
    s3_bucket: S3Bucket, tmp_path: Any, monkeypatch: pytest.MonkeyPatch, client: str
) -> None:
    import hashlib
    import os

    from hyperslab.storage.s3 import transport

    monkeypatch.setenv("HYPERSLAB_S3_CLIENT", client)
    monkeypatch.setattr(transport, "MULTIPART_THRESHOLD", 6 << 20)
    monkeypatch.setattr(transport, "PART_SIZE", 5 << 20)  # S3's smallest part
    data = os.urandom((10 << 20) + 12345)
    path = tmp_path / "big.nxs"
    path.write_bytes(data)
    site = s3_bucket.site("mp")
    site.put_file_verified("sources/x/big.nxs", path, hashlib.sha256(data).hexdigest())
    assert site.head("sources/x/big.nxs").etag.strip('"').endswith("-3")
    assert site.get("sources/x/big.nxs") == data


def test_a_failed_part_aborts_the_upload(
    s3_bucket: S3Bucket, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    from hyperslab.storage.s3 import transport, wire

    monkeypatch.setattr(transport, "MULTIPART_THRESHOLD", 6 << 20)
    monkeypatch.setattr(transport, "PART_SIZE", 5 << 20)
    path = tmp_path / "big.nxs"
    path.write_bytes(os.urandom(11 << 20))
    real = wire.S3Wire.request

    def second_part_fails(self: Any, method: str, key: str = "", **kw: Any) -> Any:
        if ("partNumber", "2") in (kw.get("query") or []):
            raise wire.S3Unreachable("connection reset")
        return real(self, method, key, **kw)

    monkeypatch.setattr(wire.S3Wire, "request", second_part_fails)
    site = s3_bucket.site("abort")
    with pytest.raises(TransientError):
        site.put_file("sources/x/big.nxs", path)
    assert not site.exists("sources/x/big.nxs")
    uploads = s3_bucket.endpoint.client().list_multipart_uploads(Bucket=s3_bucket.bucket)
    assert not [
        u for u in uploads.get("Uploads", []) if u["Key"].startswith(s3_bucket.key("abort/"))
    ]


class TestS3SiteObstore(test_sites.TestS3Site):
    """The whole site contract, and the S3 site's own tests, again with every request
    through obstore (Rust object_store)."""

    atomic_sizes = (64 << 10, 256 << 10)
    atomic_rounds = 3
    cas_threads, cas_increments = 2, 2

    @pytest.fixture(autouse=True)
    def _client(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("HYPERSLAB_S3_CLIENT", "obstore")

    def test_the_client_is_obstore(self, site: Site) -> None:
        assert isinstance(site, S3Site) and site.client == "obstore"


def test_multipart_replies_without_the_s3_namespace_are_read(
    scripted: tuple[str, Any], tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """s3rver answers CreateMultipartUpload and CompleteMultipartUpload without S3's XML
    namespace; the upload id and the ETag are found all the same."""
    from hyperslab.storage.s3 import transport
    from hyperslab.storage.s3.transport import TransportSettings
    from hyperslab.storage.s3.wire import WireTransport

    monkeypatch.setattr(transport, "MULTIPART_THRESHOLD", 10)
    monkeypatch.setattr(transport, "PART_SIZE", 8)
    endpoint, handler = scripted
    handler.script[:] = [
        (
            200,
            {},
            b"<InitiateMultipartUploadResult><UploadId>u-1</UploadId>"
            b"</InitiateMultipartUploadResult>",
        ),
        (200, {"ETag": '"p1"'}, b""),
        (200, {"ETag": '"p2"'}, b""),
        (
            200,
            {},
            b"<CompleteMultipartUploadResult><ETag>&quot;abc-2&quot;</ETag>"
            b"</CompleteMultipartUploadResult>",
        ),
    ]
    path = tmp_path / "f.bin"
    path.write_bytes(b"0123456789abcdef")
    t = WireTransport(TransportSettings("bkt", endpoint, "us-east-1", anon=True, retries=1))
    assert t.upload_file("k", path) == '"abc-2"'
    calls = [(m, p) for m, p, _ in handler.seen]
    assert calls == [
        ("POST", "/bkt/k?uploads="),
        ("PUT", "/bkt/k?partNumber=1&uploadId=u-1"),
        ("PUT", "/bkt/k?partNumber=2&uploadId=u-1"),
        ("POST", "/bkt/k?uploadId=u-1"),
    ]


@pytest.mark.parametrize("client", ["wire", "botocore", "obstore"])
def test_no_credentials_is_named_by_every_client(
    s3_bucket: S3Bucket, monkeypatch: pytest.MonkeyPatch, tmp_path: Any, client: str
) -> None:
    from hyperslab.errors import AccessDeniedError

    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    site = s3_bucket.site("creds", client=client)
    with pytest.raises(AccessDeniedError, match="no usable AWS credentials"):
        site.get("k")
    site.close()


@pytest.mark.parametrize("client", ["wire", "botocore", "obstore"])
def test_a_missing_profile_is_access_denied(s3_bucket: S3Bucket, client: str) -> None:
    from hyperslab.errors import AccessDeniedError

    with pytest.raises(AccessDeniedError):
        site = s3_bucket.site("p", profile="no-such-profile-here", client=client)
        site.head("k")


@pytest.mark.parametrize("client", ["wire", "botocore", "obstore"])
def test_uploading_a_missing_local_file_is_not_found(
    s3_bucket: S3Bucket, tmp_path: Any, client: str
) -> None:
    site = s3_bucket.site("up", client=client)
    with pytest.raises(NotFoundError):
        site.put_file("sources/x/gone.nxs", tmp_path / "gone.nxs")
    site.close()


def test_a_source_that_breaks_mid_stream_is_transient(s3_bucket: S3Bucket) -> None:
    """sync's streamed copy: the source connection dies between blocks; the PUT is cut
    short (no object) and the failure is transient, so a re-run finishes the job."""
    import aiohttp
    import fsspec.asyn

    site = s3_bucket.site("stream")
    assert isinstance(site, S3Site) and site.supports_streaming

    async def blocks() -> Any:
        yield b"x" * 1024
        raise aiohttp.ClientPayloadError("connection reset by the source")

    async def copy() -> None:
        await site.aput_stream("big", 4096, blocks(), "0" * 64, lambda n, d: None)

    with pytest.raises(TransientError):
        fsspec.asyn.sync(site.io_loop, copy)
    assert not site.exists("big")


def test_a_botocore_site_used_after_close_closes_again(s3_bucket: S3Bucket) -> None:
    from hyperslab.storage.s3.boto import BotocoreTransport

    site = s3_bucket.site("reuse", client="botocore")
    site.put("k", b"1")
    site.close()
    assert site.get("k") == b"1"  # reopens its client
    transport = site.transport
    assert isinstance(transport, BotocoreTransport) and transport._finalizer is not None
    assert transport._finalizer.alive
    site.close()
    assert not transport._finalizer.alive  # the second client was closed too
