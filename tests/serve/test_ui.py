"""The browser UI of ``hyperslab serve`` in headless Chromium (Debian's ``chromium``
driven by playwright) against a real server on loopback: it asks for a key, lists and
searches the entries a key may read, opens an entry, shows a frame (the PNG the
documented scaling gives h5py's values), moves the frame slider, draws a row profile and
downloads a slice in every format, each file equal to h5py's values. Screenshots go to
``$HYPERSLAB_UI_ARTIFACTS`` if set, else a pytest temporary folder; the test prints it.

Why playwright and not selenium: it drives the browser over the DevTools protocol with
no chromedriver whose version must match, sees every request the page makes (the frame
slider's new PNG request, nothing fetched from elsewhere) and the response bodies, and
catches downloads the page makes from blobs."""

from __future__ import annotations

import csv
import io
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import h5py
import numpy as np
import pytest

pytest.importorskip("starlette")

from hyperslab.serve.app import create_app
from hyperslab.serve.slices import colormap, png_scale
from hyperslab.serve.ui import FILES
from tests.serve.conftest import ALICE, BETA_ENTRY, ENTRY, OTHER, Shared, Two, running

CHROMIUM = Path("/usr/bin/chromium")
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-dev-shm-usage",  # containers' /dev/shm is often too small for it
]
DATA = "entry/data/data"
TIMEOUT_MS = 30_000


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        pytest.skip(f"Debian's chromium is not installed ({CHROMIUM}): apt-get install chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    given = os.environ.get("HYPERSLAB_UI_ARTIFACTS")
    folder = Path(given) if given else tmp_path_factory.mktemp("ui-screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    print(f"\nUI screenshots: {folder}")
    return folder


@pytest.fixture(scope="module")
def frames(shared: Shared) -> np.ndarray:
    with h5py.File(shared.files[ENTRY]) as f:
        return np.asarray(f[DATA][()])


class Page:
    """A page of the UI with every request it sends recorded."""

    def __init__(self, browser: Any, url: str) -> None:
        self.url = url
        self.page = browser.new_page(accept_downloads=True, viewport={"width": 1400, "height": 900})
        self.page.set_default_timeout(TIMEOUT_MS)
        self.requests: list[str] = []
        self.page.on("request", lambda r: self.requests.append(r.url))

    def frame_requests(self) -> list[dict[str, list[str]]]:
        """The queries of the PNG frame requests sent, in order."""
        return [
            parse_qs(urlsplit(u).query)
            for u in self.requests
            if "/api/slice/" in u and "format=png" in u
        ]

    def shown(self) -> np.ndarray:
        """The RGB pixels of the frame image as the page decoded it (drawn on a canvas)."""
        width, height, rgba = self.page.eval_on_selector(
            "#frame",
            "i => { const c = document.createElement('canvas');"
            " c.width = i.naturalWidth; c.height = i.naturalHeight;"
            " const x = c.getContext('2d'); x.drawImage(i, 0, 0);"
            " return [c.width, c.height, Array.from(x.getImageData(0, 0, c.width, c.height).data)]; }",
        )
        return np.asarray(rgba, dtype=np.uint8).reshape(height, width, 4)[..., :3]

    def wait_js(self, expression: str, arg: Any = None) -> None:
        self.page.wait_for_function(expression, arg=arg)

    def frame_shown(self, sel: str, **params: str) -> None:
        """Wait until the frame image is the one for ``sel`` (and ``params``), loaded."""
        self.wait_js(
            "([sel, params]) => { const i = document.getElementById('frame');"
            " const q = new URLSearchParams(i.dataset.query || '');"
            " return i.dataset.sel === sel && i.complete && i.naturalWidth > 0"
            " && Object.entries(params).every(([k, v]) => q.get(k) === v); }",
            [sel, params],
        )

    def status(self) -> str:
        return str(self.page.inner_text("#status"))

    def only_this_server(self) -> None:
        """Nothing was fetched from anywhere but the server (and the page's own blobs)."""
        others = [u for u in self.requests if not u.startswith((self.url, "blob:", "data:"))]
        assert not others, others


def _download(page: Any, click: str) -> bytes:
    with page.expect_download() as info:
        page.click(click)
    return Path(info.value.path()).read_bytes()


def _decode(fmt: str, body: bytes, dtype: np.dtype[Any], shape: tuple[int, ...]) -> np.ndarray:
    if fmt == "npy":
        return np.load(io.BytesIO(body), allow_pickle=False)
    if fmt == "raw":
        return np.frombuffer(body, dtype=dtype).reshape(shape)
    if fmt == "json":
        doc = json.loads(body)
        assert doc["dtype"] == dtype.str
        return np.asarray(doc["data"], dtype=dtype)
    if fmt == "csv":
        rows = list(csv.reader(io.StringIO(body.decode())))
        return np.asarray(rows, dtype=np.float64).astype(dtype)
    if fmt == "tiff":
        import tifffile

        return np.asarray(tifffile.imread(io.BytesIO(body)))
    if fmt == "h5":
        with h5py.File(io.BytesIO(body)) as f:
            return np.asarray(f["data"][()])
    raise AssertionError(fmt)


def test_ui_with_keys(shared: Shared, browser: Any, shots: Path, frames: np.ndarray) -> None:
    import imagecodecs

    with running(create_app(shared.repo, keys=shared.keys)) as server:
        ui = Page(browser, server)
        page = ui.page
        page.goto(f"{server}/")
        assert page.url == f"{server}/ui/"
        ui.wait_js("() => document.getElementById('status').textContent.includes('API key')")
        assert "needs an API key" in ui.status()
        page.screenshot(path=str(shots / "1-no-key.png"))

        page.fill("#key", "not-a-key")
        page.click("#key-use")
        ui.wait_js("() => document.getElementById('status').textContent.includes('refused')")
        assert page.locator("#entries button").count() == 0

        # the key: kept in the tab's sessionStorage, sent as a bearer token
        page.fill("#key", ALICE)
        page.click("#key-use")
        page.wait_for_selector(f"#entries button[data-entry='{ENTRY}']")
        assert page.evaluate("sessionStorage.getItem('hyperslab-key')") == ALICE
        listed = page.eval_on_selector_all("#entries button", "bs => bs.map(b => b.dataset.entry)")
        assert listed == [ENTRY]  # alice's key reads run42/* only
        assert OTHER not in page.inner_text("#catalog")

        # search (the catalog's query language)
        page.fill("#query", "name~run4* energy>1")
        page.click("#search")
        ui.wait_js("() => document.getElementById('entries-info').textContent === '1 match'")
        page.fill("#query", "name~nothing*")
        page.click("#search")
        ui.wait_js("() => document.getElementById('entries-info').textContent === '0 matches'")
        page.fill("#query", "sample~lysozyme*")
        page.click("#search")
        page.wait_for_selector(f"#entries button[data-entry='{ENTRY}']")
        page.screenshot(path=str(shots / "2-search.png"))

        # open the entry: its tree, its NeXus signal previewed as frame 0
        page.click(f"#entries button[data-entry='{ENTRY}']")
        page.wait_for_selector(f"#tree button[data-path='{DATA}'].selected")
        tree = page.inner_text("#tree")
        assert "instrument/" in tree and "frame_number" in tree
        assert "shape\t4 × 24 × 32\ndtype\t<u4" in page.inner_text("#node-meta")
        ui.frame_shown("0,:,:")
        size = page.eval_on_selector("#frame", "i => [i.naturalWidth, i.naturalHeight]")
        assert size == [32, 24]
        level = png_scale(frames[0], None, None)  # the documented scaling of h5py's frame
        np.testing.assert_array_equal(ui.shown(), np.stack([level] * 3, axis=-1))
        assert [q["sel"] for q in ui.frame_requests()] == [["0,:,:"]]

        # the slider: another frame, another request, nothing else read
        before = page.get_attribute("#frame", "src")
        page.eval_on_selector(
            "#slider-0", "s => { s.value = 2; s.dispatchEvent(new Event('input')); }"
        )
        ui.frame_shown("2,:,:")
        assert page.get_attribute("#frame", "src") != before
        assert [q["sel"] for q in ui.frame_requests()] == [["0,:,:"], ["2,:,:"]]
        level = png_scale(frames[2], None, None)
        np.testing.assert_array_equal(ui.shown(), np.stack([level] * 3, axis=-1))

        # contrast: log scale, a colour map, percentile limits
        page.select_option("#scale", "log")
        page.select_option("#cmap", "hot")
        page.fill("#pmin", "5")
        page.dispatch_event("#pmin", "change")
        ui.frame_shown("2,:,:", cmap="hot", scale="log", pmin="5", pmax="99")
        want = colormap("hot")[png_scale(frames[2], None, None, scale="log", pmin=5.0)]
        np.testing.assert_array_equal(ui.shown(), want)
        page.select_option("#limits", "manual")
        page.fill("#vmin", "0")
        page.fill("#vmax", "500")
        page.dispatch_event("#vmax", "change")
        ui.frame_shown("2,:,:", cmap="hot", vmin="0", vmax="500")
        want = colormap("hot")[png_scale(frames[2], 0, 500, scale="log")]
        np.testing.assert_array_equal(ui.shown(), want)

        # the line profile of a row, from a json slice of that row only
        page.fill("#row", "5")
        page.dispatch_event("#row", "change")
        ui.wait_js("() => document.getElementById('profile').dataset.sel === '2,5,:'")
        row = frames[2, 5, :]
        info = page.inner_text("#profile-info")
        assert f"min {row.min()}" in info and f"max {row.max()}" in info, info
        inked = page.evaluate(
            "() => { const c = document.getElementById('profile');"
            " const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
            " let n = 0; for (let i = 0; i < d.length; i += 4) if (d[i + 2] > 100 && d[i] < 100) n++;"
            " return n; }"
        )
        assert inked > 50  # the blue line is drawn
        page.screenshot(path=str(shots / "3-page.png"))
        page.locator("#viewer").screenshot(path=str(shots / "3-frame-and-profile.png"))

        # downloads: every format of a 2-D slice equals h5py's values
        sel, index = "1,2:10,::2", np.s_[1, 2:10, ::2]
        want = frames[index]
        page.fill("#sel", sel)
        for fmt in ("npy", "raw", "json", "csv", "tiff", "png", "h5"):
            page.select_option("#format", fmt)
            body = _download(page, "#download-slice")
            if fmt == "png":
                got = imagecodecs.png_decode(body)
                np.testing.assert_array_equal(got, png_scale(want, None, None), err_msg=fmt)
                continue
            got = _decode(fmt, body, frames.dtype, want.shape)
            assert got.shape == want.shape, fmt
            np.testing.assert_array_equal(got, want, err_msg=fmt)
        assert "Downloaded" in ui.status()
        body = _download(page, ".entry-dl[data-format='h5']")
        with h5py.File(io.BytesIO(body)) as f:
            np.testing.assert_array_equal(f[DATA][()], frames)
        page.screenshot(path=str(shots / "4-downloaded.png"))

        # only the frames on screen were read: no request for the whole array
        slices = [u for u in ui.requests if "/api/slice/" in u]
        assert slices and all("sel=" in u for u in slices if f"{DATA}?" in u)
        ui.only_this_server()
        page.close()


def test_ui_anonymous(shared: Shared, browser: Any, shots: Path) -> None:
    with running(create_app(shared.repo, allow_anonymous=True)) as server:
        ui = Page(browser, server)
        page = ui.page
        page.goto(f"{server}/ui/")
        page.wait_for_selector(f"#entries button[data-entry='{OTHER}']")
        assert page.evaluate("sessionStorage.getItem('hyperslab-key')") is None
        assert "entries 1-2 of 2" in page.inner_text("#entries-info")
        page.click(f"#entries button[data-entry='{OTHER}']")
        ui.frame_shown("0,:,:")
        refs = page.eval_on_selector_all("#ref option", "os => os.map(o => o.value)")
        assert refs == ["main", "v1"]
        assert not page.is_visible("#repo")  # one repository: no picker
        page.select_option("#ref", "v1")
        ui.wait_js("() => document.getElementById('snapshot').options.length > 1")
        sid = shared.repo.resolve("v1")
        page.select_option("#snapshot", sid)
        ui.frame_shown("0,:,:", ref=sid)  # the pinned snapshot's frame
        assert sid[:12] in ui.status()
        assert page.get_attribute("#status", "class") != "error"
        page.screenshot(path=str(shots / "5-anonymous.png"))
        ui.only_this_server()
        page.close()


def test_ui_repository_picker(two: Two, browser: Any, shots: Path) -> None:
    """A server of several repositories: a picker, and each one's entries, tree and
    frames read under its name."""
    with h5py.File(two.beta_file) as f:
        frame = np.asarray(f[DATA][0])
    with running(create_app(two.repos, allow_anonymous=True)) as server:
        ui = Page(browser, server)
        page = ui.page
        page.goto(f"{server}/ui/")
        page.wait_for_selector(f"#entries button[data-entry='{ENTRY}']")
        assert page.is_visible("#repo")
        names = page.eval_on_selector_all("#repo option", "os => os.map(o => o.value)")
        assert names == ["alpha", "beta"]
        page.click(f"#entries button[data-entry='{ENTRY}']")
        ui.frame_shown("0,:,:")
        page.select_option("#repo", "beta")
        page.wait_for_selector(f"#entries button[data-entry='{BETA_ENTRY}']")
        listed = page.eval_on_selector_all("#entries button", "bs => bs.map(b => b.dataset.entry)")
        assert listed == [BETA_ENTRY]
        assert page.is_visible("#entry-hint")  # alpha's entry was closed
        page.click(f"#entries button[data-entry='{BETA_ENTRY}']")
        ui.frame_shown("0,:,:")
        np.testing.assert_array_equal(
            ui.shown(), np.stack([png_scale(frame, None, None)] * 3, axis=-1)
        )
        pngs = [u for u in ui.requests if "format=png" in u]
        assert pngs[-1].startswith(f"{server}/api/beta/slice/{BETA_ENTRY}/{DATA}?")
        assert any(u.startswith(f"{server}/api/alpha/slice/{ENTRY}/") for u in pngs)
        page.screenshot(path=str(shots / "6-repositories.png"))
        ui.only_this_server()
        page.close()


# --------------------------------------------------------------------------- the files


def test_ui_files_are_served_without_a_key(client: Any) -> None:
    """The page holds no data: a keyed server sends it to anyone, with a strict CSP."""
    res = client.get("/", follow_redirects=False)
    assert res.status_code == 307 and res.headers["location"] == "ui/"
    for name, media in FILES.items():
        res = client.get(f"/ui/{name}")
        assert res.status_code == 200 and res.headers["content-type"] == media
        assert "script-src 'self'" in res.headers["content-security-policy"]
    assert '<script src="app.js"' in client.get("/ui/").text
    for path in ("/ui/secret.txt", "/ui/%2e%2e/app.py", "/ui/..%2fapp.py", "/ui/ui.py"):
        res = client.get(path)
        assert res.status_code == 404, path
    assert client.get("/api/branches").status_code == 401  # the data still needs a key


def test_ui_fetches_nothing_from_elsewhere() -> None:
    """No CDN, no remote font or script: every URL in the files is relative."""
    from importlib import resources

    folder = resources.files("hyperslab.serve") / "ui"
    for name in FILES:
        text = (folder / name).read_text()
        assert not re.search(r"https?://|//[a-z0-9.-]+\.[a-z]{2,}/|@import|url\(", text), name
