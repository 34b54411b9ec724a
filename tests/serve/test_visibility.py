"""What a key limited to some entries learns from ``hyperslab serve``'s listings
(:mod:`hyperslab.serve.history`): the log keeps only snapshots that changed its entries
(messages withheld when they changed others too), branches and tags only its ``refs``,
errors no "did you mean" names; no response to it says anything of the other entries."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest

pytest.importorskip("starlette")

from starlette.testclient import TestClient

from hyperslab.convert.ingest import ingest
from hyperslab.references.repository import Repository
from hyperslab.samples import write_samples
from hyperslab.serve.app import create_app
from hyperslab.serve.history import changed_entries, quiet
from hyperslab.serve.keys import KeyRing, hash_key
from tests.serve.conftest import auth

ALICE, BOB, CAROL = "alice-0123456789", "bob-0123456789", "carol-0123456789"
MINE, THEIRS = "run42/scan_0001_gzip", "run43/scan_0002_bslz4"
SECRET = "run43"  # no response to alice or carol may hold this


@dataclass
class History:
    repo: Repository
    sids: list[str]  # oldest first: ingest mine, ingest theirs, both, remove theirs
    root: str  # the repository's first, empty snapshot


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> History:
    d = tmp_path_factory.mktemp("visibility")
    files = {p.stem: p for p in write_samples(d / "samples", frames=2, shape=(8, 8))}
    repo = Repository.init(str(d / "repo"))
    ingest(repo, [str(files["scan_0001_gzip"])], name=MINE, message=f"ingest {MINE}")
    ingest(repo, [str(files["scan_0002_bslz4"])], name=THEIRS, message=f"ingest {THEIRS}")
    snap = repo.snapshot(repo.resolve("main"))
    mine, theirs = repo.tree.get(snap.tree, MINE), repo.tree.get(snap.tree, THEIRS)
    assert mine is not None and theirs is not None
    repo.commit(
        {"run42/copy": mine, "run43/copy": theirs},
        message="copies of run42 and run43 for carol",
        author="dave",
    )
    repo.commit({"run43/copy": None}, message="run43/copy was a mistake", author="erin")
    repo.create_branch("run43-fix")
    repo.create_tag("run43-final", "main")
    repo.create_tag("v1", "main")
    sids = [s.id for s in repo.log("main")][::-1]
    assert len(sids) == 5
    return History(repo, sids[1:], sids[0])


@pytest.fixture(scope="module")
def client(history: History, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    keys = tmp_path_factory.mktemp("keys") / "keys.toml"
    keys.write_text(
        f'[[key]]\nname = "alice"\nhash = "{hash_key(ALICE)}"\nentries = ["run42/*"]\n'
        f'[[key]]\nname = "bob"\nhash = "{hash_key(BOB)}"\n'
        f'[[key]]\nname = "carol"\nhash = "{hash_key(CAROL)}"\nentries = ["run42/*"]\n'
        'refs = ["main", "v*"]\n'
    )
    with TestClient(create_app(history.repo, keys=KeyRing.load(keys))) as c:
        yield c


def _get(client: TestClient, url: str, key: str, status: int = 200) -> Any:
    res = client.get(url, headers=auth(key))
    assert res.status_code == status, (url, res.text)
    return res


def test_the_log_of_a_restricted_key(client: TestClient, history: History) -> None:
    first, _, both, _ = history.sids
    doc = _get(client, "/api/log", ALICE).json()
    assert doc["filtered"] is True and doc["complete"] is True
    assert [s["id"] for s in doc["snapshots"]] == [both, first]  # only what touched run42/*
    newest, oldest = doc["snapshots"]
    # changed run43/copy too: message and author withheld, changes counted for run42 only
    assert newest["withheld"] is True
    assert newest["message"] is None and newest["author"] is None
    assert newest["changes"] == {"added": 1, "added_names": ["run42/copy"]}
    # changed run42 only: the committer's message is about alice's entries
    assert oldest["withheld"] is False and oldest["message"] == f"ingest {MINE}"
    assert oldest["changes"] == {"added": 1, "added_names": [MINE]}
    assert "parents" not in newest and "entries" not in newest
    limited = _get(client, "/api/log?limit=1", ALICE).json()
    assert [s["id"] for s in limited["snapshots"]] == [both]
    # bob sees the log as it is
    full = _get(client, "/api/log", BOB).json()
    assert full["filtered"] is False
    assert [s["id"] for s in full["snapshots"]] == [*history.sids[::-1], history.root]
    assert full["snapshots"][0]["message"] == "run43/copy was a mistake"


def test_refs_of_a_restricted_key(client: TestClient, history: History) -> None:
    head = history.sids[-1]
    assert _get(client, "/api/branches", ALICE).json() == {"branches": {"main": head}}
    assert _get(client, "/api/tags", ALICE).json() == {"tags": {}}
    assert _get(client, "/api/tags", CAROL).json() == {"tags": {"v1": head}}  # refs = v*
    assert set(_get(client, "/api/branches", BOB).json()["branches"]) == {"main", "run43-fix"}
    # a hidden ref reads as an absent one; a snapshot id is always fine
    hidden = _get(client, "/api/entries?ref=run43-fix", ALICE, 404).json()["error"]
    absent = _get(client, "/api/entries?ref=nothing", ALICE, 404).json()["error"]
    assert hidden["message"].replace("run43-fix", "X") == absent["message"].replace("nothing", "X")
    _get(client, "/api/entries?ref=run43-final", ALICE, 404)
    _get(client, "/api/entries?ref=v1", ALICE, 404)
    _get(client, "/api/entries?ref=v1", CAROL)
    _get(client, "/api/entries?ref=main~1", ALICE)
    doc = _get(client, f"/api/entries?ref={history.sids[1]}", ALICE).json()
    assert [e["name"] for e in doc["entries"]] == [MINE]


LISTINGS = [
    "/api/repositories",
    "/api/branches",
    "/api/tags",
    "/api/log?limit=1000",
    "/api/log?ref=main~3",
    "/api/entries?limit=1000",
    "/api/search?q=name~*",
    "/api/search?q=run43",
    f"/api/entries/{MINE}",
    f"/api/tree/{MINE}",
    "/api/entries/run42/copy",
    # errors: no "did you mean" naming another entry, branch or tag
    "/api/entries/run42/scan_0002_bslz4",
    "/api/tree/run42/scan_0002_bslz4",
    "/api/download/run42/scan_0002_bslz4",
    "/zarr/run42/scan_0002_bslz4/.zmetadata",
    "/api/slice/run42/scan_0002_bslz4/entry/data/data",
    "/api/log?ref=run43-fi",
    "/api/log?ref=run43-fix",
    "/api/entries?ref=run43-final",
    "/api/entries?ref=run43-finals",
    "/api/search?q=nmae%3Drun43",
    f"/api/entries/{THEIRS}",
    "/zarr/run43/scan_0002_bslz4/.zmetadata",
]


@pytest.mark.parametrize("url", LISTINGS)
@pytest.mark.parametrize("key", [ALICE, CAROL])
def test_nothing_of_other_entries_leaks(client: TestClient, url: str, key: str) -> None:
    """Snapshot ids (content hashes, e.g. a branch's head) may show; names may not."""
    res = client.get(url, headers=auth(key))
    assert res.status_code in (200, 400, 403, 404), (url, res.status_code, res.text)
    body = res.text.replace(f"{SECRET}/scan_0002_bslz4", "ASKED")  # the name it asked for
    if "run43-f" in url or "?q=" in url:  # the ref or query it gave, echoed
        body = body.replace(unquote(url.rsplit("=", 1)[1]), "ASKED")
    assert SECRET not in body, (url, res.text)
    assert "did you mean" not in body and "dave" not in body and "erin" not in body


def test_bob_gets_the_hints(client: TestClient) -> None:
    """Unrestricted keys still get "did you mean" (only restricted ones lose them)."""
    res = _get(client, "/api/log?ref=run43-fi", BOB, 404)
    assert "run43-fix" in res.json()["error"]["message"]


def test_changed_entries_from_the_summary_or_a_diff(history: History) -> None:
    repo = history.repo
    want = [
        {MINE: "added"},
        {THEIRS: "added"},
        {"run42/copy": "added", "run43/copy": "added"},
        {"run43/copy": "removed"},
    ]
    assert [changed_entries(repo, repo.snapshot(s)) for s in history.sids] == want
    for sid, expected in zip(history.sids, want, strict=True):  # without the summary: a diff
        snap = repo.snapshot(sid)
        snap.changes.clear()
        assert changed_entries(repo, snap) == expected


def test_quiet_cuts_the_hints_only() -> None:
    assert quiet("no entry 'a' (did you mean 'run43/x', 'b'?)") == "no entry 'a'"
    assert quiet("'x' is not a branch (branches and tags: main, run43)") == "'x' is not a branch"
    assert quiet("selection part 'x' (of 3) is bad") == "selection part 'x' (of 3) is bad"


def test_keys_file_fields(tmp_path: Path) -> None:
    from hyperslab.errors import ConfigError

    path = tmp_path / "k.toml"
    h = hash_key("k")
    path.write_text(f'[[key]]\nname="a"\nhash="{h}"\nentries=["x/*"]\n')
    g = KeyRing.load(path).grant("k")
    assert g is not None and g.restricted and g.refs == ("main",) and g.repositories is None
    path.write_text(f'[[key]]\nname="a"\nhash="{h}"\nrepositories=["b*"]\nrefs=["v*"]\n')
    g = KeyRing.load(path).grant("k")
    assert g is not None and not g.restricted
    assert g.allows_repository("beam") and not g.allows_repository("other")
    assert g.allows_ref("v2") and not g.allows_ref("main")
    for bad in ("repositories='b'", "refs=[1]", "repos=['b']"):
        path.write_text(f'[[key]]\nname="a"\nhash="{h}"\n{bad}\n')
        with pytest.raises(ConfigError, match=r"repositories|refs"):
            KeyRing.load(path)
