"""``hyperslab compress``: entries re-encoded into the repository, equal bit for bit.

Frame series (CBF, TIFF incl. big-endian) and HDF5 entries are ingested, compressed
with each codec (and with frames regrouped), and read back equal to fabio / tifffile /
h5py and to the snapshot before, which still reads the originals. A run stopped after
some packs (in process, and a real SIGKILL) resumes to the same entry record; a
damaged pack is caught by the reader's checksums and by fsck; the originals can be
deleted once compressed; bad options are named errors.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import fabio
import h5py
import numpy as np
import pytest
import tifffile
from typer.testing import CliRunner

from hyperslab.access.array import open_array
from hyperslab.access.dataset import open_dataset
from hyperslab.cli import app
from hyperslab.convert.compress import CompressOptions, compress
from hyperslab.errors import BadInputError, HyperslabError, NotFoundError
from hyperslab.references.fsck import fsck
from hyperslab.references.keys import JOB_PREFIX, logical_source_id
from hyperslab.references.repository import Repository
from hyperslab.samples import write_frame_series, write_samples

runner = CliRunner()
SHAPE = (41, 67)


def _cli(*args: str) -> Any:
    res = runner.invoke(app, [*args, "--json"])
    assert res.exit_code == 0, res.output
    return json.loads(res.output.strip().splitlines()[-1])


def _ingest(repo: Path, source: Path | str, name: str) -> None:
    if not repo.exists():
        assert runner.invoke(app, ["init", str(repo)]).exit_code == 0
    _cli("ingest", str(source), "-r", str(repo), "-n", name)


@pytest.fixture(scope="module")
def frames(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """CBF and TIFF series on disk, with what fabio and tifffile read from them."""
    root = tmp_path_factory.mktemp("frames")
    write_frame_series(root, frames=7, shape=SHAPE, tiff_compression=("zlib",))
    rng = np.random.default_rng(3)
    be = (rng.poisson(3, (6, *SHAPE)) * (rng.random((6, *SHAPE)) < 0.2)).astype(">u2")
    (root / "tiff_be").mkdir()
    for i, frame in enumerate(be):
        tifffile.imwrite(root / "tiff_be" / f"img_{i:03d}.tif", frame, byteorder=">")
    cbf = sorted((root / "pilatus_cbf").glob("*.cbf"))
    return {
        "root": root,
        "cbf": (root / "pilatus_cbf", np.stack([fabio.open(str(p)).data for p in cbf])),
        "tiff": (
            root / "pilatus_tiff",
            np.stack([tifffile.imread(p) for p in sorted((root / "pilatus_tiff").glob("*.tif"))]),
        ),
        "tiff_be": (root / "tiff_be", be),
    }


def _frames_equal(repo: Path, name: str, expect: np.ndarray, **pin: str) -> None:
    arr = open_array(str(repo), name, "entry/data/data", cache=False, **pin)
    got = arr[:]
    assert got.shape == expect.shape
    assert got.dtype.newbyteorder("=") == expect.dtype.newbyteorder("=")
    for i in range(expect.shape[0]):
        np.testing.assert_array_equal(got[i], expect[i])
    np.testing.assert_array_equal(arr[2:5, 3:30, 9:10], expect[2:5, 3:30, 9:10])


@pytest.mark.parametrize("codec", ["bitshuffle-lz4", "zstd", "blosc2"])
@pytest.mark.parametrize("series", ["cbf", "tiff", "tiff_be"])
@pytest.mark.parametrize("per_chunk", [None, 3])
def test_frames_compressed_equal_the_readers(
    tmp_path: Path, frames: dict[str, Any], series: str, codec: str, per_chunk: int | None
) -> None:
    repo = tmp_path / "repo"
    folder, expect = frames[series]
    _ingest(repo, folder, "run1/frames")
    r = Repository.open(str(repo))
    before = r.branch_head("main")[0]
    raw = r.entry(before, "run1/frames")
    args = ["compress", str(repo), "run1/*", "--codec", codec]
    if per_chunk:
        args += ["--frames-per-chunk", str(per_chunk)]
    doc = _cli(*args)
    assert doc["ok"] and doc["snapshot"] and len(doc["entries"]) == 1
    summary = doc["entries"][0]
    assert summary["stored_bytes"] < summary["raw_bytes"]
    assert summary["raw_bytes"] == expect.size * expect.dtype.itemsize
    _frames_equal(repo, "run1/frames", expect)
    _frames_equal(repo, "run1/frames", expect, snapshot=before)  # still the originals
    rec = Repository.open(str(repo)).entry(doc["snapshot"], "run1/frames")
    packs = {s["id"] for s in rec["sources"]}
    assert packs.isdisjoint({s["id"] for s in raw["sources"]})
    assert rec["compressed"]["codec"] == codec
    assert rec["compressed"]["originals"] == [
        {k: s[k] for k in ("id", "name", "size")} for s in raw["sources"]
    ]
    signal_ = rec["arrays"]["entry/data/data"]
    assert signal_["chunks"][0] == (per_chunk or 1)
    if per_chunk:  # whole frames, whatever the strips or tiles were
        assert signal_["chunks"][1:] == list(expect.shape[1:])
    # per-frame header coordinates and the dataset view survive
    ds = open_dataset(str(repo), "run1/frames")
    np.testing.assert_array_equal(ds["data"].values, expect)
    old = open_dataset(str(repo), "run1/frames", snapshot=before)
    for name in old.coords:
        np.testing.assert_array_equal(ds[name].values, old[name].values)


def _all_arrays_equal(repo: Path, name: str, a: str, b: str) -> int:
    rec = Repository.open(str(repo)).entry(a, name)
    n = 0
    for path in rec["arrays"]:
        x = open_array(str(repo), name, path, snapshot=a, cache=False)[...]
        y = open_array(str(repo), name, path, snapshot=b, cache=False)[...]
        n += 1
        if not isinstance(x, np.ndarray):
            assert x == y, path
            continue
        assert x.dtype == y.dtype and x.shape == y.shape, path
        if x.dtype.kind == "O":
            assert [repr(v) for v in x.ravel()] == [repr(v) for v in y.ravel()], path
        else:
            assert x.tobytes() == y.tobytes(), path
    return n


@pytest.mark.parametrize("codec", ["bitshuffle-lz4", "zstd"])
def test_hdf5_entries_equal_h5py(tmp_path: Path, codec: str) -> None:
    data = tmp_path / "data"
    write_samples(data, frames=12)
    repo = tmp_path / "repo"
    for f in ("scan_0001_gzip.nxs", "scan_0002_bslz4.nxs", "scan_0003_multi.nxs"):
        _ingest(repo, data / f, f"h5/{Path(f).stem}")
    r = Repository.open(str(repo))
    before = r.branch_head("main")[0]
    result = compress(
        r,
        ["h5/scan_0001_gzip", "h5/scan_0002_bslz4", "h5/scan_0003_multi"],
        options=CompressOptions(codec, frames_per_chunk=5),
    )
    after = result.commit.snapshot.id  # type: ignore[union-attr]
    for name in ("h5/scan_0001_gzip", "h5/scan_0002_bslz4", "h5/scan_0003_multi"):
        assert _all_arrays_equal(repo, name, before, after) > 10
        rec = r.entry(after, name)
        assert all(s["name"].endswith(".chunks") for s in rec["sources"])
    with h5py.File(data / "scan_0001_gzip.nxs") as f:
        np.testing.assert_array_equal(
            open_array(str(repo), "h5/scan_0001_gzip", "entry/data/data")[:],
            f["entry/data/data"][:],
        )


def test_already_compressed_is_left_alone_and_recompress_keeps_originals(
    tmp_path: Path, frames: dict[str, Any]
) -> None:
    repo = tmp_path / "repo"
    folder, expect = frames["cbf"]
    _ingest(repo, folder, "cbf")
    r = Repository.open(str(repo))
    first = compress(r, ["cbf"])
    again = compress(r, ["cbf"])
    assert again.commit is None and again.entries[0].get("unchanged")
    zstd = compress(r, ["cbf"], options=CompressOptions("zstd", level=9))
    rec = r.entry(zstd.commit.snapshot.id, "cbf")  # type: ignore[union-attr]
    assert (
        rec["compressed"]["from"]["entry"]
        == r.tree.get(
            r.snapshot(first.commit.snapshot.id).tree,
            "cbf",  # type: ignore[union-attr]
        )["id"]
    )
    assert {s["name"] for s in rec["compressed"]["originals"]} == {
        p.name for p in folder.glob("*.cbf")
    }
    _frames_equal(repo, "cbf", expect)
    # fsck: clean, and the raw frames are what only older snapshots read
    report = fsck(r)
    assert report.clean, report.problems
    assert {s["name"] for s in report.archivable} >= {p.name for p in folder.glob("*.cbf")}
    assert all(s["entries"] == ["cbf"] for s in report.archivable)


def _own_copy_ingested(tmp_path: Path, folder: Path, name: str) -> tuple[Path, Path]:
    """A copy of the series (the test deletes it) ingested into a new repository."""
    mine, repo = tmp_path / "frames", tmp_path / "repo"
    shutil.copytree(folder, mine)
    _ingest(repo, mine, name)
    return mine, repo


def test_originals_can_go_once_compressed(tmp_path: Path, frames: dict[str, Any]) -> None:
    folder, expect = frames["tiff"]
    mine, repo = _own_copy_ingested(tmp_path, folder, "t")
    before = Repository.open(str(repo)).branch_head("main")[0]
    _cli("compress", str(repo), "t")
    shutil.rmtree(mine)  # the operator archives the raw frames
    _frames_equal(repo, "t", expect)
    with pytest.raises(HyperslabError, match=r"frame_00000\.tif|no site|unavailable"):
        open_array(str(repo), "t", "entry/data/data", snapshot=before, cache=False)[0]


def test_resume_after_a_stop_gives_the_same_entry(tmp_path: Path, frames: dict[str, Any]) -> None:
    folder, expect = frames["cbf"]
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    for repo in (whole, cut):
        _ingest(repo, folder, "cbf")
    opts = CompressOptions("zstd", frames_per_chunk=2)
    ref = compress(Repository.open(str(whole)), ["cbf"], options=opts, pack_bytes=1)
    assert ref.packs == 4 and ref.resumed == 0

    class Stop(Exception):
        pass

    seen: list[int] = []

    def stop_after_two(task: Any) -> None:
        seen.append(task.number)
        if len(seen) == 2:
            raise Stop

    r = Repository.open(str(cut))
    head = r.branch_head("main")[0]
    with pytest.raises(Stop):
        compress(r, ["cbf"], options=opts, pack_bytes=1, on_pack=stop_after_two)
    assert r.branch_head("main")[0] == head  # nothing committed
    assert len(list(r.site.list(JOB_PREFIX))) == 2
    done = compress(r, ["cbf"], options=opts, pack_bytes=1)
    assert done.resumed == 2 and done.packs == 4
    assert list(r.site.list(JOB_PREFIX)) == []  # records go with the commit
    w = Repository.open(str(whole))
    assert r.tree.get(r.snapshot(done.commit.snapshot.id).tree, "cbf") == w.tree.get(  # type: ignore[union-attr]
        w.snapshot(ref.commit.snapshot.id).tree,
        "cbf",  # type: ignore[union-attr]
    )
    _frames_equal(cut, "cbf", expect)


def test_sigkill_then_rerun_resumes(tmp_path: Path) -> None:
    data = tmp_path / "data"
    write_frame_series(data, frames=300, shape=(24, 40), tiff_compression=())
    repo = tmp_path / "repo"
    _ingest(repo, data / "pilatus_cbf", "cbf")
    r = Repository.open(str(repo))
    head = r.branch_head("main")[0]
    cmd = [sys.executable, "-m", "hyperslab.cli", "compress", str(repo), "cbf", "--pack-size", "1"]
    log = tmp_path / "stderr.txt"
    with log.open("wb") as errors:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=errors)
    deadline = time.monotonic() + 120
    jobs = repo / "jobs"
    while time.monotonic() < deadline and proc.poll() is None:
        if jobs.exists() and sum(1 for _ in jobs.rglob("*.json")) >= 3:
            break
        time.sleep(0.002)
    assert proc.poll() is None, log.read_text()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert r.branch_head("main")[0] == head, "the run finished before it could be killed"
    records = sum(1 for _ in jobs.rglob("*.json"))
    assert 3 <= records < 300
    res = runner.invoke(app, ["compress", str(repo), "cbf", "--pack-size", "1", "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.output)
    assert doc["resumed"] >= records - 1 and doc["packs"] == 300  # the last may be cut
    assert not any(jobs.rglob("*.json"))
    frames = np.stack(
        [fabio.open(str(p)).data for p in sorted((data / "pilatus_cbf").glob("*.cbf"))]
    )
    _frames_equal(repo, "cbf", frames)
    assert fsck(r).clean


def test_damaged_pack_is_caught(tmp_path: Path, frames: dict[str, Any]) -> None:
    mine, repo = _own_copy_ingested(tmp_path, frames["cbf"][0], "cbf")
    doc = _cli("compress", str(repo), "cbf")
    shutil.rmtree(mine)  # no other copy to fall back on
    rec = Repository.open(str(repo)).entry(doc["snapshot"], "cbf")
    pack = repo / "sources" / rec["sources"][0]["id"] / rec["sources"][0]["name"]
    data = bytearray(pack.read_bytes())
    data[len(data) // 2] ^= 0xFF
    pack.write_bytes(bytes(data))
    with pytest.raises(HyperslabError, match=r"checksum|CRC|corrupt"):
        open_array(str(repo), "cbf", "entry/data/data", cache=False)[:]
    report = fsck(Repository.open(str(repo)))
    assert not report.clean
    assert any(p["kind"] == "source" and p["problem"] == "corrupt" for p in report.problems)


def test_on_a_dask_cluster_the_same_entry(
    tmp_path: Path, frames: dict[str, Any], dask_client: Any
) -> None:
    folder, expect = frames["tiff"]
    serial, spread = tmp_path / "serial", tmp_path / "spread"
    for repo in (serial, spread):
        _ingest(repo, folder, "t")
    a = compress(Repository.open(str(serial)), ["t"], pack_bytes=20_000)
    b = compress(Repository.open(str(spread)), ["t"], pack_bytes=20_000, client=dask_client)
    assert a.packs == b.packs > 1
    ra, rb = Repository.open(str(serial)), Repository.open(str(spread))
    assert ra.tree.get(ra.snapshot(a.commit.snapshot.id).tree, "t") == rb.tree.get(  # type: ignore[union-attr]
        rb.snapshot(b.commit.snapshot.id).tree,
        "t",  # type: ignore[union-attr]
    )
    _frames_equal(spread, "t", expect)


def test_abandoned_job_records_go_with_gc(tmp_path: Path, frames: dict[str, Any]) -> None:
    from datetime import UTC, datetime, timedelta

    from hyperslab.references.gc import gc

    folder, _ = frames["cbf"]
    repo = tmp_path / "repo"
    _ingest(repo, folder, "cbf")
    r = Repository.open(str(repo))

    def stop(task: Any) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        compress(r, ["cbf"], pack_bytes=1, on_pack=stop)
    left = list(r.site.list(JOB_PREFIX))
    assert len(left) == 1
    assert fsck(r).clean  # a job in progress is not damage
    report = gc(r, older_than=timedelta(days=1), now=datetime.now(UTC) + timedelta(days=2))
    assert set(left) <= set(report.deleted)
    pack = json.loads((repo / left[0]).read_bytes()) if (repo / left[0]).exists() else None
    assert pack is None
    assert any(k.endswith(".chunks") for k in report.deleted)  # its unreachable pack too


def test_bad_options_and_entries_are_named(tmp_path: Path, frames: dict[str, Any]) -> None:
    folder, _ = frames["cbf"]
    repo = tmp_path / "repo"
    _ingest(repo, folder, "cbf")
    r = Repository.open(str(repo))
    with pytest.raises(BadInputError, match="unknown codec 'gzip'"):
        compress(r, ["cbf"], options=CompressOptions("gzip"))
    with pytest.raises(BadInputError, match="1 to 22"):
        compress(r, ["cbf"], options=CompressOptions("zstd", level=40))
    with pytest.raises(BadInputError, match="has no level"):
        compress(r, ["cbf"], options=CompressOptions("bitshuffle-lz4", level=3))
    with pytest.raises(NotFoundError, match="did you mean 'cbf'"):
        compress(r, ["cbff"])
    for args, code in (
        (["--codec", "lzma"], "bad_input"),
        (["--level", "0", "--codec", "zstd"], "bad_input"),
        (["--pack-size", "many"], "config"),
    ):
        res = runner.invoke(app, ["compress", str(repo), "cbf", *args, "--json"])
        assert res.exit_code not in (0, 1), res.output
        assert json.loads(res.output)["error"]["code"] == code
    assert not list(r.site.list(JOB_PREFIX))


def test_ingest_compress_option(tmp_path: Path, frames: dict[str, Any]) -> None:
    folder, expect = frames["cbf"]
    repo = tmp_path / "repo"
    assert runner.invoke(app, ["init", str(repo)]).exit_code == 0
    doc = _cli("ingest", str(folder), "-r", str(repo), "-n", "c", "--compress", "zstd")
    assert doc["compressed"]["entries"][0]["codec"] == "zstd"
    r = Repository.open(str(repo))
    log = list(r.log("main"))
    assert [s.message.split()[0] for s in log[:2]] == ["compress", "ingest"]
    rec = r.entry(log[0].id, "c")
    assert all(logical_source_id(f"hyperslab-source:{s['id']}") for s in rec["sources"])
    _frames_equal(repo, "c", expect)
    res = runner.invoke(app, ["ingest", str(folder), "-r", str(repo), "--compress", "rar"])
    assert res.exit_code == 2 and "unknown codec" in res.output
    assert Repository.open(str(repo)).branch_head("main")[0] == log[0].id  # nothing moved


def test_blosc2_chunks_are_never_split_and_standard() -> None:
    """compress --codec blosc2 writes one LZ4 stream a 64 KiB block, not one a byte
    position: on sparse photon counts that is 10-35% fewer bytes than Blosc2's
    default, and any Blosc2 decoder still reads the chunk."""
    import imagecodecs

    codec = CompressOptions("blosc2").checked().compressor(np.dtype("<i4"))
    # a Pilatus 2M photon-counting frame: 0.05 counts a pixel, module gaps at -1
    frame = np.random.default_rng(5).poisson(0.05, (1679, 1475)).astype("<i4")
    frame[195::212, :] = -1
    frame[:, 487::494] = -1
    raw = frame.view(np.uint8).ravel()
    ours = codec.encode(raw)
    default = imagecodecs.blosc2_encode(raw.tobytes(), level=5, compressor=1, shuffle=2, typesize=4)
    assert imagecodecs.blosc2_decode(ours) == raw.tobytes() == bytes(codec.decode(ours))
    assert len(ours) < 0.9 * len(default)
