"""``serve`` reads chunks through the same routing as any reader: with ``sites`` (what
``hyperslab serve SITE:path`` passes for every configured site holding that path), a
repository that lost its source files is served from a replica made by ``sync``;
without them, the loss is a 503 naming the chunk, never wrong data."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

from hyperslab.convert.ingest import ingest
from hyperslab.references.repository import Repository
from hyperslab.samples import write_samples
from hyperslab.sync.engine import sync

pytest.importorskip("starlette")
from starlette.testclient import TestClient

from hyperslab.serve.app import create_app

ENTRY = "run42/scan_0001_gzip"


def test_a_replica_serves_what_the_repository_lost(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a cache of our own: the chunk cache is keyed by content, so another run's would serve
    monkeypatch.setenv("HYPERSLAB_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("HYPERSLAB_CACHE_MEMORY", "0")  # nor decoded chunks of another test
    files = {p.stem: p for p in write_samples(tmp_path / "samples", frames=4, shape=(64, 96))}
    staged = tmp_path / "staged.nxs"
    shutil.copy(files["scan_0001_gzip"], staged)
    primary, replica = tmp_path / "primary", tmp_path / "replica"
    repo = Repository.init(str(primary))
    ingest(repo, [str(staged)], name=ENTRY, upload_sources=True)
    staged.unlink()  # only the repositories hold the file now
    sync(Repository.open(str(primary)), str(replica), sources=True)
    shutil.rmtree(primary / "sources")  # the primary site lost its source files
    with h5py.File(files["scan_0001_gzip"]) as f:
        want = f["entry/data/data"][1]

    def frame(sites: list[str] | None) -> tuple[int, bytes]:
        app = create_app(
            Repository.open(str(primary)),
            allow_anonymous=True,
            sites={"primary": sites} if sites else None,
        )
        with TestClient(app) as client:
            res = client.get(f"/api/slice/{ENTRY}/entry/data/data", params={"sel": "1"})
            return res.status_code, res.content

    status, body = frame(None)
    assert status == 503 and b"chunk" in body
    status, body = frame([str(primary), str(replica)])
    assert status == 200
    np.testing.assert_array_equal(np.load(io.BytesIO(body)), want)
