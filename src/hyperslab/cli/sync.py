"""Replication commands of the ``hyperslab`` CLI: ``hyperslab sync`` and
``hyperslab replicate``. (Registered on :data:`hyperslab.cli.app.app`.)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TransferSpeedColumn,
)

from hyperslab.cli.app import JsonOpt, QuietOpt, app, err, handle_errors, out, show_progress
from hyperslab.errors import BadInputError

SYNC_HELP = """Copy a repository's branches (and tags, hot chunks, source files) to another site.

SRC and DST are repositories: a local path, file:// or s3:// URL, or SITE:path
with SITE from hyperslab.toml. DST may be empty: sync creates the replica.

What happens: the selected refs are compared (equal heads: done, a constant
few requests whatever the size); the source history is walked back to what DST
has, diffing entry trees so only changes are read; DST is asked what it lacks;
the missing objects are copied in parallel, each checked against its sha256
when read and verified at DST after upload; then DST's branches fast-forward by
compare-and-swap and tags are created. Nothing at DST is ever deleted or moved
backwards. Killed? Run the same command again: it copies only what is missing.

A DST branch with commits the source lacks is a conflict (exit 5, both heads
shown, nothing written); --force moves it anyway (its commits stay stored, only
unreferenced). An object that fails verification fails the sync (exit 7), and
no ref moves.

Entry records, refmaps and checksums are written to DST packed, one pack per
entry-tree leaf plus a small locator saying where each object is: a first
sync of thousands of entries makes a few hundred uploads instead of one per
object. Readers at DST find packed objects transparently. --no-pack writes
them one object each, the layout ingest writes.

Hot chunks (--hot RULES.toml) are read from the source's files, packed, stored
in DST's chunks/ and indexed there, so readers at DST get them without the
source file; --stats adds chunks read often on this machine ([[used]] rules).
The rules format: the README, "Replicating between sites" (and examples/hot.toml).

Examples:

  hyperslab sync beamline:mx cloud:mx                       # branch main
  hyperslab sync beamline:mx cloud:mx --all-branches --tags --dry-run
  hyperslab sync beamline:mx ~/mx-copy --sources            # with the HDF5 files
  hyperslab sync beamline:mx cloud:mx --hot hot.toml --json
"""


def _rate(text: str | None) -> int | None:
    if text is None:
        return None
    from hyperslab.config import parse_size

    value = text[:-2] if text.lower().endswith("/s") else text
    rate: int | None = None
    if value[-1:].isdigit() or value[-1:] in "kKmMgG":  # rclone style: 10M = 10 MiB/s
        units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
        try:
            if value[-1:].lower() in units:
                rate = int(float(value[:-1]) * units[value[-1].lower()])
            else:
                rate = int(value)
        except ValueError:
            pass
    if rate is None:
        rate = parse_size(value, where="--bwlimit")
    if rate < 0:
        raise BadInputError(f"--bwlimit must not be negative, got {text!r} (0: no limit)")
    return rate or None


def _sync_progress(enabled: bool) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TextColumn("{task.fields[objects]} objects", style="dim"),
        TimeElapsedColumn(),
        console=err,
        disable=not enabled,
        transient=True,
    )


def run_sync(
    src: Any,
    dst: Any,
    *,
    show: bool,
    **kw: Any,
) -> Any:
    """One sync with a progress bar (bytes) when ``show``; returns the report."""
    from hyperslab.sync import sync

    with _sync_progress(show) as prog:
        task = prog.add_task("syncing", total=None, objects=0)
        count = [0]

        def tick(kind: str, n: int, nbytes: int) -> None:
            count[0] += n
            prog.update(task, advance=nbytes, objects=count[0], description=f"copying {kind}")

        return sync(src, dst, progress=tick, **kw)


def print_report(report: Any) -> None:
    """The plan, then (unless a dry run) any notes and what was copied: the same
    counts, notes and words as ``--json`` (read off the report's tallies)."""
    from hyperslab.sync.report import describe_plan, describe_result

    for line in describe_plan(report):
        out.print(line, highlight=False, markup=False, soft_wrap=True)
    if report.dry_run:
        out.print("[yellow]dry run[/]: nothing was written")
        return
    for line in describe_result(report):
        head, _, rest = line.partition(": ")
        style = "yellow" if head == "note" else "green"
        out.print(f"[{style}]{head}[/]: ", end="", highlight=False)
        out.print(rest, highlight=False, markup=False, soft_wrap=True)


@app.command("sync", help=SYNC_HELP)
def sync_cmd(
    src: Annotated[str, typer.Argument(help="Source repository (path, URL or SITE:path).")],
    dst: Annotated[str, typer.Argument(help="Destination repository (created if empty).")],
    branch: Annotated[
        list[str] | None,
        typer.Option("--branch", "-b", help="Branch to sync (repeatable; default main)."),
    ] = None,
    all_branches: Annotated[
        bool, typer.Option("--all-branches", help="Sync every branch of the source.")
    ] = False,
    tags: Annotated[bool, typer.Option("--tags", help="Also create the source's tags.")] = False,
    hot: Annotated[
        Path | None,
        typer.Option("--hot", help="Hot-chunk rules (TOML) saying which chunks to copy into DST."),
    ] = None,
    stats: Annotated[
        Path | None,
        typer.Option(
            "--stats",
            help="Access statistics database for [[used]] rules (default: this machine's).",
        ),
    ] = None,
    sources: Annotated[
        bool, typer.Option("--sources", help="Also copy the raw HDF5 files (sha256-verified).")
    ] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the plan (objects, bytes); write nothing.")
    ] = False,
    force: Annotated[
        bool, typer.Option("--force", help="Move a diverged destination branch anyway.")
    ] = False,
    no_pack: Annotated[
        bool,
        typer.Option(
            "--no-pack",
            help="Write entry records, refmaps and checksums one object each, not packed.",
        ),
    ] = False,
    jobs: Annotated[int, typer.Option("--jobs", "-j", help="Parallel transfers.")] = 16,
    bwlimit: Annotated[
        str | None,
        typer.Option("--bwlimit", help="Bandwidth cap for transfers, e.g. 10M (MiB/s), 500KB."),
    ] = None,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    with handle_errors(as_json):
        if all_branches and branch:
            raise BadInputError("give --branch or --all-branches, not both")
        from hyperslab.sync import HotRules

        rules = HotRules.load(hot) if hot is not None else None
        counts = None
        if rules is not None and rules.used:
            from hyperslab.reading.access_stats import resolve_stats

            counts = resolve_stats(str(stats) if stats else None, None)
        report = run_sync(
            src,
            dst,
            show=show_progress(as_json, quiet),
            branches=branch or None,
            all_branches=all_branches,
            tags=tags,
            hot=rules,
            stats=counts,
            sources=sources,
            dry_run=dry_run,
            force=force,
            pack=not no_pack,
            jobs=jobs,
            bwlimit=_rate(bwlimit),
        )
        if as_json:
            print(json.dumps(report.to_json()))
        else:
            print_report(report)


REPLICATE_HELP = """Run declarative replication jobs (for cron, systemd timers or --watch).

RULES is a TOML file of [[job]] tables, each one sync: `from` and `to`
repositories, `branches` (default ["main"]; ["*"] for all), `tags` (true or a
list), `hot` (a hot-chunk rules file) or inline `hot_rules`, `sources`.
Jobs run in order; a failing job does not stop the others.

Exit status: 0 when every job succeeded, else the status of the first failure
(5 conflict, 7 transient/failed copy, ...). A job that succeeded but skipped work
it was asked for (source files the `from` site does not hold) is marked ⚠, not
✓, with the same note as --json saying why; that is not a failure. With --watch, rounds repeat every
--interval seconds (default: the file's `interval`, else 60) until interrupted,
and the exit status is that of the last round. --json prints one report per
round (one JSON document per line).

Example replication.toml:

  [[job]]
  from = "beamline:mx"
  to = "cloud:mx"
  hot = "hot.toml"

  [[job]]
  from = "cloud:mx"
  to = "~/mx"
  branches = []
  tags = ["paper-2026"]
"""


@app.command("replicate", help=REPLICATE_HELP)
def replicate_cmd(
    rules: Annotated[Path, typer.Option("--rules", "-r", help="Replication rules (TOML).")],
    watch: Annotated[bool, typer.Option("--watch", help="Repeat until interrupted.")] = False,
    interval: Annotated[
        float | None, typer.Option("--interval", help="Seconds between rounds with --watch.")
    ] = None,
    stats: Annotated[
        Path | None,
        typer.Option("--stats", help="Access statistics database for [[used]] hot rules."),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Plan every job; write nothing.")
    ] = False,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    import functools
    import time

    from hyperslab.sync.replicate import OpenRepositories, ReplicationRules, run_round

    status = 0
    with handle_errors(as_json):
        if interval is not None and interval <= 0:
            raise BadInputError("--interval must be a positive number of seconds")
        spec = ReplicationRules.load(rules)
        counts = None
        if any(j.hot is not None and j.hot.used for j in spec.jobs):
            from hyperslab.reading.access_stats import resolve_stats

            counts = resolve_stats(str(stats) if stats else None, None)
        run = functools.partial(run_sync, show=show_progress(as_json, quiet))
        opened = OpenRepositories() if watch else None
        while True:
            rnd = run_round(spec, dry_run=dry_run, stats=counts, run=run, opened=opened)
            status = rnd.exit_status
            if as_json:
                print(json.dumps(rnd.to_json()), flush=True)
            else:
                for r in rnd.results:
                    if r.error is not None:
                        err.print(
                            f"[red]✗[/] {r.job.name}: [dim]({r.error.code})[/] {r.error.message}",
                            highlight=False,
                        )
                    elif r.report is not None:
                        _print_job(r.job.name, r.report)
            if not watch:
                break
            time.sleep(interval if interval is not None else spec.interval)
    raise typer.Exit(status)


def _print_job(name: str, rep: Any) -> None:
    """One replicate job that ran: ✓ when it did everything asked, ⚠ with the report's
    notes (as in --json) when it skipped some of it, e.g. sources no site could give."""
    from hyperslab.sync.report import describe_plan

    moved = ", ".join(f"{u.kind} {u.name} {u.status}" for u in rep.refs)
    if rep.dry_run:
        counts = list(describe_plan(rep))[-1]
    else:
        counts = f"copied: {rep.result.describe()}; {rep.bytes_copied:,} bytes"
    notes = rep.notes()
    mark = "[yellow]⚠[/]" if notes else "[green]✓[/]"
    out.print(f"{mark} {name}: ", end="", highlight=False)
    out.print(f"{moved or 'no refs'}; {counts}", highlight=False, markup=False, soft_wrap=True)
    for note in notes:
        out.print("  [yellow]note[/]: ", end="", highlight=False)
        out.print(note["message"], highlight=False, markup=False, soft_wrap=True)
