"""Detector frame series (TIFF, CBF) as one (frame, y, x) array referenced in place.

Every series is ingested into a local repository and read back through open_array and
open_dataset (xarray), compared on every frame with tifffile / fabio, the independent
readers; a second site made by ``hyperslab sync --sources`` reads it without the
original files. Bad series are named errors.
"""

from __future__ import annotations

import json
import shutil
from datetime import datetime
from pathlib import Path
from typing import Any

import fabio
import numpy as np
import pytest
import tifffile
from typer.testing import CliRunner

from hyperslab.access.array import open_array
from hyperslab.access.dataset import open_dataset
from hyperslab.cli import app
from hyperslab.convert.api import build_frames_refmap
from hyperslab.convert.cbf import byte_offset_decode, byte_offset_encode, parse_mini_header
from hyperslab.references.checksums import compute_checksums
from hyperslab.samples import write_frame_series

runner = CliRunner()
SHAPE = (37, 53)  # not a multiple of any strip height: the last strip is short


def _frames(n: int, dtype: str, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    data = rng.poisson(20, (n, *SHAPE)) + np.arange(SHAPE[1])
    data[:, 5, 7] = 60000  # escapes of the byte-offset stream
    return data.astype(dtype)


def _write_tiffs(d: Path, data: np.ndarray, **kwargs: object) -> list[Path]:
    d.mkdir(parents=True)
    paths = []
    for i, frame in enumerate(data):
        p = d / f"img_{i:03d}.tif"
        tifffile.imwrite(p, frame, datetime=f"2026:01:15 09:00:{i:02d}", **kwargs)  # type: ignore[arg-type]
        paths.append(p)
    return paths


def _ingest(repo: Path, source: str, name: str, *more: str) -> None:
    if not repo.exists():
        assert runner.invoke(app, ["init", str(repo)]).exit_code == 0
    res = runner.invoke(app, ["ingest", source, "-r", str(repo), "-n", name, "--json", *more])
    assert res.exit_code == 0, res.output


def _check(repo: Path, name: str, expect: np.ndarray) -> None:
    arr = open_array(str(repo), name, "entry/data/data", cache=False)
    got = arr[:]
    assert got.dtype == expect.dtype and got.shape == expect.shape
    for i in range(expect.shape[0]):
        np.testing.assert_array_equal(got[i], expect[i])
    np.testing.assert_array_equal(arr[1:3, 4:30, 10:11], expect[1:3, 4:30, 10:11])
    ds = open_dataset(str(repo), name)
    np.testing.assert_array_equal(ds["data"].values, expect)
    assert ds["data"].dims == ("frame", "y", "x")


TIFF_CASES = {
    "none": {},
    "deflate": {"compression": "zlib"},
    "lzw": {"compression": "lzw"},
    "packbits": {"compression": "packbits"},
    "deflate_predictor": {"compression": "zlib", "predictor": True, "rowsperstrip": 8},
    "lzw_tiles": {"compression": "lzw", "tile": (16, 32)},
    "strips_raw": {"rowsperstrip": 10},
}


#: every encoding little-endian; byte order on the encodings where it matters most
TIFF_RUNS = [(case, "<u2") for case in sorted(TIFF_CASES)] + [
    (case, dtype) for case in ("deflate_predictor", "lzw", "none") for dtype in (">u2", ">i4")
]


@pytest.mark.parametrize(("case", "dtype"), TIFF_RUNS)
def test_tiff_series_reads_like_tifffile(tmp_path: Path, case: str, dtype: str) -> None:
    data = _frames(4, dtype)
    kwargs = dict(TIFF_CASES[case])
    kwargs["byteorder"] = dtype[0]
    paths = _write_tiffs(tmp_path / "tiff", data, **kwargs)
    expect = np.stack([tifffile.imread(p) for p in paths])
    np.testing.assert_array_equal(expect, data)
    _ingest(tmp_path / "repo", str(tmp_path / "tiff"), "run")
    _check(tmp_path / "repo", "run", expect.astype(expect.dtype.newbyteorder(dtype[0])))


def test_multipage_tiffs_concatenate(tmp_path: Path) -> None:
    data = _frames(5, "<u2")
    d = tmp_path / "multi"
    d.mkdir()
    tifffile.imwrite(d / "a.tif", data[:3], compression="zlib", photometric="minisblack")
    tifffile.imwrite(d / "b.tif", data[3:], compression="zlib", photometric="minisblack")
    _ingest(tmp_path / "repo", str(d / "*.tif"), "stack")
    _check(tmp_path / "repo", "stack", data)


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("frames")
    write_frame_series(d, frames=4)
    return d


def test_sample_cbf_series_reads_like_fabio_with_metadata(sample: Path, tmp_path: Path) -> None:
    files = sorted((sample / "pilatus_cbf").glob("*.cbf"))
    expect = np.stack([fabio.open(str(p)).data for p in files])
    repo = tmp_path / "repo"
    _ingest(repo, str(sample / "pilatus_cbf"), "pilatus")
    _check(repo, "pilatus", expect)
    ds = open_dataset(str(repo), "pilatus")
    np.testing.assert_allclose(ds["detector_distance"].values, [0.25, 0.2505, 0.251, 0.2515])
    assert "detector_distance" in ds.coords and "exposure_time" in ds.coords
    np.testing.assert_allclose(ds["wavelength"].values, 1.0332)
    assert ds["timestamp"].values[1] - ds["timestamp"].values[0] == np.timedelta64(100, "ms")
    # the catalog: series-wide values under the NeXus files' field names
    query = "wavelength=1.0332 energy>12 detector~*PILATUS* exposure_time<0.1"
    res = runner.invoke(app, ["search", str(repo), query, "--json"])
    assert res.exit_code == 0, res.output
    assert "pilatus" in res.output


def test_sample_writes_each_tiff_compression_asked_for(tmp_path: Path) -> None:
    paths = write_frame_series(tmp_path, frames=2, shape=(8, 12), tiff_compression=("zlib", None))
    assert [p.parent.name for p in paths] == ["pilatus_cbf"] * 2 + ["pilatus_tiff"] * 2 + [
        "pilatus_tiff_none"
    ] * 2
    for i in range(2):
        cbf = fabio.open(str(paths[i])).data
        assert cbf.min() == -1 and cbf.dtype == np.int32  # the module gap
        with tifffile.TiffFile(paths[4 + i]) as tif:
            assert tif.pages[0].compression == 1
            np.testing.assert_array_equal(tif.asarray(), cbf)
        np.testing.assert_array_equal(tifffile.imread(paths[2 + i]), cbf)


def test_sample_tiff_series_carries_its_tags(sample: Path, tmp_path: Path) -> None:
    files = sorted((sample / "pilatus_tiff").glob("*.tif"))
    expect = np.stack([tifffile.imread(p) for p in files])
    np.testing.assert_array_equal(expect, np.stack([fabio.open(str(p)).data for p in files]))
    repo = tmp_path / "repo"
    _ingest(repo, str(sample / "pilatus_tiff"), "tiffs")
    _check(repo, "tiffs", expect)
    ds = open_dataset(str(repo), "tiffs")
    np.testing.assert_allclose(ds["x_pixel_size"].values, 172e-6)
    np.testing.assert_allclose(ds["exposure_time"].values, 0.099)


def test_checksums_cover_every_frame_and_a_second_site_reads_the_copy(
    sample: Path, tmp_path: Path
) -> None:
    frames = tmp_path / "cbf"
    shutil.copytree(sample / "pilatus_cbf", frames)
    expect = np.stack([fabio.open(str(p)).data for p in sorted(frames.glob("*.cbf"))])
    res = build_frames_refmap([str(p) for p in sorted(frames.glob("*.cbf"))])
    files = {i: u for i, u in enumerate(res.refmap.sources)}
    sums = compute_checksums(res.refmap, files)
    assert sum(len(v) for v in sums.values()) == 4  # one CRC-32C per frame chunk
    repo, copy = tmp_path / "repo", tmp_path / "copy"
    _ingest(repo, str(frames), "run", "--upload-sources")
    out = runner.invoke(app, ["sync", str(repo), str(copy), "--sources"])
    assert out.exit_code == 0, out.output
    shutil.rmtree(frames)  # only the second site's copies are left
    _check(copy, "run", expect)


def test_refs_writes_one_map_that_plain_zarr_reads(sample: Path, tmp_path: Path) -> None:
    import fsspec
    import zarr

    out = tmp_path / "cbf.json"
    res = runner.invoke(app, ["refs", str(sample / "pilatus_cbf"), "-o", str(out), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["written"][0]["frames"]["frames"] == 4
    fs = fsspec.filesystem("reference", fo=str(out))
    g = zarr.open_group(fs.get_mapper(""), mode="r", zarr_format=2)
    files = sorted((sample / "pilatus_cbf").glob("*.cbf"))
    np.testing.assert_array_equal(g["entry/data/data"][3], fabio.open(str(files[3])).data)


def test_byte_offset_round_trips_every_escape() -> None:
    v = np.array([0, 127, -127, 128, -128, 32767, -32768, 40000, -(2**31) + 1, 2**31 - 1, -1])
    rng = np.random.default_rng(1)
    for values in (v, rng.integers(-(2**31) + 1, 2**31 - 1, 500), rng.poisson(3, 1000)):
        got = byte_offset_decode(byte_offset_encode(values), "<i4")
        np.testing.assert_array_equal(got, values.astype("<i4"))


MINI_HEADER = """# Detector: PILATUS 100K, S/N 1-0000
# 2026-01-15T09:07:00.250
# Pixel_size 172e-6 m x 172e-6 m
# Exposure_time 0.0990000 s
# Exposure_time 5 s
#\tExposure_period\t0.1 s
# Threshold_setting: 6000 eV
# Wavelength: 1.5 A
# Detector_distance 0.25 m
# Beam_xy (243.50, 97.25) pixels
# Start_angle -.5 deg.
# Angle_increment 1e-1 deg.
# Count_cutoff abc counts
# Tau = 124.0e-09 s
# 2026-01-16T00:00:00
"""


def test_mini_header_fields_first_value_wins_and_malformed_lines_are_skipped() -> None:
    got = parse_mini_header(MINI_HEADER)
    t0 = (datetime(2026, 1, 15, 9, 7, 0, 250000) - datetime(1970, 1, 1)).total_seconds()
    assert got == {
        "detector": "PILATUS 100K, S/N 1-0000",
        "timestamp": t0,
        "timestamp_text": "2026-01-15T09:07:00.250",
        "x_pixel_size": 172e-6,
        "y_pixel_size": 172e-6,
        "exposure_time": 0.099,
        "exposure_period": 0.1,
        "threshold_energy": 6000.0,
        "detector_distance": 0.25,
        "beam_center_x": 243.5,
        "beam_center_y": 97.25,
        "start_angle": -0.5,
        "angle_increment": 0.1,
    }
    # "Wavelength:" and a count that is no number match no field
    assert parse_mini_header("# Threshold_setting 5000 eV\n\n#\n")["threshold_energy"] == 5000.0


def test_bad_series_are_named_errors(sample: Path, tmp_path: Path) -> None:
    d = tmp_path / "mixed"
    d.mkdir()
    tifffile.imwrite(d / "a_1.tif", np.zeros((8, 8), "<u2"))
    tifffile.imwrite(d / "a_2.tif", np.zeros((8, 8), "<u4"))
    tifffile.imwrite(d / "a_3.tif", np.zeros((8, 8), "<u2"), compression="zlib")
    res = runner.invoke(app, ["refs", str(d / "a_[12].tif"), "-o", str(tmp_path / "x.json")])
    assert res.exit_code == 2 and "a_2.tif" in res.output and "frame_mismatch" in res.output
    res = runner.invoke(app, ["refs", str(d / "a_[13].tif"), "-o", str(tmp_path / "x.json")])
    assert res.exit_code == 2 and "a_3.tif" in res.output
    cbf = (sample / "pilatus_cbf" / "frame_00001.cbf").read_bytes()
    (tmp_path / "cut.cbf").write_bytes(cbf[: len(cbf) // 2])
    res = runner.invoke(app, ["refs", str(tmp_path / "cut.cbf"), "-o", str(tmp_path / "y.json")])
    assert res.exit_code == 2 and "truncated" in res.output and "bad_frame" in res.output
    tifffile.imwrite(tmp_path / "j.tif", np.zeros((8, 8), np.uint8), compression="jpeg")
    res = runner.invoke(app, ["refs", str(tmp_path / "j.tif"), "-o", str(tmp_path / "z.json")])
    assert res.exit_code == 2 and "unsupported" in res.output and "JPEG" in res.output


def _verify(*args: str) -> tuple[int, dict[str, Any]]:
    res = runner.invoke(app, ["verify", *args, "--json"])
    return res.exit_code, json.loads(res.output.strip().splitlines()[-1])


@pytest.mark.parametrize("kind", ["tiff", "cbf"])
def test_verify_passes_a_good_frame_map(sample: Path, tmp_path: Path, kind: str) -> None:
    frames = sample / f"pilatus_{kind}"
    out = tmp_path / "run.json"
    assert runner.invoke(app, ["refs", str(frames), "-o", str(out)]).exit_code == 0
    code, doc = _verify(str(frames), str(out))
    assert code == 0 and doc["ok"], doc
    counts = doc["counts"]
    assert counts["bit_exact"] == counts["arrays"] > 4
    assert doc["frames"] == {
        "format": kind,
        "files": 4,
        "frames": 4,
        "reader": "tifffile" if kind == "tiff" else "fabio",
    }
    assert runner.invoke(app, ["verify", str(out)]).exit_code == 0  # the files the map names
    res = runner.invoke(app, ["verify", str(frames / "*"), str(out), "--all"], terminal_width=200)
    assert res.exit_code == 0 and "frames and coordinates bit-exact" in res.output, res.output


def test_verify_names_the_frame_whose_chunk_ref_is_swapped(sample: Path, tmp_path: Path) -> None:
    frames = sample / "pilatus_tiff"
    out = tmp_path / "run.json"
    assert runner.invoke(app, ["refs", str(frames), "-o", str(out)]).exit_code == 0
    doc = json.loads(out.read_text())
    refs = doc["refs"]
    keys = sorted(k for k in refs if k.startswith("entry/data/data/2."))
    assert keys
    for k in keys:  # frame 2's chunks point into frame 3's file
        refs[k] = refs[k.replace("data/2.", "data/3.", 1)]
    out.write_text(json.dumps(doc))
    code, report = _verify(str(frames), str(out))
    assert code == 8 and not report["ok"]
    bad = [a for a in report["arrays"] if not a["ok"]]
    assert len(bad) == 1 and bad[0]["detail"].startswith("frame 2: values differ"), bad
    assert bad[0]["source"].endswith(sorted(p.name for p in frames.glob("*.tif"))[2])
    res = runner.invoke(app, ["verify", str(frames), str(out)], terminal_width=200)
    assert res.exit_code == 8 and "frame 2" in res.output and "verification_failed" in res.output


def test_verify_cbf_without_fabio_checks_content_md5(
    sample: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys

    frames = tmp_path / "cbf"
    shutil.copytree(sample / "pilatus_cbf", frames)
    out = tmp_path / "run.json"
    assert runner.invoke(app, ["refs", str(frames), "-o", str(out)]).exit_code == 0
    monkeypatch.setitem(sys.modules, "fabio", None)  # no independent CBF reader
    code, doc = _verify(str(frames), str(out))
    assert code == 0 and "MD5" in str(doc["frames"]["reader"])
    assert all("not independently checked" in a["detail"] for a in doc["arrays"][:4])
    # a frame without Content-MD5 is unverifiable, not compared with our own codec
    first = sorted(frames.glob("*.cbf"))[0]
    raw = first.read_bytes()
    start = raw.index(b"Content-MD5:")
    end = raw.index(b"\r\n", start)
    first.write_bytes(raw[:start] + b"X-Comment:" + b" " * (end - start - 10) + raw[end:])
    code, doc = _verify(str(frames), str(out))
    assert code == 8 and doc["counts"]["unverifiable"] == 1


def test_verify_frames_against_an_hdf5_map_is_a_named_error(sample: Path, tmp_path: Path) -> None:
    import h5py

    h5 = tmp_path / "a.h5"
    with h5py.File(h5, "w") as f:
        f["x"] = np.arange(3)
    out = tmp_path / "a.json"
    assert runner.invoke(app, ["refs", str(h5), "-o", str(out)]).exit_code == 0
    res = runner.invoke(app, ["verify", str(sample / "pilatus_tiff"), str(out)])
    assert res.exit_code == 2 and "not the map of a detector frame series" in res.output


def test_frames_beside_hdf5_files_are_left_out_by_name(tmp_path: Path) -> None:
    """A run folder with a NeXus file, TIFF frames at its top and CBF frames in a
    subfolder: the HDF5 file is ingested (and mapped), and each folder of frames left
    out is named, in text and JSON, with how to include it; given on its own, each is
    a frame-series entry."""
    import h5py

    run = tmp_path / "run42"
    tiffs = _frames(3, "<u2")
    _write_tiffs(run, tiffs)
    write_frame_series(tmp_path / "s", frames=4, shape=SHAPE)
    shutil.copytree(tmp_path / "s" / "pilatus_cbf", run / "pilatus")
    master = np.arange(12.0).reshape(3, 4)
    with h5py.File(run / "master.nxs", "w") as f:
        f.create_dataset("entry/sample/temperature", data=master)

    repo = tmp_path / "repo"
    assert runner.invoke(app, ["init", str(repo)]).exit_code == 0
    res = runner.invoke(app, ["ingest", str(run), "-r", str(repo), "-n", "r42"])
    assert res.exit_code == 0, res.output
    # the frames beside the NeXus file need a glob; a folder of frames alone, itself
    assert f"3 detector frames in {run} left out" in res.output
    assert f"give {run}/*.tif on its own" in res.output
    assert f"4 detector frames in {run / 'pilatus'} left out" in res.output
    assert f"give {run / 'pilatus'} on its own" in res.output
    res = runner.invoke(app, ["refs", str(run), "-o", str(tmp_path / "m.json"), "--json"])
    doc = json.loads(res.output)
    assert doc["frames_left_out"] == {
        str(run): {"frames": 3, "give": f"{run}/*.tif"},
        str(run / "pilatus"): {"frames": 4, "give": str(run / "pilatus")},
    }
    assert len(doc["written"]) == 1 and doc["ok"]
    got = open_array(str(repo), "r42", "entry/sample/temperature", cache=False)
    np.testing.assert_array_equal(got[:], master)

    _ingest(repo, f"{run}/*.tif", "r42-tiff")  # what the notes say to give
    _check(repo, "r42-tiff", tiffs)
    _ingest(repo, str(run / "pilatus"), "r42-frames")
    cbf = np.stack([fabio.open(str(p)).data for p in sorted((run / "pilatus").glob("*.cbf"))])
    got = open_array(str(repo), "r42-frames", "entry/data/data", cache=False)[:]
    np.testing.assert_array_equal(got, cbf)


def _same_page(a: Any, b: Any) -> None:
    for name in a.__dataclass_fields__:
        if name == "compression_name":  # only named for a compression without a codec
            continue
        x, y = getattr(a, name), getattr(b, name)
        if isinstance(x, np.ndarray):
            np.testing.assert_array_equal(x, y, err_msg=name)
            assert x.dtype == y.dtype, name
        else:
            assert x == y, (name, x, y)


PLAIN_CASES = [
    (case, dtype)
    for case in sorted(TIFF_CASES)
    for dtype in ("<u1", "<u2", ">u2", "<i2", ">i4", "<u4", "<f4", ">f8")
]


@pytest.mark.parametrize(("case", "dtype"), PLAIN_CASES)
def test_plain_tiff_reader_says_what_tifffile_says(tmp_path: Path, case: str, dtype: str) -> None:
    """Single-page strip TIFFs are read from their one IFD without tifffile (most of the
    time of scanning a small frame): for each encoding, sample type and byte order it
    must give exactly tifffile's answer, metadata included, or step aside (tiles, the
    floating-point predictor)."""
    from hyperslab.convert.tiff import _plain_page, _tifffile_page

    data = _frames(1, dtype)[0]
    kwargs = dict(TIFF_CASES[case], byteorder=dtype[0])
    p = tmp_path / "f.tif"
    tifffile.imwrite(
        p,
        data,
        datetime="2026:01:15 09:00:07",
        description="# Exposure_time 0.0970000 s\r\n# Wavelength 0.97625 A\r\n",
        resolution=(1 / 172e-4, 1 / 172e-4),
        resolutionunit="CENTIMETER",
        software="hyperslab test",
        **kwargs,  # type: ignore[arg-type]
    )
    plain = _plain_page(str(p))
    with tifffile.TiffFile(p) as tif:
        expect = _tifffile_page(tif.byteorder, tif.pages[0])
    if "tile" in kwargs or expect.predictor == 3:
        assert plain is None  # tifffile reads tiled pages, and names predictor 3 unsupported
        return
    assert plain is not None
    assert plain[0] == dtype[0]
    _same_page(plain[1], expect)
    assert plain[1].meta["exposure_time"] == 0.097 and "x_pixel_size" in plain[1].meta


def test_plain_tiff_reader_steps_aside_for_what_it_does_not_read(tmp_path: Path) -> None:
    from hyperslab.convert.tiff import _plain_page

    frames = _frames(2, "<u2")
    tifffile.imwrite(tmp_path / "multi.tif", frames, photometric="minisblack")
    tifffile.imwrite(tmp_path / "big.tif", frames[0], bigtiff=True)
    tifffile.imwrite(tmp_path / "rgb.tif", np.zeros((8, 8, 3), np.uint8), photometric="rgb")
    (tmp_path / "short.tif").write_bytes((tmp_path / "big.tif").read_bytes()[:6])
    for name in ("multi", "big", "rgb", "short"):
        assert _plain_page(str(tmp_path / f"{name}.tif")) is None, name
    # and the sample Pilatus frames, with their mini-header, take the plain path
    write_frame_series(tmp_path / "s", frames=1)
    tiff = next((tmp_path / "s" / "pilatus_tiff").glob("*.tif"))
    assert _plain_page(str(tiff)) is not None


def test_resolution_unit_none_gives_no_pixel_size(tmp_path: Path) -> None:
    """tifffile writes ResolutionUnit NONE with a 1/1 resolution unless told otherwise:
    no absolute unit, so no pixel size (it once came out as one inch a pixel)."""
    from hyperslab.convert.tiff import _plain_page, _tifffile_page

    p = tmp_path / "f.tif"
    tifffile.imwrite(p, _frames(1, "<u2")[0])
    plain = _plain_page(str(p))
    with tifffile.TiffFile(p) as tif:
        assert int(tif.pages[0].tags["ResolutionUnit"].value) == 1
        expect = _tifffile_page(tif.byteorder, tif.pages[0])
    assert plain is not None
    _same_page(plain[1], expect)
    assert "x_pixel_size" not in expect.meta and "y_pixel_size" not in expect.meta
