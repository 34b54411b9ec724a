"""The single cold chunk every loader step rests on: one frame, array already open.

    make bench-chunk                      # or:
    .venv/bin/python benchmarks/chunk.py [--frames 100] [--repeats 30]

What runs (issue 16, item 5):

1. **Data** (cached in ``bench-data/chunk/``): ``--frames`` frames of 1024 x 1024
   ``uint16`` (Poisson counts), one frame per chunk, gzip, about 0.8 MB a chunk.
2. **Server.** s3rver (npm) on 127.0.0.1, no proxy (nothing between client and
   server but loopback). The file is uploaded for kerchunk and ingested into a
   repository on the same server with ``upload_sources`` (hyperslab reads only S3).
3. **Reads.** Every reader opens its array once (untimed), then reads frames it has
   never read, whole and as a 64 x 64 ROI (the whole chunk is needed either way): each
   read takes the next unread frame, readers take turns (the order rotates each
   repeat), so every read is *cold* (no cache holds that chunk) over warm connections.
   The values are checked against h5py after the timed read (HDF5 shares one chunk
   cache between handles of a file in a process: reading the truth first would warm
   the local reader). Timed per read, medians reported:

   * ``floor: GET``: the chunk's byte range fetched with hyperslab's S3 client, and
     ``floor: decode``: those bytes inflated (libdeflate); ``floor`` is their sum, the
     least any remote reader can do in one thread;
   * ``hyperslab open_array``: ``open_array(...)[i]``, no disk or memory cache;
   * ``hyperslab.ml read_unit``: the unit reader ``ArrayDataset`` workers use (frames
     only);
   * ``kerchunk + zarr``: ``zarr.open_array`` over kerchunk references on the same
     server (fsspec ``reference://`` + s3fs);
   * ``h5py, local file``: ``dset[i]`` on the local file (its pages cached).

Each read is checked against h5py. Ratios: each reader over the floor and kerchunk's
time over each reader's. Aim: hyperslab within 1.3x the floor, ahead of kerchunk.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from loopback_s3 import (
    BenchSetupError,
    S3rver,
    close_reference_store,
    ensure_s3rver,
    reference_store,
    use_loopback_credentials,
)

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
BUCKET = "bench"
ARRAY = "entry/data/data"
FRAME = (1024, 1024)


def data_file(directory: Path, frames: int) -> Path:
    """The cached stack, written if missing (under a temporary name, moved in whole)."""
    import h5py

    path = directory / f"frames_{frames}x{FRAME[0]}x{FRAME[1]}_u16_gzip.nxs"
    if path.exists():
        return path
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    tmp = path.with_suffix(".part")
    with h5py.File(tmp, "w") as f:
        f.attrs["NX_class"] = "NXroot"
        entry = f.create_group("entry")
        entry.attrs["NX_class"] = "NXentry"
        data = entry.create_group("data")
        data.attrs["NX_class"] = "NXdata"
        data.attrs["signal"] = "data"
        d = data.create_dataset(
            "data",
            shape=(frames, *FRAME),
            dtype="uint16",
            chunks=(1, *FRAME),
            compression="gzip",
            compression_opts=4,
        )
        for i in range(frames):
            d[i] = rng.poisson(40 + i % 7, FRAME).astype(np.uint16)
    os.replace(tmp, path)
    return path


Index = tuple[Any, ...]
#: what is read of frame i
SELECTIONS: dict[str, Callable[[int], Index]] = {
    "frame": lambda i: (i,),
    "64x64 ROI": lambda i: (i, slice(0, 64), slice(0, 64)),
}


#: frames one repeat reads: the floor's, and each reader's per selection
READS_PER_REPEAT = 1 + 2 + 2 + 1 + 2 + 2


class Reader:
    """One contender: ``read(index)`` returns ``array[index]`` (the array opened
    beforehand); ``frames_only``: it reads whole frames only."""

    def __init__(
        self,
        name: str,
        read: Callable[[Index], Any],
        close: Callable[[], None],
        frames_only: bool = False,
    ) -> None:
        self.name, self.read, self.close, self.frames_only = name, read, close, frames_only


def readers(server_url: str, local: Path, refs: dict[str, Any]) -> list[Reader]:
    import h5py
    import zarr

    import hyperslab
    from hyperslab.ml.units import UnitReader

    out = []
    h = h5py.File(local, "r")
    dset = h[ARRAY]
    out.append(Reader("h5py, local file", lambda ix: dset[ix], h.close))

    arr = hyperslab.open_array(
        "bench:repo", "frames", ARRAY, cache=False, memory_cache=False, stats=False
    )
    out.append(Reader("hyperslab open_array", lambda ix: arr[ix], arr.store.close))
    from hyperslab.reading.chunk_cache import ChunkCache

    disk = ChunkCache(Path(tempfile.mkdtemp(prefix="hs-chunk-cache-")), max_bytes=1 << 30)
    cached = hyperslab.open_array(
        "bench:repo", "frames", ARRAY, cache=disk, memory_cache=False, stats=False
    )
    out.append(
        Reader("hyperslab open_array, disk cache", lambda ix: cached[ix], cached.store.close)
    )

    from hyperslab.ml import ArrayDataset

    ds = ArrayDataset("bench:repo", ARRAY, cache=False, coordinates=False, as_tensors=False)
    units = UnitReader(ds.spec)
    units.read_unit(0, 0)  # opened (its frame is read again by nobody)
    out.append(
        Reader(
            "hyperslab.ml read_unit",
            lambda ix: units.read_unit(0, ix[0])[0],
            units.close,
            frames_only=True,
        )
    )

    store = reference_store(refs, server_url)
    z = zarr.open_array(store, path=ARRAY, mode="r", zarr_format=2)
    out.append(Reader("kerchunk + zarr", lambda ix: z[ix], lambda: close_reference_store(store)))
    return out


def floor_parts(site: Any, key: str, offsets: dict[int, tuple[int, int]]) -> Any:
    """(GET seconds, decode seconds, frame) of one chunk fetched and inflated raw."""
    import imagecodecs

    def read(i: int) -> tuple[float, float, np.ndarray]:  # the whole frame
        off, size = offsets[i]
        t0 = time.perf_counter()
        (blob,) = site.get_ranges([(key, off, size)])
        t1 = time.perf_counter()
        raw = imagecodecs.deflate_decode(blob, out=FRAME[0] * FRAME[1] * 2)
        t2 = time.perf_counter()
        return t1 - t0, t2 - t1, np.frombuffer(raw, dtype=np.uint16).reshape(FRAME)

    return read


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--frames", type=int, default=100, help="frames in the stack")
    ap.add_argument("--repeats", type=int, default=9, help="cold reads per reader and read")
    ap.add_argument("--dir", type=Path, default=ROOT / "bench-data", help="work directory")
    args = ap.parse_args(argv)
    if args.repeats * READS_PER_REPEAT >= args.frames:
        ap.error(
            f"--frames {args.frames} is too few for --repeats {args.repeats}: each repeat "
            f"reads {READS_PER_REPEAT} frames never read before"
        )
    try:
        ensure_s3rver()
        use_loopback_credentials()
        local = data_file(args.dir.resolve() / "chunk", args.frames)
        import h5py

        with h5py.File(local, "r") as h:
            d = h[ARRAY]
            info = [d.id.get_chunk_info(i) for i in range(d.id.get_num_chunks())]
            offsets = {c.chunk_offset[0]: (c.byte_offset, c.size) for c in info}
        mean = statistics.mean(s for _, s in offsets.values())
        print(
            f"{local.name}: {len(offsets)} chunks of {mean / 1e6:.2f} MB compressed, "
            f"{FRAME[0] * FRAME[1] * 2 / 1e6:.2f} MB decoded; load {os.getloadavg()[0]:.1f} "
            f"on {os.cpu_count()} cores",
            flush=True,
        )
        with tempfile.TemporaryDirectory(prefix="bench-chunk-") as tmpdir, S3rver(BUCKET) as server:
            run(server, local, offsets, Path(tmpdir), args.repeats)
    except BenchSetupError as exc:
        print(f"benchmarks/chunk.py: {exc}", file=sys.stderr)
        return 2
    return 0


def run(
    server: S3rver, local: Path, offsets: dict[int, tuple[int, int]], tmp: Path, repeats: int
) -> None:
    import boto3
    import h5py
    from kerchunk.hdf import SingleHdf5ToZarr

    from hyperslab.convert.ingest import ingest
    from hyperslab.references.repository import Repository
    from hyperslab.storage import S3Site

    boto3.client("s3", endpoint_url=server.url, region_name="us-east-1").upload_file(
        str(local), BUCKET, f"data/{local.name}"
    )
    staged = tmp / local.name
    os.link(local, staged)
    repo = Repository.init(
        S3Site(BUCKET, "repo", endpoint_url=server.url, cas=False), single_writer=True
    )
    try:
        ingest(repo, [str(staged)], name="frames", upload_sources=True, message="bench")
    finally:
        repo.close()
        staged.unlink()
    with open(local, "rb") as fh, warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        refs = SingleHdf5ToZarr(fh, url=f"s3://{BUCKET}/data/{local.name}").translate()
    toml = tmp / "hyperslab.toml"
    toml.write_text(f'[sites.bench]\nurl = "s3://{BUCKET}"\nendpoint_url = "{server.url}"\n')
    os.environ["HYPERSLAB_CONFIG"] = str(toml)
    os.environ["HYPERSLAB_ACCESS_STATS"] = "0"

    contenders = readers(server.url, local, refs)
    assert 1 + sum(1 if c.frames_only else len(SELECTIONS) for c in contenders) == READS_PER_REPEAT
    site = S3Site(BUCKET, "data", endpoint_url=server.url, cas=False)
    floor = floor_parts(site, local.name, offsets)
    site.get_ranges([(local.name, 0, 4096)])  # connection open
    times: dict[str, list[float]] = {"floor: GET": [], "floor: decode": [], "floor": []}
    with h5py.File(local, "r") as h:
        truth = h[ARRAY]
        frame = 1
        for r in range(repeats):
            get_s, dec_s, got = floor(frame)
            if not np.array_equal(got, truth[frame]):
                raise SystemExit(f"floor: frame {frame} differs from h5py's")
            times["floor: GET"].append(get_s)
            times["floor: decode"].append(dec_s)
            times["floor"].append(get_s + dec_s)
            frame += 1
            k = r % len(contenders)
            for c in contenders[k:] + contenders[:k]:
                for what, index in SELECTIONS.items():
                    if c.frames_only and what != "frame":
                        continue
                    ix = index(frame)
                    t0 = time.perf_counter()
                    got = np.asarray(c.read(ix))
                    times.setdefault(f"{what}|{c.name}", []).append(time.perf_counter() - t0)
                    if not np.array_equal(got, truth[ix]):
                        raise SystemExit(f"{c.name}: {what} of frame {frame} differs from h5py's")
                    frame += 1
    for c in contenders:
        c.close()
    site.close()
    med = {k: statistics.median(v) for k, v in times.items()}
    fl = med["floor"]
    print(
        f"\nfloor (one range GET + one inflate of a whole chunk): {fl * 1e3:.2f} ms = GET "
        f"{med['floor: GET'] * 1e3:.2f} + inflate {med['floor: decode'] * 1e3:.2f}"
    )
    for what in SELECTIONS:
        kerchunk = med[f"{what}|kerchunk + zarr"]
        print(
            f"\n{'cold ' + what + ', array open':32} {'median ms':>9} {'x floor':>8} "
            f"{'kerchunk/this':>13}"
        )
        for c in contenders:
            key = f"{what}|{c.name}"
            if key in med:
                print(
                    f"{c.name:32} {med[key] * 1e3:9.2f} {med[key] / fl:8.2f} "
                    f"{kerchunk / med[key]:13.2f}"
                )
    print(json.dumps({"median_s": med, "repeats": repeats}), file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
