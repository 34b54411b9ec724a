"""Latency of ``hyperslab watch``: from a file's close to the snapshot that holds it.

    .venv/bin/python benchmarks/watch.py [--files 8] [--settle 2] [--interval 1]
                                         [--batch-seconds 1] [--burst 20] [--work DIR]

One ``hyperslab watch DIR --json`` process (the console script, as systemd would run
it) follows an empty directory committing into a fresh local repository. This
process plays the detector: for each of ``--files`` files it opens an HDF5 file,
writes 10 frames of 256x256 uint16 (gzip, one chunk a frame) over about 0.5 s
while holding it open (HDF5 file lock and superblock flags set), closes it, and
notes the time. A reader thread stamps each JSON event line as it arrives. The
latency of a file is the arrival of the ``committed`` event naming it minus its
close; the next file is written once the previous one is committed, so each file
is measured alone. ``latency - settle`` is what the watch itself adds to the
stability window: scan granularity, the readiness probes, conversion, the commit.

Then ``--burst`` files are closed together (written one after the other, without
waiting): the number of commits they became and the latency from the last close
to the last commit.

Target: ``latency - settle < 2 s`` (median).
"""

from __future__ import annotations

import argparse
import json
import queue
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import h5py
import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def write_file(path: Path, frames: int = 10, pause: float = 0.05) -> float:
    """An HDF5 file written frame by frame while held open; returns its close time."""
    rng = np.random.default_rng(len(path.name))
    with h5py.File(path, "w") as f:
        d = f.create_dataset(
            "entry/data/data",
            shape=(0, 256, 256),
            maxshape=(None, 256, 256),
            chunks=(1, 256, 256),
            dtype="<u2",
            compression="gzip",
        )
        for i in range(frames):
            d.resize(i + 1, axis=0)
            d[i] = rng.integers(0, 1000, (256, 256), dtype="<u2")
            f.flush()
            time.sleep(pause)
    return time.time()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--files", type=int, default=8)
    ap.add_argument("--settle", type=float, default=2.0)
    ap.add_argument("--interval", type=float, default=1.0)
    ap.add_argument("--batch-seconds", type=float, default=1.0)
    ap.add_argument("--burst", type=int, default=20)
    ap.add_argument("--work", type=Path, default=None, help="work directory (default: a temp one)")
    args = ap.parse_args()
    exe = shutil.which("hyperslab", path=str(Path(sys.executable).parent)) or "hyperslab"
    work = Path(args.work or tempfile.mkdtemp(prefix="watch-bench-"))
    incoming, repo = work / "incoming", work / "repo"
    shutil.rmtree(work / "incoming", ignore_errors=True)
    shutil.rmtree(repo, ignore_errors=True)
    incoming.mkdir(parents=True)
    subprocess.run([exe, "init", str(repo)], check=True, capture_output=True)
    argv = [exe, "watch", str(incoming), "-r", str(repo), "-n", "bench/{stem}", "--json"]
    argv += ["--settle", str(args.settle), "--interval", str(args.interval)]
    argv += ["--batch-seconds", str(args.batch_seconds), "--heartbeat", "0"]
    argv += ["--state", str(work / "state.json")]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    events: queue.Queue[tuple[float, dict[str, Any]]] = queue.Queue()

    def read() -> None:
        for line in proc.stdout or []:
            events.put((time.time(), json.loads(line)))

    threading.Thread(target=read, daemon=True).start()

    def until(pred: Any, timeout: float = 60.0) -> tuple[float, dict[str, Any]]:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            try:
                t, e = events.get(timeout=0.1)
            except queue.Empty:
                continue
            if pred(e):
                return t, e
        raise SystemExit(f"timed out waiting for an event ({timeout} s)")

    try:
        until(lambda e: e["event"] == "started")
        lat = []
        waits = 0
        for i in range(args.files):
            closed = write_file(incoming / f"scan_{i:04d}.h5")
            t, e = until(
                lambda e, i=i: (
                    e["event"] == "committed"
                    and any(f["path"] == f"scan_{i:04d}.h5" for f in e["files"])
                )
            )
            lat.append(t - closed)
        burst_closed = 0.0
        for i in range(args.burst):
            burst_closed = write_file(incoming / f"burst_{i:04d}.h5", frames=2, pause=0.0)
        seen: set[str] = set()
        commits = 0
        t_last = burst_closed
        while len(seen) < args.burst:
            t, e = until(lambda e: e["event"] in ("committed", "file_waiting", "file_failed"))
            if e["event"] == "file_waiting":
                waits += 1
                continue
            if e["event"] == "file_failed":
                raise SystemExit(f"failed: {e}")
            commits += 1
            seen.update(f["path"] for f in e["files"])
            t_last = t
    finally:
        proc.terminate()
        proc.wait(30)
    med = statistics.median(lat)
    print(
        f"hyperslab watch: settle {args.settle:g} s, interval {args.interval:g} s, "
        f"batch-seconds {args.batch_seconds:g} s; {args.files} files of 10 x 256x256 uint16 "
        "frames (gzip), written over ~0.5 s each while held open"
    )
    print(f"close -> committed: median {med:.2f} s, min {min(lat):.2f} s, max {max(lat):.2f} s")
    print(
        f"minus settle ({args.settle:g} s): median {med - args.settle:.2f} s, "
        f"max {max(lat) - args.settle:.2f} s (target < 2 s)"
    )
    print(
        f"burst: {args.burst} files closed together -> {commits} commit(s), last commit "
        f"{t_last - burst_closed:.2f} s after the last close ({waits} waiting events)"
    )
    print(f"work directory: {work}")


if __name__ == "__main__":
    main()
