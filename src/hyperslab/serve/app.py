"""The ASGI application of ``hyperslab serve``: repositories shared over HTTP.

One repository: the URLs below. Several (``create_app({name: repo, ...})``): each URL
carries the repository's name after ``/api`` or ``/zarr`` (``/api/<name>/entries``,
``/zarr/<name>/<entry>/...``); a path segment rather than ``?repo=``, because zarr
clients append keys to the URL they are given, and the name then sits where the entry's
path begins, as a directory would. ``GET /api/repositories`` lists the repositories a
key may read, with the base of their URLs; an unprefixed data URL on a server of several
is 404 saying so.

* ``GET /zarr/<entry>/<zarr key>?ref=`` (or ``/zarr/@<ref>/<entry>/<zarr key>``: zarr
  clients append keys to the URL, so theirs carries the ref in the path) serves exactly what :class:`HyperslabStore`
  serves (v2 metadata, consolidated ``.zmetadata``, decoded chunks; 404 for an absent
  chunk, which zarr reads as the fill value), so that
  ``zarr.open_group("http://host:8000/zarr/run42/scan_0007", mode="r")`` and
  ``xr.open_zarr(...)`` read the entry through fsspec's HTTP filesystem. The entry is
  the longest prefix of the path that names an entry of the snapshot.
* ``GET /api/branches``, ``/api/tags``, ``/api/log``, ``/api/entries`` (paged),
  ``/api/entries/<entry>``, ``/api/tree/<entry>`` (its groups and arrays with shapes,
  dtypes, chunks, codecs and attributes: :mod:`.tree`) and ``/api/search?q=`` answer
  JSON (strict: non-finite floats are the strings ``"NaN"``, ``"Infinity"``).
* ``GET /api/slice/<entry>/<array>?sel=&format=&ref=`` sends part of one array (read
  with :class:`HyperslabArray` from the store the zarr endpoint uses) as npy, raw, json,
  csv, tiff, png or h5 (:mod:`.slices`: the selection syntax, the formats, PNG scaling
  with ``vmin``, ``vmax``, ``pmin``, ``pmax``, ``scale`` and ``cmap``); a selection of
  more than ``max_slice_bytes`` is 413.
* ``GET /api/download/<entry>?format=h5|nc&group=&sel=&ref=`` sends the whole entry, or
  the arrays and groups under ``group``, as one file (``Content-Disposition: attachment``):
  ``h5`` (default) holds every array under its path and every group with its attributes;
  ``nc`` is the group (default: the entry's NeXus NXdata group) as NetCDF-4, the xarray
  dataset of :func:`~hyperslab.access.dataset.dataset_from_store`, written with h5netcdf
  or netCDF4. ``sel``: for ``h5``, one selection applied to every array with at least as
  many dimensions as it names (``...`` not counted), the others whole; for ``nc``, a
  selection of the signal's dimensions applied by name with xarray's ``isel`` to every
  variable having them (:func:`nc_selection`). The values sent (counted before
  reading) are at most ``max_slice_bytes``, else 413.

* ``GET /`` (a redirect) and ``/ui/``: the browser UI (:mod:`.ui`), served without a key
  (it holds no data; its requests send the key the user types in).
* ``GET /api/openapi.json`` and ``/api/docs``: the OpenAPI 3.1 description of all of
  these and a page rendering it (:mod:`.openapi`), without a key.

At most ``max_requests`` requests are served at once: one more is answered at once with
503 (code ``busy``) and ``Retry-After``, never queued. CORS (none by default): the
origins in ``cors_origins`` (``*``: any) may GET and HEAD with an ``Authorization``
header from a browser and read the ``ETag`` (and the slice headers).

``ref`` (a branch, tag or snapshot id; default ``main``) is resolved once per request,
so a response is one snapshot's. A response for a snapshot id never changes: it carries
an ETag and ``Cache-Control: immutable``; one for a branch or tag is revalidated.

Access: API keys (:mod:`.keys`) as ``Authorization: Bearer <key>``; without a valid
key, and unless anonymous reads are allowed, every data endpoint answers 401; a key
limited by repository or entry globs gets 403 for any other (whether it exists or not).
A key limited to some entries is *restricted*: entries and search show it only its
entries, and the log, branches, tags and error messages nothing of the others
(:mod:`.history`). Errors are JSON ``{"error": {"code", "message"}}``, never a trace;
a storage site that is down (or no site that could deliver a chunk) is 503, its message
naming the site(s) tried and their errors, never the server's credentials.

Why Starlette: a small ASGI toolkit with no build step and few dependencies, enough for
a handful of routes that stream bytes and JSON; FastAPI would add pydantic and schema
machinery this API does not need, and aiohttp its own server model instead of ASGI
(uvicorn, gunicorn, any ASGI host).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import threading
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from hyperslab.access.array import HyperslabArray
from hyperslab.access.store import HyperslabStore, open_store
from hyperslab.errors import (
    AccessDeniedError,
    BadInputError,
    ConflictError,
    HyperslabError,
    NotFoundError,
    TransientError,
    UnsupportedFeatureError,
)
from hyperslab.reading.routing import ChunkUnavailableError
from hyperslab.references.repository import Repository
from hyperslab.serve.history import check_ref, quiet, visible_log, visible_refs
from hyperslab.serve.keys import ANONYMOUS, Grant, KeyRing
from hyperslab.serve.openapi import openapi_routes
from hyperslab.serve.slices import FORMATS, check_png, encode, h5_tree, parse_selection
from hyperslab.serve.tree import entry_tree, json_safe
from hyperslab.serve.ui import ui_routes

try:
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.exceptions import HTTPException
    from starlette.middleware import Middleware
    from starlette.middleware.cors import CORSMiddleware
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route
    from starlette.types import ASGIApp, Receive, Scope, Send
except ImportError as exc:  # pragma: no cover - the extra is installed in tests
    raise UnsupportedFeatureError(
        f"hyperslab serve needs starlette and uvicorn ({exc.name} is missing): "
        "pip install 'hyperslab[serve]'"
    ) from None

__all__ = ["REPO_NAME", "create_app", "nc_selection", "repository_name"]

log = logging.getLogger("hyperslab.serve")

#: entries per page of /api/entries (default and most), snapshots of /api/log, hits of search
PAGE = 100
MAX_PAGE = 1000
#: open stores kept (one per entry and snapshot)
STORES = 32
#: the most bytes a slice's selection may hold (``max_slice_bytes``)
MAX_SLICE_BYTES = 256 * 2**20
#: the most requests served at once (``max_requests``); more are 503
MAX_REQUESTS = 64
#: seconds a client told ``busy`` is asked to wait
RETRY_AFTER = 1
_IMMUTABLE = "max-age=31536000, immutable"


class _HttpError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)


def _status(exc: HyperslabError) -> int:
    if isinstance(exc, BadInputError):
        return 400
    if isinstance(exc, NotFoundError):
        return 404
    if isinstance(exc, ConflictError):
        return 409
    if isinstance(exc, TransientError | AccessDeniedError | ChunkUnavailableError):
        # a site this server reads is down, or refuses the server itself; or no site
        # could deliver a chunk (each one tried is named, with its error)
        return 503
    return 500


def _segments(path: str) -> list[str]:
    """The ``/``-separated parts of a (percent-decoded) request path; ``..``, ``.``, empty
    parts (an absolute or doubled path), backslashes and control characters are 400."""
    parts = path.split("/")
    for p in parts:
        if p in ("", ".", "..") or "\\" in p or any(ord(c) < 32 for c in p):
            raise _HttpError(400, "bad_path", f"path {path!r} is not a clean relative path")
    return parts


def _int(request: Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise _HttpError(400, "bad_input", f"{name} must be a whole number, not {raw!r}") from None
    if not low <= value <= high:
        raise _HttpError(400, "bad_input", f"{name} must be from {low} to {high}, not {value}")
    return value


#: what a repository's name on a server may be (one clean URL segment)
REPO_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


@dataclass(frozen=True)
class _Ctx:
    """One request's key and the repository it reads."""

    grant: Grant
    name: str
    repo: Repository


class _Server:
    """The state behind the routes: the repositories, the keys and the open stores."""

    def __init__(
        self,
        repos: dict[str, Repository],
        keys: KeyRing | None,
        allow_anonymous: bool,
        max_slice_bytes: int = MAX_SLICE_BYTES,
        sites: Mapping[str, Sequence[str]] | None = None,
    ) -> None:
        self.repos = repos
        self.sites = dict(sites or {})  # repository name → where to read its chunks
        self.prefixed = len(repos) > 1  # several: /api/<name>/..., /zarr/<name>/...
        self.keys = keys
        self.allow_anonymous = allow_anonymous
        self.max_slice_bytes = max_slice_bytes
        self.stores: OrderedDict[tuple[str, str, str], HyperslabStore] = OrderedDict()
        self.lock = threading.Lock()

    # ------------------------------------------------------------ access
    def grant(self, request: Request) -> Grant:
        header = request.headers.get("authorization")
        if header is None:
            if self.allow_anonymous:
                return ANONYMOUS
            raise _HttpError(401, "unauthorized", "an API key is needed: Authorization: Bearer KEY")
        scheme, _, key = header.partition(" ")
        grant = self.keys.grant(key.strip()) if self.keys and scheme.lower() == "bearer" else None
        if grant is None:
            raise _HttpError(401, "unauthorized", "the API key is not valid")
        request.state.grant = grant  # errors of a restricted key are quieted (_route)
        return grant

    def context(self, request: Request) -> _Ctx:
        """The request's key and repository (its name in the path when there are several):
        401 without a valid key, 403 for a repository the key may not read (named or not),
        404 for one it may but that is not here."""
        grant = self.grant(request)
        name = request.path_params["repo"] if self.prefixed else next(iter(self.repos))
        if not grant.allows_repository(name):
            raise _HttpError(
                403, "forbidden", f"key {grant.name!r} may not read repository {name!r}"
            )
        repo = self.repos.get(name)
        if repo is None:
            raise _HttpError(
                404, "not_found", f"no repository {name!r} on this server (see /api/repositories)"
            )
        return _Ctx(grant, name, repo)

    @staticmethod
    def check(ctx: _Ctx, entry: str) -> None:
        if not ctx.grant.allows(entry):
            raise _HttpError(
                403, "forbidden", f"key {ctx.grant.name!r} may not read entry {entry!r}"
            )

    # ------------------------------------------------------------ snapshots, entries
    def resolve(self, ctx: _Ctx, request: Request, ref: str | None = None) -> tuple[str, bool]:
        """``(snapshot id, immutable)`` of ``ref``, else the request's ``?ref=`` (or main);
        a ref the key may not see is reported as one that does not exist."""
        ref = ref or request.query_params.get("ref") or "main"
        check_ref(ref, ctx.grant)
        try:
            sid = ctx.repo.resolve(ref)
        except NotFoundError:
            if not ctx.grant.restricted:
                raise
            raise NotFoundError(
                f"{ref!r} is not a branch, tag or snapshot this key may read"
            ) from None
        return sid, ref == sid

    @staticmethod
    def has_entry(ctx: _Ctx, sid: str, name: str) -> bool:
        return ctx.repo.tree.get(ctx.repo.snapshot(sid).tree, name) is not None

    def record(self, ctx: _Ctx, sid: str, name: str) -> dict[str, Any]:
        """The entry record of ``name`` (an entry the key may read) in snapshot ``sid``."""
        if not self.has_entry(ctx, sid, name):
            raise NotFoundError(f"no entry {name!r} in snapshot {sid[:12]}")
        return ctx.repo.entry(sid, name)

    def store(self, ctx: _Ctx, sid: str, entry: str) -> HyperslabStore:
        key = (ctx.name, sid, entry)
        with self.lock:
            found = self.stores.get(key)
            if found is not None:
                self.stores.move_to_end(key)
                return found
        store = open_store(ctx.repo, entry, snapshot=sid, sites=self.sites.get(ctx.name) or None)
        with self.lock:
            self.stores[key] = store
            while len(self.stores) > STORES:
                self.stores.popitem(last=False)[1].close()
        return store

    def split(self, ctx: _Ctx, sid: str, parts: list[str]) -> tuple[str, str]:
        """``(entry, zarr key)``: the longest allowed prefix of ``parts`` naming an entry."""
        allowed = False
        for i in range(len(parts) - 1, 0, -1):
            entry = "/".join(parts[:i])
            if not ctx.grant.allows(entry):
                continue
            allowed = True
            if self.has_entry(ctx, sid, entry):
                return entry, "/".join(parts[i:])
        if not allowed:
            raise _HttpError(403, "forbidden", f"key {ctx.grant.name!r} may not read this entry")
        raise NotFoundError(f"no entry of snapshot {sid[:12]} at {'/'.join(parts)!r}")


def _cache_headers(
    server: _Server, ctx: _Ctx, sid: str, immutable: bool, *parts: str
) -> dict[str, str]:
    etag = hashlib.sha256("\0".join((ctx.name, sid, *parts)).encode()).hexdigest()[:40]
    scope = "public" if server.keys is None else "private"
    control = f"{scope}, {_IMMUTABLE}" if immutable else f"{scope}, no-cache"
    return {"ETag": f'"{etag}"', "Cache-Control": control}


def _not_modified(request: Request, headers: dict[str, str]) -> Response | None:
    match = request.headers.get("if-none-match")
    if match is not None and headers["ETag"] in [m.strip() for m in match.split(",")]:
        return Response(status_code=304, headers=headers)
    return None


# ----------------------------------------------------------------------- routes

Handler = Callable[[_Server, Request], Awaitable[Response]]


def _route(server: _Server, handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        try:
            return await handler(server, request)
        except _HttpError as exc:
            return _error(exc.status, exc.code, exc.message)
        except HyperslabError as exc:
            status = _status(exc)
            if status >= 500:
                log.warning("%s %s: %s (%s)", request.method, request.url.path, exc.code, exc)
            grant = getattr(request.state, "grant", None)
            restricted = grant is not None and grant.restricted
            return _error(status, exc.code, quiet(exc.message) if restricted else exc.message)
        except Exception:
            log.exception("%s %s failed", request.method, request.url.path)
            return _error(500, "internal", "internal error (see the server's log)")

    return endpoint


def _json(doc: Any, headers: dict[str, str] | None = None) -> Response:
    try:
        text = json.dumps(doc, allow_nan=False, default=str)
    except ValueError:  # a non-finite float somewhere: strict JSON all the same
        text = json.dumps(json_safe(doc), allow_nan=False, default=str)
    body = text.encode()
    return Response(body, media_type="application/json", headers=headers)


async def _zarr(server: _Server, request: Request) -> Response:
    ctx = server.context(request)
    parts = _segments(request.path_params["path"])
    ref = None
    if parts[0].startswith("@") and len(parts) > 1:
        ref, parts = parts[0][1:], parts[1:]
    sid, immutable = await run_in_threadpool(server.resolve, ctx, request, ref)
    entry, key = await run_in_threadpool(server.split, ctx, sid, parts)
    headers = _cache_headers(server, ctx, sid, immutable, "zarr", entry, key)
    cached = _not_modified(request, headers)
    if cached is not None:
        return cached
    store = await run_in_threadpool(server.store, ctx, sid, entry)
    from zarr.core.buffer import default_buffer_prototype

    buf = await store.get(key, default_buffer_prototype())
    if buf is None:
        raise _HttpError(404, "not_found", f"{key!r} is not in entry {entry!r}")
    media = "application/json" if key.rsplit("/", 1)[-1].startswith(".z") else None
    return Response(buf.to_bytes(), media_type=media or "application/octet-stream", headers=headers)


async def _repositories(server: _Server, request: Request) -> Response:
    grant = server.grant(request)
    names = [n for n in server.repos if grant.allows_repository(n)]
    rows = [
        {
            "name": n,
            **(
                {"api": f"api/{n}/", "zarr": f"zarr/{n}/"}
                if server.prefixed
                else {"api": "api/", "zarr": "zarr/"}
            ),
        }
        for n in names
    ]
    return _json({"prefixed": server.prefixed, "repositories": rows})


async def _branches(server: _Server, request: Request) -> Response:
    ctx = server.context(request)
    refs = await run_in_threadpool(ctx.repo.branches)
    return _json({"branches": visible_refs(refs, ctx.grant)})


async def _tags(server: _Server, request: Request) -> Response:
    ctx = server.context(request)
    refs = await run_in_threadpool(ctx.repo.tags)
    return _json({"tags": visible_refs(refs, ctx.grant)})


async def _log(server: _Server, request: Request) -> Response:
    ctx = server.context(request)
    limit = _int(request, "limit", PAGE, 1, MAX_PAGE)
    sid, _ = await run_in_threadpool(server.resolve, ctx, request)
    snaps, complete = await run_in_threadpool(visible_log, ctx.repo, sid, ctx.grant, limit)
    doc = {
        "ref": request.query_params.get("ref") or "main",
        "filtered": ctx.grant.restricted,
        "complete": complete,
        "snapshots": snaps,
    }
    return _json(doc)


async def _entries(server: _Server, request: Request) -> Response:
    ctx = server.context(request)
    offset = _int(request, "offset", 0, 0, 2**62)
    limit = _int(request, "limit", PAGE, 1, MAX_PAGE)
    sid, _ = await run_in_threadpool(server.resolve, ctx, request)

    def page() -> tuple[int, list[dict[str, Any]]]:
        total, rows = 0, []
        for name, value in ctx.repo.entries(sid):
            if not ctx.grant.allows(name):
                continue
            if offset <= total < offset + limit:
                rows.append({"name": name, "catalog": value.get("catalog", {})})
            total += 1
        return total, rows

    total, rows = await run_in_threadpool(page)
    doc = {"snapshot": sid, "total": total, "offset": offset, "limit": limit, "entries": rows}
    return _json(doc)


async def _pinned_entry(
    server: _Server, request: Request, what: str
) -> tuple[_Ctx, str, str, dict[str, str]] | Response:
    """The entry a request names (one the key may read), the snapshot it reads and the
    caching headers of ``what`` about it; or a 304 when the client's copy is current."""
    ctx = server.context(request)
    name = "/".join(_segments(request.path_params["path"]))
    server.check(ctx, name)
    sid, immutable = await run_in_threadpool(server.resolve, ctx, request)
    headers = _cache_headers(server, ctx, sid, immutable, what, name)
    cached = _not_modified(request, headers)
    return cached if cached is not None else (ctx, name, sid, headers)


async def _entry(server: _Server, request: Request) -> Response:
    pinned = await _pinned_entry(server, request, "entry")
    if isinstance(pinned, Response):
        return pinned
    ctx, name, sid, headers = pinned
    rec = await run_in_threadpool(server.record, ctx, sid, name)
    doc: dict[str, Any] = {
        "snapshot": sid,
        "name": name,
        **{k: rec[k] for k in ("type", "format", "arrays", "catalog", "counts") if k in rec},
    }
    return _json(doc, headers)


async def _tree(server: _Server, request: Request) -> Response:
    pinned = await _pinned_entry(server, request, "tree")
    if isinstance(pinned, Response):
        return pinned
    ctx, name, sid, headers = pinned
    rec = await run_in_threadpool(server.record, ctx, sid, name)
    store = await run_in_threadpool(server.store, ctx, sid, name)
    tree = await run_in_threadpool(entry_tree, store.view.refmap)
    doc = {"snapshot": sid, "name": name, "catalog": rec.get("catalog", {}), **tree}
    return _json(doc, headers)


async def _search(server: _Server, request: Request) -> Response:
    from hyperslab.references.search import search

    ctx = server.context(request)
    query = request.query_params.get("q")
    if query is None:
        raise _HttpError(400, "bad_query", "give a query: /api/search?q=TERMS")
    offset = _int(request, "offset", 0, 0, 2**62)
    limit = _int(request, "limit", PAGE, 1, MAX_PAGE)
    sid, _ = await run_in_threadpool(server.resolve, ctx, request)
    result = await run_in_threadpool(search, ctx.repo, sid, query)
    hits = [{"entry": n, "catalog": c} for n, c in result if ctx.grant.allows(n)]
    doc = {"snapshot": sid, "query": query, "total": len(hits), "offset": offset, "limit": limit}
    return _json({**doc, "hits": hits[offset : offset + limit]})


def _float(request: Request, name: str) -> float | None:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return None
    try:
        value = float(raw)
    except ValueError:
        raise _HttpError(400, "bad_input", f"{name} must be a number, not {raw!r}") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise _HttpError(400, "bad_input", f"{name} must be finite, not {raw!r}")
    return value


async def _slice(server: _Server, request: Request) -> Response:
    ctx = server.context(request)
    parts = _segments(request.path_params["path"])
    fmt = request.query_params.get("format") or "npy"
    if fmt not in FORMATS:
        raise _HttpError(
            400, "bad_input", f"format must be one of {', '.join(FORMATS)}, not {fmt!r}"
        )
    vmin, vmax = _float(request, "vmin"), _float(request, "vmax")
    pmin, pmax = _float(request, "pmin"), _float(request, "pmax")
    pmin, pmax = 1.0 if pmin is None else pmin, 99.0 if pmax is None else pmax
    scale = request.query_params.get("scale") or "linear"
    cmap = request.query_params.get("cmap") or "gray"
    if fmt == "png":
        check_png(scale=scale, cmap=cmap, pmin=pmin, pmax=pmax)
    sid, immutable = await run_in_threadpool(server.resolve, ctx, request)
    entry, path = await run_in_threadpool(server.split, ctx, sid, parts)
    store = await run_in_threadpool(server.store, ctx, sid, entry)
    array = await run_in_threadpool(HyperslabArray, store, path)
    sel = parse_selection(request.query_params.get("sel"), array.shape)
    size = int(np.prod(sel.shape, dtype=np.int64)) * array.dtype.itemsize
    if size > server.max_slice_bytes:
        raise _HttpError(
            413,
            "too_large",
            f"the selection is {size} bytes (shape {sel.shape}, {array.dtype}); this server "
            f"sends at most {server.max_slice_bytes}: select less, or read the entry over /zarr",
        )
    extra: tuple[str, ...] = (sel.text(), fmt)
    if fmt == "png":
        extra += (str(vmin), str(vmax), str(pmin), str(pmax), scale, cmap)
    headers = _cache_headers(server, ctx, sid, immutable, "slice", entry, path, *extra)
    cached = _not_modified(request, headers)
    if cached is not None:
        return cached
    values = await run_in_threadpool(array.__getitem__, sel.items)
    body, more = await run_in_threadpool(
        lambda: encode(
            values,
            fmt,
            attrs=array.attrs,
            vmin=vmin,
            vmax=vmax,
            scale=scale,
            cmap=cmap,
            pmin=pmin,
            pmax=pmax,
        )
    )
    return Response(body, media_type=FORMATS[fmt], headers={**headers, **more})


#: download format → media type
DOWNLOADS = {"h5": FORMATS["h5"], "nc": "application/x-netcdf"}


def _netcdf_engine() -> str:
    import importlib.util

    for engine in ("h5netcdf", "netCDF4"):
        if importlib.util.find_spec(engine) is not None:
            return engine
    raise _HttpError(
        400,
        "unsupported",
        "format=nc needs h5netcdf or netCDF4 on the server: pip install h5netcdf",
    )


def _download_h5(store: HyperslabStore, group: str, sel: str | None, limit: int) -> bytes:
    refmap = store.view.refmap
    if group and group not in refmap.groups:
        raise NotFoundError(f"entry {store.view.entry!r} has no group {group!r}")
    prefix = f"{group}/" if group else ""
    arrays = [HyperslabArray(store, p) for p in sorted(refmap.arrays) if p.startswith(prefix)]
    named = 0 if not sel else len([p for p in sel.split(",") if p.strip() != "..."])
    picks = [(a, parse_selection(sel if a.ndim >= named else None, a.shape)) for a in arrays]
    size = sum(int(np.prod(s.shape, dtype=np.int64)) * a.dtype.itemsize for a, s in picks)
    if size > limit:
        raise _HttpError(413, "too_large", f"the download is {size} bytes; at most {limit}")
    groups = {p: a for p, a in refmap.groups.items() if p == group or p.startswith(prefix)}
    return h5_tree(groups, ((a.path, a[s.items], a.attrs) for a, s in picks))


def nc_selection(ds: Any, sel: str | None) -> dict[str, int | slice]:
    """The ``isel`` indexers ``sel`` means for the NetCDF download of ``ds``: one
    selection over the dimensions of the dataset's signal (its NeXus ``signal``, else
    the data variable of most dimensions, the first by name of those), by name, so that
    every variable with those dimensions (coordinates too) is cut alike."""
    if not sel:
        return {}
    names = sorted(str(n) for n in ds.data_vars)
    signal = ds.attrs.get("signal")
    if signal not in names:
        ranked = sorted(names, key=lambda n: -ds[n].ndim)
        signal = ranked[0] if ranked else None
    if signal is None or ds[signal].ndim == 0:
        raise _HttpError(
            400, "bad_input", "sel= needs a group with a data variable of 1 or more dimensions"
        )
    var = ds[signal]
    picked = parse_selection(sel, tuple(var.shape))
    return {str(d): i for d, i in zip(var.dims, picked.items, strict=True)}


def _download_nc(store: HyperslabStore, group: str, sel: str | None, limit: int) -> bytes:
    from hyperslab.access.dataset import dataset_from_store

    engine = _netcdf_engine()
    ds = dataset_from_store(store, group or None, chunks=None)
    ds = ds.isel(nc_selection(ds, sel))
    size = int(ds.nbytes)
    if size > limit:
        raise _HttpError(413, "too_large", f"the download is {size} bytes; at most {limit}")
    out = ds.load().to_netcdf(None, engine=engine)  # type: ignore[call-overload]
    return bytes(out)


async def _download(server: _Server, request: Request) -> Response:
    ctx = server.context(request)
    entry = "/".join(_segments(request.path_params["path"]))
    server.check(ctx, entry)
    fmt = request.query_params.get("format") or "h5"
    if fmt not in DOWNLOADS:
        raise _HttpError(400, "bad_input", f"format must be h5 or nc, not {fmt!r}")
    group = (request.query_params.get("group") or "").strip("/")
    sel = request.query_params.get("sel") or None
    sid, immutable = await run_in_threadpool(server.resolve, ctx, request)
    if not await run_in_threadpool(server.has_entry, ctx, sid, entry):
        raise NotFoundError(f"no entry {entry!r} in snapshot {sid[:12]}")
    headers = _cache_headers(server, ctx, sid, immutable, "download", entry, fmt, group, sel or "")
    cached = _not_modified(request, headers)
    if cached is not None:
        return cached
    store = await run_in_threadpool(server.store, ctx, sid, entry)
    limit = server.max_slice_bytes
    if fmt == "h5":
        body = await run_in_threadpool(_download_h5, store, group, sel, limit)
    else:
        body = await run_in_threadpool(_download_nc, store, group, sel, limit)
    name = entry.rsplit("/", 1)[-1].replace('"', "_")
    headers["Content-Disposition"] = f'attachment; filename="{name}.{fmt}"'
    return Response(body, media_type=DOWNLOADS[fmt], headers=headers)


async def _not_found(request: Request, exc: Exception) -> Response:
    if isinstance(exc, HTTPException):
        code = "not_found" if exc.status_code == 404 else "bad_request"
        return _error(exc.status_code, code, str(exc.detail))
    return _error(500, "internal", "internal error (see the server's log)")


class _Limit:
    """ASGI middleware: at most ``limit`` HTTP requests in flight; one more is answered at
    once with 503 ``busy`` and ``Retry-After`` (never queued: a burst cannot pile up
    threads, open stores and memory). The count is only touched on the event loop."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit, self.in_flight = app, limit, 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.in_flight >= self.limit:
            busy = _error(
                503, "busy", f"this server is answering {self.limit} requests: retry shortly"
            )
            busy.headers["Retry-After"] = str(RETRY_AFTER)
            await busy(scope, receive, send)
            return
        self.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1


def repository_name(display: str) -> str:
    """A name for a repository on a server from its URL or path: the last part, with
    characters other than letters, digits, ``.``, ``_`` and ``-`` made ``_``."""
    last = re.split(r"[/:\\]", display.rstrip("/\\"))[-1]
    name = re.sub(r"[^A-Za-z0-9._-]", "_", last).lstrip("._-")[:64]
    return name or "repository"


def _repositories_of(repo: Repository | Mapping[str, Repository]) -> dict[str, Repository]:
    repos = {repository_name(repo.display): repo} if isinstance(repo, Repository) else dict(repo)
    if not repos:
        raise BadInputError("give at least one repository to serve")
    for name in repos:
        if not REPO_NAME.fullmatch(name):
            raise BadInputError(
                f"repository name {name!r} must be 1-64 letters, digits, '.', '_' or '-', "
                "starting with a letter or digit"
            )
    return repos


#: the data routes: (path after /api, or /zarr, handler)
_DATA_ROUTES: tuple[tuple[str, Handler], ...] = (
    ("/branches", _branches),
    ("/tags", _tags),
    ("/log", _log),
    ("/entries", _entries),
    ("/entries/{path:path}", _entry),
    ("/tree/{path:path}", _tree),
    ("/search", _search),
    ("/slice/{path:path}", _slice),
    ("/download/{path:path}", _download),
)


async def _unprefixed(server: _Server, request: Request) -> Response:
    raise _HttpError(
        404,
        "not_found",
        "this server shares several repositories: put one's name in front "
        "(/api/NAME/entries, /zarr/NAME/ENTRY); /api/repositories lists them",
    )


def create_app(
    repo: Repository | Mapping[str, Repository],
    *,
    keys: KeyRing | None = None,
    allow_anonymous: bool = False,
    max_slice_bytes: int = MAX_SLICE_BYTES,
    max_requests: int = MAX_REQUESTS,
    cors_origins: Sequence[str] = (),
    sites: Mapping[str, Sequence[str]] | None = None,
) -> Starlette:
    """The ASGI app sharing ``repo``, or the repositories of a mapping name → repository
    (see the module's description; with one, the URLs carry no name).

    ``sites``: per repository name, the locations to read its chunks from, most
    preferred first (``open_store``'s ``sites``; ``serve`` passes, for a ``SITE:path``
    repository, that path at every site of ``hyperslab.toml``), so chunks are routed,
    and fall back, as any reader's; by default each repository's own site."""
    if max_requests < 1:
        raise ValueError(f"max_requests must be at least 1, not {max_requests}")
    repos = _repositories_of(repo)
    for r in repos.values():
        r.store_derived = False  # a server only reads
    server = _Server(repos, keys, allow_anonymous, max_slice_bytes, sites)
    at = "/{repo}" if server.prefixed else ""
    routes = [
        Route("/api/repositories", _route(server, _repositories)),
        *openapi_routes(server.prefixed),
        Route(f"/zarr{at}/{{path:path}}", _route(server, _zarr), methods=["GET", "HEAD"]),
        *(Route(f"/api{at}{path}", _route(server, handler)) for path, handler in _DATA_ROUTES),
    ]
    if server.prefixed:  # an unprefixed URL: say how they are spelled here
        routes.append(Route("/api/{rest:path}", _route(server, _unprefixed)))
    routes.extend(ui_routes())
    middleware = []
    if cors_origins:  # outermost: a preflight is answered before the limit, a 503 has CORS
        middleware.append(
            Middleware(
                CORSMiddleware,
                allow_origins=list(cors_origins),
                allow_methods=["GET", "HEAD", "OPTIONS"],
                allow_headers=["Authorization"],
                expose_headers=["ETag", "Retry-After", "X-Dtype", "X-Shape"],
            )
        )
    middleware.append(Middleware(_Limit, limit=max_requests))
    return Starlette(
        routes=routes, middleware=middleware, exception_handlers={HTTPException: _not_found}
    )
