"""Repository scale: one-entry commits and catalog search at 10^5 entries.

    .venv/bin/python benchmarks/repo.py [--entries 100000] [--dir bench-data]

Builds a repository whose snapshot holds N entries with realistic catalog
records (the ~30 keys a NeXus scan yields), then measures, in the same run:

* a commit that adds or changes ONE entry (entry record + trie path + snapshot +
  branch CAS): seconds, objects and bytes written, against the naive design of
  one manifest listing every entry (what a commit would have to rewrite);
* ``search`` over all N entries: cold (fresh process state, no cache) and warm,
  for a few typical queries.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from hyperslab.references.format import canonical_json
from hyperslab.references.repository import Repository
from hyperslab.references.search import search
from hyperslab.samples import catalog_record
from hyperslab.storage import FileSite

catalog = catalog_record  # the name the other benchmarks import


def fill(repo: Repository, n: int) -> list[str]:
    """Give a new repository's ``main`` N entries in one snapshot (built directly as one
    trie, not N commits); returns the entry names."""
    rng = random.Random(7)
    values = {}
    for i in range(n):
        cat = catalog(i, rng)
        values[cat["name"]] = {"id": f"{i:064x}", "catalog": cat}
    root = repo.tree.build(values)
    head = repo.branch_head("main")
    snap = repo._write_snapshot(
        parents=[head[0]], tree=root, message=f"{n} entries", author="bench", changes={}
    )
    repo.site.put_if_match("refs/branches/main", canonical_json({"snapshot": snap.id}), head[1])
    return list(values)


def build(path: Path, n: int) -> tuple[Repository, float]:
    shutil.rmtree(path, ignore_errors=True)
    fast = FileSite(path, fsync=False)  # building the fixture only
    repo = Repository.init(fast)
    t0 = time.perf_counter()
    fill(repo, n)
    return Repository.open(FileSite(path)), time.perf_counter() - t0


class CountingSite(FileSite):
    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.writes = 0
        self.bytes = 0

    def put(self, key: str, data: bytes) -> None:
        self.writes += 1
        self.bytes += len(data)
        super().put(key, data)

    def put_if_match(self, key: str, data: bytes, expected_etag: str | None) -> str:
        self.writes += 1
        self.bytes += len(data)
        return super().put_if_match(key, data, expected_etag)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--entries", type=int, default=100_000)
    ap.add_argument("--dir", type=Path, default=Path("bench-data"))
    args = ap.parse_args(argv)
    n = args.entries
    path = args.dir / f"repo_{n}"
    repo, t_build = build(path, n)
    leaves = sum(1 for _ in repo.tree.leaves(repo.pinned("main").tree))
    print(f"built {n} entries in {t_build:.1f} s ({leaves} leaves)")

    # --- one-entry commits
    rows = []
    for what, name in (("add", "run999/new_scan"), ("modify", "run050/scan_0500")):
        site = CountingSite(path)
        r = Repository.open(site)
        rec = r.write_json("entry", {"name": name, "bench": time.time()})
        t0 = time.perf_counter()
        res = r.commit(
            {name: {"id": rec, "catalog": catalog(7, random.Random(1)) | {"name": name}}},
            message=what,
        )
        dt = time.perf_counter() - t0
        assert res.snapshot is not None
        rows.append((what, dt, site.writes, site.bytes))
    # naive alternative: one manifest of every entry, rewritten per commit
    every = {name: v for name, v in repo.entries("main")}
    t0 = time.perf_counter()
    blob = canonical_json({"entries": every})
    naive_site = FileSite(args.dir / "naive")
    naive_site.put("manifest.json", blob)
    t_naive = time.perf_counter() - t0
    print("\none-entry commit in a repository of", n, "entries")
    print(f"{'':10} {'seconds':>8} {'objects':>8} {'bytes':>12}")
    for what, dt, w, b in rows:
        print(f"{what:10} {dt:8.3f} {w:8d} {b:12,d}")
    print(f"{'naive':10} {t_naive:8.3f} {1:8d} {len(blob):12,d}   (one manifest of all entries)")
    print(
        f"ratio naive/hyperslab: {t_naive / rows[0][1]:.1f}x time, "
        f"{len(blob) / rows[0][3]:.0f}x bytes written"
    )

    # --- search
    queries = [
        "sample=Si energy>10",
        'title~"*dark*" start_time>=2026-06-01',
        "sample~insulin energy<8 sample_temperature>250",
        "name~run042/*",
    ]
    print(f"\nsearch over {n} entries (cold = fresh Repository, nothing cached)")
    print(f"  {'query':52} {'hits':>6} {'cold, 100 shown':>16} {'cold, all':>10} {'warm, all':>10}")
    results: dict[str, Any] = {"entries": n, "leaves": leaves, "commit": rows, "search": {}}
    search(Repository.open(FileSite(path)), "main", "warm-up imports")
    for q in queries:
        t0 = time.perf_counter()
        hits = search(Repository.open(FileSite(path)), "main", q, limit=100)
        cold_limited = time.perf_counter() - t0
        cold_repo = Repository.open(FileSite(path))
        t0 = time.perf_counter()
        hits = search(cold_repo, "main", q)
        cold = time.perf_counter() - t0
        t0 = time.perf_counter()
        search(cold_repo, "main", q)
        warm = time.perf_counter() - t0
        print(f"  {q:52} {hits.total:6d} {cold_limited:14.3f} s {cold:8.3f} s {warm:8.3f} s")
        results["search"][q] = {
            "hits": hits.total,
            "cold_limit100_s": cold_limited,
            "cold_s": cold,
            "warm_s": warm,
        }
    # the same query through the leaves' JSON (what search did before catalog indexes)
    from hyperslab.references.catalog import parse_query

    q = parse_query(queries[0])
    json_repo = Repository.open(FileSite(path))
    t0 = time.perf_counter()
    snap = json_repo.pinned("main")
    leaf_ids = list(json_repo.tree.leaves(snap.tree))
    json_hits = [
        name
        for node in json_repo.read_many("manifest", leaf_ids)
        for name, v in node["entries"].items()
        if q.matches(v.get("catalog") or {"name": name})
    ]
    t_json = time.perf_counter() - t0
    print(
        f"  scanning the leaves' JSON instead: {len(json_hits)} hits in {t_json:.3f} s "
        f"({t_json / results['search'][queries[0]]['cold_s']:.1f}x the indexed search)"
    )
    results["search_json_scan_s"] = t_json
    print(json.dumps(results), file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
