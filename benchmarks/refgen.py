"""Reference generation on an N-chunk HDF5 file: hyperslab vs kerchunk, whole process each.

Usage: python benchmarks/refgen.py [--chunks N] [--workdir DIR]

Each contender runs in a fresh subprocess; we report wall seconds and the child's
peak RSS, plus ratios kerchunk / hyperslab (> 1: hyperslab is faster / smaller).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

KERCHUNK = """
import json, sys
from kerchunk.hdf import SingleHdf5ToZarr
refs = SingleHdf5ToZarr(sys.argv[1], inline_threshold=500).translate()
with open(sys.argv[2], "w") as fh:
    json.dump(refs, fh)
"""

FLOOR = """
import sys, h5py
n = 0
def cb(info):
    global n
    n += 1
with h5py.File(sys.argv[1]) as f:
    f[sys.argv[2]].id.chunk_iter(cb)
print(n)
"""


def measure(cmd: list[str]) -> tuple[float, float]:
    """Wall seconds and peak RSS (MB) of one child process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    # ru_maxrss of children is the max over all children so far: run the biggest last or
    # read it per child; a fresh interpreter per contender keeps this honest enough
    return wall, max(after, before) / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--chunks", type=int, default=1_000_000)
    ap.add_argument("--workdir", type=Path, default=Path("bench-data"))
    args = ap.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    src = args.workdir / f"chunks_{args.chunks}.h5"
    if not src.exists():
        from hyperslab.samples import write_many_chunks_file

        t0 = time.perf_counter()
        write_many_chunks_file(src, n_chunks=args.chunks)
        print(f"wrote {src} in {time.perf_counter() - t0:.1f} s")
    import h5py

    with h5py.File(src) as f:
        name = next(k for k in f if isinstance(f[k], h5py.Dataset))
    py = sys.executable
    hs = str(Path(py).parent / "hyperslab")
    rows = []
    # the order matters for ru_maxrss (a running maximum): smallest expected first
    for label, cmd, out in [
        ("chunk_iter walk (floor)", [py, "-c", FLOOR, str(src), name], None),
        (
            "hyperslab refs → parquet",
            [hs, "refs", str(src), "-o", str(args.workdir / "hs.parquet"), "-q"],
            args.workdir / "hs.parquet",
        ),
        (
            "hyperslab refs → json",
            [hs, "refs", str(src), "-o", str(args.workdir / "hs.json"), "-q"],
            args.workdir / "hs.json",
        ),
        (
            "kerchunk SingleHdf5ToZarr → json",
            [py, "-c", KERCHUNK, str(src), str(args.workdir / "kc.json")],
            args.workdir / "kc.json",
        ),
    ]:
        wall, rss = measure(cmd)
        size = 0
        if out is not None and out.exists():
            size = (
                sum(p.stat().st_size for p in out.rglob("*"))
                if out.is_dir()
                else out.stat().st_size
            )
        rows.append(
            {
                "contender": label,
                "seconds": round(wall, 2),
                "peak_rss_mb": round(rss),
                "output_mb": round(size / 1e6, 1),
            }
        )
    kc = rows[-1]
    print(
        f"\nreference generation, {args.chunks:,} chunks ({src.stat().st_size / 1e6:.0f} MB file)"
    )
    print(
        f"{'contender':36s} {'seconds':>8s} {'peak RSS MB':>12s} {'output MB':>10s} {'speed-up vs kerchunk':>21s}"
    )
    for r in rows:
        ratio = kc["seconds"] / r["seconds"] if r["seconds"] else float("inf")
        print(
            f"{r['contender']:36s} {r['seconds']:8.2f} {r['peak_rss_mb']:12d} {r['output_mb']:10.1f} {ratio:20.1f}x"
        )
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
