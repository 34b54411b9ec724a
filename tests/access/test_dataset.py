"""open_dataset and engine="hyperslab": NeXus default NXdata, signal/axes, laziness, errors."""

from __future__ import annotations

import pickle
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import h5py
import hdf5plugin  # noqa: F401 - h5py reads the bitshuffle/zstd samples through it
import numpy as np
import pytest
import xarray as xr

import hyperslab
from hyperslab.access.dataset import (
    HyperslabBackend,
    default_nxdata,
    open_dataset,
    split_url,
)
from hyperslab.convert.ingest import ingest
from hyperslab.errors import BadInputError, NotFoundError
from hyperslab.reading.routing import ChunkRef, Router
from hyperslab.references.repository import Repository
from tests.access.conftest import CorpusRepo

# ----------------------------------------------------------------- the samples over S3


@pytest.mark.parametrize(
    ("entry", "dims"),
    [
        # axes = ["frame_number", ".", "."]: NeXus names no pixel axes, so none are invented
        ("scan_0001_gzip", ("frame_number", "phony_dim_0", "phony_dim_1")),
        ("scan_0002_bslz4", ("frame_number", "y_pixel_offset", "x_pixel_offset")),
        ("scan_0003_multi", ("frame_number", "y_pixel_offset", "x_pixel_offset")),
    ],
)
def test_sample_default_nxdata_matches_h5py(
    nexus_repo: CorpusRepo, s3_env: None, entry: str, dims: tuple[str, ...]
) -> None:
    ds = open_dataset(nexus_repo.spec, entry, cache=False)
    assert ds.encoding["hyperslab"]["group"] == "entry/data"
    assert ds.attrs["signal"] == "data" and ds.attrs["NX_class"] == "NXdata"
    data = ds["data"]
    assert data.dims == dims
    assert data.chunks is not None  # dask-backed, one dask chunk per stored chunk
    with h5py.File(nexus_repo.files[entry]) as f:
        nxdata = f["entry/data"]
        want = nxdata["data"][()]
        assert data.dtype == want.dtype
        assert data.values.tobytes() == want.tobytes()
        assert data.attrs["units"] == nxdata["data"].attrs["units"] == "counts"
        assert data.attrs["long_name"] == "photon counts"
        np.testing.assert_array_equal(ds["frame_number"].values, nxdata["frame_number"][()])
        assert ds["frame_number"].attrs["long_name"] == "frame number"
        for axis in ("y_pixel_offset", "x_pixel_offset"):
            if axis in dims:
                coord = ds.coords[axis]
                assert coord.dims == (axis,)
                assert coord.values.tobytes() == nxdata[axis][()].tobytes()
                assert coord.attrs["units"] == "m"
    assert set(ds.coords) == {d for d in dims if not d.startswith("phony_dim_")}
    assert list(ds.data_vars) == ["data"]


def test_other_nxdata_groups_of_a_sample(nexus_repo: CorpusRepo, s3_env: None) -> None:
    spec = nexus_repo.spec
    mean = open_dataset(spec, "scan_0003_multi", "entry/mean", cache=False)
    assert mean.attrs["signal"] == "intensity"
    assert mean["intensity"].dims == ("y_pixel_offset", "x_pixel_offset")
    # the dark series through the master's external link; this NXdata names no axes
    dark = open_dataset(spec, "scan_0003_multi", "/entry_2/data/", cache=False)
    assert dark.attrs["signal"] == "data_000001"
    with h5py.File(nexus_repo.files["scan_0003_multi"]) as f:
        np.testing.assert_array_equal(mean["intensity"].values, f["entry/mean/intensity"][()])
        assert dark["data_000001"].values.tobytes() == f["entry_2/data/data_000001"][()].tobytes()
    assert all(d.startswith("phony_dim_") for d in dark["data_000001"].dims)


@pytest.fixture
def fetched(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The Zarr keys of every chunk the routers fetch from a site, in order."""
    labels: list[str] = []
    original = Router.fetch

    def recording(self: Router, refs: Sequence[ChunkRef]) -> list[bytes | BaseException]:
        labels.extend(r.label for r in refs)
        return original(self, refs)

    monkeypatch.setattr(Router, "fetch", recording)
    return labels


def test_open_reads_metadata_and_coordinates_only(
    nexus_repo: CorpusRepo, s3_env: None, fetched: list[str]
) -> None:
    ds = open_dataset(nexus_repo.spec, "scan_0002_bslz4", cache=False)
    assert not [k for k in fetched if k.startswith("entry/data/data/")], fetched
    assert not [k for k in fetched if k.startswith("entry/instrument/")], fetched
    frame = ds["data"].isel(frame_number=2).values
    assert [k for k in fetched if k.startswith("entry/data/data/")] == ["entry/data/data/2.0.0"]
    with h5py.File(nexus_repo.files["scan_0002_bslz4"]) as f:
        np.testing.assert_array_equal(frame, f["entry/data/data"][2])


def test_engine_reads_nothing_at_open_either(
    corpus_repo: CorpusRepo, s3_env: None, fetched: list[str]
) -> None:
    """xarray's own lazy arrays (no dask), through the dims renamed for a legacy NXdata."""
    url = f"{corpus_repo.spec}#corpus_nexus"
    ds = xr.open_dataset(url, engine="hyperslab", group="entry/legacy", chunk_cache=False)
    assert ds["counts"].dims == ("y", "x") and ds["counts"].chunks is None
    assert not [k for k in fetched if k.startswith("entry/legacy/counts/")]
    with h5py.File(corpus_repo.files["corpus_nexus"]) as f:
        np.testing.assert_array_equal(ds["counts"].values, f["entry/legacy/counts"][()])
    assert [k for k in fetched if k.startswith("entry/legacy/counts/")]


def test_dataset_pickles_for_dask_workers(nexus_repo: CorpusRepo, s3_env: None) -> None:
    ds = open_dataset(nexus_repo.spec, "scan_0001_gzip", cache=False)
    again = pickle.loads(pickle.dumps(ds))
    np.testing.assert_array_equal(again["data"].sum("frame_number"), ds["data"].sum("frame_number"))
    assert again.encoding["hyperslab"]["snapshot"] == ds.encoding["hyperslab"]["snapshot"]


def test_engine_hyperslab(nexus_repo: CorpusRepo, s3_env: None) -> None:
    url = f"{nexus_repo.spec}#scan_0002_bslz4"
    lazy = xr.open_dataset(url, engine="hyperslab", chunk_cache=False)
    assert lazy["data"].chunks is None  # xarray's lazy arrays unless chunks= is given
    chunked = xr.open_dataset(
        nexus_repo.spec, engine="hyperslab", entry="scan_0002_bslz4", chunks={}, chunk_cache=False
    )
    assert chunked["data"].chunks == ((1,) * 6, (48,), (64,))
    with h5py.File(nexus_repo.files["scan_0002_bslz4"]) as f:
        want = f["entry/data/data"][()]
    assert lazy["data"].values.tobytes() == chunked["data"].values.tobytes() == want.tobytes()
    assert lazy["data"].dims == ("frame_number", "y_pixel_offset", "x_pixel_offset")
    pixels = xr.open_dataset(
        url, engine="hyperslab", group="entry/instrument/detector", chunk_cache=False
    )
    assert "pixel_mask" in pixels and "signal" not in pixels.attrs
    # the top-level package and hyperslab.access export the same function
    assert hyperslab.open_dataset is open_dataset
    assert hyperslab.open_store is hyperslab.access.open_store


def test_engine_guess_claims_local_repositories_only(tmp_path: Path) -> None:
    repo = Repository.init(str(tmp_path / "repo"))
    f = tmp_path / "plain.h5"
    with h5py.File(f, "w") as h:
        h.create_dataset("x", data=np.arange(6.0), chunks=(3,))
    ingest(repo, [str(f)])
    backend = HyperslabBackend()
    assert backend.guess_can_open(f"{tmp_path / 'repo'}#plain")
    assert backend.guess_can_open(f"file://{tmp_path / 'repo'}#plain")
    assert not backend.guess_can_open(str(tmp_path / "repo"))  # no entry named
    assert not backend.guess_can_open(f"{f}#x")  # an HDF5 file is not a repository
    assert not backend.guess_can_open("s3://bucket/repo#entry")  # never probed over a network
    assert not backend.guess_can_open(tmp_path / "data.nc")
    assert not backend.guess_can_open(b"bytes")
    # found without engine=, and a plain-HDF5 entry opens at its root with group=""
    ds = xr.open_dataset(f"{tmp_path / 'repo'}#plain", group="", chunk_cache=False)
    np.testing.assert_array_equal(ds["x"].values, np.arange(6.0))


def test_engine_takes_site_path_specs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """xarray makes every non-URL string an absolute path; SITE:path must survive that."""
    config = tmp_path / "hyperslab.toml"
    config.write_text(f'[sites.here]\nurl = "{(tmp_path / "site").as_uri()}"\n')
    monkeypatch.setenv("HYPERSLAB_CONFIG", str(config))
    monkeypatch.chdir(tmp_path)
    f = tmp_path / "plain.h5"
    with h5py.File(f, "w") as h:
        h.create_dataset("x", data=np.arange(6.0), chunks=(3,))
    ingest(Repository.init("here:repos/r"), [str(f)])
    ds = xr.open_dataset("here:repos/r#plain", engine="hyperslab", group="", chunk_cache=False)
    np.testing.assert_array_equal(ds["x"].values, np.arange(6.0))


def test_import_hyperslab_stays_cheap() -> None:
    code = (
        "import sys, hyperslab; "
        "heavy = [m for m in ('xarray', 'zarr', 'dask', 's3fs', 'hyperslab.access.store') "
        "if m in sys.modules]; "
        "assert not heavy, heavy; "
        "assert callable(hyperslab.open_dataset) and 'xarray' in sys.modules"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert res.returncode == 0, res.stderr


# ----------------------------------------------------------------- NeXus conventions


def _nexus_files(d: Path) -> list[Path]:
    y, x = np.arange(16) * 0.5, np.arange(16) * 0.25
    counts = np.arange(256, dtype="<u2").reshape(16, 16)
    # pre-2014 NXdata: signal=1 and axes="y:x" on the field; a square signal, so the
    # converter's by-length phony names cannot tell y from x
    with h5py.File(d / "legacy.nxs", "w") as f:
        f.attrs["default"] = "entry"
        entry = f.create_group("entry")
        entry.attrs["NX_class"] = "NXentry"
        data = entry.create_group("data")
        data.attrs["NX_class"] = "NXdata"
        c = data.create_dataset("counts", data=counts, chunks=(8, 4))
        c.attrs["signal"] = np.int32(1)
        c.attrs["axes"] = np.bytes_("y:x")
        c.attrs["long_name"] = "detector counts"
        data["y"] = y
        data["x"] = x
        data["x"].attrs["units"] = "mm"
    # NXentry/@default → NXsubentry/@default → NXdata, with a 2-D axis (qmap_indices),
    # bin edges (one longer: not a coordinate), errors and an auxiliary signal
    with h5py.File(d / "sub.nxs", "w") as f:
        f.attrs["default"] = "entry"
        entry = f.create_group("entry")
        entry.attrs["NX_class"] = "NXentry"
        entry.attrs["default"] = "sub"
        sub = entry.create_group("sub")
        sub.attrs["NX_class"] = "NXsubentry"
        sub.attrs["default"] = "plot"
        decoy = entry.create_group("aaa_first")  # an NXdata the default chain skips
        decoy.attrs["NX_class"] = "NXdata"
        decoy.attrs["signal"] = "v"
        decoy["v"] = np.zeros(3)
        plot = sub.create_group("plot")
        plot.attrs["NX_class"] = "NXdata"
        plot.attrs["signal"] = "counts"
        plot.attrs["auxiliary_signals"] = ["monitor"]
        plot.attrs["axes"] = [".", "."]
        plot.attrs["qmap_indices"] = [0, 1]
        plot.attrs["edges_indices"] = 0
        plot["counts"] = counts
        plot["counts_errors"] = np.sqrt(counts)
        plot["monitor"] = counts * 2
        plot["qmap"] = np.hypot(*np.meshgrid(y, x, indexing="ij"))
        plot["edges"] = np.arange(17.0)
    # no @default anywhere: the first NXentry, then its first NXdata
    with h5py.File(d / "fallback.nxs", "w") as f:
        for name in ("entry_b", "entry_a"):
            e = f.create_group(name)
            e.attrs["NX_class"] = "NXentry"
            g = e.create_group("signal_group")
            g.attrs["NX_class"] = "NXdata"
            g.attrs["signal"] = "v"
            g.attrs["axes"] = "t"
            g["v"] = np.arange(4.0) + (name == "entry_b")
            g["t"] = np.arange(4)
    # plain HDF5: no NeXus at all
    with h5py.File(d / "plain.h5", "w") as f:
        f.create_dataset("grp/values", data=np.arange(5))
    return [d / n for n in ("legacy.nxs", "sub.nxs", "fallback.nxs", "plain.h5")]


@pytest.fixture(scope="module")
def conventions(tmp_path_factory: pytest.TempPathFactory) -> str:
    d = tmp_path_factory.mktemp("conventions")
    repo = Repository.init(str(d / "repo"))
    ingest(repo, [str(p) for p in _nexus_files(d)], fail_fast=True)
    return str(d / "repo")


def test_legacy_nxdata_square_signal(conventions: str) -> None:
    ds = open_dataset(conventions, "legacy", cache=False)
    assert ds.attrs["signal"] == "counts"  # named by its field attribute
    assert ds["counts"].dims == ("y", "x")
    # x had been given y's phony dimension (same length); NeXus says it spans axis 1
    assert ds["x"].dims == ("x",) and ds["y"].dims == ("y",)
    np.testing.assert_array_equal(ds["x"].values, np.arange(16) * 0.25)
    np.testing.assert_array_equal(ds["y"].values, np.arange(16) * 0.5)
    assert ds["x"].attrs["units"] == "mm" and ds["counts"].attrs["long_name"] == "detector counts"
    np.testing.assert_array_equal(ds["counts"].values, np.arange(256).reshape(16, 16))
    assert ds["counts"].chunks == ((8, 8), (4, 4, 4, 4))
    # through xarray's own chunking, the renamed dims keep the stored chunk shape
    url = f"{conventions}#legacy"
    via = xr.open_dataset(url, engine="hyperslab", chunks={}, chunk_cache=False)
    assert via["counts"].chunks == ((8, 8), (4, 4, 4, 4))


def test_subentry_chain_multidim_axis_edges_errors(conventions: str) -> None:
    ds = open_dataset(conventions, "sub", cache=False)
    assert ds.encoding["hyperslab"]["group"] == "entry/sub/plot"
    dims = ds["counts"].dims
    assert len(set(dims)) == 2
    assert ds["qmap"].dims == dims and "qmap" in ds.coords  # a 2-D axis spans both
    assert ds["counts_errors"].dims == dims and ds["monitor"].dims == dims
    assert "edges" in ds.data_vars and ds["edges"].dims[0] not in dims  # bin edges: own dim
    assert set(ds.data_vars) == {"counts", "counts_errors", "monitor", "edges"}


def test_default_falls_back_to_first_entry_and_nxdata(conventions: str) -> None:
    ds = open_dataset(conventions, "fallback", cache=False)
    assert ds.encoding["hyperslab"]["group"] == "entry_a/signal_group"
    assert ds["v"].dims == ("t",) and "t" in ds.coords
    np.testing.assert_array_equal(ds["v"].values, np.arange(4.0))


def test_default_nxdata_rules() -> None:
    nxdata = {"NX_class": "NXdata"}
    groups = {
        "": {"default": "missing"},
        "b": {"NX_class": "NXentry", "default": "loop"},
        "b/loop": {"NX_class": "NXsubentry", "default": "."},
        "b/loop/z": nxdata,
        "a": {"NX_class": "NXentry"},
    }
    assert default_nxdata(groups) is None  # the first NXentry, a, holds no NXdata
    groups["a"] = {"NX_class": "NXcollection"}  # not an entry: b is the first NXentry
    assert default_nxdata(groups) == "b/loop/z"
    assert default_nxdata({"": {"default": "/e/d"}, "e": {}, "e/d": nxdata}) == "e/d"
    assert default_nxdata({"": {}, "x": {"NX_class": "NXdata"}}) is None
    recorded = {"": {"hyperslab": {"nexus": {"default": "p/q"}}}, "p/q": nxdata}
    assert default_nxdata(recorded) == "p/q"


# ----------------------------------------------------------------- bad input


def test_bad_input_is_named(conventions: str, nexus_repo: CorpusRepo, s3_env: None) -> None:
    with pytest.raises(NotFoundError, match="no_such_entry"):
        open_dataset(nexus_repo.spec, "no_such_entry")
    with pytest.raises(NotFoundError, match=r"no group 'entry/nope'.*'entry/data'") as info:
        open_dataset(nexus_repo.spec, "scan_0001_gzip", "entry/nope", cache=False)
    assert "entry/instrument/detector" in info.value.details["groups"]
    assert info.value.code == "not_found"
    with pytest.raises(NotFoundError, match=r"no NeXus NXdata.*pass group=.*'grp'"):
        open_dataset(conventions, "plain", cache=False)
    with pytest.raises(BadInputError, match="name the entry"):
        xr.open_dataset(nexus_repo.spec, engine="hyperslab")
    with pytest.raises(BadInputError, match="at most one"):
        open_dataset(nexus_repo.spec, "scan_0001_gzip", branch="main", tag="v1")
    assert split_url("s3://b/r#run42/scan_0007") == ("s3://b/r", "run42/scan_0007")
    assert split_url("s3://b/r#x", entry="a#b") == ("s3://b/r#x", "a#b")
    with pytest.raises(BadInputError):
        split_url("s3://b/r#")
