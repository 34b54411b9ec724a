"""``/api/slice``: every format's values equal h5py's for several selections; malformed
selections are 400 naming the part, too-large ones 413; keys as on the other endpoints."""

from __future__ import annotations

import csv
import io
import json
from typing import Any

import h5py
import numpy as np
import pytest

pytest.importorskip("starlette")

from hyperslab.serve.app import create_app
from hyperslab.serve.slices import colormap, encode, parse_selection, png_scale
from tests.serve.conftest import ALICE, BOB, ENTRY, OTHER, Shared, auth

DATA = "entry/data/data"

#: (sel, the same selection in Python)
SELECTIONS: list[tuple[str, Any]] = [
    ("1", np.s_[1]),
    ("0,2:20:3,-5:", np.s_[0, 2:20:3, -5:]),
    ("...,7", np.s_[..., 7]),
    ("-1,,::4", np.s_[-1, :, ::4]),
    ("1:3,:,-1", np.s_[1:3, :, -1]),
    ("2,-3", np.s_[2, -3]),
]


@pytest.fixture(scope="module")
def frames(shared: Shared) -> np.ndarray:
    with h5py.File(shared.files[ENTRY]) as f:
        return np.asarray(f[DATA][()])


def _get(client: Any, sel: str, fmt: str, key: str = BOB, **params: Any) -> Any:
    res = client.get(
        f"/api/slice/{ENTRY}/{DATA}",
        params={"sel": sel, "format": fmt, **params},
        headers=auth(key),
    )
    assert res.status_code == 200, res.text
    return res


@pytest.mark.parametrize(("sel", "index"), SELECTIONS)
def test_npy_raw_json_h5_equal_h5py(client: Any, frames: np.ndarray, sel: str, index: Any) -> None:
    want = frames[index]
    got = np.load(io.BytesIO(_get(client, sel, "npy").content), allow_pickle=False)
    assert got.dtype == want.dtype and got.shape == want.shape
    np.testing.assert_array_equal(got, want)

    raw = _get(client, sel, "raw")
    shape = tuple(int(n) for n in raw.headers["x-shape"].split(",") if n)
    assert shape == want.shape and raw.headers["x-dtype"] == want.dtype.str
    np.testing.assert_array_equal(
        np.frombuffer(raw.content, dtype=raw.headers["x-dtype"]).reshape(shape), want
    )

    doc = _get(client, sel, "json").json()
    assert doc["shape"] == list(want.shape) and doc["dtype"] == want.dtype.str
    np.testing.assert_array_equal(np.array(doc["data"], dtype=want.dtype), want)

    with h5py.File(io.BytesIO(_get(client, sel, "h5").content)) as f:
        np.testing.assert_array_equal(f["data"][()], want)
        assert f["data"].dtype == want.dtype
        assert f["data"].attrs["units"] == "counts"


@pytest.mark.parametrize(("sel", "index"), SELECTIONS)
def test_csv_tiff_png_equal_h5py(client: Any, frames: np.ndarray, sel: str, index: Any) -> None:
    import imagecodecs
    import tifffile

    want = frames[index]
    if want.ndim in (1, 2):
        text = _get(client, sel, "csv").text
        rows = [[int(v) for v in row] for row in csv.reader(io.StringIO(text))]
        np.testing.assert_array_equal(np.array(rows).reshape(want.shape), want)
    if want.ndim in (2, 3):
        np.testing.assert_array_equal(
            tifffile.imread(io.BytesIO(_get(client, sel, "tiff").content)), want
        )
    if want.ndim == 2:
        png = imagecodecs.png_decode(_get(client, sel, "png").content)
        values = want.astype(np.float64)
        counted = values[want != np.iinfo(want.dtype).max]  # the gap marker left out
        lo, hi = np.percentile(counted, 1), np.percentile(counted, 99)
        scaled = np.rint(np.clip((values - lo) / (hi - lo), 0, 1) * 255).astype(np.uint8)
        np.testing.assert_array_equal(png, scaled)
        png = imagecodecs.png_decode(_get(client, sel, "png", vmin=0, vmax=1000).content)
        scaled = np.rint(np.clip(values / 1000, 0, 1) * 255).astype(np.uint8)
        np.testing.assert_array_equal(png, scaled)


def test_whole_array_other_arrays_and_refs(shared: Shared, client: Any, frames: np.ndarray) -> None:
    got = np.load(io.BytesIO(_get(client, "", "npy").content))
    np.testing.assert_array_equal(got, frames)
    res = client.get(f"/api/slice/{ENTRY}/entry/data/frame_number?format=json", headers=auth(BOB))
    with h5py.File(shared.files[ENTRY]) as f:
        assert res.json()["data"] == f["entry/data/frame_number"][()].tolist()
    # a pinned snapshot: immutable, with an ETag that answers 304
    sid = shared.repo.resolve("main")
    pinned = _get(client, "1", "npy", ref=sid)
    assert "immutable" in pinned.headers["cache-control"]
    again = client.get(
        f"/api/slice/{ENTRY}/{DATA}",
        params={"sel": "1", "format": "npy", "ref": sid},
        headers={**auth(BOB), "If-None-Match": pinned.headers["etag"]},
    )
    assert again.status_code == 304
    assert "no-cache" in _get(client, "1", "npy").headers["cache-control"]
    assert _get(client, "1", "npy", ref="v1").content == pinned.content
    other = _get(client, "1", "png", ref=sid, vmin=0, vmax=5)
    assert other.headers["etag"] != _get(client, "1", "png", ref=sid).headers["etag"]


@pytest.mark.parametrize(
    ("sel", "fmt", "named"),
    [
        ("1,x", "npy", "'x'"),
        ("1:2:3:4", "npy", "'1:2:3:4'"),
        ("::0", "npy", "'::0'"),
        ("::-1", "npy", "'::-1'"),
        ("4", "npy", "index 4"),
        ("0,-25", "npy", "index -25"),
        ("0,0,0,0", "npy", "4 axes"),
        ("...,1,...", "npy", "'...'"),
        ("1.5", "npy", "'1.5'"),
        ("", "csv", "csv"),
        ("0,0", "tiff", "tiff"),
        ("0,0", "png", "png"),
        ("0", "gif", "format"),
    ],
)
def test_bad_selections_are_400(client: Any, sel: str, fmt: str, named: str) -> None:
    res = client.get(
        f"/api/slice/{ENTRY}/{DATA}", params={"sel": sel, "format": fmt}, headers=auth(BOB)
    )
    assert res.status_code == 400, res.text
    err = res.json()["error"]
    assert err["code"] == "bad_input" and named in err["message"], err


def test_bad_vmin_is_400(client: Any) -> None:
    res = client.get(f"/api/slice/{ENTRY}/{DATA}?sel=0&format=png&vmin=abc", headers=auth(BOB))
    assert res.status_code == 400 and "vmin" in res.json()["error"]["message"]


def test_too_large_is_413(shared: Shared) -> None:
    from starlette.testclient import TestClient

    with TestClient(create_app(shared.repo, keys=shared.keys, max_slice_bytes=24 * 32 * 4)) as c:
        assert c.get(f"/api/slice/{ENTRY}/{DATA}?sel=0", headers=auth(BOB)).status_code == 200
        res = c.get(f"/api/slice/{ENTRY}/{DATA}?sel=0:2", headers=auth(BOB))
        assert res.status_code == 413
        err = res.json()["error"]
        assert err["code"] == "too_large" and "6144 bytes" in err["message"], err


@pytest.mark.parametrize("header", [None, "Bearer wrong-key", f"Basic {ALICE}"])
def test_no_valid_key_is_401(client: Any, header: str | None) -> None:
    res = client.get(
        f"/api/slice/{ENTRY}/{DATA}?sel=0", headers={"Authorization": header} if header else {}
    )
    assert res.status_code == 401 and res.json()["error"]["code"] == "unauthorized"


def test_a_key_reads_only_its_entries(client: Any) -> None:
    assert client.get(f"/api/slice/{ENTRY}/{DATA}?sel=0", headers=auth(ALICE)).status_code == 200
    for url in (f"/api/slice/{OTHER}/{DATA}?sel=0", "/api/slice/run43/missing/x?sel=0"):
        res = client.get(url, headers=auth(ALICE))
        assert res.status_code == 403 and res.json()["error"]["code"] == "forbidden", url


@pytest.mark.parametrize(
    "url",
    [
        f"/api/slice/{ENTRY}/entry/data/nope",
        f"/api/slice/{ENTRY}/entry/data",  # a group
        "/api/slice/run42/nope/entry/data/data",
        f"/api/slice/{ENTRY}/%2e%2e/x",
    ],
)
def test_unknown_arrays_are_404_json(client: Any, url: str) -> None:
    res = client.get(url, headers=auth(BOB))
    assert res.status_code in (400, 404), res.text
    assert res.json()["error"]["code"] in ("not_found", "bad_path")
    assert "Traceback" not in res.text


# --------------------------------------------------------------------------- the encoders


def test_json_writes_non_finite_floats_as_strings() -> None:
    arr = np.array([[1.5, np.nan], [np.inf, -np.inf]])
    doc = json.loads(encode(arr, "json")[0])
    assert doc == {
        "shape": [2, 2],
        "dtype": "<f8",
        "data": [[1.5, "NaN"], ["Infinity", "-Infinity"]],
    }
    assert [[float(v) for v in row] for row in doc["data"]][1] == [np.inf, -np.inf]


def test_png_scaling() -> None:
    arr = np.array([[np.nan, 0.0], [50.0, 100.0]])
    np.testing.assert_array_equal(png_scale(arr, 0, 100), [[0, 0], [128, 255]])
    np.testing.assert_array_equal(png_scale(arr, 10, 10), [[0, 0], [255, 255]])
    np.testing.assert_array_equal(png_scale(np.full((2, 2), np.nan), None, None), 0)
    lo, hi = np.percentile([0.0, 50.0, 100.0], [1, 99])
    want = np.rint(np.clip((np.array([0.0, 50.0, 100.0]) - lo) / (hi - lo), 0, 1) * 255)
    np.testing.assert_array_equal(png_scale(arr, None, None)[[0, 1, 1], [1, 0, 1]], want)


def _hot(x: np.ndarray) -> np.ndarray:
    """matplotlib's ``hot`` as documented: black, red, yellow, white."""
    return np.stack(
        [
            np.clip(x / 0.365, 0, 1),
            np.clip((x - 0.365) / 0.381, 0, 1),
            np.clip((x - 0.746) / 0.254, 0, 1),
        ],
        axis=-1,
    )


def test_png_log_scale_colour_maps_and_percentiles(client: Any, frames: np.ndarray) -> None:
    import imagecodecs

    frame = frames[2]
    values = frame.astype(np.float64)
    counted = values[frame != np.iinfo(frame.dtype).max]
    lo, hi = np.percentile(counted, 5), np.percentile(counted, 95)
    t = np.clip((values - lo) / (hi - lo), 0, 1)
    log = np.log(1 + 1000 * t) / np.log(1001)
    level = np.rint(log * 255).astype(np.uint8)
    res = _get(client, "2", "png", scale="log", pmin=5, pmax=95)
    np.testing.assert_array_equal(imagecodecs.png_decode(res.content), level)
    res = _get(client, "2", "png", scale="log", pmin=5, pmax=95, cmap="hot")
    rgb = imagecodecs.png_decode(res.content)
    assert rgb.shape == (*frame.shape, 3)
    np.testing.assert_array_equal(rgb, np.rint(_hot(level / 255.0) * 255).astype(np.uint8))
    inverted = imagecodecs.png_decode(_get(client, "2", "png", cmap="gray_r").content)
    straight = imagecodecs.png_decode(_get(client, "2", "png").content)
    np.testing.assert_array_equal(inverted[..., 0], 255 - straight)
    # the gap row (the uint32 maximum) is white, the rest spread over the levels
    assert (straight[12] == 255).all() and len(np.unique(straight)) > 5
    # each option is part of the ETag
    tags = {
        _get(client, "2", "png", **extra).headers["etag"]
        for extra in ({}, {"cmap": "hot"}, {"scale": "log"}, {"pmin": 2}, {"pmax": 98})
    }
    assert len(tags) == 5


def test_colour_maps() -> None:
    x = np.arange(256) / 255.0
    np.testing.assert_array_equal(colormap("gray"), np.rint(np.stack([x] * 3, 1) * 255))
    np.testing.assert_array_equal(colormap("hot"), np.rint(_hot(x) * 255))
    helix = colormap("cubehelix").astype(np.float64)
    assert helix[0].tolist() == [0, 0, 0] and helix[-1].tolist() == [255, 255, 255]
    luminance = helix @ [0.30, 0.59, 0.11]
    assert (np.diff(luminance) > 0).all()  # cubehelix's promise: brighter at every level
    assert len({tuple(c) for c in helix.astype(int).tolist()}) == 256
    assert (np.ptp(helix, axis=1)[20:236] > 10).all()  # coloured, not gray, between the ends


def test_png_log_scale_and_gap_marker() -> None:
    arr = np.array([[0.0, 1.0], [10.0, 100.0]])
    want = np.rint(np.log1p(1000 * arr / 100) / np.log1p(1000) * 255)
    np.testing.assert_array_equal(png_scale(arr, 0, 100, scale="log"), want)
    gaps = np.array([[0, 100], [50, 2**16 - 1]], dtype=np.uint16)
    np.testing.assert_array_equal(
        png_scale(gaps, None, None, pmin=0, pmax=100), [[0, 255], [128, 255]]
    )
    small = np.array([[0, 255]], dtype=np.uint8)  # 8-bit: 255 is a value, not a marker
    np.testing.assert_array_equal(png_scale(small, None, None, pmin=0, pmax=100), [[0, 255]])


def _png_levels(arr: np.ndarray, vmin: Any, vmax: Any, scale: str, p: tuple[float, float]) -> Any:
    """The module's PNG scaling written out step by step, as documented."""
    values = arr.astype(np.float64)
    counted = np.isfinite(values)
    if arr.dtype.kind == "u" and arr.dtype.itemsize >= 2:
        counted &= arr != np.iinfo(arr.dtype).max
    finite = values[counted]
    if vmin is None:
        vmin = float(np.percentile(finite, p[0])) if finite.size else 0.0
    if vmax is None:
        vmax = float(np.percentile(finite, p[1])) if finite.size else 0.0
    with np.errstate(invalid="ignore", divide="ignore"):
        if vmax > vmin:
            t = np.clip((values - vmin) / (vmax - vmin), 0.0, 1.0)
        else:
            t = np.where(values > vmin, 1.0, 0.0)
    t = np.nan_to_num(t, nan=0.0)
    if scale == "log":
        t = np.log1p(1000.0 * t) / np.log1p(1000.0)
    return np.rint(t * 255.0).astype(np.uint8)


def test_png_scale_equals_the_documented_formulas() -> None:
    rng = np.random.default_rng(18)
    floats = rng.normal(size=(40, 50)) * 300.0
    floats[rng.random(floats.shape) < 0.05] = np.nan
    floats[0, :3] = [np.inf, -np.inf, np.nan]
    gaps = rng.integers(0, 2**32 - 1, (30, 30), dtype=np.uint32)
    gaps[rng.random(gaps.shape) < 0.1] = 2**32 - 1
    arrays = [
        floats,
        floats.astype(np.float32),
        gaps,
        rng.integers(-100, 100, (30, 30)).astype(np.int16),
        np.full((3, 3), np.nan),
    ]
    for arr in arrays:
        before = arr.copy()
        for scale in ("linear", "log"):
            for p in ((1.0, 99.0), (5.0, 50.0), (0.0, 100.0)):
                for vmin, vmax in ((None, None), (0, 100), (-1, None), (None, 5), (3, 3)):
                    got = png_scale(arr, vmin, vmax, scale=scale, pmin=p[0], pmax=p[1])
                    want = _png_levels(arr, vmin, vmax, scale, p)
                    np.testing.assert_array_equal(got, want)
        np.testing.assert_array_equal(arr, before)  # the caller's array is left as it was


@pytest.mark.parametrize(
    ("params", "named"),
    [
        ({"scale": "sqrt"}, "scale"),
        ({"cmap": "jet"}, "cmap"),
        ({"pmin": 60, "pmax": 40}, "pmin"),
        ({"pmin": -1}, "pmin"),
        ({"pmax": 101}, "pmax"),
        ({"pmax": "x"}, "pmax"),
    ],
)
def test_bad_png_options_are_400(client: Any, params: dict[str, Any], named: str) -> None:
    res = client.get(
        f"/api/slice/{ENTRY}/{DATA}",
        params={"sel": "0", "format": "png", **params},
        headers=auth(BOB),
    )
    assert res.status_code == 400, res.text
    err = res.json()["error"]
    assert err["code"] == "bad_input" and named in err["message"], err


def test_selection_text_is_canonical() -> None:
    a = parse_selection("...,-1", (4, 5))
    b = parse_selection(":,4", (4, 5))
    assert a == b and a.text() == b.text() and a.shape == (4,)
