"""Many writers at once, and writers killed mid-commit, on file:// and loopback S3.

* 8 processes commit to one branch at once, all prepared against the same base
  snapshot (a barrier between reading the base and committing maximises the
  race): every disjoint entry lands, exactly one writer of the shared entry wins
  and the others get ``entry_conflict``, history is linear, fsck is clean.
* ``hyperslab ingest`` is SIGKILLed at random points: at a random one of its
  storage writes (before or after it), and at random wall-clock times. After each
  kill the branch names a complete snapshot and fsck is clean; finally a re-run
  succeeds and yields exactly the tree a clean ingest yields.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from hyperslab.references.fsck import fsck
from hyperslab.references.repository import Repository

HYPERSLAB = str(Path(sys.executable).parent / "hyperslab")


# ------------------------------------------------------------------ 8 processes


def _writer(
    spec: str, entry: str, files: list[str], barrier: Any, results: Any, env: dict[str, str]
) -> None:
    os.environ.update(env)
    from hyperslab.convert.ingest import EntryPlan, ingest_entry
    from hyperslab.errors import HyperslabError

    try:
        repo = Repository.open(spec)
        base = repo.branch_head("main")[0]
        value, _ = ingest_entry(repo, EntryPlan(entry, files))
        barrier.wait(timeout=300)
        res = repo.commit({entry: value}, message=f"{entry} by {os.getpid()}", base=base)
        assert res.snapshot is not None
        results.put((entry, files[0], "ok", res.snapshot.id, res.attempts))
    except HyperslabError as exc:
        results.put((entry, files[0], exc.code, None, 0))
    except BaseException as exc:  # pragma: no cover - surfaced by the assertions
        results.put((entry, files[0], f"crash {exc!r}", None, 0))


@pytest.mark.parametrize("backend", ["file", "s3"])
def test_eight_processes_commit_at_once(
    backend: str, request: pytest.FixtureRequest, sample_dir: Path, tmp_path: Path
) -> None:
    if backend == "s3":
        bucket = request.getfixturevalue("s3_bucket")
        spec = f"{bucket.url}/repo"
        env = {"AWS_ENDPOINT_URL": bucket.endpoint.endpoint_url}
    else:
        spec, env = str(tmp_path / "repo"), {}
    os.environ.update(env)
    try:
        Repository.init(spec)
        files = sorted(str(p) for p in sample_dir.glob("scan_000?_*.nxs"))
        jobs = [(f"p{i}", [files[0]]) for i in range(5)]  # disjoint entries
        jobs += [("same", [f]) for f in files]  # three different versions of one entry
        assert len(jobs) >= 8
        ctx = mp.get_context("spawn")
        barrier = ctx.Barrier(len(jobs))
        results = ctx.Queue()
        procs = [
            ctx.Process(target=_writer, args=(spec, e, fs, barrier, results, env)) for e, fs in jobs
        ]
        for p in procs:
            p.start()
        outcome = [results.get(timeout=600) for _ in procs]
        for p in procs:
            p.join(timeout=60)
    finally:
        for k in env:
            os.environ.pop(k, None)
    os.environ.update(env)
    try:
        repo = Repository.open(spec)
        crashed = [o for o in outcome if o[2] not in ("ok", "entry_conflict")]
        assert not crashed, crashed
        ok = [o for o in outcome if o[2] == "ok"]
        assert sorted(o[0] for o in ok if o[0] != "same") == [f"p{i}" for i in range(5)]
        same_ok = [o for o in ok if o[0] == "same"]
        assert len(same_ok) == 1, outcome  # all prepared on one base: one winner
        assert sum(o[2] == "entry_conflict" for o in outcome) == len(files) - 1
        log = list(repo.log("main"))
        assert len(log) == len(ok) + 1  # every success is a snapshot, nothing else
        assert {s.id for s in log[:-1]} == {o[3] for o in ok}
        assert all(len(s.parents) == 1 for s in log[:-1])  # linear
        head = dict(repo.entries(log[0]))
        assert set(head) == {"same", *(f"p{i}" for i in range(5))}
        winner = repo.entry(log[0], "same")
        assert winner["sources"][0]["name"] == Path(same_ok[0][1]).name
        report = fsck(repo)
        assert report.clean, report.problems
    finally:
        for k in env:
            os.environ.pop(k, None)


# ------------------------------------------------------------------ SIGKILL

# Runs the real CLI, counting storage writes; kills itself at write number
# $KILL_AT (before or after it, per $KILL_WHEN) or reports the count at exit.
_WRAPPER = r"""
import os, signal, sys
from hyperslab import storage as sites
count = [0]
kill_at = int(os.environ.get("KILL_AT", "0"))
when = os.environ.get("KILL_WHEN", "before")
def wrap(cls, name):
    orig = getattr(cls, name)
    def f(self, *a, **k):
        count[0] += 1
        if count[0] == kill_at and when == "before":
            os.kill(os.getpid(), signal.SIGKILL)
        out = orig(self, *a, **k)
        if count[0] == kill_at and when == "after":
            os.kill(os.getpid(), signal.SIGKILL)
        return out
    setattr(cls, name, f)
for cls in (sites.FileSite, sites.S3Site):
    for name in ("put", "put_if_match", "put_file"):
        wrap(cls, name)
import atexit
atexit.register(lambda: sys.stderr.write(f"WRITES={count[0]}\n"))
from hyperslab.cli import main
main(sys.argv[1:])
"""


def _ingest_cmd(spec: str, sources: list[str]) -> list[str]:
    return [
        sys.executable,
        "-c",
        _WRAPPER,
        "ingest",
        *sources,
        "--repo",
        spec,
        "--name",
        "run1",
        "--upload-sources",
        "--json",
    ]


def _assert_consistent(spec: str, expected: set[str]) -> str | None:
    repo = Repository.open(spec)
    head = repo.snapshot(repo.branch_head("main")[0])
    names = {n for n, _ in repo.entries(head)}
    assert names in (set(), expected), names  # one snapshot holds the whole ingest
    report = fsck(repo)
    assert report.clean, report.problems
    return head.tree


@pytest.mark.parametrize(("backend", "write_kills", "time_kills"), [("file", 20, 4), ("s3", 8, 2)])
def test_sigkill_ingest_at_random_points(
    backend: str,
    write_kills: int,
    time_kills: int,
    request: pytest.FixtureRequest,
    sample_dir: Path,
    tmp_path: Path,
) -> None:
    bucket = request.getfixturevalue("s3_bucket") if backend == "s3" else None
    env = dict(os.environ)  # after the S3 fixture exported its credentials
    if bucket is not None:
        spec, clean_spec = f"{bucket.url}/crash", f"{bucket.url}/clean"
        env["AWS_ENDPOINT_URL"] = bucket.endpoint.endpoint_url
    else:
        spec, clean_spec = str(tmp_path / "crash"), str(tmp_path / "clean")
    sources = [str(sample_dir)]
    rng = random.Random(int(os.environ.get("HYPERSLAB_TEST_SEED", "0")) or None)
    old_env = dict(os.environ)
    os.environ.update(env)
    try:
        Repository.init(spec)
        Repository.init(clean_spec)
        # the reference: a clean ingest elsewhere, counting its writes and time
        t0 = time.monotonic()
        ref = subprocess.run(
            _ingest_cmd(clean_spec, sources), env=env, capture_output=True, text=True, timeout=300
        )
        duration = time.monotonic() - t0
        assert ref.returncode == 0, ref.stderr
        writes = int(ref.stderr.rsplit("WRITES=", 1)[1].split()[0])
        assert writes > 10
        expected = {n for n, _ in Repository.open(clean_spec).entries("main")}
        clean_tree = Repository.open(clean_spec).pinned("main").tree

        # Kill points accumulate garbage in one repository until a run completes
        # (then later runs would write nothing), after which a fresh one is used.
        killed, attempts, generation = 0, 0, 0
        target = write_kills + time_kills
        current = spec
        while killed < target and attempts < 3 * target:
            attempts += 1
            by_time = attempts % (target // max(time_kills, 1) + 1) == 0 and time_kills > 0
            child_env = dict(env)
            if not by_time:
                child_env.update(
                    KILL_AT=str(rng.randint(1, writes)), KILL_WHEN=rng.choice(["before", "after"])
                )
            proc = subprocess.Popen(
                _ingest_cmd(current, sources),
                env=child_env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
            if by_time:
                try:
                    proc.wait(timeout=rng.uniform(0.5, 1.0) * duration)
                except subprocess.TimeoutExpired:
                    proc.send_signal(signal.SIGKILL)
            _, err = proc.communicate(timeout=300)
            _assert_consistent(current, expected)
            if proc.returncode == -signal.SIGKILL:
                killed += 1
                continue
            assert proc.returncode == 0, err.decode()
            generation += 1  # completed: continue killing in a fresh repository
            current = f"{spec}-{generation}"
            Repository.init(current)
        assert killed >= target, (killed, attempts)

        final = subprocess.run(
            _ingest_cmd(current, sources), env=env, capture_output=True, text=True, timeout=300
        )
        assert final.returncode == 0, final.stderr
        doc = json.loads(final.stdout)
        assert doc["ok"] is True
        assert _assert_consistent(current, expected) == clean_tree  # the same content, exactly
    finally:
        os.environ.clear()
        os.environ.update(old_env)
