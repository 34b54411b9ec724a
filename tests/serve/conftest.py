"""Shared by the serve tests: a repository of two sample entries, a keys file (alice may
read run42/* only, bob everything), a TestClient of the app behind those keys,
:func:`running`, an app served by a real uvicorn on loopback, and ``two``: that
repository as ``alpha`` and another of one entry as ``beta``, with keys (alice: alpha's
run42/*, bob: all, dave: beta)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from hyperslab.convert.ingest import ingest
from hyperslab.references.repository import Repository
from hyperslab.samples import write_samples
from hyperslab.serve.keys import KeyRing, hash_key

ALICE, BOB = "alice-key-0123456789", "bob-key-0123456789"
ENTRY, OTHER = "run42/scan_0001_gzip", "run43/scan_0002_bslz4"


@dataclass
class Shared:
    repo: Repository
    files: dict[str, Path]  # entry name → its NeXus file
    keys: KeyRing


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Shared:
    d = tmp_path_factory.mktemp("serve")
    paths = write_samples(d / "samples", frames=4, shape=(24, 32))
    by_stem = {p.stem: p for p in paths}
    repo = Repository.init(str(d / "repo"))
    ingest(repo, [str(by_stem["scan_0001_gzip"])], name=ENTRY, upload_sources=True)
    ingest(repo, [str(by_stem["scan_0002_bslz4"])], name=OTHER, upload_sources=True)
    repo.create_tag("v1", "main")
    keys = d / "keys.toml"
    keys.write_text(
        f'[[key]]\nname = "alice"\nhash = "{hash_key(ALICE)}"\nentries = ["run42/*"]\n'
        f'[[key]]\nname = "bob"\nhash = "{hash_key(BOB)}"\n'
    )
    files = {ENTRY: by_stem["scan_0001_gzip"], OTHER: by_stem["scan_0002_bslz4"]}
    return Shared(Repository.open(str(d / "repo")), files, KeyRing.load(keys))


DAVE = "dave-key-0123456789"  # beta only
BETA_ENTRY = "beam/scan_0003"


@dataclass
class Two:
    repos: dict[str, Repository]
    keys: KeyRing
    beta_file: Path


@pytest.fixture(scope="module")
def two(shared: Shared, tmp_path_factory: pytest.TempPathFactory) -> Two:
    d = tmp_path_factory.mktemp("beta")
    files = {p.stem: p for p in write_samples(d / "samples", frames=3, shape=(16, 20))}
    beta = Repository.init(str(d / "beta"))
    ingest(beta, [str(files["scan_0002_bslz4"])], name=BETA_ENTRY, upload_sources=True)
    keys = d / "keys.toml"
    keys.write_text(
        f'[[key]]\nname = "alice"\nhash = "{hash_key(ALICE)}"\nentries = ["run42/*"]\n'
        'repositories = ["alpha"]\n'
        f'[[key]]\nname = "bob"\nhash = "{hash_key(BOB)}"\n'
        f'[[key]]\nname = "dave"\nhash = "{hash_key(DAVE)}"\nrepositories = ["b*"]\n'
    )
    repos = {"alpha": shared.repo, "beta": Repository.open(str(d / "beta"))}
    return Two(repos, KeyRing.load(keys), files["scan_0002_bslz4"])


@pytest.fixture(scope="module")
def client(shared: Shared) -> Iterator[Any]:
    """A TestClient of the app behind the keys (bob reads everything, alice run42/*)."""
    pytest.importorskip("starlette")
    from starlette.testclient import TestClient

    from hyperslab.serve.app import create_app

    with TestClient(create_app(shared.repo, keys=shared.keys)) as c:
        yield c


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@contextmanager
def running(app: object) -> Iterator[str]:
    """``app`` served by a real uvicorn on 127.0.0.1 (a free port), for the test's span."""
    uvicorn = pytest.importorskip("uvicorn")
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning")
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not srv.started:
        assert time.monotonic() < deadline, "the server did not start"
        time.sleep(0.05)
    port = srv.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        srv.should_exit = True
        thread.join(timeout=10)
