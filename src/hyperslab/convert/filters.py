"""HDF5 filter pipelines → numcodecs codec pipelines that decode the same bytes.

A reference points zarr at a chunk's bytes exactly as HDF5 stored them, so the zarr
pipeline must undo every HDF5 filter bit-exactly. :func:`hdf5_pipeline_to_codecs`
returns numcodecs configs in *encode* order (the order HDF5 applied the filters when
writing), ready to be a zarr v2 ``filters`` list with ``compressor: null``. A filter
with no exact decoder raises :class:`~hyperslab.errors.UnsupportedFeatureError`; the
caller then materialises the dataset and reports the reason. It never returns a
pipeline that might decode wrongly.

One pipeline does not cover every chunk: HDF5 skips an *optional* filter that fails
on a chunk (LZF or Blosc on incompressible data, for instance) and records that in the
chunk's ``filter_mask``. Such a chunk must be materialised (read through h5py and
re-encoded); see :func:`chunk_pipeline_ok`.

Not detectable here: a dataset created with ``H5D_CHUNK_DONT_FILTER_PARTIAL_CHUNKS``
stores its partial edge chunks unfiltered, and h5py offers no way to query that
option; the converter's verification step is what catches it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import h5py
import numcodecs
import numcodecs.blosc
import numpy as np

from hyperslab.convert.codecs import ScaleOffsetH5, bitshuffle_default_block_size, register_all
from hyperslab.errors import UnsupportedFeatureError

__all__ = [
    "FILTER_NAMES",
    "FilterSpec",
    "chunk_pipeline_ok",
    "hdf5_pipeline_to_codecs",
    "pipeline_summary",
    "read_pipeline",
]

FILTER_DEFLATE = 1
FILTER_SHUFFLE = 2
FILTER_FLETCHER32 = 3
FILTER_SZIP = 4
FILTER_NBIT = 5
FILTER_SCALEOFFSET = 6
FILTER_LZO = 305
FILTER_BZIP2 = 307
FILTER_LZF = 32000
FILTER_BLOSC = 32001
FILTER_LZ4 = 32004
FILTER_BITSHUFFLE = 32008
FILTER_ZSTD = 32015
FILTER_BLOSC2 = 32026

FILTER_NAMES: dict[int, str] = {
    FILTER_DEFLATE: "gzip",
    FILTER_SHUFFLE: "shuffle",
    FILTER_FLETCHER32: "fletcher32",
    FILTER_SZIP: "szip",
    FILTER_NBIT: "nbit",
    FILTER_SCALEOFFSET: "scaleoffset",
    FILTER_LZO: "lzo",
    FILTER_BZIP2: "bzip2",
    FILTER_LZF: "lzf",
    FILTER_BLOSC: "blosc",
    FILTER_LZ4: "lz4",
    FILTER_BITSHUFFLE: "bitshuffle",
    FILTER_ZSTD: "zstd",
    FILTER_BLOSC2: "blosc2",
}

# Blosc1 compressor codes as stored in cd_values[6] by the HDF5 blosc filter.
_BLOSC_CNAMES = {0: "blosclz", 1: "lz4", 2: "lz4hc", 3: "snappy", 4: "zlib", 5: "zstd"}
_BITSHUFFLE_CNAMES = {0: "", 2: "lz4", 3: "zstd"}


@dataclass(frozen=True)
class FilterSpec:
    """One entry of an HDF5 filter pipeline, as ``H5Pget_filter`` reports it."""

    filter_id: int
    flags: int
    cd_values: tuple[int, ...]
    name: str

    @property
    def optional(self) -> bool:
        """HDF5 may skip this filter for a chunk (``H5Z_FLAG_OPTIONAL``)."""
        return bool(self.flags & h5py.h5z.FLAG_OPTIONAL)


def read_pipeline(dcpl: h5py.h5p.PropDCID) -> list[FilterSpec]:
    """The filter pipeline of a dataset creation property list, in HDF5's order.

    Use the dataset's own plist (``dset.id.get_create_plist()``): its cd_values carry
    the "local" parameters HDF5 filled in for that dataset, which decoding needs."""
    specs = []
    for index in range(dcpl.get_nfilters()):
        filter_id, flags, cd_values, name = dcpl.get_filter(index)
        if isinstance(name, bytes):
            name = name.decode("utf-8", "replace")
        specs.append(
            FilterSpec(int(filter_id), int(flags), tuple(int(v) for v in cd_values), str(name))
        )
    return specs


def chunk_pipeline_ok(filter_mask: int) -> bool:
    """Whether a chunk went through the whole pipeline (``filter_mask`` from
    ``dset.id.chunk_iter``/``get_chunk_info``).

    A set bit *i* means HDF5 skipped filter *i* for this chunk, so the dataset's codec
    pipeline does not decode it. The caller must materialise such a chunk: read it
    through h5py and store re-encoded bytes (or raw bytes) instead of a reference."""
    return filter_mask == 0


def _unsupported(spec: FilterSpec, why: str) -> UnsupportedFeatureError:
    return UnsupportedFeatureError(
        f"HDF5 filter {spec.filter_id} ({spec.name or FILTER_NAMES.get(spec.filter_id, '?')}) "
        f"has no decoder: {why}",
        filter_id=spec.filter_id,
        filter_name=spec.name,
        reason=why,
    )


def _cd(spec: FilterSpec, index: int, default: int) -> int:
    return spec.cd_values[index] if len(spec.cd_values) > index else default


class _Stage:
    """What is known about the bytes entering the next filter (encode direction)."""

    def __init__(self, nbytes: int) -> None:
        self.nbytes: int | None = nbytes
        self.is_raw = True  # still the chunk's typed bytes, untouched


def _map_one(spec: FilterSpec, dtype: np.dtype[Any], stage: _Stage) -> list[dict[str, Any]]:
    handler = _HANDLERS.get(spec.filter_id)
    if handler is None:
        raise _unsupported(spec, "no exact numcodecs decoder is known for this filter")
    return handler(spec, dtype.itemsize, stage)


def _deflate(spec: FilterSpec, itemsize: int, stage: _Stage) -> list[dict[str, Any]]:
    stage.nbytes, stage.is_raw = None, False
    return [{"id": "zlib", "level": _cd(spec, 0, 6)}]


def _shuffle(spec: FilterSpec, itemsize: int, stage: _Stage) -> list[dict[str, Any]]:
    # HDF5 stores the datatype size as cd_values[0]; for compound and array types that
    # is the whole type's size, which is also numpy's itemsize.
    elementsize = _cd(spec, 0, itemsize)
    known_whole = stage.nbytes is not None and stage.nbytes % max(elementsize, 1) == 0
    stage.is_raw = False
    if known_whole:
        return [{"id": "shuffle", "elementsize": elementsize}]
    # After a length-changing filter HDF5 leaves the trailing partial element
    # unshuffled; numcodecs' shuffle refuses such buffers, ours reproduces HDF5.
    return [{"id": "hyperslab.shuffle", "elementsize": elementsize}]


def _fletcher32(spec: FilterSpec, itemsize: int, stage: _Stage) -> list[dict[str, Any]]:
    if stage.nbytes is not None:
        stage.nbytes += 4
    stage.is_raw = False
    return [{"id": "fletcher32"}]


def _szip(spec: FilterSpec, itemsize: int, stage: _Stage) -> list[dict[str, Any]]:
    if len(spec.cd_values) < 4:
        raise _unsupported(spec, "szip parameters missing from the dataset's pipeline")
    mask, ppb, bpp, pps = spec.cd_values[:4]
    stage.nbytes, stage.is_raw = None, False
    return [
        {
            "id": "hyperslab.szip",
            "options_mask": mask,
            "pixels_per_block": ppb,
            "bits_per_pixel": bpp,
            "pixels_per_scanline": pps,
        }
    ]


def _nbit(spec: FilterSpec, itemsize: int, stage: _Stage) -> list[dict[str, Any]]:
    # cd_values[1] is HDF5's "need not compress" flag: set when every type in the
    # dataset uses its full precision, in which case the filter passes data through.
    if _cd(spec, 1, 0):
        return []
    raise _unsupported(
        spec,
        "N-bit packs reduced-precision types whose values only HDF5's datatype "
        "conversion (precision/offset, sign extension) turns into numpy values",
    )


def _scaleoffset(spec: FilterSpec, itemsize: int, stage: _Stage) -> list[dict[str, Any]]:
    reason = ScaleOffsetH5.unsupported_reason(spec.cd_values)
    if reason:
        raise _unsupported(spec, reason)
    cd = list(spec.cd_values)
    if not stage.is_raw or stage.nbytes != cd[2] * cd[4]:
        raise _unsupported(spec, "scaleoffset is not the first filter of the pipeline")
    stage.nbytes, stage.is_raw = None, False
    return [{"id": "hyperslab.scaleoffset", "cd_values": cd}]


def _lzo(spec: FilterSpec, itemsize: int, stage: _Stage) -> list[dict[str, Any]]:
    size = stage.nbytes or 0
    stage.nbytes, stage.is_raw = None, False
    return [{"id": "hyperslab.lzo", "size": size, "checksum": True}]


def _bzip2(spec: FilterSpec, itemsize: int, stage: _Stage) -> list[dict[str, Any]]:
    stage.nbytes, stage.is_raw = None, False
    return [{"id": "bz2", "level": min(max(_cd(spec, 0, 9), 1), 9)}]


def _lzf(spec: FilterSpec, itemsize: int, stage: _Stage) -> list[dict[str, Any]]:
    size = stage.nbytes or _cd(spec, 2, 0)
    stage.nbytes, stage.is_raw = None, False
    return [{"id": "hyperslab.lzf", "size": size}]


def _blosc(spec: FilterSpec, itemsize: int, stage: _Stage) -> list[dict[str, Any]]:
    # Every Blosc1 chunk header names its own compressor, shuffle and type size, so
    # numcodecs' Blosc decodes any of them; cd_values only matter for re-encoding.
    code = _cd(spec, 6, 0)
    cname = _BLOSC_CNAMES.get(code)
    if cname is None or cname not in numcodecs.blosc.list_compressors():
        raise _unsupported(spec, f"blosc compressor {cname or code} is not in numcodecs' Blosc")
    stage.nbytes, stage.is_raw = None, False
    return [
        {
            "id": "blosc",
            "cname": cname,
            "clevel": _cd(spec, 4, 5),
            "shuffle": _cd(spec, 5, 1),
            "blocksize": 0,
            "typesize": _cd(spec, 2, itemsize) or None,
        }
    ]


def _lz4(spec: FilterSpec, itemsize: int, stage: _Stage) -> list[dict[str, Any]]:
    stage.nbytes, stage.is_raw = None, False
    return [{"id": "hyperslab.lz4h5", "blocksize": _cd(spec, 0, 0)}]


def _bitshuffle(spec: FilterSpec, itemsize: int, stage: _Stage) -> list[dict[str, Any]]:
    elementsize = _cd(spec, 2, itemsize)
    compression = _cd(spec, 4, 0)
    if compression not in _BITSHUFFLE_CNAMES:
        raise _unsupported(spec, f"bitshuffle compression code {compression}")
    blocksize = _cd(spec, 3, 0)
    if compression == 0 and blocksize == 0:
        blocksize = bitshuffle_default_block_size(elementsize)
    if compression:
        stage.nbytes = None
    stage.is_raw = False
    return [
        {
            "id": "hyperslab.bitshuffle",
            "elementsize": elementsize,
            "blocksize": blocksize,
            "compression": compression,
            "level": _cd(spec, 5, 0) if compression == 3 else 0,
        }
    ]


def _zstd(spec: FilterSpec, itemsize: int, stage: _Stage) -> list[dict[str, Any]]:
    stage.nbytes, stage.is_raw = None, False
    return [{"id": "zstd", "level": _cd(spec, 0, 3)}]


def _blosc2(spec: FilterSpec, itemsize: int, stage: _Stage) -> list[dict[str, Any]]:
    stage.nbytes, stage.is_raw = None, False
    return [
        {
            "id": "hyperslab.blosc2",
            "typesize": _cd(spec, 2, itemsize) or 1,
            "clevel": _cd(spec, 4, 5),
            "shuffle": _cd(spec, 5, 1),
            "compressor": _cd(spec, 6, 0),
        }
    ]


_Handler = Callable[[FilterSpec, int, _Stage], list[dict[str, Any]]]

_HANDLERS: dict[int, _Handler] = {
    FILTER_DEFLATE: _deflate,
    FILTER_SHUFFLE: _shuffle,
    FILTER_FLETCHER32: _fletcher32,
    FILTER_SZIP: _szip,
    FILTER_NBIT: _nbit,
    FILTER_SCALEOFFSET: _scaleoffset,
    FILTER_LZO: _lzo,
    FILTER_BZIP2: _bzip2,
    FILTER_LZF: _lzf,
    FILTER_BLOSC: _blosc,
    FILTER_LZ4: _lz4,
    FILTER_BITSHUFFLE: _bitshuffle,
    FILTER_ZSTD: _zstd,
    FILTER_BLOSC2: _blosc2,
}


def hdf5_pipeline_to_codecs(
    filters: Sequence[FilterSpec], dtype: np.dtype[Any], chunk_shape: tuple[int, ...]
) -> list[dict[str, Any]]:
    """numcodecs configs that undo ``filters`` exactly, in encode (HDF5) order.

    Decode by applying ``numcodecs.get_codec(cfg).decode`` for ``reversed(result)``
    to the bytes of a chunk whose ``filter_mask`` is 0. An empty list means the
    chunk's bytes are stored raw. Raises :class:`UnsupportedFeatureError` (with
    ``details["filter_id"]``) when any filter has no exact decoder."""
    register_all()  # idempotent; the entry points may not be installed
    dtype = np.dtype(dtype)
    stage = _Stage(math.prod(chunk_shape) * dtype.itemsize)
    configs: list[dict[str, Any]] = []
    for spec in filters:
        configs.extend(_map_one(spec, dtype, stage))
    for config in configs:  # fail here, not at read time, if a codec cannot be built
        numcodecs.get_codec(dict(config))
    return configs


def _describe(spec: FilterSpec) -> str:
    fid = spec.filter_id
    name = FILTER_NAMES.get(fid)
    if name is None:
        return f"filter{fid}({spec.name})" if spec.name else f"filter{fid}"
    if fid in (FILTER_DEFLATE, FILTER_ZSTD, FILTER_BZIP2) and spec.cd_values:
        return f"{name}({spec.cd_values[0]})"
    if fid == FILTER_BLOSC:
        cname = _BLOSC_CNAMES.get(_cd(spec, 6, 0), "?")
        return f"blosc({cname},{_cd(spec, 4, 5)})"
    if fid == FILTER_BITSHUFFLE:
        cname = _BITSHUFFLE_CNAMES.get(_cd(spec, 4, 0), "?")
        return f"bitshuffle({cname})" if cname else "bitshuffle"
    if fid == FILTER_SCALEOFFSET and len(spec.cd_values) > 1:
        factor = spec.cd_values[1] & 0xFFFFFFFF
        return f"scaleoffset({factor - (1 << 32) if factor & 0x80000000 else factor})"
    return name


def pipeline_summary(filters: Sequence[FilterSpec]) -> str:
    """A short human-readable pipeline, e.g. ``"shuffle+gzip(4)"`` (``"none"`` if empty)."""
    return "+".join(_describe(spec) for spec in filters) or "none"
