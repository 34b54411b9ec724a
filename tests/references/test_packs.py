"""Object packs and leaf locators (references/object_packs.py): the builder, the locator
format, and a repository whose entries were packed by sync: reads, commits on top of
it (including a leaf split), fsck and gc."""

from __future__ import annotations

import random
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
import zarr

from hyperslab.access.store import open_store
from hyperslab.errors import CorruptError, FormatVersionError, NotFoundError
from hyperslab.references.format import canonical_json, object_id
from hyperslab.references.fsck import fsck
from hyperslab.references.gc import gc
from hyperslab.references.keys import LOCATOR_PREFIX, PACK_PREFIX, locator_key, object_pack_key
from hyperslab.references.object_packs import Locator, Packer
from hyperslab.references.repository import Repository
from hyperslab.sync import sync
from tests.sync.test_sync_protocol import _grow, _site

# ----------------------------------------------------------------------- packer


def _blobs(n: int, seed: int = 0) -> list[tuple[str, bytes]]:
    rng = random.Random(seed)
    return [(f"entries/{i:064x}.json", rng.randbytes(rng.randrange(1, 300))) for i in range(n)]


@pytest.mark.parametrize("seed", range(5))
def test_packer_cuts_the_same_packs_whatever_order_the_bytes_arrive_in(seed: int) -> None:
    blobs = _blobs(40)
    keys = [k for k, _ in blobs]

    def run(order: list[int]) -> list[tuple[str, bytes, dict]]:
        packer = Packer(keys, target=1000)
        out = []
        for i in order:
            out += packer.add(i, blobs[i][1])
        return out

    in_order = run(list(range(len(blobs))))
    shuffled = list(range(len(blobs)))
    random.Random(seed).shuffle(shuffled)
    assert run(shuffled) == in_order
    assert len(in_order) > 3  # cut into several packs
    located = {}
    for pid, pack, where in in_order:
        assert object_id(pack) == pid
        assert len(pack) < 1000 + 300  # cut as soon as the target is reached
        for key, (p, off, n) in where.items():
            assert p == pid
            located[key] = pack[off : off + n]
    assert located == dict(blobs)


def test_packer_leaves_out_objects_stored_loose() -> None:
    blobs = _blobs(3)
    packer = Packer([k for k, _ in blobs])
    assert packer.add(2, blobs[2][1]) == []  # waits for the objects before it
    assert packer.add(0, None) == []
    [(_pid, pack, where)] = packer.add(1, blobs[1][1])
    assert set(where) == {blobs[1][0], blobs[2][0]} and pack == blobs[1][1] + blobs[2][1]
    assert Packer([]).add  # an empty leaf makes no pack
    only_loose = Packer([blobs[0][0]])
    assert only_loose.add(0, None) == []


# ----------------------------------------------------------------------- locator


def test_locator_round_trips_and_rejects_damage() -> None:
    leaf, pack = "a" * 64, "b" * 64
    loc = Locator(leaf, {"c" * 64: {"entries/" + "c" * 64 + ".json": (pack, 10, 20)}})
    data = loc.to_bytes()
    assert Locator.from_bytes(data, leaf) == loc
    assert loc.packs() == {pack}
    with pytest.raises(CorruptError, match="another leaf"):
        Locator.from_bytes(data, "d" * 64)
    with pytest.raises(CorruptError, match="not valid JSON"):
        Locator.from_bytes(data[:-3], leaf)
    doc = {"type": "locator", "format": 1, "leaf": leaf, "packs": [pack]}
    for entries in (
        {"c" * 64: {"k": [0, -1, 3]}},  # negative offset
        {"c" * 64: {"k": [-1, 0, 3]}},  # pack number counted from the end
        {"c" * 64: {"k": [1, 0, 3]}},  # no such pack
        {"not-an-id": {"k": [0, 0, 3]}},
        {"c" * 64: {"k": [0, 0]}},
    ):
        with pytest.raises(CorruptError, match="malformed"):
            Locator.from_bytes(canonical_json({**doc, "entries": entries}), leaf)
    with pytest.raises(FormatVersionError):
        Locator.from_bytes(canonical_json({**doc, "format": 99, "entries": {}}), leaf)


# ----------------------------------------------------------------------- repository


def _arrays(repo: Repository) -> dict[str, np.ndarray]:
    """Every entry's detector data at main, read through the Zarr store."""
    out = {}
    for name, _ in repo.entries("main"):
        store = open_store(repo, name, cache=False)
        out[name] = zarr.open_group(store, mode="r")["entry/data/data"][...]
    return out


@pytest.fixture
def packed(tmp_path: Path) -> tuple[Repository, Repository]:
    """A source with 6 entries and its replica, where sync packed them."""
    src = Repository.init(_site("src"))
    _grow(src, tmp_path / "files", 0, 6)
    dst_site = _site("dst")
    report = sync(src, dst_site, sources=True)
    assert report.packs == 1 and report.locators == 1
    return src, Repository.open(dst_site)


def test_packed_replica_reads_bit_for_bit_without_loose_objects(
    packed: tuple[Repository, Repository],
) -> None:
    src, dst = packed
    for prefix in ("entries/", "refmaps/", "checksums/"):
        assert not list(dst.site.list(prefix))  # all in the pack
    assert len(list(dst.site.list(PACK_PREFIX))) == 1
    want = _arrays(src)
    assert len(want) == 6
    fresh = Repository.open(dst.site)  # knows nothing yet: finds them through the leaf
    got = _arrays(fresh)
    assert got.keys() == want.keys()
    for name in want:
        np.testing.assert_array_equal(got[name], want[name])
    report = fsck(fresh)
    assert report.clean and report.checked["packs"] == 1 and report.checked["locators"] == 1


def test_a_damaged_pack_is_an_error_never_wrong_data(
    packed: tuple[Repository, Repository],
) -> None:
    _, dst = packed
    [lkey] = dst.site.list(LOCATOR_PREFIX)
    loc = Locator.from_bytes(dst.site.get(lkey), lkey[len(LOCATOR_PREFIX) : -len(".json")])
    victim, (pid, at, _) = next((k, w) for k, w in loc.locations() if k.startswith("entries/"))
    key = object_pack_key(pid)
    data = bytearray(dst.site.get(key))
    data[at] ^= 0xFF  # one byte of one entry record
    dst.site.put(key, bytes(data))
    fresh = Repository.open(dst.site)
    names = [n for n, _ in fresh.entries("main")]
    errors = []
    for n in names:
        try:
            fresh.entry("main", n)
        except CorruptError as exc:
            errors.append(exc)
    assert len(errors) == 1 and victim.split("/")[1][:64] in errors[0].message
    name = names[0]
    report = fsck(Repository.open(dst.site))
    assert not report.clean and any(p["problem"] == "corrupt" for p in report.problems)
    dst.site.delete(key)
    report = fsck(Repository.open(dst.site))
    assert any(p["problem"] == "missing" and "pack" in p["error"] for p in report.problems)
    with pytest.raises(NotFoundError, match="pack"):
        Repository.open(dst.site).entry("main", name)


def test_commits_on_a_packed_replica_keep_every_entry_readable(
    packed: tuple[Repository, Repository], tmp_path: Path
) -> None:
    """A commit at the replica rewrites leaves whose entries are packed: it must write
    their locators, also when the leaf splits into new leaves built from scratch."""
    src, dst = packed
    want = _arrays(src)
    writer = Repository.open(dst.site)
    writer.tree.leaf_max = 4  # 6 entries + 1 no longer fit one leaf: the root splits
    _grow(writer, tmp_path / "more", 100, 1)
    reader = Repository.open(dst.site)
    reader.tree.leaf_max = 4
    leaves = list(reader.tree.leaves(reader.snapshot(reader.resolve("main")).tree))
    assert len(leaves) > 1
    got = _arrays(reader)
    assert len(got) == 7
    for name in want:
        np.testing.assert_array_equal(got[name], want[name])
    assert fsck(Repository.open(dst.site)).clean
    # the new entry is loose; the old ones are still only in the pack
    assert len(list(dst.site.list("entries/"))) == 1
    # and a plain update of one leaf carries the locator too
    writer2 = Repository.open(dst.site)
    writer2.tree.leaf_max = 4
    _grow(writer2, tmp_path / "more2", 200, 1)
    assert len(_arrays(Repository.open(dst.site))) == 8


def test_gc_keeps_reachable_packs_and_drops_unreachable_ones(
    packed: tuple[Repository, Repository],
) -> None:
    _, dst = packed
    later = __import__("datetime").datetime.now(__import__("datetime").UTC) + timedelta(days=30)
    assert gc(dst, older_than=timedelta(days=7), now=later).deleted == []
    # an orphan pack and locator (a sync that died before its leaf was written)
    orphan = b"orphaned objects"
    dst.site.put(object_pack_key(object_id(orphan)), orphan)
    dst.site.put(locator_key("e" * 64), Locator("e" * 64).to_bytes())
    report = gc(dst, older_than=timedelta(days=7), now=later)
    assert sorted(report.deleted) == [locator_key("e" * 64), object_pack_key(object_id(orphan))]
    assert len(list(dst.site.list(LOCATOR_PREFIX))) == 1
    assert fsck(Repository.open(dst.site)).clean


def test_sites_without_locators_pay_one_listing_per_commit(tmp_path: Path) -> None:
    """The locator carry-over asks once whether the site has locators at all."""
    site = _site("plain")
    repo = Repository.init(site)
    _grow(repo, tmp_path, 0, 2)
    site.reset()
    _grow(repo, tmp_path, 10, 1)
    assert site.calls.get("list", 0) <= 1
    assert not any(k.startswith(LOCATOR_PREFIX) for k in site.puts)
