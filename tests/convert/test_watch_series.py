"""hyperslab watch over folders of detector frames (issue 20, item 2): one entry a
folder, committed only once complete (N frames, an end marker, or quiet), never a
partial series under the N-frames or marker rules; a series that grows is committed
again with every frame; a restart reads nothing."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from hyperslab.access.array import open_array
from hyperslab.cli import app
from hyperslab.convert.watch import watch
from hyperslab.convert.watch_series import SeriesRule
from hyperslab.errors import BadInputError
from hyperslab.references.repository import Repository
from hyperslab.samples import write_frame_series

fabio = pytest.importorskip("fabio")
N = 5


@pytest.fixture(scope="module")
def frames(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    d = tmp_path_factory.mktemp("gen")
    write_frame_series(d, frames=N, shape=(40, 60))
    return sorted((d / "pilatus_cbf").glob("*.cbf"))


def _once(
    repo: Repository, d: Path, state: Path, rule: SeriesRule
) -> tuple[Any, list[dict[str, Any]]]:
    events: list[dict[str, Any]] = []
    summary = watch(
        repo, d, "run/{path}", settle=0, once=True, state=state, series=rule, emit=events.append
    )
    return summary, events


def _frames_of(repo: Path, entry: str) -> np.ndarray:
    return np.asarray(open_array(str(repo), entry, "entry/data/data", cache=False)[...])


def _truth(files: list[Path]) -> np.ndarray:
    return np.stack([fabio.open(str(f)).data for f in files])


def test_a_series_is_committed_once_it_has_n_frames(frames: list[Path], tmp_path: Path) -> None:
    repo = Repository.init(str(tmp_path / "repo"))
    scan = tmp_path / "in" / "scan_01"
    scan.mkdir(parents=True)
    rule = SeriesRule(frames=N)
    for k in range(1, N):  # frames arriving one by one: never a partial commit
        shutil.copy(frames[k - 1], scan)
        summary, events = _once(repo, tmp_path / "in", tmp_path / "state.json", rule)
        assert summary.committed == 0 and not summary.snapshots
        assert any(e.get("reason") == f"series incomplete: {k}/{N} frames" for e in events), events
    shutil.copy(frames[N - 1], scan)
    summary, _ = _once(repo, tmp_path / "in", tmp_path / "state.json", rule)
    assert summary.committed == 1 and len(summary.snapshots) == 1
    np.testing.assert_array_equal(_frames_of(tmp_path / "repo", "run/scan_01"), _truth(frames))
    summary, events = _once(repo, tmp_path / "in", tmp_path / "state.json", rule)  # a restart
    assert [e["event"] for e in events] == ["started", "stopped"] and not summary.snapshots


def test_a_series_waits_for_its_end_marker(frames: list[Path], tmp_path: Path) -> None:
    repo = Repository.init(str(tmp_path / "repo"))
    scan = tmp_path / "in"
    scan.mkdir()
    for f in frames:
        shutil.copy(f, scan)
    rule = SeriesRule(marker="scan.done")
    summary, events = _once(repo, scan, tmp_path / "s.json", rule)
    assert not summary.snapshots
    assert any("no scan.done yet (5 frames)" in str(e.get("reason")) for e in events), events
    (scan / "scan.done").write_text("")
    summary, _ = _once(repo, scan, tmp_path / "s.json", rule)
    assert summary.committed == 1
    # the watched directory itself is the series: named after it
    np.testing.assert_array_equal(_frames_of(tmp_path / "repo", "run/in"), _truth(frames))


def test_a_series_that_grows_is_committed_again_with_every_frame(
    frames: list[Path], tmp_path: Path
) -> None:
    repo = Repository.init(str(tmp_path / "repo"))
    scan = tmp_path / "in" / "scan_02"
    scan.mkdir(parents=True)
    for f in frames[:3]:
        shutil.copy(f, scan)
    summary, _ = _once(repo, tmp_path / "in", tmp_path / "s.json", SeriesRule())
    assert summary.committed == 1
    assert _frames_of(tmp_path / "repo", "run/scan_02").shape[0] == 3
    for f in frames[3:]:
        shutil.copy(f, scan)
    summary, events = _once(repo, tmp_path / "in", tmp_path / "s.json", SeriesRule())
    assert len(summary.snapshots) == 1
    assert [e["modified"] for e in events if e["event"] == "committed"] == [1]
    np.testing.assert_array_equal(_frames_of(tmp_path / "repo", "run/scan_02"), _truth(frames))


def test_a_quiet_rule_holds_a_series_that_is_still_arriving(
    frames: list[Path], tmp_path: Path
) -> None:
    repo = Repository.init(str(tmp_path / "repo"))
    scan = tmp_path / "in"
    scan.mkdir()
    shutil.copy(frames[0], scan)
    summary, events = _once(repo, scan, tmp_path / "s.json", SeriesRule(quiet=600))
    assert not summary.snapshots
    assert any(str(e.get("reason", "")).startswith("settling") for e in events), events


def test_bad_series_rules_are_named_errors(tmp_path: Path) -> None:
    with pytest.raises(BadInputError, match="--scan-frames"):
        SeriesRule(frames=0)
    with pytest.raises(BadInputError, match="--end-marker"):
        SeriesRule(marker="a/b")
    runner = CliRunner()
    assert runner.invoke(app, ["init", str(tmp_path / "repo")]).exit_code == 0
    (tmp_path / "in").mkdir()
    res = runner.invoke(
        app, ["watch", str(tmp_path / "in"), "-r", str(tmp_path / "repo"), "--scan-quiet", "-1"]
    )
    assert res.exit_code == 2 and "--scan-quiet" in res.output
