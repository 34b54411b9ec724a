"""Refmaps packed as single repository objects round-trip exactly (JSON and Parquet)."""

from __future__ import annotations

import numpy as np
import pytest

from hyperslab.errors import CorruptError
from hyperslab.references.refmap import ArrayRefs, RefMap
from hyperslab.references.refmap_objects import decode_refmap, encode_refmap


def _refmap() -> RefMap:
    rm = RefMap(sources=["hyperslab-source:" + "a" * 64, "hyperslab-source:" + "b" * 64])
    z = {
        "zarr_format": 2,
        "shape": [10, 4],
        "chunks": [1, 4],
        "dtype": "<i4",
        "compressor": None,
        "filters": None,
        "fill_value": None,
        "order": "C",
    }
    a = ArrayRefs("entry/data", dict(z), {"units": "counts"})
    a.index = np.array([0, 3, 4, 9], np.int64)
    a.source = np.array([0, 1, 0, 1], np.int32)
    a.offset = np.array([100, 200, 300, 400], np.int64)
    a.length = np.array([16, 16, 16, 16], np.int64)
    a.inline[1] = b"\x01" * 16
    a.inline[7] = b""  # an empty chunk is still a chunk
    a.inline[5] = bytes(range(16))
    b = ArrayRefs("entry/inline_only", dict(z, shape=[3, 4]))
    b.inline[2] = b"xyz"
    c = ArrayRefs("entry/empty", dict(z, shape=[0, 4]))
    rm.arrays = {x.path: x for x in (a, b, c)}
    rm.groups = {"": {"title": "t"}, "entry": {"NX_class": "NXentry"}}
    return rm


@pytest.mark.parametrize("fmt", ["json", "parquet"])
def test_roundtrip(fmt: str) -> None:
    rm = _refmap()
    data, got_fmt = encode_refmap(rm, fmt)  # type: ignore[arg-type]
    assert got_fmt == fmt
    back = decode_refmap(data, got_fmt)
    assert set(back.arrays) == set(rm.arrays)
    assert back.groups == rm.groups
    for path, arr in rm.arrays.items():
        got = back.arrays[path]
        assert got.zarray == arr.zarray and got.attrs == arr.attrs
        assert [back.sources[s] for s in got.source] == [rm.sources[s] for s in arr.source]
        assert list(got.index) == list(arr.index)
        assert list(got.offset) == list(arr.offset) and list(got.length) == list(arr.length)
        assert dict(got.inline.items()) == dict(arr.inline.items())
    assert encode_refmap(rm, fmt)[0] == data  # deterministic: same map, same id


def test_parquet_inline_row_without_bytes_is_corrupt() -> None:
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    data, _ = encode_refmap(_refmap(), "parquet")
    table = pq.read_table(io.BytesIO(data))
    raw = table.column("raw").to_pylist()
    raw[next(i for i, v in enumerate(raw) if v is not None)] = None

    broken = table.set_column(5, "raw", pa.array(raw, pa.binary()))
    buf = io.BytesIO()
    pq.write_table(broken, buf)
    with pytest.raises(CorruptError, match="no bytes"):
        decode_refmap(buf.getvalue(), "parquet")
