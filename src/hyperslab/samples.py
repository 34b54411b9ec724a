"""Synthetic NeXus detector files, shaped like those a synchrotron beamline writes.

They feed demos, tests and benchmarks of the converter. Each file follows the
NXmx application definition closely enough for a NeXus-aware reader: a
``uint32`` frame stack from a Pilatus-100K-like area detector under
``/entry/instrument/detector/data``, hard-linked as ``/entry/data/data`` the way
real writers do, with the ``default`` attribute chain from the root to the
``NXdata`` group.

Images look like detector data: Poisson background with an air-scatter halo
around the beam centre, Bragg-like spots that rock in and out over a few
frames, a module-gap row filled with ``0xFFFFFFFF`` (Pilatus/EIGER gap
convention) and a few dead pixels, with an NXmx ``pixel_mask`` to match.

Everything, timestamps included, is a function of the seed, so two runs write
byte-identical files: hyperslab identifies sources by content, and tests rely
on that.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import h5py
import hdf5plugin
import numpy as np
from rich.progress import Progress

__all__ = [
    "CREATOR",
    "GAP_VALUE",
    "PIXEL_MASK_DEAD",
    "PIXEL_MASK_GAP",
    "catalog_record",
    "detector_frames",
    "write_big_detector_file",
    "write_frame_series",
    "write_many_chunks_file",
    "write_samples",
]

Codec = Literal["gzip", "bslz4", "none"]

CREATOR = "hyperslab sample"
#: Value of module-gap pixels (Pilatus/EIGER convention for "no data").
GAP_VALUE = 0xFFFFFFFF
#: NXmx ``pixel_mask`` bits.
PIXEL_MASK_GAP = 1
PIXEL_MASK_DEAD = 2

_PIXEL_SIZE_M = 172e-6
_BASE_TIME = datetime(2026, 1, 15, 9, 0, tzinfo=UTC)
_COUNT_TIME_S = 0.1
_HC_KEV_ANGSTROM = 12.398419843320026
# Spots are drawn per block of frames so that a stack of unknown length (the
# benchmark file grows until it reaches a byte target) still gets a
# deterministic, evenly spread set of reflections.
_SPOT_BLOCK = 32
_SPOT_HALF_WINDOW = 4


def _codec_kwargs(codec: Codec) -> dict[str, Any]:
    if codec == "gzip":
        return {"compression": "gzip", "compression_opts": 4, "shuffle": True}
    if codec == "bslz4":
        # Same filter and options (block size auto, LZ4) as Dectris EIGER writers.
        return dict(hdf5plugin.Bitshuffle(nelems=0, cname="lz4"))
    if codec == "none":
        return {}
    raise ValueError(f"unknown codec {codec!r}; expected 'gzip', 'bslz4' or 'none'")


# --------------------------------------------------------------------------- images


@dataclass(frozen=True)
class _Spots:
    """Bragg-like reflections: pixel position, rocking-curve centre and width in frames."""

    y: np.ndarray
    x: np.ndarray
    frame: np.ndarray
    frame_width: np.ndarray
    intensity: np.ndarray
    sigma: np.ndarray


class _DetectorModel:
    """Expected counts per pixel and frame, plus the static mask, for one scan."""

    def __init__(self, shape: tuple[int, int], seed: int, stream: int) -> None:
        height, width = shape
        if height < 4 or width < 4:
            raise ValueError(f"frame shape {shape} too small")
        self.shape = shape
        self.seed = seed
        self.stream = stream
        rng = np.random.default_rng([seed, stream, 0])
        centre_y = height * rng.uniform(0.4, 0.6)
        centre_x = width * rng.uniform(0.4, 0.6)
        yy, xx = np.ogrid[:height, :width]
        r2 = (yy - centre_y) ** 2 + (xx - centre_x) ** 2
        halo = 0.25 * min(height, width)
        self.beam_centre = (float(centre_y), float(centre_x))
        self.background = 0.4 + 6.0 * np.exp(-r2 / (2.0 * halo**2))

        self.gap_rows = np.array([height // 2])
        n_dead = max(3, height * width // 20_000)
        self.dead_y = rng.integers(0, height, n_dead)
        self.dead_x = rng.integers(0, width, n_dead)
        mask = np.zeros(shape, dtype=np.uint32)
        mask[self.dead_y, self.dead_x] |= PIXEL_MASK_DEAD
        mask[self.gap_rows, :] = PIXEL_MASK_GAP
        self.pixel_mask = mask
        self.spots_per_block = max(8, height * width // 800)
        self._spot_cache: dict[int, _Spots] = {}

    def _spots(self, block: int) -> _Spots:
        cached = self._spot_cache.get(block)
        if cached is not None:
            return cached
        if len(self._spot_cache) > 8:
            self._spot_cache.clear()
        height, width = self.shape
        n = self.spots_per_block
        rng = np.random.default_rng([self.seed, self.stream, 1, block])
        margin = _SPOT_HALF_WINDOW
        spots = self._spot_cache[block] = _Spots(
            y=rng.integers(margin, max(margin + 1, height - margin), n),
            x=rng.integers(margin, max(margin + 1, width - margin), n),
            frame=block * _SPOT_BLOCK + rng.uniform(0, _SPOT_BLOCK, n),
            frame_width=rng.uniform(0.6, 2.0, n),
            intensity=np.minimum(rng.pareto(1.2, n) * 80.0 + 30.0, 5.0e5),
            sigma=rng.uniform(0.7, 1.6, n),
        )
        return spots

    def _spot_windows(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Pixel indices and expected counts of the spots lit in frame ``index``."""
        block = index // _SPOT_BLOCK
        parts = [self._spots(b) for b in (block - 1, block, block + 1) if b >= 0]
        y = np.concatenate([s.y for s in parts])
        x = np.concatenate([s.x for s in parts])
        weight = np.concatenate(
            [
                s.intensity * np.exp(-((index - s.frame) ** 2) / (2.0 * s.frame_width**2))
                for s in parts
            ]
        )
        sigma = np.concatenate([s.sigma for s in parts])
        lit = weight > 0.05
        y, x, weight, sigma = y[lit], x[lit], weight[lit], sigma[lit]
        d = np.arange(-_SPOT_HALF_WINDOW, _SPOT_HALF_WINDOW + 1)
        dy = d[None, :, None]
        dx = d[None, None, :]
        profile = np.exp(-(dy**2 + dx**2) / (2.0 * sigma[:, None, None] ** 2))
        expected = weight[:, None, None] * profile
        height, width = self.shape
        yi = np.broadcast_to(np.clip(y[:, None, None] + dy, 0, height - 1), expected.shape)
        xi = np.broadcast_to(np.clip(x[:, None, None] + dx, 0, width - 1), expected.shape)
        return yi.ravel(), xi.ravel(), expected.ravel()

    def _apply_mask(self, frame: np.ndarray) -> np.ndarray:
        frame[self.dead_y, self.dead_x] = 0
        frame[self.gap_rows, :] = GAP_VALUE
        return frame

    def frame(self, index: int) -> np.ndarray:
        """Frame ``index`` drawn exactly: Poisson of background plus spots."""
        expected = self.background.copy()
        yi, xi, counts = self._spot_windows(index)
        np.add.at(expected, (yi, xi), counts)
        rng = np.random.default_rng([self.seed, self.stream, 2, index])
        return self._apply_mask(rng.poisson(expected).astype(np.uint32))

    def dark_frame(self, index: int) -> np.ndarray:
        """Frame ``index`` of a dark series: no beam, a few stray counts."""
        rng = np.random.default_rng([self.seed, self.stream, 5, index])
        return self._apply_mask(rng.poisson(0.02, self.shape).astype(np.uint32))

    def fast_frames(self, pool_size: int = 16) -> Iterator[np.ndarray]:
        """Endless frames for benchmarks, ~10x cheaper than :meth:`frame`.

        Poisson sampling of a megapixel costs more than compressing it, so the
        background noise comes from a pool of pre-drawn frames; the spots are
        drawn per frame, which keeps every frame (and so every chunk) unique.
        """
        rng = np.random.default_rng([self.seed, self.stream, 3])
        pool = [rng.poisson(self.background).astype(np.uint32) for _ in range(pool_size)]
        index = 0
        while True:
            frame = pool[index % pool_size].copy()
            yi, xi, expected = self._spot_windows(index)
            np.add.at(frame, (yi, xi), rng.poisson(expected).astype(np.uint32))
            yield self._apply_mask(frame)
            index += 1


def detector_frames(
    frames: int, shape: tuple[int, int] = (195, 487), *, seed: int = 0, scan: int = 1
) -> np.ndarray:
    """The ``(frames, *shape)`` ``uint32`` stack that :func:`write_samples` writes for ``scan``."""
    model = _DetectorModel(shape, seed, scan)
    stack = np.empty((frames, *shape), dtype=np.uint32)
    for i in range(frames):
        stack[i] = model.frame(i)
    return stack


# --------------------------------------------------------------------------- NeXus


def _iso(t: datetime) -> str:
    return t.isoformat(timespec="milliseconds")


def _text(group: h5py.Group, name: str, value: str, **attrs: Any) -> h5py.Dataset:
    """A scalar variable-length UTF-8 string dataset, as NeXus writers use for text."""
    dset = group.create_dataset(name, data=value, dtype=h5py.string_dtype())
    dset.attrs.update(attrs)
    return dset


def _number(group: h5py.Group, name: str, value: Any, units: str, **attrs: Any) -> h5py.Dataset:
    dset = group.create_dataset(name, data=value)
    dset.attrs["units"] = units
    dset.attrs.update(attrs)
    return dset


def _nx_group(parent: h5py.Group, name: str, nx_class: str) -> h5py.Group:
    group = parent.create_group(name)
    group.attrs["NX_class"] = nx_class
    return group


@dataclass(frozen=True)
class _ScanInfo:
    scan: int
    seed: int
    title: str
    sample: str
    temperature_k: float
    energy_kev: float
    distance_m: float

    @property
    def start(self) -> datetime:
        return _BASE_TIME + timedelta(hours=self.seed % 10_000, minutes=7 * self.scan)

    def end(self, frames: int) -> datetime:
        return self.start + timedelta(seconds=frames * _COUNT_TIME_S + 0.35)


def _scan_info(scan: int, seed: int, title: str) -> _ScanInfo:
    rng = np.random.default_rng([seed, scan, 9])
    samples = ["lysozyme crystal 3", "thaumatin crystal 1", "insulin crystal 7", "LaB6 standard"]
    return _ScanInfo(
        scan=scan,
        seed=seed,
        title=title,
        sample=samples[int(rng.integers(len(samples)))],
        temperature_k=round(float(rng.uniform(95.0, 105.0)), 2),
        energy_kev=round(float(rng.uniform(11.5, 13.5)), 4),
        distance_m=round(float(rng.uniform(0.15, 0.4)), 4),
    )


def _write_root_attrs(f: h5py.File, path: Path, info: _ScanInfo, frames: int) -> None:
    f.attrs["NX_class"] = "NXroot"
    f.attrs["default"] = "entry"
    f.attrs["file_name"] = path.name
    f.attrs["file_time"] = _iso(info.end(frames))
    f.attrs["file_update_time"] = _iso(info.end(frames))
    f.attrs["HDF5_Version"] = h5py.version.hdf5_version
    f.attrs["h5py_version"] = h5py.version.version
    f.attrs["creator"] = CREATOR
    f.attrs["NeXus_version"] = "v2024.02"


def _write_entry(
    f: h5py.File,
    name: str,
    info: _ScanInfo,
    model: _DetectorModel,
    *,
    frames: int,
    chunk_frames: int,
    resizable: bool,
    pixel_axes: bool,
    dataset_kwargs: dict[str, Any],
) -> h5py.Dataset:
    """Write an NXmx entry around an empty frame stack and return the stack.

    Parts that depend on the number of frames (monitor, frame numbers, end
    time) are written by :func:`_finish_entry` once the stack is complete.
    """
    height, width = model.shape
    entry = _nx_group(f, name, "NXentry")
    entry.attrs["default"] = "data"
    _text(entry, "definition", "NXmx", version="1.0")
    _text(entry, "title", info.title)
    _text(entry, "entry_identifier", f"{info.seed}:{info.scan:04d}")
    _text(entry, "start_time", _iso(info.start))
    _text(entry, "program_name", CREATOR, version="0.1.0")

    sample = _nx_group(entry, "sample", "NXsample")
    _text(sample, "name", info.sample)
    _number(sample, "temperature", info.temperature_k, "K")
    _text(sample, "depends_on", ".")

    instrument = _nx_group(entry, "instrument", "NXinstrument")
    _text(instrument, "name", "HYPERSLAB BL-1 protein crystallography", short_name="BL-1")

    source = _nx_group(instrument, "source", "NXsource")
    _text(source, "name", "Synthetic Light Source", short_name="SLS-X")
    _text(source, "type", "Synchrotron X-ray Source")
    _text(source, "probe", "x-ray")
    _number(source, "current", 400.0, "mA")

    wavelength = _HC_KEV_ANGSTROM / info.energy_kev
    mono = _nx_group(instrument, "monochromator", "NXmonochromator")
    _number(mono, "energy", info.energy_kev, "keV")
    _number(mono, "wavelength", wavelength, "angstrom")
    beam = _nx_group(instrument, "beam", "NXbeam")
    _number(beam, "incident_wavelength", wavelength, "angstrom")
    _number(beam, "total_flux", 2.4e12, "Hz")

    detector = _nx_group(instrument, "detector", "NXdetector")
    shape = (0 if resizable else frames, height, width)
    data = detector.create_dataset(
        "data",
        shape=shape,
        maxshape=(None, height, width) if resizable else shape,
        dtype="<u4",
        chunks=(chunk_frames, height, width),
        **dataset_kwargs,
    )
    data.attrs["interpretation"] = "image"
    data.attrs["units"] = "counts"
    data.attrs["long_name"] = "photon counts"
    _text(detector, "description", "Pilatus 100K-like hybrid pixel detector (synthetic)")
    _text(detector, "sensor_material", "Si")
    _number(detector, "sensor_thickness", 450e-6, "m")
    _number(detector, "x_pixel_size", _PIXEL_SIZE_M, "m")
    _number(detector, "y_pixel_size", _PIXEL_SIZE_M, "m")
    _number(detector, "distance", info.distance_m, "m")
    _number(detector, "count_time", _COUNT_TIME_S, "s")
    _number(detector, "frame_time", _COUNT_TIME_S + 0.0023, "s")
    _number(detector, "beam_center_y", model.beam_centre[0], "pixel")
    _number(detector, "beam_center_x", model.beam_centre[1], "pixel")
    _number(detector, "saturation_value", 1_048_575, "counts")
    detector.create_dataset("bit_depth_readout", data=np.int32(20))
    detector.create_dataset(
        "pixel_mask", data=model.pixel_mask, compression="gzip", shuffle=True, chunks=True
    )
    _text(detector, "depends_on", "/entry/instrument/detector/transformations/translation")
    transformations = _nx_group(detector, "transformations", "NXtransformations")
    _number(
        transformations,
        "translation",
        info.distance_m,
        "m",
        transformation_type="translation",
        vector=np.array([0.0, 0.0, 1.0]),
        depends_on=".",
    )

    nxdata = _nx_group(entry, "data", "NXdata")
    # The same dataset under two names, as EIGER/Pilatus writers and NeXus require.
    nxdata["data"] = data
    nxdata.attrs["signal"] = "data"
    nxdata.attrs["frame_number_indices"] = np.int64(0)
    if pixel_axes:
        nxdata.attrs["axes"] = ["frame_number", "y_pixel_offset", "x_pixel_offset"]
        nxdata.attrs["y_pixel_offset_indices"] = np.int64(1)
        nxdata.attrs["x_pixel_offset_indices"] = np.int64(2)
        for axis, n in (("y_pixel_offset", height), ("x_pixel_offset", width)):
            offsets = detector.create_dataset(axis, data=np.arange(n) * _PIXEL_SIZE_M)
            offsets.attrs["units"] = "m"
            nxdata[axis] = offsets
    else:
        nxdata.attrs["axes"] = ["frame_number", ".", "."]
    return data


def _finish_entry(f: h5py.File, name: str, info: _ScanInfo, frames: int) -> None:
    entry = f[name]
    _text(entry, "end_time", _iso(info.end(frames)))
    frame_number = entry["data"].create_dataset(
        "frame_number", data=np.arange(1, frames + 1, dtype=np.int32)
    )
    frame_number.attrs["long_name"] = "frame number"
    monitor = _nx_group(entry, "monitor", "NXmonitor")
    _text(monitor, "mode", "timer")
    _number(monitor, "preset", _COUNT_TIME_S, "s")
    rng = np.random.default_rng([info.seed, info.scan, 4])
    counts = np.round(
        1.2e6 * np.exp(-np.arange(frames) / 5.0e4) * rng.normal(1.0, 0.003, frames)
    ).astype(np.int64)
    _number(monitor, "data", counts, "counts")
    f.attrs["file_update_time"] = _iso(info.end(frames))


@contextmanager
def _progress(enabled: bool, description: str, total: float | None) -> Iterator[Any]:
    """Yield an ``advance(n)`` callable; a rich bar when ``enabled``."""
    if not enabled:
        yield lambda _n=1: None
        return
    with Progress(transient=True) as bar:
        task = bar.add_task(description, total=total)
        yield lambda n=1: bar.advance(task, n)


def _write_stack(
    data: h5py.Dataset, model: _DetectorModel, frames: int, advance: Any, resizable: bool
) -> None:
    for i in range(frames):
        if resizable:
            data.resize(i + 1, axis=0)
        data[i] = model.frame(i)
        advance(1)


def _write_scan(
    path: Path,
    *,
    scan: int,
    seed: int,
    frames: int,
    shape: tuple[int, int],
    title: str,
    codec: Codec,
    libver: str | tuple[str, str] | None,
    resizable: bool,
    pixel_axes: bool,
    advance: Any,
) -> Path:
    info = _scan_info(scan, seed, title)
    model = _DetectorModel(shape, seed, scan)
    with h5py.File(path, "w", libver=libver) as f:
        _write_root_attrs(f, path, info, frames)
        data = _write_entry(
            f,
            "entry",
            info,
            model,
            frames=frames,
            chunk_frames=1,
            resizable=resizable,
            pixel_axes=pixel_axes,
            dataset_kwargs=_codec_kwargs(codec),
        )
        _write_stack(data, model, frames, advance, resizable)
        _finish_entry(f, "entry", info, frames)
    return path


def _write_multi(directory: Path, *, seed: int, shape: tuple[int, int], advance: Any) -> list[Path]:
    """A small master file with several entries, EIGER-style external data file.

    ``/entry``: 5 frames in chunks of 2 (a partial last chunk), resizable,
    Zstd; a second NXdata (``mean``, float32) and NXprocess, NXnote,
    NXcollection, NXuser and an NXlog of the sample temperature.
    ``/entry_2``: a dark series whose frames live in a separate data file,
    reached through an external link, like Dectris master/data files.
    """
    path = directory / "scan_0003_multi.nxs"
    data_path = directory / "scan_0003_multi_data_000001.h5"
    frames, dark_frames = 5, 3
    info = _scan_info(3, seed, "multi-entry scan: rotation + dark series")
    model = _DetectorModel(shape, seed, 3)
    stack = np.stack([model.frame(i) for i in range(frames)])
    advance(frames)
    with h5py.File(data_path, "w") as f:
        f.attrs["NX_class"] = "NXroot"
        f.attrs["creator"] = CREATOR
        dark = f.create_dataset(
            "entry/data/data",
            shape=(dark_frames, *shape),
            dtype="<u4",
            chunks=(1, *shape),
            **_codec_kwargs("bslz4"),
        )
        dark.attrs["image_nr_low"] = np.int32(1)
        dark.attrs["image_nr_high"] = np.int32(dark_frames)
        for i in range(dark_frames):
            dark[i] = model.dark_frame(i)
            advance(1)
    with h5py.File(path, "w") as f:
        _write_root_attrs(f, path, info, frames)
        data = _write_entry(
            f,
            "entry",
            info,
            model,
            frames=frames,
            chunk_frames=2,
            resizable=True,
            pixel_axes=True,
            dataset_kwargs=dict(hdf5plugin.Zstd(clevel=5)),
        )
        data.resize(frames, axis=0)
        data[...] = stack
        _finish_entry(f, "entry", info, frames)
        entry = f["entry"]
        mean = _nx_group(entry, "mean", "NXdata")
        mean.attrs["signal"] = "intensity"
        mean.attrs["axes"] = ["y_pixel_offset", "x_pixel_offset"]
        mean.create_dataset(
            "intensity",
            data=stack.astype(np.float32).mean(axis=0),
            chunks=True,
            compression="gzip",
            shuffle=True,
        )
        mean["y_pixel_offset"] = entry["data/y_pixel_offset"]
        mean["x_pixel_offset"] = entry["data/x_pixel_offset"]
        process = _nx_group(entry, "process", "NXprocess")
        _text(process, "program", "hyperslab.samples")
        _text(process, "version", "0.1.0")
        _text(process, "date", _iso(info.end(frames)))
        note = _nx_group(process, "parameters", "NXnote")
        _text(note, "type", "application/json")
        _text(note, "data", '{"reduction": "mean", "frames": [1, 5]}')
        collection = _nx_group(entry, "scan_parameters", "NXcollection")
        collection.create_dataset("omega_start", data=12.5).attrs["units"] = "deg"
        collection.create_dataset("omega_increment", data=0.1).attrs["units"] = "deg"
        _text(collection, "scan_axis", "omega")
        user = _nx_group(entry, "user", "NXuser")
        _text(user, "name", "A. Scientist")
        _text(user, "role", "principal_investigator")
        log = _nx_group(entry["sample"], "temperature_log", "NXlog")
        t = np.linspace(0.0, frames * _COUNT_TIME_S, 11)
        _number(log, "time", t, "s", start=_iso(info.start))
        temps = info.temperature_k + 0.05 * np.sin(t * 7.0)
        _number(log, "value", temps, "K")

        dark_info = _scan_info(33, seed, "dark series")
        entry2 = _nx_group(f, "entry_2", "NXentry")
        entry2.attrs["default"] = "data"
        _text(entry2, "definition", "NXmx")
        _text(entry2, "title", dark_info.title)
        _text(entry2, "start_time", _iso(info.end(frames)))
        _text(entry2, "end_time", _iso(info.end(frames) + timedelta(seconds=1)))
        sample2 = _nx_group(entry2, "sample", "NXsample")
        _text(sample2, "name", "none (dark)")
        data2 = _nx_group(entry2, "data", "NXdata")
        data2.attrs["signal"] = "data_000001"
        data2["data_000001"] = h5py.ExternalLink(data_path.name, "/entry/data/data")
    return [path, data_path]


def write_samples(
    directory: Path,
    *,
    frames: int = 20,
    shape: tuple[int, int] = (195, 487),
    seed: int = 0,
    progress: bool = False,
) -> list[Path]:
    """Write a small set of NeXus detector files into ``directory``.

    - ``scan_0001_gzip.nxs``: one frame per chunk, shuffle + gzip 4 (Pilatus-like),
      ``axes = ["frame_number", ".", "."]``.
    - ``scan_0002_bslz4.nxs``: Bitshuffle/LZ4 (EIGER-like), resizable stack
      written frame by frame with ``libver="v110"`` (extensible-array chunk
      index), pixel-offset axes.
    - ``scan_0003_multi.nxs`` and ``scan_0003_multi_data_000001.h5``: several
      NXentry-level features, see :func:`_write_multi`.

    The stacks are ``detector_frames(frames, shape, seed=seed, scan=n)``.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if frames < 1:
        raise ValueError("frames must be >= 1")
    total = 2 * frames + 8
    with _progress(progress, "writing NeXus samples", total) as advance:
        paths = [
            _write_scan(
                directory / "scan_0001_gzip.nxs",
                scan=1,
                seed=seed,
                frames=frames,
                shape=shape,
                title="rotation scan, 0.1 deg/frame (gzip)",
                codec="gzip",
                libver=None,
                resizable=False,
                pixel_axes=False,
                advance=advance,
            ),
            _write_scan(
                directory / "scan_0002_bslz4.nxs",
                scan=2,
                seed=seed,
                frames=frames,
                shape=shape,
                title="rotation scan, 0.1 deg/frame (bitshuffle/LZ4)",
                codec="bslz4",
                libver=("v110", "latest"),
                resizable=True,
                pixel_axes=True,
                advance=advance,
            ),
        ]
        paths += _write_multi(directory, seed=seed, shape=shape, advance=advance)
    return paths


# --------------------------------------------------------------------------- frames
#
# Pilatus detectors write one CBF (or TIFF) file per frame: signed 32-bit counts, -1 in
# module gaps, the "mini-header" of ``# Key value`` lines describing the exposure. This
# module stands alone, so it writes CBF byte-offset compression itself.


def _byte_offset(values: np.ndarray) -> bytes:
    """CBFlib byte-offset compression (deltas in 1, 1+2, 1+2+4 or 1+2+4+8 bytes)."""
    d = np.diff(values.astype(np.int64).reshape(-1), prepend=np.int64(0))
    a = np.abs(d)
    size = np.where(a < 128, 1, np.where(a < 32768, 3, np.where(a < (1 << 31), 7, 15)))
    off = np.cumsum(size) - size
    out = np.zeros(int(size.sum()), np.uint8)
    out[off[size == 1]] = d[size == 1].astype(np.int8).view(np.uint8)
    out[off[size > 1]] = 0x80
    for width, start, own in ((2, 1, 3), (4, 3, 7), (8, 7, 15)):
        here = size == own
        raw = d[here].astype(f"<i{width}").view(np.uint8).reshape(-1, width)
        out[off[here][:, None] + start + np.arange(width)] = raw
        escape = np.zeros(width, np.uint8)
        escape[-1] = 0x80
        out[off[size > own][:, None] + start + np.arange(width)] = escape
    return out.tobytes()


def _mini_header(i: int, t: datetime, shape: tuple[int, int], beam: tuple[float, float]) -> str:
    return "\n".join(
        [
            "# Detector: PILATUS 100K, S/N 1-0000, hyperslab sample",
            f"# {t.strftime('%Y-%m-%dT%H:%M:%S.%f')[:-3]}",
            f"# Pixel_size {_PIXEL_SIZE_M * 1e6:.0f}e-6 m x {_PIXEL_SIZE_M * 1e6:.0f}e-6 m",
            "# Silicon sensor, thickness 0.000450 m",
            f"# Exposure_time {_COUNT_TIME_S - 0.001:.7f} s",
            f"# Exposure_period {_COUNT_TIME_S:.7f} s",
            "# Tau = 124.0e-09 s",
            "# Count_cutoff 1048574 counts",
            "# Threshold_setting: 6000 eV",
            "# Gain_setting: mid gain (vrf = -0.200)",
            "# N_excluded_pixels = 0",
            "# Wavelength 1.0332 A",
            f"# Detector_distance {0.25 + 0.0005 * i:.5f} m",
            f"# Beam_xy ({beam[1]:.2f}, {beam[0]:.2f}) pixels",
            f"# Start_angle {0.1 * i:.4f} deg.",
            "# Angle_increment 0.1000 deg.",
        ]
    )


def _cbf_bytes(name: str, image: np.ndarray, header: str) -> bytes:
    import base64
    import hashlib

    data = _byte_offset(image)
    height, width = image.shape
    text = (
        "###CBF: VERSION 1.5, CBFlib v0.7.8 - PILATUS detectors\r\n\r\n"
        f"data_{name}\r\n\r\n"
        '_array_data.header_convention "PILATUS_1.2"\r\n'
        "_array_data.header_contents\r\n;\r\n"
        + header.replace("\n", "\r\n")
        + "\r\n;\r\n\r\n_array_data.data\r\n;\r\n"
        "--CIF-BINARY-FORMAT-SECTION--\r\n"
        "Content-Type: application/octet-stream;\r\n"
        '     conversions="x-CBF_BYTE_OFFSET"\r\n'
        "Content-Transfer-Encoding: BINARY\r\n"
        f"X-Binary-Size: {len(data)}\r\n"
        "X-Binary-ID: 1\r\n"
        'X-Binary-Element-Type: "signed 32-bit integer"\r\n'
        "X-Binary-Element-Byte-Order: LITTLE_ENDIAN\r\n"
        f"Content-MD5: {base64.b64encode(hashlib.md5(data).digest()).decode()}\r\n"
        f"X-Binary-Number-of-Elements: {height * width}\r\n"
        f"X-Binary-Size-Fastest-Dimension: {width}\r\n"
        f"X-Binary-Size-Second-Dimension: {height}\r\n"
        "X-Binary-Size-Padding: 4095\r\n\r\n"
    )
    tail = b"\x00" * 4095 + b"\r\n--CIF-BINARY-FORMAT-SECTION----\r\n;\r\n\r\n"
    return text.encode("ascii") + b"\x0c\x1a\x04\xd5" + data + tail


def write_frame_series(
    directory: Path,
    *,
    frames: int = 10,
    shape: tuple[int, int] = (195, 487),
    seed: int = 0,
    tiff_compression: Sequence[str | None] = ("zlib",),
) -> list[Path]:
    """Pilatus-like frame series, one file per frame, in subfolders of ``directory``:

    - ``pilatus_cbf/frame_NNNNN.cbf``: CBF, byte-offset compression, Pilatus mini-header
      (exposure time, wavelength, detector distance rising 0.5 mm a frame, beam centre,
      pixel size, timestamp, start angle).
    - ``pilatus_tiff/frame_NNNNN.tif``: deflate-compressed TIFF, the same mini-header as
      ImageDescription, plus DateTime, resolution (pixel size) and Software tags. Each
      other ``tiff_compression`` (tifffile's name; None: uncompressed) writes the same
      TIFFs into ``pilatus_tiff_<name>/`` (``pilatus_tiff_none/``).

    Signed 32-bit counts with -1 in the module gap (Pilatus convention): frame ``i`` is
    ``detector_frames(frames, shape, seed=seed, scan=4)[i]``, drawn one at a time.
    """
    import tifffile

    directory = Path(directory)
    model = _DetectorModel(shape, seed, 4)
    beam = model.beam_centre
    dirs = {"cbf": directory / "pilatus_cbf"}
    for c in tiff_compression:
        dirs[c or "none"] = directory / (
            "pilatus_tiff" if c == "zlib" else f"pilatus_tiff_{c or 'none'}"
        )
    for d in dirs.values():
        d.mkdir(parents=True, exist_ok=True)
    written: dict[str, list[Path]] = {k: [] for k in dirs}
    per_cm = 0.01 / _PIXEL_SIZE_M
    for i in range(frames):
        image = model.frame(i).view(np.int32)
        t = _BASE_TIME.replace(tzinfo=None) + timedelta(seconds=_COUNT_TIME_S * i)
        header = _mini_header(i, t, shape, beam)
        name = f"frame_{i + 1:05d}"
        path = dirs["cbf"] / f"{name}.cbf"
        path.write_bytes(_cbf_bytes(name, image, header))
        written["cbf"].append(path)
        for c in tiff_compression:
            path = dirs[c or "none"] / f"{name}.tif"
            tifffile.imwrite(
                path,
                image,
                compression=c,
                description=header,
                datetime=t.strftime("%Y:%m:%d %H:%M:%S"),
                resolution=(per_cm, per_cm),
                resolutionunit="CENTIMETER",
                software="hyperslab sample",
                metadata=None,
            )
            written[c or "none"].append(path)
    return [p for paths in written.values() for p in paths]


def write_big_detector_file(
    path: Path,
    *,
    target_bytes: int,
    frame_shape: tuple[int, int] = (1024, 1024),
    codec: Codec = "gzip",
    seed: int = 0,
    progress: bool = False,
) -> Path:
    """Write an NXmx stack frame by frame until its chunks hold ``>= target_bytes``.

    One frame per chunk; memory stays at a few frames whatever the size. The
    count is of stored (compressed) chunk bytes, so the file is slightly
    larger. Background noise is drawn from a pool of frames for speed (see
    ``_DetectorModel.fast_frames``); every frame is still unique.
    """
    path = Path(path)
    if target_bytes <= 0:
        raise ValueError("target_bytes must be positive")
    info = _scan_info(100, seed, f"benchmark stack ({codec})")
    model = _DetectorModel(frame_shape, seed, 100)
    written = 0
    frames = 0
    with (
        h5py.File(path, "w") as f,
        _progress(progress, f"writing {path.name}", target_bytes) as advance,
    ):
        _write_root_attrs(f, path, info, 0)
        data = _write_entry(
            f,
            "entry",
            info,
            model,
            frames=0,
            chunk_frames=1,
            resizable=True,
            pixel_axes=False,
            dataset_kwargs=_codec_kwargs(codec),
        )
        for frame in model.fast_frames():
            data.resize(frames + 1, axis=0)
            data[frames] = frame
            size = data.id.get_chunk_info_by_coord((frames, 0, 0)).size
            written += size
            frames += 1
            advance(size)
            if written >= target_bytes:
                break
        _finish_entry(f, "entry", info, frames)
        f.attrs["file_time"] = _iso(info.end(frames))
    return path


def write_many_chunks_file(
    path: Path, n_chunks: int = 1_000_000, chunk: int = 1, *, progress: bool = False
) -> Path:
    """Write ``/data``: a 1-D ``<i4`` dataset with exactly ``n_chunks`` allocated chunks.

    Element ``i`` holds ``i``. A few chunks (listed in the dataset attribute
    ``unwritten_chunks``) are never written, so they read as the fill value
    ``-1`` and have no entry in the chunk index. Chunks are written raw with
    ``write_direct_chunk``: 10^6 chunks in 6-10 s, where ``dset[:] = ...`` takes
    3-4 times as long.
    """
    path = Path(path)
    if n_chunks < 1 or chunk < 1:
        raise ValueError("n_chunks and chunk must be >= 1")
    n_unwritten = min(5, max(1, n_chunks // 10))
    total_chunks = n_chunks + n_unwritten
    unwritten = np.unique(np.linspace(1, total_chunks - 2, n_unwritten).astype(np.int64))
    while unwritten.size < n_unwritten:  # tiny n_chunks: linspace collided
        unwritten = np.union1d(unwritten, [total_chunks - 1 - unwritten.size])
    skip = np.zeros(total_chunks, dtype=bool)
    skip[unwritten] = True
    values = np.arange(total_chunks * chunk, dtype="<i4").reshape(total_chunks, chunk)
    with (
        h5py.File(path, "w") as f,
        _progress(progress, f"writing {path.name}", n_chunks) as advance,
    ):
        data = f.create_dataset(
            "data", shape=(total_chunks * chunk,), chunks=(chunk,), dtype="<i4", fillvalue=-1
        )
        data.attrs["unwritten_chunks"] = unwritten
        data.attrs["chunks_written"] = np.int64(n_chunks)
        write_chunk = data.id.write_direct_chunk
        rows = values.tobytes()
        step = 4 * chunk
        todo = np.flatnonzero(~skip).tolist()
        batch = 10_000
        for first in range(0, len(todo), batch):
            for index in todo[first : first + batch]:
                start = index * step
                write_chunk((index * chunk,), rows[start : start + step])
            advance(min(batch, len(todo) - first))
    return path


# ------------------------------------------------------------ catalog records
CATALOG_SAMPLES = ["Si", "LaB6 standard", "insulin crystal 7", "lysozyme crystal 3", "CeO2", "Ge"]


def catalog_record(i: int, rng: random.Random) -> dict[str, Any]:
    """Entry ``i``'s catalog record as ingest makes it for a NeXus scan (~30 keys, ~1 kB),
    for repositories of many synthetic entries (benchmarks, commit-cost tests)."""
    run, scan = divmod(i, 1000)
    return {
        "name": f"run{run:03d}/scan_{scan:04d}",
        "files": [f"scan_{scan:04d}.nxs"],
        "arrays": 40 + i % 25,
        "materialised": 16,
        "entry": "entry",
        "title": f"rotation scan {scan}, 0.1 deg/frame" if i % 3 else f"dark series {scan}",
        "start_time": f"2026-{1 + i % 12:02d}-{1 + i % 28:02d}T{i % 24:02d}:00:00Z",
        "end_time": f"2026-{1 + i % 12:02d}-{1 + i % 28:02d}T{i % 24:02d}:05:00Z",
        "definition": "NXmx",
        "sample": rng.choice(CATALOG_SAMPLES),
        "sample_temperature": round(rng.uniform(80, 300), 2),
        "sample_temperature_units": "K",
        "instrument": "HYPERSLAB BL-1 protein crystallography",
        "beamline": "BL-1",
        "source": "Synthetic Light Source",
        "detector": "Pilatus 100K-like hybrid pixel detector",
        "energy": round(rng.uniform(6, 20), 4),
        "energy_units": "keV",
        "wavelength": round(rng.uniform(0.6, 2), 4),
        "wavelength_units": "angstrom",
        "signal": "data",
        "signal_shape": [100, 195, 487],
        "signal_dtype": "uint32",
        "axes": ["frame_number", "y_pixel_offset", "x_pixel_offset"],
        "@NX_class": "NXroot",
        "@creator": "beamline DAQ 4.2",
        "@file_name": f"scan_{scan:04d}.nxs",
    }
