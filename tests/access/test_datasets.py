"""open_datasets: many entries as one lazy Dataset, equal to h5py's arrays stacked or
concatenated, computed on a dask.distributed LocalCluster of processes (issue 17)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest

import hyperslab
from hyperslab.convert.ingest import ingest
from hyperslab.errors import BadInputError, NotFoundError
from hyperslab.references.repository import Repository

FRAMES, NY, NX = 6, 12, 10


def _scan(path: Path, seed: int, *, first_frame: int = 1, sample: str = "insulin") -> np.ndarray:
    data = np.random.default_rng(seed).integers(0, 5000, (FRAMES, NY, NX), dtype="<u4")
    with h5py.File(path, "w") as f:
        entry = f.create_group("entry")
        entry.attrs["NX_class"] = "NXentry"
        entry.attrs["default"] = "data"
        entry["sample/name"] = sample
        entry["sample"].attrs["NX_class"] = "NXsample"
        nxdata = entry.create_group("data")
        nxdata.attrs.update(
            {"NX_class": "NXdata", "signal": "data", "axes": ["frame_number", ".", "."]}
        )
        nxdata.create_dataset("data", data=data, chunks=(1, NY, NX), compression="gzip")
        nxdata["frame_number"] = np.arange(first_frame, first_frame + FRAMES, dtype="<i4")
        nxdata.attrs["frame_number_indices"] = 0
    return data


@pytest.fixture(scope="module")
def scans(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict[str, np.ndarray]]:
    tmp = tmp_path_factory.mktemp("datasets")
    truth = {}
    for i in range(3):
        truth[f"runs/scan_{i}"] = _scan(
            tmp / f"scan_{i}.nxs", i, sample="insulin" if i < 2 else "lysozyme"
        )
    _scan(tmp / "late.nxs", 9, first_frame=101)
    with h5py.File(tmp / "other.nxs", "w") as f:  # a different layout
        f.create_dataset("entry/data/data", data=np.zeros((2, 3), "<f4"))
        f["entry"].attrs["NX_class"] = "NXentry"
        f["entry/data"].attrs.update({"NX_class": "NXdata", "signal": "data"})
    repo = Repository.init(str(tmp / "repo"))
    files = [str(tmp / f"scan_{i}.nxs") for i in range(3)]
    ingest(repo, [*files, str(tmp / "late.nxs"), str(tmp / "other.nxs")], name="runs")
    return str(tmp / "repo"), truth


def test_entries_stack_along_a_new_entry_dimension(
    scans: tuple[str, dict[str, np.ndarray]],
) -> None:
    repo, truth = scans
    ds = hyperslab.open_datasets(repo, "runs/scan_*", cache=False)
    assert list(ds["entry"].values) == sorted(truth)
    assert ds["data"].dims[:2] == ("entry", "frame_number")
    assert ds["data"].chunks is not None and ds["data"].data.numblocks[:2] == (3, FRAMES)
    np.testing.assert_array_equal(ds["data"].values, np.stack([truth[k] for k in sorted(truth)]))
    assert ds.encoding["hyperslab"]["entries"] == sorted(truth)
    one = ds["data"].sel(entry="runs/scan_1").isel(frame_number=4).values
    np.testing.assert_array_equal(one, truth["runs/scan_1"][4])


def test_a_query_selects_and_an_existing_dimension_concatenates(
    scans: tuple[str, dict[str, np.ndarray]],
) -> None:
    repo, truth = scans
    ds = hyperslab.open_datasets(
        repo, "runs/scan_*", query="sample=insulin", concat_dim="frame_number", cache=False
    )
    want = np.concatenate([truth["runs/scan_0"], truth["runs/scan_1"]])
    np.testing.assert_array_equal(ds["data"].values, want)
    assert ds.sizes["frame_number"] == 2 * FRAMES
    ds = hyperslab.open_datasets(repo, ["runs/scan_0", "runs/late"], concat_dim="frame_number")
    assert list(ds["frame_number"].values) == [*range(1, FRAMES + 1), *range(101, 101 + FRAMES)]


def test_entries_that_do_not_line_up_are_a_named_error(
    scans: tuple[str, dict[str, np.ndarray]],
) -> None:
    repo, _ = scans
    with pytest.raises(BadInputError, match="do not line up"):
        hyperslab.open_datasets(repo, ["runs/scan_0", "runs/other"])
    with pytest.raises(BadInputError, match="'frame_number' coordinates differ"):
        hyperslab.open_datasets(repo, ["runs/scan_0", "runs/late"])  # stacked: frames differ
    with pytest.raises(BadInputError, match="selects no entry"):
        hyperslab.open_datasets(repo, query="sample=nothing-like-this")
    with pytest.raises(NotFoundError, match="runs/scan_9"):
        hyperslab.open_datasets(repo, ["runs/scan_9"])


def test_the_dataset_computes_on_a_cluster_of_processes(
    scans: tuple[str, dict[str, np.ndarray]], dask_client: Any
) -> None:
    """The stores pickle as their addresses; each worker reopens them and reads."""
    repo, truth = scans
    ds = hyperslab.open_datasets(repo, "runs/scan_*", cache=False)
    total = dask_client.compute(ds["data"].sum(dim=("frame_number",)).data).result()
    np.testing.assert_array_equal(total, np.stack([truth[k] for k in sorted(truth)]).sum(axis=1))
    frames = dask_client.compute(ds["data"].isel(frame_number=slice(2, 5)).data).result()
    np.testing.assert_array_equal(frames, np.stack([truth[k][2:5] for k in sorted(truth)]))
