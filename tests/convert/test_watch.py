"""``hyperslab watch``: files are committed once, complete, in batches; restarts re-ingest
nothing; bad files are reported and skipped; a writer that still has a file open is
waited for (its lock, its superblock flags); SIGTERM commits the batch, then exits.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

from hyperslab.access.array import open_array
from hyperslab.cli import app
from hyperslab.convert.watch import (
    check_template,
    entry_name,
    not_ready_reason,
    watch,
)
from hyperslab.errors import BadInputError, HyperslabError
from hyperslab.references.repository import Repository

runner = CliRunner()
HYPERSLAB = shutil.which("hyperslab", path=str(Path(sys.executable).parent))

WRITER = textwrap.dedent(
    """
    import sys, time
    import h5py, numpy as np
    path, frames, pause = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    with h5py.File(path, "w") as f:
        d = f.create_dataset("entry/data/data", shape=(0, 4, 4), maxshape=(None, 4, 4),
                             chunks=(1, 4, 4), dtype="<u2")
        for i in range(frames):
            d.resize(i + 1, axis=0)
            d[i] = i
            f.flush()
            print(i, flush=True)
            time.sleep(pause)
    print("closed", flush=True)
    """
)


def frames_file(path: Path, n: int) -> Path:
    with h5py.File(path, "w") as f:
        f.create_dataset("entry/data/data", data=frames(n), chunks=(1, 4, 4))
    return path


def frames(n: int) -> np.ndarray:
    return np.broadcast_to(np.arange(n, dtype="<u2")[:, None, None], (n, 4, 4)).copy()


@pytest.fixture
def repo(tmp_path: Path) -> Repository:
    return Repository.init(str(tmp_path / "repo"))


def run_once(repo: Repository, d: Path, tmp_path: Path, **kw: Any) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    kw.setdefault("settle", 0.0)
    watch(repo, d, "run/{stem}", once=True, state=tmp_path / "state.json", emit=events.append, **kw)
    return events


def kinds(events: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [e for e in events if e["event"] == kind]


def snapshots(repo: Repository) -> int:
    return len(list(repo.log("main")))


# ---------------------------------------------------------------- names and guards
def test_templates_name_files_and_bad_ones_are_refused() -> None:
    root = Path("/data/run42")
    assert entry_name("run42/{stem}", root, "scan_1.h5") == "run42/scan_1"
    assert entry_name("{dir}/{stem}", root, "scan_1.h5") == "scan_1"
    assert entry_name("{dir}/{stem}", root, "a/b/scan_1.nxs") == "a/b/scan_1"
    assert entry_name("{parent}/{stem}", root, "scan_1.h5") == "run42/scan_1"
    assert entry_name("{parent}/{stem}", root, "a/b/scan_1.h5") == "b/scan_1"
    assert entry_name("{root}/{path}", root, "a/scan_1.h5") == "run42/a/scan_1"
    assert entry_name("x/{name}_{ext}", root, "scan_1.h5") == "x/scan_1.h5_h5"
    for bad in ("{nope}", "run42", "{stem!r}", "{stem:>9}", "../{stem}", "{stem", "{dir}"):
        with pytest.raises(BadInputError):
            check_template(bad)


def test_a_file_open_for_writing_is_not_ready(tmp_path: Path) -> None:
    p = tmp_path / "open.h5"
    with h5py.File(p, "w") as f:
        f["x"] = np.arange(10)
        f.flush()
        assert "writ" in (not_ready_reason(p) or "") or "lock" in (not_ready_reason(p) or "")
    assert not_ready_reason(p) is None
    # a prefix of a complete file (a copy in progress) is incomplete
    whole = p.read_bytes()
    (tmp_path / "part.h5").write_bytes(whole[: len(whole) // 2])
    assert "incomplete" in (not_ready_reason(tmp_path / "part.h5") or "")
    # with a user block and the latest format
    with h5py.File(tmp_path / "ub.h5", "w", userblock_size=512, libver="latest") as f:
        f["x"] = np.arange(10)
    assert not_ready_reason(tmp_path / "ub.h5") is None


# ---------------------------------------------------------------- (a) a slow writer
@pytest.mark.skipif(HYPERSLAB is None, reason="console script not installed")
@pytest.mark.parametrize("locking", ["default", "off"])
def test_a_file_being_written_is_committed_once_complete(
    tmp_path: Path, repo: Repository, locking: str
) -> None:
    """The writer pauses longer than --settle between frames while it holds the file:
    only the lock (or, with HDF5 file locking off, the superblock flags) keeps the
    watch from committing it half-written. SIGTERM then stops the watch cleanly."""
    d = tmp_path / "incoming"
    d.mkdir()
    env = dict(os.environ)
    if locking == "off":
        env["HDF5_USE_FILE_LOCKING"] = "FALSE"
    argv = [HYPERSLAB, "watch", str(d), "-r", repo.display, "-n", "run/{stem}"]
    argv += ["--settle", "0.2", "--interval", "0.05", "--batch-seconds", "0"]
    argv += ["--state", str(tmp_path / "state.json"), "--heartbeat", "0", "--json"]
    watcher = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, env=env)
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(x) for x in watcher.stdout or []]).start()
    events: list[dict[str, Any]] = []

    def until(kind: str, timeout: float) -> dict[str, Any]:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            try:
                e = json.loads(lines.get(timeout=0.1))
            except queue.Empty:
                continue
            events.append(e)
            if e["event"] == kind:
                return e
        raise AssertionError(f"no {kind} event in {timeout} s: {events}")

    try:
        until("started", 15)
        n = 5
        writer = subprocess.run(
            [sys.executable, "-c", WRITER, str(d / "scan.h5"), str(n), "0.6"],
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        assert writer.stdout.endswith("closed\n")
        done = until("committed", 10)
        watcher.send_signal(signal.SIGTERM)
        assert watcher.wait(timeout=10) == 0
        time.sleep(0.1)
        while not lines.empty():
            events.append(json.loads(lines.get()))
    finally:
        if watcher.poll() is None:
            watcher.kill()
    assert [e["event"] for e in events][-2:] == ["stopping", "stopped"]
    assert len(kinds(events, "committed")) == 1, events
    assert done["files"] == [{"path": "scan.h5", "entry": "run/scan"}]
    waits = [e["reason"] for e in kinds(events, "file_waiting")]
    assert waits, "the open file was never held back by a guard"
    assert all("writ" in w or "lock" in w for w in waits), waits
    rec = repo.entry("main", "run/scan")
    assert rec["arrays"]["entry/data/data"]["shape"] == [n, 4, 4]
    arr = open_array(repo, "run/scan", "entry/data/data", cache=False)
    np.testing.assert_array_equal(arr[:], frames(n))
    assert snapshots(repo) == 2  # the initial one and this one: never a half-written file


# ---------------------------------------------------------------- (b) replaced before done
def test_a_file_replaced_before_it_is_complete_is_committed_once(
    tmp_path: Path, repo: Repository
) -> None:
    d = tmp_path / "in"
    d.mkdir()
    whole = frames_file(tmp_path / "whole.h5", 6).read_bytes()
    target = d / "scan.h5"
    target.write_bytes(whole[: len(whole) // 2])  # a copy cut short
    events = run_once(repo, d, tmp_path)
    assert not kinds(events, "committed") and not kinds(events, "file_failed"), events
    assert "incomplete" in kinds(events, "file_waiting")[0]["reason"]
    # the writer finishes into a temporary name and renames it over the partial file
    (d / ".scan.h5.tmp").write_bytes(whole)
    os.replace(d / ".scan.h5.tmp", target)
    events = run_once(repo, d, tmp_path)
    assert len(kinds(events, "committed")) == 1
    assert repo.entry("main", "run/scan")["arrays"]["entry/data/data"]["shape"] == [6, 4, 4]
    # truncated and rewritten in place (a re-run of the scan): committed again, complete
    with open(target, "r+b") as fh:
        fh.truncate(0)
    assert not kinds(run_once(repo, d, tmp_path), "committed")
    frames_file(target, 8)
    assert len(kinds(run_once(repo, d, tmp_path), "committed")) == 1
    arr = open_array(repo, "run/scan", "entry/data/data", cache=False)
    np.testing.assert_array_equal(arr[:], frames(8))
    assert snapshots(repo) == 3


def test_the_loop_waits_out_a_rewrite_in_place(tmp_path: Path, repo: Repository) -> None:
    """The loop sees a file cut short, then rewritten whole: one commit, complete."""
    d = tmp_path / "in"
    d.mkdir()
    whole = frames_file(tmp_path / "whole.h5", 4).read_bytes()
    (d / "scan.h5").write_bytes(whole[:900])
    events: list[dict[str, Any]] = []
    stop = threading.Event()
    kw: dict[str, Any] = {"settle": 0.1, "interval": 0.02, "batch_seconds": 0.0}
    t = threading.Thread(
        target=watch,
        args=(repo, d, "{stem}"),
        kwargs={"state": tmp_path / "s.json", "emit": events.append, "stop": stop, **kw},
    )
    t.start()
    try:
        end = time.monotonic() + 10
        while not kinds(events, "file_waiting") and time.monotonic() < end:
            time.sleep(0.02)
        with open(d / "scan.h5", "r+b") as fh:  # rewritten in three slow pieces
            for i in range(0, len(whole), len(whole) // 3 + 1):
                fh.seek(i)
                fh.write(whole[i : i + len(whole) // 3 + 1])
                fh.flush()
                time.sleep(0.03)
        while not kinds(events, "committed") and time.monotonic() < end:
            time.sleep(0.02)
    finally:
        stop.set()
        t.join(10)
    assert not t.is_alive()
    assert len(kinds(events, "committed")) == 1, events
    assert repo.entry("main", "scan")["arrays"]["entry/data/data"]["shape"] == [4, 4, 4]
    assert events[-1]["event"] == "stopped"


# ---------------------------------------------------------------- (c) restarts
def test_a_restart_reingests_nothing(tmp_path: Path, repo: Repository) -> None:
    d = tmp_path / "in"
    d.mkdir()
    for i in range(3):
        frames_file(d / f"scan_{i}.h5", 2 + i)
    first = run_once(repo, d, tmp_path)
    assert len(kinds(first, "committed")) == 1 and snapshots(repo) == 2
    again = run_once(repo, d, tmp_path)  # with its state: not even read
    assert [e["event"] for e in again] == ["started", "stopped"], again
    (tmp_path / "state.json").unlink()  # without: converted again, but nothing to commit
    afresh = run_once(repo, d, tmp_path)
    assert not kinds(afresh, "committed") and kinds(afresh, "unchanged")
    assert snapshots(repo) == 2
    # a new file is the only thing the next run commits
    frames_file(d / "scan_9.h5", 2)
    later = run_once(repo, d, tmp_path)
    assert [e["path"] for e in kinds(later, "file_ready")] == ["scan_9.h5"]
    assert kinds(later, "committed")[0]["added"] == 1 and snapshots(repo) == 3


def test_files_not_settled_are_left_for_the_next_run(tmp_path: Path, repo: Repository) -> None:
    d = tmp_path / "in"
    d.mkdir()
    frames_file(d / "new.h5", 2)
    events = run_once(repo, d, tmp_path, settle=60.0)
    assert (
        not kinds(events, "file_ready") and "settling" in kinds(events, "file_waiting")[0]["reason"]
    )
    assert snapshots(repo) == 1


# ---------------------------------------------------------------- (d) batching
def test_files_arriving_together_are_one_commit(tmp_path: Path, repo: Repository) -> None:
    d = tmp_path / "in"
    (d / "sub").mkdir(parents=True)
    for i in range(4):
        frames_file(d / f"scan_{i}.h5", 2)
    frames_file(d / "sub" / "scan_9.nxs", 2)
    events = run_once(repo, d, tmp_path)
    (c,) = kinds(events, "committed")
    assert c["added"] == 5 and len(c["files"]) == 5
    assert "run/scan_9" in {f["entry"] for f in c["files"]}
    assert snapshots(repo) == 2


def test_batches_hold_at_most_batch_files(tmp_path: Path, repo: Repository) -> None:
    d = tmp_path / "in"
    d.mkdir()
    for i in range(5):
        frames_file(d / f"scan_{i}.h5", 2)
    events = run_once(repo, d, tmp_path, batch_files=2)
    assert [c["added"] for c in kinds(events, "committed")] == [2, 2, 1]


def test_two_files_one_entry_name_is_a_failure(tmp_path: Path, repo: Repository) -> None:
    d = tmp_path / "in"
    (d / "a").mkdir(parents=True)
    (d / "b").mkdir()
    frames_file(d / "a" / "scan.h5", 2)
    frames_file(d / "b" / "scan.h5", 2)
    events = run_once(repo, d, tmp_path)
    assert len(kinds(events, "file_ready")) == 1
    (failed,) = kinds(events, "file_failed")
    assert failed["error"]["code"] == "bad_input" and "run/scan" in failed["error"]["message"]


# ---------------------------------------------------------------- (e) bad files
def test_a_bad_file_is_reported_and_the_rest_commit(tmp_path: Path, repo: Repository) -> None:
    d = tmp_path / "in"
    d.mkdir()
    frames_file(d / "good_1.h5", 2)
    frames_file(d / "good_2.h5", 3)
    (d / "junk.h5").write_text("not HDF5 at all\n")
    events = run_once(repo, d, tmp_path)
    (failed,) = kinds(events, "file_failed")
    assert failed["path"] == "junk.h5" and failed["error"]["code"] == "not_hdf5"
    assert kinds(events, "committed")[0]["added"] == 2
    # not retried while it stays the same...
    assert not kinds(run_once(repo, d, tmp_path), "file_failed")
    # ...retried once it changes
    frames_file(d / "junk.h5", 2)
    events = run_once(repo, d, tmp_path)
    assert not kinds(events, "file_failed") and kinds(events, "committed")[0]["added"] == 1


# ---------------------------------------------------------------- (f) the command
def test_json_events_parse_and_once_exits_with_the_failure(
    tmp_path: Path, repo: Repository
) -> None:
    d = tmp_path / "in"
    d.mkdir()
    frames_file(d / "scan_1.h5", 2)
    (d / "junk.h5").write_bytes(b"\0" * 100)
    argv = ["watch", str(d), "-r", repo.display, "-n", "run42/{stem}", "--settle", "0"]
    argv += ["--once", "--state", str(tmp_path / "s.json"), "--json"]
    res = runner.invoke(app, argv)
    assert res.exit_code == 2, res.stdout  # not_hdf5, after committing the rest
    events = [json.loads(line) for line in res.stdout.splitlines()]
    assert all({"event", "time"} <= set(e) for e in events)
    order = [e["event"] for e in events]
    assert order[0] == "started" and order[-1] == "stopped"
    assert {"file_seen", "file_ready", "file_failed", "committed"} <= set(order)
    res = runner.invoke(app, argv)  # the failure is reported once: exit 0 now
    assert res.exit_code == 0 and [json.loads(x)["event"] for x in res.stdout.splitlines()] == [
        "started",
        "stopped",
    ]
    text = runner.invoke(app, [*argv[:-1], "--state", str(tmp_path / "t.json")]).stdout
    assert "nothing to commit: 1 entry" in text
    assert "stopped: 0 entries committed in 0 snapshots, 1 unchanged, 1 failed" in text
    assert all(line[:4].isdigit() for line in text.splitlines())  # timestamped lines


def test_two_watches_cannot_share_a_state(tmp_path: Path, repo: Repository) -> None:
    d = tmp_path / "in"
    d.mkdir()
    stop = threading.Event()
    started = threading.Event()
    t = threading.Thread(
        target=watch,
        args=(repo, d),
        kwargs={
            "state": tmp_path / "s.json",
            "stop": stop,
            "interval": 0.05,
            "emit": lambda e: started.set(),
        },
    )
    t.start()
    try:
        assert started.wait(10)
        with pytest.raises(HyperslabError) as exc:
            watch(repo, d, once=True, state=tmp_path / "s.json")
        assert exc.value.code == "conflict"
    finally:
        stop.set()
        t.join(10)
