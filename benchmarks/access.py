"""Range reads from a >= 1 GB NeXus detector file on loopback S3, all readers in one run.

    make bench-access                      # or:
    .venv/bin/python benchmarks/access.py [--size-mb 1074] [--repeats 3] [--series-frames 100]

What runs, in order:

1. **Data.** A NeXus/NXmx detector file from :func:`write_big_detector_file`
   (``uint32`` frames of 1024 x 1024, one frame per chunk, shuffle + gzip 4,
   Poisson background + Bragg spots, ~9x compression) grows until its chunks hold
   ``--size-mb`` MB. It is cached in ``bench-data/access/`` and reused.
2. **Server.** s3rver (npm, installed into the git-ignored ``benchmarks/.node/``)
   on a free 127.0.0.1 port over a temporary directory, and in front of it a
   byte-counting TCP proxy in its own process. The file is uploaded once; every
   measured client talks to the proxy, so "bytes" are what the server really sent
   (HTTP status lines and headers included), the same way for every reader.
3. **Reads.** Three selections of ``/entry/data/data``: one whole frame, a 64 x 64
   ROI of one frame, and a single-pixel series over ``--series-frames`` frames.
   Each repeat opens a fresh handle (no client cache survives), reads the
   selection once (*cold*) and again on the same handle (*warm*), and checks both
   against h5py. Repeats use different frames, readers take turns within a
   repeat, and each figure is the median over the repeats.

   Readers: h5py on the local file (the reference every ratio divides by; its
   page cache is warm, as after writing the file), the same without HDF5's chunk
   cache and with the file's pages dropped first (``posix_fadvise``), h5py over an s3fs file object (s3fs' default
   50 MiB read-ahead blocks, and smaller blocks), kerchunk 0.2.10 refs through
   fsspec ``reference://`` + xarray and + zarr, downloading the whole file
   (``s3fs.get_file``, then h5py on the copy), and hyperslab (see
   :func:`hyperslab_reader`).

"need" is the sum of the compressed sizes of the chunks a selection touches
(from h5py's chunk index); "cold/need" divides the bytes the server sent during
the cold read by it, "+open/need" adds the open's bytes. ``×local`` divides a
read's seconds by those of h5py on the local file for the same read (cold by
cold, warm by warm): below 1 is faster. A table per selection goes to stdout,
one JSON line to stderr. ``--direct`` points the readers at s3rver itself (no
proxy hop, no byte counts).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import platform
import shutil
import signal
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from rich.console import Console
from rich.table import Table

from loopback_s3 import (
    KEY,
    SECRET,
    BenchSetupError,
    CountingProxy,
    Counts,
    S3rver,
    close_reference_store,
    ensure_s3rver,
    reference_store,
)

ROOT = Path(__file__).resolve().parent.parent
DATASET = "entry/data/data"  # NXdata signal (hard link to entry/instrument/detector/data)
BUCKET = "bench"
SOURCE_KEY = "data/{name}"  # where the baselines read the file
FRAME_SHAPE = (1024, 1024)
ROI = 64
MB = 1_000_000
MIB = 1 << 20

console = Console(highlight=False, markup=False, width=max(Console().width, 190))


# ------------------------------------------------------------------------- data


def detector_file(directory: Path, size_mb: int) -> Path:
    """The cached benchmark file for ``size_mb`` MB of chunks, written if missing."""
    from hyperslab.samples import write_big_detector_file

    name = f"detector_{size_mb}MB_{FRAME_SHAPE[0]}x{FRAME_SHAPE[1]}_gzip.nxs"
    path = directory / name
    if path.exists():
        return path
    # Written under its final name (the file records it) in a side directory, then
    # moved into place: an interrupted run leaves nothing that looks finished.
    partial = directory / ".partial"
    partial.mkdir(parents=True, exist_ok=True)
    tmp = partial / name
    console.print(f"writing {path} (once; reused by later runs) ...")
    t0 = time.perf_counter()
    write_big_detector_file(
        tmp, target_bytes=size_mb * MB, frame_shape=FRAME_SHAPE, codec="gzip", progress=True
    )
    # Flush it so that posix_fadvise(DONTNEED) can drop its pages later.
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    tmp.replace(path)
    console.print(f"  {path.stat().st_size / MB:,.0f} MB in {time.perf_counter() - t0:.0f} s")
    return path


@dataclass(frozen=True)
class FileInfo:
    path: str
    size: int
    shape: tuple[int, ...]
    chunks: tuple[int, ...]
    dtype: str
    compression: str
    chunk_bytes: int  # all chunks, compressed
    raw_bytes: int

    @property
    def ratio(self) -> float:
        return self.raw_bytes / self.chunk_bytes


def file_info(path: Path) -> tuple[FileInfo, np.ndarray]:
    """Summary of the file and the compressed size of every chunk, by frame."""
    with h5py.File(path, "r") as f:
        d = f[DATASET]
        if d.chunks is None or d.chunks[1:] != d.shape[1:] or d.chunks[0] != 1:
            raise SystemExit(f"{path}: {DATASET} is not one frame per chunk")
        sizes = np.zeros(d.shape[0], dtype=np.int64)

        def visit(info: Any) -> None:
            sizes[info.chunk_offset[0]] = info.size

        d.id.chunk_iter(visit)
        info = FileInfo(
            path=str(path),
            size=path.stat().st_size,
            shape=tuple(d.shape),
            chunks=tuple(d.chunks),
            dtype=str(d.dtype),
            compression=f"{'shuffle + ' if d.shuffle else ''}{d.compression} {d.compression_opts}",
            chunk_bytes=int(sizes.sum()),
            raw_bytes=int(np.prod(d.shape)) * d.dtype.itemsize,
        )
    return info, sizes


# ------------------------------------------------------------------- selections


@dataclass(frozen=True)
class Selection:
    kind: str  # frame | roi | series
    label: str
    index: tuple[int | slice, ...]
    frames: tuple[int, ...]  # chunks touched (one frame per chunk)

    def needed(self, sizes: np.ndarray) -> int:
        return int(sizes[list(self.frames)].sum())


KINDS = ("frame", "roi", "series")


def selections(info: FileInfo, repeats: int, series_frames: int) -> dict[str, list[Selection]]:
    """Per kind, one selection per repeat, each on different frames."""
    n, height, width = info.shape
    # Away from the module-gap row (height // 2), in the air-scatter halo: not all zeros.
    y0, x0 = height // 2 + 40, width // 2 - 96
    py, px = height // 2 + 37, width // 2 - 53
    series_frames = n if series_frames <= 0 else min(series_frames, n)
    out: dict[str, list[Selection]] = {k: [] for k in KINDS}
    for r in range(repeats):
        i = int((r + 1) * n / (repeats + 1))
        out["frame"].append(Selection("frame", f"frame {i}", (i,), (i,)))
        j = min(n - 1, i + 1)  # not the frame just read by the "frame" selection
        roi = (j, slice(y0, y0 + ROI), slice(x0, x0 + ROI))
        out["roi"].append(Selection("roi", f"{ROI}x{ROI} of frame {j}", roi, (j,)))
        # Spread like the frames, never at the file's start (where s3fs' first read-ahead
        # block, fetched at open for the superblock, would hold it by accident).
        s = max(0, min(i, n - series_frames))
        frames = tuple(range(s, s + series_frames))
        label = f"pixel ({py},{px}), frames {s}:{s + series_frames}"
        out["series"].append(
            Selection("series", label, (slice(s, s + series_frames), py, px), frames)
        )
    return out


# -------------------------------------------------------------------- contenders


@dataclass
class Contender:
    """One way of reading. ``open`` returns a fresh handle (no cache from earlier
    handles), ``read`` reads a selection through it, ``close`` releases it."""

    name: str
    open: Callable[[], Any]
    read: Callable[[Any, Selection], np.ndarray]
    close: Callable[[Any], None] = lambda handle: None
    note: str = ""
    remote: bool = True
    group: str = "baseline"  # baseline | hyperslab


@dataclass
class Env:
    """What readers need to know about this run."""

    local: Path
    info: FileInfo
    server_url: str  # s3rver itself: setup traffic, not counted
    proxy_url: str  # the counting proxy: every measured read
    bucket: str
    key: str  # the baseline copy of the file in the bucket
    tmp: Path  # scratch directory, removed at the end
    prep: dict[str, Any] = field(default_factory=dict)  # one-off setup timings

    @property
    def s3_url(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


def s3fs_fs(endpoint: str, **kw: Any) -> Any:
    import s3fs

    return s3fs.S3FileSystem(
        endpoint_url=endpoint,
        key=KEY,
        secret=SECRET,
        skip_instance_cache=True,
        use_listings_cache=False,
        **kw,
    )


LOCAL = "h5py, local file"  # the reference every ×local ratio divides by


def close_s3fs(fs: Any) -> None:
    """Close a synchronous s3fs filesystem's session now, from this thread.

    Left to s3fs' own finalizer, the session is closed whenever the garbage collector
    gets to it; on an event-loop thread (zarr's, hyperslab's) that finalizer fails
    with "attached to a different loop" noise on stderr.
    """
    from fsspec.asyn import sync

    creator = getattr(fs, "_s3creator", None)
    if getattr(fs, "_s3", None) is not None and creator is not None:
        with contextlib.suppress(Exception):
            sync(fs.loop, creator.__aexit__, None, None, None, timeout=5)
        fs._s3 = None


@contextlib.contextmanager
def s3fs_session(endpoint: str, **kw: Any) -> Iterator[Any]:
    fs = s3fs_fs(endpoint, **kw)
    try:
        yield fs
    finally:
        close_s3fs(fs)


def h5py_local(env: Env, *, drop_page_cache: bool = False, chunk_cache: bool = True) -> Contender:
    def open_() -> Any:
        if drop_page_cache:
            fd = os.open(env.local, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)
        f = h5py.File(env.local, "r", **({} if chunk_cache else {"rdcc_nbytes": 0}))
        return f, f[DATASET]

    if drop_page_cache:
        name, note = f"{LOCAL}, page cache dropped", "posix_fadvise(DONTNEED) before open"
    elif not chunk_cache:
        name, note = f"{LOCAL}, no chunk cache", "rdcc_nbytes=0: warm = page cache + decode"
    else:
        with h5py.File(env.local, "r") as f:
            rdcc = f.id.get_access_plist().get_cache()[2]
        name, note = LOCAL, f"the reference; warm hits HDF5's chunk cache ({rdcc / MIB:g} MiB)"
    return Contender(
        name,
        open_,
        lambda h, sel: h[1][sel.index],
        lambda h: h[0].close(),
        note=note,
        remote=False,
    )


def h5py_s3fs(env: Env, block_size: int | None) -> Contender:
    def open_() -> Any:
        fs = s3fs_fs(env.proxy_url)
        kw = {} if block_size is None else {"block_size": block_size}
        fo = fs.open(f"{env.bucket}/{env.key}", "rb", **kw)
        f = h5py.File(fo, "r")
        return f, f[DATASET], fo, fs

    def close(h: Any) -> None:
        h[0].close()
        h[2].close()
        close_s3fs(h[3])

    if block_size is None:
        name, note = "h5py + s3fs file (defaults)", "readahead cache, 50 MiB blocks"
    else:
        name, note = f"h5py + s3fs file, {block_size / MIB:g} MiB blocks", "readahead cache"
    return Contender(name, open_, lambda h, sel: h[1][sel.index], close, note=note)


def kerchunk_refs(env: Env) -> str:
    """kerchunk refs of the file (s3 URL), written as JSON into the bucket; its URL."""
    from kerchunk.hdf import SingleHdf5ToZarr

    t0 = time.perf_counter()
    with open(env.local, "rb") as fh, warnings.catch_warnings():
        # kerchunk 0.2.10 warns (and skips) on the NXmx scalar string datasets; the
        # detector stack is unaffected.
        warnings.simplefilter("ignore", UserWarning)
        refs = SingleHdf5ToZarr(fh, url=env.s3_url).translate()
    t1 = time.perf_counter()
    data = json.dumps(refs).encode()
    key = f"refs/{env.local.stem}.json"
    with s3fs_session(env.server_url) as fs:
        fs.pipe(f"{env.bucket}/{key}", data)
    env.prep["kerchunk_translate_s"] = round(t1 - t0, 3)
    env.prep["kerchunk_refs_bytes"] = len(data)
    return f"s3://{env.bucket}/{key}"


def _reference_store(env: Env, refs_url: str, path: str = "") -> Any:
    """fsspec reference:// over s3 as a zarr 3 store, rooted at ``path``
    (:func:`loopback_s3.reference_store`). The refs JSON is read here with a plain s3fs
    (what ``fo="s3://..."`` would do, with the session closed now)."""
    with s3fs_session(env.proxy_url) as target:
        refs = json.loads(target.cat_file(refs_url))
    return reference_store(refs, env.proxy_url, path)


def kerchunk_xarray(env: Env, refs_url: str) -> Contender:
    import xarray as xr

    group, var = DATASET.rsplit("/", 1)

    def open_() -> Any:
        # The store is rooted at the group, not opened with group=: zarr 3.1's
        # FsspecStore.list_dir at path "" asks fsspec for "/entry/data", which the
        # reference filesystem does not know, and the group then looks empty.
        store = _reference_store(env, refs_url, group)
        ds = xr.open_dataset(
            store,
            engine="zarr",
            consolidated=False,
            zarr_format=2,
            chunks=None,
            mask_and_scale=False,  # fill value 0 would otherwise turn zeros into NaN
            decode_times=False,
        )
        return ds, ds[var], store

    def close(h: Any) -> None:
        h[0].close()
        close_reference_store(h[2])

    return Contender(
        "kerchunk refs + fsspec + xarray",
        open_,
        lambda h, sel: h[1][sel.index].values,
        close,
        note="refs JSON read from the bucket at open",
    )


def kerchunk_zarr(env: Env, refs_url: str) -> Contender:
    import zarr

    def open_() -> Any:
        store = _reference_store(env, refs_url)
        return zarr.open_array(store, path=DATASET, mode="r", zarr_format=2), store

    return Contender(
        "kerchunk refs + fsspec + zarr",
        open_,
        lambda h, sel: h[0][sel.index],
        lambda h: close_reference_store(h[1]),
        note="refs JSON read from the bucket at open",
    )


# ================================================================ hyperslab rows
#
# THE HOOK. Everything hyperslab-specific is in this section. The reader it
# expects (issue "access/"):
#
#     store = hyperslab.open_store(repo, entry, snapshot=..., sites=..., cache=...)
#     arr = zarr.open_array(store, path="entry/data/data", mode="r")
#
# where `repo` is an open Repository (or its URL), the returned object is a
# read-only zarr v3 Store, and `cache` is a ChunkCache (a fresh empty one per
# cold open here) or False. If it cannot be imported or fails, the tables print
# "hyperslab: reader not available yet" (plus the reason) and the baselines run
# as usual.

HS_PREFIX = "repo"  # repository prefix inside the bucket
HS_ENTRY = "detector"


def _find_open_store() -> tuple[Callable[..., Any], str] | None:
    import importlib

    for module in ("hyperslab", "hyperslab.access", "hyperslab.access.store"):
        try:
            fn = getattr(importlib.import_module(module), "open_store", None)
        except Exception:  # work in progress elsewhere: any failure means "not yet"
            fn = None
        if callable(fn):
            return fn, f"{module}.open_store"
    return None


def hyperslab_reader(env: Env, clients: list[str]) -> list[Contender] | str:
    """hyperslab's rows, or the reason there are none.

    Setup (timed into ``env.prep``, not counted as read traffic): a repository at
    ``s3://bench/repo`` on s3rver, created with ``single_writer=True`` (s3rver
    ignores conditional writes, so a shared-writer repository is refused there),
    and ``ingest(..., upload_sources=True)`` of the local file as entry
    ``detector``, which copies the file into the repository's ``sources/``. Reads
    then go through the counting proxy, with a fresh empty ``ChunkCache`` per open.
    One pair of rows per S3 client in ``clients`` (``wire`` is hyperslab's own; the
    rows of the others are named after them, e.g. ``hyperslab[obstore] ...``).
    """
    found = _find_open_store()
    if found is None:
        return "reader not available yet (no hyperslab.open_store)"
    open_store, where = found
    import zarr

    from hyperslab.convert.ingest import ingest
    from hyperslab.reading.chunk_cache import ChunkCache
    from hyperslab.reading.decode import DecodedCache
    from hyperslab.references.repository import Repository
    from hyperslab.storage import S3Site

    # Ingest through a link that is removed afterwards: the entry records where the
    # file was ingested from, and the store may fall back to that path as a last
    # resort; here every byte must come from the repository on S3.
    staged = env.tmp / "ingest" / env.local.name
    staged.parent.mkdir()
    try:
        os.link(env.local, staged)
    except OSError:
        shutil.copyfile(env.local, staged)
    t0 = time.perf_counter()
    setup_site = S3Site(env.bucket, HS_PREFIX, endpoint_url=env.server_url, cas=False)
    repo = Repository.init(setup_site, single_writer=True)
    try:
        result = ingest(repo, [str(staged)], name=HS_ENTRY, upload_sources=True, message="bench")
    finally:
        repo.close()
        staged.unlink()
    snapshot = result.commit.snapshot.id if result.commit and result.commit.snapshot else None
    env.prep["hyperslab_ingest_s"] = round(time.perf_counter() - t0, 3)
    env.prep["hyperslab_open_store"] = where

    def open_(how: str, client: str) -> Any:
        # A fresh repository handle (through the counting proxy) and an empty cache:
        # the first read is cold, the second on the same store warm.
        site = S3Site(env.bucket, HS_PREFIX, endpoint_url=env.proxy_url, cas=False, client=client)
        r = Repository.open(site)
        cache_dir = Path(tempfile.mkdtemp(prefix="hs-cache-", dir=env.tmp))
        chunk_cache = ChunkCache(cache_dir, max_bytes=4 << 30)
        # and a fresh decoded-chunk memory cache: nothing from an earlier handle helps
        memory = DecodedCache(256 << 20)
        store = open_store(r, HS_ENTRY, snapshot=snapshot, cache=chunk_cache, memory_cache=memory)
        if how == "zarr":
            arr = zarr.open_array(store, path=DATASET, mode="r")
        else:
            from hyperslab.access.array import HyperslabArray

            arr = HyperslabArray(store, DATASET)
        return arr, store, r, cache_dir, chunk_cache

    def close(h: Any) -> None:
        _arr, store, r, cache_dir, chunk_cache = h
        for obj in (store, chunk_cache, r):
            close_ = getattr(obj, "close", None)
            if callable(close_):
                with contextlib.suppress(Exception):
                    close_()
        shutil.rmtree(cache_dir, ignore_errors=True)

    def read(h: Any, sel: Selection) -> np.ndarray:
        return np.asarray(h[0][sel.index])

    out: list[Contender] = []
    for client in clients:
        tag = "hyperslab" if client == "wire" else f"hyperslab[{client}]"
        on = "" if client == "wire" else f"; S3 client {client}"
        out += [
            Contender(
                f"{tag} open_store + zarr",
                lambda c=client: open_("zarr", c),
                read,
                close,
                note="fresh empty ChunkCache and decoded-chunk cache per open" + on,
                group="hyperslab",
            ),
            Contender(
                f"{tag} open_array",
                lambda c=client: open_("array", c),
                read,
                close,
                note="the same store, read with hyperslab.open_array's NumPy indexing (no zarr)"
                + on,
                group="hyperslab",
            ),
        ]
    return out


# ================================================================ measurement


@dataclass
class Sample:
    open_s: float
    cold_s: float
    warm_s: float
    # CPU seconds of this process (every thread) over the open + cold read, and the warm
    # read: the server and the proxy run in processes of their own
    cold_cpu_s: float
    open_io: Counts
    cold_io: Counts
    warm_io: Counts
    ok: bool
    error: str | None = None
    warm_cpu_s: float = 0.0


def measure(c: Contender, sel: Selection, truth: np.ndarray, proxy: CountingProxy) -> Sample:
    marks: list[tuple[float, Counts, float]] = []

    def mark() -> None:
        marks.append((time.perf_counter(), proxy.counts(), time.process_time()))

    # Collect garbage here, on the main thread: s3fs' session finalizers misfire
    # when the collector happens to run them on an event-loop thread, and a
    # collection inside a timed read would add noise.
    gc.collect()
    handle = None
    try:
        mark()
        handle = c.open()
        mark()
        cold = c.read(handle, sel)
        mark()
        warm = c.read(handle, sel)
        mark()
    except Exception as exc:  # reported in the table; the run goes on
        z = Counts()
        return Sample(0, 0, 0, 0, z, z, z, False, f"{type(exc).__name__}: {exc}"[:300])
    finally:
        if handle is not None:
            with contextlib.suppress(Exception):
                c.close(handle)
        handle = None
        gc.collect()
    (t0, c0, p0), (t1, c1, _), (t2, c2, p2), (t3, c3, p3) = marks
    ok = bool(np.array_equal(np.asarray(cold), truth) and np.array_equal(np.asarray(warm), truth))
    return Sample(
        t1 - t0, t2 - t1, t3 - t2, p2 - p0, c1 - c0, c2 - c1, c3 - c2, ok, warm_cpu_s=p3 - p2
    )


def summarise(row: Row, samples: list[Sample], remote: bool) -> None:
    """Fill ``row`` with the median of each figure over the repeats that worked.

    A repeat that failed makes the row fail: a reader that errors once is not
    reported as if it had worked.
    """
    failed = [s for s in samples if s.error is not None]
    if failed:
        row.error = f"{len(failed)} of {len(samples)} repeats failed; first: {failed[0].error}"
        return

    def med(values: list[float]) -> float:
        return float(statistics.median(values))

    row.open_s = med([s.open_s for s in samples])
    row.cold_s = med([s.cold_s for s in samples])
    row.warm_s = med([s.warm_s for s in samples])
    row.cold_cpu_s = med([s.cold_cpu_s for s in samples])
    row.warm_cpu_s = med([s.warm_cpu_s for s in samples])
    if remote:
        row.open_bytes = round(med([s.open_io.down for s in samples]))
        row.cold_bytes = round(med([s.cold_io.down for s in samples]))
        row.warm_bytes = round(med([s.warm_io.down for s in samples]))
        row.requests = round(med([s.open_io.requests + s.cold_io.requests for s in samples]))
    row.ok = all(s.ok for s in samples)


def small_get_ms(endpoint: str, env: Env, n: int = 30) -> float:
    """Median milliseconds of one 100-byte range GET on a connected s3fs filesystem."""
    path = f"{env.bucket}/{env.key}"
    times = []
    with s3fs_session(endpoint) as fs:
        fs.cat_file(path, start=0, end=100)  # connect, warm the client
        for i in range(n):
            start = (i * 7919 * 4096) % (env.info.size - 100)
            t0 = time.perf_counter()
            fs.cat_file(path, start=start, end=start + 100)
            times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def download(env: Env, proxy: CountingProxy) -> tuple[float, Counts]:
    """Seconds and bytes to fetch the whole file with s3fs (fresh filesystem)."""
    target = env.tmp / "download.nxs"
    with s3fs_session(env.proxy_url) as fs:
        c0 = proxy.counts()
        t0 = time.perf_counter()
        fs.get_file(f"{env.bucket}/{env.key}", str(target))
        dt = time.perf_counter() - t0
        io = proxy.counts() - c0
    if target.stat().st_size != env.info.size:
        raise RuntimeError("download: size mismatch")
    target.unlink()
    return dt, io


# -------------------------------------------------------------------- report


@dataclass
class Row:
    kind: str
    name: str
    group: str
    note: str
    needed: int
    chunks: int
    open_s: float | None = None
    cold_s: float | None = None
    warm_s: float | None = None
    open_bytes: int | None = None
    cold_bytes: int | None = None
    warm_bytes: int | None = None
    requests: int | None = None  # HTTP requests during open + cold read
    cold_cpu_s: float | None = None  # CPU seconds of open + cold read (this process)
    warm_cpu_s: float | None = None
    ok: bool = True
    error: str | None = None
    repeats: list[dict[str, Any]] = field(default_factory=list)

    @property
    def cold_per_needed(self) -> float | None:
        if self.cold_bytes is None or not self.needed:
            return None
        return self.cold_bytes / self.needed

    @property
    def total_per_needed(self) -> float | None:
        if self.cold_bytes is None or self.open_bytes is None or not self.needed:
            return None
        return (self.open_bytes + self.cold_bytes) / self.needed


def _s(x: float | None) -> str:
    if x is None:
        return "—"
    return f"{x * 1e3:,.1f} ms" if x < 1 else f"{x:,.2f} s"


def _mb(x: int | None) -> str:
    return "—" if x is None else f"{x / MB:,.2f}"


def _ratio(x: float | None, ref: float | None) -> str:
    if x is None or not ref:
        return "—"
    return f"{x / ref:.2f}×"


def print_table(kind: str, label: str, rows: list[Row], hs_missing: str | None) -> None:
    ref = next((r for r in rows if r.name == LOCAL), None)
    first = rows[0]
    table = Table(
        title=(
            f"{kind}: {label} — needs {first.chunks} chunk(s), "
            f"{first.needed / MB:,.3f} MB compressed (median of the repeats)"
        ),
        title_justify="left",
    )
    columns = {
        "reader": "left",
        "open": "right",
        "cold read": "right",
        "×local": "right",
        "warm read": "right",
        "×local ": "right",
        "MB open": "right",
        "MB cold": "right",
        "cold/need": "right",
        "+open/need": "right",
        "MB warm": "right",
        "requests": "right",
    }
    for col, justify in columns.items():
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    problems = []
    for r in rows:
        if r.error:
            table.add_row(r.name, *["failed"] + ["—"] * (len(columns) - 2))
            problems.append(f"{r.name}: FAILED: {r.error}")
            continue
        if not r.ok:
            problems.append(f"{r.name}: WRONG VALUES (differ from h5py)")
        table.add_row(
            r.name if r.ok else f"{r.name} (WRONG VALUES)",
            _s(r.open_s),
            _s(r.cold_s),
            _ratio(r.cold_s, ref.cold_s if ref else None),
            _s(r.warm_s),
            _ratio(r.warm_s, ref.warm_s if ref else None),
            _mb(r.open_bytes),
            _mb(r.cold_bytes),
            "—" if r.cold_per_needed is None else f"{r.cold_per_needed:.3f}",
            "—" if r.total_per_needed is None else f"{r.total_per_needed:.3f}",
            _mb(r.warm_bytes),
            "—" if r.requests is None else str(r.requests),
        )
    if hs_missing:
        table.add_row("hyperslab: not measured", *["—"] * (len(columns) - 1))
        problems.append(f"hyperslab: {hs_missing}")
    console.print(table)
    for line in problems:
        console.print(f"  {line}")


def print_legend(readers: list[Contender]) -> None:
    console.print(
        "open: a fresh handle (no client cache from earlier opens); cold read: the first "
        "read through it; warm read: the same read again on the same handle. ×local: "
        "seconds / those of h5py on the local file (cold by cold, warm by warm; < 1 is "
        "faster). MB: bytes the server sent (through the counting proxy: status lines, "
        "headers, bodies). cold/need: cold MB / compressed bytes of the chunks the read "
        "needs; +open/need: the same with the open's bytes added. requests: HTTP requests "
        "during open + cold read."
    )
    for c in readers:
        if c.note:
            console.print(f"  {c.name}: {c.note}")
    console.print(
        "  download whole file (s3fs), then h5py: open = s3fs get_file of the whole file, "
        "reads = h5py on the copy (the local-file row's times)"
    )


def aims(rows: list[Row]) -> list[str]:
    """The issue's aims, checked for each hyperslab row (ratios in brackets)."""
    by = {(r.kind, r.name): r for r in rows}
    out = []
    for r in rows:
        if r.group != "hyperslab" or r.error or r.cold_s is None or r.warm_s is None:
            continue
        local = by.get((r.kind, LOCAL))
        decode = by.get((r.kind, f"{LOCAL}, no chunk cache"))
        kerchunk = [
            x
            for x in rows
            if x.kind == r.kind and x.name.startswith("kerchunk") and x.cold_s is not None
        ]
        if local is None or not local.cold_s or not local.warm_s:
            continue
        limit = 1.0 if r.kind == "series" else 1.3
        cold = r.cold_s / local.cold_s
        warm = local.warm_s / r.warm_s  # speed relative to h5py
        checks = [
            (f"cold ≤ {limit}× local h5py [{cold:.2f}×]", cold <= limit),
            (f"warm ≥ 0.8× local speed [{warm:.2f}]", warm >= 0.8),
        ]
        need = r.cold_per_needed
        if need is not None:  # None with --direct: nothing counted
            checks.insert(1, (f"bytes ≤ 1.05× needed [{need:.3f}]", need <= 1.05))
        if decode is not None and decode.warm_s:
            speed = decode.warm_s / r.warm_s
            checks.append((f"(vs h5py without chunk cache [{speed:.2f}])", speed >= 0.8))
        best = min((k.cold_s for k in kerchunk if k.cold_s), default=None)
        if best:
            checks.append(
                (f"ahead of kerchunk [kerchunk / this {best / r.cold_s:.2f}]", r.cold_s < best)
            )
        checks.append(("values", r.ok))
        marks = ", ".join(f"{'✓' if ok else '✗'} {what}" for what, ok in checks)
        out.append(f"{r.kind:6} {r.name}: {marks}")
    return out


def clients_summary(rows: list[Row]) -> list[str]:
    """hyperslab's rows per S3 client (--clients) against the same rows with ``wire``:
    wall and CPU seconds of open + cold read, warm read, and requests per second."""
    out = []
    for r in rows:
        if r.group != "hyperslab" or not r.name.startswith("hyperslab[") or r.error:
            continue
        client, rest = r.name[len("hyperslab[") :].split("]", 1)
        base = next((b for b in rows if b.kind == r.kind and b.name == "hyperslab" + rest), None)
        if base is None or base.error or not base.cold_s or not r.cold_s:
            continue
        cold, bcold = (r.open_s or 0) + r.cold_s, (base.open_s or 0) + base.cold_s
        rps = (r.requests or 0) / cold
        brps = (base.requests or 0) / bcold
        cells = [
            f"open+cold {cold * 1e3:.1f} ms ({cold / bcold:.2f}x)",
            f"CPU {(r.cold_cpu_s or 0) * 1e3:.1f} ms ({(r.cold_cpu_s or 0) / (base.cold_cpu_s or 1):.2f}x)",
            f"warm {(r.warm_s or 0) * 1e3:.2f} ms ({(r.warm_s or 0) / (base.warm_s or 1):.2f}x)",
        ]
        if brps:
            cells.append(f"{rps:,.0f} req/s ({rps / brps:.2f}x)")
        out.append(f"{r.kind:6} {client}{rest}: " + ", ".join(cells))
    return out


# ------------------------------------------------------------------------- main


def run(args: argparse.Namespace) -> dict[str, Any]:
    load_start = os.getloadavg()[0]
    ensure_s3rver()  # fail early (no node/npm) before minutes of writing the file
    data_dir = Path(args.dir).resolve() / "access"
    local = detector_file(data_dir, args.size_mb)
    info, sizes = file_info(local)
    console.print(
        f"file: {info.size / MB:,.0f} MB, {info.dtype} {info.shape}, chunks {info.chunks}, "
        f"{info.compression}, {info.chunk_bytes / info.shape[0] / MB:.3f} MB per compressed "
        f"frame ({info.ratio:.1f}x)"
    )
    sels = selections(info, args.repeats, args.series_frames)
    # slices are unhashable before Python 3.12: key the expected values by (kind, repeat)
    truth: dict[tuple[str, int], np.ndarray] = {}
    with h5py.File(local, "r") as f:
        for kind, group in sels.items():
            for r, sel in enumerate(group):
                truth[(kind, r)] = f[DATASET][sel.index]

    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-access-")))
        server = stack.enter_context(S3rver(BUCKET))
        proxy = stack.enter_context(CountingProxy(server.port))
        env = Env(
            local=local,
            info=info,
            server_url=server.url,
            # --direct: readers skip the proxy (no byte counts, no extra hop)
            proxy_url=server.url if args.direct else proxy.url,
            bucket=BUCKET,
            key=SOURCE_KEY.format(name=local.name),
            tmp=tmp,
        )
        console.print(f"s3rver on {server.url}, counting proxy on {proxy.url}")
        t0 = time.perf_counter()
        with s3fs_session(server.url) as fs:
            fs.put_file(str(local), f"{BUCKET}/{env.key}")
        env.prep["upload_s"] = round(time.perf_counter() - t0, 3)
        env.prep["small_get_ms_direct"] = round(small_get_ms(server.url, env), 2)
        env.prep["small_get_ms_proxy"] = round(small_get_ms(proxy.url, env), 2)
        refs_url = kerchunk_refs(env)

        readers = [
            h5py_local(env),
            h5py_local(env, chunk_cache=False),
            h5py_local(env, drop_page_cache=True),
        ]
        readers.append(h5py_s3fs(env, None))
        readers += [h5py_s3fs(env, int(b * MIB)) for b in args.s3fs_block_mib]
        readers += [kerchunk_xarray(env, refs_url), kerchunk_zarr(env, refs_url)]
        hs_missing: str | None = None
        if args.no_hyperslab:
            hs_missing = "skipped (--no-hyperslab)"
        else:
            try:
                hs = hyperslab_reader(env, args.clients)
            except Exception as exc:  # a reader in progress must not stop the baselines
                hs = f"reader not available yet ({type(exc).__name__}: {exc})"[:300]
            if isinstance(hs, str):
                hs_missing = hs
                console.print(f"hyperslab: {hs}")
            else:
                readers += hs
        pr = env.prep
        console.print(
            f"setup: upload {pr['upload_s']:.1f} s; one 100-byte range GET (median of 30) "
            f"{pr['small_get_ms_direct']:.2f} ms direct, {pr['small_get_ms_proxy']:.2f} ms "
            f"through the proxy; kerchunk translate {pr['kerchunk_translate_s']:.2f} s "
            f"(refs {pr['kerchunk_refs_bytes'] / MB:.2f} MB)"
            + (
                f"; hyperslab ingest --upload-sources {pr['hyperslab_ingest_s']:.1f} s "
                f"({pr['hyperslab_open_store']})"
                if "hyperslab_ingest_s" in pr
                else ""
            )
        )

        # Warm-up: imports, first connections, codec set-up; not recorded.
        warm_sel = Selection("frame", "warm-up", (0, slice(0, 8), slice(0, 8)), (0,))
        warm_truth = truth_for(local, warm_sel)
        for c in readers:
            measure(c, warm_sel, warm_truth, proxy)

        samples: dict[tuple[str, str], list[Sample]] = {}
        for r in range(args.repeats):
            for kind in KINDS:
                sel = sels[kind][r]
                order = readers if r % 2 == 0 else readers[::-1]
                for c in order:
                    s = measure(c, sel, truth[(kind, r)], proxy)
                    samples.setdefault((kind, c.name), []).append(s)
            console.print(f"repeat {r + 1}/{args.repeats} done")

        dl = [download(env, proxy) for _ in range(args.download_repeats)]
        dl_s = statistics.median(d[0] for d in dl)
        dl_io = dl[0][1]

    rows: list[Row] = []
    for kind in KINDS:
        sel0 = sels[kind][0]
        needed = statistics.median(s.needed(sizes) for s in sels[kind])
        nchunks = len(sel0.frames)
        for c in readers:
            ss = samples[(kind, c.name)]
            row = Row(kind, c.name, c.group, c.note, int(needed), nchunks)
            row.repeats = [
                {
                    "selection": sel.label,
                    "needed": sel.needed(sizes),
                    **{k: v for k, v in asdict(s).items() if not k.endswith("_io")},
                    "open_io": asdict(s.open_io),
                    "cold_io": asdict(s.cold_io),
                    "warm_io": asdict(s.warm_io),
                }
                for sel, s in zip(sels[kind], ss, strict=True)
            ]
            summarise(row, ss, c.remote and not args.direct)
            rows.append(row)
        local_row = next(r for r in rows if r.kind == kind and r.name == LOCAL)
        row = Row(
            kind,
            "download whole file (s3fs), then h5py",
            "baseline",
            f"open = s3fs get_file, median of {len(dl)}",
            int(needed),
            nchunks,
            open_s=dl_s,
            cold_s=local_row.cold_s,
            warm_s=local_row.warm_s,
            open_bytes=None if args.direct else dl_io.down,
            cold_bytes=None if args.direct else 0,
            warm_bytes=None if args.direct else 0,
            requests=None if args.direct else dl_io.requests,
        )
        rows.append(row)
        first = sels[kind][0].label
        starts = ", ".join(str(sel.frames[0]) for sel in sels[kind])
        label = f"{first}; repeats start at frames {starts}" if len(sels[kind]) > 1 else first
        print_table(kind, label, [r for r in rows if r.kind == kind], hs_missing)

    print_legend(readers)
    load = os.getloadavg()
    console.print(
        f"{os.cpu_count()} CPUs; load average now {load[0]:.1f} (5 min {load[1]:.1f}), "
        f"{load_start:.1f} at the start: other work on the machine adds noise to every row"
    )
    for line in aims(rows):
        console.print(line)
    clients = clients_summary(rows)
    if clients:
        console.print("hyperslab's S3 clients (ratio = client / wire, same run):")
        for line in clients:
            console.print("  " + line)
    if hs_missing:
        console.print(f"hyperslab: {hs_missing}")
    return {
        "benchmark": "access",
        "file": {**asdict(info), "frames_per_chunk": 1},
        "repeats": args.repeats,
        "series_frames": len(sels["series"][0].frames),
        "prep": env.prep,
        "download": {"s": dl_s, "bytes": dl_io.down, "requests": dl_io.requests},
        "direct": args.direct,
        "hyperslab": hs_missing or "measured",
        "clients": clients,
        "rows": [
            {
                **asdict(r),
                "cold_per_needed": r.cold_per_needed,
                "total_per_needed": r.total_per_needed,
            }
            for r in rows
        ],
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "load_avg": os.getloadavg(),
    }


def truth_for(path: Path, sel: Selection) -> np.ndarray:
    with h5py.File(path, "r") as f:
        return f[DATASET][sel.index]


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM unwinds like Ctrl-C, so the server and the proxy are stopped."""

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--size-mb",
        type=int,
        default=1074,
        help="MB (10^6 bytes) of compressed chunks; default 1074, a file over 1 GiB",
    )
    p.add_argument("--dir", default=str(ROOT / "bench-data"), help="cache dir (default bench-data)")
    p.add_argument("--repeats", type=int, default=3, help="repeats per read, median reported")
    p.add_argument(
        "--series-frames",
        type=int,
        default=100,
        help="frames in the pixel series; 0 = every frame (default 100)",
    )
    p.add_argument(
        "--s3fs-block-mib",
        type=float,
        nargs="*",
        default=[1.0],
        help="extra h5py+s3fs rows with these block sizes in MiB (default: 1)",
    )
    p.add_argument("--download-repeats", type=int, default=1)
    p.add_argument("--no-hyperslab", action="store_true", help="baselines only")
    p.add_argument(
        "--clients",
        default="wire",
        help="hyperslab's S3 clients to time, rows of their own: wire (its own, default), "
        "obstore, botocore; e.g. --clients wire,obstore",
    )
    p.add_argument(
        "--direct",
        action="store_true",
        help="readers talk to s3rver directly, not through the counting proxy: "
        "timings without the proxy's hop, no byte counts",
    )
    args = p.parse_args(argv)
    args.clients = [c.strip() for c in args.clients.split(",") if c.strip()]
    if args.repeats < 1:
        p.error("--repeats must be >= 1")

    # Dummy credentials for s3rver, for this process only (S3Site reads the AWS chain).
    for var in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL"):
        os.environ.pop(var, None)
    os.environ.update(
        AWS_ACCESS_KEY_ID=KEY, AWS_SECRET_ACCESS_KEY=SECRET, AWS_DEFAULT_REGION="us-east-1"
    )
    try:
        with _sigterm_as_interrupt():
            t0 = time.perf_counter()
            result = run(args)
            result["wall_s"] = round(time.perf_counter() - t0, 1)
    except BenchSetupError as exc:
        print(f"benchmarks/access.py: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; s3rver and the proxy were stopped", file=sys.stderr)
        return 130
    print(json.dumps(result, default=str), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
