"""Walk an HDF5 file and build a :class:`~hyperslab.references.refmap.RefMap`.

Chunk indexes are read with h5py's low-level ``chunk_iter`` (one pass over the
B-tree, ~1.5 s per 10^6 chunks); ``get_chunk_info(i)`` is quadratic and never
used. HDF5 dataset ``/a/b`` becomes Zarr array ``a/b``.

Anything whose stored bytes are not directly decodable as the values h5py
returns (see :mod:`hyperslab.convert.dtypes` and :mod:`hyperslab.convert.filters`)
is *materialised*: read through h5py, encoded, and carried inline in the map,
with the reason in the report. Nothing is dropped silently.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import re
from array import array
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import hdf5plugin  # noqa: F401  (registers bitshuffle/blosc/lz4/zstd... so h5py can read them)
import numcodecs
import numpy as np

from hyperslab.convert import dtypes as dt_
from hyperslab.convert.dtypes import DtypePlan, attr_to_json, fill_value_json, plan_dtype
from hyperslab.convert.filters import hdf5_pipeline_to_codecs, pipeline_summary, read_pipeline
from hyperslab.convert.nexus import DIMS, nexus_metadata, scale_dimensions
from hyperslab.errors import (
    AccessDeniedError,
    BadInputError,
    HyperslabError,
    NotFoundError,
    NotHDF5Error,
    UnsafeNameError,
    UnsupportedFeatureError,
)
from hyperslab.reading.values import zarr_fill_value
from hyperslab.references.refmap import ArrayRefs, InlineChunks, RefMap, copy_ranges

#: attribute naming why an array's chunks (some or all) are carried in the map
MATERIALISED_ATTR = "hyperslab:materialised"

__all__ = [
    "MATERIALISED_ATTR",
    "SKIPPED_ATTR",
    "BrokenLinkError",
    "ConvertOptions",
    "DatasetReport",
    "FileReport",
    "UnreadableDatasetError",
    "scan_hdf5",
]

#: HDF5 attributes that describe HDF5/netCDF plumbing, not data (dimension scales are
#: expressed through ``_ARRAY_DIMENSIONS`` instead)
_SKIP_ATTRS = {
    "DIMENSION_LIST",
    "REFERENCE_LIST",
    "CLASS",
    "NAME",
    "_Netcdf4Dimid",
    "_Netcdf4Coordinates",
    "_nc3_strict",
    "_NCProperties",
}
_CONTROL = re.compile(r"[\x00-\x1f\x7f\\]")


class BrokenLinkError(NotFoundError):
    """A soft or external link whose target does not exist."""

    code = "broken_link"


@dataclass(frozen=True)
class ConvertOptions:
    #: encoded chunks smaller than this are copied into the map (kerchunk's default is 500)
    inline_threshold: int = 500
    #: target size of the pieces a large contiguous dataset is split into
    contiguous_chunk_bytes: int = 16 * 2**20
    #: target size of chunks of materialised data that had no HDF5 chunking
    materialise_chunk_bytes: int = 4 * 2**20
    #: codec for materialised numeric data (any numcodecs config)
    materialise_codec: tuple[tuple[str, Any], ...] = (("id", "zlib"), ("level", 1))
    #: report broken links instead of failing the file
    allow_broken_links: bool = False

    def __post_init__(self) -> None:
        for name in ("inline_threshold", "contiguous_chunk_bytes", "materialise_chunk_bytes"):
            value = getattr(self, name)
            least = 0 if name == "inline_threshold" else 1
            if not isinstance(value, int) or value < least:
                where = " (--inline-threshold)" if name == "inline_threshold" else ""
                raise BadInputError(
                    f"{name}{where} must be a whole number >= {least}, not {value!r}"
                )


#: group attribute naming the datasets left out because nobody can read them here
SKIPPED_ATTR = "hyperslab:skipped"


class UnreadableDatasetError(UnsupportedFeatureError):
    """A dataset that cannot be referenced in place and that h5py cannot read either
    (its filter's plugin is missing or fails): skipped and reported, the rest converts."""


@dataclass
class DatasetReport:
    path: str
    status: str
    shape: tuple[int, ...] | None
    dtype: str
    chunks: int
    refs: int
    referenced_bytes: int
    inline_bytes: int
    filters: str
    reason: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items()}


@dataclass
class FileReport:
    source: str
    datasets: list[DatasetReport] = field(default_factory=list)
    links: list[dict[str, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    nexus: dict[str, Any] = field(default_factory=dict)

    @property
    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for d in self.datasets:
            out[d.status] = out.get(d.status, 0) + 1
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "counts": self.counts,
            "datasets": [d.to_json() for d in self.datasets],
            "links": self.links,
            "warnings": self.warnings,
            "nexus": self.nexus,
        }


def check_name(name: str, where: str) -> str:
    """A single HDF5 link name, safe as a Zarr key segment and a path segment."""
    if name in ("", ".", "..") or _CONTROL.search(name) or name.startswith(".z") or "/" in name:
        raise UnsafeNameError(
            f"{where}: HDF5 name {name!r} cannot be used as a Zarr key "
            "(empty, '.', '..', control characters, '/', '\\' or a '.z' prefix)"
        )
    return name


def open_hdf5(source: str | Path) -> h5py.File:
    """Open an HDF5 file read-only with named errors for the usual failures."""
    path = str(source)
    try:
        if "://" in path and not path.startswith("file://"):
            import fsspec

            fh = fsspec.open(path, "rb").open()
            return h5py.File(fh, "r")
        local = path[7:] if path.startswith("file://") else path
        if os.path.isdir(local):
            raise BadInputError(f"{local} is a directory, not an HDF5 file")
        if not os.path.exists(local):
            raise NotFoundError(f"{local} does not exist")
        if not os.access(local, os.R_OK):
            raise AccessDeniedError(f"permission denied reading {local}")
        with open(local, "rb") as fh:
            head = fh.read(8)
        if not h5py.is_hdf5(local):
            what = "empty" if not head else "not an HDF5 file (no HDF5 signature)"
            raise NotHDF5Error(f"{local} is {what}")
        return h5py.File(local, "r")
    except HyperslabError:
        raise
    except PermissionError as exc:
        raise AccessDeniedError(f"permission denied reading {path}") from exc
    except FileNotFoundError as exc:
        raise NotFoundError(f"{path} does not exist") from exc
    except OSError as exc:
        raise NotHDF5Error(
            f"{path} cannot be opened as HDF5 (truncated or corrupt?): {exc}"
        ) from exc


class _Scanner:
    def __init__(
        self,
        f: h5py.File,
        url: str,
        refmap: RefMap,
        options: ConvertOptions,
        prefix: str,
        report: FileReport,
        url_for: Callable[[str], str],
    ) -> None:
        self.f = f
        self.refmap = refmap
        self.options = options
        self.prefix = prefix
        self.report = report
        self.url_for = url_for
        self.source_ids: dict[str, int] = {}
        self.readers: dict[str, Any] = {}
        self.root_file = os.path.abspath(f.filename)
        self.root_url = url

    # ------------------------------------------------------------ sources
    def source_index(self, filename: str) -> int:
        """The refmap source number of an HDF5 file (external links add sources)."""
        absname = os.path.abspath(filename)
        url = self.root_url if absname == self.root_file else self.url_for(absname)
        if url not in self.source_ids:
            if url in self.refmap.sources:
                self.source_ids[url] = self.refmap.sources.index(url)
            else:
                self.source_ids[url] = len(self.refmap.sources)
                self.refmap.sources.append(url)
        return self.source_ids[url]

    def reader(self, filename: str) -> Any:
        fh = self.readers.get(filename)
        if fh is None:
            fh = self.readers[filename] = open(filename, "rb")  # noqa: SIM115 (closed in close())
        return fh

    def read_inline(
        self, filename: str, index: np.ndarray, addr: np.ndarray, size: np.ndarray
    ) -> InlineChunks:
        """Chunks ``index[i]`` (strictly increasing) at ``addr[i]``, ``size[i]`` bytes, as columns."""
        data, offsets = read_ranges(self.reader(filename), filename, addr, size)
        return InlineChunks.from_columns(index, offsets, data)

    def close(self) -> None:
        for fh in self.readers.values():
            fh.close()

    # ------------------------------------------------------------ walking
    def zpath(self, h5name: str) -> str:
        parts = [p for p in h5name.split("/") if p]
        for p in parts:
            check_name(p, self.report.source)
        z = "/".join(parts)
        if self.prefix:
            return f"{self.prefix}/{z}" if z else self.prefix
        return z

    def walk(
        self, group: h5py.Group, zpath: str, ancestors: frozenset[tuple[str, int]] = frozenset()
    ) -> None:
        # a group hard-linked under two names is listed under both (every HDF5 path is a
        # Zarr path); only a link back to an ancestor, which would never end, is cut
        key = (os.path.abspath(group.file.filename), hash(group.id))
        if key in ancestors:
            self.refmap.groups.setdefault(zpath, {})["hyperslab:cycle_to"] = group.name
            self.report.warnings.append(f"{zpath}: link back to ancestor {group.name} not followed")
            return
        ancestors = ancestors | {key}
        self.refmap.groups[zpath] = self.attrs_of(group)
        for name in group:
            check_name(name, f"{self.report.source}:{group.name}")
            child = f"{zpath}/{name}" if zpath else name
            link = group.get(name, getlink=True)
            try:
                obj = group[name]
            except (KeyError, OSError, ValueError, RuntimeError) as exc:  # RuntimeError: link loop
                target = _link_target(link)
                msg = f"{group.name.rstrip('/')}/{name}: {type(link).__name__} to {target} is broken ({exc})"
                if not self.options.allow_broken_links:
                    raise BrokenLinkError(f"{self.report.source}: {msg}") from exc
                self.report.links.append(
                    {
                        "path": child,
                        "kind": type(link).__name__,
                        "target": target,
                        "status": "broken",
                    }
                )
                self.report.warnings.append(msg)
                continue
            if not isinstance(link, h5py.HardLink):
                self.report.links.append(
                    {
                        "path": child,
                        "kind": type(link).__name__,
                        "target": _link_target(link),
                        "status": "resolved",
                    }
                )
            if isinstance(obj, h5py.Group):
                if isinstance(link, h5py.SoftLink):
                    # h5py shows the group at the link's path too (NWB: electrodes/group):
                    # so does the map, its arrays referencing the same chunks; a link back
                    # to an ancestor is cut by walk(). Recorded where it points as well.
                    self.refmap.groups.setdefault(zpath, {}).setdefault("hyperslab:links", {})[
                        name
                    ] = link.path
                self.walk(obj, child, ancestors)
                if isinstance(link, h5py.SoftLink) and child in self.refmap.groups:
                    self.refmap.groups[child]["hyperslab:link"] = link.path
            elif isinstance(obj, h5py.Dataset):
                self.dataset(obj, child, link)
            # named datatypes are described by the datasets that use them

    def attrs_of(self, obj: h5py.HLObject) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name in obj.attrs:
            if name in _SKIP_ATTRS:
                continue
            try:
                out[name] = attr_to_json(obj.attrs[name])
            except Exception as exc:  # an unreadable attribute must not lose the data
                out[name] = None
                self.report.warnings.append(
                    f"{obj.name}: attribute {name!r} unreadable ({exc}); stored as null"
                )
        return out

    # ------------------------------------------------------------ datasets
    def dataset(self, dset: h5py.Dataset, zpath: str, link: Any) -> None:
        plan = plan_dtype(dset)
        attrs = self.attrs_of(dset)
        attrs.update(dict(plan.attrs))
        if isinstance(link, h5py.SoftLink | h5py.ExternalLink):
            attrs["hyperslab:link"] = _link_target(link)
        shape = dset.shape
        dcpl = dset.id.get_create_plist()
        layout = dcpl.get_layout()
        null_space = shape is None
        if null_space:
            attrs["hyperslab:null_dataspace"] = True
            shape = (0,)
        full_shape = tuple(shape) + plan.extra_shape
        codecs: list[dict[str, Any]] = []
        pipeline = read_pipeline(dcpl)
        reason = plan.materialise_reason
        if dset.is_virtual:
            reason = reason or "virtual dataset (mapped through h5py)"
        if reason is None and pipeline:
            try:
                codecs = hdf5_pipeline_to_codecs(
                    pipeline, plan.h5_dtype, tuple(dset.chunks or shape)
                )
            except UnsupportedFeatureError as exc:
                reason = exc.message
        if layout == h5py.h5d.COMPACT and reason is None:
            reason = "compact layout (data lives in the object header)"
        external = layout == h5py.h5d.CONTIGUOUS and dcpl.get_external_count() > 0
        ext_chunks = (
            self.external_chunks(dset, full_shape, plan) if external and reason is None else None
        )
        if external and reason is None and ext_chunks is None:
            reason = "external raw data segments do not hold whole rows"
        if layout == h5py.h5d.CHUNKED and not dset.is_virtual:
            chunks = tuple(dset.chunks) + plan.extra_shape
        elif ext_chunks is not None:
            chunks = ext_chunks
        elif reason is None and layout == h5py.h5d.CONTIGUOUS:
            chunks = self.contiguous_chunks(full_shape, plan)
        else:
            chunks = self.materialise_chunks(full_shape, plan)
        chunks = tuple(max(1, c) for c in chunks)
        if reason is not None:
            codecs = self.materialise_codecs(plan)
        zarray = {
            "zarr_format": 2,
            "shape": list(full_shape),
            "chunks": list(chunks),
            "dtype": plan.zarr_dtype_json,
            "compressor": None,
            "fill_value": fill_value_json(_fillvalue(dset), plan),
            "filters": codecs or None,
            "order": "C",
        }
        dims = scale_dimensions(dset)
        if dims is not None:
            attrs[DIMS] = dims
        arr = ArrayRefs(path=zpath, zarray=zarray, attrs=attrs, reason=reason)
        try:
            if null_space or math.prod(full_shape) == 0:
                pass
            elif reason is not None:
                self.materialise(dset, arr, plan)
            elif layout == h5py.h5d.CHUNKED:
                self.chunked(dset, arr)
            elif external:
                self.external(dset, arr, plan)
            else:
                self.contiguous(dset, arr, plan)
        except UnreadableDatasetError as exc:
            self.skip(zpath, full_shape, plan, pipeline, exc.message)
            return
        if arr.reason is not None:
            arr.attrs[MATERIALISED_ATTR] = arr.reason
        self.refmap.arrays[zpath] = arr
        self.report.datasets.append(
            DatasetReport(
                path=zpath,
                status=arr.status,
                shape=None if null_space else full_shape,
                dtype=str(plan.h5_dtype),
                chunks=arr.n_chunks,
                refs=arr.n_refs,
                referenced_bytes=arr.referenced_bytes(),
                inline_bytes=arr.inline_bytes(),
                filters=pipeline_summary(pipeline),
                reason=reason,
            )
        )

    def skip(
        self,
        zpath: str,
        shape: tuple[int, ...],
        plan: DtypePlan,
        pipeline: Any,
        why: str,
    ) -> None:
        """Leave out a dataset nobody can read here, say so in the report, and record it
        in its group's ``hyperslab:skipped`` (``verify`` reports it as skipped, not
        missing): the rest of the file still converts."""
        parent, _, name = zpath.rpartition("/")
        self.refmap.groups.setdefault(parent, {}).setdefault(SKIPPED_ATTR, {})[name] = why
        self.report.datasets.append(
            DatasetReport(
                path=zpath,
                status="skipped",
                shape=shape,
                dtype=str(plan.h5_dtype),
                chunks=0,
                refs=0,
                referenced_bytes=0,
                inline_bytes=0,
                filters=pipeline_summary(pipeline),
                reason=why,
            )
        )

    def chunked(self, dset: h5py.Dataset, arr: ArrayRefs) -> None:
        # the chunk index straight into int64 buffers: no per-chunk Python objects are kept
        offs, masks, addrs, sizes = array("q"), array("q"), array("q"), array("q")
        put_offs, put_mask, put_addr, put_size = (
            offs.extend,
            masks.append,
            addrs.append,
            sizes.append,
        )

        def visit(info: Any) -> None:
            chunk_offset, filter_mask, byte_offset, size = info
            put_offs(chunk_offset)
            put_mask(filter_mask)
            put_addr(byte_offset)
            put_size(size)

        dset.id.chunk_iter(visit)
        if not addrs:
            return
        n = len(addrs)
        h5chunks = np.array(dset.chunks, dtype=np.int64)
        coords = np.frombuffer(offs, dtype=np.int64).reshape(n, -1) // h5chunks
        extra = len(arr.zarray["shape"]) - coords.shape[1]
        if extra:
            coords = np.concatenate([coords, np.zeros((n, extra), np.int64)], axis=1)
        lin = np.ravel_multi_index(tuple(coords.T), arr.grid).astype(np.int64)
        del coords
        addr = np.frombuffer(addrs, dtype=np.int64)
        size = np.frombuffer(sizes, dtype=np.int64)
        mask = np.frombuffer(masks, dtype=np.int64)
        # h5py builds a new File object on every `dset.file`: look the name up once, not per chunk
        filename = dset.file.filename
        src = self.source_index(filename)
        keep = mask == 0
        if not keep.all():
            # a chunk that skipped an optional filter: the array's pipeline doesn't apply
            for i in np.nonzero(~keep)[0]:
                self.materialise_one(dset, arr, int(lin[i]))
            arr.reason = f"{int((~keep).sum())} chunk(s) skipped an optional filter (filter_mask)"
        small = keep & (size < self.options.inline_threshold)
        if small.any():
            sel = np.flatnonzero(small)
            sel = sel[np.argsort(lin[sel], kind="stable")]
            inline = self.read_inline(filename, lin[sel], addr[sel], size[sel])
            inline.update(arr.inline)  # chunks materialised above (disjoint from these)
            arr.inline = inline
        ref = keep & ~small
        arr.index, arr.offset, arr.length = lin[ref], addr[ref], size[ref]
        arr.source = np.full(arr.index.size, src, np.int32)
        arr.sort()

    def external(self, dset: h5py.Dataset, arr: ArrayRefs, plan: DtypePlan) -> None:
        """Contiguous data kept in external raw files (H5Pset_external): reference those."""
        dcpl = dset.id.get_create_plist()
        base = os.path.dirname(os.path.abspath(dset.file.filename))
        row = max(1, math.prod(arr.zarray["shape"][1:]) * plan.zarr_dtype.itemsize)
        rows_per_chunk = arr.zarray["chunks"][0]
        idx, src, off, ln = [], [], [], []
        lin = 0
        for i in range(dcpl.get_external_count()):
            name, offset, size = dcpl.get_external(i)
            path = os.path.join(base, os.fsdecode(name))
            if not os.path.exists(path):
                raise BrokenLinkError(
                    f"{self.report.source}:{dset.name}: external raw data file {path} "
                    "does not exist"
                )
            sid = self.source_index(path)
            nchunks = size // (row * rows_per_chunk) if size < 2**62 else arr.n_chunks - lin
            for k in range(nchunks):
                if lin >= arr.n_chunks:
                    break
                idx.append(lin)
                src.append(sid)
                off.append(offset + k * row * rows_per_chunk)
                ln.append(row * rows_per_chunk)
                lin += 1
        arr.index = np.array(idx, np.int64)
        arr.source = np.array(src, np.int32)
        arr.offset = np.array(off, np.int64)
        arr.length = np.array(ln, np.int64)

    def external_chunks(
        self, dset: h5py.Dataset, shape: tuple[int, ...], plan: DtypePlan
    ) -> tuple[int, ...] | None:
        """Rows per piece so that every external segment holds whole pieces, or None."""
        dcpl = dset.id.get_create_plist()
        row = max(1, math.prod(shape[1:]) * plan.zarr_dtype.itemsize)
        rows = 0
        for i in range(dcpl.get_external_count()):
            _, _, size = dcpl.get_external(i)
            if size >= 2**62:  # H5F_UNLIMITED: the rest of the data
                continue
            if size % row:
                return None
            rows = math.gcd(rows, size // row)
        if not shape or rows == 0:
            return None
        return (min(rows, shape[0]), *shape[1:])

    def contiguous(self, dset: h5py.Dataset, arr: ArrayRefs, plan: DtypePlan) -> None:
        offset = dset.id.get_offset()
        if offset is None:  # storage never allocated: every value is the fill value
            return
        nbytes = dset.id.get_storage_size()
        n = arr.n_chunks
        per = nbytes // n
        filename = dset.file.filename
        src = self.source_index(filename)
        if per * n != nbytes:
            raise UnsupportedFeatureError(
                f"{dset.name}: contiguous storage size {nbytes} is not a multiple of {n} pieces"
            )
        starts = offset + per * np.arange(n, dtype=np.int64)
        if per < self.options.inline_threshold:
            arr.inline = self.read_inline(
                filename, np.arange(n, dtype=np.int64), starts, np.full(n, per, np.int64)
            )
            return
        arr.index = np.arange(n, dtype=np.int64)
        arr.offset = starts
        arr.length = np.full(n, per, np.int64)
        arr.source = np.full(n, src, np.int32)

    def contiguous_chunks(self, shape: tuple[int, ...], plan: DtypePlan) -> tuple[int, ...]:
        """Split contiguous storage along axis 0 into equal, exactly dividing pieces."""
        if not shape:
            return ()
        itemsize = plan.zarr_dtype.itemsize
        row = max(1, math.prod(shape[1:]) * itemsize)
        target = self.options.contiguous_chunk_bytes
        if shape[0] * row <= target:
            return shape
        best = 1
        for d in range(min(shape[0], max(1, target // row)), 0, -1):
            if shape[0] % d == 0:
                best = d
                break
        if best * row < target // 64:
            return shape  # a prime-ish length: one piece beats thousands of tiny ones
        return (best, *shape[1:])

    def materialise_chunks(self, shape: tuple[int, ...], plan: DtypePlan) -> tuple[int, ...]:
        if not shape:
            return ()
        itemsize = plan.zarr_dtype.itemsize if plan.kind in ("native", "void") else 64
        row = max(1, math.prod(shape[1:]) * itemsize)
        rows = max(1, min(shape[0], self.options.materialise_chunk_bytes // row))
        return (rows, *shape[1:])

    def materialise_codecs(self, plan: DtypePlan) -> list[dict[str, Any]]:
        compress = dict(self.options.materialise_codec)
        if plan.kind in ("native", "void"):
            return [compress]
        first = "vlen-bytes" if plan.kind in ("vlen-bytes", "vlen-array") else "vlen-utf8"
        return [{"id": first}, compress]

    # --------------------------------------------------------- materialise
    def materialise(self, dset: h5py.Dataset, arr: ArrayRefs, plan: DtypePlan) -> None:
        for lin in range(arr.n_chunks):
            self.materialise_one(dset, arr, lin, plan)

    def materialise_one(
        self, dset: h5py.Dataset, arr: ArrayRefs, lin: int, plan: DtypePlan | None = None
    ) -> None:
        plan = plan or plan_dtype(dset)
        chunks = arr.zarray["chunks"]
        shape = arr.zarray["shape"]
        h5ndim = len(shape) - len(plan.extra_shape)
        if arr.grid:
            coords = np.unravel_index(lin, arr.grid)
            sel = tuple(
                slice(c * k, min((c + 1) * k, s))
                for c, k, s in zip(coords, chunks, shape, strict=True)
            )
        else:
            sel = ()
        try:
            values = np.asarray(dset[sel[:h5ndim]] if h5ndim else dset[()])
        except (OSError, TypeError, ValueError) as exc:
            why = arr.reason or "cannot be referenced in place"
            raise UnreadableDatasetError(
                f"{self.report.source}:{dset.name}: {why}, and h5py cannot read it to materialise "
                f"it either ({exc})",
                dataset=dset.name,
            ) from exc
        block = encode_block(values, plan, tuple(chunks), arr.zarray, dset.file)
        if block is not None:
            arr.inline[lin] = block


#: holes up to this size between wanted byte ranges are read through rather than skipped
_READ_GAP = 4096
#: at most about this much is read into memory at once by read_ranges
_READ_BATCH = 32 << 20


def read_ranges(
    fh: Any, filename: str, addr: np.ndarray, size: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Read many byte ranges of one file.

    Returns ``(data, offsets)``: range i is ``data[offsets[i]:offsets[i + 1]]``.

    Ranges are sorted by address and merged into blocks (gaps up to ``_READ_GAP``
    are read through), each block is read with one ``readinto`` and the ranges are
    cut out with numpy, so 10^6 tiny chunks cost a few reads, not 10^6 seek+read
    calls and 10^6 ``bytes`` objects. Raises :class:`NotHDF5Error` if a range lies
    past the end of the file.
    """
    addr = np.asarray(addr, np.int64)
    size = np.asarray(size, np.int64)
    n = int(addr.size)
    offsets = np.zeros(n + 1, np.int64)
    np.cumsum(size, out=offsets[1:])
    out = np.empty(int(offsets[-1]), np.uint8)
    if n == 0:
        return out, offsets
    # chunk_iter lists chunks in address order more often than not: skip the sort then
    ordered = bool((addr[1:] >= addr[:-1]).all())
    order = np.arange(n) if ordered else np.argsort(addr, kind="stable")
    a = addr if ordered else addr[order]
    end = a + size[order]
    reach = np.maximum.accumulate(end)  # end of the ranges read so far
    new_block = np.ones(n, bool)
    new_block[1:] = (a[1:] > reach[:-1] + _READ_GAP) | (
        a[1:] // _READ_BATCH != a[:-1] // _READ_BATCH
    )
    first = np.flatnonzero(new_block)  # in address order: first range of each block
    last = np.append(first[1:], n)  # one past its last range
    lo, hi = a[first], np.maximum.reduceat(end, first)
    length = hi - lo
    # consecutive blocks in batches of about _READ_BATCH bytes
    batch = (np.cumsum(length) - length) // _READ_BATCH
    cuts = [0, *(np.flatnonzero(np.diff(batch)) + 1).tolist(), int(first.size)]
    for b0, b1 in itertools.pairwise(cuts):
        at = np.zeros(b1 - b0 + 1, np.int64)  # where each block goes in buf
        np.cumsum(length[b0:b1], out=at[1:])
        buf = np.empty(int(at[-1]), np.uint8)
        view = buf.data
        for j, (start, stop) in enumerate(zip(lo[b0:b1].tolist(), hi[b0:b1].tolist(), strict=True)):
            fh.seek(start)
            want = stop - start
            got = fh.readinto(view[int(at[j]) : int(at[j]) + want]) or 0
            if got != want:
                r0, r1 = int(first[b0 + j]), int(last[b0 + j])
                bad = r0 + int(np.argmax(end[r0:r1] > start + got))
                raise NotHDF5Error(
                    f"{filename} is truncated: chunk at {int(a[bad])}+{int(size[order[bad]])} "
                    "is past the end"
                )
        r0, r1 = int(first[b0]), int(last[b1 - 1])  # the ranges of this batch
        block = np.repeat(np.arange(b1 - b0), last[b0:b1] - first[b0:b1])
        rows = order[r0:r1]
        copy_ranges(
            buf, a[r0:r1] - lo[b0:b1][block] + at[:-1][block], out, offsets[rows], size[rows]
        )
    return out, offsets


def encode_block(
    values: np.ndarray,
    plan: DtypePlan,
    chunks: tuple[int, ...],
    zarray: dict[str, Any],
    h5file: h5py.File | None,
) -> bytes | None:
    """Encode values as one full Zarr chunk with the array's codecs (None: all fill value)."""
    pad = [(0, c - s) for c, s in zip(chunks, values.shape, strict=True)]
    if plan.kind in ("native", "void"):
        raw = np.ascontiguousarray(
            values, dtype=plan.h5_dtype.base if plan.extra_shape else plan.h5_dtype
        )
        if plan.kind == "void":
            raw = raw.view(plan.zarr_dtype).reshape(raw.shape)
        if any(p[1] for p in pad):
            full = np.empty(chunks, raw.dtype)
            full[...] = zarr_fill_value(zarray, raw.dtype)
            full[tuple(slice(0, s) for s in raw.shape)] = raw
            raw = full
        data: Any = raw.tobytes()
    else:
        obj = np.empty(values.shape, dtype=object)
        flat_in, flat_out = values.reshape(-1), obj.reshape(-1)
        for i, v in enumerate(flat_in):
            flat_out[i] = _object_value(v, plan, h5file)
        if any(p[1] for p in pad):
            full = np.empty(chunks, dtype=object)
            full[...] = "" if plan.kind in ("vlen-str", "reference", "json") else b""
            sizes: tuple[int, ...] = obj.shape
            full[tuple(slice(0, n) for n in sizes)] = obj
            obj = full
        data = obj
    for cfg in zarray["filters"] or []:
        data = numcodecs.get_codec(dict(cfg)).encode(data)
    return bytes(data)


def _object_value(v: Any, plan: DtypePlan, h5file: h5py.File | None) -> Any:
    if plan.kind == "vlen-str":
        return v.decode("utf-8", "surrogateescape") if isinstance(v, bytes) else str(v)
    if plan.kind == "vlen-bytes":
        return bytes(v) if not isinstance(v, str) else v.encode("utf-8")
    if plan.kind == "vlen-array":
        inner = dt_.dtype_from_json(dict(plan.attrs)[dt_.DTYPE_ATTR])
        return np.ascontiguousarray(v, dtype=inner).tobytes()
    if plan.kind == "reference":
        if not v or h5file is None:
            return ""
        try:
            return str(h5file[v].name)
        except Exception:
            return ""
    return json.dumps(attr_to_json(v), allow_nan=True)


def _fillvalue(dset: h5py.Dataset) -> Any:
    try:
        return dset.fillvalue
    except Exception:
        return None


def _link_target(link: Any) -> str:
    if isinstance(link, h5py.ExternalLink):
        return f"{link.filename}:{link.path}"
    if isinstance(link, h5py.SoftLink):
        return str(link.path)
    return "(hard link)"


def scan_hdf5(
    source: str | Path,
    refmap: RefMap,
    *,
    url: str,
    options: ConvertOptions | None = None,
    prefix: str = "",
    url_for: Callable[[str], str] | None = None,
) -> FileReport:
    """Add one HDF5 file's hierarchy to ``refmap`` (under ``prefix``) and report what was done.

    ``url`` is how the map refers to this file; ``url_for(abs_path)`` gives the URL
    of other files that external links reach (default: their absolute path).
    """
    options = options or ConvertOptions()
    report = FileReport(source=str(source))
    with open_hdf5(source) as f:
        scanner = _Scanner(f, url, refmap, options, prefix, report, url_for or (lambda p: p))
        try:
            scanner.walk(f["/"], prefix)
            report.nexus = nexus_metadata(f, prefix)
        except HyperslabError:
            raise
        except OSError as exc:
            raise NotHDF5Error(
                f"{source}: HDF5 error while reading ({exc}); is the file truncated?"
            ) from exc
        finally:
            scanner.close()
    skipped = [d for d in report.datasets if d.status == "skipped"]
    if skipped and len(skipped) == len(report.datasets):
        # nothing of the file would be readable: refuse it rather than write an empty map
        raise UnsupportedFeatureError(skipped[0].reason or "unreadable", dataset=skipped[0].path)
    return report


def iter_group_paths(refmap: RefMap) -> Iterator[str]:
    yield from sorted(refmap.groups)
