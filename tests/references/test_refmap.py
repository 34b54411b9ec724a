"""Reference maps: kerchunk JSON and Parquet round trips, malformed input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hyperslab.errors import CorruptError, FormatVersionError, NotFoundError
from hyperslab.references.refmap import ArrayRefs, RefMap, choose_format, read_refmap, write_refmap


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
    arr.inline = {i: draw(st.binary(max_size=40)) for i in inl}
    m = RefMap(
        sources=[f"/data/file {i}.h5" for i in range(nsrc)], groups={"": {"t": "é"}, "g": {}}
    )
    m.arrays["g/a"] = arr
    return m


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
    doc = json.loads(json.dumps(m.to_kerchunk()))
    assert _canonical(RefMap.from_kerchunk(doc)) == _canonical(m)


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
    m.write_parquet(out, record_size=128)
    assert sorted(p.name for p in (out / "a").iterdir()) == [f"refs.{i}.parq" for i in range(8)]
    back = RefMap.read_parquet(out)
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
        RefMap.from_kerchunk(doc)  # type: ignore[arg-type]


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
