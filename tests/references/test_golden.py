"""Golden repositories: every format version ever written stays readable.

``golden/v1`` was written by ``make_golden.py`` with format version 1 and is
never regenerated. These tests pin what a reader must see in it.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from hyperslab.convert.verify import verify
from hyperslab.references.fsck import fsck
from hyperslab.references.keys import SOURCE_SCHEME, source_key
from hyperslab.references.refmap_files import write_refmap
from hyperslab.references.refmap_objects import decode_refmap
from hyperslab.references.repository import Repository
from hyperslab.references.search import search

GOLDEN = Path(__file__).parent / "golden"


def _golden(tmp_path: Path, version: str) -> Repository:
    """A writable copy of ``golden/<version>`` (tests must never touch the original)."""
    copy = tmp_path / version
    shutil.copytree(GOLDEN / version, copy)
    return Repository.open(str(copy))


@pytest.fixture
def golden_v1(tmp_path: Path) -> Repository:
    return _golden(tmp_path, "v1")


def test_v1_history_refs_and_entries(golden_v1: Repository) -> None:
    repo = golden_v1
    assert repo.info["version"] == 1
    assert [s.message for s in repo.log("main")] == [
        "two more",
        "first scan",
        "repository created",
    ]
    assert next(s.message for s in repo.log("dev")) == "on dev"
    assert repo.resolve("v1") == repo.resolve("main~1")
    assert sorted(repo.branches()) == ["dev", "main"]
    assert sorted(n for n, _ in repo.entries("main")) == [
        "run1/scan_0001",
        "run1/scan_0002_bslz4",
        "run1/scan_0003_multi",
    ]
    assert sorted(n for n, _ in repo.entries("dev")) == ["dev/only", "run1/scan_0001"]
    d = repo.diff("v1", "main")
    assert sorted(d) == ["run1/scan_0002_bslz4", "run1/scan_0003_multi"]
    assert all(a is None for a, _ in d.values())
    assert [n for n, _ in search(repo, "main", "sample~lab6")] == [
        "run1/scan_0001",
        "run1/scan_0003_multi",
    ]
    assert [n for n, _ in search(repo, "v1", "title~*gzip*")] == ["run1/scan_0001"]
    report = fsck(repo)
    assert report.clean, report.problems
    assert report.checked == {
        "snapshots": 4,
        "manifests": 3,
        "entries": 4,
        "refmaps": 4,
        "checksums": 0,  # v1 entries written before per-chunk checksums: read unverified
        "sources": 3,
        "chunks": 0,
        "chunk_packs": 0,  # hot-chunk packs and replicas are written by sync, which v1 predates
        "hot_chunks": 0,
        "replicas": 0,
        "catalogs": 0,  # v1 repositories written before catalog indexes: search reads leaves
        "locators": 0,  # everything loose: object packs are written by sync, which v1 predates
        "packs": 0,
    }
    assert [w["count"] for w in report.warnings if w["kind"] == "catalog"] == [3]


@pytest.mark.parametrize(
    ("entry", "fmt"), [("run1/scan_0002_bslz4", "parquet"), ("run1/scan_0003_multi", "parquet")]
)
def test_v1_refmaps_read_the_uploaded_sources_bit_exactly(
    golden_v1: Repository, entry: str, fmt: str, tmp_path: Path
) -> None:
    repo = golden_v1
    rec = repo.entry("main", entry)
    assert rec["refmap"]["format"] == fmt
    data = repo.get_object("refmap", rec["refmap"]["id"], f".{fmt}")
    refmap = decode_refmap(data, fmt)  # type: ignore[arg-type]
    assert set(refmap.arrays) == set(rec["arrays"])
    # stage the uploaded sources side by side under their names, as HDF5 external
    # links expect (the repository keeps each under its own hash)
    root = Path(repo.site.url.removeprefix("file://"))
    staged = tmp_path / "sources"
    staged.mkdir()
    local = {}
    for s in rec["sources"]:
        shutil.copy(root / source_key(s["id"], s["name"]), staged / s["name"])
        local[SOURCE_SCHEME + s["id"]] = str(staged / s["name"])
    refmap.sources = [local[u] for u in refmap.sources]
    refs = write_refmap(refmap, tmp_path / "refs.json")
    main_source = local[SOURCE_SCHEME + rec["sources"][0]["id"]]
    report = verify(main_source, refs)
    assert report.arrays and all(a.ok for a in report.arrays), [
        a for a in report.arrays if not a.ok
    ]
    assert not report.missing


# ``golden/v1.1``: format 1 as written from the session that added catalog indexes
# (catalogs/) and per-chunk checksums (checksums/); same content as v1 otherwise.


@pytest.fixture
def golden_v1_1(tmp_path: Path) -> Repository:
    return _golden(tmp_path, "v1.1")


def test_v1_1_indexes_and_checksums(golden_v1_1: Repository) -> None:
    repo = golden_v1_1
    assert repo.info["version"] == 1
    assert sorted(n for n, _ in repo.entries("main")) == [
        "run1/scan_0001",
        "run1/scan_0002_bslz4",
        "run1/scan_0003_multi",
    ]
    report = fsck(repo)
    assert report.clean, report.problems
    assert not report.warnings  # every leaf has its catalog index
    assert report.checked["catalogs"] == report.checked["manifests"] == 3
    assert report.checked["checksums"] == 3  # dev/only shares scan_0002's file
    hits = search(repo, "main", "sample~lab6")
    assert [n for n, _ in hits] == ["run1/scan_0001", "run1/scan_0003_multi"]
    assert hits.total == 2 and hits[0][1]["name"] == "run1/scan_0001"


@pytest.mark.parametrize("version", ["v1.1", "v1.1-packed"])
def test_v1_1_store_reads_uploaded_sources_verified(tmp_path: Path, version: str) -> None:
    from hyperslab.access.store import open_store
    from hyperslab.convert.verify import verify_store

    repo = _golden(tmp_path, version)
    root = Path(repo.site.url.removeprefix("file://"))
    store = open_store(repo, "run1/scan_0002_bslz4", cache=False, stats=False)
    assert store.view.verified  # chunk checksums recorded, checked on every read
    rec = store.view.record
    staged = root / source_key(rec["sources"][0]["id"], rec["sources"][0]["name"])
    report = verify_store(staged, store, sorted(store.view.refmap.arrays), label="golden")
    assert report.ok, [(a.path, a.detail) for a in report.arrays if not a.ok]
    assert store.router.stats.requests > 0 and store.router.stats.fallbacks == 0


# ``golden/v1.1-packed``: v1.1 synced (all branches, tags, sources) by the session that
# added object packs: entry records, refmaps and checksums live in packs/, one per
# leaf, found through locators/ (references/object_packs.py).


def test_v1_1_packed_replica_holds_exactly_what_v1_1_holds(tmp_path: Path) -> None:
    loose, packed = _golden(tmp_path, "v1.1"), _golden(tmp_path, "v1.1-packed")
    for prefix in ("entries/", "refmaps/", "checksums/"):
        assert not list(packed.site.list(prefix))
    assert len(list(packed.site.list("packs/"))) == len(list(packed.site.list("locators/"))) == 3
    assert packed.branches() == loose.branches() and packed.tags() == loose.tags()
    for ref in ("main", "dev", "v1"):
        names = [n for n, _ in loose.entries(ref)]
        assert [n for n, _ in packed.entries(ref)] == names
        for name in names:
            rec = loose.entry(ref, name)
            assert packed.entry(ref, name) == rec
            rm = rec["refmap"]
            ext = ".parquet" if rm.get("format") == "parquet" else ".json"
            assert packed.get_object("refmap", rm["id"], ext) == loose.get_object(
                "refmap", rm["id"], ext
            )
            sums = rec["checksums"]["id"]
            assert packed.get_object("checksums", sums, ".parquet") == loose.get_object(
                "checksums", sums, ".parquet"
            )
    report = fsck(packed)
    assert report.clean, report.problems
    assert report.checked["packs"] == report.checked["locators"] == 3
    assert report.checked["refmaps"] == 4 and report.checked["checksums"] == 3
