"""``hyperslab upgrade``: a format 1 or 2 repository moves to format 3 in place, its
history untouched, and its next commit writes the new format."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from hyperslab.cli import app
from hyperslab.convert.ingest import ingest
from hyperslab.errors import ConflictError, FormatVersionError
from hyperslab.references.format import FORMAT_VERSION
from hyperslab.references.fsck import fsck
from hyperslab.references.repository import Repository
from hyperslab.references.search import search
from hyperslab.references.upgrade import upgrade
from hyperslab.samples import write_samples

GOLDEN = Path(__file__).parent / "golden"
runner = CliRunner()


@pytest.fixture(scope="module")
def samples(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    d = tmp_path_factory.mktemp("samples")
    write_samples(d, frames=4)
    return sorted(str(p) for p in d.glob("*.nxs"))


def _old_repository(tmp_path: Path, kind: str, samples: list[str]) -> Path:
    """A format 1 repository (golden v1.1, as an old hyperslab wrote it), or a format 2
    one with two commits and a branch and tag."""
    path = tmp_path / kind
    if kind == "v1.1":
        shutil.copytree(GOLDEN / "v1.1", path)
        return path
    repo = Repository.init(str(path), version=2)
    ingest(repo, samples[:1], name="run1/first")
    repo.create_tag("v1", "main")
    ingest(repo, samples[1:2], name="run1/second")
    repo.create_branch("dev", "v1")
    return path


def _objects(path: Path) -> dict[str, str]:
    """Every stored object but repo.json (and the file site's lock file), by its sha256."""
    return {
        str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(path.rglob("*"))
        if p.is_file() and p.name != "repo.json" and not p.name.startswith(".")
    }


def _history(repo: Repository) -> dict[str, object]:
    return {
        "branches": repo.branches(),
        "tags": repo.tags(),
        "logs": {b: [(s.id, s.message) for s in repo.log(b)] for b in repo.branches()},
        "entries": {b: sorted(n for n, _ in repo.entries(b)) for b in repo.branches()},
        "search": [n for n, _ in search(repo, "main", "name~*")],
    }


@pytest.mark.parametrize("kind", ["v1.1", "format2"])
def test_upgrade_keeps_history_and_the_next_commit_writes_format_3(
    tmp_path: Path, samples: list[str], kind: str
) -> None:
    path = _old_repository(tmp_path, kind, samples)
    before = Repository.open(str(path))
    old_version = before.format_version
    assert old_version < FORMAT_VERSION
    history, objects = _history(before), _objects(path)

    res = runner.invoke(app, ["upgrade", str(path)])
    assert res.exit_code == 0, res.output
    assert f"from repository format {old_version} to {FORMAT_VERSION}" in res.output

    info = json.loads((path / "repo.json").read_text())
    assert info["version"] == FORMAT_VERSION
    assert [(u["from"], u["to"]) for u in info["upgraded"]] == [(old_version, FORMAT_VERSION)]
    assert info["id"] == before.id  # the same repository
    assert _objects(path) == objects  # nothing stored was rewritten
    repo = Repository.open(str(path))
    assert repo.format_version == FORMAT_VERSION
    assert _history(repo) == history
    report = fsck(repo)
    assert report.clean and not report.warnings, (report.problems, report.warnings)

    # the next commit writes compressed tree nodes; old and new entries are found
    stored = set(objects)
    result = ingest(repo, samples[2:3], name="run2/third").commit
    assert result is not None and result.snapshot is not None
    written = [k for k in _objects(path) if k not in stored and k.startswith("manifests/")]
    assert written and all((path / k).read_bytes()[:1] == b"\x78" for k in written)
    names = [n for n, _ in search(repo, "main", "name~*")]
    assert names == sorted([*history["search"], "run2/third"])  # type: ignore[list-item]
    report = fsck(repo)
    assert report.clean and not report.warnings, (report.problems, report.warnings)

    # a second run does nothing
    again = runner.invoke(app, ["upgrade", str(path), "--json"])
    assert again.exit_code == 0, again.output
    doc = json.loads(again.output)
    assert doc["changed"] is False and doc["from"] == doc["to"] == FORMAT_VERSION
    assert json.loads((path / "repo.json").read_text()) == info


def test_dry_run_changes_nothing(tmp_path: Path, samples: list[str]) -> None:
    path = _old_repository(tmp_path, "format2", samples)
    raw = (path / "repo.json").read_bytes()
    res = runner.invoke(app, ["upgrade", str(path), "--dry-run"])
    assert res.exit_code == 0, res.output
    assert "would upgrade" in res.output
    res = runner.invoke(app, ["upgrade", str(path), "--dry-run", "--json"])
    doc = json.loads(res.output)
    assert doc["changed"] is False and doc["dry_run"] is True and doc["from"] == 2
    assert (path / "repo.json").read_bytes() == raw


def test_a_concurrent_change_of_repo_json_is_a_conflict(
    tmp_path: Path, samples: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _old_repository(tmp_path, "format2", samples)
    repo = Repository.open(str(path))
    raw, etag = repo.site.get_with_etag("repo.json")
    # another process rewrites repo.json between our read and our write
    monkeypatch.setattr(repo.site, "get_with_etag", lambda key: (raw, etag))
    repo.site.put_if_match("repo.json", raw.replace(b'"version": 2', b'"version":  2'), etag)
    changed = (path / "repo.json").read_bytes()
    with pytest.raises(ConflictError, match="changed while it was being upgraded"):
        upgrade(repo)
    assert (path / "repo.json").read_bytes() == changed
    monkeypatch.undo()
    assert upgrade(Repository.open(str(path))).changed  # the retry the message asks for


def test_an_older_hyperslab_refuses_the_upgraded_repository(
    tmp_path: Path, samples: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _old_repository(tmp_path, "format2", samples)
    upgrade(Repository.open(str(path)))
    monkeypatch.setattr("hyperslab.references.repository.FORMAT_VERSION", 2)
    with pytest.raises(FormatVersionError, match="reads up to 2"):
        Repository.open(str(path))
