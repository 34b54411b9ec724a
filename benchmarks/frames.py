"""Frame-series ingest rate (frames/s): hyperslab ``refs`` and ``ingest`` of a directory
of detector frames, against tifffile's own fsspec references (TIFF) and a fabio/tifffile
+ h5py "stack into NeXus" script (CBF and TIFF), in the same run.

    .venv/bin/python benchmarks/frames.py [--frames 2000] [--shape 195x487] [--repeats 3]
                                          [--only cbf|tiff|tiff-none] [--json OUT]

Three series of the same Pilatus-like frames (``hyperslab.samples.write_frame_series``:
int32 photon counts, Poisson background and Bragg spots, about 45% zeros, dead pixels
at 0 and a module-gap row at -1, a Pilatus mini-header per frame), written once into
``bench-data/frames/<frames>-<h>x<w>/`` (git-ignored) and reused:

* ``cbf``: CBF, byte-offset compression (``pilatus_cbf/``);
* ``tiff``: TIFF, deflate (``pilatus_tiff/``);
* ``tiff-none``: TIFF, uncompressed (``pilatus_tiff_none/``).

Contenders, each a fresh process timed from spawn to exit (``timing.wait_timed``: wall,
CPU and peak RSS of that child alone) on page-cached files (every file is read once,
untimed, before the first run); each also reports its own time after its imports
("work"):

* ``hyperslab refs DIR -o MAP.json``: one reference map of the series (every file's
  header parsed; frames of another shape, dtype or encoding are an error);
* ``hyperslab ingest DIR --repo R``: the same, plus the sha256 of every file, the CRC-32C
  of every chunk and one commit into a new local repository;
* tifffile's references (TIFF only), as its docs give them:
  ``TiffSequence(files).aszarr().write_fsspec(MAP.json, url)``. Only the first file is
  opened: every file becomes one chunk decoded whole by tifffile's numcodecs codec, and
  the other files' shapes, dtypes and headers are assumed, not read;
* the stacking script a beamline runs: read every frame (fabio for CBF, tifffile for
  TIFF) and write it into ``/entry/data/data`` of a NeXus file (NXentry/NXdata),
  uncompressed, one frame per chunk, frame by frame. Its output is deleted after
  each run (untimed); the OS writes it back to disk in its own time.

Each contender's output is checked once (untimed): the shape, and five frames (first,
middle, last and two drawn at random) equal fabio's / tifffile's reading of the
source files, read back through hyperslab's ``open_array`` (ingest), plain zarr over
fsspec's reference filesystem (both maps) and h5py (the stack). Sides rotate which
runs first; medians of ``--repeats``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from timing import wait_timed  # noqa: E402

DATA = HERE.parent / "bench-data" / "frames"

#: series name → (folder written by write_frame_series, reader of the stacking script)
SERIES = {
    "cbf": ("pilatus_cbf", "fabio"),
    "tiff": ("pilatus_tiff", "tifffile"),
    "tiff-none": ("pilatus_tiff_none", "tifffile"),
}
LABELS = {"cbf": "CBF byte-offset", "tiff": "TIFF deflate", "tiff-none": "TIFF uncompressed"}

# Every child imports what it needs first, then times its own work ("work").
HYPERSLAB = r"""
import json, sys, time
from hyperslab.cli.main import main
import hyperslab.convert.ingest, hyperslab.convert.frames, hyperslab.convert.tiff  # noqa
import pyarrow.parquet  # noqa  (ingest's checksums and catalog objects; loaded lazily)
t0 = time.perf_counter()
try:
    main(sys.argv[1:])
except SystemExit as exc:
    if exc.code:
        raise
print(json.dumps({"work": time.perf_counter() - t0}))
"""

TIFFFILE_REFS = r"""
import json, sys, time
from pathlib import Path
import tifffile
t0 = time.perf_counter()
src, out = Path(sys.argv[1]), sys.argv[2]
files = sorted(str(p) for p in src.iterdir())
with tifffile.TiffSequence(files) as seq, seq.aszarr() as store:
    store.write_fsspec(out, url=src.resolve().as_uri())
print(json.dumps({"work": time.perf_counter() - t0}))
"""

STACK = r"""
import json, sys, time
from pathlib import Path
import h5py
reader, src, out = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
if reader == "fabio":
    import fabio
    def read(path):
        return fabio.open(path).data
else:
    import tifffile
    read = tifffile.imread
t0 = time.perf_counter()
files = sorted(str(p) for p in src.iterdir())
first = read(files[0])
with h5py.File(out, "w") as f:
    entry = f.create_group("entry")
    entry.attrs.update({"NX_class": "NXentry", "default": "data"})
    data = entry.create_group("data")
    data.attrs.update({"NX_class": "NXdata", "signal": "data"})
    stack = data.create_dataset(
        "data", shape=(len(files), *first.shape), dtype=first.dtype, chunks=(1, *first.shape)
    )
    stack[0] = first
    for i, path in enumerate(files[1:], 1):
        stack[i] = read(path)
print(json.dumps({"work": time.perf_counter() - t0}))
"""


WRITE = r"""
import sys
from pathlib import Path
from hyperslab.samples import write_frame_series
root, frames, h, w = Path(sys.argv[1]), *map(int, sys.argv[2:5])
write_frame_series(root, frames=frames, shape=(h, w), tiff_compression=("zlib", None))
"""


def write_series(frames: int, shape: tuple[int, int]) -> Path:
    """The three series, written once (a ``complete`` marker says they are whole)."""
    root = DATA / f"{frames}-{shape[0]}x{shape[1]}"
    if (root / "complete").exists():
        return root
    print(f"writing {frames} frames of {shape[0]}x{shape[1]} as CBF and TIFF (once) ...")
    t0 = time.perf_counter()
    shutil.rmtree(root, ignore_errors=True)
    subprocess.run(
        [sys.executable, "-c", WRITE, str(root), str(frames), *map(str, shape)], check=True
    )
    (root / "complete").write_text("written by benchmarks/frames.py\n")
    print(f"  {time.perf_counter() - t0:.0f} s", flush=True)
    return root


def warm(directory: Path) -> int:
    """Read every file once so that every contender finds them in the page cache."""
    total = 0
    for p in directory.iterdir():
        total += len(p.read_bytes())
    return total


def run_child(cmd: list[str], timeout: float = 1800) -> dict[str, float]:
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wall, rc, cpu, rss = wait_timed(proc, t0, timeout, 0.005)
    out = proc.stdout.read() if proc.stdout else ""
    err = proc.stderr.read() if proc.stderr else ""
    if rc != 0:
        raise SystemExit(f"failed ({rc}): {' '.join(cmd)}\n{out[-2000:]}\n{err[-2000:]}")
    work = json.loads(out.strip().splitlines()[-1])["work"]
    return {"wall": wall, "cpu": cpu, "rss": rss, "work": work}


# ----------------------------------------------------------------------- contenders


def sides(series: str, src: Path, work: Path) -> dict[str, Callable[[], dict[str, float]]]:
    py = sys.executable
    out: dict[str, Callable[[], dict[str, float]]] = {}

    def refs() -> dict[str, float]:
        target = work / "hyperslab.json"
        target.unlink(missing_ok=True)
        return run_child([py, "-c", HYPERSLAB, "refs", str(src), "-o", str(target), "-q"])

    def ingest() -> dict[str, float]:
        repo = work / "repo"
        shutil.rmtree(repo, ignore_errors=True)
        hs = str(Path(py).parent / "hyperslab")
        subprocess.run([hs, "init", str(repo)], check=True, capture_output=True)
        cmd = ["ingest", str(src), "--repo", str(repo), "--name", "frames", "-q"]
        return run_child([py, "-c", HYPERSLAB, *cmd])

    def tifffile_refs() -> dict[str, float]:
        target = work / "tifffile.json"
        target.unlink(missing_ok=True)
        return run_child([py, "-c", TIFFFILE_REFS, str(src), str(target)])

    def stack() -> dict[str, float]:
        target = work / "stack.nxs"
        target.unlink(missing_ok=True)
        res = run_child([py, "-c", STACK, SERIES[series][1], str(src), str(target)])
        return res

    out["hyperslab refs"] = refs
    out["hyperslab ingest"] = ingest
    if series != "cbf":
        out["tifffile references"] = tifffile_refs
    out[f"stack script ({SERIES[series][1]} + h5py)"] = stack
    return out


# ---------------------------------------------------------------------- correctness


# The parent imports nothing beyond the standard library: a child's peak RSS
# (ru_maxrss) starts from its parent's at fork, so a parent holding fabio, zarr and
# hyperslab would show its own size for every contender. The checks run in a child.


def reference_frames(series: str, src: Path, picks: list[int]) -> dict[int, Any]:
    import numpy as np

    files = sorted(src.iterdir())
    if SERIES[series][1] == "fabio":
        import fabio

        return {i: np.asarray(fabio.open(str(files[i])).data) for i in picks}
    import tifffile

    return {i: tifffile.imread(files[i]) for i in picks}


def read_back(name: str, work: Path) -> Any:
    """The contender's output as something indexable by frame."""
    if name == "hyperslab ingest":
        from hyperslab.access.array import open_array

        return open_array(str(work / "repo"), "frames", "entry/data/data", cache=False)
    if name in ("hyperslab refs", "tifffile references"):
        import fsspec
        import zarr

        if name == "tifffile references":
            import tifffile.numcodecs

            tifffile.numcodecs.register_codec()
        target = work / ("hyperslab.json" if name == "hyperslab refs" else "tifffile.json")
        fs = fsspec.filesystem("reference", fo=str(target))
        root = zarr.open(fs.get_mapper(""), mode="r", zarr_format=2)
        return root["entry/data/data"] if name == "hyperslab refs" else root
    import h5py

    return h5py.File(work / "stack.nxs", "r")["entry/data/data"]


def check(name: str, series: str, src: Path, work: Path, shape: tuple[int, int, int]) -> None:
    """Shape and five frames (first, middle, last, two at random) equal the sources'."""
    import numpy as np

    frames = shape[0]
    rng = np.random.default_rng(7)
    picks = sorted({0, frames // 2, frames - 1, *rng.integers(0, frames, 2).tolist()})
    expect = reference_frames(series, src, picks)
    arr = read_back(name, work)
    if tuple(arr.shape) != shape:
        raise SystemExit(f"{name}: shape {tuple(arr.shape)}, expected {shape}")
    for i, frame in expect.items():
        got = np.asarray(arr[i])
        if got.dtype != frame.dtype or not np.array_equal(got, frame):
            raise SystemExit(f"{name}: frame {i} differs from the source file's")
    if hasattr(arr, "file"):
        arr.file.close()


def check_in_child(name: str, series: str, src: Path, work: Path, shape: tuple[int, ...]) -> None:
    cmd = [sys.executable, __file__, "--check", json.dumps([name, series, str(src), str(work)])]
    res = subprocess.run([*cmd, "--shape", "x".join(map(str, shape))], check=False)
    if res.returncode != 0:
        raise SystemExit(f"{name} on {series}: its output is wrong (see above)")


# ------------------------------------------------------------------------ measuring


def measure(
    series: str, root: Path, frames: int, shape: tuple[int, int], repeats: int
) -> dict[str, list[dict[str, float]]]:
    src = root / SERIES[series][0]
    work = DATA / "work" / series
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    nbytes = warm(src)
    contenders = sides(series, src, work)
    order = list(contenders)
    runs: dict[str, list[dict[str, float]]] = {k: [] for k in order}
    print(f"\n{LABELS[series]}: {frames} files, {nbytes / 1e6:.0f} MB", flush=True)
    for r in range(repeats):
        rotated = order[r % len(order) :] + order[: r % len(order)]
        for k in rotated:
            runs[k].append(contenders[k]())
            if r == 0:
                check_in_child(k, series, src, work, (frames, *shape))
            print(f"  round {r + 1}: {k}: {runs[k][-1]['wall']:.2f} s", flush=True)
    shutil.rmtree(work, ignore_errors=True)
    return runs


def medians(runs: list[dict[str, float]]) -> dict[str, float]:
    return {k: statistics.median(r[k] for r in runs) for k in runs[0]}


def report(all_runs: dict[str, dict[str, list[dict[str, float]]]], frames: int) -> list[str]:
    lines = [
        "| series | contender | wall s | frames/s | work s | frames/s (work) | CPU s | peak RSS MB |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    ratios = [
        "",
        "Ratios (their time / hyperslab's; above 1 hyperslab is faster): wall of the process,",
        "work (after imports) and CPU of the process:",
        "",
        "| series | against | ingest: wall | work | CPU | refs: wall | work | CPU |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    aims = []
    for series, runs in all_runs.items():
        med = {k: medians(v) for k, v in runs.items()}
        for k, m in med.items():
            lines.append(
                f"| {LABELS[series]} | {k} | {m['wall']:.2f} | {frames / m['wall']:,.0f} "
                f"| {m['work']:.2f} | {frames / m['work']:,.0f} | {m['cpu']:.2f} | {m['rss']:.0f} |"
            )
        for against in med:
            if against.startswith("hyperslab"):
                continue
            t = med[against]
            cells = [
                f"{t[key] / med[f'hyperslab {side}'][key]:.2f}x"
                for side in ("ingest", "refs")
                for key in ("wall", "work", "cpu")
            ]
            ratios.append(f"| {LABELS[series]} | {against} | {' | '.join(cells)} |")
            if against.startswith("stack script"):
                best = t["work"] / med["hyperslab ingest"]["work"]
                aims.append(
                    f"{LABELS[series]}: ingest in place is {best:.2f}x the stacking script "
                    f"on work ({'meets' if best >= 5 else 'misses'} the 5x aim)"
                )
    return [*lines, *ratios, "", *aims]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--frames", type=int, default=2000)
    ap.add_argument("--shape", default="195x487", help="frame height x width (Pilatus 100K)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--only", choices=sorted(SERIES), action="append")
    ap.add_argument("--json", type=Path, help="also write every run here")
    ap.add_argument("--check", help=argparse.SUPPRESS)  # the checking child
    args = ap.parse_args(argv)
    dims = [int(v) for v in args.shape.lower().split("x")]
    if args.check:
        name, series, src, work = json.loads(args.check)
        check(name, series, Path(src), Path(work), (dims[0], dims[1], dims[2]))
        return 0
    h, w = dims
    os.environ.setdefault("HYPERSLAB_ACCESS_STATS", "0")
    root = write_series(args.frames, (h, w))
    all_runs = {
        s: measure(s, root, args.frames, (h, w), args.repeats) for s in (args.only or SERIES)
    }
    print(
        f"\n{args.frames} frames of {h}x{w} int32, medians of {args.repeats}, "
        f"{os.cpu_count()} CPU(s), Python {platform.python_version()}; every output checked"
    )
    print("\n".join(report(all_runs, args.frames)))
    if args.json:
        args.json.write_text(json.dumps(all_runs, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
