"""The sync protocol on local and memory sites: plan, idempotence, cost, conflicts, faults."""

from __future__ import annotations

import threading
import uuid
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import zarr

from hyperslab.access.store import open_store
from hyperslab.convert.ingest import ingest
from hyperslab.errors import ConfigError, HyperslabError, TransientError
from hyperslab.references.fsck import fsck
from hyperslab.references.repository import Repository
from hyperslab.storage import FileSite, MemorySite, Site
from hyperslab.sync import (
    DivergedError,
    HotRules,
    RepositoryMismatchError,
    SyncFailedError,
    sync,
)
from hyperslab.sync.transfer import RateLimiter
from tests.sync.objects import unpacked


class CountingSite(MemorySite):
    """A memory site that counts every request and can fail writes after N of them."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.calls: dict[str, int] = {}
        self.fail_after: int | None = None
        self.puts: list[str] = []
        self._lock = threading.Lock()

    def _count(self, op: str) -> None:
        with self._lock:
            self.calls[op] = self.calls.get(op, 0) + 1

    @property
    def requests(self) -> int:
        return sum(self.calls.values())

    def reset(self) -> None:
        self.calls.clear()
        self.puts.clear()

    def get(self, key: str) -> bytes:
        self._count("get")
        return super().get(key)

    def get_with_etag(self, key: str) -> tuple[bytes, str]:
        self._count("get")
        return super().get_with_etag(key)

    def get_range(self, key: str, start: int, length: int) -> bytes:
        self._count("get")
        return super().get_range(key, start, length)

    def head(self, key: str) -> Any:
        self._count("head")
        return super().head(key)

    def list(self, prefix: str = "") -> Any:
        self._count("list")
        return super().list(prefix)

    def put(self, key: str, data: bytes) -> None:
        with self._lock:
            if self.fail_after is not None and len(self.puts) >= self.fail_after:
                raise TransientError(f"{self.url} is down (injected)")
            self.puts.append(key)
        self._count("put")
        super().put(key, data)

    def put_if_match(self, key: str, data: bytes, expected_etag: str | None) -> str:
        if self.fail_after is not None and len(self.puts) >= self.fail_after:
            raise TransientError(f"{self.url} is down (injected)")
        self._count("put")
        return super().put_if_match(key, data, expected_etag)


def _site(tag: str) -> CountingSite:
    return CountingSite(f"{tag}-{uuid.uuid4().hex[:8]}")


def _h5(path: Path, seed: int, frames: int = 6) -> Path:
    rng = np.random.default_rng(seed)
    with h5py.File(path, "w") as f:
        f.create_dataset(
            "entry/data/data",
            data=rng.integers(0, 1000, size=(frames, 16, 24), dtype=np.uint16),
            chunks=(1, 16, 24),
            compression="gzip",
        )
        f["entry"].attrs["sample"] = f"s{seed}"
    return path


def _grow(repo: Repository, tmp: Path, first: int, n: int) -> None:
    """Add entries ``first .. first+n-1`` in one commit (each its own small file)."""
    tmp.mkdir(parents=True, exist_ok=True)
    paths = [str(_h5(tmp / f"f{i:04d}.h5", i)) for i in range(first, first + n)]
    ingest(repo, paths, upload_sources=True, fail_fast=True)


def _state(site: Site) -> dict[str, bytes]:
    return {k: site.get(k) for k in site.list("") if not k.startswith("replicas/done/")}


def test_first_sync_then_noop_then_incremental(tmp_path: Path) -> None:
    src_site, dst_site = _site("src"), _site("dst")
    src = Repository.init(src_site)
    _grow(src, tmp_path, 0, 5)
    plan = sync(src, dst_site, dry_run=True)
    assert plan.dry_run and plan.planned["entry"] == 5 and not list(dst_site.list(""))
    first = sync(src, dst_site)
    assert first.refs[0].status == "create" and first.copied["entry"] == 5
    assert unpacked(dst_site).keys() <= _state(src_site).keys()
    # 5 entries are one leaf: their records, refmaps and checksums are one pack
    assert first.packs == 1 and first.locators == 1 and first.copied["refmap"] == 5
    dst = Repository.open(dst_site)
    assert dst.branch_head("main")[0] == src.branch_head("main")[0] and dst.id == src.id
    assert fsck(dst).clean
    # unchanged: compare heads and stop
    dst_site.reset()
    again = sync(src, dst_site)
    assert again.refs[0].status == "up-to-date" and again.bytes_copied == 0
    assert dst_site.puts == [] and dst_site.requests <= 2
    # one more entry: only it (its record, refmap, checksums), the changed tree path
    # and the snapshot are copied
    _grow(src, tmp_path, 5, 1)
    dst_site.reset()
    inc = sync(src, dst_site)
    assert inc.refs[0].status == "fast-forward" and inc.copied["entry"] == 1
    assert inc.copied.get("refmap") == 1 and inc.copied["snapshot"] == 1
    assert Repository.open(dst_site).branch_head("main")[0] == src.branch_head("main")[0]


def _noop_and_increment_cost(tmp_path: Path, size: int) -> tuple[int, int, int]:
    src_site, dst_site = _site("src"), _site("dst")
    src = Repository.init(src_site)
    _grow(src, tmp_path, 0, size)
    sync(src, dst_site)
    src_site.reset()
    dst_site.reset()
    sync(src, dst_site)
    noop = src_site.requests + dst_site.requests
    _grow(src, tmp_path, 1000, 2)
    src_site.reset()
    dst_site.reset()
    report = sync(src, dst_site)
    return noop, src_site.requests + dst_site.requests, sum(report.copied.values())


def test_noop_is_constant_and_increment_is_flat_in_repository_size(tmp_path: Path) -> None:
    small = _noop_and_increment_cost(tmp_path / "s", 4)
    large = _noop_and_increment_cost(tmp_path / "l", 60)
    assert small[0] == large[0] <= 4  # refs at both sites, nothing else
    # the same 2-entry change costs about the same whatever the size (the tree is one
    # level deeper at most): never proportional to the 15x more entries
    assert large[1] <= small[1] + 12 and large[2] <= small[2] + 4


def test_diverged_destination_is_a_conflict_and_nothing_changes(tmp_path: Path) -> None:
    src_site, dst_site = _site("src"), _site("dst")
    src = Repository.init(src_site)
    _grow(src, tmp_path, 0, 2)
    sync(src, dst_site)
    dst = Repository.open(dst_site)
    _grow(dst, tmp_path, 100, 1)  # a commit made at the destination
    _grow(src, tmp_path, 200, 1)  # and another at the source
    before = _state(dst_site)
    with pytest.raises(DivergedError) as info:
        sync(src, dst_site)
    assert info.value.details["destination_head"] == dst.branch_head("main")[0]
    assert info.value.details["source_head"] == src.branch_head("main")[0]
    assert info.value.exit_status == 5 and _state(dst_site) == before
    forced = sync(src, dst_site, force=True)
    assert forced.refs[0].status == "forced"
    assert Repository.open(dst_site).branch_head("main")[0] == src.branch_head("main")[0]
    assert fsck(Repository.open(dst_site)).clean


def test_destination_ahead_is_left_alone(tmp_path: Path) -> None:
    src_site, dst_site = _site("src"), _site("dst")
    src = Repository.init(src_site)
    _grow(src, tmp_path, 0, 1)
    sync(src, dst_site)
    dst = Repository.open(dst_site)
    _grow(dst, tmp_path, 50, 1)
    head = dst.branch_head("main")[0]
    report = sync(src, dst_site)
    assert report.refs[0].status == "ahead" and dst.branch_head("main")[0] == head


def test_tags_and_other_branches(tmp_path: Path) -> None:
    src_site, dst_site = _site("src"), _site("dst")
    src = Repository.init(src_site)
    _grow(src, tmp_path, 0, 1)
    src.create_tag("paper-2026", "main", message="as published")
    src.create_branch("analysis")
    report = sync(src, dst_site, all_branches=True, tags=True)
    got = {(u.kind, u.name): u.status for u in report.refs}
    assert got == {
        ("branch", "analysis"): "create",
        ("branch", "main"): "create",
        ("tag", "paper-2026"): "create",
    }
    dst = Repository.open(dst_site)
    assert dst.tags() == src.tags() and dst.branches() == src.branches()
    assert dst_site.get("refs/tags/paper-2026") == src_site.get("refs/tags/paper-2026")
    # a tag of the same name on another snapshot at the destination never moves
    other = _site("other")
    sync(src, other)
    Repository.open(other).create_tag("paper-2026", Repository.open(other).resolve("main~1"))
    with pytest.raises(DivergedError):
        sync(src, other, tags=True)
    # not even with --force, and refused before anything is copied or moved
    _grow(src, tmp_path, 1, 1)
    other_site = other
    before = {k: other_site.get(k) for k in other_site.list("")}
    with pytest.raises(DivergedError, match="not even with --force"):
        sync(src, other, tags=True, force=True)
    assert {k: other_site.get(k) for k in other_site.list("")} == before


def test_corrupt_source_object_fails_the_sync_and_moves_no_ref(tmp_path: Path) -> None:
    src_site, dst_site = _site("src"), _site("dst")
    src = Repository.init(src_site)
    _grow(src, tmp_path, 0, 3)
    refmap = next(k for k in src_site.list("refmaps/"))
    good = src_site.get(refmap)
    src_site.put(refmap, good[:-1] + bytes([good[-1] ^ 1]))
    with pytest.raises(SyncFailedError) as info:
        sync(src, dst_site)
    assert refmap in info.value.message and info.value.exit_status == 7
    assert not list(dst_site.list("refs/branches/"))
    assert not list(dst_site.list("snapshots/"))  # no metadata over missing data
    src_site.put(refmap, good)  # repaired at the source: the re-run finishes
    assert sync(src, dst_site).refs[0].status == "create"
    assert fsck(Repository.open(dst_site)).clean


def test_destination_down_mid_sync_then_rerun_completes(tmp_path: Path) -> None:
    src_site, dst_site = _site("src"), _site("dst")
    src = Repository.init(src_site)
    _grow(src, tmp_path, 0, 4)
    dst_site.fail_after = 5
    with pytest.raises(HyperslabError):
        sync(src, dst_site, sources=True)
    assert not list(dst_site.list("refs/branches/"))
    uploaded = set(dst_site.puts)
    dst_site.fail_after = None
    dst_site.reset()
    report = sync(src, dst_site, sources=True)
    assert report.refs[0].status == "create"
    assert not uploaded & set(dst_site.puts) - {"repo.json"}  # nothing uploaded twice
    assert fsck(Repository.open(dst_site)).clean


@pytest.mark.parametrize("small_source", [64 << 20, 0], ids=["in-memory", "streamed"])
def test_two_syncs_at_once_both_end_consistent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, small_source: int
) -> None:
    monkeypatch.setattr("hyperslab.sync.transfer.SMALL_SOURCE", small_source)
    src_site = _site("src")
    dst_dir = tmp_path / "dst"
    src = Repository.init(src_site)
    _grow(src, tmp_path, 0, 4)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            sync(src, str(dst_dir), sources=True)
        except BaseException as exc:  # collected for the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    dst = Repository.open(FileSite(dst_dir))
    assert dst.branch_head("main")[0] == src.branch_head("main")[0]
    assert fsck(dst).clean


def test_destination_of_another_repository_is_refused(tmp_path: Path) -> None:
    a, b = Repository.init(_site("a")), Repository.init(_site("b"))
    with pytest.raises(RepositoryMismatchError):
        sync(a, b)


def test_hot_frames_rule_selects_the_last_frames_and_readers_use_them(tmp_path: Path) -> None:
    src_site, dst_site = _site("src"), _site("dst")
    src = Repository.init(src_site)
    path = _h5(tmp_path / "scan.h5", 1, frames=10)
    ingest(src, [str(path)], upload_sources=False)
    rules = HotRules.from_dict({"rule": [{"arrays": "entry/data/data", "frames": "-3:"}]})
    report = sync(src, dst_site, hot=rules)
    assert report.hot_chunks == 3 and report.copied["chunk_pack"] == 1
    again = sync(src, dst_site, hot=rules)  # the completed selection is remembered
    assert again.hot_chunks == 0 and again.bytes_copied == 0
    path.rename(tmp_path / "gone.h5")  # only the destination's pack can serve now
    store = open_store(Repository.open(dst_site), "scan", cache=False)
    arr = zarr.open_group(store, mode="r")["entry/data/data"]
    with h5py.File(tmp_path / "gone.h5") as f:
        np.testing.assert_array_equal(arr[7:], f["entry/data/data"][7:])
    with pytest.raises(HyperslabError, match=r"entry/data/data/0\.0\.0"):
        arr[0]


@pytest.mark.parametrize(
    "doc",
    [
        {},
        {"rule": [{"frames": "1:2:0"}]},
        {"rule": [{"frames": 5}]},
        {"rule": [{"entrys": "*"}]},
        {"used": [{"min_reads": 0}]},
        {"rule": [{}], "max_bytes": "lots"},
    ],
)
def test_bad_hot_rules_are_named_errors(doc: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        HotRules.from_dict(doc)


def test_rate_limiter_spaces_transfers_by_bytes() -> None:
    limiter = RateLimiter(1000)
    start = limiter._next
    limiter.take(500)
    limiter.take(500)
    assert limiter._next - start >= 1.0  # 1000 bytes at 1000 B/s: one second of budget
    RateLimiter(None).take(10**9)  # no limit: returns at once


def test_hot_by_use_copies_the_chunks_read_often(tmp_path: Path) -> None:
    from hyperslab.reading.access_stats import AccessStats

    src_site, dst_site = _site("src"), _site("dst")
    src = Repository.init(src_site)
    ingest(src, [str(_h5(tmp_path / "scan.h5", 2, frames=8))], upload_sources=False)
    stats = AccessStats(tmp_path / "stats.sqlite")
    for _ in range(3):  # frames 2 and 5 read three times, frame 0 once
        store = open_store(src, "scan", cache=False, stats=stats)
        arr = zarr.open_group(store, mode="r")["entry/data/data"]
        arr[2], arr[5]
    arr[0]
    stats.flush()
    rules = HotRules.from_dict({"used": [{"min_reads": 2}]})
    report = sync(src, dst_site, hot=rules, stats=stats)
    assert report.hot_chunks == 2
    held = {int(o) for ix in _indexes(dst_site) for o in ix.offset}
    view = open_store(src, "scan", cache=False).view
    want = {view.chunks.find("entry/data/data", lin)[1] for lin in (2, 5)}  # type: ignore[index]
    assert held == want


def _indexes(site: Site) -> list[Any]:
    from hyperslab.references.chunk_replicas import read_replica_index

    keys = [k for k in site.list("replicas/") if k.endswith(".parquet")]
    return [read_replica_index(site, k) for k in keys]


def test_sources_the_source_does_not_hold_are_reported_not_failed(tmp_path: Path) -> None:
    """--sources copies the files the source site holds; an entry ingested without
    --upload-sources has none there, which is no reason to fail the sync."""
    src = Repository.init(_site("src"))
    _grow(src, tmp_path, 0, 2)  # uploaded
    ingest(src, [str(_h5(tmp_path / "plain.h5", 99))], fail_fast=True)  # not uploaded
    dst_site = _site("dst")
    report = sync(src, dst_site, sources=True)
    assert report.ok and report.refs[0].status == "create"
    assert len(report.sources_absent) == 1 and report.sources_absent[0].endswith("/plain.h5")
    assert report.copied["source"] == 2
    assert report.to_json()["sources_absent"] == report.sources_absent
    assert fsck(Repository.open(dst_site)).clean
