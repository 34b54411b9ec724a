"""``/api/download``: the whole entry (or one group) as HDF5 equals h5py on the source
file; NetCDF equals the store's xarray dataset; 413, 401/403 and 404 as elsewhere."""

from __future__ import annotations

import io
from typing import Any

import h5py
import numpy as np
import pytest

pytest.importorskip("starlette")

from hyperslab.access.dataset import dataset_from_store
from hyperslab.access.store import open_store
from hyperslab.serve.app import create_app
from tests.serve.conftest import ALICE, BOB, ENTRY, OTHER, Shared, auth


def _datasets(group: h5py.Group, prefix: str = "") -> dict[str, h5py.Dataset]:
    """Every dataset under ``group`` by every path (hard links too, unlike ``visititems``)."""
    out: dict[str, h5py.Dataset] = {}
    for name, obj in group.items():
        if isinstance(obj, h5py.Dataset):
            out[prefix + name] = obj
        else:
            out.update(_datasets(obj, f"{prefix}{name}/"))
    return out


def _source(shared: Shared) -> dict[str, Any]:
    """Every dataset of the sample entry's file: path → values (text as str)."""
    with h5py.File(shared.files[ENTRY]) as f:
        return {n: d.asstr()[()] if d.dtype.kind == "O" else d[()] for n, d in _datasets(f).items()}


def _download(client: Any, key: str = BOB, **params: Any) -> Any:
    res = client.get(f"/api/download/{ENTRY}", params=params, headers=auth(key))
    assert res.status_code == 200, res.text
    return res


def test_whole_entry_h5_equals_h5py(client: Any, shared: Shared) -> None:
    want = _source(shared)
    res = _download(client)
    assert res.headers["content-disposition"] == 'attachment; filename="scan_0001_gzip.h5"'
    assert res.headers["content-type"] == "application/x-hdf5"
    with h5py.File(io.BytesIO(res.content)) as f:
        got = _datasets(f)
        assert set(got) == set(want)
        for path, values in want.items():
            if isinstance(values, str):
                assert got[path].asstr()[()] == values, path
            else:
                assert got[path].dtype == np.asarray(values).dtype, path
                np.testing.assert_array_equal(got[path][()], values, err_msg=path)
        assert f["entry/data"].attrs["NX_class"] == "NXdata"
        assert f["entry/data/data"].attrs["units"] == "counts"
        assert "_ARRAY_DIMENSIONS" not in f["entry/data/data"].attrs


def test_group_and_selection(client: Any, shared: Shared) -> None:
    want = _source(shared)
    with h5py.File(io.BytesIO(_download(client, group="entry/data").content)) as f:
        names: list[str] = []
        f.visit(names.append)
        assert sorted(names) == [
            "entry",
            "entry/data",
            "entry/data/data",
            "entry/data/frame_number",
        ]
        np.testing.assert_array_equal(f["entry/data/data"][()], want["entry/data/data"])
    # sel names 3 axes: the 3-D arrays are cut, the 1-D and 2-D ones come whole
    with h5py.File(io.BytesIO(_download(client, sel="1:3,::2").content)) as f:
        np.testing.assert_array_equal(f["entry/data/data"][()], want["entry/data/data"][1:3, ::2])
        np.testing.assert_array_equal(
            f["entry/instrument/detector/pixel_mask"][()],
            want["entry/instrument/detector/pixel_mask"][1:3, ::2],
        )
        np.testing.assert_array_equal(
            f["entry/data/frame_number"][()], want["entry/data/frame_number"]
        )
    with h5py.File(io.BytesIO(_download(client, sel="-1,:,:").content)) as f:
        np.testing.assert_array_equal(f["entry/data/data"][()], want["entry/data/data"][-1])
        assert f["entry/instrument/detector/pixel_mask"].shape == (24, 32)


def test_netcdf_equals_store_dataset(client: Any, shared: Shared) -> None:
    xr = pytest.importorskip("xarray")
    res = _download(client, format="nc")
    assert res.headers["content-disposition"] == 'attachment; filename="scan_0001_gzip.nc"'
    store = open_store(shared.repo, ENTRY)
    want = dataset_from_store(store, chunks=None).load()
    with xr.open_dataset(io.BytesIO(res.content)) as got:
        xr.testing.assert_identical(got.load(), want)
    res = _download(client, format="nc", group="entry/monitor")
    with xr.open_dataset(io.BytesIO(res.content)) as got:
        np.testing.assert_array_equal(got["data"].values, _source(shared)["entry/monitor/data"])


def test_limits_keys_and_errors(shared: Shared, client: Any) -> None:
    from starlette.testclient import TestClient

    with TestClient(create_app(shared.repo, keys=shared.keys, max_slice_bytes=1000)) as small:
        for params in ({}, {"format": "nc"}):
            res = small.get(f"/api/download/{ENTRY}", params=params, headers=auth(BOB))
            assert res.status_code == 413, res.text
            assert res.json()["error"]["code"] == "too_large"
        res = small.get(
            f"/api/download/{ENTRY}",
            params={"sel": "0,0:1,0:1", "group": "entry/data"},
            headers=auth(BOB),
        )
        assert res.status_code == 200, res.text
        res = small.get(  # a NetCDF selection is counted after it cuts, before reading
            f"/api/download/{ENTRY}", params={"format": "nc", "sel": "0,0:1,0:1"}, headers=auth(BOB)
        )
        assert res.status_code == 200, res.text
    assert client.get(f"/api/download/{ENTRY}").status_code == 401
    assert client.get(f"/api/download/{ENTRY}", headers=auth("wrong")).status_code == 401
    assert client.get(f"/api/download/{OTHER}", headers=auth(ALICE)).status_code == 403
    assert client.get(f"/api/download/{ENTRY}", headers=auth(ALICE)).status_code == 200
    for params in ({"group": "entry/nope"}, {"group": "entry/nope", "format": "nc"}):
        res = client.get(f"/api/download/{ENTRY}", params=params, headers=auth(BOB))
        assert res.status_code == 404 and res.json()["error"]["code"], res.text
    res = client.get("/api/download/run42/absent", headers=auth(BOB))
    assert res.status_code == 404
    res = client.get(f"/api/download/{ENTRY}", params={"format": "zip"}, headers=auth(BOB))
    assert res.status_code == 400


def test_etag_immutable_for_snapshot(client: Any, shared: Shared) -> None:
    sid = shared.repo.resolve("main")
    res = _download(client, ref=sid, group="entry/data")
    assert "immutable" in res.headers["cache-control"]
    again = client.get(
        f"/api/download/{ENTRY}",
        params={"ref": sid, "group": "entry/data"},
        headers={**auth(BOB), "If-None-Match": res.headers["etag"]},
    )
    assert again.status_code == 304
    assert "immutable" not in _download(client, group="entry/data").headers["cache-control"]


@pytest.mark.parametrize(
    ("sel", "isel"),
    [
        ("1:3,::2", {"frame_number": slice(1, 3), "phony_dim_0": slice(None, None, 2)}),
        ("-1,5,:", {"frame_number": -1, "phony_dim_0": 5}),
        ("...,3:9:3", {"phony_dim_1": slice(3, 9, 3)}),
    ],
)
def test_netcdf_selection_equals_xarray_isel(
    client: Any, shared: Shared, sel: str, isel: dict[str, Any]
) -> None:
    """``sel=`` of a NetCDF download cuts the signal's dimensions by name (coordinates
    too): the file equals xarray's ``isel`` of the same group."""
    xr = pytest.importorskip("xarray")
    store = open_store(shared.repo, ENTRY)
    want = dataset_from_store(store, chunks=None).isel(isel).load()
    assert want["data"].size < 4 * 24 * 32  # the selection cut something
    res = _download(client, format="nc", sel=sel)
    with xr.open_dataset(io.BytesIO(res.content)) as got:
        xr.testing.assert_identical(got.load(), want)
    # a 1-D group: its one data variable's dimension
    want = dataset_from_store(store, "entry/monitor", chunks=None).isel(phony_dim_0=slice(1, 3))
    res = _download(client, format="nc", group="entry/monitor", sel="1:3")
    with xr.open_dataset(io.BytesIO(res.content)) as got:
        np.testing.assert_array_equal(got["data"].values, want["data"].values)
        assert got["data"].values.tolist() == _source(shared)["entry/monitor/data"][1:3].tolist()


@pytest.mark.parametrize("sel", ["0,0,0,0", "x", "99,:,:", "::-1"])
def test_netcdf_bad_selection_is_400(client: Any, sel: str) -> None:
    res = client.get(
        f"/api/download/{ENTRY}", params={"format": "nc", "sel": sel}, headers=auth(BOB)
    )
    assert res.status_code == 400 and res.json()["error"]["message"], res.text
