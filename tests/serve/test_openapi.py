"""The OpenAPI document of ``hyperslab serve`` describes every route of the app (one
repository and several), validates as OpenAPI 3.1, and /api/docs renders it in headless
Chromium with nothing fetched from elsewhere."""

from __future__ import annotations

from typing import Any

import pytest

pytest.importorskip("starlette")

from starlette.routing import Route
from starlette.testclient import TestClient

from hyperslab.serve.app import create_app
from hyperslab.serve.openapi import openapi_document
from tests.serve.conftest import BOB, Shared, Two, auth, running


def _described(app: Any) -> set[tuple[str, str]]:
    """(path, method) of every route of ``app``, in OpenAPI's spelling."""
    out = set()
    for route in app.routes:
        assert isinstance(route, Route), route
        path = route.path.replace(":path}", "}")
        for method in route.methods or ():
            if method != "HEAD":  # Starlette answers HEAD for every GET route
                out.add((path, method.lower()))
    return out


@pytest.mark.parametrize("several", [False, True])
def test_every_route_is_described_and_the_document_validates(
    shared: Shared, two: Two, several: bool
) -> None:
    from openapi_spec_validator import validate

    app = create_app(two.repos if several else shared.repo, allow_anonymous=True)
    with TestClient(app) as c:
        res = c.get("/api/openapi.json")
        assert res.status_code == 200 and res.headers["content-type"] == "application/json"
        doc = res.json()
    assert doc == openapi_document(several)
    validate(doc)  # raises on an invalid OpenAPI 3.1 document
    assert doc["openapi"] == "3.1.0"
    documented = {(p, m) for p, item in doc["paths"].items() for m in item}
    assert documented == _described(app)
    for path, item in doc["paths"].items():
        for op in item.values():
            params = {p["name"] for p in op["parameters"] if p["in"] == "path"}
            assert params == {part[1:-1] for part in path.split("/") if part.startswith("{")}, path
            if path.startswith(("/api/", "/zarr/")) and op.get("security") != []:
                assert "401" in op["responses"], path  # every keyed endpoint says 401
    data = {
        op["operationId"]: p
        for p, item in doc["paths"].items()
        for op in item.values()
        if "data" in op["tags"]
    }
    assert set(data) == {
        "zarr",
        "branches",
        "tags",
        "log",
        "entries",
        "entry",
        "tree",
        "search",
        "slice",
        "download",
    }
    prefix = ("/api/{repo}/", "/zarr/{repo}/") if several else ("/api/", "/zarr/")
    assert all(p.startswith(prefix) for p in data.values())
    assert any("{repo}" in p for p in data.values()) is several


def test_the_document_needs_no_key_and_the_data_still_does(shared: Shared, two: Two) -> None:
    with TestClient(create_app(shared.repo, keys=two.keys)) as c:
        assert c.get("/api/openapi.json").status_code == 200
        page = c.get("/api/docs")
        assert page.status_code == 200 and "text/html" in page.headers["content-type"]
        assert "script-src 'self'" in page.headers["content-security-policy"]
        assert '<script src="../ui/docs.js"' in page.text
        assert c.get("/ui/docs.js").status_code == 200
        assert c.get("/api/entries").status_code == 401
        assert c.get("/api/entries", headers=auth(BOB)).status_code == 200


def test_the_docs_page_renders(shared: Shared) -> None:
    from tests.serve.test_ui import CHROMIUM, Page

    if not CHROMIUM.exists():
        pytest.skip(f"Debian's chromium is not installed ({CHROMIUM})")
    from playwright.sync_api import sync_playwright

    from tests.serve.test_ui import ARGS

    with running(create_app(shared.repo, allow_anonymous=True)) as server, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            ui = Page(browser, server)
            ui.page.goto(f"{server}/api/docs")
            ui.wait_js("() => document.getElementById('status').textContent.endsWith('operations')")
            doc = openapi_document(False)
            n = sum(len(item) for item in doc["paths"].values())
            assert ui.status() == f"{n} operations"
            for op in ("slice", "download", "log", "zarr"):
                text = ui.page.inner_text(f"#op-{op}")
                assert "401" in text and "ref" in text, text
            assert "cmap" in ui.page.inner_text("#op-slice")
            ui.only_this_server()
            ui.page.close()
        finally:
            browser.close()
