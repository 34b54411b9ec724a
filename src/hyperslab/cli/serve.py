"""``hyperslab serve``: share repositories over HTTP (Zarr and a JSON API, behind API
keys). (Registered on :data:`hyperslab.cli.app.app`.)

Several repositories are given as positional arguments, ``[NAME=]SPEC`` each (the name
defaults to the last part of the path or URL): one command line lists what a server
shares, in the order ``/api/repositories`` shows them, and a single repository is
given exactly as before (``hyperslab serve ./repo``), which a ``--repo NAME=SPEC``
option would not allow without two spellings of the same thing."""

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


def parse_repositories(specs: list[str]) -> dict[str, str]:
    """``[NAME=]SPEC`` arguments as name → spec; names must be distinct and valid."""
    from hyperslab.serve.app import REPO_NAME, repository_name

    out: dict[str, str] = {}
    for spec in specs:
        name, eq, rest = spec.partition("=")
        if eq and REPO_NAME.fullmatch(name):
            spec = rest
        else:
            name = repository_name(spec)
        if not spec:
            raise BadInputError(f"repository {name!r}: give its path or URL after '='")
        if name in out:
            raise BadInputError(
                f"two repositories are named {name!r}: give them names, NAME=SPEC", name=name
            )
        out[name] = spec
    return out


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
        list[str] | None,
        typer.Argument(
            help="Repositories, [NAME=]SPEC each: file:// or s3:// URL, local path, or "
            "SITE:path (NAME: the last part of SPEC unless given).",
            show_default=False,
        ),
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
    """Share repositories over HTTP: Zarr for zarr and xarray, a JSON API, a browser UI.

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
    Downloads: /api/download/ENTRY?format=h5|nc&group=&sel=. API description:
    /api/openapi.json (OpenAPI 3.1), read as a page at /api/docs.
    REF is a branch, tag or snapshot id (default main); a snapshot id's responses are
    immutable (ETag, Cache-Control). Errors are JSON {"error": {"code", "message"}}.

    Several repositories: each URL carries the name after /api or /zarr
    (/api/NAME/entries, /zarr/NAME/ENTRY); /api/repositories lists those a key may
    read.
    More than --max-requests at once are 503 (busy, Retry-After); --cors-origin lets
    web pages of an origin read the server from a browser.

    Keys: a TOML file of [[key]] tables with name, hash ("sha256:HEX", from
    --hash-key; keys are never stored) and optional globs: repositories, entries (the
    names the key may read; absent: all) and refs (branches and tags it sees; absent:
    all, or only main for a key limited by entries). A key limited by entries sees
    only the log, refs and search hits of its entries. Clients send Authorization:
    Bearer KEY. Without a valid key every data endpoint answers 401 unless
    --allow-anonymous; what a key's globs do not allow answers 403. Give --keys,
    --allow-anonymous or both.

    Examples:

      hyperslab serve --hash-key > keys.toml

      hyperslab serve ./repo --keys keys.toml --host 0.0.0.0 --port 8000

      hyperslab serve ./repo --allow-anonymous

      hyperslab serve beamline=s3://bucket/repo ./other --keys keys.toml
    """
    with handle_errors(as_json):
        if hash_key:
            _hash_key(as_json)
            return
        if not repo:
            raise BadInputError("give the repository to serve (or --hash-key)")
        specs = parse_repositories(repo)
        from hyperslab.references.repository import Repository
        from hyperslab.serve.keys import KeyRing

        ring = KeyRing.load(keys) if keys is not None else None
        if ring is None and not allow_anonymous:
            raise BadInputError("give --keys FILE, --allow-anonymous, or both")
        from hyperslab.config import load_config
        from hyperslab.reading.entry import replica_specs

        config = load_config()
        opened = {name: Repository.open(spec, config=config) for name, spec in specs.items()}
        # a SITE:path repository is read at every configured site holding that path
        routes = {name: replica_specs(spec, config) for name, spec in specs.items()}
        from hyperslab.serve.app import create_app

        try:
            import uvicorn
        except ImportError:
            raise UnsupportedFeatureError(
                "hyperslab serve needs uvicorn: pip install 'hyperslab[serve]'"
            ) from None
        application = create_app(
            opened,
            keys=ring,
            allow_anonymous=allow_anonymous,
            max_slice_bytes=max_slice_bytes,
            max_requests=max_requests,
            cors_origins=cors_origin or (),
            sites={name: specs_ for name, specs_ in routes.items() if specs_},
        )
        _check_port(host, port)
        who = f"{len(ring)} key(s)" if ring is not None else "no keys"
        shown = ", ".join(
            r.display if len(opened) == 1 else f"{n}={r.display}" for n, r in opened.items()
        )
        err.print(
            f"serving {shown} at http://{host}:{port} ({who}"
            + (", anonymous reads allowed)" if allow_anonymous else ")"),
            highlight=False,
        )
        uvicorn.run(application, host=host, port=port, log_level="info")
