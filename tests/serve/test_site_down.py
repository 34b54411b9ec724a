"""``hyperslab serve`` (issue 18) when the site holding an entry's chunks is down: the
slice and Zarr chunk endpoints answer 503 with a JSON error that names the site, never a
trace or a 500, and nothing of the server's storage credentials."""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import pytest

pytest.importorskip("starlette")

from httpx import Response
from starlette.testclient import TestClient

from hyperslab.convert.ingest import ingest
from hyperslab.references.repository import Repository
from hyperslab.serve.app import create_app
from tests.conftest import OwnS3Server, S3Endpoint, own_s3_server

ENTRY = "run7/frames"
ARRAY = "entry/data/data"
#: the server's S3 credentials (moto takes any): distinctive, so a leak is found
KEY_ID, SECRET = "AKIASERVESITEDOWN01", "serve-site-down-secret-not-real-0123"


@dataclass
class Down:
    client: TestClient
    s3: OwnS3Server
    sid: str
    site: str  # the repository's URL at the site, as errors name it


@pytest.fixture
def down(
    s3_endpoint: S3Endpoint, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Down]:
    """A repository on an S3 site of its own, its sources uploaded there and the
    ingested file removed, so that the entry's chunks can be read from that site only;
    served, and read once while the site is up."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", KEY_ID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    # frames big enough that their chunks are referenced, not inlined in the entry
    truth = np.random.default_rng(11).integers(0, 2**31, size=(6, 48, 64), dtype=np.uint32)
    src = tmp_path / "frames.h5"
    with h5py.File(src, "w") as f:
        f.create_dataset(ARRAY, data=truth, chunks=(1, 48, 64), compression="gzip")
    with own_s3_server(s3_endpoint) as s3:
        monkeypatch.setenv("AWS_ENDPOINT_URL", s3.endpoint_url)
        bucket = s3.bucket("serve-down")
        site = s3.site(bucket, "repo")
        repo = Repository.init(site)
        ingest(repo, [str(src)], name=ENTRY, upload_sources=True)
        src.unlink()  # no local last resort: the site alone holds the chunks
        served = Repository.open(site)
        sid = served.resolve("main")
        with TestClient(create_app(served, allow_anonymous=True)) as client:
            got = client.get(f"/api/slice/{ENTRY}/{ARRAY}?sel=0&ref={sid}")
            assert got.status_code == 200, got.text
            np.testing.assert_array_equal(np.load(io.BytesIO(got.content)), truth[0])
            meta = client.get(f"/zarr/@{sid}/{ENTRY}/.zmetadata")
            assert meta.status_code == 200, meta.text
            yield Down(client, s3, sid, f"s3://{bucket}/repo")
        site.close()


def _is_site_down(res: Response, site: str) -> None:
    """503, JSON naming the site, no trace, no credentials."""
    text = res.text
    assert res.status_code == 503, (res.status_code, text)
    assert res.headers["content-type"].startswith("application/json")
    err = res.json()["error"]
    assert err["code"] and err["code"] != "internal", err
    assert site in err["message"], err  # the cause: which site
    assert "Traceback" not in text and 'File "' not in text
    assert SECRET not in text and KEY_ID not in text


def test_chunks_at_a_site_that_is_down_are_503_naming_it(down: Down) -> None:
    """The snapshot's metadata was read while the site was up; its chunks were not."""
    down.s3.stop()
    pinned = f"ref={down.sid}"
    _is_site_down(down.client.get(f"/api/slice/{ENTRY}/{ARRAY}?sel=1&{pinned}"), down.site)
    _is_site_down(
        down.client.get(f"/api/slice/{ENTRY}/{ARRAY}?sel=2,0:5&format=json&{pinned}"), down.site
    )
    _is_site_down(down.client.get(f"/zarr/@{down.sid}/{ENTRY}/{ARRAY}/3.0.0"), down.site)


def test_a_site_down_for_the_repository_itself_is_503(down: Down) -> None:
    """A branch must be read from the site: that is 503 naming the site too."""
    down.s3.stop()
    _is_site_down(down.client.get(f"/api/slice/{ENTRY}/{ARRAY}?sel=4"), down.site)
    _is_site_down(down.client.get(f"/zarr/{ENTRY}/{ARRAY}/4.0.0"), down.site)
    _is_site_down(down.client.get(f"/zarr/{ENTRY}/.zmetadata"), down.site)
