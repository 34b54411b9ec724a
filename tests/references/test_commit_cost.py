"""What a commit costs, counted (never timed): objects and bytes written per one-entry
commit bounded whatever the repository size, a retry that re-reads and rewrites only
what changed, and search over catalog indexes that commits no longer write (format 2:
small leaves, combined indexes stored by the first search that needs them)."""

from __future__ import annotations

import hashlib
import json
import random
import threading
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hyperslab.errors import ConflictError, CorruptError, FormatVersionError
from hyperslab.references.catalog import parse_query
from hyperslab.references.catalog_index import LeafCatalog
from hyperslab.references.format import SMALL_LEAF
from hyperslab.references.fsck import fsck
from hyperslab.references.keys import catalog_key, split_object_key
from hyperslab.references.reachability import walk
from hyperslab.references.repository import Repository
from hyperslab.references.search import search
from hyperslab.references.tree import DEFAULT_LEAF_MAX, INDEX_SPAN, LEAF_MAX, name_hash
from hyperslab.samples import catalog_record
from hyperslab.storage import FileSite, MemorySite, Site, forget_memory_site


class Counting:
    """Wraps a site's methods to count requests and bytes by object kind (the key's
    first folder). ``log`` keeps every ``(op, key)`` in order."""

    def __init__(self, site: Site) -> None:
        self.site = site
        self.log: list[tuple[str, str]] = []
        self.sent: Counter[str] = Counter()
        self.lock = threading.Lock()
        for op in ("get", "get_with_etag", "head", "put", "put_if_match", "put_if_absent"):
            self._wrap(op)

    def _wrap(self, op: str) -> None:
        inner = getattr(self.site, op)

        def call(key: str, *args: Any) -> Any:
            with self.lock:
                self.log.append((op, key))
                if op.startswith("put"):
                    self.sent[key.split("/")[0]] += len(args[0])
            return inner(key, *args)

        setattr(self.site, op, call)

    def reset(self) -> None:
        with self.lock:
            self.log.clear()
            self.sent.clear()

    def keys(self, *ops: str) -> list[str]:
        return [k for o, k in self.log if o in ops]

    def requests(self) -> int:
        return len(self.log)


@pytest.fixture
def memory_site() -> Iterator[MemorySite]:
    name = f"cost-{uuid.uuid4().hex[:8]}"
    yield MemorySite(name)
    forget_memory_site(name)


def _filled(
    site: Site, n: int, leaf_max: int | None = None, version: int = 3
) -> tuple[Repository, list[str]]:
    """A new repository whose main holds ``n`` entries (one trie, one snapshot)."""
    repo = Repository.init(site, author="test", version=version)
    if leaf_max is not None:
        repo.tree.leaf_max = leaf_max
    rng = random.Random(7)
    values = {}
    for i in range(n):
        cat = catalog_record(i, rng)
        values[cat["name"]] = {"id": f"{i:064x}", "catalog": cat}
    root = repo.tree.build(values)
    head, etag = repo.branch_head("main")
    snap = repo._write_snapshot(
        parents=[head], tree=root, message=f"{n} entries", author="test", changes={}
    )
    assert repo.refs.move_branch("main", snap.id, etag).moved
    return repo, list(values)


def _change(repo: Repository, name: str, tag: str, **kw: Any) -> Any:
    rec = hashlib.sha256(f"{name} {tag}".encode()).hexdigest()  # a new entry record's id
    cat = catalog_record(3, random.Random(1)) | {"name": name, "tag": tag}
    return repo.commit({name: {"id": rec, "catalog": cat}}, message=f"change {name}", **kw)


# --------------------------------------------------------------------------- format


def test_new_repositories_are_format_3_with_small_leaves(memory_site: MemorySite) -> None:
    repo = Repository.init(memory_site)
    info = json.loads(memory_site.get("repo.json"))
    assert info["version"] == 3 and info["leaf_max"] == DEFAULT_LEAF_MAX == 128
    assert Repository.open(memory_site).tree.leaf_max == DEFAULT_LEAF_MAX
    # a repository without leaf_max (format 1) keeps 1,024-entry leaves
    del info["leaf_max"]
    info["version"] = 1
    memory_site.put("repo.json", json.dumps(info).encode())
    assert Repository.open(memory_site).tree.leaf_max == LEAF_MAX == 1024
    info["version"] = 4
    memory_site.put("repo.json", json.dumps(info).encode())
    with pytest.raises(FormatVersionError):
        Repository.open(memory_site)
    info["version"], info["leaf_max"] = 2, 0
    memory_site.put("repo.json", json.dumps(info).encode())
    with pytest.raises(CorruptError):
        Repository.open(memory_site)
    repo.close()


def test_format_3_compresses_nodes_and_indexes_only_big_leaves(memory_site: MemorySite) -> None:
    """Format 3: manifests are zlib-compressed JSON and leaves under SMALL_LEAF entries
    have no catalog index, so a commit to a 10-entry repository sends a few kB (format 2
    sent 14 kB, Icechunk 6.6 kB); a format-2 repository made today is as before."""
    sent = {}
    for version in (2, 3):
        site = MemorySite(f"cost-{uuid.uuid4().hex[:8]}")
        repo, names = _filled(site, 10, version=version)
        counting = Counting(site)
        _change(repo, names[3], "x")
        sent[version] = sum(counting.sent.values())
        manifests = [site.get(k) for k in site.list("manifests/")]
        assert manifests and all(m[:1] == (b"x" if version == 3 else b"{") for m in manifests)
        assert bool(list(site.list("catalogs/"))) == (version == 2)
        for query in QUERIES:
            assert [n for n, _ in search(Repository.open(site), "main", query)] == _expected(
                repo, query
            )
        assert not _catalog_problems(Repository.open(site))
        forget_memory_site(site)
    assert sent[3] < 4_000 < sent[2], sent
    # big leaves keep their index
    repo, _ = _filled(memory_site, 100)
    assert len(repo.read_node(repo.pinned("main").tree)["entries"]) == 100  # type: ignore[arg-type]
    assert list(memory_site.list("catalogs/")) == [catalog_key(repo.pinned("main").tree)]  # type: ignore[arg-type]


def test_format_1_inner_nodes_stay_as_they_were(memory_site: MemorySite) -> None:
    """Inner nodes say their leaf_max only when it is not format 1's: a format-1
    repository's commits write the very bytes they always did."""
    repo, _ = _filled(memory_site, 1100, leaf_max=LEAF_MAX)
    root = repo.read_node(repo.pinned("main").tree or "")
    assert root["kind"] == "inner" and "leaf_max" not in root
    repo2, _ = _filled(MemorySite(f"cost-{uuid.uuid4().hex[:8]}"), 300)
    root2 = repo2.read_node(repo2.pinned("main").tree or "")
    assert root2["kind"] == "inner" and root2["leaf_max"] == DEFAULT_LEAF_MAX


# --------------------------------------------------------------------------- cost


@pytest.mark.parametrize("n", [1000, 5000])
def test_one_entry_commit_writes_a_bounded_amount(memory_site: MemorySite, n: int) -> None:
    """A one-entry commit writes the entry's leaf (at most 128 entries), its index, the
    inner nodes above it, the snapshot and the branch: under 200 kB and 9 objects at any
    size (format 1 rewrote a leaf of up to 1,024 entries: ~1 MB at 1,000 entries). It
    reads no leaf, no catalog index and nothing twice."""
    repo, names = _filled(memory_site, n)
    counting = Counting(memory_site)
    repo = Repository.open(memory_site)  # cold: nothing cached
    counting.reset()
    res = _change(repo, names[n // 2], "x")
    assert res.attempts == 1 and res.modified == [names[n // 2]]
    puts = counting.keys("put", "put_if_match")
    assert sum(counting.sent.values()) < 200_000, counting.sent
    assert len(puts) <= 9, puts
    # the new leaf's index only, if it is big enough to have one (format 3)
    nodes = [repo.read_node(split_object_key(k)[1]) for k in puts if k.startswith("manifests/")]
    (leaf,) = [node for node in nodes if node["kind"] == "leaf"]
    want = 1 if len(leaf["entries"]) >= SMALL_LEAF else 0
    assert len([k for k in puts if k.startswith("catalogs/")]) == want
    gets = counting.keys("get", "get_with_etag")
    assert len(gets) == len(set(gets))
    assert not [k for k in gets if k.startswith("catalogs/")]
    # every manifest read lies on the changed entry's path (root, inner nodes, its leaf)
    depth = n.bit_length()  # generous bound on the trie's depth
    assert len([k for k in gets if k.startswith("manifests/")]) <= depth
    assert counting.requests() <= 2 * depth + 8
    repo.close()


def test_bytes_per_commit_do_not_grow_with_the_repository() -> None:
    sent = {}
    for n in (1500, 12000):
        site = MemorySite(f"cost-{uuid.uuid4().hex[:8]}")
        repo, names = _filled(site, n)
        counting = Counting(site)
        total = 0
        for k in range(5):
            counting.reset()
            _change(repo, names[(k * 7919) % n], f"c{k}")
            total += sum(counting.sent.values())
        sent[n] = total / 5
        repo.close()
    # 8x the entries: leaves of ~25 to ~125 entries either way, one more inner node
    assert sent[12000] < 1.5 * sent[1500] and sent[1500] < 150_000, sent


# --------------------------------------------------------------------------- retry


def _in_other_subtree(names: list[str], first: str) -> str:
    return next(n for n in names if name_hash(n)[0] != name_hash(first)[0])


def test_conflict_check_reads_only_the_subtrees_of_its_own_entries(
    memory_site: MemorySite,
) -> None:
    """Committing on top of a base others moved past: the entries others changed in
    other subtrees are not read (only the path to our own entries is)."""
    repo, names = _filled(memory_site, 3000)
    ours, theirs = names[10], _in_other_subtree(names, names[10])
    base = repo.branch_head("main")[0]
    other = Repository.open(memory_site)
    _change(other, theirs, "theirs")
    their_leaf = _leaf_of(other, theirs)
    counting = Counting(memory_site)
    res = _change(repo, ours, "ours", base=base)
    assert res.modified == [ours]
    read = counting.keys("get", "get_with_etag")
    assert f"manifests/{their_leaf}.json" not in read
    assert _value(repo, theirs)["catalog"]["tag"] == "theirs"
    assert _value(repo, ours)["catalog"]["tag"] == "ours"
    # a real conflict on one of our entries is still found
    with pytest.raises(Exception, match="entr"):
        _change(repo, theirs, "mine too", base=base)


def test_retry_after_a_lost_race_rewrites_only_what_changed(memory_site: MemorySite) -> None:
    """The loser of a branch race re-applies its change on the new head: it reads the
    new snapshot and the nodes on its path, not the leaf the winner changed elsewhere,
    and does not write its own leaf and index again (same content, same id)."""
    repo, names = _filled(memory_site, 3000)
    ours, theirs = names[10], _in_other_subtree(names, names[10])
    other = Repository.open(memory_site)
    counting = Counting(memory_site)
    inner_cas = memory_site.put_if_match
    raced = []

    def cas(key: str, data: bytes, etag: str | None) -> str:
        if key.startswith("refs/branches/") and not raced:
            raced.append(True)
            _change(other, theirs, "theirs")  # someone lands first
            counting.reset()
        return inner_cas(key, data, etag)

    memory_site.put_if_match = cas  # type: ignore[method-assign]
    res = _change(repo, ours, "ours")
    assert res.attempts == 2 and res.modified == [ours]
    retry_puts = counting.keys("put")
    retry_gets = counting.keys("get", "get_with_etag")
    their_leaf = _leaf_of(other, theirs)
    assert f"manifests/{their_leaf}.json" not in retry_gets
    assert not [k for k in retry_puts if k.startswith(("catalogs/", "entries/"))], retry_puts
    our_leaf = _leaf_of(repo, ours)
    assert f"manifests/{our_leaf}.json" not in retry_puts  # written by the first attempt
    assert any(k.startswith("snapshots/") for k in retry_puts)
    assert _value(repo, theirs)["catalog"]["tag"] == "theirs"
    assert _value(repo, ours)["catalog"]["tag"] == "ours"
    assert not _catalog_problems(Repository.open(memory_site))


def test_concurrent_committers_all_land(tmp_path: Path) -> None:
    site = FileSite(tmp_path / "repo")
    _, names = _filled(site, 600)
    chosen = random.Random(3).sample(names, 8)
    barrier = threading.Barrier(8)
    results: list[Any] = [None] * 8

    def work(i: int) -> None:
        repo = Repository.open(FileSite(tmp_path / "repo"))
        barrier.wait()
        results[i] = _change(repo, chosen[i], f"w{i}")

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    repo = Repository.open(site)
    assert all(r is not None and r.snapshot is not None for r in results)
    for i, name in enumerate(chosen):
        assert _value(repo, name)["catalog"]["tag"] == f"w{i}"
    assert len(list(repo.log("main"))) == 2 + 8  # init, fill, one snapshot per writer
    assert not _catalog_problems(repo)


def _catalog_problems(repo: Repository) -> list[dict[str, Any]]:
    """fsck's findings about catalog indexes (these tests' entries name no records)."""
    report = fsck(repo)
    return [p for p in report.problems + report.warnings if p["kind"] == "catalog"]


def _leaf_of(repo: Repository, name: str) -> str:
    oid = repo.pinned("main").tree
    h = name_hash(name)
    depth = 0
    while oid is not None:
        node = repo.read_node(oid)
        if node["kind"] == "leaf":
            return oid
        oid, depth = node["children"][h[depth]][0], depth + 1
    raise AssertionError(name)


def _value(repo: Repository, name: str) -> dict[str, Any]:
    value = repo.tree.get(repo.pinned("main").tree, name)
    assert value is not None
    return value


# --------------------------------------------------------------------------- search


def _expected(repo: Repository, query: str) -> list[str]:
    q = parse_query(query)
    return sorted(n for n, v in repo.entries("main") if q.matches(v["catalog"]))


QUERIES = ["sample~insulin energy>12", "sample=Si|CeO2", "-dark arrays>=50", "name~run000/*1*"]


def test_search_combines_and_stores_indexes_of_small_inner_nodes(
    memory_site: MemorySite,
) -> None:
    """With small leaves, search reads one index per index root (at most 1,024 entries);
    commits do not write those, the first search stores it, and results are the records'
    answers throughout: before, after, with the index damaged, after a commit."""
    repo, names = _filled(memory_site, 700, leaf_max=16)  # root: inner, 700 <= INDEX_SPAN
    # (its leaves, under SMALL_LEAF entries, have no index of their own in format 3)
    root = repo.pinned("main").tree
    assert root is not None and list(repo.tree.index_roots(root)) == [root]
    assert repo.read_node(root)["kind"] == "inner" and INDEX_SPAN >= 700
    # a subtree written whole comes with its index; remove it: a commit's new root has none
    assert memory_site.exists(catalog_key(root))
    memory_site.delete(catalog_key(root))
    searcher = Repository.open(memory_site)
    for query in QUERIES:
        assert [n for n, _ in search(searcher, "main", query)] == _expected(repo, query)
    assert memory_site.exists(catalog_key(root))  # stored by the first search
    fresh = Repository.open(memory_site)
    fresh.tree.leaf_max = 16
    counting = Counting(memory_site)
    hits = search(fresh, "main", QUERIES[0])
    assert [n for n, _ in hits] == _expected(repo, QUERIES[0])
    gets = counting.keys("get")
    assert [k for k in gets if k.startswith("catalogs/")] == [catalog_key(root)]
    assert [k for k in gets if k.startswith("manifests/")] == [f"manifests/{root}.json"]
    assert not _catalog_problems(fresh)
    n_leaves = len(list(repo.tree.leaves(root)))
    assert n_leaves > 1 and fsck(fresh).checked["catalogs"] == 1  # the root's

    # damaged: search rebuilds (and stores it again), fsck says which
    good = memory_site.get(catalog_key(root))
    memory_site.put(catalog_key(root), good[: len(good) // 2])
    assert [p["id"] for p in _catalog_problems(Repository.open(memory_site))] == [root]
    fresh = Repository.open(memory_site)
    for query in QUERIES:
        assert [n for n, _ in search(fresh, "main", query)] == _expected(repo, query)
    assert not _catalog_problems(Repository.open(memory_site))

    # an index naming the wrong node is never used
    other_leaf = next(iter(repo.tree.leaves(root)))
    wrong = LeafCatalog.from_leaf(other_leaf, repo.read_node(other_leaf)).to_bytes()
    memory_site.put(catalog_key(root), wrong)
    fresh = Repository.open(memory_site)
    assert [n for n, _ in search(fresh, "main", "sample~insulin")] == _expected(
        repo, "sample~insulin"
    )

    # a commit makes a new root: searched correctly, its index stored on first use
    repo.tree.leaf_max = 16
    _change(repo, names[5], "changed")
    new_root = repo.pinned("main").tree
    assert new_root is not None and new_root != root
    assert not memory_site.exists(catalog_key(new_root))
    assert [n for n, _ in search(repo, "main", "tag=changed")] == [names[5]]
    assert memory_site.exists(catalog_key(new_root))
    # gc keeps both roots' indexes (both snapshots are reachable)
    kept = walk(Repository.open(memory_site), lambda kind, oid, exc: None).keys()
    assert {catalog_key(root), catalog_key(new_root)} <= kept


def test_search_on_a_read_only_site_does_not_store(memory_site: MemorySite) -> None:
    repo, _ = _filled(memory_site, 300, leaf_max=16)
    root = repo.pinned("main").tree
    memory_site.delete(catalog_key(root or ""))  # as after a commit
    reader = Repository.open(memory_site)
    reader.store_derived = False
    assert len(search(reader, "main", "sample~insulin")) == len(_expected(repo, "sample~insulin"))
    assert not memory_site.exists(catalog_key(root or ""))

    def refuse(key: str, data: bytes) -> None:
        raise ConflictError(f"{key}: access denied")  # any HyperslabError from the site

    memory_site.put = refuse  # type: ignore[method-assign,assignment]
    reader = Repository.open(memory_site)
    assert len(search(reader, "main", "sample~insulin")) == len(_expected(repo, "sample~insulin"))
