"""``hyperslab compress``: re-encode entries' chunks into the repository, verified.

A detector writes raw frames (TIFF, CBF, uncompressed HDF5) because it must keep up;
photon-counting frames are mostly zeros and compress 10-20x. ``compress`` reads each
chunk of an entry once, through the same routing and checksums as any reader,
re-encodes it with a stated codec (optionally several frames a chunk), checks that
the new bytes decode to exactly the values read, and stores the result in the
repository. A new snapshot of the entry then reads the compressed chunks; the
snapshot before it still reads the raw frames. Sources are never deleted.

Where the chunks go: *packs*, each the concatenation of the encoded chunks of one
task (about :data:`PACK_RAW_BYTES` of raw values), stored as a repository source
``sources/<sha256>/<name>`` and named in the new reference map like any source. One
object per chunk would cost one PUT per chunk to write and one GET per chunk to read;
a pack is written with one PUT and read with coalesced range GETs, like the source
files themselves. As sources, packs are copied by ``sync --sources``, re-hashed by
``fsck``, kept by ``gc`` while a snapshot needs them, and checked chunk by chunk
(CRC-32C) on every read.

Which arrays: every array with chunks outside the map (in source files). Arrays the
reading core decodes (fixed-size dtypes) are re-encoded; others (variable-length
strings) have their stored bytes copied as they are, so that the new entry needs
no raw source at all. Chunks inside the map stay there.

Resuming: each finished pack leaves a record ``jobs/compress/<job>/<n>.json`` (the
job id hashes the entry record and the options, so only the same job resumes). A
killed run, re-run, skips the packs its records name (checked present, by size)
and computes the rest; encoding is deterministic, so the packs, the map and the
entry record are the same bytes as an uninterrupted run's. The records are
deleted after the commit; ``gc`` deletes those of abandoned jobs after its grace
period, and the packs they name with them (nothing reaches them).

With a dask client, each pack is one task (:mod:`.cluster`); this process commits.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import math
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Literal

import numpy as np
from google_crc32c import value as crc32c
from numcodecs import Zstd
from numcodecs.abc import Codec
from numcodecs.compat import ensure_bytes
from numcodecs.registry import get_codec

from hyperslab.convert.codecs import BitshuffleH5, Blosc2H5
from hyperslab.errors import BadInputError, CorruptError, HyperslabError
from hyperslab.reading.decode import ChunkDecoder, v2_dtype
from hyperslab.reading.reader import EntryReader, open_reader
from hyperslab.reading.routing import ChunkRef
from hyperslab.reading.values import zarr_fill_value
from hyperslab.references.checksums import ALGORITHM, Checksums, pack_checksums
from hyperslab.references.keys import (
    REFMAP_EXTENSIONS,
    compress_job_key,
    compress_job_prefix,
    logical_source,
    source_key,
)
from hyperslab.references.refmap import ArrayRefs, InlineChunks, RefMap
from hyperslab.references.refmap_objects import encode_refmap
from hyperslab.references.repository import DEFAULT_BRANCH, CommitResult, Repository
from hyperslab.version import __version__

__all__ = [
    "CODECS",
    "PACK_RAW_BYTES",
    "CompressOptions",
    "CompressResult",
    "PackTask",
    "compress",
    "compress_task",
    "compress_tasks",
]

#: codecs ``compress`` writes, and the level each uses unless told
CODECS: dict[str, int | None] = {"bitshuffle-lz4": None, "zstd": 3, "blosc2": 5}
_LEVELS = {"zstd": (1, 22), "blosc2": (0, 9)}
#: raw (decoded) bytes of the chunks of one pack, one task: bounds a worker's memory
#: (the raw values, their encoding and the check's decode are held at once)
PACK_RAW_BYTES = 128 << 20
#: and at most this many chunks a pack (its record stays small)
MAX_PACK_CHUNKS = 4096
_JOB_VERSION = 2  # 2: Blosc2 chunks never split, in 64 KiB blocks
_BLOSC_BITSHUFFLE = 2
_BLOSC_LZ4 = 1


@dataclass(frozen=True)
class CompressOptions:
    """What ``compress`` writes: the codec, its level, and frames a chunk.

    ``frames_per_chunk``: new chunks of arrays of 3 or more dimensions hold this many
    whole frames (entries along the first axis, the other axes whole: TIFF strips or
    tiles become whole frames); None keeps every array's chunk shape.
    """

    codec: str = "bitshuffle-lz4"
    level: int | None = None
    frames_per_chunk: int | None = None

    def checked(self) -> CompressOptions:
        """These options, the level filled in; BadInputError naming what is wrong."""
        if self.codec not in CODECS:
            raise BadInputError(f"unknown codec {self.codec!r}: choose one of {', '.join(CODECS)}")
        level = self.level
        if self.codec in _LEVELS:
            lo, hi = _LEVELS[self.codec]
            level = CODECS[self.codec] if level is None else level
            if not lo <= int(level or 0) <= hi:
                raise BadInputError(f"--level for {self.codec} must be {lo} to {hi}, not {level}")
        elif level is not None:
            raise BadInputError(f"{self.codec} has no level; leave --level out")
        if self.frames_per_chunk is not None and self.frames_per_chunk < 1:
            raise BadInputError(
                f"--frames-per-chunk must be at least 1, not {self.frames_per_chunk}"
            )
        return CompressOptions(self.codec, level, self.frames_per_chunk)

    def compressor(self, dtype: np.dtype[Any]) -> Codec:
        """The numcodecs codec that encodes chunks of ``dtype``."""
        size = max(dtype.itemsize, 1)
        if self.codec == "bitshuffle-lz4":
            return BitshuffleH5(elementsize=size, compression=2)
        if self.codec == "zstd":
            return Zstd(level=int(self.level or 3))
        return Blosc2H5(
            typesize=size,
            clevel=int(self.level if self.level is not None else 5),
            shuffle=_BLOSC_BITSHUFFLE,
            compressor=_BLOSC_LZ4,
        )

    def to_json(self) -> dict[str, Any]:
        return {"codec": self.codec, "level": self.level, "frames_per_chunk": self.frames_per_chunk}


# ------------------------------------------------------------------------ the plan


@dataclass(frozen=True)
class ArrayPlan:
    """How one array of an entry is rewritten."""

    path: str
    mode: Literal["encode", "copy"]  # re-encode values, or copy stored bytes as they are
    zarray: dict[str, Any]  # the new metadata
    old_chunks: tuple[int, ...]
    new_chunks: tuple[int, ...]
    grid: tuple[int, ...]  # of the new chunks

    @property
    def regroups(self) -> bool:
        return self.new_chunks != self.old_chunks


def _plain_numeric(dtype: np.dtype[Any]) -> bool:
    return dtype.kind in "biufc" and dtype.fields is None and not dtype.subdtype


def array_plan(arr: ArrayRefs, options: CompressOptions) -> ArrayPlan | None:
    """How ``compress`` rewrites ``arr``, or None when it has no chunk outside the map."""
    if arr.index.size == 0:
        return None
    z = arr.zarray
    old = tuple(int(c) for c in z["chunks"])
    decoder = ChunkDecoder.for_array(z)
    if decoder is None:
        return ArrayPlan(arr.path, "copy", dict(z), old, old, arr.grid)
    dtype = v2_dtype(z["dtype"])
    new = old
    n = options.frames_per_chunk
    if n is not None and len(old) >= 3 and _plain_numeric(dtype):
        # N whole frames a chunk: the first axis in N, the others whole
        new = (min(n, max(int(z["shape"][0]), 1)), *(max(int(s), 1) for s in z["shape"][1:]))
    codec = options.compressor(dtype)
    zarray = dict(z, chunks=list(new), compressor=codec.get_config(), filters=None)
    grid = tuple(math.ceil(s / c) if c else 0 for s, c in zip(z["shape"], new, strict=True))
    return ArrayPlan(arr.path, "encode", zarray, old, new, grid)


def _old_grid(plan: ArrayPlan) -> tuple[int, ...]:
    """The grid of the array's chunks before ``compress``."""
    shape = plan.zarray["shape"]
    return tuple(
        math.ceil(int(s) / c) if c else 0 for s, c in zip(shape, plan.old_chunks, strict=True)
    )


def _span(coord: int, size: int, extent: int) -> tuple[int, int]:
    """The elements ``[lo, hi)`` chunk ``coord`` of ``size`` covers on an axis of ``extent``."""
    return coord * size, min((coord + 1) * size, extent)


def _sources_of(plan: ArrayPlan, new_lin: int) -> list[int]:
    """Linear indices (old grid) of the chunks new chunk ``new_lin`` takes values from."""
    if not plan.regroups:
        return [new_lin]
    shape = [int(s) for s in plan.zarray["shape"]]
    coords = np.unravel_index(new_lin, plan.grid)
    ranges = []
    for c, new, old, extent in zip(coords, plan.new_chunks, plan.old_chunks, shape, strict=True):
        lo, hi = _span(int(c), new, extent)
        ranges.append(range(lo // old, (hi - 1) // old + 1) if hi > lo else range(0))
    old_grid = _old_grid(plan)
    return [int(np.ravel_multi_index(js, old_grid)) for js in itertools.product(*ranges)]


def _present(arr: ArrayRefs, plan: ArrayPlan) -> np.ndarray:
    """New-grid linear indices of the chunks that hold any stored value, sorted."""
    have = (
        np.union1d(arr.index, np.fromiter(arr.inline.keys(), np.int64)) if arr.inline else arr.index
    )
    if plan.mode == "copy":
        return np.asarray(arr.index, np.int64)  # inline chunks stay in the map
    if not plan.regroups:
        return np.asarray(have, np.int64)
    shape = [int(s) for s in plan.zarray["shape"]]
    coords = np.unravel_index(np.asarray(have, np.int64), _old_grid(plan))
    out: set[int] = set()
    for js in zip(*(c.tolist() for c in coords), strict=True):
        ranges = []
        for j, new, old, extent in zip(js, plan.new_chunks, plan.old_chunks, shape, strict=True):
            lo, hi = _span(j, old, extent)
            ranges.append(range(lo // new, (hi - 1) // new + 1))
        out.update(int(np.ravel_multi_index(i, plan.grid)) for i in itertools.product(*ranges))
    return np.array(sorted(out), np.int64)


@dataclass(frozen=True)
class PackTask:
    """One pack: chunks of one entry to encode and store together (one dask task)."""

    name: str  # for messages and task keys
    job: str
    number: int
    entry: str
    snapshot: str
    options: CompressOptions
    chunks: tuple[tuple[str, tuple[int, ...]], ...]  # (array path, new linear indices)
    raw_bytes: int


def _tasks(
    refmap: RefMap,
    plans: dict[str, ArrayPlan],
    entry: str,
    snapshot: str,
    job: str,
    options: CompressOptions,
    pack_bytes: int,
) -> list[PackTask]:
    """Chunks in array order, then index order, cut into packs of about ``pack_bytes``
    (counted as whole chunks; a task's ``raw_bytes`` counts the values inside the array)."""
    tasks: list[PackTask] = []
    parts: list[tuple[str, list[int]]] = []
    size = count = raw = 0

    def cut() -> None:
        nonlocal parts, size, count, raw
        if count:
            number = len(tasks)
            chunks = tuple((p, tuple(ix)) for p, ix in parts)
            tasks.append(
                PackTask(f"{entry}#{number}", job, number, entry, snapshot, options, chunks, raw)
            )
        parts, size, count, raw = [], 0, 0, 0

    for path in sorted(plans):
        plan, arr = plans[path], refmap.arrays[path]
        lins = _present(arr, plan)
        if plan.mode == "encode":
            sizes = np.full(lins.size, math.prod(plan.new_chunks))
            values = _values_inside(plan, lins) * v2_dtype(plan.zarray["dtype"]).itemsize
            sizes *= v2_dtype(plan.zarray["dtype"]).itemsize
        else:
            stored = dict(zip(arr.index.tolist(), arr.length.tolist(), strict=True))
            sizes = values = np.array([stored[lin] for lin in lins.tolist()], np.int64)
        for lin, n, v in zip(lins.tolist(), sizes.tolist(), values.tolist(), strict=True):
            if count and (size + n > pack_bytes or count >= MAX_PACK_CHUNKS):
                cut()
            if not parts or parts[-1][0] != path:
                parts.append((path, []))
            parts[-1][1].append(lin)
            size += n
            raw += v
            count += 1
    cut()
    return tasks


def _values_inside(plan: ArrayPlan, lins: np.ndarray) -> np.ndarray:
    """How many array elements each new chunk ``lins`` covers (edge chunks: fewer)."""
    shape, chunks = plan.zarray["shape"], plan.new_chunks
    if not shape:
        return np.ones(lins.size, np.int64)
    coords = np.unravel_index(lins, plan.grid)
    out = np.ones(lins.size, np.int64)
    for c, s, k in zip(coords, shape, chunks, strict=True):
        out *= np.minimum(k, int(s) - c * k)
    return out


def job_id(entry_value: str, options: CompressOptions, pack_bytes: int) -> str:
    """What identifies one compress job: the entry record it reads and what it writes."""
    doc = {"v": _JOB_VERSION, "entry": entry_value, "pack_bytes": pack_bytes, **options.to_json()}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


# ------------------------------------------------------------------------ one pack

#: entries this process has open for compress tasks, most recent last (a dask worker
#: serves many jobs: at most _READERS_KEPT maps stay in memory)
_READERS: OrderedDict[tuple[str, str, str], EntryReader] = OrderedDict()
_READERS_KEPT = 8
_READERS_LOCK = threading.Lock()


def _reader(repo: Repository, entry: str, snapshot: str) -> EntryReader:
    """The entry at ``snapshot``, opened once per process (every task of a job reads it)."""
    key = (repo.display, entry, snapshot)
    with _READERS_LOCK:
        found = _READERS.get(key)
        if found is None:
            found = _READERS[key] = open_reader(
                repo, entry, snapshot=snapshot, cache=False, stats=False, memory_cache=False
            )
            while len(_READERS) > _READERS_KEPT:
                _READERS.popitem(last=False)[1].close()
        _READERS.move_to_end(key)
        return found


def _values(
    reader: EntryReader, arr: ArrayRefs, plan: ArrayPlan, lins: Sequence[int]
) -> list[np.ndarray]:
    """The raw bytes (flat uint8 arrays) of new chunks ``lins`` of an array to encode,
    from the old chunks."""
    decoder = reader.decoder(plan.path)
    if decoder is None:  # pragma: no cover - array_plan chose "copy" for these
        raise CorruptError(f"{plan.path}: its chunks cannot be decoded here")
    wanted = sorted({j for lin in lins for j in _sources_of(plan, lin)})
    got = reader.decoded([arr.chunk_key(j) for j in wanted], decoder)
    by_old = dict(zip(wanted, got, strict=True))
    if not plan.regroups:
        out = []
        for lin in lins:
            raw = by_old[lin]
            if raw is None:  # pragma: no cover - _present lists stored chunks only
                raise CorruptError(f"{arr.chunk_key(lin)} vanished while compressing")
            out.append(np.ascontiguousarray(raw).view(np.uint8).reshape(-1))  # no copy
        return out
    dtype = v2_dtype(plan.zarray["dtype"])
    fill = zarr_fill_value(plan.zarray, dtype)
    shape = [int(s) for s in plan.zarray["shape"]]
    old_grid = _old_grid(plan)
    result = []
    for lin in lins:
        buf = np.full(plan.new_chunks, fill, dtype=dtype)
        starts = [
            int(c) * n
            for c, n in zip(np.unravel_index(lin, plan.grid), plan.new_chunks, strict=True)
        ]
        for j in _sources_of(plan, lin):
            raw = by_old[j]
            if raw is None:
                continue  # never written: the fill value is already there
            old = np.asarray(raw).view(dtype).reshape(plan.old_chunks)
            dst, src = [], []
            for c, size, start, new, extent in zip(
                np.unravel_index(j, old_grid),
                plan.old_chunks,
                starts,
                plan.new_chunks,
                shape,
                strict=True,
            ):
                olo, ohi = _span(int(c), size, extent)
                lo, hi = max(olo, start), min(ohi, start + new, extent)
                dst.append(slice(lo - start, hi - start))
                src.append(slice(lo - olo, hi - olo))
            buf[tuple(dst)] = old[tuple(src)]
        result.append(buf.view(np.uint8).reshape(-1))
    return result


def _stored(reader: EntryReader, arr: ArrayRefs, lins: Sequence[int]) -> list[bytes]:
    """Stored bytes of chunks ``lins`` (checked against their CRC-32C by the router)."""
    refs: list[ChunkRef] = []
    for lin in lins:
        found = reader.locate(arr.chunk_key(lin))
        if not isinstance(found, ChunkRef):  # pragma: no cover - listed from arr.index
            raise CorruptError(f"{arr.chunk_key(lin)} is not a chunk reference")
        refs.append(found)
    out = []
    for res in reader.router.fetch(refs):
        if isinstance(res, BaseException):
            raise res
        out.append(bytes(res))
    return out


def _encode_checked(codec: Codec, raw: np.ndarray, key: str) -> bytes:
    """``raw`` (flat uint8) encoded, after checking that the encoding decodes to exactly
    ``raw``."""
    enc = bytes(codec.encode(raw))
    back = np.frombuffer(ensure_bytes(codec.decode(enc)), np.uint8)
    if not np.array_equal(back, raw):
        raise CorruptError(
            f"{key}: {codec.codec_id} did not decode to the values read; nothing stored"
        )
    return enc


def _pack_name(task: PackTask) -> str:
    stem = task.entry.replace("/", "_")
    return f"{stem}.{task.options.codec}.{task.job[:12]}.{task.number:05d}.chunks"


def compress_task(repo: Repository, task: PackTask, *, threads: int = 1) -> dict[str, Any]:
    """Read, re-encode, check and store one pack; returns (and records) what it holds.

    Module-level so that dask workers can run it. Every chunk's new encoding is decoded
    and compared byte for byte with the values read before anything is stored; the
    stored pack is read back and its sha256 checked."""
    reader = _reader(repo, task.entry, task.snapshot)
    refmap = reader.view.refmap
    parts: list[bytes] = []
    rows: dict[str, list[list[int]]] = {}
    offset = 0
    pool = ThreadPoolExecutor(threads) if threads > 1 else None
    try:
        for path, lins in task.chunks:
            arr = refmap.arrays[path]
            plan = array_plan(arr, task.options)
            assert plan is not None
            if plan.mode == "encode":
                codec = get_codec(plan.zarray["compressor"])
                raws = _values(reader, arr, plan, lins)
                keys = [f"{path}/{lin}" for lin in lins]
                mapper = pool.map if pool is not None else map
                encoded = list(mapper(partial(_encode_checked, codec), raws, keys))
                del raws
            else:
                encoded = _stored(reader, arr, lins)
            out = rows.setdefault(path, [])
            for lin, enc in zip(lins, encoded, strict=True):
                out.append([int(lin), offset, len(enc), crc32c(enc)])
                offset += len(enc)
                parts.append(enc)
    finally:
        if pool is not None:
            pool.shutdown()
    data = b"".join(parts)
    del parts
    sha = hashlib.sha256(data).hexdigest()
    name = _pack_name(task)
    key = source_key(sha, name)
    repo.site.put(key, data)
    if repo.site.sha256(key) != (sha, len(data)):
        repo.site.delete(key)
        raise CorruptError(f"pack {key} did not read back as written; removed it", key=key)
    record = {
        "job": task.job,
        "number": task.number,
        "pack": {"id": sha, "name": name, "size": len(data)},
        "raw": task.raw_bytes,
        "chunks": rows,
    }
    repo.site.put(compress_job_key(task.job, task.number), json.dumps(record).encode())
    return record


# ------------------------------------------------------------------------ the job


@dataclass
class CompressResult:
    """What one ``compress`` run did."""

    entries: list[dict[str, Any]] = field(default_factory=list)
    commit: CommitResult | None = None
    packs: int = 0
    resumed: int = 0  # packs a killed run had finished, not computed again
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        c = self.commit
        return {
            "entries": self.entries,
            "packs": self.packs,
            "resumed": self.resumed,
            "seconds": round(self.seconds, 3),
            "snapshot": c.snapshot.id if c is not None and c.snapshot is not None else None,
        }


def compress_tasks(
    repo: Repository, tasks: Sequence[PackTask]
) -> Iterator[tuple[PackTask, dict[str, Any]]]:
    """:func:`compress_task` of each task in turn, with its task (a cluster batch)."""
    for task in tasks:
        yield task, compress_task(repo, task)


def _finished(repo: Repository, job: str) -> dict[int, dict[str, Any]]:
    """Records of the packs of ``job`` a previous run finished, whose pack is present."""
    out: dict[int, dict[str, Any]] = {}
    for key in repo.site.list(compress_job_prefix(job)):
        try:
            rec = json.loads(repo.site.get(key))
            pack = rec["pack"]
            if repo.site.head(source_key(pack["id"], pack["name"])).size != pack["size"]:
                continue
            out[int(rec["number"])] = rec
        except (HyperslabError, ValueError, KeyError, TypeError):
            continue  # unreadable or its pack is gone: that pack is made again
    return out


def _new_entry(
    repo: Repository,
    old: dict[str, Any],
    refmap: RefMap,
    plans: dict[str, ArrayPlan],
    records: list[dict[str, Any]],
    options: CompressOptions,
    old_value: str,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Store the compressed entry's map, checksums and record: (its record, summary)."""
    from hyperslab.convert.ingest import array_summary

    packs: list[dict[str, Any]] = []
    number: dict[str, int] = {}
    for rec in records:
        if rec["pack"]["id"] not in number:
            number[rec["pack"]["id"]] = len(packs)
            packs.append(rec["pack"])
    rows: dict[str, list[tuple[int, int, int, int, int]]] = {}
    for rec in records:
        src = number[rec["pack"]["id"]]
        for path, items in rec["chunks"].items():
            rows.setdefault(path, []).extend((lin, src, off, n, crc) for lin, off, n, crc in items)
    new = RefMap(sources=[logical_source(p["id"]) for p in packs], groups=refmap.groups)
    sums: Checksums = {}
    for path, arr in refmap.arrays.items():
        plan = plans.get(path)
        if plan is None:  # no chunk outside the map: as it was
            new.arrays[path] = ArrayRefs(
                path, arr.zarray, arr.attrs, inline=arr.inline, reason=arr.reason
            )
            sums[path] = np.zeros(0, np.uint32)
            continue
        got = np.array(sorted(rows.get(path, [])), np.int64).reshape(-1, 5)
        new.arrays[path] = ArrayRefs(
            path,
            plan.zarray,
            arr.attrs,
            index=got[:, 0].copy(),
            source=got[:, 1].astype(np.int32),
            offset=got[:, 2].copy(),
            length=got[:, 3].copy(),
            inline=arr.inline if plan.mode == "copy" else InlineChunks(),
        )
        sums[path] = got[:, 4].astype(np.uint32)
    data, fmt = encode_refmap(new, None)
    refmap_id = repo.put_object("refmap", data, REFMAP_EXTENSIONS[fmt])
    checksums_id = repo.put_object("checksums", pack_checksums(new, sums), ".parquet")
    arrays = array_summary(new)
    sources = [{k: s[k] for k in ("id", "name", "size") if k in s} for s in old.get("sources", [])]
    before = sum(int(old["arrays"].get(p, {}).get("bytes", 0)) for p in plans)
    after = sum(int(p["size"]) for p in packs)
    raw = sum(int(r["raw"]) for r in records)
    record = dict(old)
    record.update(
        refmap={"id": refmap_id, "format": fmt, "size": len(data), "refs": new.n_refs},
        checksums={
            "id": checksums_id,
            "algorithm": ALGORITHM,
            "chunks": sum(int(a.index.size) for a in new.arrays.values()),
        },
        sources=[{"id": p["id"], "name": p["name"], "size": p["size"]} for p in packs],
        arrays=arrays,
        compressed={
            **options.to_json(),
            "arrays": sorted(p for p, pl in plans.items() if pl.mode == "encode"),
            "copied": sorted(p for p, pl in plans.items() if pl.mode == "copy"),
            "raw_bytes": raw,
            "stored_before": before,
            "stored_bytes": after,
            "from": {"entry": old_value, "refmap": old["refmap"]["id"], "sources": sources},
            # the files the entry was first ingested from, through every recompression
            "originals": (old.get("compressed") or {}).get("originals", sources),
        },
        converter=f"hyperslab {__version__}",
    )
    summary = {
        "name": old["name"],
        "codec": options.codec,
        "level": options.level,
        "chunks": sum(len(r) for r in rows.values()),
        "raw_bytes": raw,
        "stored_before": before,
        "stored_bytes": after,
        "packs": len(packs),
    }
    return record, summary


@dataclass(frozen=True)
class _Job:
    """One entry's compression: what it reads, how its arrays change, its packs."""

    name: str
    value: dict[str, Any]  # the entry's tree value (record id, catalog)
    record: dict[str, Any]
    refmap: RefMap
    plans: dict[str, ArrayPlan]
    job: str  # job_id
    tasks: list[PackTask]


def compress(
    repo: Repository,
    entries: Sequence[str],
    *,
    options: CompressOptions | None = None,
    branch: str = DEFAULT_BRANCH,
    message: str | None = None,
    author: str | None = None,
    client: Any = None,
    pack_bytes: int = PACK_RAW_BYTES,
    on_pack: Callable[[PackTask], None] | None = None,
    on_plan: Callable[[list[PackTask]], None] | None = None,
    threads: int | None = None,
) -> CompressResult:
    """Compress ``entries`` of ``branch``'s head and commit them in one new snapshot.

    ``on_plan`` hears every pack to make (done ones included), ``on_pack`` each as it
    finishes. Without a client, chunks are encoded on ``threads`` threads (default:
    one a core); with one, each worker encodes its pack on its own thread. An entry
    already compressed with these options is left as it is.
    Named errors: an unknown entry (NotFoundError), bad options (BadInputError), an
    entry changed on the branch meanwhile (EntryConflictError, at the commit)."""
    started = time.perf_counter()
    opts = (options or CompressOptions()).checked()
    if not entries:
        raise BadInputError("name at least one entry to compress")
    repo.check_writable()
    head, _ = repo.branch_head(branch)
    snap = repo.snapshot(head)
    jobs: list[_Job] = []
    result = CompressResult()
    for name in entries:
        record = repo.entry(head, name)  # the named NotFoundError, with suggestions
        value = repo.tree.get(snap.tree, name)
        assert value is not None
        done = record.get("compressed")
        if isinstance(done, dict) and {k: done.get(k) for k in opts.to_json()} == opts.to_json():
            result.entries.append({"name": name, "unchanged": True, "codec": opts.codec})
            continue
        refmap = _reader(repo, name, head).view.refmap
        plans = {p: pl for p, a in refmap.arrays.items() if (pl := array_plan(a, opts)) is not None}
        if not plans:
            raise BadInputError(
                f"entry {name!r} has no chunk outside its reference map: nothing to compress"
            )
        job = job_id(value["id"], opts, pack_bytes)
        tasks = _tasks(refmap, plans, name, head, job, opts, pack_bytes)
        jobs.append(_Job(name, value, record, refmap, plans, job, tasks))
    all_tasks = [t for j in jobs for t in j.tasks]
    if on_plan is not None:
        on_plan(all_tasks)
    records: dict[tuple[str, int], dict[str, Any]] = {}
    todo: list[PackTask] = []
    for j in jobs:
        finished = _finished(repo, j.job)
        for t in j.tasks:
            if t.number in finished:
                records[(j.job, t.number)] = finished[t.number]
                result.resumed += 1
                if on_pack is not None:
                    on_pack(t)
            else:
                todo.append(t)
    if client is None:
        for t in todo:
            records[(t.job, t.number)] = compress_task(
                repo, t, threads=threads or os.cpu_count() or 1
            )
            if on_pack is not None:
                on_pack(t)
    else:
        from hyperslab.convert.cluster import ingest_on_cluster

        for t, rec in ingest_on_cluster(client, repo, todo, compress_tasks, {}):
            if isinstance(rec, HyperslabError):  # a worker could not open the repository
                raise rec
            records[(t.job, t.number)] = rec
            if on_pack is not None:
                on_pack(t)
    result.packs = len(all_tasks)
    changes: dict[str, dict[str, Any]] = {}
    for j in jobs:
        recs = [records[(j.job, t.number)] for t in j.tasks]
        new_record, summary = _new_entry(
            repo, j.record, j.refmap, j.plans, recs, opts, j.value["id"]
        )
        entry_id = repo.write_json("entry", new_record)
        catalog = dict(j.value.get("catalog") or {}, compression=opts.codec)
        changes[j.name] = {"id": entry_id, "catalog": catalog}
        result.entries.append(summary)
    if changes:
        what = ", ".join(sorted(changes)[:3]) + (" …" if len(changes) > 3 else "")
        result.commit = repo.commit(
            changes,
            branch=branch,
            message=message or f"compress {what} with {opts.codec}",
            author=author,
            base=head,
        )
        for j in jobs:
            for key in list(repo.site.list(compress_job_prefix(j.job))):
                # what a failure leaves, gc removes after its grace period
                with contextlib.suppress(HyperslabError):
                    repo.site.delete(key)
    result.seconds = time.perf_counter() - started
    return result
