"""Repository behaviour, identical on file://, memory:// and loopback S3.

Every test gets fresh sites from ``new_repo_site`` (parametrised over the three
backends), so the whole class runs three times.
"""

from __future__ import annotations

import json
import re
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from hyperslab.convert.api import build_refmap
from hyperslab.convert.ingest import ingest
from hyperslab.errors import BadInputError, FormatVersionError, NotFoundError, UnsafeNameError
from hyperslab.references.format import canonical_json
from hyperslab.references.fsck import fsck
from hyperslab.references.gc import gc, parse_duration
from hyperslab.references.keys import SOURCE_SCHEME, object_key, source_key
from hyperslab.references.refmap import RefMap
from hyperslab.references.refmap_objects import decode_refmap, encode_refmap
from hyperslab.references.repository import (
    BranchConflictError,
    CasUnsupportedError,
    EntryConflictError,
    NotARepositoryError,
    Repository,
    RepositoryExistsError,
)
from hyperslab.references.search import search
from hyperslab.storage import MemorySite, Site, forget_memory_site

from .conftest import SiteFactory


def _value(repo: Repository, name: str, payload: Any) -> dict[str, Any]:
    """A minimal entry (record + tree value) for protocol tests that need no HDF5."""
    data, fmt = encode_refmap(RefMap())
    rid = repo.put_object("refmap", data, ".json")
    record = {
        "name": name,
        "payload": payload,
        "sources": [],
        "arrays": {},
        "refmap": {"id": rid, "format": fmt, "refs": 0},
    }
    eid = repo.write_json("entry", record)
    return {"id": eid, "catalog": {"name": name, "payload": payload}}


def _fresh(factory: SiteFactory, version: int | None = None) -> Repository:
    site, _ = factory()
    return Repository.init(site) if version is None else Repository.init(site, version=version)


# ------------------------------------------------------------------ init / open


def test_init_creates_main_at_empty_snapshot(new_repo_site: SiteFactory) -> None:
    _site, spec = new_repo_site()
    repo = Repository.init(spec)
    heads = repo.branches()
    assert list(heads) == ["main"]
    snap = repo.snapshot(heads["main"])
    assert snap.parents == () and snap.n_entries == 0 and snap.tree is None
    again = Repository.open(spec)
    assert again.id == repo.id and again.branches() == heads
    with pytest.raises(RepositoryExistsError, match="already holds a repository"):
        Repository.init(spec)
    assert Repository.open(spec).branches() == heads  # nothing overwritten


def test_open_refuses_non_repository_and_newer_format(new_repo_site: SiteFactory) -> None:
    site, spec = new_repo_site()
    with pytest.raises(NotARepositoryError):
        Repository.open(spec)
    Repository.init(site)
    info = json.loads(site.get("repo.json"))
    info["version"] = 99
    site.put("repo.json", json.dumps(info).encode())
    with pytest.raises(FormatVersionError, match="format 99"):
        Repository.open(spec)
    site.put("repo.json", b"not json")
    from hyperslab.errors import CorruptError

    with pytest.raises(CorruptError):
        Repository.open(spec)


def test_objects_are_verified_against_their_hash(new_repo_site: SiteFactory) -> None:
    repo = _fresh(new_repo_site)
    oid = repo.write_json("entry", {"name": "x"})
    key = object_key("entry", oid)
    repo.site.put(key, canonical_json({"format": 1, "type": "entry", "name": "evil"}))
    from hyperslab.errors import CorruptError

    fresh = Repository.open(repo.site)  # no cache
    with pytest.raises(CorruptError, match="corrupt"):
        fresh.read_json("entry", oid)


# ------------------------------------------------------------------ commits


def test_commit_modify_remove_and_history(new_repo_site: SiteFactory) -> None:
    repo = _fresh(new_repo_site)
    r1 = repo.commit({"a": _value(repo, "a", 1), "b/c": _value(repo, "b/c", 2)}, message="one")
    assert r1.snapshot is not None and sorted(r1.added) == ["a", "b/c"]
    r2 = repo.commit({"a": _value(repo, "a", 3), "b/c": None}, message="two")
    assert r2.snapshot is not None and r2.modified == ["a"] and r2.removed == ["b/c"]
    r3 = repo.commit({"a": _value(repo, "a", 3)}, message="same again")
    assert r3.snapshot is None and r3.unchanged == ["a"]
    log = list(repo.log("main"))
    assert [s.message for s in log] == ["two", "one", "repository created"]
    assert log[0].parents == (log[1].id,)
    assert dict(repo.entries(log[0]))["a"]["catalog"]["payload"] == 3
    assert set(dict(repo.entries(log[1]))) == {"a", "b/c"}  # old snapshot unchanged
    d = repo.diff("main~1", "main")
    assert set(d) == {"a", "b/c"} and d["b/c"][1] is None
    assert repo.resolve("main~2") == log[2].id
    assert repo.resolve(log[1].id[:10]) == log[1].id


def test_bad_names_are_refused(new_repo_site: SiteFactory) -> None:
    repo = _fresh(new_repo_site)
    for bad in ("../x", "a//b", "/abs", "a/./b", ""):
        with pytest.raises(UnsafeNameError):
            repo.commit({bad: None}, message="x")
    for bad in ("-x", "a..b", "x.lock", "a b"):
        with pytest.raises(UnsafeNameError):
            repo.create_branch(bad)
    with pytest.raises(NotFoundError):
        repo.resolve("no-such-branch")
    with pytest.raises(BadInputError):
        repo.resolve("main~x")


def test_concurrent_commits_merge_disjoint_and_conflict_on_same_entry(
    new_repo_site: SiteFactory,
) -> None:
    repo = _fresh(new_repo_site)
    base = repo.commit({"shared": _value(repo, "shared", 0)}, message="base").snapshot
    assert base is not None
    # Two writers prepared against the same base: disjoint entries both land ...
    ok1 = repo.commit({"x": _value(repo, "x", 1)}, message="x", base=base.id)
    ok2 = repo.commit({"y": _value(repo, "y", 1)}, message="y", base=base.id)
    assert ok1.snapshot and ok2.snapshot and ok2.snapshot.parents == (ok1.snapshot.id,)
    assert {n for n, _ in repo.entries(ok2.snapshot)} == {"shared", "x", "y"}
    # ... the same entry changed differently: the later one gets the named conflict
    repo.commit({"shared": _value(repo, "shared", 1)}, message="s1", base=base.id)
    with pytest.raises(EntryConflictError) as ei:
        repo.commit({"shared": _value(repo, "shared", 2)}, message="s2", base=base.id)
    assert ei.value.details["entries"] == ["shared"]
    assert ei.value.exit_status == 5
    # the very same change is not a conflict
    same = repo.commit({"shared": _value(repo, "shared", 1)}, message="s1 again", base=base.id)
    assert same.snapshot is None


def test_racing_threads_lose_no_update(new_repo_site: SiteFactory) -> None:
    repo = _fresh(new_repo_site)
    base = repo.branch_head("main")[0]
    values = {f"t{i}": _value(repo, f"t{i}", i) for i in range(6)}
    barrier = threading.Barrier(len(values))
    errors: list[BaseException] = []

    def work(name: str) -> None:
        r = Repository.open(repo.site)
        barrier.wait()
        try:
            r.commit({name: values[name]}, message=name, base=base)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in values]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    log = list(repo.log("main"))
    assert len(log) == len(values) + 1
    assert {n for n, _ in repo.entries(log[0])} == set(values)
    assert all(len(s.parents) <= 1 for s in log)
    assert fsck(repo).clean


# ------------------------------------------------------------------ refs


def test_branches_and_tags(new_repo_site: SiteFactory) -> None:
    repo = _fresh(new_repo_site)
    first = repo.commit({"a": _value(repo, "a", 1)}, message="a").snapshot
    assert first is not None
    repo.create_branch("dev/feature", "main")
    with pytest.raises(BranchConflictError):
        repo.create_branch("dev/feature", "main")
    repo.commit({"b": _value(repo, "b", 1)}, message="b", branch="dev/feature")
    assert repo.branches()["main"] == first.id
    assert repo.branches()["dev/feature"] != first.id
    repo.create_tag("v1", "main", "first release")
    with pytest.raises(BranchConflictError, match="never move"):
        repo.create_tag("v1", "dev/feature")
    assert repo.tags() == {"v1": first.id}
    assert repo.resolve("v1") == first.id
    repo.delete_branch("dev/feature")
    assert list(repo.branches()) == ["main"]
    with pytest.raises(NotFoundError):
        repo.commit({"c": _value(repo, "c", 1)}, message="c", branch="gone")
    # misspelled refs and entries name the close ones
    with pytest.raises(NotFoundError, match=r"did you mean 'main'\?"):
        repo.resolve("mian")
    with pytest.raises(NotFoundError, match=r"did you mean 'v1'\?"):
        repo.resolve("V1")
    with pytest.raises(NotFoundError, match=r"branches and tags: main, v1\)"):
        repo.resolve("zzz")
    repo.commit({"scan_0042": _value(repo, "scan_0042", 1)}, message="d")
    with pytest.raises(NotFoundError, match=r"did you mean 'scan_0042'\?"):
        repo.entry("main", "scan_042")
    with pytest.raises(NotFoundError, match=r"entries: a, scan_0042\)"):
        repo.entry("main", "zzz")


# ------------------------------------------------------------------ ingest


def test_ingest_samples_roundtrip(new_repo_site: SiteFactory, sample_dir: Path) -> None:
    site, spec = new_repo_site()
    repo = Repository.init(spec)
    res = ingest(repo, [str(sample_dir)], name="run1", upload_sources=True)
    assert res.commit is not None and res.commit.snapshot is not None
    names = sorted(n for n, _ in repo.entries(res.commit.snapshot))
    assert names == [f"run1/{p.stem}" for p in sorted(sample_dir.glob("*")) if p.is_file()]
    rec = repo.entry("main", "run1/scan_0001_gzip")
    src = rec["sources"][0]
    assert src["name"] == "scan_0001_gzip.nxs"
    assert site.get(source_key(src["id"], src["name"])) == (sample_dir / src["name"]).read_bytes()
    # the stored map is the converter's map with sources named by content
    data = repo.get_object("refmap", rec["refmap"]["id"], ".json")
    stored = decode_refmap(data, "json")
    direct = build_refmap(sample_dir / "scan_0001_gzip.nxs").refmap
    assert set(stored.arrays) == set(direct.arrays) == set(rec["arrays"])
    assert stored.sources == [SOURCE_SCHEME + src["id"]]
    for path, arr in direct.arrays.items():
        assert list(stored.arrays[path].offset) == list(arr.offset)
        assert stored.arrays[path].inline == arr.inline
    # the external link of scan_0003 is a second source of that entry
    multi = repo.entry("main", "run1/scan_0003_multi")
    assert [s["name"] for s in multi["sources"]] == [
        "scan_0003_multi.nxs",
        "scan_0003_multi_data_000001.h5",
    ]
    # re-ingest: identical objects, no new snapshot
    again = ingest(Repository.open(spec), [str(sample_dir)], name="run1", upload_sources=True)
    assert again.commit is not None and again.commit.snapshot is None
    assert again.entries[0]["uploaded"] == []
    report = fsck(repo)
    assert report.clean, report.problems
    assert report.checked["sources"] == 4


def test_ingest_bad_file_commits_the_rest(
    new_repo_site: SiteFactory, sample_dir: Path, tmp_path: Path
) -> None:
    repo = _fresh(new_repo_site)
    bad = tmp_path / "broken.h5"
    bad.write_bytes(b"not hdf5 at all")
    res = ingest(repo, [str(sample_dir / "scan_0001_gzip.nxs"), str(bad)])
    assert [n for n, _ in repo.entries(repo.resolve("main"))] == ["scan_0001_gzip"]
    assert res.failed and res.failed[0][1].code == "not_hdf5"
    from hyperslab.errors import NotHDF5Error

    before = repo.branch_head("main")[0]
    with pytest.raises(NotHDF5Error):
        ingest(repo, [str(bad)])
    assert repo.branch_head("main")[0] == before


def test_search_catalog(new_repo_site: SiteFactory, sample_dir: Path) -> None:
    repo = _fresh(new_repo_site)
    ingest(repo, [str(sample_dir)])

    def names(q: str) -> list[str]:
        return [n for n, _ in search(repo, "main", q)]

    assert names("sample~insulin") == ["scan_0002_bslz4", "scan_0003_multi"]
    assert names("sample=lysozyme*") == ["scan_0001_gzip"]
    assert names('sample="insulin crystal 7" energy>12.35') == ["scan_0003_multi"]
    assert names("energy<=12.5") == ["scan_0002_bslz4", "scan_0003_multi"]
    assert names("energy=12.617|12.3195") == ["scan_0001_gzip", "scan_0002_bslz4"]
    assert names("files~*data_000001*") == ["scan_0003_multi", "scan_0003_multi_data_000001"]
    assert names("title~*bitshuffle*") == ["scan_0002_bslz4"]
    assert names("signal_shape=4") == ["scan_0001_gzip", "scan_0002_bslz4"]
    assert names("sample!~insulin") == ["scan_0001_gzip", "scan_0003_multi_data_000001"]
    assert names("-insulin name~scan_000*") == ["scan_0001_gzip", "scan_0003_multi_data_000001"]
    assert names("@creator='hyperslab sample' dark") == ["scan_0003_multi"]
    assert names("start_time>=2026-01-15T20:20") == ["scan_0003_multi"]
    from hyperslab.references.catalog import QuerySyntaxError

    with pytest.raises(QuerySyntaxError):
        search(repo, "main", "energy>")
    with pytest.raises(QuerySyntaxError):
        search(repo, "main", 'title~"unterminated')
    # queries that could only ever match nothing (or, negated, everything) say why
    for q, why in [
        ("nosuchkey=1", "no entry of this snapshot records 'nosuchkey'"),
        ("nosuchkey!=1", "no entry of this snapshot records 'nosuchkey'"),
        ("enrgy>12", "did you mean 'energy'"),
        ("energy>abc", "compares numbers or ISO dates"),
        ("energy>>12", "compares numbers or ISO dates"),
        ("sample~[", "never closed"),
        ("sample=Si|[ab", "never closed"),
        ("@", "needs an attribute name"),
        ("@creator", "says nothing of it"),
        ("-", "nothing to look for"),
    ]:
        with pytest.raises(QuerySyntaxError, match=re.escape(why)):
            search(repo, "main", q)


def test_search_index_is_derived_checked_and_optional(new_repo_site: SiteFactory) -> None:
    from hyperslab.references.catalog_index import LeafCatalog
    from hyperslab.references.keys import catalog_key

    repo = _fresh(new_repo_site, version=2)  # format 3 indexes no 6-entry leaf
    repo.commit({f"e{i}": _value(repo, f"e{i}", i) for i in range(6)}, message="six")
    want = ["e3", "e4", "e5"]
    assert [n for n, _ in search(repo, "main", "payload>2")] == want
    leaf = repo.pinned("main").tree
    assert leaf is not None and list(repo.site.list("catalogs/")) == [catalog_key(leaf)]
    assert fsck(repo).clean and fsck(repo).checked["catalogs"] == 1

    def fresh_search(q: str) -> list[str]:  # a new Repository: nothing cached
        return [n for n, _ in search(Repository.open(repo.site), "main", q)]

    good = repo.site.get(catalog_key(leaf))
    # unreadable index → search rebuilds from the leaf; fsck names the damage
    repo.site.put(catalog_key(leaf), good[: len(good) // 2])
    assert fresh_search("payload>2") == want
    report = fsck(repo)
    assert [(p["kind"], p["id"], p["problem"]) for p in report.problems] == [
        ("catalog", leaf, "corrupt")
    ]
    # an intact index that disagrees with its leaf is caught by fsck
    wrong = LeafCatalog.build(leaf, {"e0": {"name": "e0", "payload": 99}}).to_bytes()
    repo.site.put(catalog_key(leaf), wrong)
    assert [p["problem"] for p in fsck(repo).problems] == ["corrupt"]
    # no index at all (a repository from before indexes): still correct, fsck clean
    repo.site.delete(catalog_key(leaf))
    assert fresh_search("payload>2") == want
    report = fsck(repo)
    assert report.clean and report.warnings[0]["count"] == 1
    assert fresh_search("payload>2 -e5") == ["e3", "e4"]
    repo.site.put(catalog_key(leaf), good)

    # gc: the index of an unreachable leaf goes with it, the live one stays
    repo.create_branch("tmp")
    repo.commit({"e0": None}, branch="tmp", message="drop e0")
    gone = repo.pinned("tmp").tree
    assert gone is not None and gone != leaf
    repo.delete_branch("tmp")
    later = datetime.now(UTC) + timedelta(days=30)
    dry = gc(repo, older_than=timedelta(days=7), dry_run=True, now=later)
    assert catalog_key(gone) in dry.deleted and catalog_key(leaf) not in dry.deleted
    gc(repo, older_than=timedelta(days=7), now=later)
    assert list(repo.site.list("catalogs/")) == [catalog_key(leaf)]
    assert fsck(repo).clean and fresh_search("payload<2") == ["e0", "e1"]


# ------------------------------------------------------------------ fsck / gc


def test_fsck_finds_missing_and_corrupt_objects(
    new_repo_site: SiteFactory, sample_dir: Path
) -> None:
    repo = _fresh(new_repo_site)
    ingest(repo, [str(sample_dir / "scan_0001_gzip.nxs")], upload_sources=True)
    assert fsck(repo).clean
    rec = repo.entry("main", "scan_0001_gzip")
    site = repo.site
    refmap_key = object_key("refmap", rec["refmap"]["id"], ".json")
    good = site.get(refmap_key)
    site.put(refmap_key, good[:-10] + b"0123456789")
    src = rec["sources"][0]
    skey = source_key(src["id"], src["name"])
    raw = bytearray(site.get(skey))
    raw[5000] ^= 0xFF
    site.put(skey, bytes(raw))
    report = fsck(Repository.open(site))
    kinds = sorted((p["kind"], p["problem"]) for p in report.problems)
    assert kinds == [("refmap", "corrupt"), ("source", "corrupt")]
    quick = fsck(Repository.open(site), verify_sources=False)
    assert [p["kind"] for p in quick.problems] == ["refmap"]
    site.delete(refmap_key)
    report = fsck(Repository.open(site), verify_sources=False)
    assert [(p["kind"], p["problem"]) for p in report.problems] == [("refmap", "missing")]


def test_gc_deletes_only_old_unreachable_objects(new_repo_site: SiteFactory) -> None:
    repo = _fresh(new_repo_site)
    repo.commit({"keep": _value(repo, "keep", 1)}, message="keep")
    repo.create_branch("tmp")
    repo.commit({"drop": _value(repo, "drop", 1)}, message="drop", branch="tmp")
    repo.delete_branch("tmp")
    before = set(repo.site.list(""))
    with pytest.raises(BadInputError, match="grace"):
        gc(repo, older_than=timedelta(minutes=5))
    young = gc(repo, older_than=parse_duration("7d"))
    assert young.deleted == [] and young.kept_young > 0
    future = datetime.now(UTC) + timedelta(days=30)
    dry = gc(repo, older_than=parse_duration("7d"), now=future, dry_run=True)
    assert dry.deleted and set(repo.site.list("")) == before
    done = gc(repo, older_than=parse_duration("7d"), now=future)
    assert sorted(done.deleted) == sorted(dry.deleted)
    # the unreachable snapshot, its tree and the dropped entry record; nothing reachable
    # (and no catalog index: format 3 keeps none for a leaf this small)
    assert {k.split("/")[0] for k in done.deleted} == {"snapshots", "manifests", "entries"}
    assert fsck(Repository.open(repo.site)).clean
    assert [n for n, _ in repo.entries(repo.resolve("main"))] == ["keep"]


# ------------------------------------------------------------------ CAS probing


class _NoCasSite(MemorySite):
    """Like s3rver: accepts conditional writes but ignores the condition."""

    def put_if_match(self, key: str, data: bytes, expected_etag: str | None) -> str:
        self.put(key, data)
        return self.etag(key)

    @property
    def supports_cas(self) -> bool:
        from hyperslab.storage import probe_cas

        return probe_cas(self)


def test_site_without_cas_is_refused_unless_single_writer() -> None:
    site = _NoCasSite("nocas-test")
    try:
        with pytest.raises(CasUnsupportedError, match="single-writer"):
            Repository.init(site)
        assert not site.exists("repo.json")
        repo = Repository.init(site, single_writer=True)
        assert repo.commit({"a": _value(repo, "a", 1)}, message="a").snapshot is not None
        shared = Repository.open(site)
        assert shared.single_writer
    finally:
        forget_memory_site("nocas-test")


def test_cas_repository_refuses_commit_on_site_that_lost_cas() -> None:
    name = "lostcas-test"
    try:
        Repository.init(MemorySite(name))
        repo = Repository.open(_NoCasSite(name))
        with pytest.raises(CasUnsupportedError):
            repo.commit({"a": None}, message="x")
    finally:
        forget_memory_site(name)


def _all_keys(site: Site) -> list[str]:
    return sorted(site.list(""))


class _FlakyCasSite(MemorySite):
    """The branch CAS times out once: before applying the write, or after it."""

    def __init__(self, name: str, applied: bool) -> None:
        super().__init__(name)
        self.applied = applied
        self.armed = False

    def put_if_match(self, key: str, data: bytes, expected_etag: str | None) -> str:
        if self.armed and key.startswith("refs/branches/"):
            self.armed = False
            if self.applied:
                super().put_if_match(key, data, expected_etag)
            from hyperslab.errors import TransientError

            raise TransientError("timed out")
        return super().put_if_match(key, data, expected_etag)


@pytest.mark.parametrize("applied", [True, False])
def test_commit_survives_an_ambiguous_branch_write(applied: bool) -> None:
    name = f"flaky-{applied}"
    try:
        site = _FlakyCasSite(name, applied)
        repo = Repository.init(site)
        site.armed = True
        res = repo.commit({"a": _value(repo, "a", 1)}, message="a")
        assert res.snapshot is not None
        log = list(repo.log("main"))
        assert [s.message for s in log] == ["a", "repository created"]  # exactly once
        assert log[0].id == res.snapshot.id
    finally:
        forget_memory_site(name)
