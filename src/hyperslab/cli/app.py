"""What every ``hyperslab`` command shares: the Typer app, the consoles, the common
options, the error handler (named errors → exit statuses and ``--json``) and the
progress bars.

Every command prints a human summary by default and one JSON document with
``--json`` (errors included: ``{"ok": false, "error": {"code": ..., ...}}``).
Exit statuses are stable (see ``hyperslab --help``).
"""

from __future__ import annotations

import inspect
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console, ConsoleDimensions
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from hyperslab.errors import HyperslabError, local_path_error, redact
from hyperslab.version import __version__

#: the width tables are laid out in when stdout is not a terminal (no cell is ever cut)
PLAIN_WIDTH = 10_000

EXIT_HELP = """
Exit statuses: 0 ok · 1 internal error · 2 bad input (not HDF5, unsupported, unsafe name,
config) · 3 not found (incl. broken links) · 4 access denied · 5 conflict · 6 corrupt /
format version · 7 transient (retry) · 8 verification failed.
"""

app = typer.Typer(
    name="hyperslab",
    help="HDF5/NeXus files as virtual Zarr: reference maps, verified bit for bit.\n" + EXIT_HELP,
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
)
# soft_wrap: a message stays one line (wrapped by the terminal, not by rich), so logs
# and scripts that grep stderr see it whole whatever the terminal width
err = Console(stderr=True, soft_wrap=True)


class _WholeWhenPiped(Console):
    """stdout: on a terminal, its width; into a pipe, a log or CI (and no ``COLUMNS``),
    :data:`PLAIN_WIDTH`, so lines and table cells come whole (rich would lay out at 80
    columns and cut cells with '…'); tables are as wide as their contents. Decided at
    each print, for whatever stdout is then."""

    @property
    def size(self) -> ConsoleDimensions:
        dims = Console.size.fget(self)  # type: ignore[attr-defined]
        if not self.is_terminal and "COLUMNS" not in os.environ:
            return ConsoleDimensions(PLAIN_WIDTH, dims.height)
        return dims

    @size.setter
    def size(self, new_size: tuple[int, int]) -> None:
        Console.size.fset(self, new_size)  # type: ignore[attr-defined]


out = _WholeWhenPiped()

JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document instead of text.")]
AuthorOpt = Annotated[
    str | None, typer.Option(help="Author (default: $HYPERSLAB_AUTHOR or the user name).")
]
InlineThresholdOpt = Annotated[
    int, typer.Option(help="Chunks smaller than this many bytes are copied into the map.")
]
RefmapFormatOpt = Annotated[
    str | None,
    typer.Option(
        "--format", help="Refmap encoding: json or parquet (default: Parquet from 100k refs)."
    ),
]
DaskOpt = Annotated[
    str | None,
    typer.Option(
        "--dask",
        metavar="local[:N]|ADDRESS",
        help="Run the per-file work on a dask.distributed cluster: local (a worker "
        "process per core), local:N (N workers) or a scheduler address (tcp://host:8786).",
        show_default=False,
    ),
]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")]


def fail(exc: HyperslabError, as_json: bool) -> NoReturn:
    """Print ``exc`` (text on stderr, or one JSON document) and exit with its status."""
    if as_json:
        print(json.dumps({"ok": False, "error": exc.to_json()}))
    else:
        # escaped: a message quoting the user's input ([abc], [/x]) is text, not markup
        err.print(
            f"[bold red]error[/] [dim]({exc.code})[/]: {escape(exc.message)}", highlight=False
        )
    raise typer.Exit(exc.exit_status)


@contextmanager
def handle_errors(as_json: bool) -> Iterator[None]:
    """Named errors exit with their status; an ``OSError`` about a path is named by
    :func:`~hyperslab.errors.local_path_error`; anything else is an ``internal`` error
    (exit 1, a traceback with ``HYPERSLAB_DEBUG=1``); Ctrl-C exits 130."""
    try:
        yield
    except HyperslabError as exc:
        fail(exc, as_json)
    except KeyboardInterrupt:
        err.print("interrupted")
        raise typer.Exit(130) from None
    except (typer.Exit, typer.Abort):
        raise
    except Exception as exc:
        if os.environ.get("HYPERSLAB_DEBUG"):
            raise
        if isinstance(exc, OSError) and exc.filename is not None:
            # a path the user gave (or one under it) that the system refused
            fail(local_path_error(exc, exc.filename, "use"), as_json)
        wrapped = HyperslabError(
            f"internal error: {type(exc).__name__}: {redact(str(exc))} "
            "(set HYPERSLAB_DEBUG=1 for a traceback)"
        )
        fail(wrapped, as_json)


def teach_help(typer_app: typer.Typer) -> None:
    """Make every command's ``--help`` whole at any width (click's plain help: paragraphs
    reflowed, option names never cut): indented blocks of a docstring (examples) are
    kept line for line, and the command list shows each command's first sentence in
    full instead of cutting it at the terminal's edge."""
    for group in typer_app.registered_groups:
        sub = group.typer_instance
        if sub is not None:
            teach_help(sub)
            text = group.help or sub.info.help
            if not isinstance(group.short_help, str) and isinstance(text, str):
                group.short_help = _first_sentence(inspect.cleandoc(text))
    for info in typer_app.registered_commands:
        doc = info.help or (inspect.getdoc(info.callback) if info.callback is not None else None)
        if not doc:
            continue
        info.help = "\n\n".join(
            "\b\n" + p if all(line.startswith(" ") for line in p.splitlines()) else p
            for p in inspect.cleandoc(doc).split("\n\n")
        )
        if info.short_help is None:
            info.short_help = _first_sentence(doc)


def _first_sentence(text: str) -> str:
    first = " ".join(text.split("\n\n")[0].split())
    return first.split(". ")[0].rstrip(".")


def plural(n: int, word: str) -> str:
    """``1 array``, ``2 arrays``."""
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def note_frames_left_out(sources: list[str], as_json: bool) -> dict[str, Any]:
    """Say (on stderr, unless ``as_json``) which folders of detector frames a directory's
    HDF5 files leave out, and what to give to include them; returns them for a JSON
    report (see :func:`hyperslab.convert.api.frames_left_out`)."""
    from hyperslab.convert.api import frames_left_out

    left = frames_left_out(sources)
    if left and not as_json:
        for folder, got in left.items():
            err.print(
                f"[yellow]note[/]: {plural(got['frames'], 'detector frame')} in {folder} left "
                f"out (HDF5 files lie beside them); give {got['give']} on its own for a "
                "frame-series entry",
                highlight=False,
            )
    return left


def describe_arrays(n: int, counts: dict[str, int]) -> str:
    """``39 arrays (23 virtual, 16 materialised)``: the words every report uses for a map's
    arrays by how they are stored (datasets skipped are not arrays of the map)."""
    parts = [
        f"{counts[k]} {k}" for k in ("virtual", "materialised", "mixed", "empty") if counts.get(k)
    ]
    return f"{plural(n, 'array')} ({', '.join(parts) or 'none'})"


def progress_bar(enabled: bool) -> Progress:
    """A transient progress bar on stderr (``enabled=False``: invisible, same API)."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[item]}", style="dim"),
        TimeElapsedColumn(),
        console=err,
        disable=not enabled,
        transient=True,
    )


def show_progress(as_json: bool, quiet: bool) -> bool:
    """Bars only on a terminal, and never with ``--json`` or ``--quiet``."""
    return not (as_json or quiet) and err.is_terminal


def _version(value: bool) -> None:
    if value:
        out.print(f"hyperslab {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Show the version and exit."
        ),
    ] = False,
) -> None:
    """hyperslab: reference maps over HDF5/NeXus, verified bit for bit."""


__all__ = [
    "EXIT_HELP",
    "JsonOpt",
    "QuietOpt",
    "app",
    "err",
    "fail",
    "handle_errors",
    "out",
    "progress_bar",
    "show_progress",
]
