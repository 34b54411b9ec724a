"""Several repositories behind one ``hyperslab serve``: URLs carry the name after /api
and /zarr, keys' ``repositories`` globs decide which a key may read (and list in
/api/repositories), one repository keeps the URLs without a name."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest

pytest.importorskip("starlette")

from starlette.testclient import TestClient
from typer.testing import CliRunner

from hyperslab.cli import app as cli
from hyperslab.cli.serve import parse_repositories
from hyperslab.errors import BadInputError
from hyperslab.references.repository import Repository
from hyperslab.serve.app import create_app, repository_name
from tests.serve.conftest import (
    ALICE,
    BETA_ENTRY,
    BOB,
    DAVE,
    ENTRY,
    OTHER,
    Shared,
    Two,
    auth,
    running,
)


@pytest.fixture(scope="module")
def multi(two: Two) -> Iterator[TestClient]:
    with TestClient(create_app(two.repos, keys=two.keys)) as c:
        yield c


def _json(client: TestClient, url: str, key: str, status: int = 200) -> Any:
    res = client.get(url, headers=auth(key))
    assert res.status_code == status, (url, res.text)
    return res.json()


def test_repositories_listed_per_key(multi: TestClient) -> None:
    doc = _json(multi, "/api/repositories", BOB)
    assert doc == {
        "prefixed": True,
        "repositories": [
            {"name": "alpha", "api": "api/alpha/", "zarr": "zarr/alpha/"},
            {"name": "beta", "api": "api/beta/", "zarr": "zarr/beta/"},
        ],
    }
    assert [r["name"] for r in _json(multi, "/api/repositories", DAVE)["repositories"]] == ["beta"]
    assert [r["name"] for r in _json(multi, "/api/repositories", ALICE)["repositories"]] == [
        "alpha"
    ]
    assert multi.get("/api/repositories").status_code == 401


def test_each_repository_under_its_name(multi: TestClient, two: Two, client: TestClient) -> None:
    alpha = _json(multi, "/api/alpha/entries", BOB)
    assert alpha == _json(client, "/api/entries", BOB)  # what the one-repository server says
    beta = _json(multi, "/api/beta/entries", BOB)
    assert [e["name"] for e in beta["entries"]] == [BETA_ENTRY]
    for path in ("branches", "tags", "log", "search?q=name~*", f"tree/{BETA_ENTRY}"):
        _json(multi, f"/api/beta/{path}", BOB)
    with h5py.File(two.beta_file) as f:
        want = f["entry/data/data"][1]
    res = multi.get(
        f"/api/beta/slice/{BETA_ENTRY}/entry/data/data",
        params={"sel": "1", "format": "json"},
        headers=auth(BOB),
    )
    np.testing.assert_array_equal(np.asarray(res.json()["data"], dtype=want.dtype), want)
    # the keys' repositories: dave reads beta only, alice alpha's run42/* only
    _json(multi, f"/api/beta/entries/{BETA_ENTRY}", DAVE)
    for url, key in (
        ("/api/alpha/entries", DAVE),
        ("/api/gamma/entries", DAVE),  # refused alike whether or not it is here
        (f"/zarr/alpha/{ENTRY}/.zmetadata", DAVE),
        ("/api/beta/entries", ALICE),
        (f"/api/alpha/entries/{OTHER}", ALICE),
    ):
        assert _json(multi, url, key, 403)["error"]["code"] == "forbidden", url
    assert _json(multi, "/api/alpha/entries", ALICE)["total"] == 1
    assert "gamma" in _json(multi, "/api/gamma/entries", BOB, 404)["error"]["message"]
    # without a name, a server of several says how its URLs are spelled
    err = _json(multi, "/api/entries", BOB, 404)["error"]
    assert "/api/repositories" in err["message"]


def test_zarr_of_each_repository_over_http(two: Two, shared: Shared) -> None:
    import zarr

    with running(create_app(two.repos, allow_anonymous=True)) as server:
        for name, entry, path in (
            ("alpha", ENTRY, shared.files[ENTRY]),
            ("beta", BETA_ENTRY, two.beta_file),
        ):
            with h5py.File(path) as f:
                want = f["entry/data/data"][()]
            group = zarr.open_group(f"{server}/zarr/{name}/{entry}", mode="r", zarr_format=2)
            np.testing.assert_array_equal(group["entry/data/data"][...], want)
            sid = two.repos[name].resolve("main")
            pinned = zarr.open_group(
                f"{server}/zarr/{name}/@{sid}/{entry}", mode="r", zarr_format=2
            )
            np.testing.assert_array_equal(pinned["entry/data/data"][...], want)


def test_one_repository_keeps_its_urls(shared: Shared) -> None:
    with TestClient(create_app({"only": shared.repo}, allow_anonymous=True)) as c:
        assert c.get("/api/repositories").json() == {
            "prefixed": False,
            "repositories": [{"name": "only", "api": "api/", "zarr": "zarr/"}],
        }
        assert c.get("/api/entries").json()["total"] == 2
        assert c.get(f"/zarr/{ENTRY}/.zmetadata").status_code == 200
        assert c.get("/api/only/entries").status_code == 404


def test_names(tmp_path: Path) -> None:
    assert repository_name("/data/beamline/") == "beamline"
    assert repository_name("s3://bucket/exp 7") == "exp_7"
    assert repository_name("site:repo") == "repo"
    assert parse_repositories(["a=./x", "s3://b/y", "./z/"]) == {
        "a": "./x",
        "y": "s3://b/y",
        "z": "./z/",
    }
    with pytest.raises(BadInputError, match="two repositories are named 'x'"):
        parse_repositories(["./x", "/elsewhere/x"])
    with pytest.raises(BadInputError, match="after '='"):
        parse_repositories(["a="])
    repo = Repository.init(str(tmp_path / "r"))
    for bad in ({}, {"a/b": repo}, {"-x": repo}, {"x" * 65: repo}):
        with pytest.raises(BadInputError):
            create_app(bad, allow_anonymous=True)


def test_the_command_refuses_two_of_one_name(tmp_path: Path) -> None:
    for name in ("a", "b"):
        Repository.init(str(tmp_path / name / "repo"))
    res = CliRunner().invoke(
        cli,
        ["serve", str(tmp_path / "a/repo"), str(tmp_path / "b/repo"), "--allow-anonymous"],
    )
    assert res.exit_code != 0 and "NAME=SPEC" in res.output, res.output
