"""The synthetic NeXus files of ``hyperslab.samples`` look like beamline output."""

from __future__ import annotations

import hashlib
import time
from datetime import datetime
from pathlib import Path

import h5py
import hdf5plugin
import numpy as np
import pytest

from hyperslab.samples import (
    CREATOR,
    GAP_VALUE,
    PIXEL_MASK_DEAD,
    PIXEL_MASK_GAP,
    detector_frames,
    write_big_detector_file,
    write_many_chunks_file,
    write_samples,
)

FRAMES = 6
SHAPE = (195, 487)


@pytest.fixture(scope="module")
def samples(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    paths = write_samples(tmp_path_factory.mktemp("samples"), frames=FRAMES, seed=3)
    return {p.name: p for p in paths}


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _filters(dset: h5py.Dataset) -> list[tuple[int, tuple[int, ...]]]:
    dcpl = dset.id.get_create_plist()
    return [
        (dcpl.get_filter(i)[0], tuple(dcpl.get_filter(i)[2])) for i in range(dcpl.get_nfilters())
    ]


def test_files_written(samples: dict[str, Path]) -> None:
    assert set(samples) == {
        "scan_0001_gzip.nxs",
        "scan_0002_bslz4.nxs",
        "scan_0003_multi.nxs",
        "scan_0003_multi_data_000001.h5",
    }


@pytest.mark.parametrize("name", ["scan_0001_gzip.nxs", "scan_0002_bslz4.nxs"])
def test_nexus_structure(samples: dict[str, Path], name: str) -> None:
    with h5py.File(samples[name], "r") as f:
        assert f.attrs["NX_class"] == "NXroot"
        assert f.attrs["default"] == "entry"
        assert f.attrs["file_name"] == name
        assert f.attrs["creator"] == CREATOR
        assert f.attrs["HDF5_Version"] == h5py.version.hdf5_version
        datetime.fromisoformat(f.attrs["file_time"])

        entry = f["entry"]
        assert entry.attrs["NX_class"] == "NXentry"
        assert entry.attrs["default"] == "data"
        assert entry["definition"].asstr()[()] == "NXmx"
        title = entry["title"]
        assert title.shape == () and title.id.get_type().is_variable_str()
        start = datetime.fromisoformat(entry["start_time"].asstr()[()])
        end = datetime.fromisoformat(entry["end_time"].asstr()[()])
        assert start.tzinfo is not None and end > start

        sample = entry["sample"]
        assert sample.attrs["NX_class"] == "NXsample"
        assert sample["name"].shape == () and sample["name"].id.get_type().is_variable_str()
        assert sample["temperature"].attrs["units"] == "K"

        instrument = entry["instrument"]
        assert instrument.attrs["NX_class"] == "NXinstrument"
        assert instrument["name"].attrs["short_name"]
        assert instrument["source"].attrs["NX_class"] == "NXsource"
        mono = instrument["monochromator"]
        assert mono.attrs["NX_class"] == "NXmonochromator"
        assert mono["energy"].attrs["units"] == "keV"
        assert mono["wavelength"][()] == pytest.approx(12.3984 / mono["energy"][()], rel=1e-4)

        detector = instrument["detector"]
        assert detector.attrs["NX_class"] == "NXdetector"
        for field, units in (("x_pixel_size", "m"), ("distance", "m"), ("count_time", "s")):
            assert detector[field].attrs["units"] == units
        assert "Pilatus" in detector["description"].asstr()[()]

        data = detector["data"]
        assert data.dtype == np.dtype("<u4")
        assert data.shape == (FRAMES, *SHAPE)
        assert data.chunks == (1, *SHAPE)
        # The NXdata signal is the detector dataset itself, not a copy or a soft link.
        assert entry["data/data"] == data
        assert isinstance(entry["data"].get("data", getlink=True), h5py.HardLink)
        assert h5py.h5o.get_info(entry["data/data"].id).rc == 2

        nxdata = entry["data"]
        assert nxdata.attrs["NX_class"] == "NXdata"
        assert nxdata.attrs["signal"] == "data"
        assert nxdata.attrs["frame_number_indices"] == 0
        axes = list(nxdata.attrs["axes"])
        assert axes[0] == "frame_number" and len(axes) == 3
        np.testing.assert_array_equal(nxdata["frame_number"][()], np.arange(1, FRAMES + 1))
        for axis in axes[1:]:
            if axis != ".":
                index = int(nxdata.attrs[f"{axis}_indices"])
                assert nxdata[axis].shape == (SHAPE[index - 1],)

        monitor = entry["monitor"]
        assert monitor.attrs["NX_class"] == "NXmonitor"
        assert monitor["data"].shape == (FRAMES,) and (monitor["data"][()] > 0).all()


def test_codecs(samples: dict[str, Path]) -> None:
    with h5py.File(samples["scan_0001_gzip.nxs"], "r") as f:
        filters = _filters(f["entry/data/data"])
        assert [fid for fid, _ in filters] == [h5py.h5z.FILTER_SHUFFLE, h5py.h5z.FILTER_DEFLATE]
        assert filters[1][1] == (4,)
    with h5py.File(samples["scan_0002_bslz4.nxs"], "r") as f:
        data = f["entry/data/data"]
        ((fid, options),) = _filters(data)
        assert fid == hdf5plugin.BSHUF_ID
        assert options[-1] == 2  # LZ4
        assert data.maxshape == (None, *SHAPE)
        np.testing.assert_array_equal(data[()], detector_frames(FRAMES, SHAPE, seed=3, scan=2))


def test_images_look_like_detector_frames(samples: dict[str, Path]) -> None:
    with h5py.File(samples["scan_0001_gzip.nxs"], "r") as f:
        data = f["entry/data/data"][()]
        mask = f["entry/instrument/detector/pixel_mask"][()]
    np.testing.assert_array_equal(data, detector_frames(FRAMES, SHAPE, seed=3, scan=1))
    gap_rows = np.flatnonzero((data == GAP_VALUE).all(axis=(0, 2)))
    assert gap_rows.size >= 1
    assert (mask[gap_rows] & PIXEL_MASK_GAP).all()
    dead = (mask & PIXEL_MASK_DEAD) > 0
    assert dead.any() and (data[:, dead] == 0).all()
    counts = data[:, mask == 0]
    assert 0 < np.median(counts) < 10  # Poisson background
    assert counts.max() > 100  # Bragg spots


def _next_second() -> None:
    """Sleep past the next whole second, so any object modification time would differ."""
    time.sleep(1.02 - time.time() % 1.0)


def test_deterministic_from_seed(samples: dict[str, Path], tmp_path: Path) -> None:
    _next_second()
    again = write_samples(tmp_path / "same", frames=FRAMES, seed=3)
    for path in again:
        assert _sha(path) == _sha(samples[path.name]), path.name
    other = write_samples(tmp_path / "other", frames=FRAMES, seed=4)
    with h5py.File(other[0], "r") as f, h5py.File(samples[other[0].name], "r") as g:
        assert not np.array_equal(f["entry/data/data"][0], g["entry/data/data"][0])


def test_multi_entry_file(samples: dict[str, Path]) -> None:
    with h5py.File(samples["scan_0003_multi.nxs"], "r") as f:
        entries = [k for k in f if f[k].attrs.get("NX_class") == "NXentry"]
        assert entries == ["entry", "entry_2"]
        entry = f["entry"]
        data = entry["data/data"]
        assert data.chunks == (2, *SHAPE) and data.shape[0] % 2 == 1  # partial last chunk
        assert data == entry["instrument/detector/data"]
        classes = {entry[k].attrs.get("NX_class") for k in entry}
        assert {"NXdata", "NXprocess", "NXcollection", "NXuser", "NXmonitor"} <= classes
        assert entry["mean"].attrs["signal"] == "intensity"
        assert entry["sample/temperature_log"].attrs["NX_class"] == "NXlog"
        link = f["entry_2/data"].get("data_000001", getlink=True)
        assert isinstance(link, h5py.ExternalLink)
        assert link.filename == "scan_0003_multi_data_000001.h5"
        dark = f["entry_2/data/data_000001"]
        assert dark.shape == (3, *SHAPE) and dark[0].max() == GAP_VALUE


def test_progress_bar_does_not_change_output(samples: dict[str, Path], tmp_path: Path) -> None:
    paths = write_samples(tmp_path, frames=FRAMES, seed=3, progress=True)
    assert _sha(paths[0]) == _sha(samples[paths[0].name])


def test_many_chunks_file(tmp_path: Path) -> None:
    path = write_many_chunks_file(tmp_path / "many.h5", n_chunks=2_000, chunk=3)
    with h5py.File(path, "r") as f:
        data = f["data"]
        assert data.id.get_num_chunks() == 2_000
        unwritten = data.attrs["unwritten_chunks"]
        assert unwritten.size >= 1
        values = data[()]
    expected = np.arange(values.size, dtype="<i4")
    for chunk in unwritten:
        expected[chunk * 3 : chunk * 3 + 3] = -1
    np.testing.assert_array_equal(values, expected)


@pytest.mark.parametrize("codec", ["gzip", "bslz4", "none"])
def test_big_detector_file(tmp_path: Path, codec: str) -> None:
    target = 300_000
    path = write_big_detector_file(
        tmp_path / f"big_{codec}.nxs",
        target_bytes=target,
        frame_shape=(64, 96),
        codec=codec,  # type: ignore[arg-type]
    )
    with h5py.File(path, "r") as f:
        data = f["entry/data/data"]
        assert data == f["entry/instrument/detector/data"]
        stored = sum(data.id.get_chunk_info_by_coord((i, 0, 0)).size for i in range(data.shape[0]))
        last = data.id.get_chunk_info_by_coord((data.shape[0] - 1, 0, 0)).size
        assert target <= stored < target + last  # stops at the first frame past the target
        assert f["entry/monitor/data"].shape == (data.shape[0],)
        frames = data[()]
    assert (frames[:, 32] == GAP_VALUE).all()
    assert len({frame.tobytes() for frame in frames}) == frames.shape[0]  # no repeated chunk


def test_unknown_codec_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="codec"):
        write_big_detector_file(tmp_path / "x.nxs", target_bytes=1, codec="zip")  # type: ignore[arg-type]
