"""Sync writes entry records, refmaps and checksums packed (references/object_packs.py):
chains of replicas, the loose layout on request, incremental syncs across a leaf
split, and a sync killed between its packs and its locators."""

from __future__ import annotations

from pathlib import Path

import pytest

from hyperslab.errors import HyperslabError
from hyperslab.references.fsck import fsck
from hyperslab.references.keys import LOCATOR_PREFIX, PACK_PREFIX
from hyperslab.references.repository import Repository
from hyperslab.sync import sync
from tests.conftest import S3Bucket
from tests.references.test_packs import _arrays
from tests.sync.objects import unpacked
from tests.sync.test_sync_protocol import _grow, _site


def _same_data(a: Repository, b: Repository) -> None:
    want, got = _arrays(a), _arrays(b)
    assert want.keys() == got.keys() and want
    for name in want:
        assert (want[name] == got[name]).all(), name


def test_a_packed_replica_syncs_on_packed_or_loose(tmp_path: Path) -> None:
    src = Repository.init(_site("a"))
    _grow(src, tmp_path, 0, 5)
    b, c, d = _site("b"), _site("c"), _site("d")
    sync(src, b, sources=True)
    b_repo = Repository.open(b)
    # B → C: read out of B's packs, packed again at C
    report = sync(b_repo, c, sources=True)
    assert report.packs == 1 and report.copied["entry"] == 5
    # B → D loose: one object per key, exactly the source's layout
    loose = sync(Repository.open(b), d, sources=True, pack=False)
    assert loose.packs == 0 and loose.locators == 0
    assert not list(d.list(PACK_PREFIX)) and not list(d.list(LOCATOR_PREFIX))
    want = unpacked(src.site)
    for site in (b, c, d):
        assert unpacked(site) == want
        assert fsck(Repository.open(site)).clean
    assert {k: d.get(k) for k in d.list("")} == want
    _same_data(src, Repository.open(c))


def test_incremental_sync_across_a_leaf_split_copies_only_the_change(tmp_path: Path) -> None:
    """When a source leaf splits, each new leaf is diffed against the old one: only the
    new entry is copied, and the others keep their packed locations."""
    src = Repository.init(_site("a"))
    src.tree.leaf_max = 4
    _grow(src, tmp_path, 0, 4)
    dst_site = _site("b")
    sync(src, dst_site)
    _grow(src, tmp_path, 10, 1)  # 5 > 4: the root leaf splits
    assert len(list(src.tree.leaves(src.snapshot(src.resolve("main")).tree))) > 1
    report = sync(src, dst_site)
    assert report.copied["entry"] == 1 and report.copied["refmap"] == 1
    dst = Repository.open(dst_site)
    dst.tree.leaf_max = 4
    _same_data(src, dst)
    assert fsck(Repository.open(dst_site)).clean


def test_sync_killed_between_packs_and_locators_does_not_upload_a_pack_again(
    tmp_path: Path,
) -> None:
    src = Repository.init(_site("a"))
    src.tree.leaf_max = 4
    _grow(src, tmp_path, 0, 10)  # several leaves: several packs
    probe = _site("probe")
    sync(src, probe)
    order = probe.puts
    first_locator = next(i for i, k in enumerate(order) if k.startswith(LOCATOR_PREFIX))
    packs = [k for k in order if k.startswith(PACK_PREFIX)]
    assert len(packs) > 1 and all(order.index(p) < first_locator for p in packs)
    dst = _site("b")
    dst.fail_after = first_locator + 1  # every pack and one locator land, then it is down
    with pytest.raises(HyperslabError):
        sync(src, dst)
    assert not list(dst.list("refs/"))  # nothing reachable moved
    dst.fail_after = None
    dst.reset()
    report = sync(src, dst)
    assert report.ok and not any(k.startswith(PACK_PREFIX) for k in dst.puts)
    assert sum(report.copied.values()) < sum(probe_copied(src).values())
    assert unpacked(dst) == unpacked(probe)
    assert {k: dst.get(k) for k in dst.list("")} == {k: probe.get(k) for k in probe.list("")}
    assert fsck(Repository.open(dst)).clean


def probe_copied(src: Repository) -> dict[str, int]:
    return sync(src, _site("again")).copied


def test_s3_replicas_read_and_write_packs_on_the_io_loop(
    s3_bucket: S3Bucket, tmp_path: Path
) -> None:
    """S3 to S3, where the copy runs as coroutines: packing at B, reading B's packs
    into new packs at C, and B's packs into loose objects at D."""
    from hyperslab.sync.transfer import shared_loop

    src = Repository.init(s3_bucket.site("a"))
    _grow(src, tmp_path, 0, 4)
    b, c, d = s3_bucket.site("b"), s3_bucket.site("c"), s3_bucket.site("d")
    assert shared_loop(src.site, b) is not None
    sync(src, b, sources=True)
    assert sync(Repository.open(b), c, sources=True).packs == 1
    assert sync(Repository.open(b), d, sources=True, pack=False).packs == 0
    want = unpacked(src.site)
    for site in (b, c, d):
        assert unpacked(site) == want
        assert fsck(Repository.open(site)).clean
    _same_data(src, Repository.open(c))


@pytest.mark.parametrize("client", ["wire", "botocore"])
def test_s3_sources_the_source_does_not_hold_are_reported_on_the_io_loop(
    s3_bucket: S3Bucket, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, client: str
) -> None:
    """S3 to S3, a source file the source site does not hold: the check that it is
    really absent there runs off the IO loop, whichever S3 client the sites use."""
    from hyperslab.convert.ingest import ingest
    from tests.sync.test_sync_protocol import _h5

    if client == "botocore":
        monkeypatch.setenv("HYPERSLAB_S3_CLIENT", "botocore")
    src = Repository.init(s3_bucket.site("a"))
    _grow(src, tmp_path, 0, 1)
    ingest(src, [str(_h5(tmp_path / "plain.h5", 99))], fail_fast=True)  # not uploaded
    dst = s3_bucket.site("b")
    assert src.site.client == dst.client == client  # type: ignore[attr-defined]
    report = sync(src, dst, sources=True)
    assert report.ok and [k.rsplit("/", 1)[1] for k in report.sources_absent] == ["plain.h5"]
    assert report.copied["source"] == 1
    assert fsck(Repository.open(dst)).clean
