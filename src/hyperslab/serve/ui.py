"""The browser UI of ``hyperslab serve``: plain HTML, JavaScript and CSS shipped in the
package (``hyperslab/serve/ui/``), served at ``/ui/`` (``/`` redirects there), with no
build step and nothing fetched from elsewhere.

The page reads the JSON API of the same server (:mod:`.app`) with ``fetch``: the
repositories the key may read (``/api/repositories``; a picker when there are several,
whose names then prefix the API's URLs), refs,
entries and search, an entry's tree (``/api/tree``), and of an array only what is on
screen: one 2-D frame as PNG (``/api/slice?format=png``, strided to at most
:data:`MAX_SIDE` pixels a side for larger frames), one row as JSON for the line profile,
and the slice a user downloads. An API key typed into the page is kept in the tab's
``sessionStorage`` and sent as ``Authorization: Bearer KEY``.

The files need no key (they hold no data); they are sent with a Content-Security-Policy
that allows scripts, styles and connections to this origin only.
"""

from __future__ import annotations

from importlib import resources

from hyperslab.errors import UnsupportedFeatureError

try:
    from starlette.requests import Request
    from starlette.responses import JSONResponse, RedirectResponse, Response
    from starlette.routing import Route
except ImportError as exc:  # pragma: no cover - the extra is installed in tests
    raise UnsupportedFeatureError(
        f"hyperslab serve needs starlette ({exc.name} is missing): pip install 'hyperslab[serve]'"
    ) from None

__all__ = ["FILES", "MAX_SIDE", "ui_routes"]

#: the UI's files and their media types; nothing else is served under /ui/
FILES = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
    "docs.html": "text/html; charset=utf-8",  # the API page, also at /api/docs
    "docs.js": "text/javascript; charset=utf-8",
}
#: the most pixels a side of a previewed frame has (the page's stride; mirrored in app.js)
MAX_SIDE = 2048
_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self' blob: data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


def _load() -> dict[str, bytes]:
    folder = resources.files("hyperslab.serve") / "ui"
    return {name: (folder / name).read_bytes() for name in FILES}


def ui_routes() -> list[Route]:
    """The routes of the UI: ``/`` (a redirect), ``/ui/`` and ``/ui/<file>``."""
    files = _load()

    async def page(request: Request) -> Response:
        name = request.path_params.get("name") or "index.html"
        if name not in files:
            return JSONResponse(
                {"error": {"code": "not_found", "message": f"no UI file {name!r}"}},
                status_code=404,
            )
        headers = {
            "Content-Security-Policy": _CSP,
            "X-Content-Type-Options": "nosniff",
            "Cache-Control": "no-cache",
        }
        return Response(files[name], media_type=FILES[name], headers=headers)

    async def home(request: Request) -> Response:
        return RedirectResponse("ui/", status_code=307)  # relative: works under a proxy prefix

    return [
        Route("/", home, methods=["GET", "HEAD"]),
        Route("/ui/", page, methods=["GET", "HEAD"]),
        Route("/ui/{name}", page, methods=["GET", "HEAD"]),
    ]
