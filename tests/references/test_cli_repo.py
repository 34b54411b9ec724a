"""The repository commands: --json documents, exit statuses, help that teaches."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from hyperslab.cli import app

runner = CliRunner()


def run(*args: str) -> tuple[int, Any]:
    res = runner.invoke(app, list(args), catch_exceptions=False)
    try:
        return res.exit_code, json.loads(res.stdout)
    except ValueError:
        return res.exit_code, res.stdout


def test_repository_workflow_json(tmp_path: Path, sample_dir: Path) -> None:
    repo = str(tmp_path / "repo")
    code, doc = run("init", repo, "--json")
    assert code == 0 and doc["branch"] == "main"
    code, doc = run("init", repo, "--json")
    assert code == 5 and doc["error"]["code"] == "repository_exists"
    code, doc = run("ingest", str(sample_dir), "--repo", repo, "--name", "run42", "--json")
    assert code == 0, doc
    snap = doc["commit"]["snapshot"]
    assert len(doc["commit"]["added"]) == 4
    code, doc = run("ingest", str(sample_dir), "--repo", repo, "--name", "run42", "--json")
    assert code == 0 and doc["commit"]["snapshot"] is None  # unchanged
    code, doc = run("log", repo, "--json")
    assert doc["snapshots"][0]["id"] == snap
    code, doc = run("show", repo, snap[:10], "run42/scan_0001_gzip", "--json")
    assert code == 0 and "entry/data/data" in doc["entries"][0]["arrays"]
    code, doc = run("tag", repo, "v1", "main", "-m", "paper", "--json")
    assert code == 0 and doc["snapshot"] == snap
    code, doc = run("tag", repo, "v1", "main~1", "--json")
    assert code == 5
    code, doc = run("branch", repo, "dev", "--from", "v1", "--json")
    assert code == 0
    code, doc = run("branch", repo, "--json")
    assert doc["branches"] == {"dev": snap, "main": snap}
    code, doc = run("diff", repo, "main~1", "main", "--json")
    assert {c["change"] for c in doc["changes"]} == {"added"} and len(doc["changes"]) == 4
    code, doc = run("search", repo, "sample~insulin energy<12.5", "--json")
    assert [h["entry"] for h in doc["hits"]] == ["run42/scan_0002_bslz4", "run42/scan_0003_multi"]
    code, doc = run("search", repo, "energy>", "--json")
    assert code == 2 and doc["error"]["code"] == "bad_query"
    code, doc = run("fsck", repo, "--json")
    assert code == 0 and doc["clean"] is True
    code, doc = run("gc", repo, "--older-than", "1h", "--json")
    assert code == 2  # below the minimum grace period without --force
    code, doc = run("gc", repo, "--dry-run", "--json")
    assert code == 0 and doc["deleted"] == 0


def test_errors_are_named(tmp_path: Path, sample_dir: Path) -> None:
    code, doc = run("log", str(tmp_path / "nothing"), "--json")
    assert code == 3 and doc["error"]["code"] == "not_a_repository"
    repo = str(tmp_path / "repo")
    run("init", repo)
    code, doc = run("show", repo, "nope", "--json")
    assert code == 3
    code, doc = run(
        "ingest",
        str(sample_dir / "scan_0001_gzip.nxs"),
        "--repo",
        repo,
        "--name",
        "../escape",
        "--json",
    )
    assert code == 2 and doc["error"]["code"] == "unsafe_name"
    bad = tmp_path / "bad.nxs"
    bad.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 100)  # truncated HDF5
    code, doc = run("ingest", str(bad), "--repo", repo, "--json")
    assert code == 2 and doc["error"]["code"] == "not_hdf5"
    code, doc = run("log", repo, "--json")
    assert len(doc["snapshots"]) == 1  # nothing committed
    code, doc = run("fsck", repo, "--json")
    assert code == 0
    # corrupt a reachable object: fsck exits 6
    snaps = sorted((tmp_path / "repo" / "snapshots").glob("*.json"))
    snaps[0].write_bytes(b"{}")
    code, doc = run("fsck", repo, "--json")
    assert code == 6 and doc["problems"]


def test_help_teaches() -> None:
    res = runner.invoke(app, ["search", "--help"])
    assert "title~" in res.stdout and "energy" in res.stdout
    res = runner.invoke(app, ["ingest", "--help"])
    assert "--upload-sources" in res.stdout and "Examples" in res.stdout


def test_init_reports_the_head_when_listings_lag(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Some servers (s3rver) list a new key late or never: init reads the branch it
    made directly, so it reports the head instead of failing after creating it."""
    from hyperslab.references.repository import Repository

    monkeypatch.setattr(Repository, "branches", lambda self: {})  # a listing that lags
    code, doc = run("init", str(tmp_path / "repo"), "--json")
    assert code == 0, doc
    assert doc["branch"] == "main" and len(doc["snapshot"]) == 64


def test_output_that_is_not_a_terminal_is_whole(tmp_path: Path, sample_dir: Path) -> None:
    """Piped into a file or a log, tables are not laid out at 80 columns: no cell is cut
    ('…') and no row wraps onto a second line. Run as a user's shell would (a pipe, no
    COLUMNS): the test runner's own COLUMNS would hide the difference."""
    repo = str(tmp_path / "repo")
    assert run("init", repo)[0] == 0
    assert run("ingest", str(sample_dir), "--repo", repo, "--name", "run42")[0] == 0
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}

    def piped(*args: str) -> str:
        cmd = [sys.executable, "-c", "from hyperslab.cli import main; main()", *args]
        res = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)
        return res.stdout

    text = piped("search", repo, "sample~insulin")
    rows = [line for line in text.splitlines() if line.startswith(" run42/")]
    assert [r.split()[0] for r in rows] == ["run42/scan_0002_bslz4", "run42/scan_0003_multi"]
    assert all("insulin crystal 7" in r and ":00.000+00:00" in r for r in rows), text
    assert "…" not in text
    text = piped("show", repo)
    assert "…" not in text.split("\n", 3)[-1]  # the table (the header may abbreviate)
