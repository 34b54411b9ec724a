"""Fixtures for repository tests: fresh repository sites on file://, memory:// and S3."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from hyperslab.samples import write_samples
from hyperslab.storage import FileSite, MemorySite, Site, forget_memory_site
from tests.conftest import S3Bucket

SiteFactory = Callable[[], tuple[Site, str]]


@pytest.fixture(scope="session")
def sample_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("nexus")
    write_samples(d, frames=4, shape=(48, 64), seed=11)
    return d


@pytest.fixture(params=["file", "memory", "s3"])
def new_repo_site(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[SiteFactory]:
    """A factory of empty sites (with the spec string a CLI user would type)."""
    made: list[Site] = []
    names: list[str] = []

    if request.param == "s3":
        bucket: S3Bucket = request.getfixturevalue("s3_bucket")
        # spec strings (s3://bucket/prefix) resolve the endpoint the standard AWS way
        monkeypatch.setenv("AWS_ENDPOINT_URL", bucket.endpoint.endpoint_url)

        def make() -> tuple[Site, str]:
            prefix = f"repo-{uuid.uuid4().hex[:8]}"
            site = bucket.site(prefix)
            made.append(site)
            return site, f"{bucket.url}/{prefix}"

    elif request.param == "memory":

        def make() -> tuple[Site, str]:
            name = f"repo-{uuid.uuid4().hex[:8]}"
            names.append(name)
            site = MemorySite(name)
            return site, f"memory://{name}"

    else:

        def make() -> tuple[Site, str]:
            root = tmp_path / f"repo-{uuid.uuid4().hex[:8]}"
            return FileSite(root), str(root)

    yield make
    for s in made:
        s.close()
    for n in names:
        forget_memory_site(n)
