"""Commit latency on loopback S3 against repository size: hyperslab vs Icechunk 1.1.

    .venv/bin/python benchmarks/commit.py [--sizes 10,1000,10000,100000] [--commits 20]
                                          [--large-commits 6] [--writers 8] [--rounds 3]
                                          [--profile]

One moto S3 server (``ThreadedMotoServer`` on 127.0.0.1, run in a child process so
that neither client shares its interpreter, and so its GIL, with the server) holds
both repositories, each under its own prefix of one bucket. Dummy credentials are
set in this process's environment; nothing but 127.0.0.1 is contacted.

For each size N both sides get a repository of N entries, then ``--commits`` times
(alternating between the two sides, so both see the same machine load) the same
user operation, "change ONE entry and commit it", on a random entry:

* hyperslab: ``repo.write_json("entry", ...)`` (the new entry record), then
  ``repo.commit({name: {"id": rec, "catalog": ...}})``. The repository holds N
  entries with realistic ~30-key catalog records (``benchmarks/repo.py``); it is
  built as one trie + one snapshot + one branch CAS, not N commits.
* Icechunk: a repository with one zarr group per run and one ``(1024,)`` uint32
  array per entry (one chunk, written at build time so every array has a manifest
  row; it compresses below the inline threshold, so it lives in the manifest), whose
  attributes are the same catalog record. The change: ``repo.writable_session``,
  write the array's chunk with 4 KiB of random (incompressible, so stored as a chunk
  object) data, ``session.commit``.

Two timings per side: ``commit`` is the commit call alone (hyperslab's reads the
branch head itself; Icechunk's session was opened before); ``op`` is the whole
operation: hyperslab entry-record write + commit, Icechunk session open + chunk
write + commit. Each side writes one new data object in ``op`` (entry record /
chunk), then its metadata and the branch pointer. The server counts the S3
requests each commit makes (``req``), for both sides alike.

At sizes of 10^5 entries and more, ``--large-commits`` commits per side instead
(an Icechunk commit there takes seconds; building its repository takes minutes).

Then ``--writers`` processes, released together by a barrier, each change a
different entry of the same branch, ``--rounds`` times per side (one round at 10^5
entries and more), the sides alternating round by round; the median wall time is
reported. hyperslab retries by itself (``commit``
re-applies non-overlapping changes; ``CommitResult.attempts``); for Icechunk the
script runs the user-side loop (on ``ConflictError``: ``session.rebase(
ConflictDetector())``, commit again) and counts its retries. The check afterwards
reads the branch and looks for every writer's change.

``--profile`` adds a cProfile of one hyperslab commit at each size.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import json
import multiprocessing as mp
import os
import pstats
import random
import statistics
import sys
import threading
import time
from collections import Counter
from typing import Any

from hyperslab.references.repository import Repository
from hyperslab.storage import S3Site
from loopback_s3 import use_loopback_credentials
from repo import catalog, fill

BUCKET = "hyperslab-bench"
REGION = "us-east-1"
# dummy credentials for the loopback moto server, never real ones
KEY, SECRET = "bench", "bench-secret-not-real"
CHUNK = 1024  # uint32 values per Icechunk array (4 KiB)


def _set_env() -> None:
    use_loopback_credentials(KEY, SECRET, REGION)
    os.environ.setdefault("ICECHUNK_LOG", "error")  # not its cache-size warnings


# --------------------------------------------------------------------------- server


class _CountingApp:
    """WSGI wrapper counting requests by method and bytes received."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.counts: Counter[str] = Counter()
        self.lock = threading.Lock()

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        method = environ.get("REQUEST_METHOD", "?")
        if method == "GET" and "list-type" in environ.get("QUERY_STRING", ""):
            method = "LIST"
        with self.lock:
            self.counts[method] += 1
            self.counts["bytes_in"] += int(environ.get("CONTENT_LENGTH") or 0)
        return self.app(environ, start_response)


def _serve(conn: Any) -> None:
    """Child process: run moto on 127.0.0.1, answer 'counts'/'stop' on ``conn``."""
    import logging

    from moto.server import ThreadedMotoServer

    _set_env()
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    counter = _CountingApp(server._server.app)  # type: ignore[union-attr]
    server._server.app = counter  # type: ignore[union-attr]
    conn.send(server.get_host_and_port())
    while True:
        cmd = conn.recv()
        if cmd == "counts":
            with counter.lock:
                conn.send(dict(counter.counts))
        else:
            break
    server.stop()


class Moto:
    def __init__(self) -> None:
        ctx = mp.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_serve, args=(child,), daemon=True)
        self.proc.start()
        host, port = self.conn.recv()
        self.url = f"http://{host}:{port}"

    def counts(self) -> Counter[str]:
        self.conn.send("counts")
        return Counter(self.conn.recv())

    def stop(self) -> None:
        self.conn.send("stop")
        self.proc.join(10)


def _requests(c: Counter[str]) -> int:
    return sum(v for k, v in c.items() if k != "bytes_in")


# --------------------------------------------------------------------------- hyperslab


def hs_site(url: str, prefix: str) -> S3Site:
    return S3Site(BUCKET, prefix, endpoint_url=url, region=REGION)


def hs_build(url: str, prefix: str, n: int) -> list[str]:
    repo = Repository.init(hs_site(url, prefix))
    names = fill(repo, n)
    repo.close()
    return names


def hs_change(repo: Repository, name: str, tag: str) -> tuple[float, float, int]:
    """Write a new entry record for ``name`` and commit it: (write s, commit s, attempts)."""
    t0 = time.perf_counter()
    rec = repo.write_json("entry", {"name": name, "bench": tag})
    t1 = time.perf_counter()
    cat = catalog(7, random.Random(1)) | {"name": name, "bench": tag}
    res = repo.commit({name: {"id": rec, "catalog": cat}}, message=f"change {name}")
    t2 = time.perf_counter()
    assert res.snapshot is not None
    return t1 - t0, t2 - t1, res.attempts


# --------------------------------------------------------------------------- icechunk


def ic_storage(url: str, prefix: str) -> Any:
    import icechunk

    return icechunk.s3_storage(
        bucket=BUCKET,
        prefix=prefix,
        endpoint_url=url,
        allow_http=True,
        force_path_style=True,
        region=REGION,
        access_key_id=KEY,
        secret_access_key=SECRET,
    )


def ic_build(url: str, prefix: str, n: int) -> list[str]:
    """N arrays in one session and one commit (zarr's async API, 200 at a time)."""
    import asyncio

    import icechunk
    import numpy as np
    import zarr.api.asynchronous as zasync

    rng = random.Random(7)
    cats = [catalog(i, rng) for i in range(n)]
    repo = icechunk.Repository.create(ic_storage(url, prefix))
    session = repo.writable_session("main")

    async def build() -> None:
        root = await zasync.group(store=session.store)
        groups: dict[str, Any] = {}
        for cat in cats:
            g = cat["name"].split("/")[0]
            if g not in groups:
                groups[g] = await root.create_group(g)

        async def one(i: int, cat: dict[str, Any]) -> None:
            g, a = cat["name"].split("/")
            arr = await groups[g].create_array(
                a, shape=(CHUNK,), chunks=(CHUNK,), dtype="uint32", fill_value=0, attributes=cat
            )
            # compresses to a few bytes, so it is inlined in the manifest
            await arr.setitem(slice(None), np.full(CHUNK, i, dtype="uint32"))

        for k in range(0, n, 200):
            await asyncio.gather(*(one(i, c) for i, c in enumerate(cats[k : k + 200], k)))

    asyncio.run(build())
    session.commit(f"{n} entries")
    return [c["name"] for c in cats]


def ic_change(repo: Any, name: str, seed: int) -> tuple[float, float, float, int]:
    """Open a session, write ``name``'s chunk, commit (user-side rebase loop).

    (session s, write s, commit s, retries)."""
    import icechunk
    import numpy as np
    import zarr

    data = np.random.default_rng(seed).integers(0, 2**32, CHUNK, dtype="uint32")
    t0 = time.perf_counter()
    session = repo.writable_session("main")
    t1 = time.perf_counter()
    zarr.open_array(session.store, path=name, mode="r+")[:] = data
    t2 = time.perf_counter()
    retries = 0
    while True:
        try:
            session.commit(f"change {name}")
            break
        except icechunk.ConflictError:
            retries += 1
            if retries > 100:
                raise
            session.rebase(icechunk.ConflictDetector())
    t3 = time.perf_counter()
    return t1 - t0, t2 - t1, t3 - t2, retries


# --------------------------------------------------------------------------- latency


def stats(xs: list[float]) -> dict[str, float]:
    xs = sorted(xs)
    p90 = xs[min(len(xs) - 1, round(0.9 * (len(xs) - 1)))]
    return {"median_ms": 1e3 * statistics.median(xs), "p90_ms": 1e3 * p90}


def latency(
    moto: Moto, n: int, hs_names: list[str], ic_names: list[str], commits: int
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Alternate one hyperslab and one Icechunk change, so both see the same machine load."""
    import icechunk

    hs_repo = Repository.open(hs_site(moto.url, f"hs-{n}"))
    ic_repo = icechunk.Repository.open(ic_storage(moto.url, f"ic-{n}"))
    hs_rng, ic_rng = random.Random(11), random.Random(11)
    hs: dict[str, list[Any]] = {"commit": [], "op": [], "reqs": []}
    ic: dict[str, list[Any]] = {"commit": [], "op": [], "reqs": []}
    for k in range(commits + 2):  # two warm-up commits each (CAS probe, first reads)
        before = moto.counts()
        w, c, _ = hs_change(hs_repo, hs_rng.choice(hs_names), f"lat{k}")
        after = moto.counts()
        if k >= 2:
            hs["commit"].append(c)
            hs["op"].append(w + c)
            hs["reqs"].append(after - before)
        before = moto.counts()
        s, w, c, _ = ic_change(ic_repo, ic_rng.choice(ic_names), k)
        after = moto.counts()
        if k >= 2:
            ic["commit"].append(c)
            ic["op"].append(s + w + c)
            ic["reqs"].append(after - before)
    hs_repo.close()
    return _summary(**hs), _summary(**ic)


def _summary(commit: list[float], op: list[float], reqs: list[Counter[str]]) -> dict[str, Any]:
    per: Counter[str] = Counter()
    for r in reqs:
        per.update(r)
    n = len(reqs)
    return {
        "commit": stats(commit),
        "op": stats(op),
        "requests_per_op": {k: round(v / n, 1) for k, v in sorted(per.items()) if k != "bytes_in"},
        "requests_total_per_op": round(_requests(per) / n, 1),
        "bytes_put_per_op": round(per["bytes_in"] / n),
    }


# --------------------------------------------------------------------------- concurrency


def _writer(
    kind: str, url: str, prefix: str, name: str, idx: int, rnd: int, barrier: Any, q: Any
) -> None:
    _set_env()
    try:
        if kind == "hyperslab":
            site = hs_site(url, prefix)
            repo = Repository.open(site)
            assert site.supports_cas  # probe before the barrier, not inside the timing
            barrier.wait()
            t0 = time.monotonic()
            _, _, attempts = hs_change(repo, name, f"writer{rnd}-{idx}")
            retries = attempts - 1
        else:
            import icechunk

            ic_repo = icechunk.Repository.open(ic_storage(url, prefix))
            barrier.wait()
            t0 = time.monotonic()
            *_, retries = ic_change(ic_repo, name, 1000 * (rnd + 1) + idx)
        q.put({"idx": idx, "ok": True, "retries": retries, "t0": t0, "t1": time.monotonic()})
    except Exception as exc:  # report, don't hang the parent
        q.put({"idx": idx, "ok": False, "error": f"{type(exc).__name__}: {exc}"})


def concurrent(
    moto: Moto, kind: str, prefix: str, names: list[str], writers: int, rnd: int = 0
) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(writers)
    q = ctx.Queue()
    chosen = random.Random(5 + rnd).sample(names, writers)
    procs = [
        ctx.Process(target=_writer, args=(kind, moto.url, prefix, nm, i, rnd, barrier, q))
        for i, nm in enumerate(chosen)
    ]
    for p in procs:
        p.start()
    results = [q.get(timeout=600) for _ in procs]
    for p in procs:
        p.join(60)
    ok = [r for r in results if r["ok"]]
    out: dict[str, Any] = {
        "writers": writers,
        "errors": [r["error"] for r in results if not r["ok"]],
    }
    if ok:
        retries = [r["retries"] for r in ok]
        out |= {
            "wall_s": max(r["t1"] for r in ok) - min(r["t0"] for r in ok),
            "max_retries": max(retries),
            "mean_retries": statistics.mean(retries),
        }
    out["landed"] = _landed(moto, kind, prefix, chosen, rnd)
    return out


def _landed(moto: Moto, kind: str, prefix: str, chosen: list[str], rnd: int) -> int:
    """How many writers' changes the branch holds now."""
    if kind == "hyperslab":
        repo = Repository.open(hs_site(moto.url, prefix))
        snap = repo.pinned("main")
        n = 0
        for i, name in enumerate(chosen):
            value = repo.tree.get(snap.tree, name)
            n += bool(value and value["catalog"].get("bench") == f"writer{rnd}-{i}")
        repo.close()
        return n
    import icechunk
    import numpy as np
    import zarr

    ic_repo = icechunk.Repository.open(ic_storage(moto.url, prefix))
    session = ic_repo.readonly_session(branch="main")
    n = 0
    for i, name in enumerate(chosen):
        want = np.random.default_rng(1000 * (rnd + 1) + i).integers(0, 2**32, CHUNK, dtype="uint32")
        got = zarr.open_array(session.store, path=name, mode="r")[:]
        n += bool(np.array_equal(got, want))
    return n


# --------------------------------------------------------------------------- main


def _profile(moto: Moto, prefix: str, names: list[str]) -> str:
    repo = Repository.open(hs_site(moto.url, prefix))
    hs_change(repo, names[0], "prof-warm")
    prof = cProfile.Profile()
    prof.enable()
    hs_change(repo, names[1], "prof")
    prof.disable()
    repo.close()
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats("cumulative").print_stats(25)
    return buf.getvalue()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--sizes", default="10,1000,10000,100000", help="comma-separated entry counts")
    ap.add_argument("--commits", type=int, default=20, help="timed commits per size and side")
    ap.add_argument(
        "--large-commits", type=int, default=6, help="timed commits at 10^5 entries and more"
    )
    ap.add_argument("--writers", type=int, default=8, help="concurrent writers (0: skip)")
    ap.add_argument(
        "--rounds", type=int, default=3, help="concurrent rounds per side (1 at 10^5 and more)"
    )
    ap.add_argument("--profile", action="store_true", help="cProfile one hyperslab commit")
    args = ap.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",") if s]

    _set_env()
    import icechunk

    moto = Moto()
    results: dict[str, Any] = {"icechunk": icechunk.__version__, "sizes": {}}
    try:
        import boto3

        boto3.client("s3", endpoint_url=moto.url, region_name=REGION).create_bucket(Bucket=BUCKET)
        print(
            f"moto S3 on loopback; icechunk {icechunk.__version__}; {args.commits} commits/size; "
            f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"
        )
        for n in sizes:
            t0 = time.perf_counter()
            hs_names = hs_build(moto.url, f"hs-{n}", n)
            t1 = time.perf_counter()
            ic_names = ic_build(moto.url, f"ic-{n}", n)
            hs_build_s, ic_build_s = t1 - t0, time.perf_counter() - t1
            print(
                f"\n{n} entries (built: hyperslab {hs_build_s:.1f} s, icechunk {ic_build_s:.1f} s)"
            )
            commits = args.commits if n < 100_000 else min(args.commits, args.large_commits)
            hs, ic = latency(moto, n, hs_names, ic_names, commits)
            row: dict[str, Any] = {"hyperslab": hs, "icechunk": ic}
            print(f"  {'':8} {'hyperslab ms':>18} {'icechunk ms':>18} {'ratio':>6}")
            print(f"  {'':8} {'median':>8} {'p90':>9} {'median':>8} {'p90':>9} {'ic/hs':>6}")
            for what in ("commit", "op"):
                h, i = hs[what], ic[what]
                print(
                    f"  {what:8} {h['median_ms']:8.1f} {h['p90_ms']:9.1f} "
                    f"{i['median_ms']:8.1f} {i['p90_ms']:9.1f} "
                    f"{i['median_ms'] / h['median_ms']:6.2f}"
                )
            for side, r in (("hyperslab", hs), ("icechunk", ic)):
                print(
                    f"  {side:9} per op: {r['requests_total_per_op']:5.1f} requests "
                    f"{r['requests_per_op']}, {r['bytes_put_per_op']:,d} bytes sent"
                )
            if args.writers:
                rounds = args.rounds if n < 100_000 else 1
                walls: dict[str, list[float]] = {"hyperslab": [], "icechunk": []}
                for rnd in range(rounds):  # the sides alternate round by round
                    for side, prefix, names in (
                        ("hyperslab", f"hs-{n}", hs_names),
                        ("icechunk", f"ic-{n}", ic_names),
                    ):
                        c = concurrent(moto, side, prefix, names, args.writers, rnd)
                        row.setdefault(f"{side}_concurrent", []).append(c)
                        walls[side].append(c.get("wall_s", float("nan")))
                        print(
                            f"  {args.writers} writers {side:9} round {rnd + 1}: landed "
                            f"{c['landed']}/{c['writers']}, wall "
                            f"{c.get('wall_s', float('nan')):.2f} s, retries max "
                            f"{c.get('max_retries', '-')} mean "
                            f"{c.get('mean_retries', float('nan')):.1f}"
                            + (f", errors {c['errors']}" if c["errors"] else "")
                        )
                hw, iw = statistics.median(walls["hyperslab"]), statistics.median(walls["icechunk"])
                row["writers_wall_median_s"] = {"hyperslab": hw, "icechunk": iw}
                print(
                    f"  {args.writers} writers, median wall over {rounds} round(s): hyperslab "
                    f"{hw:.2f} s, icechunk {iw:.2f} s, ratio ic/hs {iw / hw:.2f}"
                )
            results["sizes"][n] = row
            if args.profile:
                print(f"\n  cProfile of one hyperslab entry write + commit at {n} entries:")
                print(_profile(moto, f"hs-{n}", hs_names))
    finally:
        with contextlib.suppress(Exception):
            moto.stop()
    results["load_average_end"] = os.getloadavg()[0]
    print(f"\nload average at the end {results['load_average_end']:.1f}")
    print(json.dumps(results), file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
