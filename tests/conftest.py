"""Session fixtures shared by the whole suite.

``s3_endpoint`` starts moto's S3 server on a free 127.0.0.1 port (the same HTTP code
path as MinIO/S3), or, when ``HYPERSLAB_TEST_S3_ENDPOINT`` is set (with
``HYPERSLAB_TEST_S3_KEY``/``HYPERSLAB_TEST_S3_SECRET``, optionally
``HYPERSLAB_TEST_S3_BUCKET``), uses that real endpoint and starts nothing.
The fake or given credentials are exported as ``AWS_*`` only while the session
fixture is alive, and the user's own AWS config files/profile are hidden meanwhile.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from hyperslab.storage import S3Site

REAL_ENDPOINT_VAR = "HYPERSLAB_TEST_S3_ENDPOINT"

# AWS settings that could leak in from the developer's machine and change behaviour.
_AWS_VARS_TO_CLEAR = (
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_ROLE_ARN",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
)


@dataclass(frozen=True)
class S3Endpoint:
    """Where the test S3 server is and the credentials exported for it."""

    endpoint_url: str
    key: str
    secret: str
    region: str = "us-east-1"
    real: bool = False  # a user-supplied endpoint rather than loopback moto
    bucket: str | None = None  # real endpoints: the bucket tests put their prefixes in

    @functools.cached_property
    def _client(self) -> Any:
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=self.key,
            aws_secret_access_key=self.secret,
            region_name=self.region,
        )

    def client(self) -> Any:
        """A boto3 S3 client for this endpoint (independent of the code under test)."""
        return self._client


@dataclass(frozen=True)
class S3Bucket:
    """A bucket (moto) or a unique prefix in the given bucket (real endpoint) for one test."""

    endpoint: S3Endpoint
    bucket: str
    prefix: str  # "" for a fresh moto bucket

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}".rstrip("/")

    def key(self, rel: str) -> str:
        """The raw S3 key of ``rel`` below this fixture's prefix."""
        return f"{self.prefix}/{rel}" if self.prefix else rel

    def site(self, prefix: str = "", **kwargs: Any) -> S3Site:
        full = "/".join(p for p in (self.prefix, prefix) if p)
        return S3Site(self.bucket, full, endpoint_url=self.endpoint.endpoint_url, **kwargs)


@pytest.fixture(scope="session", autouse=True)
def _no_access_statistics() -> Iterator[None]:
    """Stores opened by tests record no access statistics in the user's cache dir
    (tests/reading/test_access_stats.py turns them on where it needs them, in temporary dirs)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HYPERSLAB_ACCESS_STATS", "0")
        yield


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[S3Endpoint]:
    real = os.environ.get(REAL_ENDPOINT_VAR)
    with pytest.MonkeyPatch.context() as mp:
        for var in _AWS_VARS_TO_CLEAR:
            mp.delenv(var, raising=False)
        mp.setenv("AWS_CONFIG_FILE", os.devnull)
        mp.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
        mp.setenv("AWS_EC2_METADATA_DISABLED", "true")  # never probe 169.254.169.254
        mp.setenv("AWS_DEFAULT_REGION", "us-east-1")
        if real:
            key = os.environ.get("HYPERSLAB_TEST_S3_KEY")
            secret = os.environ.get("HYPERSLAB_TEST_S3_SECRET")
            if not key or not secret:
                pytest.fail(
                    f"{REAL_ENDPOINT_VAR} is set: also set HYPERSLAB_TEST_S3_KEY and "
                    "HYPERSLAB_TEST_S3_SECRET"
                )
            mp.setenv("AWS_ACCESS_KEY_ID", key)
            mp.setenv("AWS_SECRET_ACCESS_KEY", secret)
            yield S3Endpoint(
                endpoint_url=real,
                key=key,
                secret=secret,
                real=True,
                bucket=os.environ.get("HYPERSLAB_TEST_S3_BUCKET", "hyperslab-test"),
            )
            return

        from moto.server import ThreadedMotoServer

        key, secret = "testing", "testing-secret-not-real"
        mp.setenv("AWS_ACCESS_KEY_ID", key)
        mp.setenv("AWS_SECRET_ACCESS_KEY", secret)
        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
        # port=0: the OS picks a free port atomically; we read it back after start().
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        try:
            host, port = server.get_host_and_port()
            yield S3Endpoint(endpoint_url=f"http://{host}:{port}", key=key, secret=secret)
        finally:
            server.stop()


def _empty(client: Any, bucket: str, prefix: str) -> None:
    paginator = client.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
        objects = [{"Key": o["Key"]} for o in page.get("Contents", [])]
        if objects:
            client.delete_objects(Bucket=bucket, Delete={"Objects": objects})


@pytest.fixture
def s3_bucket(s3_endpoint: S3Endpoint) -> Iterator[S3Bucket]:
    client = s3_endpoint.client()
    tag = uuid.uuid4().hex[:16]
    if s3_endpoint.real:
        assert s3_endpoint.bucket is not None
        bucket, prefix = s3_endpoint.bucket, f"hyperslab-test-{tag}"
        try:
            client.head_bucket(Bucket=bucket)
        except Exception:
            client.create_bucket(Bucket=bucket)
    else:
        bucket, prefix = f"hyperslab-test-{tag}", ""
        client.create_bucket(Bucket=bucket)
    try:
        yield S3Bucket(endpoint=s3_endpoint, bucket=bucket, prefix=prefix)
    finally:
        _empty(client, bucket, f"{prefix}/" if prefix else "")
        if not s3_endpoint.real:
            client.delete_bucket(Bucket=bucket)


@dataclass
class OwnS3Server:
    """A moto server of one test's own (on its own port), so the test can stop it."""

    server: Any
    endpoint_url: str

    def bucket(self, stem: str) -> str:
        """A fresh bucket: moto's backend is per process, every server sees every bucket."""
        import boto3

        name = f"{stem}-{uuid.uuid4().hex[:10]}"
        boto3.client("s3", endpoint_url=self.endpoint_url, region_name="us-east-1").create_bucket(
            Bucket=name
        )
        return name

    def site(self, bucket: str, prefix: str = "") -> S3Site:
        """A site that fails fast once the server is stopped (no long client retries)."""
        return S3Site(
            bucket,
            prefix,
            endpoint_url=self.endpoint_url,
            options={"retries": 1, "config_kwargs": {"connect_timeout": 2, "read_timeout": 5}},
        )

    def stop(self) -> None:
        with contextlib.suppress(Exception):  # stopping twice is fine
            self.server.stop()


@contextlib.contextmanager
def own_s3_server(s3_endpoint: S3Endpoint) -> Iterator[OwnS3Server]:
    """Start a loopback moto server for one test (skips against a real endpoint)."""
    if s3_endpoint.real:
        pytest.skip("needs a server the test can stop (loopback moto)")
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    own = OwnS3Server(server, f"http://{host}:{port}")
    try:
        yield own
    finally:
        own.stop()


@pytest.fixture(scope="module")
def dask_client() -> Iterator[Any]:
    """A dask.distributed LocalCluster of two single-threaded worker processes, on
    loopback, and its client (ingest, verify and open_datasets on a cluster)."""
    distributed = pytest.importorskip("dask.distributed")
    cluster = distributed.LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address="127.0.0.1:0",
    )
    client = distributed.Client(cluster)
    yield client
    client.close()
    cluster.close()
