"""Routing under faults: a site down, corrupt bytes at a site, every site down, bad credentials.

Site A is its own moto server (so the test can stop it); site B is a ``file://``
replica of the same repository (every object copied, as a sync would).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import zarr

from hyperslab.access.store import open_store
from hyperslab.convert.ingest import ingest
from hyperslab.errors import AccessDeniedError
from hyperslab.reading.routing import ChunkUnavailableError
from hyperslab.references.repository import Repository
from hyperslab.storage import FileSite, S3Site, Site
from tests.conftest import S3Endpoint, own_s3_server

ENTRY = "frames"


@dataclass
class TwoSites:
    a_spec: str
    a_site: S3Site
    b_spec: str
    b_site: FileSite
    server: Any
    truth: np.ndarray
    source_key: str

    def stop_a(self) -> None:
        self.server.stop()


def _frames(path: Path) -> np.ndarray:
    rng = np.random.default_rng(5)
    data = rng.poisson(20, size=(12, 32, 40)).astype(np.uint16)
    with h5py.File(path, "w") as f:
        f.create_dataset("entry/data/data", data=data, chunks=(1, 32, 40), compression="gzip")
    return data


def _copy(src: Site, dst: Site) -> None:
    for key in src.list(""):
        dst.put(key, src.get(key))


@pytest.fixture
def two_sites(
    s3_endpoint: S3Endpoint, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[TwoSites]:
    with own_s3_server(s3_endpoint) as server:
        bucket = server.bucket("site-a")
        monkeypatch.setenv("AWS_ENDPOINT_URL", server.endpoint_url)
        a_site = server.site(bucket, "repo")
        truth = _frames(tmp_path / "frames.h5")
        repo = Repository.init(a_site)
        ingest(repo, [str(tmp_path / "frames.h5")], upload_sources=True)
        b_dir = tmp_path / "site-b"
        b_site = FileSite(b_dir)
        _copy(a_site, b_site)
        src = repo.entry("main", ENTRY)["sources"][0]
        try:
            yield TwoSites(
                a_spec=f"s3://{bucket}/repo",
                a_site=a_site,
                b_spec=str(b_dir),
                b_site=b_site,
                server=server,
                truth=truth,
                source_key=f"sources/{src['id']}/{src['name']}",
            )
        finally:
            a_site.close()


def _open(ts: TwoSites, **kw: Any) -> Any:
    store = open_store(ts.a_site and Repository.open(ts.a_site), ENTRY, cache=False, **kw)
    store.view.sites = [("site-a", ts.a_site), ("site-b", ts.b_site)]
    return store


def _frame(store: Any, i: int) -> np.ndarray:
    return np.asarray(zarr.open_group(store, mode="r")["entry/data/data"][i])


def test_preferred_site_down_falls_back(two_sites: TwoSites) -> None:
    ts = two_sites
    store = _open(ts)
    np.testing.assert_array_equal(_frame(store, 0), ts.truth[0])
    assert store.router.stats.by_site.keys() == {"site-a"}
    ts.stop_a()
    t0 = time.monotonic()
    np.testing.assert_array_equal(_frame(store, 1), ts.truth[1])
    assert store.router.stats.fallbacks >= 1 and "site-b" in store.router.stats.by_site
    health = store.router.health["site-a"]
    assert health.failures >= 1 and not health.up()
    # while A backs off, reads go straight to B: no new attempt at A
    before = health.failures
    np.testing.assert_array_equal(_frame(store, 2), ts.truth[2])
    assert store.router.health["site-a"].failures == before
    assert time.monotonic() - t0 < 60


def test_corrupt_bytes_at_a_site_are_detected_and_read_elsewhere(two_sites: TwoSites) -> None:
    ts = two_sites
    store = _open(ts)
    arr = store.view.refmap.arrays["entry/data/data"]
    # flip one byte inside frame 3's chunk at site A (same size: only a checksum sees it)
    pos = int(np.searchsorted(arr.index, 3))
    off, n = int(arr.offset[pos]), int(arr.length[pos])
    raw = bytearray(ts.a_site.get(ts.source_key))
    raw[off + n // 2] ^= 0x40
    ts.a_site.put(ts.source_key, bytes(raw))
    np.testing.assert_array_equal(_frame(store, 3), ts.truth[3])
    assert store.router.stats.fallbacks >= 1
    assert "checksum mismatch" in store.router.health["site-a"].last_error


def test_all_sites_down_is_one_named_error(two_sites: TwoSites) -> None:
    ts = two_sites
    store = _open(ts)
    ts.stop_a()
    ts.b_site.delete(ts.source_key)
    Path(store.view.record["sources"][0]["origin"]).unlink()  # the last resort gone too
    with pytest.raises(ChunkUnavailableError) as info:
        _frame(store, 4)
    msg = str(info.value)
    assert "entry/data/data/4.0.0" in msg and "site-a" in msg
    assert info.value.details["chunk"] == "entry/data/data/4.0.0"


class _Denied(BaseHTTPRequestHandler):
    """An S3 endpoint that refuses every request's credentials."""

    body = (
        b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>InvalidAccessKeyId</Code>'
        b"<Message>The AWS Access Key Id you provided does not exist.</Message></Error>"
    )

    def _deny(self) -> None:
        self.send_response(403)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(self.body)

    do_GET = do_HEAD = do_PUT = do_POST = _deny

    def log_message(self, *args: Any) -> None:
        pass


def test_bad_credentials_give_an_auth_error_without_secrets(
    two_sites: TwoSites, monkeypatch: pytest.MonkeyPatch
) -> None:
    ts = two_sites
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Denied)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    secret = "wJalrXUtnFEMI-not-a-real-secret-KEY"
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAEXAMPLEBADKEY")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    try:
        endpoint = f"http://127.0.0.1:{httpd.server_address[1]}"
        denied = S3Site("denied-bucket", "repo", endpoint_url=endpoint, options={"retries": 1})
        store = _open(ts)
        store.view.sites = [("denied", denied)]
        Path(store.view.record["sources"][0]["origin"]).unlink()  # no local last resort
        with pytest.raises(AccessDeniedError) as info:
            _frame(store, 5)
        text = str(info.value) + repr(info.value.to_json())
        assert "denied" in text and "entry/data/data/5.0.0" in text
        assert secret not in text and "AKIAEXAMPLEBADKEY" not in text
    finally:
        httpd.shutdown()


def test_sites_by_url_in_preference_order(two_sites: TwoSites) -> None:
    """The public form: metadata from the replica, chunks from the preferred site first."""
    ts = two_sites
    store = open_store(ts.b_spec, ENTRY, sites=[ts.a_spec, ts.b_spec], cache=False)
    np.testing.assert_array_equal(_frame(store, 6), ts.truth[6])
    assert list(store.router.stats.by_site) == [f"{ts.a_spec}"]
    ts.stop_a()
    np.testing.assert_array_equal(_frame(store, 7), ts.truth[7])
    assert store.router.stats.fallbacks >= 1


def test_origin_file_is_a_checked_last_resort(tmp_path: Path) -> None:
    """Ingested without --upload-sources: chunks come from the original file, each one
    checked; a file rewritten since ingest is refused by name, never served."""
    truth = _frames(tmp_path / "frames.h5")
    repo = Repository.init(str(tmp_path / "repo"))
    ingest(repo, [str(tmp_path / "frames.h5")])
    store = open_store(str(tmp_path / "repo"), ENTRY, cache=False)
    np.testing.assert_array_equal(_frame(store, 0), truth[0])
    assert [s for s in store.router.stats.by_site] == [f"origin {tmp_path / 'frames.h5'}"]
    # rewrite frame 1's bytes in place (same size): the checksum no longer matches
    arr = store.view.refmap.arrays["entry/data/data"]
    pos = int(np.searchsorted(arr.index, 1))
    with open(tmp_path / "frames.h5", "r+b") as f:
        f.seek(int(arr.offset[pos]) + 5)
        f.write(b"\x00\x01\x02\x03")
    with pytest.raises(ChunkUnavailableError, match="checksum mismatch"):
        _frame(store, 1)
