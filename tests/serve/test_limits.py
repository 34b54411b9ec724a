"""``hyperslab serve`` (issue 18): CORS for the origins given, none by default; at most
``max_requests`` requests at once, one more answered 503 ``busy`` with ``Retry-After``."""

from __future__ import annotations

import threading
import urllib.error
import urllib.request
from typing import Any

import pytest

pytest.importorskip("starlette")

from starlette.testclient import TestClient

from hyperslab.serve.app import create_app
from tests.serve.conftest import BOB, Shared, auth, running

OK, EVIL = "https://ok.example", "https://evil.example"


def _preflight(origin: str) -> dict[str, str]:
    return {
        "Origin": origin,
        "Access-Control-Request-Method": "GET",
        "Access-Control-Request-Headers": "authorization",
    }


def test_cors_for_the_allowed_origins_only(shared: Shared) -> None:
    with TestClient(create_app(shared.repo, keys=shared.keys, cors_origins=[OK])) as c:
        pre = c.options("/api/branches", headers=_preflight(OK))
        assert pre.status_code == 200
        assert pre.headers["access-control-allow-origin"] == OK
        assert "authorization" in pre.headers["access-control-allow-headers"].lower()
        assert "GET" in pre.headers["access-control-allow-methods"]
        got = c.get("/api/branches", headers={"Origin": OK, **auth(BOB)})
        assert got.status_code == 200
        assert got.headers["access-control-allow-origin"] == OK
        assert "etag" in got.headers["access-control-expose-headers"].lower()
        # another origin: no CORS headers, so a browser refuses the page the response
        pre = c.options("/api/branches", headers=_preflight(EVIL))
        assert "access-control-allow-origin" not in pre.headers
        got = c.get("/api/branches", headers={"Origin": EVIL, **auth(BOB)})
        assert got.status_code == 200
        assert "access-control-allow-origin" not in got.headers


def test_cors_any_origin_and_none_by_default(shared: Shared) -> None:
    with TestClient(create_app(shared.repo, allow_anonymous=True, cors_origins=["*"])) as c:
        got = c.get("/api/branches", headers={"Origin": EVIL})
        assert got.headers["access-control-allow-origin"] == "*"
    with TestClient(create_app(shared.repo, allow_anonymous=True)) as c:
        assert (
            "access-control-allow-origin"
            not in c.get("/api/branches", headers={"Origin": OK}).headers
        )
        pre = c.options("/api/branches", headers=_preflight(OK))
        assert "access-control-allow-origin" not in pre.headers


def _get(url: str) -> tuple[int, dict[str, str], bytes]:
    try:
        with urllib.request.urlopen(url, timeout=30) as r:
            return r.status, {k.lower(): v for k, v in r.headers.items()}, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, {k.lower(): v for k, v in exc.headers.items()}, exc.read()


def test_requests_beyond_the_limit_are_503_busy(
    shared: Shared, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One request is held in flight (its handler waits on an event); a second one is
    answered 503 at once instead of waiting; after the first ends, requests pass again."""
    entered, release = threading.Event(), threading.Event()
    real = shared.repo.branches

    def held() -> Any:
        entered.set()
        assert release.wait(30), "the test never released the held request"
        return real()

    monkeypatch.setattr(shared.repo, "branches", held)
    app = create_app(shared.repo, allow_anonymous=True, max_requests=1)
    with running(app) as server:
        first: list[tuple[int, dict[str, str], bytes]] = []
        thread = threading.Thread(target=lambda: first.append(_get(f"{server}/api/branches")))
        thread.start()
        try:
            assert entered.wait(30), "the first request never reached its handler"
            status, headers, body = _get(f"{server}/api/tags")
            assert status == 503
            assert headers["retry-after"] == "1"
            assert b'"code": "busy"' in body or b'"code":"busy"' in body
        finally:
            release.set()
            thread.join(timeout=30)
        assert first and first[0][0] == 200
        assert _get(f"{server}/api/tags")[0] == 200  # the slot is free again


def test_max_requests_must_be_positive(shared: Shared) -> None:
    with pytest.raises(ValueError, match="max_requests"):
        create_app(shared.repo, allow_anonymous=True, max_requests=0)


def test_serve_passes_cors_and_the_limit_to_the_app(
    shared: Shared, monkeypatch: pytest.MonkeyPatch
) -> None:
    uvicorn = pytest.importorskip("uvicorn")
    from typer.testing import CliRunner

    from hyperslab.cli import app as cli

    apps: list[Any] = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: apps.append(app))
    args = ["serve", shared.repo.display, "--allow-anonymous", "--port", "0"]
    args += ["--cors-origin", OK, "--cors-origin", EVIL, "--max-requests", "3"]
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 0, res.output
    (app,) = apps
    limits = [m.kwargs for m in app.user_middleware if m.kwargs.get("limit") is not None]
    assert limits == [{"limit": 3}]
    with TestClient(app) as c:
        for origin in (OK, EVIL):
            got = c.get("/api/branches", headers={"Origin": origin})
            assert got.headers["access-control-allow-origin"] == origin
    res = CliRunner().invoke(cli, [*args[:5], "--max-requests", "0"])
    assert res.exit_code != 0
