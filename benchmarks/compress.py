"""``hyperslab compress`` against h5py writing the same codec, and reads before/after.

Run with ``make bench-compress`` (``ARGS="--frames 40 --repeats 3"``). One run:

1. **Data** (written once into ``bench-data/compress/``): ``--frames`` photon-counting
   frames of a Pilatus 2M (1679 x 1475, int32) as uncompressed TIFF files, the way
   a detector writes them: Poisson background of ``--background`` counts a pixel
   (mostly zeros), Bragg spots, module gaps masked with -1 and a few dead pixels -2.
2. **Compression** for each codec (bitshuffle-LZ4, zstd 3, Blosc2 LZ4+bitshuffle 5),
   ``--repeats`` times, rotating which side runs first:

   * ``hyperslab``: :func:`hyperslab.convert.compress.compress` of the ingested series
     on a fresh branch of a local repository, with 1 and with 2 encoding threads. It
     reads each frame through the reading core, encodes it, decodes it again and
     compares with the values read (the check every compress makes), and stores the
     packs (written and read back for their sha256).
   * ``h5py``: what a stacking script does: tifffile reads each frame, h5py writes
     one ``(frames, y, x)`` dataset chunked a frame a chunk, with hdf5plugin's filter
     of the same codec (single-threaded, as HDF5's filter pipeline is), unverified.

   Reported: the medians of wall time, MB/s of raw values (per core for one thread),
   stored size as a share of the raw values, and hyperslab's speed over h5py's.
3. **Reads before and after** on loopback S3 (s3rver, ``--skip-s3`` to leave out): a
   repository on S3 holding the TIFF series (``--upload-sources``), compressed with
   bitshuffle-LZ4; one frame and a pixel series over every frame, read cold (no
   cache) from the snapshot before and the one after, ``--repeats`` x 3 times
   rotating, medians, after/before.

The machine is shared and noisy (2 cores): compare the ratios, not the seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from loopback_s3 import S3rver, use_loopback_credentials  # noqa: E402

ROOT = HERE.parent
SHAPE = (1679, 1475)  # Pilatus 2M: 3 x 8 modules of 487 x 195, gaps of 7 and 17
MODULE, GAP = (195, 487), (17, 7)
CODECS = ["bitshuffle-lz4", "zstd", "blosc2"]


# ---------------------------------------------------------------------- data


def photon_counting_frames(n: int, background: float, seed: int = 7) -> np.ndarray:
    """``(n, 1679, 1475)`` int32 frames: Poisson counts, spots, gaps -1, dead pixels -2."""
    rng = np.random.default_rng(seed)
    mask = np.ones(SHAPE, bool)
    for r in range(0, SHAPE[0], MODULE[0] + GAP[0]):
        mask[r + MODULE[0] : r + MODULE[0] + GAP[0]] = False
    for c in range(0, SHAPE[1], MODULE[1] + GAP[1]):
        mask[:, c + MODULE[1] : c + MODULE[1] + GAP[1]] = False
    dead = rng.integers(0, SHAPE[0], 40), rng.integers(0, SHAPE[1], 40)
    yy, xx = np.mgrid[-3:4, -3:4]
    spot = np.exp(-(yy**2 + xx**2) / 2.0)
    out = np.empty((n, *SHAPE), np.int32)
    for i in range(n):
        lam = np.full(SHAPE, background)
        for y, x, peak in zip(
            rng.integers(4, SHAPE[0] - 4, 300),
            rng.integers(4, SHAPE[1] - 4, 300),
            rng.exponential(200, 300),
            strict=True,
        ):
            lam[y - 3 : y + 4, x - 3 : x + 4] += peak * spot
        frame = rng.poisson(lam).astype(np.int32)
        frame[~mask] = -1
        frame[dead] = -2
        out[i] = frame
    return out


def tiff_series(directory: Path, n: int, background: float) -> Path:
    """The frames as uncompressed TIFF files (once; reused when all are there)."""
    import tifffile

    folder = directory / f"tiff_{n}_{background:g}"
    if len(list(folder.glob("*.tif"))) == n:
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for i, frame in enumerate(photon_counting_frames(n, background)):
        tifffile.imwrite(folder / f"frame_{i:05d}.tif", frame)
    return folder


# ---------------------------------------------------------------------- sides


def hdf5plugin_filter(codec: str) -> Any:
    import hdf5plugin

    if codec == "bitshuffle-lz4":
        return hdf5plugin.Bitshuffle(cname="lz4")
    if codec == "zstd":
        return hdf5plugin.Zstd(clevel=3)
    return hdf5plugin.Blosc2(cname="lz4", clevel=5, filters=hdf5plugin.Blosc2.BITSHUFFLE)


def h5py_stack(folder: Path, codec: str, out: Path) -> int:
    """A stacking script: every TIFF read with tifffile into one compressed HDF5 file."""
    import h5py
    import tifffile

    files = sorted(folder.glob("*.tif"))
    first = tifffile.imread(files[0])
    with h5py.File(out, "w") as f:
        d = f.create_dataset(
            "entry/data/data",
            shape=(len(files), *first.shape),
            dtype=first.dtype,
            chunks=(1, *first.shape),
            **hdf5plugin_filter(codec),
        )
        for i, p in enumerate(files):
            d[i] = tifffile.imread(p)
    return out.stat().st_size


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.perf_counter()
    got = fn()
    return time.perf_counter() - t0, got


def compression(folder: Path, work: Path, repeats: int, log: Callable[[str], None]) -> list[dict]:
    from hyperslab.convert.compress import CompressOptions, compress
    from hyperslab.convert.ingest import ingest
    from hyperslab.references.repository import Repository

    raw = sum(p.stat().st_size for p in folder.glob("*.tif"))
    repo_dir = work / "repo"
    shutil.rmtree(repo_dir, ignore_errors=True)
    repo = Repository.init(str(repo_dir))
    ingest(repo, [str(folder)], name="frames", message="bench")
    rows = []
    for codec in CODECS:
        times: dict[str, list[float]] = {"hyperslab x1": [], "hyperslab x2": [], "h5py": []}
        sizes: dict[str, int] = {}
        for rep in range(repeats):
            order = list(times)
            order = order[rep % 3 :] + order[: rep % 3]
            for side in order:
                if side == "h5py":
                    h5 = work / "stack.h5"
                    dt, size = timed(partial(h5py_stack, folder, codec, h5))
                    h5.unlink()
                else:
                    threads = int(side[-1])
                    branch = f"{codec}-{threads}-{rep}"
                    repo.create_branch(branch, "main")
                    opts = CompressOptions(codec).checked()
                    run = partial(
                        compress, repo, ["frames"], options=opts, branch=branch, threads=threads
                    )
                    dt, res = timed(run)
                    size = res.entries[0]["stored_bytes"]
                times[side].append(dt)
                sizes[side] = size
                log(f"  {codec:15s} {side:13s} {dt:6.2f} s  {raw / dt / 1e6:7.0f} MB/s")
        med = {k: statistics.median(v) for k, v in times.items()}
        rows.append(
            {
                "codec": codec,
                "raw_mb": raw / 1e6,
                "seconds": med,
                "mb_s": {k: raw / v / 1e6 for k, v in med.items()},
                "stored_share": {k: sizes[k] / raw for k in ("hyperslab x1", "h5py")},
                "speedup_x1": med["h5py"] / med["hyperslab x1"],
                "speedup_x2": med["h5py"] / med["hyperslab x2"],
            }
        )
    repo.close()
    return rows


def reads(folder: Path, repeats: int, log: Callable[[str], None]) -> dict[str, Any]:
    """Cold reads from loopback S3 of the snapshot before and after compress."""
    from hyperslab.access.array import open_array
    from hyperslab.convert.compress import CompressOptions, compress
    from hyperslab.convert.ingest import ingest
    from hyperslab.references.repository import Repository
    from hyperslab.storage import S3Site

    use_loopback_credentials()
    out: dict[str, Any] = {}
    with S3rver("bench") as server:
        site = S3Site("bench", "repo", endpoint_url=server.url, cas=False)
        repo = Repository.init(site, single_writer=True)
        staged = Path(tempfile.mkdtemp(prefix="frames-")) / "frames"
        shutil.copytree(folder, staged)  # removed below: every byte must come from S3
        before = ingest(repo, [str(staged)], name="frames", upload_sources=True)
        after = compress(repo, ["frames"], options=CompressOptions("bitshuffle-lz4"))
        shutil.rmtree(staged.parent)
        snaps = {
            "before": before.commit.snapshot.id,  # type: ignore[union-attr]
            "after": after.commit.snapshot.id,  # type: ignore[union-attr]
        }
        n = len(list(folder.glob("*.tif")))
        rng = np.random.default_rng(1)
        cases = {
            "one frame": lambda a, i: a[i],
            f"pixel series ({n} frames)": lambda a, i: a[:, 800 + i % 50, 700],
        }
        samples: dict[tuple[str, str], list[float]] = {}
        for rep in range(repeats * 3):
            i = int(rng.integers(0, n))
            sides = ["before", "after"] if rep % 2 == 0 else ["after", "before"]
            for what, fn in cases.items():
                for side in sides:
                    arr = open_array(
                        repo,
                        "frames",
                        "entry/data/data",
                        snapshot=snaps[side],
                        cache=False,
                        memory_cache=False,
                        stats=False,
                    )
                    dt, _ = timed(lambda a=arr, i=i, fn=fn: fn(a, i))
                    samples.setdefault((what, side), []).append(dt)
        for what in cases:
            b = statistics.median(samples[(what, "before")])
            a = statistics.median(samples[(what, "after")])
            out[what] = {"before_ms": b * 1e3, "after_ms": a * 1e3, "after_over_before": a / b}
            log(f"  {what:24s} before {b * 1e3:8.1f} ms  after {a * 1e3:8.1f} ms")
        repo.close()
    return out


# ---------------------------------------------------------------------- report


def report(rows: list[dict], read: dict[str, Any] | None, frames: int, bg: float) -> str:
    lines = [
        f"compress: {frames} Pilatus 2M photon-counting frames (int32, background {bg:g} "
        f"counts/pixel), {rows[0]['raw_mb']:.0f} MB raw, medians",
        "",
        "| codec | hyperslab 1 thread | hyperslab 2 threads | h5py + hdf5plugin | "
        "stored/raw hyperslab | stored/raw h5py | hyperslab/h5py speed (1 thr, 2 thr) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        m, s = r["mb_s"], r["stored_share"]
        lines.append(
            f"| {r['codec']} | {m['hyperslab x1']:.0f} MB/s | {m['hyperslab x2']:.0f} MB/s | "
            f"{m['h5py']:.0f} MB/s | {s['hyperslab x1']:.1%} | {s['h5py']:.1%} | "
            f"{r['speedup_x1']:.2f}x, {r['speedup_x2']:.2f}x |"
        )
    need = 100 * SHAPE[0] * SHAPE[1] * 4 * 3 / 1e6  # a 6M is 3x a 2M
    lines.append("")
    lines.append(
        f"a 100 Hz Pilatus 6M writes {need:.0f} MB/s of int32 values: bitshuffle-LZ4 at "
        f"{rows[0]['mb_s']['hyperslab x1']:.0f} MB/s a core keeps up on "
        f"{need / rows[0]['mb_s']['hyperslab x1']:.1f} cores"
    )
    if read:
        lines += ["", "reads from loopback S3 (s3rver), cold, medians:", ""]
        lines += ["| read | before (raw TIFF) | after (bitshuffle-LZ4) | after/before |"]
        lines += ["|---|---|---|---|"]
        for what, v in read.items():
            lines.append(
                f"| {what} | {v['before_ms']:.1f} ms | {v['after_ms']:.1f} ms | "
                f"{v['after_over_before']:.2f} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--frames", type=int, default=40, help="frames in the series")
    ap.add_argument("--background", type=float, default=0.05, help="mean counts a pixel")
    ap.add_argument("--repeats", type=int, default=3, help="runs of each side")
    ap.add_argument("--skip-s3", action="store_true", help="leave out the S3 reads")
    ap.add_argument("--dir", type=Path, default=ROOT / "bench-data", help="work directory")
    ap.add_argument("--json", type=Path, help="also write the numbers here")
    args = ap.parse_args(argv)
    work = args.dir / "compress"
    work.mkdir(parents=True, exist_ok=True)

    def log(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    log(f"data: {args.frames} frames into {work}")
    folder = tiff_series(work, args.frames, args.background)
    log("compression (each codec, each side, rotating):")
    rows = compression(folder, work, args.repeats, log)
    read = None
    if not args.skip_s3:
        log("reads before and after, loopback S3:")
        read = reads(folder, args.repeats, log)
    text = report(rows, read, args.frames, args.background)
    print(text)
    if args.json:
        args.json.write_text(json.dumps({"compress": rows, "reads": read}, indent=1))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("HYPERSLAB_STATS", "off")
    raise SystemExit(main())
