"""``hyperslab replicate`` job mode and the ``hyperslab sync`` command line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from hyperslab.cli import app
from hyperslab.errors import ConfigError
from hyperslab.references.repository import Repository
from hyperslab.sync.replicate import ReplicationRules
from tests.sync.test_sync_protocol import _grow

runner = CliRunner()


def _cli(*args: str) -> tuple[int, str]:
    res = runner.invoke(app, list(args), catch_exceptions=False)
    return res.exit_code, res.stdout


@pytest.fixture
def beamline(tmp_path: Path) -> Path:
    repo = Repository.init(str(tmp_path / "beamline"))
    _grow(repo, tmp_path / "files", 0, 2)
    repo.create_tag("paper-2026", "main")
    _grow(repo, tmp_path / "files", 10, 1)
    return tmp_path / "beamline"


def test_replicate_runs_every_job_and_reports_failures(beamline: Path, tmp_path: Path) -> None:
    rules = tmp_path / "replication.toml"
    rules.write_text(
        f"""
[[job]]
name = "cloud keeps main with hot frames"
from = "{beamline}"
to = "{tmp_path / "cloud"}"
tags = true
[job.hot_rules]
[[job.hot_rules.rule]]
arrays = "entry/data/data"
frames = "-2:"

[[job]]
name = "broken"
from = "{tmp_path / "nowhere"}"
to = "{tmp_path / "x"}"

[[job]]
name = "laptop keeps the paper"
from = "{tmp_path / "cloud"}"
to = "{tmp_path / "laptop"}"
branches = []
tags = ["paper-2026"]
"""
    )
    code, out = _cli("replicate", "--rules", str(rules), "--json")
    doc = json.loads(out)
    assert code == 3 and not doc["ok"]  # the broken job: not a repository (not found)
    ok = {j["name"]: j["ok"] for j in doc["jobs"]}
    assert ok == {
        "cloud keeps main with hot frames": True,
        "broken": False,
        "laptop keeps the paper": True,
    }
    cloud = doc["jobs"][0]["report"]
    assert cloud["hot"]["chunks"] == 6 and cloud["copied"]["chunk_pack"] == 3
    laptop = Repository.open(str(tmp_path / "laptop"))
    assert laptop.branches() == {} and laptop.tags() == Repository.open(str(beamline)).tags()
    code, out = _cli("replicate", "--rules", str(rules), "--json")
    again = json.loads(out)["jobs"]
    assert again[0]["report"]["bytes_copied"] == 0 and again[2]["report"]["bytes_copied"] == 0


@pytest.mark.parametrize(
    "text",
    [
        "",
        "[[job]]\nfrom = 'a'",
        "[[job]]\nfrom = 'a'\nto = 'b'\nbranch = ['main']",
        "[[job]]\nfrom = 'a'\nto = 'b'\ntags = 'x'",
        "interval = -1\n[[job]]\nfrom = 'a'\nto = 'b'",
    ],
)
def test_bad_replication_rules_are_config_errors(tmp_path: Path, text: str) -> None:
    p = tmp_path / "r.toml"
    p.write_text(text)
    with pytest.raises(ConfigError):
        ReplicationRules.load(p)
    code, out = _cli("replicate", "--rules", str(p), "--json")
    assert code == 2 and json.loads(out)["error"]["code"] == "config"


def test_sync_cli_dry_run_then_sync_then_conflict(beamline: Path, tmp_path: Path) -> None:
    dst = tmp_path / "copy"
    code, out = _cli("sync", str(beamline), str(dst), "--dry-run", "--json")
    plan = json.loads(out)
    assert code == 0 and plan["dry_run"] and plan["planned"]["entry"] == 3 and not dst.exists()
    assert plan["planned_bytes"] > 0
    code, out = _cli("sync", str(beamline), str(dst), "--sources", "--tags", "--json")
    assert code == 0 and json.loads(out)["copied"]["source"] == 3
    _grow(Repository.open(str(dst)), tmp_path / "more", 50, 1)
    _grow(Repository.open(str(beamline)), tmp_path / "more", 60, 1)
    code, out = _cli("sync", str(beamline), str(dst), "--json")
    assert code == 5 and json.loads(out)["error"]["code"] == "diverged"
    code, _ = _cli("sync", str(beamline), str(dst), "--all-branches", "--branch", "main")
    assert code == 2
    for bad in ("-5M", "-100", "fast"):
        code, out = _cli("sync", str(beamline), str(tmp_path / "c2"), "--bwlimit", bad, "--json")
        assert code == 2 and json.loads(out)["error"]["code"] in ("bad_input", "config"), bad
    assert not (tmp_path / "c2").exists()


def test_the_shipped_examples_parse() -> None:
    from hyperslab.sync import HotRules

    root = Path(__file__).resolve().parents[2]
    spec = ReplicationRules.load(root / "infra" / "replication.example.toml")
    assert [j.tags for j in spec.jobs] == [True, ("paper-2026",)]
    assert spec.jobs[0].hot is not None and spec.jobs[0].hot.used
    assert HotRules.load(root / "examples" / "hot.toml").rules[0].frames == "-5:"


def test_watch_rounds_reuse_open_repositories_and_still_see_new_commits(
    beamline: Path, tmp_path: Path
) -> None:
    from hyperslab.sync.replicate import OpenRepositories, run_round

    rules = ReplicationRules.from_dict(
        {"job": [{"from": str(beamline), "to": str(tmp_path / "cloud")}]}, "test rules"
    )
    opened = OpenRepositories()
    first = run_round(rules, opened=opened)
    assert first.ok and first.results[0].report is not None
    assert first.results[0].report.refs[0].status == "create"
    assert len(opened) == 1  # the destination did not exist: not kept until it does
    second = run_round(rules, opened=opened)
    assert second.ok and len(opened) == 2
    assert second.results[0].report is not None
    assert [u.status for u in second.results[0].report.refs] == ["up-to-date"]
    kept = opened.get(str(beamline)), opened.get(str(tmp_path / "cloud"), destination=True)
    # a commit at the source between rounds is seen: refs are read every round
    _grow(Repository.open(str(beamline)), tmp_path / "files", 20, 1)
    third = run_round(rules, opened=opened)
    assert third.results[0].report is not None
    assert [u.status for u in third.results[0].report.refs] == ["fast-forward"]
    assert (opened.get(str(beamline)), opened.get(str(tmp_path / "cloud"))) == kept
    assert (
        Repository.open(str(tmp_path / "cloud")).branches()
        == Repository.open(str(beamline)).branches()
    )
