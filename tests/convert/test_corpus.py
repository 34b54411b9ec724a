"""The converter corpus keeps every feature it claims (see ``tests/convert/corpus.py``)."""

from __future__ import annotations

import hashlib
import time
import zlib
from collections import Counter
from pathlib import Path

import h5py
import hdf5plugin  # noqa: F401 - registers the plugin filters for reading
import numpy as np
import pytest

from tests.convert.corpus import (
    CORPUS_FILES,
    FILTER_DATASETS,
    HAS_NATIVE_COMPLEX,
    HAS_SZIP,
    NUMERIC_KINDS,
    build_corpus,
)

_LAYOUTS = {
    h5py.h5d.COMPACT: "compact",
    h5py.h5d.CONTIGUOUS: "contiguous",
    h5py.h5d.CHUNKED: "chunked",
    h5py.h5d.VIRTUAL: "virtual",
}
_CLASSES = {
    h5py.h5t.INTEGER: "integer",
    h5py.h5t.FLOAT: "float",
    h5py.h5t.STRING: "string",
    h5py.h5t.BITFIELD: "bitfield",
    h5py.h5t.OPAQUE: "opaque",
    h5py.h5t.COMPOUND: "compound",
    h5py.h5t.REFERENCE: "reference",
    h5py.h5t.ENUM: "enum",
    h5py.h5t.VLEN: "vlen",
    h5py.h5t.ARRAY: "array",
}
if HAS_NATIVE_COMPLEX:
    _CLASSES[h5py.h5t.COMPLEX] = "complex"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    paths = build_corpus(tmp_path_factory.mktemp("corpus"))
    return {p.name: p for p in paths}


def _open_efile_dataset(f: h5py.File, name: str) -> h5py.Dataset:
    dapl = h5py.h5p.create(h5py.h5p.DATASET_ACCESS)
    dapl.set_efile_prefix(b"${ORIGIN}")
    return h5py.Dataset(h5py.h5d.open(f.id, name.encode(), dapl))


def _read(f: h5py.File, name: str) -> object:
    dset = f[name]
    if dset.id.get_create_plist().get_external_count():
        # HDF5 refuses a second handle with another prefix while this one is open.
        del dset
        return _open_efile_dataset(f, name)[()]
    return dset[()]


def _datasets(f: h5py.File) -> dict[str, h5py.Dataset]:
    found: dict[str, h5py.Dataset] = {}

    def visit(name: str, obj: object) -> None:
        if isinstance(obj, h5py.Dataset):
            found[name] = obj

    f.visititems(visit)
    return found


def _census(paths: dict[str, Path]) -> Counter[str]:
    """Count datasets by layout, filter and datatype class across the corpus."""
    counts: Counter[str] = Counter()
    for name, path in paths.items():
        if path.suffix == ".raw":
            continue
        with h5py.File(path, "r") as f:
            for dset in _datasets(f).values():
                dcpl = dset.id.get_create_plist()
                layout = _LAYOUTS[dcpl.get_layout()]
                counts[f"layout:{layout}"] += 1
                if layout == "contiguous" and dcpl.get_external_count():
                    counts["layout:external-storage"] += 1
                elif layout == "contiguous" and dset.id.get_storage_size() == 0 and dset.size:
                    counts["layout:contiguous-unallocated"] += 1
                if layout == "chunked":
                    n_chunks = int(
                        np.prod([-(-s // c) for s, c in zip(dset.shape, dset.chunks, strict=True)])
                    )
                    if dset.id.get_num_chunks() < n_chunks:
                        counts["chunked:unwritten-chunks"] += 1
                for i in range(dcpl.get_nfilters()):
                    counts[f"filter:{dcpl.get_filter(i)[0]}"] += 1
                counts[f"class:{_CLASSES[dset.id.get_type().get_class()]}"] += 1
                space = dset.id.get_space()
                if space.get_simple_extent_type() == h5py.h5s.NULL:
                    counts["space:null"] += 1
                elif space.get_simple_extent_type() == h5py.h5s.SCALAR:
                    counts["space:scalar"] += 1
                elif 0 in dset.shape:
                    counts["space:zero-length"] += 1
                if dset.dtype.byteorder == ">" or (
                    dset.dtype.names
                    and any(dset.dtype[n].byteorder == ">" for n in dset.dtype.names)
                ):
                    counts["order:big-endian"] += 1
                counts[f"file:{name}"] += 1
    return counts


def test_every_file_is_written_and_readable(corpus: dict[str, Path]) -> None:
    assert sorted(corpus) == sorted(CORPUS_FILES)
    assert sum(p.stat().st_size for p in corpus.values()) < 30 * 2**20
    for name, path in corpus.items():
        if path.suffix == ".raw":
            continue
        with h5py.File(path, "r") as f:
            for dname in list(_datasets(f)):
                assert _read(f, dname) is not None, f"{name}:{dname}"


def test_census_covers_every_feature(corpus: dict[str, Path]) -> None:
    counts = _census(corpus)
    expected = {
        "layout:compact": 3,
        "layout:contiguous": 60,
        "layout:contiguous-unallocated": 1,
        "layout:chunked": 40,
        "layout:virtual": 3,
        "layout:external-storage": 1,
        "chunked:unwritten-chunks": 7,
        "filter:1": 12,  # deflate
        "filter:2": 5,  # shuffle
        "filter:3": 2,  # fletcher32
        "filter:5": 1,  # nbit
        "filter:6": 2,  # scaleoffset
        "filter:32000": 2,  # lzf
        "filter:32001": 3,  # blosc
        "filter:32004": 1,  # lz4
        "filter:32008": 3,  # bitshuffle
        "filter:32015": 1,  # zstd
        "filter:32026": 1,  # blosc2
        "filter:307": 1,  # bzip2
        "class:integer": 30,
        "class:float": 20,
        "class:string": 12,
        "class:bitfield": 1,
        "class:opaque": 1,
        "class:compound": 12,
        "class:reference": 2,
        "class:enum": 3,
        "class:vlen": 3,
        "class:array": 1,
        "space:null": 2,
        "space:scalar": 10,
        "space:zero-length": 3,
        "order:big-endian": 17,
    }
    if HAS_SZIP:
        expected["filter:4"] = 1
    if HAS_NATIVE_COMPLEX:
        expected["class:complex"] = 1
    missing = {k: (counts[k], n) for k, n in expected.items() if counts[k] < n}
    assert not missing, f"feature counts below the minimum (found, wanted): {missing}"
    for name in CORPUS_FILES:
        if not name.endswith(".raw") and name != "corpus_dangling.h5":
            assert counts[f"file:{name}"] >= 1


def _next_second() -> None:
    """Sleep past the next whole second, so any object modification time would differ."""
    time.sleep(1.02 - time.time() % 1.0)


def test_build_is_byte_identical(corpus: dict[str, Path], tmp_path: Path) -> None:
    _next_second()
    again = build_corpus(tmp_path)
    for path in again:
        original = corpus[path.name]
        assert (
            hashlib.sha256(path.read_bytes()).digest()
            == hashlib.sha256(original.read_bytes()).digest()
        ), path.name


def test_dtypes(corpus: dict[str, Path]) -> None:
    with h5py.File(corpus["corpus_dtypes.h5"], "r") as f:
        numeric = f["numeric"]
        for kind in NUMERIC_KINDS:
            le, be = numeric[f"{kind}_le"], numeric[f"{kind}_be"]
            assert le.dtype == np.dtype("<" + kind) and be.dtype == np.dtype(">" + kind)
            if np.dtype(kind).itemsize > 1:
                assert le.id.get_type().get_order() == h5py.h5t.ORDER_LE
                assert be.id.get_type().get_order() == h5py.h5t.ORDER_BE
        assert numeric["longdouble"].dtype == np.longdouble
        assert numeric["bool"].dtype == np.bool_
        assert h5py.check_enum_dtype(numeric["enum_i1"].dtype) == {"RED": 0, "GREEN": 1, "BLUE": 42}
        assert numeric["enum_u2_be"].dtype.byteorder == ">"
        for kind in ("c8", "c16"):
            assert numeric[f"complex_{kind}_le"].dtype == np.dtype("<" + kind)
            assert numeric[f"complex_{kind}_be"].dtype == np.dtype(">" + kind)
            np.testing.assert_array_equal(
                numeric[f"complex_{kind}_le"][()], numeric[f"complex_{kind}_be"][()]
            )
        if HAS_NATIVE_COMPLEX:
            native = numeric["complex_native_f32"]
            assert native.id.get_type().get_class() == h5py.h5t.COMPLEX
            np.testing.assert_array_equal(native[()], np.arange(4) * (1 + 0.5j))
        assert numeric["bitfield_b8"].id.get_type().get_class() == h5py.h5t.BITFIELD

        for name in f["scalar"]:
            assert f["scalar"][name].shape == ()

        strings = f["strings"]
        pads = {
            "fixed_nullpad": h5py.h5t.STR_NULLPAD,
            "fixed_nullterm": h5py.h5t.STR_NULLTERM,
            "fixed_spacepad": h5py.h5t.STR_SPACEPAD,
        }
        for name, pad in pads.items():
            tid = strings[name].id.get_type()
            assert (tid.get_strpad(), tid.get_size(), tid.is_variable_str()) == (pad, 10, False)
        # On disk the space padding is real (h5py strips it when converting on read).
        spacepad = strings["fixed_spacepad"]
        raw = np.empty(4, dtype="S10")
        spacepad.id.read(h5py.h5s.ALL, h5py.h5s.ALL, raw, mtype=spacepad.id.get_type())
        assert raw[1] == b"be        "
        utf8 = strings["fixed_utf8"]
        assert utf8.id.get_type().get_cset() == h5py.h5t.CSET_UTF8
        info = h5py.check_string_dtype(utf8.dtype)
        assert info is not None and (info.encoding, info.length) == ("utf-8", 16)
        assert utf8[0].decode() == "grüß"
        for name, encoding in (("vlen_utf8", "utf-8"), ("vlen_ascii", "ascii")):
            info = h5py.check_string_dtype(strings[name].dtype)
            assert info is not None and (info.encoding, info.length) == (encoding, None)
        assert h5py.check_vlen_dtype(strings["vlen_bytes"].dtype) == np.dtype(np.uint8)
        assert [len(b) for b in strings["vlen_bytes"][()]] == [0, 5, 1000]
        for name in ("scalar_vlen_utf8", "scalar_vlen_ascii"):
            assert strings[name].shape == ()
            assert strings[name].id.get_type().is_variable_str()
        assert strings["scalar_vlen_utf8"].asstr()[()] == "rotation scan 42 – 0.1°/frame"

        compound = f["compound"]
        assert compound["fixed_string_member"].dtype["name"] == np.dtype("S8")
        assert compound["nested"].dtype["pos"].names == ("x", "y")
        assert compound["array_member"].dtype["vec"].shape == (3,)
        gaps = compound["gaps"].dtype
        assert (gaps.itemsize, gaps.fields["b"][1]) == (24, 8)
        assert h5py.check_string_dtype(compound["vlen_string_member"].dtype["label"]) is not None
        assert compound["big_endian_members"].dtype["b"].byteorder == ">"

        special = f["special"]
        assert special["array_dtype"].dtype.subdtype == (np.dtype("<i2"), (2, 3))
        assert special["opaque"].id.get_type().get_class() == h5py.h5t.OPAQUE
        assert h5py.check_vlen_dtype(special["vlen_int32"].dtype) == np.dtype(np.int32)
        assert [len(v) for v in special["vlen_int32"][()]] == [0, 3, 6, 9]
        refs = special["object_refs"][()]
        assert f[refs[0]] == numeric["i4_le"] and not refs[3]
        region = special["region_refs"][0]
        assert h5py.check_ref_dtype(special["region_refs"].dtype) is h5py.RegionReference
        np.testing.assert_array_equal(f[region][region], numeric["f8_le"][0:2, 1:3])
        assert special["empty_f4"].shape is None
        assert isinstance(special["empty_f4"][()], h5py.Empty)


def test_layouts_and_fill_values(corpus: dict[str, Path]) -> None:
    with h5py.File(corpus["corpus_layouts.h5"], "r") as f:
        unallocated = f["contiguous/unallocated"]
        assert unallocated.id.get_offset() is None and unallocated.id.get_storage_size() == 0
        assert (unallocated[()] == 17).all()
        early = f["contiguous/early_allocated_unwritten"]
        assert early.id.get_offset() is not None
        assert (early[()] == 7).all()
        for name in f["compact"]:
            dcpl = f["compact"][name].id.get_create_plist()
            assert dcpl.get_layout() == h5py.h5d.COMPACT

        chunked = f["chunked"]
        edge = chunked["edge_chunks"]
        assert any(s % c for s, c in zip(edge.shape, edge.chunks, strict=True))
        fills = {
            "sparse_int_fill": -999,
            "sparse_custom_float_fill": 42.5,
            "sparse_default_fill": 0,
        }
        for name, fill in fills.items():
            dset = chunked[name]
            assert dset.id.get_num_chunks() == 3, name  # of 16
            assert dset.fillvalue == fill
            assert dset[39, 0] == fill and dset[0, 0] == 1 and dset[20, 39] == 2
        nan = chunked["sparse_nan_fill"]
        assert np.isnan(nan.fillvalue) and np.isnan(nan[39, 0])
        compound = chunked["sparse_compound_fill"]
        assert compound.id.get_num_chunks() == 1
        assert compound[11]["x"] == -1 and np.isnan(compound[11]["y"])
        assert chunked["sparse_string_fill"][0] == b"N/A"
        assert chunked["unallocated"].id.get_num_chunks() == 0
        assert (chunked["unallocated"][()] == -1.5).all()
        ones = chunked["one_element_chunks"]
        assert ones.chunks == (1, 1) and ones.id.get_num_chunks() == 24
        grown = chunked["resizable"]
        assert grown.maxshape == (None, 5) and grown.shape == (7, 5)
        assert grown[6, 4] == 119
        assert chunked["four_d"].ndim == 4
        assert chunked["zero_length_1d"].shape == (0,)
        assert chunked["zero_length_1d"].maxshape == (None,)
        assert chunked["zero_length_2d"].shape == (0, 5)
        assert chunked["zero_length_2d"].maxshape == (None, 5)
        assert f["contiguous/zero_length"].shape == (0,)

        assert f["nested/level1/level2/level3/level4/leaf"].shape == (3,)

        for obj in (f["attributes"], f["attributes/dataset_with_attributes"]):
            classes = Counter(
                _CLASSES[obj.attrs.get_id(name).get_type().get_class()] for name in obj.attrs
            )
            for cls in ("integer", "float", "string", "compound", "enum", "reference", "vlen"):
                assert classes[cls] >= 1, (obj.name, cls)
            assert obj.attrs["NX_class"] == "NXcollection"
            assert isinstance(obj.attrs["empty"], h5py.Empty)
            assert obj.attrs.get_id("vlen_str").get_type().is_variable_str()
            assert not obj.attrs.get_id("fixed_bytes").get_type().is_variable_str()
            assert f[obj.attrs["object_ref"]].name == "/nested/level1/level2/level3/level4/leaf"

        temperature = f["dimension_scales/temperature"]
        assert h5py.h5ds.is_scale(f["dimension_scales/x"].id)
        assert [d.label for d in temperature.dims] == ["y", "x"]
        assert temperature.dims[1][0] == f["dimension_scales/x"]


def test_filters(corpus: dict[str, Path]) -> None:
    with h5py.File(corpus["corpus_filters.h5"], "r") as f:
        assert set(f) == set(FILTER_DATASETS)
        reference_ints = f["gzip"][()]
        for name, pipeline in FILTER_DATASETS.items():
            dset = f[name]
            dcpl = dset.id.get_create_plist()
            found = tuple(dcpl.get_filter(i)[0] for i in range(dcpl.get_nfilters()))
            assert found == pipeline, name
            assert dset.chunks == (16, 16) and dset.shape == (60, 50)
            if dset.dtype.kind == "i" and dset.dtype.itemsize == 4:
                np.testing.assert_array_equal(dset[()], reference_ints, err_msg=name)
        floats = f["fletcher32"][()]
        np.testing.assert_allclose(f["scaleoffset_float"][()], floats, atol=1e-3)
        np.testing.assert_array_equal(f["nbit"][()], reference_ints - 50)
        for name in ("bitshuffle_zstd", "blosc_zstd_bitshuffle", "blosc2", "zstd"):
            np.testing.assert_array_equal(f[name][()], floats)

        def masks(name: str) -> Counter[int]:
            found: Counter[int] = Counter()
            f[name].id.chunk_iter(lambda info: found.update([info.filter_mask]))
            return found

        assert masks("gzip_chunk_filter_skipped") == Counter({0: 15, 1: 1})
        assert f["gzip_chunk_filter_skipped"].id.get_chunk_info_by_coord((0, 0)).size == 1024
        assert masks("shuffle_lzf_partly_incompressible")[2] >= 2  # lzf skipped, shuffle kept
        assert masks("blosc_incompressible")[1] >= 1


def test_links_and_vds(corpus: dict[str, Path]) -> None:
    with h5py.File(corpus["corpus_links.h5"], "r") as f:
        assert f["data/hardlink"] == f["data/original"]
        assert f["group_hardlink"] == f["data"]
        assert isinstance(f.get("soft/to_dataset", getlink=True), h5py.SoftLink)
        assert f["soft/to_dataset"] == f["data/original"]
        assert f["soft/to_group"] == f["data"]
        assert f["data/relative"] == f["data/original"]
        link = f.get("external/to_dataset", getlink=True)
        assert isinstance(link, h5py.ExternalLink) and link.filename == "corpus_target.h5"
        np.testing.assert_array_equal(f["external/to_dataset"][()], np.arange(12).reshape(3, 4))
        assert "values" in f["external/to_group"]

        stitched = f["vds/stitched"]
        assert stitched.is_virtual
        sources = [(s.file_name, s.dset_name) for s in stitched.virtual_sources()]
        assert sources == [("corpus_vds_src_0.h5", "frames"), ("corpus_vds_src_1.h5", "frames")]
        expected = np.concatenate(
            [np.arange(60).reshape(3, 4, 5), np.arange(60).reshape(3, 4, 5) + 1000]
        )
        np.testing.assert_array_equal(stitched[()], expected)
        padded = f["vds/padded"]
        assert padded.fillvalue == -1 and (padded[3] == -1).all() and (padded[7] == -1).all()
        same = f["vds/same_file"]
        assert same.virtual_sources()[0].file_name == "."
        np.testing.assert_array_equal(same[()], f["data/original"][:, 0])

    with h5py.File(corpus["corpus_dangling.h5"], "r") as f:
        assert isinstance(f.get("dangling_external", getlink=True), h5py.ExternalLink)
        assert isinstance(f.get("dangling_soft", getlink=True), h5py.SoftLink)
        for name in ("dangling_external", "dangling_soft"):
            with pytest.raises(KeyError):
                f[name]
        assert f["ok"].shape == (3,)

    with h5py.File(corpus["corpus_cycle.h5"], "r") as f:
        assert f["a/b/c/up"] == f["a"]
        names: list[str] = []
        f.visit(names.append)
        assert names == ["a", "a/b", "a/b/c", "a/b/c/values"]
        assert isinstance(f.get("loop_1", getlink=True), h5py.SoftLink)


def test_nexus(corpus: dict[str, Path]) -> None:
    with h5py.File(corpus["corpus_nexus.nxs"], "r") as f:
        assert f.attrs["NX_class"] == "NXroot" and f.attrs["default"] == "entry"
        entry = f["entry"]
        assert entry.attrs["NX_class"] == "NXentry" and entry.attrs["default"] == "data"
        assert entry["title"].shape == () and entry["title"].id.get_type().is_variable_str()
        nxdata = entry["data"]
        assert nxdata.attrs["signal"] == "data"
        assert list(nxdata.attrs["axes"]) == ["frame_number", "y", "x"]
        assert nxdata["data"] == entry["instrument/detector/data"]
        assert entry["sample"].attrs["NX_class"] == b"NXsample"  # fixed-length attribute
        legacy = entry["legacy/counts"]
        assert legacy.attrs["signal"] == 1 and legacy.attrs["axes"] == b"y:x"


def test_new_format_features(corpus: dict[str, Path]) -> None:
    with h5py.File(corpus["corpus_latest.h5"], "r") as f:
        assert f.id.get_create_plist().get_file_space_strategy()[0] != (
            h5py.h5f.FSPACE_STRATEGY_PAGE
        )
        index = f["chunk_index"]
        # The chunk index HDF5 picks follows from these properties.
        assert index["single_chunk"].chunks == index["single_chunk"].shape
        implicit = index["implicit"].id.get_create_plist()
        assert implicit.get_alloc_time() == h5py.h5d.ALLOC_TIME_EARLY
        assert implicit.get_nfilters() == 0
        assert index["fixed_array"].maxshape == (24, 24)
        assert index["extensible_array"].maxshape == (None, 24)
        assert index["btree_v2"].maxshape == (None, None)
        assert h5py.h5o.get_info(f["dense_attributes"].id).num_attrs == 41
        assert f["dense_attributes"].attrs["large"].nbytes == 102_400
        assert list(f["creation_order"]) == ["zulu", "alpha", "mike"]
        assert list(f["creation_order"].attrs) == ["zulu", "alpha", "mike"]


def test_paged_file_space(corpus: dict[str, Path]) -> None:
    with h5py.File(corpus["corpus_paged.h5"], "r") as f:
        fcpl = f.id.get_create_plist()
        assert fcpl.get_file_space_strategy()[0] == h5py.h5f.FSPACE_STRATEGY_PAGE
        assert fcpl.get_file_space_page_size() == 4096
        assert f["chunked"].id.get_num_chunks() == 16
        assert corpus["corpus_paged.h5"].stat().st_size % 4096 == 0


def test_userblock_offsets_are_file_offsets(corpus: dict[str, Path]) -> None:
    path = corpus["corpus_userblock.h5"]
    blob = path.read_bytes()
    assert blob.startswith(b"hyperslab corpus user block")
    with h5py.File(path, "r") as f:
        assert f.userblock_size == 512
        dset = f["chunked"]
        info = dset.id.get_chunk_info_by_coord((8, 0))
        assert info.byte_offset >= 512
        raw = zlib.decompress(blob[info.byte_offset : info.byte_offset + info.size])
        np.testing.assert_array_equal(np.frombuffer(raw, "<i4").reshape(8, 8), dset[8:16, 0:8])
        offset = f["contiguous"].id.get_offset()
        np.testing.assert_array_equal(
            np.frombuffer(blob[offset : offset + 800], "<f8"), np.arange(100)
        )


def test_external_raw_storage(corpus: dict[str, Path]) -> None:
    with h5py.File(corpus["corpus_efile.h5"], "r") as f:
        dcpl = f["external_storage"].id.get_create_plist()
        segments = [dcpl.get_external(i) for i in range(dcpl.get_external_count())]
        assert segments == [(b"corpus_efile.raw", 64, 80), (b"corpus_efile.raw", 256, 80)]
        values = _open_efile_dataset(f, "external_storage")[()]
    np.testing.assert_array_equal(values, np.r_[np.arange(20), np.arange(20) + 100])
