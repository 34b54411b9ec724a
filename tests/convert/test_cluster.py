"""Ingest and verify on a dask.distributed LocalCluster of worker processes (issue 17).

The same files give the same entry records and the same snapshot tree as a serial
ingest; a worker killed during the run has its tasks rerun and the commit is still
complete and fsck-clean; a bad file is reported and the rest commit."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

from hyperslab.cli import app
from hyperslab.convert.ingest import ingest
from hyperslab.convert.verify import verify
from hyperslab.errors import HyperslabError
from hyperslab.references.fsck import fsck
from hyperslab.references.refmap_files import write_refmap
from hyperslab.references.repository import Repository

distributed = pytest.importorskip("dask.distributed")

N_FILES = 52


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """52 small NeXus-like files (gzip chunks, attributes, a string) and one that is not HDF5."""
    d = tmp_path_factory.mktemp("many")
    rng = np.random.default_rng(17)
    out = []
    for i in range(N_FILES):
        p = d / f"scan_{i:04d}.h5"
        with h5py.File(p, "w") as f:
            e = f.create_group("entry")
            e.attrs["NX_class"] = "NXentry"
            e["title"] = f"scan {i}"
            e.create_dataset(
                "data/data",
                data=rng.integers(0, 1000, size=(4, 32, 32), dtype="<u4"),
                chunks=(1, 32, 32),
                compression="gzip",
            )
            e["sample/temperature"] = 100.0 + i
        out.append(str(p))
    bad = d / "scan_bad.h5"
    bad.write_text("not an HDF5 file\n")
    out.append(str(bad))
    return out


def _tree(result: Any) -> str:
    return str(result.commit.snapshot.tree)


def test_dask_ingest_gives_the_serial_tree(
    files: list[str], dask_client: Any, tmp_path: Path
) -> None:
    serial = ingest(Repository.init(str(tmp_path / "serial")), files, name="run")
    on_cluster = ingest(
        Repository.init(str(tmp_path / "dask")), files, name="run", client=dask_client
    )
    assert _tree(on_cluster) == _tree(serial)
    assert [e["entry"] for e in on_cluster.entries] == [e["entry"] for e in serial.entries]
    assert len(on_cluster.entries) == N_FILES
    assert [(f, e.code) for f, e in on_cluster.failed] == [(files[-1], "not_hdf5")]
    # and the work ran on the workers, not here
    assert sum(dask_client.run(lambda: 1).values()) == 2


def test_a_worker_killed_mid_run_still_gives_a_complete_commit(
    files: list[str], dask_client: Any, tmp_path: Path
) -> None:
    serial = ingest(Repository.init(str(tmp_path / "serial")), files[:-1], name="run")
    pids = dask_client.run(os.getpid)
    killed: list[int] = []

    def kill_one(name: str, res: dict[str, Any] | HyperslabError) -> None:
        if not killed:  # at the first entry back: the others are queued, running or unfetched
            killed.append(next(iter(pids.values())))
            os.kill(killed[0], signal.SIGKILL)

    repo = Repository.init(str(tmp_path / "dask"))
    result = ingest(repo, files[:-1], name="run", client=dask_client, on_entry=kill_one)
    assert killed
    assert len(result.entries) == N_FILES and not result.failed
    assert _tree(result) == _tree(serial)
    report = fsck(repo)
    assert report.clean, report.problems
    dask_client.wait_for_workers(2, timeout=60)  # the nanny restarts it, for the next tests


def test_verify_on_the_cluster_reports_what_a_serial_verify_does(
    files: list[str], dask_client: Any, tmp_path: Path
) -> None:
    from hyperslab.convert.api import build_refmap

    refs = write_refmap(build_refmap(files[0]).refmap, tmp_path / "one.json")
    serial, parallel = verify(files[0], refs), verify(files[0], refs, client=dask_client)
    assert parallel.ok and parallel.counts == serial.counts
    assert [a.path for a in parallel.arrays] == [a.path for a in serial.arrays]
    # a map that does not reproduce the file fails the same way on the cluster
    doc = json.loads(refs.read_text())
    key = next(k for k in doc["refs"] if k.startswith("entry/data/data/0."))
    doc["refs"]["entry/data/data/1.0.0"], doc["refs"][key] = (
        doc["refs"][key],
        doc["refs"]["entry/data/data/1.0.0"],
    )
    refs.write_text(json.dumps(doc))
    bad = verify(files[0], refs, client=dask_client)
    assert not bad.ok
    assert [a.path for a in bad.arrays if not a.ok] == ["entry/data/data"]


def test_the_cli_takes_dask(files: list[str], tmp_path: Path) -> None:
    runner = CliRunner()
    repo = str(tmp_path / "repo")
    assert runner.invoke(app, ["init", repo]).exit_code == 0
    res = runner.invoke(
        app, ["ingest", *files[:3], "--repo", repo, "--name", "run", "--dask", "local:1", "--json"]
    )
    assert res.exit_code == 0, res.output
    assert [e["name"] for e in json.loads(res.stdout)["entries"]] == [
        "run/scan_0000",
        "run/scan_0001",
        "run/scan_0002",
    ]
    res = runner.invoke(app, ["ingest", files[0], "--repo", repo, "--dask", "local:x"])
    assert res.exit_code == 2 and "give a number of workers" in res.output
