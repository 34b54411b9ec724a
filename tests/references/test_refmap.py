"""Reference maps: kerchunk JSON and Parquet round trips, malformed input."""

from __future__ import annotations

import base64
import io
import itertools
import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hyperslab.errors import CorruptError, FormatVersionError, NotFoundError
from hyperslab.references.kerchunk_json import (
    _b64_rows,
    from_kerchunk,
    to_kerchunk,
    use_templates,
    write_kerchunk_json,
)
from hyperslab.references.kerchunk_parquet import read_parquet, write_parquet
from hyperslab.references.refmap import (
    ArrayRefs,
    InlineChunks,
    RefMap,
    copy_ranges,
    inline_columns,
)
from hyperslab.references.refmap_files import choose_format, read_refmap, write_refmap


def _zarray(shape: list[int], chunks: list[int]) -> dict:
    return {
        "zarr_format": 2,
        "shape": shape,
        "chunks": chunks,
        "dtype": "<u2",
        "compressor": None,
        "fill_value": None,
        "filters": None,
        "order": "C",
    }


@st.composite
def refmaps(draw: st.DrawFn) -> RefMap:
    ndim = draw(st.integers(0, 3))
    shape = draw(st.lists(st.integers(1, 9), min_size=ndim, max_size=ndim))
    chunks = [draw(st.integers(1, s)) for s in shape]
    arr = ArrayRefs(
        path="g/a", zarray=_zarray(shape, chunks), attrs={"units": "counts", "x": [1.5, None]}
    )
    n = arr.n_chunks
    chosen = draw(st.lists(st.integers(0, n - 1), unique=True, max_size=n))
    split = draw(st.integers(0, len(chosen)))
    refd, inl = sorted(chosen[:split]), chosen[split:]
    nsrc = draw(st.integers(1, 3))
    arr.index = np.array(refd, np.int64)
    arr.source = np.array([draw(st.integers(0, nsrc - 1)) for _ in refd], np.int32)
    arr.offset = np.array([draw(st.integers(0, 2**40)) for _ in refd], np.int64)
    arr.length = np.array([draw(st.integers(1, 2**24)) for _ in refd], np.int64)
    inline = {i: draw(st.binary(max_size=40)) for i in inl}
    if draw(st.booleans()):
        arr.inline = inline
    else:  # columns for some chunks (as the converter builds them), single assignments for others
        cut = draw(st.integers(0, len(inl)))
        arr.inline = _columns({i: inline[i] for i in inl[:cut]})
        for i in inl[cut:]:
            arr.inline[i] = inline[i]
    m = RefMap(
        sources=[f"/data/file {i}.h5" for i in range(nsrc)], groups={"": {"t": "é"}, "g": {}}
    )
    m.arrays["g/a"] = arr
    return m


def _columns(d: dict[int, bytes]) -> InlineChunks:
    keys = sorted(d)
    offsets = np.cumsum([0, *(len(d[k]) for k in keys)])
    return InlineChunks.from_columns(
        np.array(keys, np.int64), offsets, b"".join(d[k] for k in keys)
    )


def _canonical(m: RefMap) -> dict:
    """Chunk → (url, offset, length) or bytes, independent of source numbering."""
    out = {}
    for p, a in m.arrays.items():
        for i in range(a.index.size):
            out[(p, int(a.index[i]))] = (
                m.sources[int(a.source[i])],
                int(a.offset[i]),
                int(a.length[i]),
            )
        for i, b in a.inline.items():
            out[(p, i)] = b
    return {"chunks": out, "meta": dict(m.metadata_items())}


@settings(max_examples=60, deadline=None)
@given(refmaps())
def test_kerchunk_json_round_trip(m: RefMap) -> None:
    doc = json.loads(json.dumps(to_kerchunk(m)))
    assert _canonical(from_kerchunk(doc)) == _canonical(m)


@settings(max_examples=60, deadline=None)
@given(refmaps(), st.sampled_from([None, True, False]))
def test_written_json_is_to_kerchunk(m: RefMap, templates: bool | None) -> None:
    """The streaming writer and the dict builder give the same document."""
    buf = io.StringIO()
    write_kerchunk_json(m, buf, templates=templates)
    doc = json.loads(buf.getvalue())
    assert doc == to_kerchunk(m, templates=templates)
    assert ("templates" in doc) == use_templates(m, templates)
    assert _canonical(from_kerchunk(doc)) == _canonical(m)


def test_large_maps_write_urls_in_full(tmp_path: Path) -> None:
    arr = ArrayRefs(path="a", zarray=_zarray([20_000], [1]))
    arr.index = np.arange(20_000, dtype=np.int64)
    arr.source = np.zeros(20_000, np.int32)
    arr.offset, arr.length = arr.index * 8, np.full(20_000, 8, np.int64)
    m = RefMap(sources=["/d/x.h5"], arrays={"a": arr})
    doc = json.loads(write_refmap(m, tmp_path / "m.json").read_text())
    assert "templates" not in doc and doc["refs"]["a/7"] == ["/d/x.h5", 56, 8]
    small = RefMap(sources=["/d/x.h5"], arrays={"a": ArrayRefs("a", _zarray([4], [1]))})
    small.arrays["a"].index = np.array([1], np.int64)
    small.arrays["a"].source = np.array([0], np.int32)
    small.arrays["a"].offset, small.arrays["a"].length = np.array([5]), np.array([3])
    doc = to_kerchunk(small)
    assert doc["templates"] == {"s0": "/d/x.h5"} and doc["refs"]["a/1"] == ["{{s0}}", 5, 3]


@settings(max_examples=25, deadline=None)
@given(refmaps())
def test_parquet_round_trip(tmp_path_factory: pytest.TempPathFactory, m: RefMap) -> None:
    d = tmp_path_factory.mktemp("pq") / "refs.parquet"
    write_refmap(m, d, "parquet")
    assert _canonical(read_refmap(d)) == _canonical(m)


def test_parquet_records_split_and_sparse(tmp_path: Path) -> None:
    arr = ArrayRefs(path="a", zarray=_zarray([1000], [1]))
    arr.index = np.arange(0, 1000, 3, dtype=np.int64)
    arr.source = np.zeros(arr.index.size, np.int32)
    arr.offset = arr.index * 10
    arr.length = np.full(arr.index.size, 10, np.int64)
    m = RefMap(sources=["/x.h5"], arrays={"a": arr})
    out = tmp_path / "m.parquet"
    write_parquet(m, out, record_size=128)
    assert sorted(p.name for p in (out / "a").iterdir()) == [f"refs.{i}.parq" for i in range(8)]
    back = read_parquet(out)
    np.testing.assert_array_equal(back.arrays["a"].index, arr.index)
    np.testing.assert_array_equal(back.arrays["a"].offset, arr.offset)


def test_write_is_atomic_and_replaces(tmp_path: Path) -> None:
    m = RefMap(sources=["/x.h5"])
    m.arrays["a"] = ArrayRefs(path="a", zarray=_zarray([4], [2]), inline={0: b"ab"})
    target = tmp_path / "m.json"
    target.write_text("old")
    write_refmap(m, target)
    assert json.loads(target.read_text())["version"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]  # no temp debris


def test_parquet_refuses_to_replace_a_foreign_directory(tmp_path: Path) -> None:
    d = tmp_path / "precious.parquet"
    d.mkdir()
    (d / "keep.txt").write_text("mine")
    with pytest.raises(Exception, match="not a Parquet reference map"):
        write_refmap(RefMap(), d, "parquet")
    assert (d / "keep.txt").read_text() == "mine"


@pytest.mark.parametrize(
    ("doc", "error"),
    [
        ({"version": 7, "refs": {}}, FormatVersionError),
        ({"version": 1, "refs": {"a/0": ["x", 0, 1]}}, CorruptError),  # chunk without .zarray
        (
            {
                "version": 1,
                "refs": {"a/.zarray": json.dumps(_zarray([4], [2])), "a/9": "base64:AA=="},
            },
            CorruptError,
        ),
        (
            {
                "version": 1,
                "refs": {"a/.zarray": json.dumps(_zarray([4], [2])), "a/0": "base64:!!"},
            },
            CorruptError,
        ),
        (
            {
                "version": 1,
                "refs": {"a/.zarray": json.dumps(_zarray([4], [2])), "a/0": ["{{u}}", 0, 1]},
            },
            CorruptError,
        ),
        (
            {
                "version": 1,
                "refs": {"a/.zarray": json.dumps({**_zarray([4], [2]), "zarr_format": 3})},
            },
            FormatVersionError,
        ),
        ([1, 2], CorruptError),
    ],
)
def test_malformed_maps_are_named_errors(doc: object, error: type[Exception]) -> None:
    with pytest.raises(error):
        from_kerchunk(doc)  # type: ignore[arg-type]


def test_read_errors(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError):
        read_refmap(tmp_path / "nope.json")
    bad = tmp_path / "trunc.json"
    bad.write_text('{"version": 1, "refs": {"a/.zarr')
    with pytest.raises(CorruptError):
        read_refmap(bad)
    with pytest.raises(NotFoundError):
        read_refmap(tmp_path)  # a directory without .zmetadata


def test_choose_format() -> None:
    assert choose_format("x.json", 10**7) == "json"
    assert choose_format("x.parquet", 1) == "parquet"
    assert choose_format("x", 99_999) == "json"
    assert choose_format("x", 100_000) == "parquet"


@settings(max_examples=100, deadline=None)
@given(st.lists(st.binary(max_size=20), max_size=30))
def test_vectorised_base64_is_base64(rows: list[bytes]) -> None:
    offsets = np.cumsum([0, *map(len, rows)])
    text, pos = _b64_rows(np.frombuffer(b"".join(rows), np.uint8), offsets)
    assert [text[a:b] for a, b in itertools.pairwise(pos)] == [
        base64.b64encode(r).decode() for r in rows
    ]


def test_copy_ranges_small_and_large() -> None:
    rng = np.random.default_rng(1)
    src = rng.integers(0, 256, 300_000, dtype=np.uint8)
    lengths = np.array([0, 1, 7, 70_000, 3, 100_000, 2], np.int64)
    starts = np.array([5, 10, 20, 30, 100_100, 150_000, 299_998], np.int64)
    dests = np.cumsum([0, *lengths[:-1]])
    dst = np.zeros(int(lengths.sum()), np.uint8)
    copy_ranges(src, starts, dst, dests, lengths)
    want = b"".join(src[s : s + n].tobytes() for s, n in zip(starts, lengths, strict=True))
    assert dst.tobytes() == want


@settings(max_examples=100, deadline=None)
@given(
    st.dictionaries(st.integers(0, 50), st.binary(max_size=6), max_size=12),
    st.lists(
        st.tuples(st.sampled_from(["set", "del"]), st.integers(0, 60), st.binary(max_size=6)),
        max_size=12,
    ),
)
def test_inline_chunks_behave_like_a_dict(
    start: dict[int, bytes], ops: list[tuple[str, int, bytes]]
) -> None:
    model = dict(start)
    inl = _columns(start)
    for op, k, v in ops:
        if op == "set":
            model[k] = v
            inl[np.int64(k) if k % 2 else k] = v  # numpy integers are keys too
        elif k in model:
            del model[k]
            del inl[k]
        else:
            with pytest.raises(KeyError):
                del inl[k]
    assert dict(inl) == model and inl == model
    assert len(inl) == len(model) and sorted(inl) == sorted(model)
    assert all((k in inl) == (k in model) for k in range(62))
    assert "1" not in inl and 1.5 not in inl
    with pytest.raises(KeyError):
        inl[61]
    assert inl.nbytes == sum(map(len, model.values()))
    lo, hi = 10, 40
    index, offsets, data = inl.range_columns(lo, hi)
    assert {int(k): data[offsets[i] : offsets[i + 1]].tobytes() for i, k in enumerate(index)} == {
        k: v for k, v in model.items() if lo <= k < hi
    }
    index, offsets, data = inl.columns()
    assert index.tolist() == sorted(model)
    assert [data[offsets[i] : offsets[i + 1]].tobytes() for i in range(index.size)] == [
        model[k] for k in sorted(model)
    ]
    assert dict(inl) == model  # unchanged by folding into columns
    d_index, _, _ = inline_columns(model, lo, hi)
    assert d_index.tolist() == sorted(k for k in model if lo <= k < hi)


def test_inline_chunks_reject_bad_columns() -> None:
    with pytest.raises(ValueError):
        InlineChunks.from_columns(np.array([2, 1]), np.array([0, 1, 2]), b"ab")
    with pytest.raises(ValueError):
        InlineChunks.from_columns(np.array([1, 2]), np.array([0, 1, 3]), b"ab")
    with pytest.raises(TypeError):
        InlineChunks()["x"] = b"a"  # type: ignore[index]


def test_parquet_map_reads_through_fsspec(tmp_path: Path) -> None:
    """fsspec's own lazy reader (pyarrow engine) reads what write_parquet writes."""
    import fsspec
    from fsspec.implementations.reference import LazyReferenceMapper

    raw = tmp_path / "x.bin"
    raw.write_bytes(np.arange(100, dtype="<u2").tobytes())
    arr = ArrayRefs(path="g/a", zarray=_zarray([100], [10]))
    arr.index = np.array([0, 3, 9], np.int64)
    arr.source = np.zeros(3, np.int32)
    arr.offset, arr.length = arr.index * 20, np.full(3, 20, np.int64)
    arr.inline = _columns(
        {i: np.arange(10 * i, 10 * i + 10, dtype="<u2").tobytes() for i in (1, 2)}
    )
    m = RefMap(sources=[str(raw)], groups={"": {}, "g": {}}, arrays={"g/a": arr})
    out = write_refmap(m, tmp_path / "m.parquet")
    lazy = LazyReferenceMapper(str(out), fs=fsspec.filesystem("file"), engine="pyarrow")
    fs = fsspec.filesystem("reference", fo=lazy, remote_protocol="file")
    assert fs.cat("g/a/3") == raw.read_bytes()[60:80]
    assert fs.cat("g/a/2") == np.arange(20, 30, dtype="<u2").tobytes()
    assert _canonical(read_refmap(out)) == _canonical(m)
