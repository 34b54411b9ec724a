"""``hyperslab verify``: read every array through a reference map and compare with h5py.

The map is opened the way a user without hyperslab would: fsspec's
``reference://`` filesystem + zarr. Values are compared bit for bit (raw bytes
for fixed-size types, so NaN payloads and signed zeros count), slab by slab along
the first axis so that memory stays bounded on large datasets.

A map combined from several files (``hyperslab refs --combine-*``) records its
parts in the root attribute ``hyperslab`` (``combined``); it is checked against
each of its files: every combined array's slab for that file, and the arrays
taken from the first file against the first file.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from hyperslab.convert.dtypes import (
    DTYPE_ATTR,
    ENCODING_ATTR,
    RAW_TYPE_ATTR,
    attr_to_json,
    dtype_from_json,
)
from hyperslab.convert.hdf5 import MATERIALISED_ATTR, SKIPPED_ATTR, open_hdf5
from hyperslab.errors import BadInputError, NotFoundError
from hyperslab.reading.values import first_difference, h5py_values, needs_decoding
from hyperslab.references.kerchunk_json import to_kerchunk
from hyperslab.references.refmap_files import load_kerchunk_json, read_refmap

__all__ = [
    "ArrayCheck",
    "VerifyReport",
    "combined_record",
    "map_record",
    "open_refs_store",
    "verify",
    "verify_combined",
    "verify_store",
]

_SLAB_BYTES = 64 * 2**20


class Unverifiable(Exception):
    """No reader independent of the map can decode this dataset here (e.g. no LZO plugin)."""


@dataclass
class ArrayCheck:
    path: str
    ok: bool
    storage: str  # virtual | materialised | empty
    detail: str = ""
    nbytes: int = 0
    unverifiable: bool = False
    #: for a combined map: the source file whose slab (or array) was checked
    source: str | None = None

    def to_json(self) -> dict[str, Any]:
        doc = dict(self.__dict__)
        if self.source is None:
            del doc["source"]
        return doc


@dataclass
class VerifyReport:
    source: str
    refs: str
    arrays: list[ArrayCheck] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    #: datasets the map left out because nobody could read them (path → why)
    skipped: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    #: for a combined map: how it was combined and which of its files were checked
    combined: dict[str, Any] | None = None
    #: for a detector frame series: its format, files, frames and the reader compared with
    frames: dict[str, Any] | None = None

    @property
    def ok(self) -> bool:
        return all(a.ok for a in self.arrays) and not self.missing

    @property
    def counts(self) -> dict[str, int]:
        out = {
            "arrays": len(self.arrays),
            "bit_exact": sum(a.ok for a in self.arrays),
            "virtual": 0,
            "materialised": 0,
            "empty": 0,
            "missing": len(self.missing),
            "skipped": len(self.skipped),
            "unverifiable": sum(a.unverifiable for a in self.arrays),
        }
        for a in self.arrays:
            out[a.storage] = out.get(a.storage, 0) + 1
        return out

    def to_json(self) -> dict[str, Any]:
        doc = {
            "source": self.source,
            "refs": self.refs,
            "ok": self.ok,
            "counts": self.counts,
            "seconds": round(self.seconds, 3),
            "missing": self.missing,
            "skipped": self.skipped,
            "arrays": [a.to_json() for a in self.arrays],
        }
        if self.combined is not None:
            doc["combined"] = self.combined
        if self.frames is not None:
            doc["frames"] = self.frames
        return doc


def open_refs_store(
    refs: str | Path, *, remote_options: dict[str, Any] | None = None
) -> tuple[Any, list[str]]:
    """Open a reference map (JSON file or Parquet directory) with plain fsspec + zarr.

    Returns the zarr store and the map's array paths. Arrays are listed from the
    map's metadata rather than through zarr, because zarr 3.1's ``FsspecStore``
    lists nested groups of a root-level reference filesystem as empty (it asks for
    ``/entry``); opening an array or group by path works.
    """
    from fsspec.implementations.reference import LazyReferenceMapper
    from zarr.storage import FsspecStore

    path = str(refs)
    if "://" not in path and not Path(path).exists():
        raise NotFoundError(f"reference map {path} does not exist")
    fo: Any = path
    if "://" not in path and Path(path).is_dir():
        # fsspec's lazy Parquet reader breaks on never-written chunks under pandas 3 (null
        # paths come back as NaN, not None), so Parquet maps are parsed by our reader and
        # handed to fsspec as the equivalent kerchunk dict: the zarr read path is the same.
        fo = to_kerchunk(read_refmap(path))
    elif "://" not in path:
        # parsed here, so a file that is not a map is named as such (fsspec would raise
        # a bare JSONDecodeError); fsspec reads the very same document
        fo = load_kerchunk_json(path)
    store = FsspecStore.from_url(
        "reference://",
        storage_options={"fo": fo, "remote_protocol": None, "remote_options": remote_options or {}},
        read_only=True,
    )
    refs_obj = store.fs.references
    keys = refs_obj.zmetadata if isinstance(refs_obj, LazyReferenceMapper) else refs_obj
    arrays = sorted(
        k[: -len("/.zarray")] if k != ".zarray" else ""
        for k in keys
        if k == ".zarray" or k.endswith("/.zarray")
    )
    return store, arrays


def verify(
    source: str | Path | Sequence[str | Path] | None,
    refs: str | Path,
    *,
    progress: Callable[[str, int, int], None] | None = None,
    only: Sequence[str] | None = None,
    client: Any = None,
) -> VerifyReport:
    """Compare every array of ``refs`` with ``source`` (and every dataset of the source with refs).

    A map combined from several files is checked against each file it names in
    ``source`` (one path or several), or against every file it records when
    ``source`` is None or empty: see :func:`verify_combined`. A map of one file
    needs exactly that file. ``only``: check just these arrays (what is missing from
    the map is still found against all of them). ``client``: a
    ``dask.distributed.Client``; the arrays are checked in parallel by its workers,
    a share each, and the report is the same.
    """
    if client is not None:
        return _verify_on_cluster(client, source, refs, progress)
    store, paths = open_refs_store(refs)
    given = [] if source is None else [source] if isinstance(source, str | Path) else list(source)
    record = combined_record(store)
    if record is not None:
        return verify_combined(
            given, store, paths, record, label=str(refs), progress=progress, only=only
        )
    if len(given) != 1:
        raise BadInputError(
            f"{refs} is the map of one file (not combined from several): "
            f"give that file, as in: hyperslab verify SOURCE {refs}"
            + (f"; got {len(given)} sources" if given else "")
        )
    return verify_store(given[0], store, paths, label=str(refs), progress=progress, only=only)


def _verify_on_cluster(
    client: Any,
    source: str | Path | Sequence[str | Path] | None,
    refs: str | Path,
    progress: Callable[[str, int, int], None] | None,
) -> VerifyReport:
    """:func:`verify` with the map's arrays shared out to a dask cluster's workers."""
    from hyperslab.convert.cluster import distributed

    as_completed = distributed().as_completed
    _, paths = open_refs_store(refs)
    workers = max(1, len(client.scheduler_info().get("workers", {})))
    n = min(len(paths), 4 * workers) or 1  # a few shares a worker, for balance
    shares = [paths[k::n] for k in range(n)]
    src = source if source is None or isinstance(source, str | Path) else list(source)
    futures = [client.submit(verify, src, refs, only=share, pure=False) for share in shares]
    reports: list[VerifyReport] = []
    done = 0
    t0 = time.perf_counter()
    for future in as_completed(futures):
        part: VerifyReport = future.result()
        reports.append(part)
        for check in part.arrays:
            if progress:
                progress(check.path, done, len(paths))
            done += 1
    first = reports[0]
    rank = {p: i for i, p in enumerate(paths)}
    first.arrays = sorted(
        (a for r in reports for a in r.arrays), key=lambda a: (rank.get(a.path, 0), a.source or "")
    )
    first.seconds = time.perf_counter() - t0
    return first


def map_record(store: Any, key: str) -> dict[str, Any] | None:
    """The record ``key`` of a map's root ``hyperslab`` attribute (``combined`` for a
    combined map, ``frames`` for a frame series), or None."""
    import zarr

    try:
        attrs = zarr.open_group(store, mode="r", zarr_format=2).attrs.asdict()
    except Exception:
        return None
    meta = attrs.get("hyperslab")
    record = meta.get(key) if isinstance(meta, dict) else None
    return record if isinstance(record, dict) else None


def combined_record(store: Any) -> dict[str, Any] | None:
    """The ``combined`` record of a map's root ``hyperslab`` attribute, or None."""
    return map_record(store, "combined")


class _Slab:
    """One file's part of a combined array, indexed like that file's dataset.

    ``index`` along a new leading axis, or ``[start, start + length)`` along ``axis``.
    """

    def __init__(
        self, z: Any, *, index: int | None = None, axis: int = 0, start: int = 0, length: int = 0
    ) -> None:
        self.z, self.index, self.axis, self.start = z, index, axis, start
        self.attrs = z.attrs
        shape = list(z.shape)
        if index is not None:
            self.shape: tuple[int, ...] = tuple(shape[1:])
        else:
            shape[axis] = length
            self.shape = tuple(shape)

    def __getitem__(self, sel: Any) -> Any:
        if sel is Ellipsis:
            sel = ()
        if not isinstance(sel, tuple):
            sel = (sel,)
        full = [*sel, *[slice(None)] * (len(self.shape) - len(sel))]
        if self.index is not None:
            return self.z[(self.index, *full)]
        a, b, _ = full[self.axis].indices(self.shape[self.axis])
        full[self.axis] = slice(self.start + a, self.start + b)
        return self.z[tuple(full)]


def verify_combined(
    sources: Sequence[str | Path],
    store: Any,
    paths: list[str],
    record: dict[str, Any],
    *,
    label: str,
    progress: Callable[[str, int, int], None] | None = None,
    only: Sequence[str] | None = None,
) -> VerifyReport:
    """Check a combined map against its files, bit for bit.

    For each file checked: the slab of every combined array that came from it;
    for the first file also the arrays taken from it as they are, and that every
    dataset it holds is in the map. ``sources`` are matched to the recorded files
    by path; several that do not all match are taken in the order they were
    combined when there are as many as the map has files. No ``sources``: every
    recorded file, by the path or URL the map names it by. Files not given are
    listed in the report's ``combined["unchecked"]``.
    """
    import zarr

    from hyperslab.convert.api import source_url

    parts = record.get("parts")
    if not isinstance(parts, list) or not parts or not all(isinstance(p, dict) for p in parts):
        raise BadInputError(
            f"{label} was combined by an older hyperslab that did not record which files "
            "went where; make it again with hyperslab refs --combine-... to verify it"
        )
    urls = [str(p.get("url", "")) for p in parts]
    if not sources:
        hashed = [u for u in urls if u.startswith("hyperslab-source:")]
        if hashed:
            raise BadInputError(
                f"{label} names its files by content hash ({hashed[0]}); give the files "
                f"it was combined from: hyperslab verify FILE... {label}"
            )
        chosen = list(enumerate(urls))
    else:
        given = [str(s) for s in sources]
        where = {u: i for i, u in enumerate(urls)}
        found = [where.get(source_url(s)) for s in given]
        if all(i is not None for i in found):
            chosen = [(i, s) for i, s in zip(found, given, strict=True) if i is not None]
        elif len(given) == len(urls):
            chosen = list(enumerate(given))
        else:
            bad = next(s for s, i in zip(given, found, strict=True) if i is None)
            raise BadInputError(
                f"{bad} is not one of the {len(urls)} files {label} was combined from "
                f"({', '.join(urls[:3])}{', ...' if len(urls) > 3 else ''}); give some of them, "
                f"all {len(urls)} in the order they were combined, or none to check the "
                "files the map names"
            )
    chosen = list({i: (i, s) for i, s in reversed(chosen)}.values())  # a file once
    combined = set(record.get("arrays") or [])
    new_dim, dim = record.get("new_dim"), record.get("dim")
    if new_dim is None and not isinstance(dim, int):
        raise BadInputError(f"{label} records neither a new axis nor an axis it was combined along")
    axis = dim if isinstance(dim, int) else 0
    own_starts: dict[str, list[int]] = record.get("starts") or {}

    t0 = time.perf_counter()
    report = VerifyReport(source=str(chosen[0][1]), refs=label)
    to_check = list(only) if only is not None else paths
    total = len(to_check) * len(chosen)
    done = 0
    for i, src in sorted(chosen):
        with open_hdf5(src) as f:
            for path in to_check:
                if progress:
                    progress(path, done, total)
                done += 1
                if path not in combined and i != 0:
                    continue  # taken from the first file: checked against that one
                try:
                    z = zarr.open_array(store, path=path, mode="r", zarr_format=2)
                except Exception as exc:
                    report.arrays.append(
                        ArrayCheck(path, False, "virtual", f"cannot open: {exc}", source=str(src))
                    )
                    continue
                view: Any = z
                if path in combined and new_dim is not None:
                    view = _Slab(z, index=i)
                elif path in combined:
                    starts = own_starts.get(path) or [int(p["start"]) for p in parts]
                    stop = starts[i + 1] if i + 1 < len(starts) else int(z.shape[axis])
                    view = _Slab(z, axis=axis, start=starts[i], length=stop - starts[i])
                check = _check(f, path, view)
                check.source = str(src)
                report.arrays.append(check)
            if i == 0:
                report.missing = sorted(_all_datasets(f) - set(paths))
                report.skipped = _skipped(store, report.missing)
                report.missing = [m for m in report.missing if m not in report.skipped]
    report.seconds = time.perf_counter() - t0
    checked = {i for i, _ in chosen}
    report.combined = {
        "new_dim": new_dim,
        "dim": dim,
        "files": len(urls),
        "checked": [{"source": str(s), "part": i, "url": urls[i]} for i, s in sorted(chosen)],
        "unchecked": [u for i, u in enumerate(urls) if i not in checked],
    }
    return report


def verify_store(
    source: str | Path,
    store: Any,
    paths: list[str],
    *,
    label: str,
    progress: Callable[[str, int, int], None] | None = None,
    open_array: Callable[[str], Any] | None = None,
    only: Sequence[str] | None = None,
) -> VerifyReport:
    """Compare arrays ``paths`` of any Zarr ``store`` with ``source``, bit for bit.

    ``open_array(path)``: how to open each array (anything with ``shape``, ``attrs`` and
    NumPy-style indexing); default ``zarr.open_array`` on ``store``. ``only``: compare
    just these of ``paths`` (the datasets missing from the map are found against all).
    """
    import zarr

    if open_array is None:

        def open_array(path: str) -> Any:
            return zarr.open_array(store, path=path, mode="r", zarr_format=2)

    t0 = time.perf_counter()
    report = VerifyReport(source=str(source), refs=label)
    with open_hdf5(source) as f:
        h5names = _all_datasets(f)
        checked = list(only) if only is not None else paths
        for i, path in enumerate(checked):
            if progress:
                progress(path, i, len(checked))
            try:
                z = open_array(path)
            except Exception as exc:
                report.arrays.append(ArrayCheck(path, False, "virtual", f"cannot open: {exc}"))
                continue
            report.arrays.append(_check(f, path, z))
        report.missing = sorted(h5names - set(paths))
        report.skipped = _skipped(store, report.missing)
        report.missing = [m for m in report.missing if m not in report.skipped]
    report.seconds = time.perf_counter() - t0
    return report


def _skipped(store: Any, missing: list[str]) -> dict[str, str]:
    """Which of the datasets absent from the map the converter left out on purpose
    (``hyperslab:skipped`` of their group: nobody could read them), with why."""
    import zarr

    out: dict[str, str] = {}
    groups: dict[str, dict[str, Any]] = {}
    for path in missing:
        parent, _, name = path.rpartition("/")
        if parent not in groups:
            try:
                attrs: Any = zarr.open_group(store, path=parent, mode="r", zarr_format=2).attrs
                groups[parent] = dict(attrs.get(SKIPPED_ATTR) or {})
            except Exception:  # no such group in the map: the dataset is simply missing
                groups[parent] = {}
        if name in groups[parent]:
            out[path] = str(groups[parent][name])
    return out


def _all_datasets(f: h5py.File) -> set[str]:
    """Every dataset path reachable without following soft links to groups."""
    out: set[str] = set()

    def walk(g: h5py.Group, prefix: str, seen: set[int]) -> None:
        for name in g:
            link = g.get(name, getlink=True)
            try:
                obj = g[name]
            except (KeyError, OSError, ValueError, RuntimeError):
                continue
            p = f"{prefix}/{name}" if prefix else name
            if isinstance(obj, h5py.Dataset):
                out.add(p)
            elif isinstance(obj, h5py.Group) and not isinstance(link, h5py.SoftLink):
                key = hash(obj.id)
                if key not in seen:
                    walk(obj, p, seen | {key})

    walk(f["/"], "", set())
    return out


def _storage(attrs: dict[str, Any], size: int) -> str:
    if size == 0:
        return "empty"
    return "materialised" if MATERIALISED_ATTR in attrs else "virtual"


def _check(f: h5py.File, path: str, z: Any) -> ArrayCheck:
    attrs = dict(z.attrs)
    storage = _storage(attrs, int(math.prod(z.shape)))
    try:
        # external raw files (H5Pset_external) are named relative to the HDF5 file, not our cwd
        dapl = h5py.h5p.create(h5py.h5p.DATASET_ACCESS)
        dapl.set_efile_prefix(os.path.dirname(os.path.abspath(f.filename)).encode())
        dset = h5py.Dataset(h5py.h5d.open(f.id, ("/" + path).encode(), dapl=dapl))
    except KeyError:
        return ArrayCheck(path, False, storage, "no such dataset in the source")
    try:
        return _compare(dset, z, attrs, path, storage)
    except Unverifiable as exc:
        return ArrayCheck(path, False, storage, f"unverifiable: {exc}", unverifiable=True)
    except Exception as exc:  # report every failure per array, never stop the run
        return ArrayCheck(path, False, storage, f"{type(exc).__name__}: {exc}")


def _compare(
    dset: h5py.Dataset, z: Any, attrs: dict[str, Any], path: str, storage: str
) -> ArrayCheck:
    if RAW_TYPE_ATTR in attrs:
        return _compare_raw(dset, z, path, storage)
    if dset.shape is None:
        ok = bool(attrs.get("hyperslab:null_dataspace")) and z.shape == (0,)
        return ArrayCheck(path, ok, storage, "" if ok else "null dataspace not marked")
    encoding = attrs.get(ENCODING_ATTR)
    want_shape = tuple(dset.shape) + (dset.dtype.subdtype[1] if dset.dtype.subdtype else ())
    if tuple(z.shape) != want_shape:
        return ArrayCheck(path, False, storage, f"shape {tuple(z.shape)} != {want_shape}")
    if not dset.shape:
        return _compare_slab(dset, z, (), attrs, encoding, path, storage, dset.dtype.itemsize)
    itemsize = max(1, dset.dtype.itemsize if not dset.dtype.hasobject else 64)
    row = max(1, math.prod(dset.shape[1:]) * itemsize)
    step = max(1, _SLAB_BYTES // row)
    nbytes = 0
    for start in range(0, dset.shape[0], step):
        sel = (slice(start, min(start + step, dset.shape[0])),)
        res = _compare_slab(dset, z, sel, attrs, encoding, path, storage, 0)
        if not res.ok and not res.unverifiable:
            res.detail = f"rows {sel[0].start}:{sel[0].stop}: {res.detail}"
            return res
        nbytes += res.nbytes
    return ArrayCheck(path, True, storage, "", nbytes)


def _compare_slab(
    dset: h5py.Dataset,
    z: Any,
    sel: tuple[slice, ...],
    attrs: dict[str, Any],
    encoding: str | None,
    path: str,
    storage: str,
    _: int,
) -> ArrayCheck:
    want = _read_truth(dset, sel)
    got = z[sel] if sel else z[()]
    got = np.asarray(got)
    if encoding is None:
        if DTYPE_ATTR in attrs:
            real = dtype_from_json(attrs[DTYPE_ATTR])
            got = np.ascontiguousarray(got).view(real).reshape(got.shape)
        want_b = np.ascontiguousarray(want)
        got_b = np.ascontiguousarray(got)
        if want_b.dtype != got_b.dtype and want_b.dtype.base != got_b.dtype:
            return ArrayCheck(path, False, storage, f"dtype {got_b.dtype} != {want_b.dtype}")
        if value_bytes(want_b) != value_bytes(got_b):
            bad = _first_difference(want_b, got_b)
            return ArrayCheck(path, False, storage, f"values differ (first at {bad})")
        return ArrayCheck(path, True, storage, "", want_b.nbytes)
    if needs_decoding(attrs):  # ragged sequences, records with vlen members: as readers see them
        why = first_difference(want, h5py_values(got, attrs))
        if why is not None:
            return ArrayCheck(path, False, storage, why)
        return ArrayCheck(path, True, storage, "", int(want.size) * 8)
    flat_w, flat_g = want.reshape(-1), got.reshape(-1)
    decode = _decoder(encoding, attrs, dset.file)
    for i, (w, g) in enumerate(zip(flat_w, flat_g, strict=True)):
        if decode(w) != g:
            return ArrayCheck(path, False, storage, f"element {i}: {g!r} != {decode(w)!r}")
    return ArrayCheck(
        path,
        True,
        storage,
        "",
        int(sum(len(x) if isinstance(x, bytes | str) else 8 for x in flat_g)),
    )


def _read_truth(dset: h5py.Dataset, sel: tuple[slice, ...]) -> np.ndarray:
    """What the source holds: h5py, or PyTables where only it has the filter (LZO)."""
    try:
        return np.asarray(dset[sel] if sel else dset[()])
    except OSError as exc:
        if "plugin" not in str(exc) and "filter" not in str(exc):
            raise
        try:
            import tables

            with tables.open_file(dset.file.filename, "r") as tf:
                node = tf.get_node(dset.name)
                data = np.asarray(node[sel[0]] if sel else node.read())
        except Exception:
            raise Unverifiable(
                f"neither h5py nor PyTables can read it here ({str(exc)[:120]}); "
                "no independent reference to compare with"
            ) from None
        out = np.empty(data.shape, dtype=dset.dtype)
        if dset.dtype.names:
            for name in dset.dtype.names:
                out[name] = data[name]
        else:
            out[...] = data
        return out


def value_bytes(a: np.ndarray) -> bytes:
    """The bytes of every value, field by field: padding between compound members is
    not data (HDF5 files hold whatever was in memory there; h5py returns zeros)."""
    if a.dtype.fields is None:
        return np.ascontiguousarray(a).tobytes()
    return b"".join(value_bytes(a[name]) for name in a.dtype.names or ())


def _compare_raw(dset: h5py.Dataset, z: Any, path: str, storage: str) -> ArrayCheck:
    """Types h5py cannot convert (H5T_TIME, IEEE quad): compare with the stored bytes."""
    dcpl = dset.id.get_create_plist()
    if dcpl.get_nfilters():
        return ArrayCheck(
            path,
            False,
            storage,
            "h5py cannot read this type and its storage is filtered: unverifiable",
        )
    got = np.ascontiguousarray(z[...]).tobytes()
    layout = dcpl.get_layout()
    if layout == h5py.h5d.CONTIGUOUS:
        off = dset.id.get_offset()
        if off is None:
            want = b"\0" * len(got)
        else:
            with open(dset.file.filename, "rb") as fh:
                fh.seek(off)
                want = fh.read(dset.id.get_storage_size())
    elif layout == h5py.h5d.CHUNKED:
        itemsize = dset.id.get_type().get_size()
        full = np.zeros((*tuple(dset.shape), itemsize), np.uint8)
        for idx in range(dset.id.get_num_chunks()):
            info = dset.id.get_chunk_info(idx)
            _, raw = dset.id.read_direct_chunk(info.chunk_offset)
            block = np.frombuffer(raw, np.uint8).reshape((*tuple(dset.chunks), itemsize))
            sel = tuple(
                slice(o, min(o + c, s))
                for o, c, s in zip(info.chunk_offset, dset.chunks, dset.shape, strict=True)
            )
            full[sel] = block[tuple(slice(0, x.stop - x.start) for x in sel)]
        want = full.tobytes()
    else:
        return ArrayCheck(
            path, False, storage, "h5py cannot read this type in a compact layout: unverifiable"
        )
    ok = want == got
    return ArrayCheck(path, ok, storage, "" if ok else "stored bytes differ", len(got))


def _decoder(encoding: str, attrs: dict[str, Any], f: h5py.File) -> Callable[[Any], Any]:
    """The stored form of one h5py element under a materialised encoding."""
    if encoding == "vlen-utf8":
        return lambda v: v.decode("utf-8", "surrogateescape") if isinstance(v, bytes) else str(v)
    if encoding == "vlen-bytes":
        return lambda v: v.encode() if isinstance(v, str) else bytes(v)
    if encoding == "vlen-array-bytes":
        inner = dtype_from_json(attrs[DTYPE_ATTR])
        return lambda v: np.ascontiguousarray(v, dtype=inner).tobytes()
    if encoding == "reference-path":
        return lambda v: str(f[v].name) if v else ""
    if encoding == "json":
        return lambda v: json.dumps(attr_to_json(v), allow_nan=True)
    raise ValueError(f"unknown {ENCODING_ATTR} {encoding!r}")


def _first_difference(a: np.ndarray, b: np.ndarray) -> Any:
    if a.shape != b.shape:
        return f"shape {b.shape} != {a.shape}"
    ua = a.reshape(-1).view(np.uint8) if a.dtype.itemsize else a
    ub = b.reshape(-1).view(np.uint8) if b.dtype.itemsize else b
    idx = int(np.argmax(ua != ub)) // max(1, a.dtype.itemsize)
    return tuple(int(i) for i in np.unravel_index(idx, a.shape)) if a.shape else ()
