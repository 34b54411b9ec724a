"""``hyperslab watch``: follow a directory a detector writes into and commit each file
once it is complete (the engine and its design: :mod:`hyperslab.convert.watch`).

Output is one line per event, flushed at once (log files, journald, ``tail -f``):
text by default, one JSON object per line with ``--json``.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import Annotated, Any

import typer

from hyperslab.cli.app import (
    AuthorOpt,
    InlineThresholdOpt,
    RefmapFormatOpt,
    app,
    describe_arrays,
    handle_errors,
    plural,
)
from hyperslab.errors import BadInputError

_TERSE = {"file_seen", "file_ready", "file_changed", "file_gone", "unchanged", "note"}


def _entries(n: int) -> str:
    return f"{n} entry" if n == 1 else f"{n} entries"


def _size(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 100_000 else f"{n} bytes"


def _text(e: dict[str, Any]) -> str:
    """One event as one line of text."""
    kind, path = e["event"], e.get("path", "")
    if kind == "started":
        what = "once" if e["once"] else f"every {e['interval']:g} s"
        return (
            f"watching {e['dir']} ({what}) into {e['repo']} branch {e['branch']} as "
            f"{e['template']!r}: settle {e['settle']:g} s, commits of up to "
            f"{e['batch_files']} files at most every {e['batch_seconds']:g} s; state {e['state']}"
        )
    if kind == "file_seen":
        return f"seen {path} ({_size(e['size'])})"
    if kind == "file_changed":
        return f"changed {path} ({_size(e['size'])}; was {e['was']}): settling again"
    if kind == "file_waiting":
        return f"waiting {path}: {e['reason']}"
    if kind == "file_ready":
        return (
            f"ready {path} -> {e['entry']}: {describe_arrays(e['arrays'], e['counts'])}, "
            f"{plural(e['refs'], 'chunk ref')}"
        )
    if kind == "file_failed":
        err = e["error"]
        return f"failed {path}: {err['message']} ({err['code']}); skipped until it changes"
    if kind == "file_gone":
        return f"gone {path}"
    if kind == "committed":
        names = ", ".join(f["entry"] for f in e["files"][:3])
        more = f" and {len(e['files']) - 3} more" if len(e["files"]) > 3 else ""
        return (
            f"committed {e['snapshot'][:12]} to {e['branch']}: {e['added']} added, "
            f"{e['modified']} modified, {e['unchanged']} unchanged ({names}{more})"
        )
    if kind == "unchanged":
        return f"nothing to commit: {_entries(e['entries'])} already as in the repository"
    if kind == "commit_failed":
        err = e["error"]
        then = f"; retrying in {e['retry']:g} s" if e["retry"] else "; those files are skipped"
        return f"commit failed: {err['message']} ({err['code']}){then}"
    if kind == "heartbeat":
        return (
            f"heartbeat: {plural(e['files'], 'file')} ({e['settling']} settling, "
            f"{e['waiting']} waiting, {e['pending']} to commit); this run "
            f"{e['committed']} committed in {plural(e['snapshots'], 'snapshot')}, "
            f"{e['failed']} failed; up {e['uptime_s']:g} s, max RSS {e['max_rss_mb']} MB"
        )
    if kind == "stopping":
        return f"stopping ({e['signal']}): committing the current batch"
    if kind == "stopped":
        return (
            f"stopped: {_entries(e['committed'])} committed in "
            f"{plural(e['snapshots'], 'snapshot')}, {e['unchanged']} unchanged, "
            f"{e['failed']} failed, {e['waiting']} not ready"
        )
    return f"{kind}: {e.get('message', '')}"


@app.command()
def watch(
    directory: Annotated[
        Path,
        typer.Argument(metavar="DIR", help="Directory the files arrive in (searched recursively)."),
    ],
    repo: Annotated[
        str,
        typer.Option(
            "--repo", "-r", help="Repository: file:// or s3:// URL, local path, or SITE:path."
        ),
    ],
    name: Annotated[
        str,
        typer.Option(
            "--name",
            "-n",
            help="Entry name template. Fields: {path} (under DIR, no suffix), {stem}, "
            "{name} (with suffix), {ext}, {dir} (folder under DIR), {parent} (the "
            "file's folder name), {root} (DIR's name).",
        ),
    ] = "{path}",
    branch: Annotated[str, typer.Option("--branch", "-b", help="Branch to commit to.")] = "main",
    settle: Annotated[
        float,
        typer.Option(help="Seconds a file's size, mtime and ctime must stay unchanged."),
    ] = 5.0,
    interval: Annotated[float, typer.Option(help="Seconds between scans of DIR.")] = 1.0,
    batch_files: Annotated[
        int, typer.Option(help="Commit once this many files are converted.")
    ] = 100,
    batch_seconds: Annotated[
        float,
        typer.Option(help="Otherwise commit at most once every this many seconds."),
    ] = 1.0,
    once: Annotated[
        bool, typer.Option(help="Commit what is complete now and exit (tests, cron).")
    ] = False,
    state: Annotated[
        Path | None,
        typer.Option(
            help="State file (default: one under the user state directory per "
            "repository, branch, DIR and template)."
        ),
    ] = None,
    heartbeat: Annotated[
        float, typer.Option(help="Seconds between heartbeat lines (0: none).")
    ] = 300.0,
    message: Annotated[
        str | None, typer.Option("--message", "-m", help="Commit message (default: the entries).")
    ] = None,
    author: AuthorOpt = None,
    upload_sources: Annotated[
        bool, typer.Option(help="Also copy the files into the repository's site.")
    ] = False,
    inline_threshold: InlineThresholdOpt = 500,
    fmt: RefmapFormatOpt = None,
    allow_broken_links: Annotated[
        bool, typer.Option(help="Report dangling links instead of waiting for their targets.")
    ] = False,
    frames: Annotated[
        bool,
        typer.Option(
            "--frames",
            help="Also follow folders of detector frames (CBF, TIFF): one entry a folder "
            "(named by the template from the folder's path), committed once complete.",
        ),
    ] = False,
    scan_frames: Annotated[
        int | None,
        typer.Option(help="With --frames: a series is complete at this many frames."),
    ] = None,
    end_marker: Annotated[
        str | None,
        typer.Option(help="With --frames: a series is complete once this file is in its folder."),
    ] = None,
    scan_quiet: Annotated[
        float | None,
        typer.Option(help="With --frames: a series is complete after this many quiet seconds."),
    ] = None,
    quiet: Annotated[
        bool,
        typer.Option(
            "--quiet", "-q", help="Only waits, failures, commits, heartbeats and the stop."
        ),
    ] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print one JSON object per event, one per line.")
    ] = False,
) -> None:
    """Follow a directory as a detector writes into it and commit each complete file.

    A file is ingested once it is complete: its size, mtime and ctime unchanged
    for --settle seconds, its HDF5 superblock not marked open for writing and
    not cut short, and no writer holding its HDF5 file lock. Complete files are
    committed in batches (up to --batch-files per snapshot, at most one commit
    every --batch-seconds). A file that fails to convert is reported and skipped
    until it changes. A small state file lets a restart skip finished files
    without reading them; unchanged files would write nothing anyway. SIGTERM or
    Ctrl-C commits the current batch, then exits. Output: one line per event
    (--json: one JSON object per line).

    With --frames (or any --scan-frames, --end-marker, --scan-quiet), each folder
    that holds detector frames is one series, one entry, committed once it has
    settled and is complete: --scan-frames N frames, the --end-marker file, or
    --scan-quiet seconds without a new frame. A series that grows later is
    committed again, with every frame.

    Examples:

      hyperslab watch /data/run42 --repo beamline:repo --name "run42/{stem}"

      hyperslab watch /data --repo ./repo --name "{dir}/{stem}" --settle 10

      hyperslab watch /data/run42 --repo ./repo --once --json    # cron, tests

      hyperslab watch /data/pilatus --repo ./repo --name "{path}" --end-marker scan.done
    """
    from hyperslab.convert.hdf5 import ConvertOptions
    from hyperslab.convert.watch import watch as do_watch
    from hyperslab.convert.watch_series import SeriesRule
    from hyperslab.references.repository import Repository

    stop = threading.Event()
    caught: list[str] = []  # the signal, until its "stopping" line is printed

    def emit(event: dict[str, Any]) -> None:
        if caught:  # printed here, not in the handler: a print may be under way there
            notice = {"event": "stopping", "time": event["time"], "signal": caught.pop()}
            print(json.dumps(notice) if as_json else f"{event['time']} {_text(notice)}")
        if quiet and event["event"] in _TERSE:
            return
        if as_json:
            line = json.dumps(event, default=str)
        else:  # the repository as the user named it (the URL is in the JSON event)
            shown = {**event, "repo": repo} if event["event"] == "started" else event
            line = f"{event['time']} {_text(shown)}"
        print(line, flush=True)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        if stop.is_set():  # a second signal: stop now
            raise KeyboardInterrupt
        caught.append(signal.Signals(signum).name)
        stop.set()

    with handle_errors(as_json):
        if fmt not in (None, "json", "parquet"):
            raise BadInputError(f"--format must be json or parquet, not {fmt!r}")
        if inline_threshold < 0:
            raise BadInputError(f"--inline-threshold must be at least 0, not {inline_threshold}")
        rules = (scan_frames, end_marker, scan_quiet)
        series = (
            SeriesRule(scan_frames, end_marker, scan_quiet)
            if frames or any(v is not None for v in rules)
            else None
        )
        r = Repository.open(repo)
        options = ConvertOptions(
            inline_threshold=inline_threshold, allow_broken_links=allow_broken_links
        )
        previous = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                previous[sig] = signal.signal(sig, on_signal)
        try:
            summary = do_watch(
                r,
                directory,
                name,
                branch=branch,
                settle=settle,
                interval=interval,
                batch_files=batch_files,
                batch_seconds=batch_seconds,
                heartbeat=heartbeat,
                once=once,
                state=state,
                message=message,
                author=author,
                upload_sources=upload_sources,
                options=options,
                refmap_format=fmt,  # type: ignore[arg-type]
                emit=emit,
                stop=stop,
                series=series,
            )
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        sys.stdout.flush()
        if once and summary.failed:
            raise typer.Exit(summary.failed[0][1].exit_status)
