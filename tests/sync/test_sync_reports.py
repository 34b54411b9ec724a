"""Every report of a sync tells the same numbers and says what actually happened.

The plan, the result, ``--json``, ``fsck`` and ``replicate`` (text and JSON) are
compared with each other and with a listing of the destination directory: hot chunks
are packed into ``chunks/`` with their indexes in ``replicas/``, entry records, refmaps
and checksums into ``packs/``; sources a site lacks are named with the site that holds
them, not blamed on an ingest without ``--upload-sources``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from hyperslab.cli import app
from hyperslab.convert.ingest import ingest
from hyperslab.references.repository import Repository
from tests.sync.test_sync_protocol import _grow, _h5

runner = CliRunner()

HOT = """
[[rule]]
arrays = "entry/data/data"
frames = "-2:"
"""


def _cli(*args: str) -> tuple[int, str]:
    res = runner.invoke(app, [*args, "--quiet"], catch_exceptions=False)
    return res.exit_code, res.stdout


def _lines(text: str, head: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith(head)]


def _listing(root: Path, prefix: str, suffix: str = "") -> list[str]:
    """The objects under ``prefix`` of a directory repository (lock files aside)."""
    base = root / prefix
    if not base.exists():
        return []
    return sorted(
        str(p.relative_to(root))
        for p in base.rglob("*")
        if p.is_file() and p.name != ".hyperslab-lock" and p.name.endswith(suffix)
    )


@pytest.fixture
def sites(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Two configured directory sites, beamline and cloud; beamline:mx holds three
    entries with their sources uploaded (to site beamline only)."""
    (tmp_path / "hyperslab.toml").write_text(
        '[sites.beamline]\nurl = "beamline"\n[sites.cloud]\nurl = "cloud"\n'
    )
    monkeypatch.setenv("HYPERSLAB_CONFIG", str(tmp_path / "hyperslab.toml"))
    repo = Repository.init(str(tmp_path / "beamline" / "mx"))
    _grow(repo, tmp_path / "files", 0, 3)
    return tmp_path


def _count(line: str, what: str) -> int:
    m = re.search(rf"(\d+) {what}\b", line)
    assert m is not None, (what, line)
    return int(m.group(1))


def test_plan_result_json_fsck_and_the_bucket_agree_on_hot_chunks(
    sites: Path, tmp_path: Path
) -> None:
    rules = tmp_path / "hot.toml"
    rules.write_text(HOT)
    hot = ("--hot", str(rules))
    code, plan_text = _cli("sync", "beamline:mx", "cloud:mx", *hot, "--dry-run")
    assert code == 0
    code, out = _cli("sync", "beamline:mx", "cloud:mx", *hot, "--dry-run", "--json")
    plan = json.loads(out)["plan"]
    code, text = _cli("sync", "beamline:mx", "cloud:mx", *hot)
    assert code == 0
    dst = sites / "cloud" / "mx"
    chunk_packs = _listing(dst, "chunks/")
    indexes = [k for k in _listing(dst, "replicas/", ".parquet") if "/done/" not in k]
    object_packs = _listing(dst, "packs/")
    assert len(chunk_packs) == 3 and len(indexes) == 3 and len(object_packs) == 1
    # the same counts in a second sync of the same refs with --json (to a fresh site)
    code, out = _cli("sync", "beamline:mx", str(tmp_path / "other"), *hot, "--json")
    doc = json.loads(out)
    result = doc["result"]
    assert {k: v for k, v in plan.items() if k != "bytes"} == {
        k: v for k, v in result.items() if k != "bytes"
    }
    assert result["chunk_packs"] == len(chunk_packs) == doc["copied"]["chunk_pack"]
    assert result["replica_indexes"] == len(indexes) == doc["copied"]["replica_index"]
    assert result["object_packs"] == len(object_packs) == doc["packs"]["written"]
    assert result["hot_chunks"] == 6 == doc["hot"]["chunks"]
    assert result["packed_objects"] == 9  # 3 entry records, refmaps and checksums
    # the text of the plan (dry run and real) and of the result: the same numbers
    [to_copy] = _lines(plan_text, "to copy:")
    # the real sync prints the same plan (not sized: that costs a HEAD per object)
    assert [re.sub(r"; [\d,]+ bytes", "", to_copy)] == _lines(text, "to copy:")
    [copied] = _lines(text, "copied:")
    for line in (to_copy, copied):
        assert _count(line, "chunk packs?") == len(chunk_packs)
        assert _count(line, "replica index(?:es)?") == len(indexes)
        assert _count(line, "object packs?") == len(object_packs)
        assert _count(line, "hot chunks?") == 6
        assert _count(line, "entry") == 3
    assert "4 pack" not in to_copy and " pack," not in to_copy  # no unnamed "pack"
    # fsck counts what is there, in words that say which is which
    code, text = _cli("fsck", "cloud:mx")
    assert code == 0
    [text] = _lines(text, "clean:")
    assert "0 chunk objects" in text
    assert f"{len(chunk_packs)} chunk packs (holding 6 hot chunks)" in text
    assert f"{len(indexes)} replica indexes" in text and "1 object pack," in text
    code, out = _cli("fsck", "cloud:mx", "--json")
    checked = json.loads(out)["checked"]
    assert checked["chunk_packs"] == len(chunk_packs) and checked["hot_chunks"] == 6
    assert checked["replicas"] == len(indexes) and checked["packs"] == len(object_packs)
    assert checked["chunks"] + checked["chunk_packs"] == len(chunk_packs)  # all of chunks/


def test_sources_another_site_holds_are_named_with_that_site(sites: Path) -> None:
    code, _ = _cli("sync", "beamline:mx", "cloud:mx")  # references only
    assert code == 0 and not _listing(sites / "cloud" / "mx", "sources/")
    laptop = sites / "laptop"
    code, text = _cli("sync", "cloud:mx", str(laptop), "--sources")
    assert code == 0
    assert "--upload-sources" not in text  # they were uploaded: to beamline
    code, out = _cli("sync", "cloud:mx", str(sites / "laptop2"), "--sources", "--json")
    [note] = json.loads(out)["notes"]
    assert note["code"] == "sources_not_copied" and note["count"] == 3
    assert note["held_at"] == {"beamline": 3} and note["sites_checked"] == ["beamline"]
    assert note["absent_at"].startswith("cloud:mx")
    assert "site beamline holds them" in note["message"]
    assert _lines(text, "note:") == [f"note: {note['message']}"]
    assert not _listing(laptop, "sources/")


def test_sources_no_site_holds_say_so(sites: Path, tmp_path: Path) -> None:
    repo = Repository.open(str(sites / "beamline" / "mx"))
    ingest(repo, [str(_h5(tmp_path / "plain.h5", 99))], fail_fast=True)  # not uploaded
    code, out = _cli("sync", "beamline:mx", str(sites / "laptop"), "--sources", "--json")
    doc = json.loads(out)
    [note] = doc["notes"]
    assert code == 0 and doc["copied"]["source"] == 3 and note["count"] == 1
    assert note["held_at"] == {} and note["held_nowhere_checked"] == 1
    assert "no other configured site holds them (checked: cloud)" in note["message"]


def test_replicate_text_shows_the_json_notes_and_no_tick_for_skipped_sources(
    sites: Path,
) -> None:
    assert _cli("sync", "beamline:mx", "cloud:mx")[0] == 0
    rules = sites / "replication.toml"
    job = '[[job]]\nname = "laptop"\nfrom = "cloud:mx"\nto = "{}"\nsources = true\n'
    rules.write_text(job.format(sites / "laptop"))
    code, text = _cli("replicate", "--rules", str(rules))
    assert code == 0  # nothing failed: sources a site lacks are a note, as with sync
    assert "✓" not in text and text.startswith("⚠ laptop: branch main create")
    rules.write_text(job.format(sites / "laptop2"))
    code, out = _cli("replicate", "--rules", str(rules), "--json")
    [note] = json.loads(out)["jobs"][0]["report"]["notes"]
    assert code == 0 and _lines(text, "  note:") == [f"  note: {note['message']}"]
    copied = json.loads(out)["jobs"][0]["report"]["result"]
    [job_line] = _lines(text, "⚠ laptop:")
    assert f"{copied['object_packs']} object pack" in job_line
