"""A corpus of small HDF5 files covering what an HDF5 → Zarr converter must handle.

``build_corpus(directory)`` writes the files below (about 0.6 MB in all, in a
fraction of a second). Data come from seeded numpy generators and no object
carries a modification time, so every build is byte-identical.
``tests/convert/test_corpus.py`` checks, by reading the files back, that every
feature listed here is present.

==================================  ===============================================================
file                                features
==================================  ===============================================================
``corpus_dtypes.h5``                ``/numeric``: int8..int64, uint8..uint64, float16/32/64 in both
                                    byte orders; long double; bool (h5py enum); enums (int8, >u2
                                    base); complex64/128 LE and BE (h5py's r/i compound); native
                                    HDF5 ≥ 2.0 complex class; bitfield. ``/scalar``: scalar
                                    numeric datasets. ``/strings``: fixed-length bytes with NULLPAD,
                                    NULLTERM and SPACEPAD padding, fixed-length UTF-8, vlen UTF-8
                                    and ASCII, vlen bytes (``vlen_dtype(uint8)``), scalar vlen
                                    strings (NeXus ``title``), scalar fixed string. ``/compound``:
                                    flat, fixed-string member, nested compound, array member, gaps
                                    (explicit offsets/itemsize), vlen-string member, big-endian
                                    members. ``/special``: array dtype ``('<i2', (2, 3))``, opaque,
                                    vlen int32/float64 sequences, object and region references,
                                    empty dataspace (``h5py.Empty``).
``corpus_layouts.h5``               contiguous (written; never written = unallocated; early
                                    allocation never written); compact; chunked with partial edge
                                    chunks, never-written chunks under int / NaN / custom float /
                                    compound / string fill values, wholly unallocated chunked,
                                    1-element chunks, resizable (maxshape) grown after writing, 4-D;
                                    zero-length (0,) and (0, 5) resizable, (0,) contiguous; groups
                                    nested 4 deep; attributes of every kind on groups and
                                    datasets; netCDF-4 style dimension scales.
``corpus_filters.h5``               gzip, shuffle+gzip (LE and BE), fletcher32 (alone and with
                                    shuffle+gzip), lzf, scaleoffset int and float, szip (when the
                                    library has it), nbit, hdf5plugin Bitshuffle (none, lz4, zstd),
                                    Blosc (lz4+shuffle, zstd+bitshuffle), Blosc2, LZ4, Zstd, BZip2;
                                    partial edge chunks; chunks with a skipped filter
                                    (``filter_mask != 0``): one written raw with
                                    ``write_direct_chunk(filter_mask=1)`` into a gzip dataset, and
                                    the ones HDF5 stored unfiltered itself because an optional
                                    filter (lzf, blosc) could not shrink them.
``corpus_links.h5``                 hard links (a dataset and a group under two names), soft links
                                    (absolute, relative, to a group), external links to
                                    ``corpus_target.h5`` (dataset and group), virtual datasets:
                                    two source files stitched, with unmapped fill, and a
                                    same-file (``"."``) source.
``corpus_target.h5``                external-link target.
``corpus_vds_src_0.h5``,            VDS source files (``/frames``, (3, 4, 5) int32 each).
``corpus_vds_src_1.h5``
``corpus_dangling.h5``              dangling external link, dangling soft link, one valid dataset.
``corpus_nexus.nxs``                NeXus: NXroot/NXentry/NXinstrument/NXdetector/NXsample, NXdata
                                    with signal/axes/*_indices and the detector data hard-linked
                                    into it, ``default`` chain, scalar vlen ``title``; a legacy
                                    NXdata (``signal=1``/``axes="y:x"`` on the dataset) and
                                    fixed-length ``NX_class`` attributes as older writers made.
``corpus_latest.h5``                ``libver=("v110", "v114")``: the five chunk indexes (single
                                    chunk, implicit = early allocation, fixed array, extensible
                                    array, v2 B-tree); dense attribute storage (40 attributes and
                                    one of 100 KB); creation-order tracked group.
``corpus_paged.h5``                 paged file-space aggregation (4 KiB pages, as ``h5repack -S
                                    PAGE`` makes for cloud reads); chunked and contiguous data.
``corpus_userblock.h5``             512-byte user block (chunk addresses are file offsets that
                                    include it); chunked gzip and contiguous datasets.
``corpus_efile.h5``, ``.raw``       contiguous dataset whose raw data live in an external file
                                    (``H5Pset_external``), two segments at offsets 64 and 256; read
                                    with ``efile_prefix="${ORIGIN}"``.
``corpus_cycle.h5``                 a hard-link cycle (``/a/b/c/up`` → ``/a``) and a soft-link loop.
==================================  ===============================================================

Not produced: reduced-precision types for the nbit filter (HDF5 2.0 refuses
"unusual datatypes" unless relaxed integrity checks are set, which h5py does
not expose), HDF5 time and new-style (``H5R_ref_t``) reference types (h5py
cannot create them), a paged file with a v110+ lower format bound (HDF5 2.0
then stamps the root group with its creation time, so builds would differ).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import h5py
import hdf5plugin
import numpy as np

__all__ = ["CORPUS_FILES", "FILTER_DATASETS", "HAS_NATIVE_COMPLEX", "HAS_SZIP", "build_corpus"]

CORPUS_FILES = (
    "corpus_dtypes.h5",
    "corpus_layouts.h5",
    "corpus_filters.h5",
    "corpus_links.h5",
    "corpus_target.h5",
    "corpus_vds_src_0.h5",
    "corpus_vds_src_1.h5",
    "corpus_dangling.h5",
    "corpus_nexus.nxs",
    "corpus_latest.h5",
    "corpus_paged.h5",
    "corpus_userblock.h5",
    "corpus_efile.h5",
    "corpus_efile.raw",
    "corpus_cycle.h5",
)

HAS_SZIP = bool(h5py.h5z.filter_avail(h5py.h5z.FILTER_SZIP))
HAS_NATIVE_COMPLEX = hasattr(h5py.h5t, "COMPLEX_IEEE_F32LE")

NUMERIC_KINDS = ("i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "f2", "f4", "f8")

#: name in ``corpus_filters.h5`` → HDF5 filter ids of its pipeline, in order.
FILTER_DATASETS: dict[str, tuple[int, ...]] = {
    "gzip": (1,),
    "shuffle_gzip": (2, 1),
    "shuffle_gzip_be": (2, 1),
    "fletcher32": (3,),
    "shuffle_gzip_fletcher32": (2, 1, 3),
    "lzf": (32000,),
    "shuffle_lzf_partly_incompressible": (2, 32000),
    "scaleoffset_int": (6,),
    "scaleoffset_float": (6,),
    "nbit": (5,),
    "bitshuffle": (32008,),
    "bitshuffle_lz4": (32008,),
    "bitshuffle_zstd": (32008,),
    "blosc_lz4_shuffle": (32001,),
    "blosc_zstd_bitshuffle": (32001,),
    "blosc_incompressible": (32001,),
    "blosc2": (32026,),
    "lz4": (32004,),
    "zstd": (32015,),
    "bzip2": (307,),
    "gzip_chunk_filter_skipped": (1,),
}
if HAS_SZIP:
    FILTER_DATASETS["szip"] = (4,)

_EDGE_SHAPE = (60, 50)
_EDGE_CHUNKS = (16, 16)


def _rng(name: str) -> np.random.Generator:
    return np.random.default_rng(list(name.encode()))


def _typed_dataset(
    group: h5py.Group,
    name: str,
    tid: Any,
    data: np.ndarray,
    dcpl: Any = None,
) -> h5py.Dataset:
    """Create a dataset of an HDF5 type h5py's high level cannot express, and fill it.

    Writing with the file type as memory type stores the bytes unconverted
    (e.g. space-padded strings stay space-padded).
    """
    space = h5py.h5s.create_simple(data.shape) if data.shape else h5py.h5s.create(h5py.h5s.SCALAR)
    if dcpl is None:
        dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    # HDF5 stamps objects with their modification time unless told not to
    # (h5py's high level does this for us).
    dcpl.set_obj_track_times(False)
    dsid = h5py.h5d.create(group.id, name.encode(), tid, space, dcpl=dcpl)
    dsid.write(h5py.h5s.ALL, h5py.h5s.ALL, np.ascontiguousarray(data), mtype=tid)
    return group[name]


def _longdouble(values: np.ndarray) -> np.ndarray:
    """``values`` as long doubles with their padding bytes zeroed.

    x87 extended precision fills 10 of the 16 bytes; the rest is whatever was in
    memory, which would make the file differ from build to build.
    """
    out = values.astype(np.longdouble)
    used = h5py.h5t.NATIVE_LDOUBLE.get_precision() // 8
    if sys.byteorder == "little" and used < out.itemsize:
        out.view(np.uint8).reshape(out.size, out.itemsize)[:, used:] = 0
    return out


def _fixed_string_type(size: int, pad: int) -> Any:
    tid = h5py.h5t.C_S1.copy()
    tid.set_size(size)
    tid.set_strpad(pad)
    return tid


# --------------------------------------------------------------------------- dtypes


def _write_dtypes(path: Path) -> None:
    rng = _rng(path.name)
    with h5py.File(path, "w") as f:
        numeric = f.create_group("numeric")
        for kind in NUMERIC_KINDS:
            for order, prefix in (("le", "<"), ("be", ">")):
                dtype = np.dtype(prefix + kind)
                if dtype.kind == "f":
                    values = rng.normal(0.0, 100.0, (3, 4))
                else:
                    info = np.iinfo(dtype)
                    values = rng.integers(info.min, info.max, (3, 4), dtype=kind, endpoint=True)
                numeric.create_dataset(f"{kind}_{order}", data=values.astype(dtype))
        numeric.create_dataset("longdouble", data=_longdouble(rng.normal(0.0, 1.0, 6) / 3))
        numeric.create_dataset("bool", data=rng.integers(0, 2, (2, 5)).astype(bool))
        colours = h5py.enum_dtype({"RED": 0, "GREEN": 1, "BLUE": 42}, basetype="i1")
        numeric.create_dataset("enum_i1", data=np.array([0, 1, 42, 1], dtype="i1"), dtype=colours)
        states = h5py.enum_dtype({"OFF": 0, "ON": 1, "FAULT": 65535}, basetype=">u2")
        numeric.create_dataset(
            "enum_u2_be", data=np.array([[0, 1], [65535, 0]], dtype=">u2"), dtype=states
        )
        for kind in ("c8", "c16"):
            values = rng.normal(size=5) + 1j * rng.normal(size=5)
            numeric.create_dataset(f"complex_{kind}_le", data=values.astype("<" + kind))
            numeric.create_dataset(f"complex_{kind}_be", data=values.astype(">" + kind))
        if HAS_NATIVE_COMPLEX:
            values = (np.arange(4) * (1 + 0.5j)).astype("<c8")
            _typed_dataset(numeric, "complex_native_f32", h5py.h5t.COMPLEX_IEEE_F32LE, values)
        _typed_dataset(
            numeric, "bitfield_b8", h5py.h5t.STD_B8LE, np.array([1, 2, 4, 255], dtype="u1")
        )

        scalar = f.create_group("scalar")
        scalar.create_dataset("i4", data=np.int32(-7))
        scalar.create_dataset("u8_be", data=np.array(2**63 + 5, dtype=">u8"))
        scalar.create_dataset("f8", data=np.float64(12.398419843320026))
        scalar.create_dataset("c16", data=np.complex128(1.5 - 2.25j))
        scalar.create_dataset("bool", data=np.bool_(True))

        strings = f.create_group("strings")
        words = np.array([b"alpha", b"be", b"", b"gamma-ray!"], dtype="S10")
        strings.create_dataset("fixed_nullpad", data=words)  # h5py's S10 is NULLPAD
        _typed_dataset(
            strings,
            "fixed_nullterm",
            _fixed_string_type(10, h5py.h5t.STR_NULLTERM),
            np.array([b"alpha", b"be", b"", b"gamma-ray"], dtype="S10"),
        )
        _typed_dataset(
            strings,
            "fixed_spacepad",
            _fixed_string_type(10, h5py.h5t.STR_SPACEPAD),
            np.array([w.ljust(10) for w in words], dtype="S10"),
        )
        utf8_fixed = h5py.string_dtype("utf-8", 16)
        strings.create_dataset(
            "fixed_utf8",
            data=np.array([s.encode() for s in ["grüß", "µm", "Å", "ok"]], dtype=utf8_fixed),
        )
        strings.create_dataset(
            "vlen_utf8",
            data=np.array([["Pilatus", "Eiger² 16M"], ["", "λ = 1.0 Å"]], dtype=object),
            dtype=h5py.string_dtype("utf-8"),
        )
        strings.create_dataset(
            "vlen_ascii",
            data=np.array([b"NXentry", b"NXdata", b"", b"x" * 300], dtype=object),
            dtype=h5py.string_dtype("ascii"),
        )
        blobs = strings.create_dataset("vlen_bytes", (3,), dtype=h5py.vlen_dtype(np.uint8))
        for i, n in enumerate((0, 5, 1000)):
            blobs[i] = rng.integers(0, 256, n, dtype=np.uint8)
        strings.create_dataset(
            "scalar_vlen_utf8", data="rotation scan 42 – 0.1°/frame", dtype=h5py.string_dtype()
        )
        strings.create_dataset(
            "scalar_vlen_ascii", data=b"lysozyme", dtype=h5py.string_dtype("ascii")
        )
        strings.create_dataset("scalar_fixed", data=np.bytes_("NXmx"))

        compound = f.create_group("compound")
        flat = np.dtype([("id", "<i4"), ("x", "<f8"), ("flag", "u1")])
        compound.create_dataset(
            "flat",
            data=np.array([(i, i * 0.5, i % 2) for i in range(6)], dtype=flat),
        )
        named = np.dtype([("name", "S8"), ("value", "<f4")])
        compound.create_dataset(
            "fixed_string_member",
            data=np.array([(b"omega", 0.1), (b"kappa", -30.0), (b"", 0.0)], dtype=named),
        )
        nested = np.dtype([("pos", [("x", "<f4"), ("y", "<f4")]), ("id", "<u2")])
        compound.create_dataset(
            "nested", data=np.array([((1.0, 2.0), 1), ((3.5, -1.0), 2)], dtype=nested)
        )
        with_array = np.dtype([("vec", "<f4", (3,)), ("n", "<i2")])
        compound.create_dataset(
            "array_member",
            data=np.array([([1, 2, 3], 7), ([4, 5, 6], -7)], dtype=with_array),
        )
        gaps = np.dtype(
            {"names": ["a", "b"], "formats": ["<i2", "<f8"], "offsets": [0, 8], "itemsize": 24}
        )
        gappy = np.zeros(3, dtype=gaps)
        gappy["a"] = [1, 2, 3]
        gappy["b"] = [0.25, 0.5, 0.75]
        compound.create_dataset("gaps", data=gappy)
        labelled = np.dtype([("label", h5py.string_dtype()), ("v", "<i4")])
        compound.create_dataset(
            "vlen_string_member",
            data=np.array([("first", 1), ("zwölf", 12), ("", 0)], dtype=labelled),
        )
        big = np.dtype([("a", ">i4"), ("b", ">f8")])
        compound.create_dataset(
            "big_endian_members", data=np.array([(1, 1.5), (-2, 2.5)], dtype=big)
        )

        special = f.create_group("special")
        array_typed = special.create_dataset(
            "array_dtype", shape=(4,), dtype=np.dtype(("<i2", (2, 3)))
        )
        array_typed[...] = np.arange(24, dtype="<i2").reshape(4, 2, 3)
        special.create_dataset(
            "opaque", data=np.array([b"\x00\x01\x02\xff", b"abcd", b"\xde\xad\xbe\xef"], "V4")
        )
        ints = special.create_dataset("vlen_int32", (4,), dtype=h5py.vlen_dtype(np.int32))
        floats = special.create_dataset("vlen_float64", (2,), dtype=h5py.vlen_dtype(np.float64))
        for i in range(4):
            ints[i] = np.arange(i * 3, dtype=np.int32) - i
        floats[0] = np.array([0.5])
        floats[1] = rng.normal(size=7)
        refs = special.create_dataset("object_refs", (4,), dtype=h5py.ref_dtype)
        refs[0] = f["numeric/i4_le"].ref
        refs[1] = f["compound"].ref
        refs[2] = f["strings/vlen_utf8"].ref
        # refs[3] stays the null reference
        regions = special.create_dataset("region_refs", (2,), dtype=h5py.regionref_dtype)
        regions[0] = f["numeric/f8_le"].regionref[0:2, 1:3]
        regions[1] = f["numeric/u1_be"].regionref[1, :]
        special.create_dataset("empty_f4", data=h5py.Empty("f4"))
        special.create_dataset("empty_str", data=h5py.Empty(h5py.string_dtype()))


# --------------------------------------------------------------------------- layouts


def _attach_all_attrs(obj: h5py.Group | h5py.Dataset, target: h5py.Dataset) -> None:
    """Attributes of every kind h5py can write."""
    a = obj.attrs
    a["NX_class"] = "NXcollection"
    a["int_scalar"] = np.int64(-3)
    a["uint8_scalar"] = np.uint8(200)
    a["float_scalar"] = 0.125
    a["float_be"] = np.array(2.5, dtype=">f4")
    a["bool"] = np.bool_(True)
    a["int_array"] = np.arange(5, dtype=np.int16)
    a["float_2d"] = np.linspace(0, 1, 6).reshape(2, 3)
    a["vlen_str"] = "vlen, utf-8: Å"
    a["vlen_str_array"] = ["frame_number", ".", "."]
    a["fixed_bytes"] = np.bytes_("NXdetector")
    a["fixed_bytes_array"] = np.array([b"x", b"yy", b"zzz"], dtype="S3")
    utf8_fixed = h5py.string_dtype("utf-8", 8)
    a.create("fixed_utf8", np.array("µm".encode(), dtype=utf8_fixed), dtype=utf8_fixed)
    a["complex"] = np.complex64(1 - 1j)
    a.create(
        "enum",
        np.array([0, 1, 1], dtype="u1"),
        dtype=h5py.enum_dtype({"NO": 0, "YES": 1}, basetype="u1"),
    )
    a["compound"] = np.array((3, 1.5), dtype=[("n", "<i4"), ("v", "<f8")])
    a["empty"] = h5py.Empty("i4")
    a["object_ref"] = target.ref
    ragged = np.empty(2, dtype=object)
    ragged[0] = np.array([1, 2, 3], dtype=np.int32)
    ragged[1] = np.array([4], dtype=np.int32)
    a.create("vlen_int", ragged, dtype=h5py.vlen_dtype(np.int32))


def _write_layouts(path: Path) -> None:
    rng = _rng(path.name)
    with h5py.File(path, "w") as f:
        contiguous = f.create_group("contiguous")
        contiguous.create_dataset("written", data=rng.normal(size=(20, 30)).astype("<f4"))
        contiguous.create_dataset("unallocated", shape=(10, 10), dtype="<i4", fillvalue=17)
        early = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
        early.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
        contiguous.create_dataset(
            "early_allocated_unwritten", shape=(8,), dtype="<i2", fillvalue=7, dcpl=early
        )
        contiguous.create_dataset("zero_length", shape=(0,), dtype="<f8")

        compact = f.create_group("compact")
        for name, data in (
            ("i4", np.arange(10, dtype="<i4")),
            ("f8_2d", rng.normal(size=(3, 4))),
            ("u2_be", np.arange(6, dtype=">u2")),
        ):
            dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
            dcpl.set_layout(h5py.h5d.COMPACT)
            compact.create_dataset(name, data=data, dcpl=dcpl)

        chunked = f.create_group("chunked")
        chunked.create_dataset(
            "edge_chunks",
            data=rng.integers(0, 1000, _EDGE_SHAPE, dtype="<i4"),
            chunks=_EDGE_CHUNKS,
        )
        sparse = {
            "sparse_int_fill": ("<i4", -999),
            "sparse_nan_fill": ("<f4", np.nan),
            "sparse_custom_float_fill": (">f8", 42.5),
            "sparse_default_fill": ("<u2", None),
        }
        for name, (dtype, fill) in sparse.items():
            d = chunked.create_dataset(
                name, shape=(40, 40), dtype=dtype, chunks=(10, 10), fillvalue=fill
            )
            d[0:10, 0:10] = 1  # chunk (0, 0)
            d[15:25, 35:40] = 2  # chunks (1, 3), (2, 3)
        pair = np.dtype([("x", "<i4"), ("y", "<f8")])
        d = chunked.create_dataset(
            "sparse_compound_fill",
            shape=(12,),
            dtype=pair,
            chunks=(4,),
            fillvalue=np.array((-1, np.nan), dtype=pair),
        )
        d[0:2] = np.array([(1, 2.0), (3, 4.0)], dtype=pair)
        d = chunked.create_dataset(
            "sparse_string_fill", shape=(9,), dtype="S4", chunks=(3,), fillvalue=b"N/A"
        )
        d[3:6] = [b"abc", b"de", b"f"]
        chunked.create_dataset(
            "unallocated", shape=(30, 30), dtype="<f8", chunks=(10, 10), fillvalue=-1.5
        )
        chunked.create_dataset(
            "one_element_chunks", data=np.arange(24, dtype="<i8").reshape(4, 6), chunks=(1, 1)
        )
        grown = chunked.create_dataset(
            "resizable", data=np.arange(15, dtype="<i4").reshape(3, 5), maxshape=(None, 5)
        )
        grown.resize(7, axis=0)
        grown[3:7] = np.arange(20, dtype="<i4").reshape(4, 5) + 100
        chunked.create_dataset(
            "four_d",
            data=rng.normal(size=(3, 4, 5, 6)).astype("<f4"),
            chunks=(1, 2, 5, 3),
        )
        chunked.create_dataset("zero_length_1d", shape=(0,), dtype="<i4", maxshape=(None,))
        chunked.create_dataset(
            "zero_length_2d", shape=(0, 5), dtype="<f8", maxshape=(None, 5), chunks=(16, 5)
        )

        deep = f.create_group("nested/level1/level2/level3/level4")
        leaf = deep.create_dataset("leaf", data=np.arange(3, dtype="<i4"))
        for level, group in enumerate(("nested", "nested/level1", "nested/level1/level2")):
            f[group].attrs["depth"] = level

        attrs = f.create_group("attributes")
        _attach_all_attrs(attrs, leaf)
        on_dataset = attrs.create_dataset("dataset_with_attributes", data=np.arange(4))
        _attach_all_attrs(on_dataset, leaf)
        f.attrs["file_attribute"] = "root attributes too"

        scales = f.create_group("dimension_scales")
        y = scales.create_dataset("y", data=np.linspace(-1.0, 1.0, 4))
        x = scales.create_dataset("x", data=np.arange(5, dtype="<i4") * 10)
        temperature = scales.create_dataset(
            "temperature", data=rng.normal(290.0, 3.0, (4, 5)).astype("<f4")
        )
        y.make_scale("y")
        x.make_scale("x")
        temperature.dims[0].attach_scale(y)
        temperature.dims[1].attach_scale(x)
        temperature.dims[0].label = "y"
        temperature.dims[1].label = "x"


# --------------------------------------------------------------------------- filters


def _write_filters(path: Path) -> None:
    rng = _rng(path.name)
    ramp = np.add.outer(np.arange(_EDGE_SHAPE[0]), np.arange(_EDGE_SHAPE[1])) % 97
    ints = (ramp + rng.integers(0, 4, _EDGE_SHAPE)).astype("<i4")
    floats = (np.sin(ramp / 9.0) + rng.normal(0, 0.01, _EDGE_SHAPE)).astype("<f4")
    noise = rng.integers(0, 2**32, _EDGE_SHAPE, dtype=np.uint32)
    partly = ints.astype("<u4")
    partly[32:] = noise[32:]  # rows of chunks 2 and 3 cannot be compressed
    with h5py.File(path, "w") as f:

        def make(name: str, data: np.ndarray, **kwargs: Any) -> h5py.Dataset:
            return f.create_dataset(name, data=data, chunks=_EDGE_CHUNKS, **kwargs)

        make("gzip", ints, compression="gzip", compression_opts=6)
        make("shuffle_gzip", ints, shuffle=True, compression="gzip", compression_opts=4)
        make("shuffle_gzip_be", ints.astype(">i4"), shuffle=True, compression="gzip")
        make("fletcher32", floats, fletcher32=True)
        make("shuffle_gzip_fletcher32", floats, shuffle=True, compression="gzip", fletcher32=True)
        make("lzf", ints, compression="lzf")
        make("shuffle_lzf_partly_incompressible", partly, shuffle=True, compression="lzf")
        make("scaleoffset_int", ints, scaleoffset=0)
        make("scaleoffset_float", floats, scaleoffset=3)
        if HAS_SZIP:
            make("szip", ints, compression="szip", compression_opts=("nn", 8))
        nbit = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
        nbit.set_chunk(_EDGE_CHUNKS)
        nbit.set_filter(h5py.h5z.FILTER_NBIT, 0, ())
        _typed_dataset(f, "nbit", h5py.h5t.STD_I16LE, (ints - 50).astype("<i2"), dcpl=nbit)
        make("bitshuffle", ints, **hdf5plugin.Bitshuffle(nelems=0, cname="none"))
        make("bitshuffle_lz4", ints, **hdf5plugin.Bitshuffle(nelems=0, cname="lz4"))
        make("bitshuffle_zstd", floats, **hdf5plugin.Bitshuffle(cname="zstd", clevel=3))
        make(
            "blosc_lz4_shuffle",
            ints,
            **hdf5plugin.Blosc(cname="lz4", clevel=5, shuffle=hdf5plugin.Blosc.SHUFFLE),
        )
        make(
            "blosc_zstd_bitshuffle",
            floats,
            **hdf5plugin.Blosc(cname="zstd", clevel=3, shuffle=hdf5plugin.Blosc.BITSHUFFLE),
        )
        make("blosc_incompressible", noise, **hdf5plugin.Blosc(cname="lz4"))
        make("blosc2", floats, **hdf5plugin.Blosc2(cname="zstd", clevel=5))
        make("lz4", ints, **hdf5plugin.LZ4())
        make("zstd", floats, **hdf5plugin.Zstd(clevel=7))
        make("bzip2", ints, **hdf5plugin.BZip2(blocksize=9))
        skipped = make("gzip_chunk_filter_skipped", ints, compression="gzip")
        # As a writer does when compressing a chunk does not pay: store it raw
        # and mark the (only) filter as skipped for this chunk.
        raw = np.ascontiguousarray(ints[0:16, 0:16]).tobytes()
        skipped.id.write_direct_chunk((0, 0), raw, filter_mask=1)
        for name, dset in f.items():
            dset.attrs["filter"] = name


# --------------------------------------------------------------------------- links, VDS


_Block = tuple[tuple[int, ...], tuple[int, ...]]  # hyperslab (start, count)


def _virtual_dataset(
    group: h5py.Group,
    name: str,
    shape: tuple[int, ...],
    dtype: str,
    mappings: Sequence[tuple[_Block, str, str, tuple[int, ...], _Block]],
    fillvalue: float | None = None,
) -> None:
    """A VDS; each mapping is (virtual block, file, dataset, source shape, source block).

    Low level because ``create_virtual_dataset`` cannot switch off object
    modification times, which would make the file differ from build to build.
    """
    dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    dcpl.set_obj_track_times(False)
    if fillvalue is not None:
        dcpl.set_fill_value(np.array([fillvalue], dtype=dtype))
    virtual_space = h5py.h5s.create_simple(shape)
    for (start, count), file_name, dset_name, source_shape, source_block in mappings:
        target = virtual_space.copy()
        target.select_hyperslab(start, count)
        source_space = h5py.h5s.create_simple(source_shape)
        source_space.select_hyperslab(*source_block)
        dcpl.set_virtual(target, file_name.encode(), dset_name.encode(), source_space)
    tid = h5py.h5t.py_create(np.dtype(dtype), logical=True)
    h5py.h5d.create(group.id, name.encode(), tid, virtual_space, dcpl=dcpl)


def _write_links(directory: Path) -> list[Path]:
    rng = _rng("corpus_links.h5")
    target = directory / "corpus_target.h5"
    with h5py.File(target, "w") as f:
        group = f.create_group("target")
        group.attrs["NX_class"] = "NXcollection"
        group.create_dataset("values", data=np.arange(12, dtype="<f8").reshape(3, 4))
        group.create_dataset("label", data="external target", dtype=h5py.string_dtype())

    sources = []
    for i in range(2):
        source = directory / f"corpus_vds_src_{i}.h5"
        with h5py.File(source, "w") as f:
            f.create_dataset(
                "frames",
                data=(np.arange(60, dtype="<i4").reshape(3, 4, 5) + 1000 * i),
                chunks=(1, 4, 5),
                compression="gzip",
            )
        sources.append(source)

    path = directory / "corpus_links.h5"
    with h5py.File(path, "w") as f:
        data = f.create_group("data")
        original = data.create_dataset("original", data=rng.normal(size=(4, 3)))
        data["hardlink"] = original
        f["group_hardlink"] = data
        soft = f.create_group("soft")
        soft["to_dataset"] = h5py.SoftLink("/data/original")
        soft["to_group"] = h5py.SoftLink("/data")
        data["relative"] = h5py.SoftLink("original")
        external = f.create_group("external")
        external["to_dataset"] = h5py.ExternalLink(target.name, "/target/values")
        external["to_group"] = h5py.ExternalLink(target.name, "/target")

        vds = f.create_group("vds")
        # Relative names: HDF5 resolves them against the VDS file's own directory.
        whole: _Block = ((0, 0, 0), (3, 4, 5))
        stitched = [
            (((3 * i, 0, 0), (3, 4, 5)), s.name, "frames", (3, 4, 5), whole)
            for i, s in enumerate(sources)
        ]
        padded = [
            (((4 * i, 0, 0), (3, 4, 5)), s.name, "frames", (3, 4, 5), whole)
            for i, s in enumerate(sources)
        ]
        _virtual_dataset(vds, "stitched", (6, 4, 5), "<i4", stitched)
        _virtual_dataset(vds, "padded", (8, 4, 5), "<i4", padded, fillvalue=-1)
        column: _Block = ((0, 0), (4, 1))
        _virtual_dataset(
            vds, "same_file", (4,), "<f8", [(((0,), (4,)), ".", "/data/original", (4, 3), column)]
        )
    return [path, target, *sources]


def _write_dangling(path: Path) -> None:
    with h5py.File(path, "w") as f:
        f.create_dataset("ok", data=np.arange(3))
        f["dangling_external"] = h5py.ExternalLink("corpus_does_not_exist.h5", "/nothing")
        f["dangling_soft"] = h5py.SoftLink("/nowhere")


def _write_cycle(path: Path) -> None:
    with h5py.File(path, "w") as f:
        deep = f.create_group("a/b/c")
        deep.create_dataset("values", data=np.arange(4))
        deep["up"] = f["a"]
        f["loop_1"] = h5py.SoftLink("/loop_2")
        f["loop_2"] = h5py.SoftLink("/loop_1")


# --------------------------------------------------------------------------- NeXus


def _write_nexus(path: Path) -> None:
    rng = _rng(path.name)
    frames = rng.poisson(3.0, (4, 16, 20)).astype("<u4")
    frames[:, 8, :] = 0xFFFFFFFF
    with h5py.File(path, "w") as f:
        f.attrs["NX_class"] = "NXroot"
        f.attrs["default"] = "entry"
        f.attrs["file_name"] = path.name
        f.attrs["file_time"] = "2026-01-15T09:00:00.000+00:00"
        f.attrs["creator"] = "hyperslab corpus"
        entry = f.create_group("entry")
        entry.attrs["NX_class"] = "NXentry"
        entry.attrs["default"] = "data"
        entry.create_dataset("title", data="corpus scan", dtype=h5py.string_dtype())
        entry.create_dataset("definition", data="NXmx", dtype=h5py.string_dtype())
        entry.create_dataset("start_time", data="2026-01-15T08:59:59.500+00:00")
        entry.create_dataset("end_time", data="2026-01-15T09:00:00.000+00:00")
        sample = entry.create_group("sample")
        sample.attrs["NX_class"] = np.bytes_("NXsample")  # fixed-length, as older writers
        sample.create_dataset("name", data="lysozyme", dtype=h5py.string_dtype())
        sample.create_dataset("temperature", data=100.0).attrs["units"] = "K"
        instrument = entry.create_group("instrument")
        instrument.attrs["NX_class"] = np.bytes_("NXinstrument")
        detector = instrument.create_group("detector")
        detector.attrs["NX_class"] = "NXdetector"
        data = detector.create_dataset(
            "data", data=frames, chunks=(1, 16, 20), compression="gzip", shuffle=True
        )
        data.attrs["units"] = "counts"
        detector.create_dataset("x_pixel_size", data=172e-6).attrs["units"] = "m"
        nxdata = entry.create_group("data")
        nxdata.attrs["NX_class"] = "NXdata"
        nxdata.attrs["signal"] = "data"
        nxdata.attrs["axes"] = ["frame_number", "y", "x"]
        nxdata.attrs["frame_number_indices"] = 0
        nxdata.attrs["y_indices"] = 1
        nxdata.attrs["x_indices"] = 2
        nxdata["data"] = data
        nxdata.create_dataset("frame_number", data=np.arange(1, 5, dtype="<i4"))
        nxdata.create_dataset("y", data=np.arange(16) * 172e-6).attrs["units"] = "m"
        nxdata.create_dataset("x", data=np.arange(20) * 172e-6).attrs["units"] = "m"
        legacy = entry.create_group("legacy")
        legacy.attrs["NX_class"] = np.bytes_("NXdata")
        counts = legacy.create_dataset("counts", data=frames.sum(axis=0))
        counts.attrs["signal"] = np.int32(1)
        counts.attrs["axes"] = np.bytes_("y:x")
        legacy["y"] = nxdata["y"]
        legacy["x"] = nxdata["x"]


# --------------------------------------------------------------------------- new format


def _write_latest(path: Path) -> None:
    rng = _rng(path.name)
    values = rng.integers(0, 100, (24, 24), dtype="<i4")
    # v110 is the oldest format with these indexes; capping at v114 keeps the file
    # readable by HDF5 1.10+ rather than 2.0 only.
    with h5py.File(path, "w", libver=("v110", "v114")) as f:
        index = f.create_group("chunk_index")
        index.create_dataset("single_chunk", data=values, chunks=values.shape, compression="gzip")
        early = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
        early.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
        index.create_dataset("implicit", data=values, chunks=(8, 8), dcpl=early)
        index.create_dataset("fixed_array", data=values, chunks=(8, 8), compression="gzip")
        index.create_dataset(
            "extensible_array", data=values, chunks=(8, 8), maxshape=(None, 24), compression="gzip"
        )
        index.create_dataset(
            "btree_v2", data=values, chunks=(8, 8), maxshape=(None, None), compression="gzip"
        )
        dense = f.create_group("dense_attributes")
        for i in range(40):
            dense.attrs[f"attr_{i:02d}"] = np.float64(i) / 7
        dense.attrs["large"] = rng.normal(size=12_800)  # 100 KB: too big for the header
        ordered = f.create_group("creation_order", track_order=True)
        for name in ("zulu", "alpha", "mike"):
            ordered.create_dataset(name, data=np.array([ord(name[0])]))
            ordered.attrs[name] = name


def _write_paged(path: Path) -> None:
    # Default format bounds: with a v110 lower bound, HDF5 2.0 stamps the root
    # group of a paged file with its creation time whatever the property lists say.
    rng = _rng(path.name)
    with h5py.File(path, "w", fs_strategy="page", fs_page_size=4096) as f:
        f.create_dataset(
            "chunked",
            data=rng.integers(0, 1000, (64, 64), dtype="<i4"),
            chunks=(16, 16),
            compression="gzip",
            shuffle=True,
        )
        f.create_dataset("contiguous", data=rng.normal(size=(30, 20)))
        f.create_group("group").attrs["NX_class"] = "NXcollection"


def _write_userblock(path: Path) -> None:
    rng = _rng(path.name)
    with h5py.File(path, "w", userblock_size=512) as f:
        f.create_dataset(
            "chunked",
            data=rng.integers(0, 50, (32, 32), dtype="<i4"),
            chunks=(8, 8),
            compression="gzip",
        )
        f.create_dataset("contiguous", data=np.arange(100, dtype="<f8"))
    with path.open("r+b") as fh:
        fh.write(b"hyperslab corpus user block: HDF5 data start at byte 512\n")


def _write_efile(path: Path, raw: Path) -> None:
    header = b"RAW-DATA-HEADER\n".ljust(64, b"\0")
    first = np.arange(20, dtype="<i4")
    second = np.arange(20, dtype="<i4") + 100
    blob = header + first.tobytes() + b"\xee" * (256 - 64 - 80) + second.tobytes()
    raw.write_bytes(blob)
    with h5py.File(path, "w") as f:
        f.create_dataset(
            "external_storage",
            shape=(40,),
            dtype="<i4",
            external=[(raw.name, 64, 80), (raw.name, 256, 80)],
        )


def build_corpus(directory: Path) -> list[Path]:
    """Write the corpus files into ``directory``; return their paths in ``CORPUS_FILES`` order."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    _write_dtypes(directory / "corpus_dtypes.h5")
    _write_layouts(directory / "corpus_layouts.h5")
    _write_filters(directory / "corpus_filters.h5")
    _write_links(directory)
    _write_dangling(directory / "corpus_dangling.h5")
    _write_nexus(directory / "corpus_nexus.nxs")
    _write_latest(directory / "corpus_latest.h5")
    _write_paged(directory / "corpus_paged.h5")
    _write_userblock(directory / "corpus_userblock.h5")
    _write_efile(directory / "corpus_efile.h5", directory / "corpus_efile.raw")
    _write_cycle(directory / "corpus_cycle.h5")
    return [directory / name for name in CORPUS_FILES]
