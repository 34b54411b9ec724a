"""``hyperslab serve``: share a repository over HTTP (Zarr and a JSON API, behind API
keys). (Registered on :data:`hyperslab.cli.app.app`.)"""

from __future__ import annotations

import json
import socket
import sys
from pathlib import Path
from typing import Annotated

import typer

from hyperslab.cli.app import JsonOpt, app, err, handle_errors
from hyperslab.errors import BadInputError, UnsupportedFeatureError


def _hash_key(as_json: bool) -> None:
    from hyperslab.serve.keys import hash_key, new_key

    given = "" if sys.stdin is None or sys.stdin.isatty() else sys.stdin.read().strip()
    key = given or new_key()
    digest = hash_key(key)
    if as_json:
        print(json.dumps({"ok": True, "hash": digest, **({} if given else {"key": key})}))
        return
    if not given:
        print(f"# the new key (give it to its user; it is shown only now): {key}")
    print(f'[[key]]\nname = "NAME"\nhash = "{digest}"\n# entries = ["run42/*"]')


def _check_port(host: str, port: int) -> None:
    try:
        with socket.create_server((host, port)):
            pass
    except OSError as exc:
        raise BadInputError(
            f"cannot listen on {host}:{port}: {exc.strerror or exc}", host=host, port=port
        ) from None


@app.command()
def serve(
    repo: Annotated[
        str | None,
        typer.Argument(help="Repository: file:// or s3:// URL, local path, or SITE:path."),
    ] = None,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port to listen on.")] = 8000,
    keys: Annotated[
        Path | None, typer.Option("--keys", help="TOML file of API keys (see above).")
    ] = None,
    allow_anonymous: Annotated[
        bool,
        typer.Option("--allow-anonymous", help="Serve every entry to requests without a key."),
    ] = False,
    max_slice_bytes: Annotated[
        int,
        typer.Option(
            "--max-slice-bytes",
            min=1,
            help="Largest selection /api/slice sends (bytes of values); larger is 413.",
        ),
    ] = 256 * 2**20,
    max_requests: Annotated[
        int,
        typer.Option(
            "--max-requests",
            min=1,
            help="Most requests served at once; more are 503 with Retry-After, never queued.",
        ),
    ] = 64,
    cors_origin: Annotated[
        list[str] | None,
        typer.Option(
            "--cors-origin",
            help="An origin (https://host[:port], or * for any) whose web pages may read "
            "this server (repeatable; none by default).",
        ),
    ] = None,
    hash_key: Annotated[
        bool,
        typer.Option(
            "--hash-key",
            help="Print the keys-file line of the key read from stdin (none: a new key) and exit.",
        ),
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Share a repository over HTTP: Zarr for zarr and xarray, a JSON API, a browser UI.

    Browser UI: http://HOST:PORT/ (pick a ref, search, walk an entry, preview frames
    with contrast controls and a line profile, download slices; a key typed into the
    page stays in the browser tab).

    Zarr: /zarr/ENTRY/KEY?ref=REF (or /zarr/@REF/ENTRY/KEY, for zarr clients) serves an entry as zarr_format=2 with consolidated
    metadata and decoded chunks, for zarr.open_group(URL, mode="r") and
    xr.open_zarr(URL). JSON: /api/branches, /api/tags, /api/log?ref=,
    /api/entries?ref=&offset=&limit=, /api/entries/ENTRY?ref=, /api/tree/ENTRY?ref=
    and /api/search?q=&ref=.
    Slices: /api/slice/ENTRY/ARRAY?sel=0,10:20,::2&format=npy|raw|json|csv|tiff|png|h5
    (png: the pmin-th to pmax-th percentile (1, 99) or vmin to vmax, scaled to 0-255;
    scale=linear|log; cmap=gray|gray_r|hot|cubehelix).
    REF is a branch, tag or snapshot id (default main); a snapshot id's responses are
    immutable (ETag, Cache-Control). Errors are JSON {"error": {"code", "message"}}.
    More than --max-requests at once are 503 (busy, Retry-After); --cors-origin lets
    web pages of an origin read the server from a browser.

    Keys: a TOML file of [[key]] tables with name, hash ("sha256:HEX", from
    --hash-key; keys are never stored) and optional entries (globs of entry names the
    key may read; absent: all). Clients send Authorization: Bearer KEY. Without a valid
    key every data endpoint answers 401 unless --allow-anonymous; another entry than a
    key's globs allow answers 403. Give --keys, --allow-anonymous or both.

    Examples:

      hyperslab serve --hash-key > keys.toml

      hyperslab serve ./repo --keys keys.toml --host 0.0.0.0 --port 8000

      hyperslab serve ./repo --allow-anonymous
    """
    with handle_errors(as_json):
        if hash_key:
            _hash_key(as_json)
            return
        if repo is None:
            raise BadInputError("give the repository to serve (or --hash-key)")
        from hyperslab.references.repository import Repository
        from hyperslab.serve.keys import KeyRing

        ring = KeyRing.load(keys) if keys is not None else None
        if ring is None and not allow_anonymous:
            raise BadInputError("give --keys FILE, --allow-anonymous, or both")
        r = Repository.open(repo)
        from hyperslab.serve.app import create_app

        try:
            import uvicorn
        except ImportError:
            raise UnsupportedFeatureError(
                "hyperslab serve needs uvicorn: pip install 'hyperslab[serve]'"
            ) from None
        application = create_app(
            r,
            keys=ring,
            allow_anonymous=allow_anonymous,
            max_slice_bytes=max_slice_bytes,
            max_requests=max_requests,
            cors_origins=cors_origin or (),
        )
        _check_port(host, port)
        who = f"{len(ring)} key(s)" if ring is not None else "no keys"
        err.print(
            f"serving {r.display} at http://{host}:{port} ({who}"
            + (", anonymous reads allowed)" if allow_anonymous else ")"),
            highlight=False,
        )
        uvicorn.run(application, host=host, port=port, log_level="info")
