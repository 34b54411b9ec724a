"""Repository commands of the ``hyperslab`` CLI: init, ingest, log, show, diff,
branch, tag, fsck, gc, upgrade, search. (Registered on :data:`hyperslab.cli.app.app`.)

REPO is a URL (``file://``, ``s3://``, ``memory://``), a local path, or
``SITE:path`` with SITE a site in ``hyperslab.toml``.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.table import Table

from hyperslab.cli.app import (
    AuthorOpt,
    DaskOpt,
    InlineThresholdOpt,
    JsonOpt,
    QuietOpt,
    RefmapFormatOpt,
    app,
    describe_arrays,
    err,
    handle_errors,
    note_frames_left_out,
    out,
    plural,
    progress_bar,
    show_progress,
)
from hyperslab.errors import BadInputError, CorruptError, HyperslabError

RepoArg = Annotated[
    str, typer.Argument(help="Repository: file:// or s3:// URL, local path, or SITE:path.")
]
RepoOpt = Annotated[
    str,
    typer.Option(
        "--repo", "-r", help="Repository: file:// or s3:// URL, local path, or SITE:path."
    ),
]
BranchOpt = Annotated[str, typer.Option("--branch", "-b", help="Branch to read or move.")]


def _open(spec: str) -> Any:
    from hyperslab.references.repository import Repository

    return Repository.open(spec)


def _emit(doc: dict[str, Any]) -> None:
    print(json.dumps({"ok": True, **doc}, default=str))


# ---------------------------------------------------------------- init
@app.command()
def init(
    repo: RepoArg,
    single_writer: Annotated[
        bool,
        typer.Option(
            help="Allow a site that ignores conditional writes; then only ONE process may "
            "ever write to this repository."
        ),
    ] = False,
    branch: BranchOpt = "main",
    format_version: Annotated[
        int | None,
        typer.Option(
            "--format-version",
            help="Repository format: 3 (the default: compressed tree nodes) or 2, which "
            "hyperslab versions before format 3 also read.",
            show_default=False,
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Create an empty repository (with branch `main` at an empty snapshot).

    The site is probed first: a second create-only write must fail. Sites that
    ignore conditional writes (e.g. s3rver) are refused unless --single-writer.

    Examples:

      hyperslab init ./repo

      hyperslab init s3://beamline/repos/run42

      hyperslab init beamline:repos/run42      # a site from hyperslab.toml
    """
    from hyperslab.references.repository import Repository

    with handle_errors(as_json):
        from hyperslab.references.format import FORMAT_VERSION

        version = FORMAT_VERSION if format_version is None else format_version
        r = Repository.init(repo, single_writer=single_writer, branch=branch, version=version)
        head = r.branch_head(branch)[0]  # read directly: some servers' listings lag
        if as_json:
            _emit({"repo": r.display, "id": r.id, "branch": branch, "snapshot": head})
        else:
            out.print(f"initialised repository {repo} (branch {branch} at {head[:12]})")


# ---------------------------------------------------------------- ingest
@app.command()
def ingest(
    sources: Annotated[
        list[str], typer.Argument(help="HDF5/NeXus files or directories (searched recursively).")
    ],
    repo: RepoOpt,
    name: Annotated[
        str | None,
        typer.Option(
            "--name",
            "-n",
            help="Entry name (default: the file stem; '/' makes folders). With several "
            "files and no --combine-*, the folder the entries go in.",
        ),
    ] = None,
    branch: BranchOpt = "main",
    message: Annotated[str | None, typer.Option("--message", "-m", help="Commit message.")] = None,
    author: AuthorOpt = None,
    upload_sources: Annotated[
        bool,
        typer.Option(
            help="Also copy the HDF5 files into the repository's site (verified by sha256)."
        ),
    ] = False,
    new_dim: Annotated[
        str | None,
        typer.Option(
            "--combine-new-dim", help="Combine all files into one entry along a new axis."
        ),
    ] = None,
    concat_dim: Annotated[
        int | None,
        typer.Option("--combine-dim", help="Combine all files into one entry along this axis."),
    ] = None,
    inline_threshold: InlineThresholdOpt = 500,
    fmt: RefmapFormatOpt = None,
    allow_broken_links: Annotated[
        bool, typer.Option(help="Report dangling links instead of failing the file.")
    ] = False,
    fail_fast: Annotated[
        bool, typer.Option(help="Stop at the first bad file; commit nothing.")
    ] = False,
    dask: DaskOpt = None,
    compress: Annotated[
        str | None,
        typer.Option(
            "--compress",
            metavar="CODEC",
            help="Then compress the new entries (bitshuffle-lz4, zstd or blosc2) in a second "
            "commit: see `hyperslab compress`.",
            show_default=False,
        ),
    ] = None,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Convert files and commit them as entries of one new snapshot.

    Each file becomes an entry named by its stem (or --name). Sources are named
    by content (sha256) inside the maps, so re-ingesting an unchanged file changes
    nothing. Concurrent ingests to one branch are safe: changes to different
    entries are merged automatically; the same entry changed by two jobs gives a
    conflict error (exit 5) to the later one.

    Examples:

      hyperslab ingest scan_0007.nxs --repo ./repo --name run42/scan_0007

      hyperslab ingest /data/run42/ --repo beamline:repo --name run42 -m "run 42"

      hyperslab ingest frames_*.h5 --repo ./repo --name run43 --combine-dim 0

      hyperslab ingest /data/run44/ --repo beamline:repo --name run44 --dask local:8

    With --dask, each entry's work (open, chunk index, sha256, CRC-32C, map, upload)
    is a task on a dask.distributed cluster and this process commits: the same
    entries and snapshot tree as without it. A worker that dies has its tasks rerun
    elsewhere; every object is content-addressed, so nothing is written twice.
    """
    from hyperslab.convert.cluster import dask_client
    from hyperslab.convert.hdf5 import ConvertOptions
    from hyperslab.convert.ingest import ingest as do_ingest
    from hyperslab.convert.ingest import plan_entries

    with handle_errors(as_json):
        squeeze = None
        if compress is not None:  # the compressor (and the reader it verifies with) only then
            from hyperslab.convert.compress import CompressOptions

            squeeze = CompressOptions(compress).checked()
        if new_dim is not None and concat_dim is not None:
            raise BadInputError("give at most one of --combine-new-dim and --combine-dim")
        if fmt not in (None, "json", "parquet"):
            raise BadInputError(f"--format must be json or parquet, not {fmt!r}")
        r = _open(repo)
        combine = new_dim is not None or concat_dim is not None
        total = len(plan_entries(sources, name, combine))
        options = ConvertOptions(
            inline_threshold=inline_threshold, allow_broken_links=allow_broken_links
        )
        left = note_frames_left_out(sources, as_json)  # said first: whatever happens next
        with progress_bar(show_progress(as_json, quiet)) as prog, dask_client(dask) as client:
            task = prog.add_task("ingesting", total=total, item="")

            def on_entry(entry: str, res: dict[str, Any] | HyperslabError) -> None:
                prog.update(task, item=entry, advance=1)
                if isinstance(res, HyperslabError) and not as_json:
                    err.print(f"[red]✗[/] {entry}: {res.message} [dim]({res.code})[/]")

            result = do_ingest(
                r,
                sources,
                name=name,
                branch=branch,
                message=message,
                author=author,
                upload_sources=upload_sources,
                options=options,
                dim=concat_dim,
                new_dim=new_dim,
                fail_fast=fail_fast,
                refmap_format=fmt,  # type: ignore[arg-type]
                on_entry=on_entry,
                client=client,
            )
        c = result.commit
        squeezed = None
        if squeeze is not None and result.entries:
            from hyperslab.cli.compress import run_compress

            squeezed = run_compress(
                r,
                [e["name"] for e in result.entries],
                squeeze,
                branch=branch,
                message=None,
                author=author,
                dask=dask,
                as_json=as_json,
                quiet=quiet,
            )
        if as_json:
            doc = {"ok": not result.failed, **result.to_json()}
            if left:
                doc["frames_left_out"] = left
            if squeezed is not None:
                doc["compressed"] = squeezed.to_json()
            print(json.dumps(doc, default=str))
        else:
            for e in result.entries:
                up = f", uploaded {len(e['uploaded'])} source(s)" if e["uploaded"] else ""
                skipped = e["counts"].get("skipped", 0)
                out.print(
                    f"[green]✓[/] {e['name']}: {describe_arrays(e['arrays'], e['counts'])}, "
                    f"{plural(e['refs'], 'chunk ref')}, {e['format']} map{up}"
                    + (
                        f"; {plural(skipped, 'dataset')} skipped (unreadable here)"
                        if skipped
                        else ""
                    ),
                    highlight=False,
                )
            if c is not None and c.snapshot is not None:
                out.print(
                    f"committed {c.snapshot.short} to {branch}: {len(c.added)} added, "
                    f"{len(c.modified)} modified, {len(c.unchanged)} unchanged"
                    + (f" (after {c.attempts} attempts)" if c.attempts > 1 else "")
                )
            elif c is not None:
                out.print(f"nothing changed: {branch} already holds these entries")
            if squeezed is not None:
                from hyperslab.cli.compress import report

                report(squeezed, branch)
            if result.failed:
                err.print(f"[red]{len(result.failed)} entr(y/ies) failed[/]")
        if result.failed:
            raise typer.Exit(result.failed[0][1].exit_status)


# ---------------------------------------------------------------- log / show / diff
@app.command("log")
def log_cmd(
    repo: RepoArg,
    ref: Annotated[
        str | None, typer.Argument(help="Branch, tag or snapshot (default: the --branch).")
    ] = None,
    branch: BranchOpt = "main",
    limit: Annotated[int | None, typer.Option("--limit", "-n", help="At most this many.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """History of a branch (newest first, following first parents)."""
    with handle_errors(as_json):
        r = _open(repo)
        snaps = list(r.log(ref or branch, limit))
        if as_json:
            _emit({"ref": ref or branch, "snapshots": [s.to_json() for s in snaps]})
            return
        for s in snaps:
            ch = s.changes
            what = ", ".join(f"{ch[k]} {k}" for k in ("added", "modified", "removed") if ch.get(k))
            out.print(
                f"[yellow]{s.short}[/] {s.time} [dim]{s.author}[/]  {s.message}"
                + (f"  [dim]({what}; {s.n_entries} entries)[/]" if what else ""),
                highlight=False,
            )


@app.command()
def show(
    repo: RepoArg,
    ref: Annotated[str, typer.Argument(help="Branch, tag or snapshot id (prefix).")] = "main",
    entries: Annotated[
        list[str] | None, typer.Argument(help="Entries to show array by array.")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """A snapshot: its entries, or with ENTRY names, their arrays and sources."""
    with handle_errors(as_json):
        r = _open(repo)
        snap = r.snapshot(r.resolve(ref))
        if entries:
            recs = [r.entry(snap, e) for e in entries]
            if as_json:
                _emit({"snapshot": snap.to_json(), "entries": recs})
                return
            for rec in recs:
                _print_entry(rec)
            return
        items = list(r.entries(snap))
        if as_json:
            _emit(
                {
                    "snapshot": snap.to_json(),
                    "entries": [{"name": n, **v} for n, v in items],
                }
            )
            return
        out.print(
            f"snapshot [yellow]{snap.id}[/]\n{snap.time} by {snap.author}: {snap.message}\n"
            f"parents: {', '.join(p[:12] for p in snap.parents) or '-'}",
            highlight=False,
        )
        t = Table("entry", "arrays", "files", "title / sample", box=None)
        for n, v in items:
            c = v.get("catalog", {})
            desc = " / ".join(str(c[k]) for k in ("title", "sample") if k in c)
            t.add_row(n, str(c.get("arrays", "")), ", ".join(c.get("files", [])), desc)
        out.print(t)


def _print_entry(rec: dict[str, Any]) -> None:
    out.print(
        f"[bold]{rec['name']}[/]  refmap {rec['refmap']['id'][:12]} "
        f"({rec['refmap']['format']}, {rec['refmap']['refs']} refs)",
        highlight=False,
    )
    for s in rec["sources"]:
        out.print(f"  source {s['name']}  {s['size']} B  sha256 {s['id'][:16]}…", highlight=False)
    t = Table("array", "shape", "chunks", "dtype", "codecs", "status", box=None)
    for path, a in rec["arrays"].items():
        t.add_row(
            path,
            "×".join(map(str, a["shape"])) or "()",
            "×".join(map(str, a["chunks"])) or "()",
            str(a["dtype"]) if isinstance(a["dtype"], str) else "compound",
            ",".join(c for c in a["codecs"] if c),
            a["status"] + (f" ({a['reason']})" if a.get("reason") else ""),
        )
    out.print(t)


@app.command()
def diff(
    repo: RepoArg,
    a: Annotated[str, typer.Argument(help="Older ref (branch, tag, snapshot).")],
    b: Annotated[str, typer.Argument(help="Newer ref.")],
    as_json: JsonOpt = False,
) -> None:
    """Entries added, removed or changed between two snapshots (with array changes)."""
    with handle_errors(as_json):
        r = _open(repo)
        changes = r.diff(a, b)
        rows = []
        for name, (va, vb) in changes.items():
            row: dict[str, Any] = {"entry": name}
            if va is None:
                row["change"] = "added"
            elif vb is None:
                row["change"] = "removed"
            else:
                row["change"] = "modified"
                ra, rb = r.read_json("entry", va["id"]), r.read_json("entry", vb["id"])
                row["arrays"] = _array_changes(ra["arrays"], rb["arrays"])
                sa = {s["name"]: s["id"] for s in ra["sources"]}
                sb = {s["name"]: s["id"] for s in rb["sources"]}
                row["sources_changed"] = sorted(
                    n for n in set(sa) | set(sb) if sa.get(n) != sb.get(n)
                )
            rows.append(row)
        if as_json:
            _emit({"a": r.resolve(a), "b": r.resolve(b), "changes": rows})
            return
        if not rows:
            out.print("no differences")
        mark = {"added": "[green]+[/]", "removed": "[red]-[/]", "modified": "[yellow]~[/]"}
        for row in rows:
            out.print(f"{mark[row['change']]} {row['entry']}", highlight=False)
            for n in row.get("sources_changed", []):
                out.print(f"    source {n} changed", highlight=False)
            for ch in row.get("arrays", []):
                out.print(f"    {ch}", highlight=False)


def _array_changes(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    outl = []
    for p in sorted(set(a) | set(b)):
        if p not in a:
            outl.append(f"+ {p} {b[p]['shape']} {b[p]['dtype']}")
        elif p not in b:
            outl.append(f"- {p}")
        elif a[p] != b[p]:
            keys = [
                k
                for k in ("shape", "dtype", "chunks", "codecs", "status")
                if a[p].get(k) != b[p].get(k)
            ]
            detail = ", ".join(f"{k} {a[p].get(k)} → {b[p].get(k)}" for k in keys) or "data changed"
            outl.append(f"~ {p}: {detail}")
    return outl


# ---------------------------------------------------------------- branch / tag
def _list_refs(what: str, refs: dict[str, str], as_json: bool) -> None:
    if as_json:
        _emit({what: refs})
        return
    for n, sid in refs.items():
        out.print(f"{n}  [yellow]{sid[:12]}[/]", highlight=False)


@app.command()
def branch(
    repo: RepoArg,
    name: Annotated[str | None, typer.Argument(help="Branch to create (omit to list).")] = None,
    from_ref: Annotated[
        str, typer.Option("--from", help="Branch, tag or snapshot to start at.")
    ] = "main",
    delete: Annotated[
        bool, typer.Option("--delete", help="Delete the branch (not its snapshots).")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """List branches, create one (--from REF), or delete one (--delete)."""
    with handle_errors(as_json):
        r = _open(repo)
        if name is None:
            _list_refs("branches", r.branches(), as_json)
            return
        if delete:
            r.delete_branch(name)
            if as_json:
                _emit({"deleted": name})
            else:
                out.print(f"deleted branch {name}")
            return
        sid = r.create_branch(name, from_ref)
        if as_json:
            _emit({"branch": name, "snapshot": sid})
        else:
            out.print(f"created branch {name} at {sid[:12]}")


@app.command()
def tag(
    repo: RepoArg,
    name: Annotated[str | None, typer.Argument(help="Tag to create (omit to list).")] = None,
    ref: Annotated[str, typer.Argument(help="Branch, tag or snapshot to tag.")] = "main",
    message: Annotated[
        str, typer.Option("--message", "-m", help="Why this snapshot matters.")
    ] = "",
    as_json: JsonOpt = False,
) -> None:
    """List tags, or tag a snapshot (tags never move; creating an existing tag fails)."""
    with handle_errors(as_json):
        r = _open(repo)
        if name is None:
            _list_refs("tags", r.tags(), as_json)
            return
        sid = r.create_tag(name, ref, message)
        if as_json:
            _emit({"tag": name, "snapshot": sid})
        else:
            out.print(f"tagged {sid[:12]} as {name}")


# ---------------------------------------------------------------- fsck / gc / search
@app.command()
def fsck(
    repo: RepoArg,
    quick: Annotated[
        bool, typer.Option(help="Check uploaded sources by size only (no re-hash).")
    ] = False,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Check every object reachable from any branch or tag: present and matching its hash.

    Exit status 0 only if the repository is clean; 6 if anything is missing or corrupt.
    """
    from hyperslab.references.fsck import fsck as do_fsck

    with handle_errors(as_json):
        r = _open(repo)
        with progress_bar(show_progress(as_json, quiet)) as prog:
            task = prog.add_task("checking", total=None, item="")

            def tick(what: str, n: int) -> None:
                prog.update(task, advance=n, item=what)

            report = do_fsck(r, verify_sources=not quick, progress=tick)
        if as_json:
            print(json.dumps({"ok": report.clean, **report.to_json()}))
        else:
            counts = report.describe()
            for w in report.warnings:
                err.print(f"[yellow]warning[/]: {w['error']}", highlight=False)
            if report.clean:
                out.print(
                    f"[green]clean[/]: {counts} ({report.bytes_checked} bytes hashed)",
                    soft_wrap=True,
                )
            else:
                for p in report.problems:
                    err.print(
                        f"[red]{p['problem']}[/] {p['kind']} {p['id']}: {p.get('error', '')}",
                        highlight=False,
                    )
                err.print(f"[red]{len(report.problems)} problem(s)[/] ({counts})")
            if report.archivable:
                done = report.archivable
                size = sum(int(s.get("size", 0)) for s in done)
                names = ", ".join(s["name"] for s in done[:3]) + (" …" if len(done) > 3 else "")
                out.print(
                    f"{plural(len(done), 'source file')} ({size / 1e6:,.1f} MB: {names}) "
                    "are read only by snapshots from before `compress`: no branch or tag "
                    "needs them, archive them when you choose",
                    highlight=False,
                )
        if not report.clean:
            raise typer.Exit(CorruptError.exit_status)


@app.command()
def gc(
    repo: RepoArg,
    older_than: Annotated[
        str,
        typer.Option(
            help="Grace period: only unreachable objects older than this are deleted "
            "(e.g. 7d, 12h; at least 2h unless --force)."
        ),
    ] = "7d",
    dry_run: Annotated[
        bool, typer.Option(help="List what would be deleted; delete nothing.")
    ] = False,
    force: Annotated[bool, typer.Option(help="Allow a grace period under 2h.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Delete objects no branch or tag reaches (old snapshots of deleted branches,
    maps of interrupted ingests), keeping anything younger than the grace period."""
    from hyperslab.references.gc import gc as do_gc
    from hyperslab.references.gc import parse_duration

    with handle_errors(as_json):
        r = _open(repo)
        report = do_gc(r, older_than=parse_duration(older_than), dry_run=dry_run, force=force)
        if as_json:
            _emit(report.to_json())
            return
        verb = "would delete" if dry_run else "deleted"
        for k in report.deleted[:50]:
            out.print(f"  {k}", highlight=False)
        out.print(
            f"{verb} {len(report.deleted)} object(s), {report.bytes_freed} bytes; kept "
            f"{report.reachable} reachable and {report.kept_young} younger than {older_than}"
        )


@app.command()
def upgrade(
    repo: RepoArg,
    dry_run: Annotated[
        bool, typer.Option(help="Say which format the repository would move to; change nothing.")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Move a repository to the newest format, in place (format 3: compressed tree
    nodes, no catalog index for small leaves; commits send 3-4x fewer bytes).

    Only repo.json changes, by compare-and-swap; nothing stored is rewritten, so
    every snapshot, tag and log stays as it was. The next commit writes the new
    format. Upgrade once every reader and writer runs a hyperslab that reads it:
    older versions refuse the repository after. Running it again does nothing.

    Examples:

      hyperslab upgrade ./repo --dry-run

      hyperslab upgrade beamline:repos/run42
    """
    from hyperslab.references.upgrade import upgrade as do_upgrade

    with handle_errors(as_json):
        r = _open(repo)
        result = do_upgrade(r, dry_run=dry_run)
        if as_json:
            _emit(result.to_json())
        elif not result.needed:
            out.print(f"{r.display} is already repository format {result.after}: nothing to do")
        elif dry_run:
            out.print(
                f"would upgrade {r.display} from repository format {result.before} to "
                f"{result.after}"
            )
        else:
            out.print(
                f"upgraded {r.display} from repository format {result.before} to "
                f"{result.after}; snapshots, tags and logs are unchanged"
            )


@app.command()
def search(
    repo: RepoArg,
    query: Annotated[
        str,
        typer.Argument(
            help="Terms that must all hold, e.g. 'sample=Si energy>10 title~\"*scan*\"' "
            "(the language is described above)."
        ),
    ],
    ref: Annotated[str, typer.Option("--ref", help="Branch, tag or snapshot to search.")] = "main",
    limit: Annotated[
        int,
        typer.Option(
            "--limit", "-n", help="Show at most this many matches (0: all); all are counted."
        ),
    ] = 100,
    as_json: JsonOpt = False,
) -> None:
    """Find entries by catalog metadata.

    Terms (all must hold): KEY=VALUE (numbers as numbers, text ignoring case, A|B for
    either), KEY>N / >= / < / <= (numbers; ISO times as text), KEY~GLOB (e.g.
    title~"*scan*"), KEY!=V, KEY!~GLOB, a bare WORD (any value contains it), -WORD.
    Keys: name, files, title, sample, energy, start_time, end_time, instrument,
    beamline, detector, signal_shape, ..., and root attributes as @NAME. A key no
    entry records, > or < with neither a number nor an ISO time, an unclosed [ and a
    bare - or @ are refused (bad_query, exit 2), with the close keys named.

    Example:

      hyperslab search ./repo 'sample~insulin energy>12 start_time>=2026-01-15'
    """
    from hyperslab.references.search import search as do_search

    with handle_errors(as_json):
        r = _open(repo)
        if limit < 0:
            raise BadInputError(f"--limit must be 0 (all) or more, not {limit}")
        hits = do_search(r, ref, query, limit=limit or None)
        if as_json:
            _emit(
                {
                    "query": query,
                    "total": hits.total,
                    "hits": [{"entry": n, "catalog": c} for n, c in hits],
                }
            )
            return
        t = Table("entry", "title", "sample", "energy", "start_time", box=None)
        for n, c in hits:
            t.add_row(
                n,
                str(c.get("title", "")),
                str(c.get("sample", "")),
                f"{c['energy']} {c.get('energy_units', '')}".strip() if "energy" in c else "",
                str(c.get("start_time", "")),
            )
        out.print(t)
        if hits.total > len(hits):
            out.print(f"{hits.total} matches, {len(hits)} shown (--limit 0 shows all)")
        else:
            out.print(f"{hits.total} match(es)")
