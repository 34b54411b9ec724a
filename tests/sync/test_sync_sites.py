"""Sync between two loopback S3 sites (two moto servers) and ``file://`` sites.

The corpus is ingested at site A (its own moto server) and synced to B (the session's
moto server) with its sources, to C (a directory) with every chunk hot, and to D (a
directory) with references only. Then A's server is stopped and the local files are
moved away, so nothing but the destination can serve a byte: B and C read every
dataset bit-exactly, D fails with a clear error naming the chunk.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import zarr

from hyperslab.access.store import open_store
from hyperslab.convert.verify import verify_store
from hyperslab.reading.routing import ChunkUnavailableError
from hyperslab.references.fsck import fsck
from hyperslab.references.repository import Repository
from hyperslab.sync import HotRules, sync
from tests.access.conftest import corpus_files, ingest_corpus
from tests.conftest import S3Bucket, S3Endpoint, own_s3_server
from tests.sync.objects import unpacked

ALL_HOT = HotRules.from_dict({"rule": [{"entries": "*", "arrays": "*"}]})


@dataclass
class Replicas:
    b: str  # S3, sources copied
    c: str  # file://, every chunk hot
    d: str  # file://, references only
    files: dict[str, Path]  # entry → the (moved) local file, for h5py truth
    reports: dict[str, dict]


@pytest.fixture(scope="module")
def replicas(
    s3_endpoint: S3Endpoint, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Replicas]:
    tmp = tmp_path_factory.mktemp("sync-sites")
    files = corpus_files(tmp / "corpus")
    with own_s3_server(s3_endpoint) as server, pytest.MonkeyPatch.context() as mp:
        mp.setenv("AWS_ENDPOINT_URL", s3_endpoint.endpoint_url)
        a = Repository.init(server.site(server.bucket("site-a"), "repo"))
        ingest_corpus(a, files)
        bucket_b = f"site-b-{uuid.uuid4().hex[:10]}"
        s3_endpoint.client().create_bucket(Bucket=bucket_b)
        b = f"s3://{bucket_b}/repo"
        c, d = str(tmp / "site-c"), str(tmp / "site-d")
        # sources stream through a temporary file and upload_file (the large-file path)
        mp.setattr("hyperslab.sync.transfer.SMALL_SOURCE", 0)
        reports = {
            "b": sync(a, b, sources=True).to_json(),
            "c": sync(a, c, hot=ALL_HOT).to_json(),
            "d": sync(a, d).to_json(),
        }
        server.stop()
        # the origin files must not be a way around the destination: move them all
        moved = tmp / "moved"
        (tmp / "corpus").rename(moved)
        truth = {f.stem: moved / f.relative_to(tmp / "corpus") for f in files}
        yield Replicas(b, c, d, truth, reports)


def _read_all(spec: str, files: dict[str, Path]) -> tuple[int, dict[str, int]]:
    arrays = 0
    by_site: dict[str, int] = {}
    for entry, path in sorted(files.items()):
        store = open_store(spec, entry, cache=False)
        report = verify_store(path, store, sorted(store.view.refmap.arrays), label=entry)
        assert report.ok, (entry, [(a.path, a.detail) for a in report.arrays if not a.ok])
        arrays += report.counts["bit_exact"]
        for site, n in store.router.stats.by_site.items():
            by_site[site] = by_site.get(site, 0) + n
    return arrays, by_site


def test_sources_replicated_read_bit_exact_with_origin_down(
    replicas: Replicas, s3_endpoint: S3Endpoint, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint.endpoint_url)
    assert replicas.reports["b"]["copied"]["source"] >= len(replicas.files)
    arrays, by_site = _read_all(replicas.b, replicas.files)
    assert arrays >= 150
    assert list(by_site) == [Repository.open(replicas.b).display]  # B alone served bytes
    assert fsck(Repository.open(replicas.b)).clean


def test_hot_chunks_replicated_read_bit_exact_without_any_source(replicas: Replicas) -> None:
    hot = replicas.reports["c"]["hot"]
    assert hot["chunks"] > 100 and replicas.reports["c"]["copied"]["chunk_pack"] >= 1
    assert "source" not in replicas.reports["c"]["copied"]
    arrays, by_site = _read_all(replicas.c, replicas.files)
    assert arrays >= 150 and set(by_site) == {Repository.open(replicas.c).display}
    report = fsck(Repository.open(replicas.c))
    assert report.clean and report.checked["replicas"] >= 1


def test_cold_chunks_without_sources_fail_naming_the_chunk(replicas: Replicas) -> None:
    store = open_store(replicas.d, "corpus_nexus", cache=False)
    g = zarr.open_group(store, mode="r")
    path = next(
        p for p, a in sorted(store.view.refmap.arrays.items()) if a.index.size and a.zarray["shape"]
    )
    with pytest.raises(ChunkUnavailableError) as info:
        g[path][...]
    assert path in info.value.message and "no site could deliver it" in info.value.message
    assert fsck(Repository.open(replicas.d)).clean


def test_s3_to_s3_copies_on_the_io_loop_and_still_verifies(
    s3_bucket: S3Bucket, tmp_path: Path
) -> None:
    """Between two S3 sites the copy runs as coroutines on the IO loop (no thread per
    request); it must check every object exactly as the threaded copy does."""
    from hyperslab.errors import HyperslabError
    from hyperslab.sync.transfer import shared_loop
    from tests.sync.test_sync_protocol import _grow

    src = Repository.init(s3_bucket.site("src"))
    _grow(src, tmp_path / "files", 0, 3)
    dst_site = s3_bucket.site("dst")
    assert shared_loop(src.site, dst_site) is not None  # the path under test
    # damage one refmap at the source, behind the repository's back
    refmap = next(iter(src.site.list("refmaps/")))
    original = src.site.get(refmap)
    client = s3_bucket.endpoint.client()
    client.put_object(Bucket=s3_bucket.bucket, Key=s3_bucket.key(f"src/{refmap}"), Body=b"{}")
    with pytest.raises(HyperslabError) as err:
        sync(src, dst_site, sources=True)
    assert err.value.code == "sync_failed" and refmap in str(err.value.details)
    assert not list(dst_site.list("refs/"))  # the branch did not move
    assert not dst_site.exists(refmap)
    # repaired, the re-run completes and the copy holds every object bit for bit
    client.put_object(Bucket=s3_bucket.bucket, Key=s3_bucket.key(f"src/{refmap}"), Body=original)
    report = sync(src, dst_site, sources=True)
    assert report.ok and report.refs[0].status == "create"
    assert fsck(Repository.open(dst_site)).clean
    assert unpacked(dst_site) == unpacked(src.site)


@pytest.mark.parametrize("damage", ["same-size", "truncated"])
def test_s3_to_s3_streams_large_objects_and_never_completes_a_bad_one(
    s3_bucket: S3Bucket, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, damage: str
) -> None:
    """Objects above LOOP_COPY_MAX are piped from one GET into one PUT. The PUT's last
    block is held back until the bytes hash right, so a damaged source never becomes
    an object at the destination (the server sees a cut-short request)."""
    from hyperslab.errors import HyperslabError
    from tests.sync.test_sync_protocol import _grow

    monkeypatch.setattr("hyperslab.sync.transfer.LOOP_COPY_MAX", 0)  # everything sized streams
    monkeypatch.setattr("hyperslab.storage.s3.wire.STREAM_BLOCK", 1024)  # many blocks per object
    src = Repository.init(s3_bucket.site("src"))
    _grow(src, tmp_path / "files", 0, 3)
    dst_site = s3_bucket.site("dst")
    source = next(iter(src.site.list("sources/")))
    original = src.site.get(source)
    assert len(original) > 3 * 1024
    bad = bytes([original[0] ^ 1]) + original[1:] if damage == "same-size" else original[:-100]
    client = s3_bucket.endpoint.client()
    client.put_object(Bucket=s3_bucket.bucket, Key=s3_bucket.key(f"src/{source}"), Body=bad)
    with pytest.raises(HyperslabError) as err:
        sync(src, dst_site, sources=True)
    assert err.value.code == "sync_failed" and source in str(err.value.details)
    assert "corrupt" in str(err.value.details)
    assert not dst_site.exists(source)  # not even a partial object
    assert not list(dst_site.list("refs/"))
    client.put_object(Bucket=s3_bucket.bucket, Key=s3_bucket.key(f"src/{source}"), Body=original)
    report = sync(src, dst_site, sources=True)
    assert report.ok and report.copied["source"] >= 1
    assert fsck(Repository.open(dst_site)).clean
    assert unpacked(dst_site) == unpacked(src.site)
