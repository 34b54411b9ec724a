"""``hyperslab serve``: an entry read over HTTP by zarr and xarray equals h5py; the JSON
API; API keys (401, 403, filtered listings), refused paths, errors as JSON."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest

pytest.importorskip("starlette")
uvicorn = pytest.importorskip("uvicorn")

from starlette.testclient import TestClient  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from hyperslab.cli import app as cli  # noqa: E402
from hyperslab.serve.app import create_app  # noqa: E402
from hyperslab.serve.keys import KeyRing, hash_key  # noqa: E402
from tests.serve.conftest import ALICE, BOB, ENTRY, OTHER, Shared, auth, running  # noqa: E402


def _h5_arrays(path: Path) -> dict[str, np.ndarray]:
    found: dict[str, np.ndarray] = {}

    def visit(name: str, obj: object) -> None:
        if isinstance(obj, h5py.Dataset) and obj.dtype.kind in "iufb":
            found[name] = obj[()]

    with h5py.File(path) as f:
        f.visititems(visit)
    return found


# --------------------------------------------------------------------------- zarr over HTTP


@pytest.fixture(scope="module")
def server(shared: Shared) -> Iterator[str]:
    """A real server, anonymous reads allowed."""
    with running(create_app(shared.repo, allow_anonymous=True)) as url:
        yield url


def test_zarr_over_http_with_a_key_in_the_headers(shared: Shared) -> None:
    """What the README shows collaborators: fsspec's HTTP filesystem sends the key."""
    import zarr

    with running(create_app(shared.repo, keys=shared.keys)) as server:
        keyed = {"headers": auth(ALICE)}
        group = zarr.open_group(
            f"{server}/zarr/{ENTRY}", mode="r", zarr_format=2, storage_options=keyed
        )
        want = _h5_arrays(shared.files[ENTRY])["entry/data/data"]
        np.testing.assert_array_equal(group["entry/data/data"][...], want)
        with pytest.raises(Exception):  # noqa: B017 - fsspec's error for a 401
            zarr.open_group(f"{server}/zarr/{ENTRY}", mode="r", zarr_format=2)["entry/data/data"]
        with pytest.raises(Exception):  # noqa: B017 - and for a 403: another entry
            zarr.open_group(
                f"{server}/zarr/{OTHER}", mode="r", zarr_format=2, storage_options=keyed
            )["entry/data/data"]


def test_zarr_and_xarray_over_http_equal_h5py(shared: Shared, server: str) -> None:
    import xarray as xr
    import zarr

    url = f"{server}/zarr/{ENTRY}"
    expected = _h5_arrays(shared.files[ENTRY])
    assert "entry/data/data" in expected
    group = zarr.open_group(url, mode="r", zarr_format=2)
    for name, want in expected.items():
        got = group[name][...]
        assert got.dtype == want.dtype, name
        np.testing.assert_array_equal(got, want, err_msg=name)
    ds = xr.open_zarr(f"{url}/entry/data", consolidated=True, zarr_format=2)
    np.testing.assert_array_equal(ds["data"].values, expected["entry/data/data"])
    # a pinned snapshot id: the same bytes, cached for good
    sid = shared.repo.resolve("main")
    group = zarr.open_group(f"{server}/zarr/@{sid}/{ENTRY}", mode="r", zarr_format=2)
    np.testing.assert_array_equal(group["entry/data/data"][...], expected["entry/data/data"])


def test_zarr_responses_and_caching(shared: Shared, client: TestClient) -> None:
    h = auth(BOB)
    meta = client.get(f"/zarr/{ENTRY}/.zmetadata", headers=h)
    assert meta.status_code == 200
    assert "entry/data/data/.zarray" in meta.json()["metadata"]
    assert "no-cache" in meta.headers["cache-control"]
    sid = shared.repo.resolve("main")
    pinned = client.get(f"/zarr/{ENTRY}/.zmetadata?ref={sid}", headers=h)
    assert pinned.content == meta.content
    assert "immutable" in pinned.headers["cache-control"]
    etag = pinned.headers["etag"]
    again = client.get(f"/zarr/{ENTRY}/.zmetadata?ref={sid}", headers={**h, "If-None-Match": etag})
    assert again.status_code == 304
    chunk = client.get(f"/zarr/{ENTRY}/entry/data/data/0.0.0", headers=h)
    assert chunk.status_code == 200 and len(chunk.content) == 24 * 32 * 4
    absent = client.get(f"/zarr/{ENTRY}/entry/data/data/99.0.0", headers=h)
    assert absent.status_code == 404 and absent.json()["error"]["code"] == "not_found"
    tagged = client.get(f"/zarr/{ENTRY}/.zmetadata?ref=v1", headers=h)
    assert tagged.content == meta.content
    in_path = client.get(f"/zarr/@{sid}/{ENTRY}/.zmetadata", headers=h)
    assert in_path.content == meta.content and in_path.headers["etag"] == etag


# --------------------------------------------------------------------------- JSON API


def test_api(shared: Shared, client: TestClient) -> None:
    h = auth(BOB)
    sid = shared.repo.resolve("main")
    assert client.get("/api/branches", headers=h).json() == {"branches": {"main": sid}}
    assert client.get("/api/tags", headers=h).json()["tags"] == {"v1": sid}
    log = client.get("/api/log?ref=main&limit=1", headers=h).json()
    assert [s["id"] for s in log["snapshots"]] == [sid]
    page = client.get("/api/entries?limit=1", headers=h).json()
    assert page["total"] == 2 and [e["name"] for e in page["entries"]] == [ENTRY]
    page = client.get("/api/entries?limit=1&offset=1", headers=h).json()
    assert [e["name"] for e in page["entries"]] == [OTHER]
    rec = client.get(f"/api/entries/{ENTRY}?ref=v1", headers=h).json()
    assert rec["arrays"]["entry/data/data"]["shape"] == [4, 24, 32]
    assert rec["arrays"]["entry/data/data"]["dtype"] == "<u4"
    assert rec["catalog"]["name"] == ENTRY and rec["snapshot"] == sid
    hits = client.get("/api/search", params={"q": "name~run4*"}, headers=h).json()
    assert [x["entry"] for x in hits["hits"]] == [ENTRY, OTHER]


@pytest.mark.parametrize(
    ("url", "status", "code"),
    [
        ("/api/search?q=nokey%3D3", 400, "bad_query"),
        ("/api/search?q=energy%3Eabc", 400, "bad_query"),
        ("/api/search", 400, "bad_query"),
        ("/api/entries/run42/nope", 404, "not_found"),
        ("/zarr/run42/nope/.zmetadata", 404, "not_found"),
        ("/api/log?ref=mian", 404, "not_found"),
        ("/api/entries?limit=0", 400, "bad_input"),
        ("/api/entries?offset=x", 400, "bad_input"),
        ("/api/nothing", 404, "not_found"),
    ],
)
def test_errors_are_json(client: TestClient, url: str, status: int, code: str) -> None:
    res = client.get(url, headers=auth(BOB))
    assert res.status_code == status, res.text
    err = res.json()["error"]
    assert err["code"] == code and err["message"], err
    assert "Traceback" not in res.text


# --------------------------------------------------------------------------- access


@pytest.mark.parametrize(
    "url",
    [
        f"/zarr/{ENTRY}/.zmetadata",
        "/api/branches",
        "/api/tags",
        "/api/log",
        "/api/entries",
        f"/api/entries/{ENTRY}",
        "/api/search?q=name~*",
    ],
)
@pytest.mark.parametrize("header", [None, "Bearer wrong-key", f"Basic {ALICE}"])
def test_no_valid_key_is_401(client: TestClient, url: str, header: str | None) -> None:
    res = client.get(url, headers={"Authorization": header} if header else {})
    assert res.status_code == 401 and res.json()["error"]["code"] == "unauthorized"
    assert ALICE not in res.text


def test_a_key_reads_only_its_entries(client: TestClient) -> None:
    h = auth(ALICE)
    assert client.get(f"/zarr/{ENTRY}/.zmetadata", headers=h).status_code == 200
    for url in (
        f"/zarr/{OTHER}/.zmetadata",
        f"/zarr/{OTHER}/entry/data/data/0.0.0",
        f"/api/entries/{OTHER}",
        "/zarr/run43/missing/.zmetadata",  # refused alike whether or not it exists
    ):
        res = client.get(url, headers=h)
        assert res.status_code == 403, url
        assert res.json()["error"]["code"] == "forbidden"
    page = client.get("/api/entries", headers=h).json()
    assert [e["name"] for e in page["entries"]] == [ENTRY] and page["total"] == 1
    hits = client.get("/api/search", params={"q": "name~*"}, headers=h).json()
    assert [x["entry"] for x in hits["hits"]] == [ENTRY]


@pytest.mark.parametrize(
    "path",
    [
        "/zarr/%2e%2e/%2e%2e/etc/passwd",
        f"/zarr/{ENTRY}/%2e%2e/%2e%2e/keys.toml",
        "/zarr//etc/passwd",
        "/api/entries/%2e%2e/repo.json",
        f"/zarr/{ENTRY}/..%5c..%5crepo.json",
        "/zarr/run42%2f..%2f..%2frepo.json",
    ],
)
def test_path_traversal_is_refused(client: TestClient, path: str) -> None:
    res = client.get(path, headers=auth(BOB))
    assert res.status_code in (400, 404), (path, res.status_code)
    assert res.json()["error"]["code"] in ("bad_path", "not_found")


def test_anonymous_reads_when_allowed(shared: Shared) -> None:
    with TestClient(create_app(shared.repo, keys=shared.keys, allow_anonymous=True)) as c:
        assert c.get("/api/entries").json()["total"] == 2
        assert c.get("/api/branches", headers=auth("wrong")).status_code == 401


# --------------------------------------------------------------------------- the command

runner = CliRunner()


def test_hash_key_prints_a_keys_file_entry(tmp_path: Path) -> None:
    res = runner.invoke(cli, ["serve", "--hash-key"], input="my-secret\n")
    assert res.exit_code == 0, res.output
    assert hash_key("my-secret") in res.stdout and "my-secret" not in res.stdout
    (tmp_path / "k.toml").write_text(res.stdout.replace("NAME", "me"))
    assert KeyRing.load(tmp_path / "k.toml").grant("my-secret") is not None


@pytest.mark.parametrize(
    ("text", "fault"),
    [
        ("[[key]]\nname = 'a'\nhash = 'md5:00'\n", "hash must be"),
        ("[[key]]\nhash = 'sha256:" + "0" * 64 + "'\n", "needs a name"),
        ("[[key]]\nname = 'a'\nhash = 'sha256:" + "0" * 64 + "'\nentries = 'x'\n", "entries"),
        ("[other]\n", "unknown table"),
        ("", "no [[key]]"),
    ],
)
def test_bad_keys_files_are_named(tmp_path: Path, text: str, fault: str) -> None:
    from hyperslab.errors import ConfigError

    (tmp_path / "k.toml").write_text(text)
    with pytest.raises(ConfigError, match=fault.replace("[", r"\[")):
        KeyRing.load(tmp_path / "k.toml")


def test_search_pages_through_hits(client: Any) -> None:
    """``/api/search`` takes ``offset`` and ``limit`` like ``/api/entries``: pages of
    hits that together are every hit, in order."""
    whole = client.get("/api/search", params={"q": "arrays>0"}, headers=auth(BOB)).json()
    assert whole["total"] >= 2
    pages = [
        client.get(
            "/api/search",
            params={"q": "arrays>0", "offset": i, "limit": 1},
            headers=auth(BOB),
        ).json()
        for i in range(whole["total"] + 1)
    ]
    assert [p["offset"] for p in pages] == list(range(whole["total"] + 1))
    assert [h for p in pages for h in p["hits"]] == whole["hits"]
    assert pages[-1]["hits"] == [] and pages[-1]["total"] == whole["total"]
