"""Ingest throughput: hyperslab serial vs ``--dask local:1`` vs ``local:2``, against
kerchunk's documented dask recipe, in the same run.

    .venv/bin/python benchmarks/ingest.py [--small 1000] [--large 4] [--large-frames 800]
                                          [--repeats 3] [--only small|large] [--hashes]

Two file sets, written once into ``bench-data/ingest/`` (git-ignored):

* ``small``: N small NeXus files as a beamline writes them during a scan: an
  NXentry with ~15 metadata fields and attributes, an NXdata with a (10, 64, 64)
  uint16 gzip stack chunked per frame and its frame_number axis;
* ``large``: a few (F, 512, 512) uint32 gzip stacks (F frames, one chunk a frame).

Each run is a fresh process timed from spawn to exit (cluster start-up included,
as a user would see it), on the page-cached files:

* hyperslab ``ingest DIR --repo R`` into a new local repository (per file: chunk
  index, sha256 of the whole file, CRC-32C of every chunk, the map and entry record
  stored content-addressed; then one commit), serially and with ``--dask local:1``
  and ``--dask local:2`` (a LocalCluster of worker processes);
* kerchunk 0.2.10's recipe (its docs, "Using Dask"): ``dask.bag.from_sequence(files)
  .map(SingleHdf5ToZarr(...).translate)`` on a LocalCluster of 1 and 2 worker
  processes, each file's references written to a JSON file. It reads the chunk
  index only (no hashes, no checksums, no repository);
* with ``--hashes``, also that recipe taking what hyperslab records of each file (its
  sha256, read in 8 MiB blocks, and the CRC-32C of every referenced chunk, from a
  memory map) and writing them with the references: the same guarantees, like for like.

Sides alternate and rotate which runs first; medians of ``--repeats``. Prints
files/s and chunks/s and the ratios: hyperslab against kerchunk at the same worker
count, and each side's scaling from 1 to 2 workers.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np

HERE = Path(__file__).resolve().parent
DATA = HERE.parent / "bench-data" / "ingest"
BIN = Path(sys.executable).parent

KERCHUNK = r"""
import json, sys, time
from pathlib import Path
import dask.bag as db
from dask.distributed import Client, LocalCluster

def refs(path):
    import fsspec
    from kerchunk.hdf import SingleHdf5ToZarr
    with fsspec.open(path, "rb") as f:
        out = SingleHdf5ToZarr(f, path, inline_threshold=500).translate()
    if sys.argv[4] == "hashes":  # what hyperslab records too: the file's sha256, chunk CRCs
        import hashlib, mmap
        from google_crc32c import value
        h = hashlib.sha256()
        with open(path, "rb") as f:
            while block := f.read(8 << 20):
                h.update(block)
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
                out["crc32c"] = {
                    k: value(mm[v[1] : v[1] + v[2]])
                    for k, v in out["refs"].items()
                    if isinstance(v, list) and len(v) == 3
                }
        out["sha256"] = h.hexdigest()
    target = Path(sys.argv[2]) / (Path(path).stem + ".json")
    target.write_text(json.dumps(out))
    return len(out["refs"])

if __name__ == "__main__":
    files = sorted(str(p) for p in Path(sys.argv[1]).iterdir())
    workers = int(sys.argv[3])
    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                      host="127.0.0.1", dashboard_address="127.0.0.1:0") as cluster, \
            Client(cluster):
        bag = db.from_sequence(files, npartitions=min(len(files), 8 * workers))
        n = sum(bag.map(refs).compute())
    print(json.dumps({"refs": n}))
"""


def write_small(directory: Path, n: int) -> int:
    """N small NeXus scan files; returns the number of chunks they hold."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        path = directory / f"scan_{i:05d}.nxs"
        if path.exists():
            continue
        with h5py.File(path, "w") as f:
            entry = f.create_group("entry")
            entry.attrs.update({"NX_class": "NXentry", "default": "data"})
            entry["title"] = f"rotation scan {i}"
            entry["start_time"] = "2026-01-15T09:07:00+00:00"
            entry["end_time"] = "2026-01-15T09:07:02+00:00"
            sample = entry.create_group("sample")
            sample.attrs["NX_class"] = "NXsample"
            sample["name"] = f"crystal {i % 7}"
            sample["temperature"] = 100.0 + i % 5
            inst = entry.create_group("instrument")
            inst.attrs["NX_class"] = "NXinstrument"
            inst["name"] = "BL-1"
            mono = inst.create_group("monochromator")
            mono.attrs["NX_class"] = "NXmonochromator"
            mono["energy"] = 12.4 + (i % 10) / 10
            mono["wavelength"] = 12.398 / (12.4 + (i % 10) / 10)
            det = inst.create_group("detector")
            det.attrs["NX_class"] = "NXdetector"
            det["distance"] = 0.25
            det["x_pixel_size"] = 172e-6
            det["y_pixel_size"] = 172e-6
            det["count_time"] = 0.1
            data = entry.create_group("data")
            data.attrs.update(
                {"NX_class": "NXdata", "signal": "data", "axes": ["frame_number", ".", "."]}
            )
            frames = rng.poisson(3.0, size=(10, 64, 64)).astype("<u2")
            data.create_dataset("data", data=frames, chunks=(1, 64, 64), compression="gzip")
            data["frame_number"] = np.arange(1, 11, dtype="<i4")
            data.attrs["frame_number_indices"] = 0
    return n * 10


def write_large(directory: Path, n: int, frames: int) -> int:
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    for i in range(n):
        path = directory / f"stack_{i:02d}.nxs"
        if path.exists():
            with h5py.File(path) as f:
                if f["entry/data/data"].shape[0] == frames:
                    continue
        with h5py.File(path, "w") as f:
            entry = f.create_group("entry")
            entry.attrs.update({"NX_class": "NXentry", "default": "data"})
            entry["title"] = f"large stack {i}"
            data = entry.create_group("data")
            data.attrs.update({"NX_class": "NXdata", "signal": "data"})
            d = data.create_dataset(
                "data",
                shape=(frames, 512, 512),
                dtype="<u4",
                chunks=(1, 512, 512),
                compression="gzip",
                compression_opts=1,
            )
            for k in range(frames):
                d[k] = rng.poisson(2.0, size=(512, 512)).astype("<u4")
    return n * frames


def run(cmd: list[str], timeout: float = 1800) -> float:
    t0 = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    wall = time.perf_counter() - t0
    if res.returncode != 0:
        raise SystemExit(
            f"failed ({res.returncode}): {' '.join(cmd)}\n{res.stdout[-2000:]}\n{res.stderr[-2000:]}"
        )
    return wall


def hyperslab_side(files: Path, work: Path, dask: str | None) -> float:
    repo = work / "repo"
    shutil.rmtree(repo, ignore_errors=True)
    hs = str(BIN / "hyperslab")
    subprocess.run([hs, "init", str(repo)], check=True, capture_output=True)
    cmd = [hs, "ingest", str(files), "--repo", str(repo), "--name", "bench", "-q", "--json"]
    if dask:
        cmd += ["--dask", dask]
    return run(cmd)


def kerchunk_side(files: Path, work: Path, workers: int, hashes: bool = False) -> float:
    out = work / "kerchunk"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    what = "hashes" if hashes else "index"
    return run([sys.executable, "-c", KERCHUNK, str(files), str(out), str(workers), what])


def measure(
    name: str, files: Path, chunks: int, repeats: int, work: Path, hashes: bool = False
) -> dict[str, list[float]]:
    n_files = len(list(files.iterdir()))
    sides = {
        "hyperslab serial": lambda: hyperslab_side(files, work, None),
        "hyperslab --dask local:1": lambda: hyperslab_side(files, work, "local:1"),
        "hyperslab --dask local:2": lambda: hyperslab_side(files, work, "local:2"),
        "kerchunk recipe, 1 worker": lambda: kerchunk_side(files, work, 1),
        "kerchunk recipe, 2 workers": lambda: kerchunk_side(files, work, 2),
    }
    if hashes:
        sides["recipe + hashes, 1 worker"] = lambda: kerchunk_side(files, work, 1, True)
        sides["recipe + hashes, 2 workers"] = lambda: kerchunk_side(files, work, 2, True)
    times: dict[str, list[float]] = {k: [] for k in sides}
    order = list(sides)
    for r in range(repeats):
        rotated = order[r % len(order) :] + order[: r % len(order)]
        for k in rotated:
            times[k].append(sides[k]())
            print(f"  {name} round {r + 1}: {k}: {times[k][-1]:.2f} s", flush=True)
    print(f"\n{name}: {n_files} files, {chunks} chunks, medians of {repeats}")
    med = {k: statistics.median(v) for k, v in times.items()}
    for k, m in med.items():
        print(f"  {k:28s} {m:7.2f} s  {n_files / m:8.1f} files/s  {chunks / m:9.0f} chunks/s")
    for w in (1, 2):
        h = med[f"hyperslab --dask local:{w}"]
        kk = med[f"kerchunk recipe, {w} worker{'s' if w > 1 else ''}"]
        print(f"  {w} worker(s): hyperslab is {kk / h:.2f}x kerchunk's recipe (its time / ours)")
    print(
        f"  serial hyperslab is {med['kerchunk recipe, 1 worker'] / med['hyperslab serial']:.2f}x kerchunk's recipe on 1 worker"
    )
    print(
        f"  scaling 1 -> 2 workers: hyperslab {med['hyperslab --dask local:1'] / med['hyperslab --dask local:2']:.2f}x, "
        f"kerchunk {med['kerchunk recipe, 1 worker'] / med['kerchunk recipe, 2 workers']:.2f}x"
    )
    if hashes:
        for w in (1, 2):
            h = med[f"hyperslab --dask local:{w}"]
            kk = med[f"recipe + hashes, {w} worker{'s' if w > 1 else ''}"]
            print(
                f"  {w} worker(s): hyperslab is {kk / h:.2f}x the recipe that also takes the "
                "sha256 and chunk CRC-32Cs"
            )
    return times


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--small", type=int, default=1000)
    ap.add_argument("--large", type=int, default=4)
    ap.add_argument("--large-frames", type=int, default=800)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--only", choices=["small", "large"])
    ap.add_argument(
        "--hashes",
        action="store_true",
        help="also run the recipe taking what hyperslab records: each file's sha256 and "
        "every chunk's CRC-32C (like for like)",
    )
    args = ap.parse_args(argv)
    os.environ.setdefault("HYPERSLAB_ACCESS_STATS", "0")
    work = DATA / "work"
    results = {}
    if args.only in (None, "small"):
        print(f"writing {args.small} small files (once) ...", flush=True)
        chunks = write_small(DATA / f"small-{args.small}", args.small)
        results["small"] = measure(
            "small files", DATA / f"small-{args.small}", chunks, args.repeats, work, args.hashes
        )
    if args.only in (None, "large"):
        print(f"writing {args.large} large files (once) ...", flush=True)
        chunks = write_large(DATA / f"large-{args.large}", args.large, args.large_frames)
        results["large"] = measure(
            "large files", DATA / f"large-{args.large}", chunks, args.repeats, work, args.hashes
        )
    (DATA / "results.json").write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
