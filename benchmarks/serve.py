"""``hyperslab serve`` against Tiled on loopback: the same NeXus file, one run, one machine.

    make bench-serve                      # or:
    .venv/bin/python benchmarks/serve.py [--repeats 7] [--load-seconds 20] [--clients 16]
    .venv/bin/python benchmarks/serve.py install      # only set Tiled up

What runs:

1. **Data** (cached in ``bench-data/serve/``): one ~78 MB NeXus detector stack
   (``sync.big_file``, i.e. ``write_big_detector_file``: 177 ``uint32`` frames of
   1024 x 1024, one frame per gzip chunk) in ``files/``, alone, since Tiled serves the
   whole directory. ``hyperslab init`` + ``hyperslab ingest`` put it into a local
   repository ``repo/`` as entry ``detector``; the maps point at the same file, so both
   servers read the same bytes from the same (page-cached) file.
2. **Tiled** runs from its own virtual environment, since its pins differ from
   hyperslab's: ``--tiled PATH`` or ``$TILED`` (a ``tiled`` executable), else
   ``bench-data/tiled-venv/bin/tiled``, created on first use with ``python -m venv`` and
   ``pip install "tiled[server]==0.2.20"`` (``install`` does only this step).
3. **Servers**, as subprocesses on 127.0.0.1 (logs in ``bench-data/serve/logs/``):
   ``hyperslab serve repo --allow-anonymous --port P`` and
   ``tiled serve directory files --public --port P``. Requests:

   ====================  ===============================================  =========================================
   read                  hyperslab                                        Tiled
   ====================  ===============================================  =========================================
   one frame, binary     ``/api/slice/detector/entry/data/data?sel=K``    ``/api/v1/array/full/detector_78MB/entry/``
                         ``&format=npy``                                  ``data/data?slice=K&format=application/``
                                                                          ``octet-stream`` (Tiled has no .npy)
   one frame, PNG        the same, ``format=png``                         the same, ``format=image/png``
   64 x 64 ROI           ``sel=K,Y:Y+64,X:X+64``, npy                     ``slice=K,Y:Y+64,X:X+64``, octet-stream
   100-frame series      ``sel=S:S+100,Y,X``, npy                         ``slice=S:S+100,Y,X``, octet-stream
   ====================  ===============================================  =========================================

   Both PNGs are 8-bit grayscale scaled from the 1st to the 99th percentile. Every
   binary response is checked against h5py's values of the file (PNGs: status, signature).

Phases (one client thread, keep-alive ``http.client`` connections, unless said):

* **Cold rounds** (``--repeats``): per round, each server in turn (the first one
  alternates) is started alone; *first response* is the time from starting the process
  to the end of the first frame's body (imports, Tiled's directory walk, opening the
  file or the repository, one frame). The same server then reads a 100-frame pixel
  series on frames the first request did not touch (*cold*: no decoded chunk of it in
  any cache of the server), and the same series again (*repeated*: hyperslab keeps
  decoded chunks in memory, 256 MiB by default; Tiled keeps none). Then it is stopped.
* **Single reads**: both servers run; after one warm-up read of each kind, each repeat
  reads a frame (binary), a frame (PNG) and a ROI, on frames that server has not read
  before (so the reads decode their chunks; hyperslab's memory cache does not help),
  the same frames for both, alternating which server goes first.
* **Load**: ``--clients`` threads, each with its own keep-alive connection, read random
  frames (binary) from one server for ``--load-seconds`` or ``--load-requests`` in all,
  whichever ends first; requests/s, MB/s, p50/p99 latency and errors (anything but
  200, and connection errors). Tiled goes first, then hyperslab. The client threads
  share the cores with the server (on a 2-core machine they take a good part of one).

Reported: medians (and the spread) per read, ratios Tiled / hyperslab (> 1: hyperslab
faster), the load results; everything is also written to ``bench-data/serve/results.json``.
No time is asserted anywhere. The HTTP servers differ too: Tiled's environment has
uvicorn with uvloop and httptools (``tiled[server]`` asks for them), hyperslab's uses
whatever uvicorn finds in its own (stated in the output).
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import io
import json
import os
import platform
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from loopback_s3 import BenchSetupError
from sync import big_file

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
WORKDIR = ROOT / "bench-data" / "serve"
TILED_VENV = ROOT / "bench-data" / "tiled-venv"
TILED_SPEC = "tiled[server]==0.2.20"
ENTRY = "detector"
ARRAY = "entry/data/data"
SERIES = 100
ROI = 64
MB = 1e6
SIDES = ("hyperslab", "Tiled")
# A pixel and a ROI corner away from the module-gap row, in the scatter halo (not zeros)
PIXEL = (549, 459)
CORNER = (552, 416)


# ------------------------------------------------------------------------ setup


def ensure_tiled(explicit: str | None, *, install: bool = True) -> Path:
    """The ``tiled`` executable: ``explicit`` (``--tiled`` / ``$TILED``), else the one in
    ``bench-data/tiled-venv``, created and installed there if missing."""
    if explicit:
        found = shutil.which(explicit)
        if found is None:
            raise BenchSetupError(f"--tiled / $TILED: {explicit!r} is not an executable")
        return Path(found)
    exe = TILED_VENV / "bin" / "tiled"
    if exe.exists():
        return exe
    if not install:
        raise BenchSetupError("Tiled is not installed; run `benchmarks/serve.py install` first")
    print(f"installing {TILED_SPEC} into {TILED_VENV.relative_to(ROOT)}/ (once) ...", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(TILED_VENV)], check=True)
    pip = [str(TILED_VENV / "bin" / "python"), "-m", "pip", "install", "--quiet"]
    proc = subprocess.run([*pip, TILED_SPEC], capture_output=True, text=True)
    if proc.returncode != 0 or not exe.exists():
        raise BenchSetupError(
            f"`pip install {TILED_SPEC}` failed (exit {proc.returncode}):\n"
            + (proc.stderr or proc.stdout)[-2000:]
        )
    return exe


def tool_version(cmd: list[str]) -> str:
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    return (out.stdout or out.stderr).strip().splitlines()[-1] if out.returncode == 0 else "?"


def has_module(python: Path, module: str) -> bool:
    code = f"import importlib.util as u, sys; sys.exit(u.find_spec({module!r}) is None)"
    return subprocess.run([str(python), "-c", code], capture_output=True).returncode == 0


def hyperslab_exe() -> Path:
    return Path(sys.executable).with_name("hyperslab")


def bench_env(workdir: Path) -> dict[str, str]:
    """The environment of every child: hyperslab's cache inside the work directory."""
    return {**os.environ, "HYPERSLAB_CACHE_DIR": str(workdir / "cache")}


def repository(workdir: Path, nxs: Path, env: dict[str, str]) -> Path:
    """``workdir/repo`` holding ``nxs`` as entry ``detector``, built once (``hyperslab init``
    + ``hyperslab ingest``) and rebuilt when the file changes."""
    repo = workdir / "repo"
    stamp = f"{nxs.resolve()} {nxs.stat().st_size} {nxs.stat().st_mtime_ns}"
    marker = workdir / "repo.stamp"
    if repo.exists() and marker.exists() and marker.read_text() == stamp:
        return repo
    shutil.rmtree(repo, ignore_errors=True)
    hs = str(hyperslab_exe())
    for cmd in (
        [hs, "init", str(repo)],
        [hs, "ingest", str(nxs), "--repo", str(repo), "--name", ENTRY, "-m", "serve benchmark"],
    ):
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            raise BenchSetupError(f"{' '.join(cmd[1:2])} failed:\n{proc.stderr[-2000:]}")
    marker.write_text(stamp)
    return repo


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ---------------------------------------------------------------------- servers


@dataclass
class Side:
    """One server: how to start it and how to spell a read."""

    name: str
    argv: Callable[[int], list[str]]
    path: Callable[[str, bool], str]  # (selection, png) -> request path
    env: dict[str, str]
    logs: Path
    proc: subprocess.Popen[bytes] | None = None
    port: int = 0

    def start(self) -> float:
        """Start the process; returns ``time.perf_counter()`` just before."""
        self.port = free_port()
        self.logs.mkdir(parents=True, exist_ok=True)
        log = (self.logs / f"{self.name.lower()}.log").open("ab")
        t0 = time.perf_counter()
        self.proc = subprocess.Popen(
            self.argv(self.port),
            stdout=log,
            stderr=subprocess.STDOUT,
            env=self.env,
            start_new_session=True,
        )
        log.close()
        return t0

    def stop(self) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.proc = None

    def connect(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)


def sides(tiled: Path, workdir: Path, repo: Path, nxs: Path, env: dict[str, str]) -> list[Side]:
    hs = str(hyperslab_exe())
    logs = workdir / "logs"

    def hs_argv(port: int) -> list[str]:
        return [hs, "serve", str(repo), "--allow-anonymous", "--port", str(port)]

    def hs_path(sel: str, png: bool) -> str:
        return f"/api/slice/{ENTRY}/{ARRAY}?sel={sel}&format={'png' if png else 'npy'}"

    def tiled_argv(port: int) -> list[str]:
        return [str(tiled), "serve", "directory", str(nxs.parent), "--public", "--port", str(port)]

    def tiled_path(sel: str, png: bool) -> str:
        fmt = "image/png" if png else "application/octet-stream"
        return f"/api/v1/array/full/{nxs.stem}/{ARRAY}?slice={sel}&format={fmt}"

    return [
        Side("hyperslab", hs_argv, hs_path, env, logs),
        Side("Tiled", tiled_argv, tiled_path, env, logs),
    ]


def get(conn: http.client.HTTPConnection, path: str) -> tuple[int, bytes]:
    conn.request("GET", path)
    resp = conn.getresponse()
    return resp.status, resp.read()


def first_response(side: Side, t0: float, path: str, timeout: float) -> tuple[float, bytes]:
    """Seconds from ``t0`` (process start) until the body of ``path`` has arrived."""
    deadline = t0 + timeout
    while True:
        conn = side.connect()
        try:
            status, body = get(conn, path)
        except (ConnectionRefusedError, ConnectionResetError, http.client.RemoteDisconnected):
            conn.close()
            if side.proc is not None and side.proc.poll() is not None:
                raise BenchSetupError(
                    f"{side.name} exited ({side.proc.returncode}); see {side.logs}"
                ) from None
            if time.perf_counter() > deadline:
                raise BenchSetupError(f"{side.name} did not answer in {timeout:.0f} s") from None
            time.sleep(0.02)
            continue
        conn.close()
        if status == 404 and time.perf_counter() < deadline:
            time.sleep(0.02)  # Tiled answers before its directory walk has found the file
            continue
        if status != 200:
            raise BenchSetupError(f"{side.name}: {path} answered {status}: {body[:300]!r}")
        return time.perf_counter() - t0, body


# ------------------------------------------------------------------ measuring


def decode(side: Side, body: bytes, shape: tuple[int, ...], dtype: np.dtype[Any]) -> np.ndarray:
    if side.name == "hyperslab":
        return np.load(io.BytesIO(body), allow_pickle=False)
    return np.frombuffer(body, dtype=dtype).reshape(shape)


@dataclass
class Check:
    """h5py's values of the file, to check every binary response against."""

    dset: Any

    def __call__(
        self, side: Side, what: str, body: bytes, index: tuple[int | slice, ...], png: bool
    ) -> None:
        if png:
            if not body.startswith(b"\x89PNG\r\n\x1a\n"):
                raise AssertionError(f"{side.name} {what}: not a PNG")
            return
        want = self.dset[index]
        got = decode(side, body, want.shape, want.dtype)
        if got.shape != want.shape or not np.array_equal(got, want):
            raise AssertionError(f"{side.name} {what}: values differ from h5py's")


def sel_text(index: tuple[int | slice, ...]) -> str:
    return ",".join(str(i) if isinstance(i, int) else f"{i.start}:{i.stop}" for i in index)


@dataclass
class Results:
    samples: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    sizes: dict[str, dict[str, int]] = field(default_factory=dict)
    load: dict[str, dict[str, Any]] = field(default_factory=dict)

    def add(self, row: str, side: str, seconds: float, size: int) -> None:
        self.samples.setdefault(row, {}).setdefault(side, []).append(seconds)
        self.sizes.setdefault(row, {})[side] = size


def timed_get(conn: http.client.HTTPConnection, path: str, label: str) -> tuple[float, bytes]:
    t0 = time.perf_counter()
    try:
        status, body = get(conn, path)
    except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
        # the server closed an idle keep-alive connection (uvicorn: after 5 s); once more
        conn.close()
        t0 = time.perf_counter()
        status, body = get(conn, path)
    seconds = time.perf_counter() - t0
    if status != 200:
        raise BenchSetupError(f"{label}: {path} answered {status}: {body[:300]!r}")
    return seconds, body


def cold_rounds(
    all_sides: list[Side], n: int, repeats: int, check: Check, res: Results, rng: random.Random
) -> None:
    py, px = PIXEL
    for r in range(repeats):
        start = rng.randrange(0, n - SERIES + 1)
        outside = [i for i in range(n) if not start <= i < start + SERIES]
        first = rng.choice(outside)
        series: tuple[int | slice, ...] = (slice(start, start + SERIES), py, px)
        order = all_sides if r % 2 == 0 else all_sides[::-1]
        for side in order:
            t0 = side.start()
            try:
                path = side.path(str(first), False)
                seconds, body = first_response(side, t0, path, timeout=300)
                check(side, "first frame", body, (first,), False)
                res.add("first response (cold server)", side.name, seconds, len(body))
                conn = side.connect()
                for row in ("100-frame pixel series, cold", "100-frame pixel series, repeated"):
                    seconds, body = timed_get(conn, side.path(sel_text(series), False), side.name)
                    check(side, row, body, series, False)
                    res.add(row, side.name, seconds, len(body))
                conn.close()
            finally:
                side.stop()
        print(f"  cold round {r + 1}/{repeats} done", file=sys.stderr, flush=True)


SINGLE_ROWS = ("one frame, binary", "one frame, PNG", f"{ROI}x{ROI} ROI")


def single_index(row: str, frame: int) -> tuple[tuple[int | slice, ...], bool]:
    if row == SINGLE_ROWS[2]:
        y, x = CORNER
        return (frame, slice(y, y + ROI), slice(x, x + ROI)), False
    return (frame,), row == SINGLE_ROWS[1]


def single_reads(
    all_sides: list[Side], n: int, repeats: int, check: Check, res: Results, rng: random.Random
) -> None:
    frames = rng.sample(range(n), min(n, 1 + len(SINGLE_ROWS) * (repeats + 1)))
    warm = frames[: 1 + len(SINGLE_ROWS)]
    frames = frames[len(warm) :]
    conns = {}
    for side in all_sides:
        t0 = side.start()
        first_response(side, t0, side.path(str(warm[0]), False), timeout=300)
        conns[side.name] = side.connect()
        for row, frame in zip(SINGLE_ROWS, warm[1:], strict=True):  # one warm-up per kind
            index, png = single_index(row, frame)
            timed_get(conns[side.name], side.path(sel_text(index), png), side.name)
    for r in range(repeats):
        order = all_sides if r % 2 == 0 else all_sides[::-1]
        for row in SINGLE_ROWS:
            index, png = single_index(row, frames.pop())
            for side in order:
                seconds, body = timed_get(conns[side.name], side.path(sel_text(index), png), row)
                check(side, row, body, index, png)
                res.add(row, side.name, seconds, len(body))
    for conn in conns.values():
        conn.close()


def load_test(
    side: Side, n: int, clients: int, seconds: float, max_requests: int, seed: int
) -> dict[str, Any]:
    """``clients`` threads reading random frames (binary) from ``side`` (running)."""
    lock = threading.Lock()
    issued = [0]
    latencies: list[float] = []
    errors: list[str] = []
    received = [0]
    start = time.perf_counter()
    stop_at = start + seconds

    def client(k: int) -> None:
        rng = random.Random(seed * 1000 + k)
        conn = side.connect()
        mine: list[float] = []
        got = 0
        while time.perf_counter() < stop_at:
            with lock:
                if issued[0] >= max_requests:
                    break
                issued[0] += 1
            path = side.path(str(rng.randrange(n)), False)
            t0 = time.perf_counter()
            try:
                status, body = get(conn, path)
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                conn = side.connect()
                with lock:
                    errors.append(type(exc).__name__)
                continue
            if status != 200:
                with lock:
                    errors.append(str(status))
                continue
            mine.append(time.perf_counter() - t0)
            got += len(body)
        conn.close()
        with lock:
            latencies.extend(mine)
            received[0] += got

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    lat = np.array(latencies) if latencies else np.array([float("nan")])
    return {
        "clients": clients,
        "seconds": wall,
        "requests": len(latencies) + len(errors),
        "ok": len(latencies),
        "errors": len(errors),
        "error_kinds": sorted(set(errors)),
        "req_per_s": len(latencies) / wall,
        "mb_per_s": received[0] / MB / wall,
        "p50_ms": float(np.percentile(lat, 50)) * 1e3,
        "p99_ms": float(np.percentile(lat, 99)) * 1e3,
    }


@contextlib.contextmanager
def running(all_sides: list[Side]) -> Iterator[None]:
    try:
        yield
    finally:
        for side in all_sides:
            side.stop()


# ---------------------------------------------------------------------- report


def fmt_ms(seconds: float) -> str:
    ms = seconds * 1e3
    return f"{ms:,.0f} ms" if ms >= 100 else f"{ms:.1f} ms"


def summary(res: Results) -> list[dict[str, Any]]:
    rows = []
    for row, per in res.samples.items():
        doc: dict[str, Any] = {"read": row}
        for name in SIDES:
            xs = per.get(name, [])
            doc[name] = {
                "median_s": statistics.median(xs) if xs else None,
                "min_s": min(xs) if xs else None,
                "max_s": max(xs) if xs else None,
                "n": len(xs),
                "bytes": res.sizes[row].get(name),
            }
        hs, ti = doc["hyperslab"]["median_s"], doc["Tiled"]["median_s"]
        doc["ratio"] = ti / hs if hs and ti else None
        rows.append(doc)
    return rows


def print_tables(rows: list[dict[str, Any]], load: dict[str, dict[str, Any]]) -> None:
    w = 34
    print()
    print("Single reads on loopback: median (min-max) over the repeats; ratio = Tiled / hyperslab")
    print(f"{'read':<{w}} {'hyperslab':>28} {'Tiled':>28} {'ratio':>7}")
    for doc in rows:
        cells = []
        for name in SIDES:
            d = doc[name]
            if d["median_s"] is None:
                cells.append("-")
                continue
            cells.append(f"{fmt_ms(d['median_s'])} ({d['min_s'] * 1e3:.0f}-{d['max_s'] * 1e3:.0f})")
        ratio = f"{doc['ratio']:.1f}x" if doc["ratio"] else "-"
        print(f"{doc['read']:<{w}} {cells[0]:>28} {cells[1]:>28} {ratio:>7}")
    if not load:
        return
    print()
    some = next(iter(load.values()))
    print(
        f"Load: {some['clients']} clients reading random frames (binary), "
        "keep-alive connections; ratio = hyperslab / Tiled for req/s, Tiled / hyperslab for latency"
    )
    print(f"{'':<{w}} {'hyperslab':>14} {'Tiled':>14} {'ratio':>7}")
    for key, label, better_high in (
        ("req_per_s", "requests/s", True),
        ("mb_per_s", "MB/s", True),
        ("p50_ms", "p50 latency (ms)", False),
        ("p99_ms", "p99 latency (ms)", False),
        ("requests", "requests", None),
        ("errors", "errors", None),
        ("seconds", "seconds", None),
    ):
        hs, ti = (load.get(name, {}).get(key) for name in SIDES)
        ratio = "-"
        if better_high is not None and hs and ti:
            ratio = f"{(hs / ti if better_high else ti / hs):.1f}x"
        cells = [f"{v:,.1f}" if isinstance(v, float) else str(v) for v in (hs, ti)]
        print(f"{label:<{w}} {cells[0]:>14} {cells[1]:>14} {ratio:>7}")


# ------------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("action", nargs="?", choices=["run", "install"], default="run")
    ap.add_argument("--repeats", type=int, default=7, help="repeats of each read (>= 1)")
    ap.add_argument("--clients", type=int, default=16, help="load test: concurrent clients")
    ap.add_argument("--load-seconds", type=float, default=20.0, help="load test: seconds each")
    ap.add_argument("--load-requests", type=int, default=5000, help="load test: most requests")
    ap.add_argument("--no-load", action="store_true", help="skip the load test")
    ap.add_argument("--size-mb", type=int, default=78, help="the file's compressed MB")
    ap.add_argument("--tiled", default=os.environ.get("TILED"), help="a tiled executable")
    ap.add_argument("--workdir", type=Path, default=WORKDIR)
    ap.add_argument("--seed", type=int, default=18)
    ap.add_argument("--json", type=Path, help="results file (default: WORKDIR/results.json)")
    args = ap.parse_args(argv)
    if args.repeats < 1 or args.clients < 1:
        ap.error("--repeats and --clients must be at least 1")
    try:
        tiled = ensure_tiled(args.tiled)
        if args.action == "install":
            print(f"Tiled: {tiled} ({tool_version([str(tiled), '--version'])})")
            return 0
        return run(args, tiled)
    except BenchSetupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def run(args: argparse.Namespace, tiled: Path) -> int:
    import h5py

    workdir: Path = args.workdir
    (workdir / "files").mkdir(parents=True, exist_ok=True)
    nxs = big_file(workdir / "files", args.size_mb)
    env = bench_env(workdir)
    repo = repository(workdir, nxs, env)
    all_sides = sides(tiled, workdir, repo, nxs, env)
    tiled_python = tiled.with_name("python")
    versions = {
        "hyperslab": tool_version([str(hyperslab_exe()), "--version"]),
        "tiled": tool_version([str(tiled), "--version"]),
        "python": platform.python_version(),
        "uvloop+httptools (hyperslab)": has_module(Path(sys.executable), "uvloop")
        and has_module(Path(sys.executable), "httptools"),
        "uvloop+httptools (Tiled)": tiled_python.exists()
        and has_module(tiled_python, "uvloop")
        and has_module(tiled_python, "httptools"),
    }
    load0 = os.getloadavg()[0]
    with h5py.File(nxs, "r") as f:
        dset = f[ARRAY]
        n = int(dset.shape[0])
        if n < SERIES + 1:
            raise BenchSetupError(f"the file has {n} frames; the series needs {SERIES + 1}")
        repeats = min(args.repeats, (n - 1) // len(SINGLE_ROWS) - 1)
        print(
            f"{nxs.name}: {nxs.stat().st_size / MB:.0f} MB, {dset.shape} {dset.dtype}, "
            f"{os.cpu_count()} CPUs, load {load0:.1f}; {versions}",
            flush=True,
        )
        check = Check(dset)
        res = Results()
        rng = random.Random(args.seed)
        t_all = time.perf_counter()
        with running(all_sides):
            print("cold rounds (first response, pixel series) ...", file=sys.stderr, flush=True)
            cold_rounds(all_sides, n, args.repeats, check, res, rng)
            print("single reads ...", file=sys.stderr, flush=True)
            single_reads(all_sides, n, repeats, check, res, rng)
            if not args.no_load:
                for side in all_sides[::-1]:
                    print(f"load test: {side.name} ...", file=sys.stderr, flush=True)
                    res.load[side.name] = load_test(
                        side, n, args.clients, args.load_seconds, args.load_requests, args.seed
                    )
    rows = summary(res)
    print_tables(rows, res.load)
    load1 = os.getloadavg()[0]
    print(f"\n{time.perf_counter() - t_all:.0f} s in all; load {load0:.1f} -> {load1:.1f}")
    out = args.json or workdir / "results.json"
    doc = {
        "file": {"name": nxs.name, "bytes": nxs.stat().st_size, "frames": n},
        "versions": versions,
        "cpus": os.cpu_count(),
        "load": [load0, load1],
        "repeats": args.repeats,
        "rows": rows,
        "samples": res.samples,
        "load_test": res.load,
    }
    out.write_text(json.dumps(doc, indent=2))
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
