"""Access commands of the ``hyperslab`` CLI: ``hyperslab cache info|clear`` and
``hyperslab export-refs``. (Registered on :data:`hyperslab.cli.app`.)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from hyperslab.cli import JsonOpt, _errors, app, out
from hyperslab.errors import CorruptError

CACHE_HELP = """Inspect or empty the local chunk cache.

The cache keeps the bytes of chunks read from remote sites and source files on
this machine, so a slice read twice is fetched once. Entries are keyed by
content that never changes, so they are never stale: deleting any of them (or
all, with `clear`) only costs a refetch.

Where: CACHE_DIR/chunks. CACHE_DIR is $HYPERSLAB_CACHE_DIR, else `dir` under
\\[cache] in hyperslab.toml, else the user cache directory (~/.cache/hyperslab
on Linux; $XDG_CACHE_HOME is honoured). Keep it on a local disk, not NFS.
All processes on the machine share it safely.

Size: $HYPERSLAB_CACHE_SIZE, else `size` under \\[cache] in hyperslab.toml:
500MB, 20GB (powers of 10), 10GiB (powers of 2) or bytes; default 20GB.
When full, the least recently used chunks are evicted.
"""

cache_app = typer.Typer(
    name="cache", help=CACHE_HELP, no_args_is_help=True, rich_markup_mode="rich"
)
app.add_typer(cache_app, name="cache")

DirOpt = Annotated[
    Path | None,
    typer.Option(
        "--dir",
        help="The cache directory itself (default: CACHE_DIR/chunks, see `hyperslab cache --help`).",
    ),
]


def _open(directory: Path | None) -> Any:
    from hyperslab.access.cache import ChunkCache

    return ChunkCache(directory)


def _size(n: int) -> str:
    for unit, scale in (("TB", 10**12), ("GB", 10**9), ("MB", 10**6), ("kB", 10**3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


@cache_app.command("info")
def info(directory: DirOpt = None, as_json: JsonOpt = False) -> None:
    """Where the chunk cache is, how many chunks and bytes it holds, and its limit.

    Examples:

      hyperslab cache info

      HYPERSLAB_CACHE_SIZE=50GB hyperslab cache info --json
    """
    with _errors(as_json):
        report = _open(directory).info()
        if as_json:
            print(json.dumps({"ok": True, **report.to_json()}))
            return
        pct = 100.0 * report.bytes / report.limit if report.limit else 0.0
        out.print(f"chunk cache  {report.path}", highlight=False)
        out.print(f"entries      {report.entries:,}", highlight=False)
        out.print(
            f"size         {_size(report.bytes)} of {_size(report.limit)} ({pct:.0f}%)",
            highlight=False,
        )


@cache_app.command("clear")
def clear(
    directory: DirOpt = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Say what would be removed; remove nothing.")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Remove every cached chunk (safe at any time: other readers just refetch).

    Examples:

      hyperslab cache clear

      hyperslab cache clear --dir /scratch/hyperslab-cache/chunks --json
    """
    with _errors(as_json):
        cache = _open(directory)
        try:
            before = cache.info()
            entries, nbytes = before.entries, before.bytes
        except CorruptError:
            if dry_run:
                raise
            entries = nbytes = None  # a damaged index: clear starts afresh, sizes unknown
        if not dry_run:
            cleared = cache.clear()
            entries = cleared if entries is None else max(entries, cleared)
        doc = {
            "path": str(cache.path),
            "dry_run": dry_run,
            "removed_entries": entries,
            "removed_bytes": nbytes,
        }
        if as_json:
            print(json.dumps({"ok": True, **doc}))
        else:
            verb = "would remove" if dry_run else "removed"
            size = f" ({_size(nbytes)})" if nbytes is not None else ""
            out.print(f"{verb} {entries:,} chunks{size} from {cache.path}", highlight=False)


# ---------------------------------------------------------------- export-refs
@app.command("export-refs")
def export_refs(
    repo: Annotated[
        str, typer.Argument(help="Repository: file:// or s3:// URL, local path, or SITE:path.")
    ],
    entry: Annotated[str, typer.Argument(help="Entry to export, e.g. run42/scan_0007.")],
    site: Annotated[
        str,
        typer.Option(
            "--site",
            help="Where readers will fetch the source files: the repository's URL or "
            "SITE:path there, or a site name from hyperslab.toml (then REPO must be SITE:path).",
        ),
    ],
    output: Annotated[
        Path,
        typer.Option(
            "--output", "-o", help="OUT.json (one file) or OUT.parquet (a Parquet directory)."
        ),
    ],
    ref: Annotated[
        str, typer.Option("--ref", help="Branch, tag or snapshot id (prefix) to export.")
    ] = "main",
    as_json: JsonOpt = False,
) -> None:
    """Write an entry as plain kerchunk references with one site's concrete URLs.

    For readers with fsspec/kerchunk but without hyperslab: every source becomes
    the URL of its copy at --site (which must hold each one, or the command fails
    naming the missing source, exit 3). The map holds URLs only, never
    credentials or endpoints; checksum verification, site fallback and the local
    cache are what such readers give up.

    Examples:

      hyperslab export-refs s3://beamline/repo run42/scan_0007 --site s3://beamline/repo -o scan.json

      hyperslab export-refs beamline:repo run42/scan_0007 --site cloud -o scan.parquet --ref v1
    """
    from hyperslab.access.export import export_refs as do_export

    with _errors(as_json):
        res = do_export(repo, entry, site, output, ref=ref)
        if as_json:
            print(json.dumps({"ok": True, **res.to_json()}))
            return
        out.print(
            f"[green]✓[/] wrote {res.path}: {entry} at {res.snapshot[:12]}, {res.arrays} arrays, "
            f"{res.refs} refs, {len(res.sources)} source(s) at {res.site}",
            highlight=False,
        )
