"""The OpenAPI description of ``hyperslab serve``: ``GET /api/openapi.json`` (OpenAPI 3.1,
written here by hand from the routes of :mod:`.app`, so that it says what the handlers
do: parameters, formats, error responses) and ``GET /api/docs``, a page that renders it
with a small script of ours (``ui/docs.js``; no CDN, the UI's Content-Security-Policy).

Both are served without a key: they describe the API and hold no data. The document
follows the server's layout: with several repositories every data path starts
``/api/{repo}/`` or ``/zarr/{repo}/``.
"""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

from hyperslab.errors import UnsupportedFeatureError
from hyperslab.serve.slices import COLORMAPS, FORMATS, SCALES

try:
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route
except ImportError as exc:  # pragma: no cover - the extra is installed in tests
    raise UnsupportedFeatureError(
        f"hyperslab serve needs starlette ({exc.name} is missing): pip install 'hyperslab[serve]'"
    ) from None

__all__ = ["openapi_document", "openapi_routes"]

_JSON = "application/json"
_ERRORS = {
    "400": "a malformed parameter, path or selection (the message names it)",
    "401": "no API key, or one that is not valid",
    "403": "the key may not read this repository or entry (alike whether it exists)",
    "404": "no such ref, entry, array, group or chunk",
    "413": "the selection is larger than the server's max_slice_bytes",
    "503": "the server is busy (Retry-After) or a storage site it reads is down",
}


def _param(name: str, where: str, text: str, schema: dict[str, Any], **more: Any) -> dict:
    return {"name": name, "in": where, "description": text, "schema": schema, **more}


def _query(name: str, text: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return _param(name, "query", text, schema or {"type": "string"})


def _path(name: str, text: str) -> dict[str, Any]:
    return _param(name, "path", text, {"type": "string"}, required=True)


_REF = _query("ref", "branch, tag or snapshot id (default main; a snapshot id: immutable)")
_ENTRY = _path("path", "the entry's name (it may contain '/')")
_SEL = _query(
    "sel",
    "NumPy-style selection, one item per axis: 3, -1, 2:10, ::2, ... (absent: all)",
)
_PAGE = [
    _query("offset", "first row", {"type": "integer", "minimum": 0, "default": 0}),
    _query("limit", "most rows", {"type": "integer", "minimum": 1, "maximum": 1000}),
]


def _ok(text: str, media: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return {"description": text, "content": media}


def _json_ok(text: str, schema: str) -> dict[str, Any]:
    return _ok(text, {_JSON: {"schema": {"$ref": f"#/components/schemas/{schema}"}}})


def _op(
    op_id: str,
    summary: str,
    params: list[dict[str, Any]],
    ok: dict[str, Any],
    errors: tuple[str, ...] = ("400", "401", "403", "404", "503"),
    tag: str = "data",
    secured: bool = True,
) -> dict[str, Any]:
    responses = {"200": ok, **{c: {"$ref": f"#/components/responses/E{c}"} for c in errors}}
    op: dict[str, Any] = {
        "operationId": op_id,
        "summary": summary,
        "tags": [tag],
        "parameters": params,
        "responses": responses,
    }
    if not secured:
        op["security"] = []
    return op


def _schemas() -> dict[str, Any]:
    obj, arr, s = "object", "array", {"type": "string"}
    catalog = {"type": obj, "description": "the entry's catalog record (searchable fields)"}
    integer = {"type": "integer"}

    def paged(rows: str, row: dict[str, Any], **more: Any) -> dict[str, Any]:
        """A page of ``rows`` (each with properties ``row``) at offset/limit of a total."""
        listed = {"type": arr, "items": {"type": obj, "properties": row}}
        fields = {"snapshot": s, **more, "total": integer, "offset": integer, "limit": integer}
        return {"type": obj, "properties": {**fields, rows: listed}}

    return {
        "Error": {
            "type": obj,
            "required": ["error"],
            "properties": {
                "error": {
                    "type": obj,
                    "required": ["code", "message"],
                    "properties": {"code": s, "message": s},
                }
            },
        },
        "Repositories": {
            "type": obj,
            "properties": {
                "prefixed": {"type": "boolean", "description": "URLs carry the name"},
                "repositories": {
                    "type": arr,
                    "items": {
                        "type": obj,
                        "properties": {"name": s, "api": s, "zarr": s},
                    },
                },
            },
        },
        "Refs": {
            "type": obj,
            "description": "{branches|tags: {name: snapshot id}}",
            "additionalProperties": {"type": obj, "additionalProperties": s},
        },
        "Log": {
            "type": obj,
            "properties": {
                "ref": s,
                "filtered": {
                    "type": "boolean",
                    "description": "a restricted key's view: only snapshots that changed its "
                    "entries; message and author null (withheld) when others changed too",
                },
                "complete": {"type": "boolean"},
                "snapshots": {
                    "type": arr,
                    "items": {
                        "type": obj,
                        "properties": {
                            "id": s,
                            "time": s,
                            "author": {"type": ["string", "null"]},
                            "message": {"type": ["string", "null"]},
                            "withheld": {"type": "boolean"},
                            "parents": {"type": arr, "items": s},
                            "entries": {"type": "integer"},
                            "changes": {"type": obj},
                        },
                    },
                },
            },
        },
        "Entries": paged("entries", {"name": s, "catalog": catalog}),
        "Entry": {
            "type": obj,
            "properties": {
                "snapshot": s,
                "name": s,
                "type": s,
                "format": s,
                "arrays": {"type": obj},
                "catalog": catalog,
                "counts": {"type": obj},
            },
        },
        "Tree": {
            "type": obj,
            "properties": {
                "snapshot": s,
                "name": s,
                "catalog": catalog,
                "groups": {"type": obj, "additionalProperties": {"type": obj}},
                "arrays": {
                    "type": obj,
                    "additionalProperties": {
                        "type": obj,
                        "properties": {
                            "shape": {"type": arr, "items": {"type": "integer"}},
                            "dtype": s,
                            "chunks": {"type": arr, "items": {"type": "integer"}},
                            "codecs": {"type": arr, "items": s},
                            "dims": {"type": arr, "items": s},
                            "attrs": {"type": obj},
                        },
                    },
                },
            },
        },
        "Search": paged("hits", {"entry": s, "catalog": catalog}, query=s),
        "Slice": {
            "type": obj,
            "description": "format=json: non-finite floats are the strings NaN, Infinity",
            "properties": {
                "shape": {"type": arr, "items": {"type": "integer"}},
                "dtype": s,
                "data": {},
            },
        },
    }


def _paths(prefixed: bool) -> dict[str, Any]:
    at = "/{repo}" if prefixed else ""
    repo = [_path("repo", "the repository's name (/api/repositories)")] if prefixed else []
    binary = {"schema": {"type": "string", "format": "binary"}}
    slice_media = {m: binary for m in sorted(set(FORMATS.values()) - {_JSON})}
    slice_media[_JSON] = {"schema": {"$ref": "#/components/schemas/Slice"}}
    png = [
        _query(
            "vmin", "png: the value shown black (else the pmin-th percentile)", {"type": "number"}
        ),
        _query(
            "vmax", "png: the value shown white (else the pmax-th percentile)", {"type": "number"}
        ),
        _query("pmin", "png: low percentile", {"type": "number", "default": 1}),
        _query("pmax", "png: high percentile", {"type": "number", "default": 99}),
        _query("scale", "png: linear or DS9's log", {"type": "string", "enum": list(SCALES)}),
        _query("cmap", "png: colour map", {"type": "string", "enum": list(COLORMAPS)}),
    ]
    fmt = {"type": "string", "enum": list(FORMATS), "default": "npy"}
    ui = {"text/html": {"schema": {"type": "string"}}}
    paths: dict[str, Any] = {
        "/api/repositories": {
            "get": _op(
                "repositories",
                "The repositories this key may read, with the base of their URLs",
                [],
                _json_ok("the repositories", "Repositories"),
                ("401", "503"),
                tag="repositories",
            )
        },
        "/api/openapi.json": {
            "get": _op(
                "openapi",
                "This document (no key needed)",
                [],
                _ok("OpenAPI 3.1", {_JSON: {"schema": {"type": "object"}}}),
                (),
                tag="about",
                secured=False,
            )
        },
        "/api/docs": {
            "get": _op("docs", "This document as a page", [], _ok("HTML", ui), (), "about", False)
        },
        f"/zarr{at}/{{path}}": {
            "get": _op(
                "zarr",
                "An entry as Zarr v2 (consolidated .zmetadata, decoded chunks) for "
                "zarr.open_group and xr.open_zarr: ENTRY/KEY, or @REF/ENTRY/KEY",
                [*repo, _path("path", "[@REF/]ENTRY/ZARR_KEY"), _REF],
                _ok("metadata (JSON) or a chunk", {_JSON: {}, "application/octet-stream": binary}),
            )
        },
        f"/api{at}/branches": {
            "get": _op(
                "branches",
                "Branches (a restricted key: its refs)",
                repo,
                _json_ok("name → snapshot id", "Refs"),
                ("401", "403", "404", "503"),
            )
        },
        f"/api{at}/tags": {
            "get": _op(
                "tags",
                "Tags (a restricted key: its refs)",
                repo,
                _json_ok("name → snapshot id", "Refs"),
                ("401", "403", "404", "503"),
            )
        },
        f"/api{at}/log": {
            "get": _op(
                "log",
                "Snapshots from REF back (a restricted key: those that changed its entries)",
                [*repo, _REF, _PAGE[1]],
                _json_ok("the snapshots, newest first", "Log"),
            )
        },
        f"/api{at}/entries": {
            "get": _op(
                "entries",
                "The entries of a snapshot, paged",
                [*repo, _REF, *_PAGE],
                _json_ok("a page of entries", "Entries"),
            )
        },
        f"/api{at}/entries/{{path}}": {
            "get": _op(
                "entry", "An entry's record", [*repo, _ENTRY, _REF], _json_ok("the record", "Entry")
            )
        },
        f"/api{at}/tree/{{path}}": {
            "get": _op(
                "tree",
                "An entry's groups and arrays: shapes, dtypes, chunks, codecs, attributes",
                [*repo, _ENTRY, _REF],
                _json_ok("the tree", "Tree"),
            )
        },
        f"/api{at}/search": {
            "get": _op(
                "search",
                "Catalog search (key=value, key~glob*, key>number, words)",
                [*repo, {**_query("q", "the query"), "required": True}, _REF, *_PAGE],
                _json_ok("the hits", "Search"),
            )
        },
        f"/api{at}/slice/{{path}}": {
            "get": _op(
                "slice",
                "Part of one array as npy, raw, json, csv (1-D/2-D), tiff, png (2-D) or h5",
                [
                    *repo,
                    _path("path", "ENTRY/ARRAY_PATH"),
                    _SEL,
                    _query("format", "the file format", fmt),
                    _REF,
                    *png,
                ],
                _ok("the slice (raw: X-Dtype and X-Shape headers)", slice_media),
                ("400", "401", "403", "404", "413", "503"),
            )
        },
        f"/api{at}/download/{{path}}": {
            "get": _op(
                "download",
                "A whole entry, or one group, as one HDF5 or NetCDF-4 file",
                [
                    *repo,
                    _ENTRY,
                    _query("format", "h5 or nc", {"type": "string", "enum": ["h5", "nc"]}),
                    _query(
                        "group",
                        "only the arrays and groups under this group (nc: "
                        "default the NeXus NXdata group)",
                    ),
                    {
                        **_SEL,
                        "description": "h5: applied to every array with that many "
                        "dimensions; nc: to the signal's dimensions, by name (xarray isel)",
                    },
                    _REF,
                ],
                _ok(
                    "the file (Content-Disposition: attachment)",
                    {FORMATS["h5"]: binary, "application/x-netcdf": binary},
                ),
                ("400", "401", "403", "404", "413", "503"),
            )
        },
        "/": {
            "get": _op(
                "home",
                "Redirects to the browser UI",
                [],
                {"description": "unused"},
                (),
                "ui",
                False,
            )
        },
        "/ui/": {
            "get": _op("ui", "The browser UI (no key needed)", [], _ok("HTML", ui), (), "ui", False)
        },
        "/ui/{name}": {
            "get": _op(
                "ui_file",
                "A file of the browser UI",
                [_path("name", "the file")],
                _ok("the file", {"text/javascript": {}, "text/css": {}}),
                ("404",),
                "ui",
                False,
            )
        },
    }
    paths["/"]["get"]["responses"] = {"307": {"description": "to ui/"}}
    if prefixed:
        paths["/api/{rest}"] = {
            "get": _op(
                "unprefixed",
                "Any other /api/ URL: 404 saying URLs need a repository",
                [_path("rest", "the rest of the path")],
                {"description": "never"},
                ("404",),
                "about",
                False,
            )
        }
        del paths["/api/{rest}"]["get"]["responses"]["200"]
    return paths


def openapi_document(prefixed: bool = False) -> dict[str, Any]:
    """The OpenAPI 3.1 document of a server (``prefixed``: of several repositories)."""
    from hyperslab import __version__

    responses = {
        f"E{code}": {
            "description": text,
            "content": {_JSON: {"schema": {"$ref": "#/components/schemas/Error"}}},
        }
        for code, text in _ERRORS.items()
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "hyperslab serve",
            "version": __version__,
            "description": "Repositories of HDF5/NeXus entries over HTTP: Zarr, a JSON "
            "API, slices in seven formats, whole-entry downloads. Errors are JSON "
            '{"error": {"code", "message"}}. Responses for a snapshot id carry an ETag '
            "and Cache-Control: immutable. A key limited to some entries sees nothing of "
            "the others in any listing.",
        },
        "servers": [{"url": "/"}],
        "security": [{"apiKey": []}],
        "tags": [{"name": t} for t in ("repositories", "data", "about", "ui")],
        "paths": _paths(prefixed),
        "components": {
            "securitySchemes": {
                "apiKey": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "Authorization: Bearer KEY (unless anonymous reads)",
                }
            },
            "schemas": _schemas(),
            "responses": responses,
        },
    }


_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


def openapi_routes(prefixed: bool) -> list[Route]:
    """``/api/openapi.json`` and ``/api/docs`` for a server (see the module)."""
    body = json.dumps(openapi_document(prefixed), indent=1).encode()
    page = (resources.files("hyperslab.serve") / "ui" / "docs.html").read_bytes()

    async def document(request: Request) -> Response:
        return Response(body, media_type=_JSON, headers={"Cache-Control": "no-cache"})

    async def docs(request: Request) -> Response:
        headers = {"Content-Security-Policy": _CSP, "X-Content-Type-Options": "nosniff"}
        return Response(page, media_type="text/html; charset=utf-8", headers=headers)

    return [Route("/api/openapi.json", document), Route("/api/docs", docs)]
