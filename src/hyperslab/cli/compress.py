"""``hyperslab compress``: re-encode entries into the repository (see
:mod:`hyperslab.convert.compress`). Registered on :data:`hyperslab.cli.app.app`."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from hyperslab.cli.app import (
    AuthorOpt,
    DaskOpt,
    JsonOpt,
    QuietOpt,
    app,
    err,
    handle_errors,
    out,
    plural,
    progress_bar,
    show_progress,
)
from hyperslab.errors import BadInputError

CodecOpt = Annotated[
    str,
    typer.Option(
        "--codec",
        "-c",
        help="bitshuffle-lz4 (what detectors and DIALS read), zstd or blosc2 "
        "(blosc2 with bitshuffle and LZ4).",
    ),
]


def _mb(n: int) -> str:
    return f"{n / 1e6:,.1f} MB" if n >= 1e5 else f"{n / 1e3:,.1f} kB"


def describe(summary: dict[str, Any]) -> str:
    """One line on a compressed entry (what ``compress`` and ``ingest --compress`` print)."""
    if summary.get("unchanged"):
        return f"{summary['name']}: already compressed with {summary['codec']}"
    raw, stored = summary["raw_bytes"], summary["stored_bytes"]
    saved = 100 * (1 - stored / raw) if raw else 0.0
    return (
        f"{summary['name']}: {plural(summary['chunks'], 'chunk')}, {_mb(raw)} of values → "
        f"{_mb(stored)} {summary['codec']} ({saved:.1f}% smaller; "
        f"{_mb(summary['stored_before'])} as stored before), "
        f"{plural(summary['packs'], 'pack')}"
    )


def run_compress(
    repo: Any,
    entries: list[str],
    options: Any,
    *,
    branch: str,
    message: str | None,
    author: str | None,
    dask: str | None,
    as_json: bool,
    quiet: bool,
    pack_bytes: int | None = None,
) -> Any:
    """Compress ``entries`` with a progress bar (in packs); the :class:`CompressResult`."""
    from hyperslab.convert.cluster import dask_client
    from hyperslab.convert.compress import PACK_RAW_BYTES, compress

    with progress_bar(show_progress(as_json, quiet)) as prog, dask_client(dask) as client:
        task = prog.add_task("compressing", total=None, item="")

        def planned(tasks: list[Any]) -> None:
            prog.update(task, total=len(tasks))

        def packed(t: Any) -> None:
            prog.update(task, advance=1, item=t.entry)

        return compress(
            repo,
            entries,
            options=options,
            branch=branch,
            message=message,
            author=author,
            client=client,
            on_plan=planned,
            on_pack=packed,
            pack_bytes=pack_bytes or PACK_RAW_BYTES,
        )


def report(result: Any, branch: str) -> None:
    """The text report of a :class:`CompressResult`."""
    for e in result.entries:
        out.print(f"[green]✓[/] {describe(e)}", highlight=False)
    if result.resumed:
        out.print(f"resumed: {plural(result.resumed, 'pack')} from an interrupted run reused")
    c = result.commit
    if c is not None and c.snapshot is not None:
        out.print(
            f"committed {c.snapshot.short} to {branch}: {len(c.modified)} "
            f"{'entry now reads' if len(c.modified) == 1 else 'entries now read'} compressed "
            "chunks; the snapshot before still reads the originals"
        )
    else:
        out.print(f"nothing changed: {branch} already holds these entries compressed")


@app.command("compress")
def compress_cmd(
    repo: Annotated[
        str, typer.Argument(help="Repository: file:// or s3:// URL, local path, or SITE:path.")
    ],
    entries: Annotated[
        list[str], typer.Argument(help="Entries to compress: names or shell globs ('run42/*').")
    ],
    codec: CodecOpt = "bitshuffle-lz4",
    level: Annotated[
        int | None,
        typer.Option(help="Compression level: zstd 1-22 (default 3), blosc2 0-9 (default 5)."),
    ] = None,
    frames_per_chunk: Annotated[
        int | None,
        typer.Option(
            help="New chunks of 3-D and larger arrays hold this many whole frames (first "
            "axis; TIFF strips and tiles become whole frames); default: chunks keep their shape.",
            min=1,
        ),
    ] = None,
    pack_size: Annotated[
        str,
        typer.Option(
            help="Values (before encoding) that one pack, one stored object, holds; also "
            "one task's memory. A resumed run must use the same.",
        ),
    ] = "128MiB",
    branch: Annotated[str, typer.Option("--branch", "-b", help="Branch to read and move.")] = (
        "main"
    ),
    message: Annotated[str | None, typer.Option("--message", "-m", help="Commit message.")] = None,
    author: AuthorOpt = None,
    dask: DaskOpt = None,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Re-encode entries' chunks into the repository and commit them.

    Reads every chunk once (through the usual routing and checksums), encodes it
    with --codec, checks that the encoding decodes to exactly the values read,
    and stores the chunks in packs in the repository. One new snapshot then
    reads the compressed chunks; the snapshot before still reads the original
    files, which are never deleted (archive them when you choose: fsck says
    which entries no longer need them).

    Examples:

      hyperslab compress ./repo run42/frames

      hyperslab compress ./repo 'run42/*' --codec zstd --level 5

      hyperslab compress s3://beamline/repo run43/frames --frames-per-chunk 10

      hyperslab compress ./repo 'run44/*' --dask local:8

    A killed run, run again with the same options, reuses the packs it finished
    and ends at the same entry records. With --dask each pack is a task on a
    dask.distributed cluster and this process commits.
    """
    from hyperslab.config import parse_size
    from hyperslab.convert.compress import CompressOptions
    from hyperslab.references.repository import Repository
    from hyperslab.references.selection import select_entries

    with handle_errors(as_json):
        options = CompressOptions(codec, level, frames_per_chunk).checked()
        pack_bytes = parse_size(pack_size, where="--pack-size")
        if pack_bytes < 1:
            raise BadInputError("--pack-size must be at least 1 byte")
        r = Repository.open(repo)
        head, _ = r.branch_head(branch)
        names = select_entries(r, head, entries, purpose="compress")
        result = run_compress(
            r,
            names,
            options,
            branch=branch,
            message=message,
            author=author,
            dask=dask,
            as_json=as_json,
            quiet=quiet,
            pack_bytes=pack_bytes,
        )
        if as_json:
            print(json.dumps({"ok": True, **result.to_json()}, default=str))
        else:
            report(result, branch)
            if not quiet and result.seconds > 0:
                err.print(f"[dim]{result.seconds:.1f} s[/]")
