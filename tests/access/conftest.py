"""Repositories on loopback S3 shared by the access tests (built once per session)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from hyperslab.convert.api import ConvertOptions
from hyperslab.convert.ingest import ingest
from hyperslab.references.repository import Repository
from hyperslab.samples import write_samples
from tests.conftest import S3Endpoint
from tests.convert.corpus import build_corpus


@dataclass
class CorpusRepo:
    spec: str
    files: dict[str, Path]  # entry name → the local file it came from


def _s3_spec(s3_endpoint: S3Endpoint, name: str) -> str:
    bucket = s3_endpoint.bucket or f"hyperslab-access-{uuid.uuid4().hex[:12]}"
    if not s3_endpoint.real:
        s3_endpoint.client().create_bucket(Bucket=bucket)
    return f"s3://{bucket}/{name}-{uuid.uuid4().hex[:8]}"


def corpus_files(directory: Path) -> list[Path]:
    """The test corpus files that ingest as entries (the link cycle cannot)."""
    return [
        f
        for f in build_corpus(directory)
        if f.suffix in (".h5", ".nxs") and f.stem != "corpus_cycle"
    ]


def ingest_corpus(repo: Repository, files: list[Path]) -> None:
    """Every corpus file into ``repo`` with its source uploaded (dangling links allowed
    for the files built to have them)."""
    plain = [str(f) for f in files if "dangling" not in f.name]
    ingest(repo, plain, upload_sources=True, fail_fast=True)
    dangling = [str(f) for f in files if "dangling" in f.name]
    ingest(
        repo,
        dangling,
        upload_sources=True,
        fail_fast=True,
        options=ConvertOptions(allow_broken_links=True),
    )


@pytest.fixture(scope="session")
def corpus_repo(
    s3_endpoint: S3Endpoint, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[CorpusRepo]:
    """The whole test corpus ingested (sources uploaded) into a repository on loopback S3."""
    files = corpus_files(tmp_path_factory.mktemp("corpus"))
    spec = _s3_spec(s3_endpoint, "access")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AWS_ENDPOINT_URL", s3_endpoint.endpoint_url)
        repo = Repository.init(spec)
        ingest_corpus(repo, files)
        yield CorpusRepo(spec, {f.stem: f for f in files})


@pytest.fixture(scope="session")
def nexus_repo(
    s3_endpoint: S3Endpoint, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[CorpusRepo]:
    """The sample NeXus detector files (``hyperslab sample``) in a repository on loopback S3.

    Frames of 48×64 uint32 so that chunks are referenced, not inlined. The EIGER-style
    data file of ``scan_0003_multi`` is reached through its master's external link.
    """
    paths = write_samples(tmp_path_factory.mktemp("samples"), frames=6, shape=(48, 64))
    masters = [p for p in paths if "_data_" not in p.name]
    spec = _s3_spec(s3_endpoint, "nexus")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AWS_ENDPOINT_URL", s3_endpoint.endpoint_url)
        repo = Repository.init(spec)
        ingest(repo, [str(p) for p in masters], upload_sources=True, fail_fast=True)
        yield CorpusRepo(spec, {p.stem: p for p in masters})


@pytest.fixture
def s3_env(s3_endpoint: S3Endpoint, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint.endpoint_url)
