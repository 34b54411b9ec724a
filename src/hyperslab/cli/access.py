"""Access commands of the ``hyperslab`` CLI: ``hyperslab cache info|clear``,
``hyperslab stats show|clear`` and ``hyperslab export-refs``. (Registered on
:data:`hyperslab.cli.app.app`.)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from hyperslab.cli.app import JsonOpt, app, handle_errors, out, plural
from hyperslab.errors import CorruptError

CACHE_HELP = """Inspect or empty the local chunk cache.

The cache keeps the bytes of chunks read from remote sites and source files on
this machine, so a slice read twice is fetched once. Entries are keyed by
content that never changes, so they are never stale: deleting any of them (or
all, with `clear`) only costs a refetch.

Where: CACHE_DIR/chunks. CACHE_DIR is $HYPERSLAB_CACHE_DIR, else `dir` under
[cache] in hyperslab.toml, else the user cache directory (~/.cache/hyperslab
on Linux; $XDG_CACHE_HOME is honoured). Keep it on a local disk, not NFS.
All processes on the machine share it safely.

Size: $HYPERSLAB_CACHE_SIZE, else `size` under [cache] in hyperslab.toml:
500MB, 20GB (powers of 10), 10GiB (powers of 2) or bytes; default 20GB.
When full, the least recently used chunks are evicted.
"""

cache_app = typer.Typer(name="cache", help=CACHE_HELP, no_args_is_help=True, rich_markup_mode=None)
app.add_typer(cache_app, name="cache")

DirOpt = Annotated[
    Path | None,
    typer.Option(
        "--dir",
        help="The cache directory itself (default: CACHE_DIR/chunks, see `hyperslab cache --help`).",
    ),
]


def _open(directory: Path | None) -> Any:
    from hyperslab.reading.chunk_cache import ChunkCache

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
    with handle_errors(as_json):
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
    with handle_errors(as_json):
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

    with handle_errors(as_json):
        res = do_export(repo, entry, site, output, ref=ref)
        if as_json:
            print(json.dumps({"ok": True, **res.to_json()}))
            return
        out.print(
            f"[green]✓[/] wrote {output}: {entry} at {res.snapshot[:12]}, "
            f"{plural(res.arrays, 'array')}, {plural(res.refs, 'chunk ref')}, "
            f"{plural(len(res.sources), 'source')} at {res.site}",
            highlight=False,
        )


# ---------------------------------------------------------------- stats
STATS_HELP = """Show or forget the local access statistics: which chunks were read.

What: each chunk a hyperslab store hands to a reader on this machine
(open_store, open_dataset, engine="hyperslab"; from the chunk cache,
inlined in the map, or fetched from a site) adds one to a per-day count
under its repository id, snapshot, entry, array and chunk key (e.g.
entry/data/data/3.0.0). Metadata reads are not counted. No data,
credentials or paths of your files are recorded; the repository's display
name is, so that listings can say which repository an id is. Nothing
leaves this machine: the sync engine's hot-chunk policy ("read >= K times
in the last D days") reads it here.

Where: CACHE_DIR/access-stats.sqlite (CACHE_DIR: see `hyperslab cache
--help`), shared safely by all processes on the machine. A process
buffers its counts in memory and writes them every few seconds and when
it exits.

Opt out: HYPERSLAB_ACCESS_STATS=0 records nothing; per store,
open_store(..., stats=False). `hyperslab stats clear` forgets the counts.
"""

stats_app = typer.Typer(name="stats", help=STATS_HELP, no_args_is_help=True, rich_markup_mode=None)
app.add_typer(stats_app, name="stats")

StatsFileOpt = Annotated[
    Path | None,
    typer.Option(
        "--file",
        help="The statistics database (default: CACHE_DIR/access-stats.sqlite).",
    ),
]


def _open_stats(path: Path | None) -> Any:
    from hyperslab.reading.access_stats import AccessStats

    return AccessStats(path)


def _stats_repos(known: dict[str, str], repo: str | None) -> list[str]:
    """Repository ids that ``--repo`` names: an id, a unique id prefix, a display name,
    or a repository URL/path (opened to read its id)."""
    from hyperslab.errors import BadInputError

    if repo is None:
        return list(known)
    if repo in known:
        return [repo]
    same = [i for i, d in known.items() if i.startswith(repo) or d == repo]
    if len(same) > 1:
        raise BadInputError(f"--repo {repo!r} matches several repositories: {', '.join(same)}")
    if same:
        return same
    from hyperslab.references.repository import Repository

    return [Repository.open(repo).id]


@stats_app.command("show")
def stats_show(
    repo: Annotated[
        str | None,
        typer.Option(
            "--repo",
            help="Only this repository: its id (or a unique prefix), or its URL/path.",
        ),
    ] = None,
    min_reads: Annotated[
        int, typer.Option("--min-reads", min=1, help="List chunks read at least K times.")
    ] = 1,
    days: Annotated[
        int | None,
        typer.Option(
            "--days", min=1, help="Count only reads of the last D days (UTC, today included)."
        ),
    ] = None,
    entry: Annotated[
        str, typer.Option("--entry", help="Only entries matching this glob (* matches /).")
    ] = "*",
    array: Annotated[
        str, typer.Option("--array", help="Only arrays matching this glob, e.g. 'entry/data/*'.")
    ] = "*",
    limit: Annotated[
        int | None,
        typer.Option(
            "--limit",
            min=0,
            help="Most chunks listed per repository (default 20; --json: all; 0: all).",
        ),
    ] = None,
    path: StatsFileOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Totals per repository, and the most read chunks (the sync engine's hot chunks).

    Examples:

      hyperslab stats show

      hyperslab stats show --repo s3://beamline/repo --min-reads 5 --days 7

      hyperslab stats show --repo 3f2a9c --entry 'run42/*' --json
    """
    from rich.table import Table

    with handle_errors(as_json):
        stats = _open_stats(path)
        summary = stats.summary()
        known = {r.repo: r.display for r in summary.repositories}
        ids = _stats_repos(known, repo)
        cap = limit if limit is not None else (0 if as_json else 20)
        hot = {
            rid: stats.hot_chunks(
                rid,
                entry_glob=entry,
                array_glob=array,
                min_reads=min_reads,
                days=days,
                limit=cap or None,
            )
            for rid in ids
        }
        doc = summary.to_json()
        doc["repositories"] = [r for r in doc["repositories"] if r["repo"] in hot]
        query = {"repo": repo, "entry": entry, "array": array, "min_reads": min_reads}
        if as_json:
            rows = [{"repo": rid, **c._asdict()} for rid, chunks in hot.items() for c in chunks]
            print(json.dumps({"ok": True, **doc, "query": {**query, "days": days}, "hot": rows}))
            return
        state = "on" if summary.enabled else "off (HYPERSLAB_ACCESS_STATS)"
        out.print(f"access statistics  {summary.path}  (recording {state})", highlight=False)
        if not doc["repositories"]:
            out.print("no chunk reads recorded" + (f" for {repo}" if repo else ""))
            return
        t = Table("id", "entries", "chunks", "reads", "first", "last", "repository", box=None)
        for r in summary.repositories:
            if r.repo in hot:
                counts = (f"{n:,}" for n in (r.entries, r.chunks, r.reads))
                t.add_row(r.repo[:12], *counts, r.first_day, r.last_day, r.display)
        out.print(t)
        window = f" in the last {days} day(s)" if days else ""
        for rid, chunks in hot.items():
            title = f"{known.get(rid, rid)}: chunks read >= {min_reads} time(s){window}"
            out.print(f"\n{title}" + ("" if chunks else ": none"), highlight=False)
            h = Table("reads", "entry", "chunk key", box=None)
            for c in chunks:
                h.add_row(f"{c.reads:,}", c.entry, c.key)
            if chunks:
                out.print(h)
            if cap and len(chunks) == cap:
                out.print(f"(first {cap} shown; --limit 0 shows all)")


@stats_app.command("clear")
def stats_clear(
    older_than: Annotated[
        int | None,
        typer.Option("--older-than", min=1, help="Forget only reads before the last D days (UTC)."),
    ] = None,
    path: StatsFileOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Forget recorded chunk reads (all processes'; recording goes on unless opted out).

    Examples:

      hyperslab stats clear

      hyperslab stats clear --older-than 90 --json
    """
    with handle_errors(as_json):
        stats = _open_stats(path)
        removed = stats.clear(older_than=older_than)
        doc = {"path": str(stats.path), "older_than": older_than, "removed_reads": removed}
        if as_json:
            print(json.dumps({"ok": True, **doc}))
        else:
            which = f" older than the last {older_than} day(s)" if older_than else ""
            out.print(f"forgot {removed:,} chunk reads{which} in {stats.path}", highlight=False)
