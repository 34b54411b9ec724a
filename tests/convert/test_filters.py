"""HDF5 filter pipelines decoded by the mapped numcodecs pipelines, chunk by chunk.

Every case writes a real HDF5 file (h5py + hdf5plugin), reads each chunk's stored
bytes with ``read_direct_chunk``, decodes them with the configs from
``hdf5_pipeline_to_codecs`` and compares with what h5py itself reads for that chunk.
"""

from __future__ import annotations

import glob
import importlib
import json
import math
import os
import tomllib
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import h5py
import hdf5plugin
import numcodecs
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hyperslab.convert import codecs as hc
from hyperslab.convert.filters import (
    FilterSpec,
    chunk_pipeline_ok,
    hdf5_pipeline_to_codecs,
    pipeline_summary,
    read_pipeline,
)
from hyperslab.errors import UnsupportedFeatureError

TABLES_TESTS = (
    Path(__file__).resolve().parents[2] / ".venv/lib/python3.11/site-packages/tables/tests"
)
try:
    import tables

    TABLES_TESTS = Path(tables.__file__).parent / "tests"
except ImportError:  # pragma: no cover - tables is a test dependency
    tables = None

COMPOUND = np.dtype([("a", "<i2"), ("b", "<f8"), ("c", "S3")])
DTYPES: dict[str, np.dtype[Any]] = {
    "u1": np.dtype("u1"),
    "u2le": np.dtype("<u2"),
    "u2be": np.dtype(">u2"),
    "i4": np.dtype("<i4"),
    "f4": np.dtype("<f4"),
    "f8": np.dtype("<f8"),
    "compound": COMPOUND,
}
NUMERIC = [k for k in DTYPES if k != "compound"]
SHAPE, CHUNKS = (70, 45), (32, 20)  # edge chunks on both axes
NCHUNKS = 9


def as_bytes(buf: Any) -> bytes:
    """The bytes of a codec result (bytes, bytearray or ndarray)."""
    if isinstance(buf, np.ndarray):
        return np.ascontiguousarray(buf).tobytes()
    return bytes(buf)


def make_data(dtype: np.dtype, shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """Compressible but not constant values of ``dtype``."""
    rng = np.random.default_rng(seed)
    n = math.prod(shape)
    base = np.repeat(np.cumsum(rng.integers(-3, 4, n // 3 + 1)) + 40, 3)[:n]
    if dtype.names:
        out = np.zeros(n, dtype)
        out["a"] = base.astype("<i2")
        out["b"] = base / 7.0
        out["c"] = [b"xyz"[i % 3 :] for i in range(n)]
        return out.reshape(shape)
    if dtype.kind == "f":
        return (base / 8.0).astype(dtype).reshape(shape)
    info = np.iinfo(dtype)
    return np.clip(base, info.min, info.max).astype(dtype).reshape(shape)


def decode_chunk(configs: list[dict[str, Any]], raw: bytes) -> bytes:
    buf: Any = raw
    for config in reversed(configs):
        buf = numcodecs.get_codec(dict(config)).decode(buf)
    return as_bytes(buf)


def iter_chunks(dset: h5py.Dataset) -> Iterator[tuple[tuple[int, ...], int, bytes]]:
    for index in range(dset.id.get_num_chunks()):
        info = dset.id.get_chunk_info(index)
        mask, raw = dset.id.read_direct_chunk(info.chunk_offset)
        yield info.chunk_offset, mask, raw


def check_dataset(
    dset: h5py.Dataset, expected: Callable[[tuple[slice, ...]], np.ndarray] | None = None
) -> int:
    """Decode every chunk of ``dset``; assert it matches h5py. Returns chunks checked.

    A chunk for which HDF5 skipped an optional filter (filter_mask != 0, e.g. blosc or
    lzf on a chunk they cannot shrink) is not decoded: the converter materialises it."""
    configs = hdf5_pipeline_to_codecs(
        read_pipeline(dset.id.get_create_plist()), dset.dtype, dset.chunks
    )
    json.dumps(configs)  # zarr v2 metadata must be JSON
    nbytes = math.prod(dset.chunks) * dset.dtype.itemsize
    checked = skipped = 0
    for offset, mask, raw in iter_chunks(dset):
        if not chunk_pipeline_ok(mask):
            assert any(spec.optional for spec in read_pipeline(dset.id.get_create_plist()))
            skipped += 1
            continue
        decoded = decode_chunk(configs, raw)
        assert len(decoded) == nbytes, (dset.name, offset)
        got = np.frombuffer(decoded, dset.dtype).reshape(dset.chunks)
        region = tuple(
            slice(o, min(o + c, s)) for o, c, s in zip(offset, dset.chunks, dset.shape, strict=True)
        )
        inside = tuple(slice(0, r.stop - r.start) for r in region)
        want = dset[region] if expected is None else expected(region)
        assert got[inside].tobytes() == np.ascontiguousarray(want, dset.dtype).tobytes(), (
            dset.file.filename,
            dset.name,
            offset,
        )
        checked += 1
    assert checked, f"{dset.name}: no chunk went through the whole pipeline"
    return checked


def write_and_check(
    tmp_path: Path,
    dtype: np.dtype,
    shape: tuple[int, ...],
    chunks: tuple[int, ...],
    **kwargs: Any,
) -> list[dict[str, Any]]:
    data = make_data(dtype, shape)
    path = tmp_path / "f.h5"
    with h5py.File(path, "w") as f:
        dset = f.create_dataset("x", data=data, chunks=chunks, **kwargs)
        check_dataset(dset)
        return hdf5_pipeline_to_codecs(read_pipeline(dset.id.get_create_plist()), dtype, chunks)


# ------------------------------------------------------------------ synthetic files

SZIP_AVAILABLE = bool(h5py.h5z.filter_avail(h5py.h5z.FILTER_SZIP))

STANDARD_CASES: dict[str, dict[str, Any]] = {
    "gzip": {"compression": "gzip", "compression_opts": 4},
    "shuffle+gzip": {"shuffle": True, "compression": "gzip", "compression_opts": 4},
    "fletcher32+shuffle+gzip": {"fletcher32": True, "shuffle": True, "compression": "gzip"},
    "fletcher32": {"fletcher32": True},
    "shuffle": {"shuffle": True},
    "lzf": {"compression": "lzf"},
    "shuffle+lzf": {"shuffle": True, "compression": "lzf"},
    "lz4": dict(hdf5plugin.LZ4()),
    "lz4-small-blocks": dict(hdf5plugin.LZ4(nbytes=256)),
    "zstd": dict(hdf5plugin.Zstd(clevel=5)),
    "bzip2": dict(hdf5plugin.BZip2(blocksize=5)),
    "bitshuffle": dict(hdf5plugin.Bitshuffle(nelems=0, cname="none")),
    "bitshuffle-lz4": dict(hdf5plugin.Bitshuffle(nelems=0, cname="lz4")),
    "bitshuffle-zstd": dict(hdf5plugin.Bitshuffle(nelems=0, cname="zstd", clevel=3)),
    "blosc-lz4-shuffle": dict(hdf5plugin.Blosc("lz4", 5, hdf5plugin.Blosc.SHUFFLE)),
    "blosc2": dict(hdf5plugin.Blosc2()),
}


@pytest.mark.parametrize("dtype_name", list(DTYPES))
@pytest.mark.parametrize("case", list(STANDARD_CASES))
def test_filter_decodes_every_chunk(tmp_path: Path, case: str, dtype_name: str) -> None:
    write_and_check(tmp_path, DTYPES[dtype_name], SHAPE, CHUNKS, **STANDARD_CASES[case])


@pytest.mark.skipif(not SZIP_AVAILABLE, reason="this h5py's HDF5 was built without szip")
@pytest.mark.parametrize("dtype_name", NUMERIC)
@pytest.mark.parametrize("opts", [("nn", 8), ("ec", 16), ("nn", 32)])
def test_szip(tmp_path: Path, dtype_name: str, opts: tuple[str, int]) -> None:
    configs = write_and_check(
        tmp_path, DTYPES[dtype_name], (64, 40), (32, 24), compression="szip", compression_opts=opts
    )
    assert configs[0]["id"] == "hyperslab.szip"


@pytest.mark.parametrize("cname", ["lz4", "zstd", "zlib", "blosclz"])
@pytest.mark.parametrize(
    "shuffle",
    [hdf5plugin.Blosc.NOSHUFFLE, hdf5plugin.Blosc.SHUFFLE, hdf5plugin.Blosc.BITSHUFFLE],
)
@pytest.mark.parametrize("dtype_name", ["u2be", "f8", "compound"])
def test_blosc_variants(tmp_path: Path, cname: Any, shuffle: int, dtype_name: str) -> None:
    configs = write_and_check(
        tmp_path, DTYPES[dtype_name], SHAPE, CHUNKS, **hdf5plugin.Blosc(cname, 7, shuffle)
    )
    assert configs == [
        {
            "id": "blosc",
            "cname": cname,
            "clevel": 7,
            "shuffle": shuffle,
            "blocksize": 0,
            "typesize": DTYPES[dtype_name].itemsize,
        }
    ]


@pytest.mark.parametrize("nelems", [0, 64, 8])
@pytest.mark.parametrize("cname", ["none", "lz4", "zstd"])
@pytest.mark.parametrize("dtype_name", ["u1", "u2be", "f8", "compound"])
def test_bitshuffle_blocks_and_tail(
    tmp_path: Path, nelems: int, cname: Any, dtype_name: str
) -> None:
    # 333 elements per chunk: with 64-element blocks that is 5 full blocks, a last
    # block of 8 and 5 trailing elements stored raw; the edge chunk is padded.
    write_and_check(
        tmp_path,
        DTYPES[dtype_name],
        (700,),
        (333,),
        **hdf5plugin.Bitshuffle(nelems=nelems, cname=cname),
    )


@pytest.mark.parametrize("dtype_name", ["u1", "u2be", "f4", "f8", "compound"])
@pytest.mark.parametrize(
    ("shape", "chunks"),
    [((700,), (300,)), ((150, 130), (128, 96)), ((9, 40, 33), (4, 16, 16))],
)
@pytest.mark.parametrize(
    "options",
    [
        {},
        {"cname": "zstd", "filters": hdf5plugin.Blosc2.BITSHUFFLE},
        {"cname": "lz4", "filters": hdf5plugin.Blosc2.NOFILTER},
    ],
    ids=["default", "zstd-bitshuffle", "lz4-nofilter"],
)
def test_blosc2_frames_and_b2nd_blocks(
    tmp_path: Path,
    dtype_name: str,
    shape: tuple[int, ...],
    chunks: tuple[int, ...],
    options: dict[str, Any],
) -> None:
    # 2-D and 3-D chunks are stored as B2ND arrays whose blocks must be reordered;
    # (128, 96) float64 chunks span several blocks.
    write_and_check(tmp_path, DTYPES[dtype_name], shape, chunks, **hdf5plugin.Blosc2(**options))


@pytest.mark.parametrize("dtype_name", ["u1", "u2be", "compound"])
def test_blosc2_b2nd_padded_blocks(tmp_path: Path, dtype_name: str) -> None:
    # Chunks this large are split into B2ND blocks smaller than the chunk, with
    # padded edge blocks (u1: blocks of (3, 128, 128) in a (3, 257, 300) chunk).
    write_and_check(
        tmp_path, DTYPES[dtype_name], (5, 300, 310), (3, 257, 300), **hdf5plugin.Blosc2(cname="lz4")
    )


@pytest.mark.parametrize(
    ("shape", "chunks", "blocks"),
    [((30, 41), (16, 16), (5, 7)), ((7, 9, 11), (3, 9, 4), (2, 4, 3)), ((100,), (33,), (8,))],
)
def test_blosc2_decodes_python_blosc2_b2nd_frames(
    shape: tuple[int, ...], chunks: tuple[int, ...], blocks: tuple[int, ...]
) -> None:
    """Frames holding several B2ND chunks (as PyTables' direct chunk writes can)."""
    blosc2 = pytest.importorskip("blosc2")
    values = np.arange(math.prod(shape), dtype="<i4").reshape(shape) * 7
    frame = blosc2.asarray(values, chunks=chunks, blocks=blocks).to_cframe()
    assert as_bytes(hc.Blosc2H5(4).decode(frame)) == values.tobytes()


def test_blosc2_zero_chunk_stored_as_special_offset(tmp_path: Path) -> None:
    data = np.zeros((64, 64), "f4")
    data[32:] = np.nan
    with h5py.File(tmp_path / "z.h5", "w") as f:
        for name, arr, chunks in [("two", data, (32, 64)), ("one", data[:, 0], (32,))]:
            check_dataset(f.create_dataset(name, data=arr, chunks=chunks, **hdf5plugin.Blosc2()))


@pytest.mark.parametrize("dtype_name", ["u1", "u2le", "u2be", "i4"])
@pytest.mark.parametrize("fillvalue", [None, 41])
def test_scaleoffset_integers(tmp_path: Path, dtype_name: str, fillvalue: int | None) -> None:
    dtype = DTYPES[dtype_name]
    data = make_data(dtype, SHAPE)
    if fillvalue is not None:
        data.flat[::5] = fillvalue  # values equal to the fill value get their own code
    with h5py.File(tmp_path / "so.h5", "w") as f:
        check_dataset(
            f.create_dataset("auto", data=data, chunks=CHUNKS, scaleoffset=0, fillvalue=fillvalue)
        )
        check_dataset(
            f.create_dataset(
                "bits", data=data & 0x3F, chunks=CHUNKS, scaleoffset=6, fillvalue=fillvalue
            )
        )
        full = dtype.itemsize * 8  # HDF5 skips the filter when minbits is the full width
        check_dataset(f.create_dataset("full", data=data, chunks=CHUNKS, scaleoffset=full))
        wide = np.zeros(SHAPE, dtype)
        wide.flat[::2] = np.iinfo(dtype).max
        wide.flat[1::3] = np.iinfo(dtype).min
        check_dataset(f.create_dataset("wide", data=wide, chunks=CHUNKS, scaleoffset=0))
        check_dataset(
            f.create_dataset("same", data=np.full(SHAPE, 9, dtype), chunks=CHUNKS, scaleoffset=0)
        )
        check_dataset(
            f.create_dataset(
                "shuffled",
                data=data,
                chunks=CHUNKS,
                scaleoffset=0,
                shuffle=True,
                compression="gzip",
            )
        )


def test_scaleoffset_signed_negative(tmp_path: Path) -> None:
    data = (np.arange(math.prod(SHAPE)).reshape(SHAPE) % 300 - 1000).astype(">i2")
    with h5py.File(tmp_path / "so.h5", "w") as f:
        check_dataset(f.create_dataset("neg", data=data, chunks=CHUNKS, scaleoffset=0))
        check_dataset(
            f.create_dataset("i8", data=data.astype("<i8") * 10**12, chunks=CHUNKS, scaleoffset=0)
        )


@pytest.mark.parametrize("dtype_name", ["f4", "f8"])
@pytest.mark.parametrize("digits", [0, 2, 5])
@pytest.mark.parametrize("fillvalue", [None, -1.5])
def test_scaleoffset_floats(
    tmp_path: Path, dtype_name: str, digits: int, fillvalue: float | None
) -> None:
    dtype = DTYPES[dtype_name]
    rng = np.random.default_rng(digits)
    data = (rng.normal(size=SHAPE) * 1000).astype(dtype)
    data.flat[::7] = 0.0
    if fillvalue is not None:
        data.flat[::11] = fillvalue
    with h5py.File(tmp_path / "sof.h5", "w") as f:
        dset = f.create_dataset(
            "x", data=data, chunks=CHUNKS, scaleoffset=digits, fillvalue=fillvalue
        )
        assert check_dataset(dset) == NCHUNKS
        huge = (data.astype(np.float64) * 1e30).astype(dtype)  # too wide to pack: stored raw
        check_dataset(f.create_dataset("huge", data=huge, chunks=CHUNKS, scaleoffset=digits))


def test_nbit_full_precision_is_a_no_op(tmp_path: Path) -> None:
    data = make_data(np.dtype("<i4"), SHAPE)
    with h5py.File(tmp_path / "nb.h5", "w") as f:
        dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
        dcpl.set_chunk(CHUNKS)
        dcpl.set_filter(h5py.h5z.FILTER_NBIT, 0, ())
        h5py.h5d.create(f.id, b"x", h5py.h5t.STD_I32LE, h5py.h5s.create_simple(SHAPE), dcpl=dcpl)
        f["x"][...] = data
        assert pipeline_summary(read_pipeline(f["x"].id.get_create_plist())) == "nbit"
        assert (
            hdf5_pipeline_to_codecs(read_pipeline(f["x"].id.get_create_plist()), data.dtype, CHUNKS)
            == []
        )
        check_dataset(f["x"])


def test_skipped_optional_filter_is_flagged(tmp_path: Path) -> None:
    noise = np.random.default_rng(1).integers(0, 256, (4000,), dtype="u1")
    with h5py.File(tmp_path / "lzf.h5", "w") as f:
        dset = f.create_dataset("x", data=noise, chunks=(4000,), compression="lzf")
        (_, mask, raw), *_ = list(iter_chunks(dset))
        assert mask == 1  # LZF could not shrink the chunk, HDF5 stored it unfiltered
        assert not chunk_pipeline_ok(mask)
        assert raw == noise.tobytes()
    assert chunk_pipeline_ok(0)


# ------------------------------------------------------------------ real files


def _tables_files() -> list[str]:
    return sorted(glob.glob(os.fspath(TABLES_TESTS / "*.h5")))


def _filtered_datasets(path: str) -> list[str]:
    names: list[str] = []
    try:
        f = h5py.File(path, "r")
    except OSError:
        return names

    def visit(name: str, obj: Any) -> None:
        if (
            isinstance(obj, h5py.Dataset)
            and obj.chunks
            and read_pipeline(obj.id.get_create_plist())
        ):
            names.append(name)

    with f:
        f.visititems(visit)
    return names


REAL_FILTERED = [(p, n) for p in _tables_files() for n in _filtered_datasets(p)]


@pytest.mark.skipif(not REAL_FILTERED, reason="PyTables' test files are not installed")
def test_pytables_files_decode_like_h5py() -> None:
    """Every filtered dataset in PyTables' test files that h5py can read (deflate,
    shuffle, fletcher32, szip, blosc incl. big-endian, b2nd blosc2)."""
    seen: set[int] = set()
    checked = 0
    for path, name in REAL_FILTERED:
        with h5py.File(path, "r") as f:
            dset = f[name]
            pipeline = read_pipeline(dset.id.get_create_plist())
            if any(spec.filter_id == 305 for spec in pipeline):
                continue  # LZO: h5py cannot read it, see test_pytables_lzo
            if dset.size == 0 or dset.id.get_num_chunks() == 0 or dset.dtype.kind == "O":
                continue  # nothing stored, or variable-length heap references
            check_dataset(dset)
            seen.update(spec.filter_id for spec in pipeline)
            checked += 1
    assert checked > 50
    assert {1, 2, 4, 32001, 32026} <= seen


LZO_FILES = [
    "Tables_lzo1.h5",
    "Tables_lzo1_shuffle.h5",
    "Tables_lzo2.h5",
    "Tables_lzo2_shuffle.h5",
    "Table2_1_lzo_nrv2e_shuffle.h5",
]


@pytest.mark.parametrize("filename", LZO_FILES)
def test_pytables_lzo(filename: str) -> None:
    path = TABLES_TESTS / filename
    if not path.exists():
        pytest.skip("PyTables' test files are not installed")
    lzo_reader = tables is not None and tables.which_lib_version("lzo") is not None
    with h5py.File(path, "r") as f:
        for name in ["tuple0", "group0/tuple1", "group0/group1/tuple2"]:
            dset = f[name]
            configs = hdf5_pipeline_to_codecs(
                read_pipeline(dset.id.get_create_plist()), dset.dtype, dset.chunks
            )
            assert configs[-1]["id"] == "hyperslab.lzo"
            (_, mask, raw), *_ = list(iter_chunks(dset))
            assert mask == 0
            rows = np.frombuffer(decode_chunk(configs, raw), dset.dtype)[: dset.shape[0]]
            if lzo_reader:
                with tables.open_file(path) as tf:
                    assert rows.tobytes() == tf.get_node("/" + name).read().tobytes()
            else:
                # This PyTables has no LZO: check against the values PyTables' own
                # back-compat tests wrote (var3 counts down from 100).
                assert (rows["var3"] == 100 - np.arange(100)).all()
                assert (rows["var1"] == b"    ").all()
                assert ((rows["var2"] >= 0) & (rows["var2"] < 100)).all()
                if "Table2_1" not in filename:
                    assert (rows["var2"] == np.arange(100)).all()


# ------------------------------------------------------------------ encode is HDF5-valid


def _direct_write_roundtrip(
    tmp_path: Path, data: np.ndarray, chunks: tuple[int, ...], **kwargs: Any
) -> None:
    """Our encode writes bytes HDF5 itself reads back (not just our decode)."""
    with h5py.File(tmp_path / "enc.h5", "w") as f:
        dset = f.create_dataset("x", shape=data.shape, dtype=data.dtype, chunks=chunks, **kwargs)
        configs = hdf5_pipeline_to_codecs(
            read_pipeline(dset.id.get_create_plist()), data.dtype, chunks
        )
        chunk = np.ascontiguousarray(data[tuple(slice(0, c) for c in chunks)])
        buf: Any = chunk.tobytes()
        for config in configs:
            buf = numcodecs.get_codec(dict(config)).encode(buf)
        dset.id.write_direct_chunk((0,) * data.ndim, np.ascontiguousarray(buf).tobytes(), 0)
        assert dset[tuple(slice(0, c) for c in chunks)].tobytes() == chunk.tobytes()
        assert decode_chunk(configs, np.ascontiguousarray(buf).tobytes()) == chunk.tobytes()


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(hdf5plugin.Bitshuffle(nelems=0, cname="none")),
        dict(hdf5plugin.Bitshuffle(nelems=64, cname="lz4")),
        dict(hdf5plugin.Bitshuffle(nelems=0, cname="zstd")),
        dict(hdf5plugin.LZ4(nbytes=300)),
        {"compression": "lzf"},
        {"scaleoffset": 0},
        {"scaleoffset": 0, "fillvalue": 44},
        {"shuffle": True, "compression": "gzip", "fletcher32": True},
    ]
    + ([{"compression": "szip", "compression_opts": ("nn", 16)}] if SZIP_AVAILABLE else []),
    ids=lambda kw: "+".join(sorted(str(k) for k in kw)) + str(sorted(kw.items()))[:40],
)
@pytest.mark.parametrize("dtype_name", ["u2be", "i4"])
def test_encode_is_readable_by_hdf5(
    tmp_path: Path, kwargs: dict[str, Any], dtype_name: str
) -> None:
    data = make_data(DTYPES[dtype_name], (333,))
    data[::9] = 44
    _direct_write_roundtrip(tmp_path, data, (333,), **kwargs)


@pytest.mark.parametrize("dtype_name", ["f4", "f8"])
def test_scaleoffset_float_encode_is_lossless_and_hdf5_readable(
    tmp_path: Path, dtype_name: str
) -> None:
    data = np.random.default_rng(3).normal(size=(300,)).astype(DTYPES[dtype_name])
    _direct_write_roundtrip(tmp_path, data, (300,), scaleoffset=3)


# ------------------------------------------------------------------ mapping details


def spec(
    filter_id: int, cd_values: tuple[int, ...] = (), name: str = "", flags: int = 0
) -> FilterSpec:
    return FilterSpec(filter_id, flags, cd_values, name)


def test_unknown_filter_raises_unsupported() -> None:
    with pytest.raises(UnsupportedFeatureError) as err:
        hdf5_pipeline_to_codecs([spec(2, (4,)), spec(32013, (), "zfp")], np.dtype("f4"), (10,))
    assert err.value.details["filter_id"] == 32013
    assert "32013 (zfp) has no decoder" in err.value.message
    assert err.value.code == "unsupported"


@pytest.mark.parametrize(
    ("pipeline", "why"),
    [
        ([spec(5, (8, 0, 64, 1, 4, 0, 12, 2))], "N-bit"),
        ([spec(6, (0, (-2) & 0xFFFFFFFF, 10, 1, 4, 0, 0, 0) + (0,) * 12)], "D-scale factor -2"),
        ([spec(6, (1, 3, 10, 1, 4, 0, 0, 0) + (0,) * 12)], "E-scaling"),
        ([spec(6, (0, 11, 10, 1, 4, 0, 0, 0) + (0,) * 12)], "not exact"),
        ([spec(2, (4,)), spec(6, (2, 0, 10, 0, 4, 0, 0, 0) + (0,) * 12)], "first filter"),
        ([spec(32001, (2, 2, 4, 40, 5, 1, 9))], "blosc compressor 9"),
        ([spec(32008, (0, 4, 4, 0, 7))], "bitshuffle compression code 7"),
    ],
)
def test_inexact_pipelines_raise(pipeline: list[FilterSpec], why: str) -> None:
    with pytest.raises(UnsupportedFeatureError, match=why):
        hdf5_pipeline_to_codecs(pipeline, np.dtype("<f4"), (10,))


def test_shuffle_after_length_change_uses_hdf5_shuffle() -> None:
    configs = hdf5_pipeline_to_codecs(
        [spec(3), spec(2, (8,)), spec(1, (4,))], np.dtype("<f8"), (10,)
    )
    assert configs == [
        {"id": "fletcher32"},
        {"id": "hyperslab.shuffle", "elementsize": 8},
        {"id": "zlib", "level": 4},
    ]


def test_pipeline_summary() -> None:
    assert pipeline_summary([spec(2, (4,)), spec(1, (4,))]) == "shuffle+gzip(4)"
    assert pipeline_summary([]) == "none"
    assert pipeline_summary([spec(32008, (0, 4, 2, 0, 2))]) == "bitshuffle(lz4)"
    assert pipeline_summary([spec(32001, (2, 2, 4, 40, 5, 1, 5))]) == "blosc(zstd,5)"
    assert pipeline_summary([spec(6, (0, 3) + (0,) * 18)]) == "scaleoffset(3)"
    assert pipeline_summary([spec(40000, (), "mine")]) == "filter40000(mine)"


def test_read_pipeline_reports_local_parameters(tmp_path: Path) -> None:
    with h5py.File(tmp_path / "p.h5", "w") as f:
        dset = f.create_dataset(
            "x", shape=(10, 10), dtype=COMPOUND, chunks=(5, 5), shuffle=True, compression="lzf"
        )
        pipeline = read_pipeline(dset.id.get_create_plist())
    assert [s.filter_id for s in pipeline] == [2, 32000]
    assert pipeline[0].cd_values == (COMPOUND.itemsize,)  # shuffle element = whole type
    assert pipeline[1].cd_values[2] == 25 * COMPOUND.itemsize
    assert pipeline[1].optional and pipeline[0].name == "shuffle"
    assert pipeline_summary(pipeline) == "shuffle+lzf"


def test_entry_points_list_exactly_the_codecs() -> None:
    pyproject = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())
    table = pyproject["project"]["entry-points"]["numcodecs.codecs"]
    # the HDF5 filters' codecs, all of them; the frame codecs (TIFF, CBF) and the
    # imagecodecs ones TIFF strips need, which imagecodecs does not register itself
    hdf5 = sorted(k for k, v in table.items() if v.startswith("hyperslab.convert.codecs:"))
    assert hdf5 == sorted(hc.CODEC_IDS)
    assert set(table) - set(hdf5) == {
        "hyperslab.cbf_byte_offset",
        "hyperslab.tiff_strip",
        "imagecodecs_lzw",
        "imagecodecs_packbits",
    }
    for codec_id, target in table.items():
        module, _, attr = target.partition(":")
        cls = getattr(importlib.import_module(module), attr)
        assert cls.codec_id == codec_id
        assert type(numcodecs.get_codec({"id": codec_id, **_MIN_ARGS[codec_id]})) is cls


_MIN_ARGS: dict[str, dict[str, Any]] = {
    "hyperslab.cbf_byte_offset": {},
    "hyperslab.tiff_strip": {"dtype": "<u2", "row": 8, "nbytes": 64},
    "imagecodecs_lzw": {},
    "imagecodecs_packbits": {},
    "hyperslab.bitshuffle": {"elementsize": 4},
    "hyperslab.blosc2": {},
    "hyperslab.lz4h5": {},
    "hyperslab.lzf": {},
    "hyperslab.lzo": {},
    "hyperslab.scaleoffset": {"cd_values": [2, 0, 10, 0, 4, 0, 0, 0] + [0] * 12},
    "hyperslab.shuffle": {"elementsize": 4},
    "hyperslab.szip": {
        "options_mask": 141,
        "pixels_per_block": 8,
        "bits_per_pixel": 16,
        "pixels_per_scanline": 10,
    },
}


# ------------------------------------------------------------------ codec properties

ELEMENT_DTYPES = st.sampled_from(["u1", "<u2", ">u2", "<i4", ">i8", "<f4", ">f8"])


@st.composite
def arrays(draw: st.DrawFn, min_size: int = 0) -> np.ndarray:
    dtype = np.dtype(draw(ELEMENT_DTYPES))
    n = draw(st.integers(min_size, 700))
    raw = draw(st.binary(min_size=n * dtype.itemsize, max_size=n * dtype.itemsize))
    values = np.frombuffer(raw, dtype).copy()
    if draw(st.booleans()) and n:  # low-entropy variant: compressors take other paths
        values = np.resize(values[:3], n)
    return values


def roundtrip(codec: numcodecs.abc.Codec, values: np.ndarray) -> None:
    config = json.loads(json.dumps(codec.get_config()))
    clone = numcodecs.get_codec(config)
    assert clone.get_config() == codec.get_config()
    encoded = codec.encode(values.tobytes())
    assert as_bytes(clone.decode(encoded)) == values.tobytes()
    out = bytearray(values.nbytes)
    clone.decode(encoded, out=out)
    assert bytes(out) == values.tobytes()


PROPERTY = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPERTY
@given(
    values=arrays(), compression=st.sampled_from([0, 2, 3]), block=st.sampled_from([0, 8, 64, 256])
)
def test_bitshuffle_roundtrip(values: np.ndarray, compression: int, block: int) -> None:
    roundtrip(
        hc.BitshuffleH5(values.dtype.itemsize, block, compression, 3 if compression == 3 else 0),
        values,
    )


@PROPERTY
@given(values=arrays(), block=st.sampled_from([0, 1, 100, 4096]))
def test_lz4h5_roundtrip(values: np.ndarray, block: int) -> None:
    roundtrip(hc.LZ4H5(block), values)


@PROPERTY
@given(values=arrays(min_size=1))
def test_lzf_roundtrip(values: np.ndarray) -> None:
    roundtrip(hc.LzfH5(values.nbytes), values)
    roundtrip(hc.LzfH5(0), values)  # size unknown: decode grows its buffer


@PROPERTY
@given(values=arrays(), checksum=st.booleans())
def test_lzo_roundtrip(values: np.ndarray, checksum: bool) -> None:
    roundtrip(hc.LzoH5(values.nbytes, checksum), values)


@PROPERTY
@given(
    values=arrays(min_size=1),
    shuffle=st.sampled_from([0, 1, 2]),
    compressor=st.sampled_from([0, 1, 4, 5]),
)
def test_blosc2_roundtrip(values: np.ndarray, shuffle: int, compressor: int) -> None:
    roundtrip(hc.Blosc2H5(values.dtype.itemsize, 5, shuffle, compressor), values)


@PROPERTY
@given(raw=st.binary(max_size=300), elementsize=st.integers(1, 16))
def test_hdf5_shuffle_roundtrip_and_leftover(raw: bytes, elementsize: int) -> None:
    values = np.frombuffer(raw, "u1")
    roundtrip(hc.ShuffleH5(elementsize), values)
    whole = len(raw) - len(raw) % elementsize
    encoded = hc.ShuffleH5(elementsize).encode(raw)
    assert encoded[whole:] == raw[whole:]  # HDF5 leaves the partial element in place
    if whole and len(raw) // elementsize > 1:
        stock = numcodecs.Shuffle(elementsize).encode(np.frombuffer(raw[:whole], "u1"))
        assert encoded[:whole] == bytes(stock)


@pytest.mark.skipif(not SZIP_AVAILABLE, reason="this h5py's HDF5 was built without szip")
@PROPERTY
@given(
    data=st.data(),
    dtype=st.sampled_from(["u1", "<u2", ">u2", "<i4", "<f8"]),
    mask=st.sampled_from([4, 32]),
)
def test_szip_roundtrip(data: st.DataObject, dtype: str, mask: int) -> None:
    dt = np.dtype(dtype)
    n = data.draw(st.integers(1, 600))
    values = np.frombuffer(
        data.draw(st.binary(min_size=n * dt.itemsize, max_size=n * dt.itemsize)), dt
    )
    order = 16 if dt.byteorder == ">" or dt.itemsize == 1 else 8  # MSB / LSB option bits
    roundtrip(hc.SzipH5(mask | 128 | order, 8, dt.itemsize * 8, max(min(n, 64), 1)), values)


def _so_cd(dtype: np.dtype, n: int, fill: int | None, factor: int = 0) -> list[int]:
    cls = 1 if dtype.kind == "f" else 0
    scale_type = 0 if cls else 2
    cd = [
        scale_type,
        factor & 0xFFFFFFFF,
        n,
        cls,
        dtype.itemsize,
        int(dtype.kind == "i"),
        int(dtype.byteorder == ">"),
        int(fill is not None),
    ]
    bits = 0 if fill is None else fill & ((1 << (8 * dtype.itemsize)) - 1)
    cd += [(bits >> (32 * k)) & 0xFFFFFFFF for k in range(12)]
    return cd


@PROPERTY
@given(values=arrays(), use_fill=st.booleans())
def test_scaleoffset_roundtrip(values: np.ndarray, use_fill: bool) -> None:
    fill = None
    if use_fill and values.size and values.dtype.kind in "iu":
        fill = int(values[0])
    factor = 3 if values.dtype.kind == "f" else 0
    codec = hc.ScaleOffsetH5(_so_cd(values.dtype, values.size, fill, factor))
    roundtrip(codec, values)


def test_lzo_literal_stream_lengths() -> None:
    for n in [0, 1, 3, 4, 17, 18, 238, 239, 240, 273, 274, 528, 529, 5000]:
        data = bytes(range(256)) * (n // 256) + bytes(range(n % 256))
        encoded = hc.LzoH5(n, checksum=False).encode(data)
        assert bytes(hc.LzoH5(n).decode(encoded)) == data
        framed = hc.LzoH5(n, checksum=True).encode(data)
        assert framed[-8:] == zlib.adler32(data).to_bytes(4, "little") + n.to_bytes(4, "little")


def test_codec_decode_rejects_corrupt_input() -> None:
    good = hc.BitshuffleH5(4, 0, 2).encode(np.arange(100, dtype="<i4").tobytes())
    with pytest.raises((ValueError, RuntimeError)):
        hc.BitshuffleH5(4, 0, 2).decode(good[:-3])
    with pytest.raises((ValueError, RuntimeError)):
        hc.ScaleOffsetH5(_so_cd(np.dtype("<i4"), 100, None)).decode(b"\x05" + bytes(20))


@pytest.mark.parametrize("dtype", ["<i4", "<u2", ">u2", "<f8", "u1"])
@pytest.mark.parametrize("shape", [(37, 53), (8, 2048), (3, 5)])
def test_bitshuffle_lz4_encode_is_the_bytes_hdf5plugin_writes(
    tmp_path: Path, dtype: str, shape: tuple[int, ...]
) -> None:
    """What ``compress`` writes with bitshuffle-LZ4 is byte for byte what the HDF5 filter
    writes (same default block size), so its packs read anywhere bitshuffle reads."""
    rng = np.random.default_rng(5)
    data = (rng.poisson(0.3, shape) * (rng.random(shape) < 0.5)).astype(dtype)
    with h5py.File(tmp_path / "b.h5", "w") as f:
        dset = f.create_dataset("d", data=data, chunks=shape, **hdf5plugin.Bitshuffle(cname="lz4"))
        _, written = dset.id.read_direct_chunk((0,) * len(shape))
    ours = hc.BitshuffleH5(elementsize=data.dtype.itemsize, compression=2).encode(data)
    assert ours == written
