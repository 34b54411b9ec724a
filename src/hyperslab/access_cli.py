"""Access commands of the ``hyperslab`` CLI: ``hyperslab cache info|clear``.
(Registered on :data:`hyperslab.cli.app`.)
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
