"""One shuffled training epoch over >= 1 GB of detector frames on loopback S3, four ways.

    make bench-ml                         # or:
    .venv/bin/python benchmarks/ml.py [--size-mb 1100] [--entries 8] [--workers 2]

What runs:

1. **Data** (cached in ``bench-data/ml/``): ``--entries`` NeXus detector stacks
   (``write_big_detector_file``: ``uint32`` frames of ``--frame`` pixels, one frame per
   chunk, shuffle + gzip), ``--size-mb`` MB of compressed chunks in all.
2. **Server.** s3rver (npm) on 127.0.0.1 behind a byte-counting proxy (``--direct``:
   readers talk to s3rver itself: the proxy's CPU stays off a small machine's cores,
   and bytes are not counted). Untimed setup:
   the files are uploaded (for kerchunk) and ingested into ``s3://bench/repo`` with
   ``--upload-sources`` (through links removed afterwards, so hyperslab can only read
   from S3).
3. **Epochs**, each a fresh child process, frames in random order, the same
   ``DataLoader(batch_size, num_workers)`` around each dataset, and no training step:

   * ``hyperslab``: :class:`hyperslab.ml.ArrayDataset` over the repository (chunk-aware
     shuffling, sharded over the workers, no local cache: every byte from S3);
   * ``h5py, local files``: the naive map-style ``Dataset`` (each worker opens the
     files, ``dset[i]`` per sample) with ``shuffle=True``, on the local files;
   * ``kerchunk + zarr``: a map-style ``Dataset`` over kerchunk references of the files
     on the same server (fsspec ``reference://``, zarr 3), ``shuffle=True``;
   * ``decode-bound limit``: every chunk read from the local files
     (``read_direct_chunk``) and decoded with hyperslab's decoders on every core, in
     one process: no DataLoader, no network.
   * ``DataLoader ceiling``: the same DataLoader over an iterable data set that reads
     nothing (one ready frame yielded as often as the data set has frames): what moving
     the samples from the workers to the main process costs, the most any loader with
     these workers can deliver on this machine.

Reported per contender: samples/s and MB/s (decoded), seconds, bytes the server sent ÷
the compressed size, the child's CPU seconds, and peak RSS of the main process and of
the largest worker. Each checks its values (the sum of every sample must equal the
limit pass's). Aims (issue 16): hyperslab >= 0.8x the decode-bound limit, ahead of the
naive local h5py loader and of kerchunk, bytes <= 1.05x, worker RSS within
``ArrayDataset.memory_bound()`` (+ the interpreter).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from loopback_s3 import (
    BenchSetupError,
    CountingProxy,
    S3rver,
    ensure_s3rver,
    reference_store,
    use_loopback_credentials,
)
from timing import wait_timed

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
BUCKET = "bench"
ARRAY = "entry/data/data"
MB = 1e6
CONTENDERS = (
    "hyperslab",
    "h5py, local files",
    "kerchunk + zarr",
    "decode-bound limit",
    "DataLoader ceiling",
)


# --------------------------------------------------------------------------- data


def data_files(directory: Path, size_mb: int, entries: int, frame: tuple[int, int]) -> list[Path]:
    """The cached stacks, written if missing (each under its final name, moved in whole)."""
    from hyperslab.samples import write_big_detector_file

    directory.mkdir(parents=True, exist_ok=True)
    per = max(1, size_mb // entries)
    out = []
    for k in range(entries):
        name = f"stack_{k:02d}_{per}MB_{frame[0]}x{frame[1]}_gzip.nxs"
        path = directory / name
        if not path.exists():
            partial = directory / ".partial"
            partial.mkdir(exist_ok=True)
            print(f"writing {path.name} ...", flush=True)
            write_big_detector_file(
                partial / name, target_bytes=per * int(MB), frame_shape=frame, seed=k
            )
            (partial / name).replace(path)
        out.append(path)
    return out


def chunk_bytes(files: list[Path]) -> tuple[int, int, int]:
    """(frames, compressed bytes of the chunks, decoded bytes) of the data set."""
    import h5py

    frames = stored = raw = 0
    for f in files:
        with h5py.File(f, "r") as h:
            d = h[ARRAY]
            frames += d.shape[0]
            raw += d.size * d.dtype.itemsize
            stored += sum(d.id.get_chunk_info(i).size for i in range(d.id.get_num_chunks()))
    return frames, stored, raw


# --------------------------------------------------------------------------- children


def _epoch(ds: Any, workers: int, batch: int, shuffle: bool | None) -> tuple[int, int, float]:
    """(samples, their sum, seconds) of one pass of a DataLoader over ``ds``."""
    from torch.utils.data import DataLoader

    kwargs: dict[str, Any] = {"batch_size": batch, "num_workers": workers}
    if shuffle is not None:
        kwargs["shuffle"] = shuffle
    if workers:
        kwargs["persistent_workers"] = False
    import numpy as np

    n = total = 0
    t0 = time.perf_counter()
    for b in DataLoader(ds, **kwargs):
        data = (b["data"] if isinstance(b, dict) else b).numpy()
        n += len(data)
        total += int(data.sum(dtype=np.int64))
    return n, total, time.perf_counter() - t0


class H5Frames:
    """The naive loader: frame i of the concatenated files, h5py opened per worker."""

    def __init__(self, files: list[str]) -> None:
        import h5py

        self.files = files
        self.counts = []
        for f in files:
            with h5py.File(f, "r") as h:
                self.counts.append(h[ARRAY].shape[0])
        self._open: dict[int, Any] = {}

    def __len__(self) -> int:
        return sum(self.counts)

    def __getitem__(self, i: int) -> Any:
        import h5py
        import numpy as np

        k = 0
        while i >= self.counts[k]:
            i -= self.counts[k]
            k += 1
        h = self._open.get(k)
        if h is None:
            h = self._open[k] = h5py.File(self.files[k], "r")
        return np.asarray(h[ARRAY][i])

    def __getstate__(self) -> dict[str, Any]:
        return {"files": self.files, "counts": self.counts, "_open": {}}


class KerchunkFrames:
    """Frame i through kerchunk references on S3 and zarr 3 (stores opened per worker)."""

    def __init__(self, refs: list[str], counts: list[int], endpoint: str) -> None:
        self.refs, self.counts, self.endpoint = refs, counts, endpoint
        self._arrays: dict[int, Any] = {}

    def __len__(self) -> int:
        return sum(self.counts)

    def _array(self, k: int) -> Any:
        arr = self._arrays.get(k)
        if arr is None:
            import zarr

            store = reference_store(self.refs[k], self.endpoint)
            arr = self._arrays[k] = zarr.open_array(store, path=ARRAY, mode="r", zarr_format=2)
        return arr

    def __getitem__(self, i: int) -> Any:
        import numpy as np

        k = 0
        while i >= self.counts[k]:
            i -= self.counts[k]
            k += 1
        return np.asarray(self._array(k)[i])

    def __getstate__(self) -> dict[str, Any]:
        return {"refs": self.refs, "counts": self.counts, "endpoint": self.endpoint, "_arrays": {}}


class ReadyFrames:
    """The ceiling: ``n`` copies of one ready frame, shared out over the workers."""

    def __init__(self, n: int, frame: list[int], dtype: str) -> None:
        self.n, self.frame, self.dtype = n, tuple(frame), dtype

    def __iter__(self) -> Any:
        import numpy as np
        import torch
        from torch.utils.data import get_worker_info

        info = get_worker_info()
        k, count = (info.id, info.num_workers) if info else (0, 1)
        ready = torch.from_numpy(np.ones(self.frame, dtype=self.dtype))
        for _ in range(k * self.n // count, (k + 1) * self.n // count):
            yield {"data": ready}


def decode_limit(files: list[str]) -> tuple[int, int, float]:
    """(frames, their sum, seconds): every chunk read locally and decoded on all cores."""
    from concurrent.futures import ThreadPoolExecutor

    import h5py
    import numpy as np

    from hyperslab.convert.api import build_refmap
    from hyperslab.reading.decode import ChunkDecoder

    n = total = 0
    t0 = time.perf_counter()
    with ThreadPoolExecutor(os.cpu_count() or 2) as pool:
        for f in files:
            zarray = build_refmap(f).refmap.arrays[ARRAY].zarray
            decoder = ChunkDecoder.for_array(zarray)
            assert decoder is not None
            dtype = np.dtype(zarray["dtype"])
            with h5py.File(f, "r") as h:
                d = h[ARRAY]
                raw = [d.id.read_direct_chunk((i, 0, 0))[1] for i in range(d.shape[0])]

            def one(blob: bytes, dec: Any = decoder, dt: Any = dtype) -> int:
                return int(dec(blob).view(dt).sum(dtype=np.int64))

            for s in pool.map(one, raw):
                total += s
                n += 1
    return n, total, time.perf_counter() - t0


def _rss_now_mb() -> float:
    """This process's resident memory now (Linux), else its peak so far."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(name: str, args: dict[str, Any]) -> None:
    """One contender's epoch; prints one JSON line. ``rss_ready_mb``: the process just
    before its DataLoader forks the workers (what each worker starts with)."""
    out: dict[str, Any] = {"name": name}
    if name != "decode-bound limit":
        import torch.utils.data  # noqa: F401  (in every loader's starting memory)
    t0 = time.perf_counter()
    if name == "hyperslab":
        from hyperslab.ml import ArrayDataset

        ds = ArrayDataset(
            args["repo"], ARRAY, cache=False, seed=0, buffer_chunks=args["buffer"],
            readahead=args["readahead"], fetch_units=args["fetch_units"], coordinates=False,
        )  # fmt: skip
        out["memory_bound"] = ds.memory_bound(batch_size=args["batch"])
        out["fetch_units"] = ds.fetch_units
        out["open_s"] = time.perf_counter() - t0
        out["rss_ready_mb"] = _rss_now_mb()
        n, total, secs = _epoch(ds, args["workers"], args["batch"], None)
    elif name == "h5py, local files":
        ds = H5Frames(args["files"])
        out["rss_ready_mb"] = _rss_now_mb()
        n, total, secs = _epoch(ds, args["workers"], args["batch"], True)
    elif name == "kerchunk + zarr":
        ds = KerchunkFrames(args["refs"], args["counts"], args["endpoint"])
        out["rss_ready_mb"] = _rss_now_mb()
        n, total, secs = _epoch(ds, args["workers"], args["batch"], True)
    elif name == "DataLoader ceiling":
        from torch.utils.data import IterableDataset

        ready = type("Ready", (ReadyFrames, IterableDataset), {})
        ds = ready(args["frames"], args["frame"], args["dtype"])
        out["rss_ready_mb"] = _rss_now_mb()
        n, total, secs = _epoch(ds, args["workers"], args["batch"], None)
        total = -1  # nothing read: no values to check
    else:
        n, total, secs = decode_limit(args["files"])
    out.update(
        samples=n,
        sum=total,
        epoch_s=secs,
        rss_main_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        rss_worker_mb=resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
    )
    print(json.dumps(out), flush=True)


# --------------------------------------------------------------------------- parent


def kerchunk_refs(files: list[Path], directory: Path) -> list[str]:
    """kerchunk references of each file at its S3 URL, as local JSON files."""
    import warnings

    from kerchunk.hdf import SingleHdf5ToZarr

    out = []
    for f in files:
        path = directory / f"{f.stem}.json"
        with open(f, "rb") as fh, warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            refs = SingleHdf5ToZarr(fh, url=f"s3://{BUCKET}/data/{f.name}").translate()
        path.write_text(json.dumps(refs))
        out.append(str(path))
    return out


def setup(server: S3rver, files: list[Path], tmp: Path) -> str:
    """Upload the files (for kerchunk) and ingest them into a repository on S3."""
    import boto3

    from hyperslab.convert.ingest import ingest
    from hyperslab.references.repository import Repository
    from hyperslab.storage import S3Site

    client = boto3.client("s3", endpoint_url=server.url, region_name="us-east-1")
    for f in files:
        client.upload_file(str(f), BUCKET, f"data/{f.name}")
    staged = tmp / "ingest"
    staged.mkdir()
    links = []
    for f in files:
        link = staged / f.name
        try:
            os.link(f, link)
        except OSError:
            link.write_bytes(f.read_bytes())
        links.append(str(link))
    site = S3Site(BUCKET, "repo", endpoint_url=server.url, cas=False)
    repo = Repository.init(site, single_writer=True)
    try:
        ingest(repo, links, name="stacks", upload_sources=True, message="bench")
    finally:
        repo.close()
        for link in links:
            Path(link).unlink()
    return "s3://bench/repo"


def run_child(
    name: str, args: dict[str, Any], env: dict[str, str], proxy: CountingProxy
) -> dict[str, Any]:
    before = proxy.counts()
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, __file__, "_child", name, json.dumps(args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        cwd=HERE,
    )
    wall, rc, cpu, _rss = wait_timed(proc, t0, timeout=3600, poll=0.05)
    stdout = proc.stdout.read().decode() if proc.stdout else ""
    stderr = proc.stderr.read().decode() if proc.stderr else ""
    moved = proxy.counts() - before  # nothing when the readers talk to s3rver directly
    line = next((x for x in reversed(stdout.splitlines()) if x.startswith("{")), "")
    if rc != 0 or not line:
        return {"name": name, "error": f"exit {rc}: {stderr.strip()[-800:]}"}
    out = json.loads(line)
    out.update(wall_s=wall, cpu_s=cpu, bytes_down=moved.down, requests=moved.requests)
    return out


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_child"]:
        child(argv[1], json.loads(argv[2]))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size-mb", type=int, default=1100, help="MB of compressed chunks in all")
    ap.add_argument("--entries", type=int, default=8, help="files (repository entries)")
    ap.add_argument("--frame", default="512x512", help="frame shape, e.g. 512x512")
    ap.add_argument("--workers", type=int, default=2, help="DataLoader workers")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument(
        "--buffer", type=int, default=None, help="ArrayDataset buffer_chunks (default: auto)"
    )
    ap.add_argument("--readahead", type=int, default=4, help="ArrayDataset readahead")
    ap.add_argument(
        "--fetch-units", type=int, default=None, help="ArrayDataset fetch_units (default: auto)"
    )
    ap.add_argument("--repeats", type=int, default=1, help="epochs per contender (medians)")
    ap.add_argument(
        "--direct",
        action="store_true",
        help="readers talk to s3rver directly, not through the counting proxy: no proxy "
        "process taking CPU from the loaders on a small machine, and no byte counts",
    )
    ap.add_argument(
        "--only", help="contenders to run, a comma list of name prefixes (e.g. hyperslab,h5py)"
    )
    ap.add_argument("--dir", type=Path, default=ROOT / "bench-data", help="work directory")
    args = ap.parse_args(argv)
    frame = tuple(int(x) for x in args.frame.lower().split("x"))
    wanted = [w.strip() for w in (args.only or "").split(",") if w.strip()]
    names = [c for c in CONTENDERS if not wanted or any(c.startswith(w) for w in wanted)]
    try:
        ensure_s3rver()
        use_loopback_credentials()
        files = data_files(args.dir.resolve() / "ml", args.size_mb, args.entries, frame)  # type: ignore[arg-type]
        frames, stored, raw = chunk_bytes(files)
        print(
            f"{len(files)} entries, {frames:,} frames of {frame}: {stored / MB:,.0f} MB "
            f"compressed, {raw / MB:,.0f} MB decoded; {args.workers} workers, batch {args.batch}; "
            f"load {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores",
            flush=True,
        )
        results: list[dict[str, Any]] = []
        with (
            tempfile.TemporaryDirectory(prefix="bench-ml-") as tmpdir,
            S3rver(BUCKET) as server,
            CountingProxy(server.port) as proxy,
        ):
            tmp = Path(tmpdir)
            t0 = time.perf_counter()
            setup(server, files, tmp)
            refs = kerchunk_refs(files, tmp)
            print(
                f"setup (upload, ingest, kerchunk refs): {time.perf_counter() - t0:.0f} s",
                flush=True,
            )
            counts = []
            import h5py

            for f in files:
                with h5py.File(f, "r") as h:
                    counts.append(h[ARRAY].shape[0])
                    dtype = h[ARRAY].dtype.str
            toml = tmp / "hyperslab.toml"
            endpoint = server.url if args.direct else proxy.url
            toml.write_text(f'[sites.bench]\nurl = "s3://{BUCKET}"\nendpoint_url = "{endpoint}"\n')
            env = {**os.environ, "HYPERSLAB_CONFIG": str(toml), "HYPERSLAB_ACCESS_STATS": "0"}
            common = {"workers": args.workers, "batch": args.batch}
            child_args = {
                "hyperslab": {
                    **common, "repo": "bench:repo", "buffer": args.buffer,
                    "readahead": args.readahead, "fetch_units": args.fetch_units,
                },
                "h5py, local files": {**common, "files": [str(f) for f in files]},
                "kerchunk + zarr": {
                    **common, "refs": refs, "counts": counts, "endpoint": endpoint,
                },
                "decode-bound limit": {"files": [str(f) for f in files]},
                "DataLoader ceiling": {
                    **common, "frames": frames, "frame": list(frame), "dtype": dtype,
                },
            }  # fmt: skip
            for r in range(args.repeats):
                order = names if r % 2 == 0 else names[::-1]
                for name in order:
                    res = run_child(name, child_args[name], env, proxy)
                    res["repeat"] = r
                    results.append(res)
                    if "error" in res:
                        print(f"  {name}: FAILED {res['error']}", flush=True)
                    else:
                        print(
                            f"  {name:20} {res['samples']:,} samples in {res['epoch_s']:.1f} s "
                            f"({res['samples'] / res['epoch_s']:.0f}/s)",
                            flush=True,
                        )
        report(results, names, frames, stored, raw)
        out = args.dir.resolve() / "ml" / "results.json"
        out.write_text(
            json.dumps({"frames": frames, "stored": stored, "raw": raw, "runs": results}, indent=1)
        )
        print(f"results: {out}")
    except BenchSetupError as exc:
        print(f"benchmarks/ml.py: {exc}", file=sys.stderr)
        return 2
    return 0


def report(
    results: list[dict[str, Any]], names: list[str], frames: int, stored: int, raw: int
) -> None:
    def med(name: str, key: str) -> float | None:
        vals = [r[key] for r in results if r["name"] == name and "error" not in r and key in r]
        return statistics.median(vals) if vals else None

    def grown(name: str) -> str:
        """How much the largest worker grew over what it started with (MB)."""
        peak, ready = med(name, "rss_worker_mb"), med(name, "rss_ready_mb")
        return f"{peak - ready:.0f}" if peak and ready else "-"

    truth = med("decode-bound limit", "sum")
    limit = med("decode-bound limit", "epoch_s")
    print(
        f"\n{'contender':22} {'samples/s':>9} {'MB/s':>7} {'x limit':>7} {'epoch s':>8} "
        f"{'bytes/stored':>12} {'CPU s':>6} {'RSS main':>8} {'RSS worker':>10} "
        f"{'+ reading':>9}  values"
    )
    for name in names:
        secs = med(name, "epoch_s")
        if secs is None:
            print(f"{name:22} FAILED")
            continue
        n = med(name, "samples") or 0
        down = med(name, "bytes_down")
        total = med(name, "sum")
        ok = total == truth if truth is not None and total != -1 else None
        print(
            f"{name:22} {n / secs:9.0f} {n / secs * raw / frames / MB:7.0f} "
            f"{(limit / secs) if limit else float('nan'):7.2f} {secs:8.1f} "
            f"{f'{down / stored:.3f}' if down else '-':>12} {med(name, 'cpu_s') or 0:6.1f} "
            f"{med(name, 'rss_main_mb') or 0:8.0f} {med(name, 'rss_worker_mb') or 0:10.0f} "
            f"{grown(name):>9}  "
            f"{'equal' if ok else 'DIFFER' if ok is not None else '-'}"
        )
    bound = med("hyperslab", "memory_bound")
    if bound:
        print(
            f"hyperslab: fetch_units {med('hyperslab', 'fetch_units'):.0f}, documented bound "
            f"of decoded units per worker {bound / MB:.0f} MB"
        )
    print(
        "RSS worker: the largest DataLoader worker's peak, which counts what it shares with "
        "the process it forked from; + reading: that peak over the forking process's RSS "
        "just before the fork (what reading added: buffers, readers, libraries loaded then, "
        "batches being built)"
    )


if __name__ == "__main__":
    sys.exit(main())
