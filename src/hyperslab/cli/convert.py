"""Conversion commands of the ``hyperslab`` CLI: ``refs``, ``verify``, ``sample``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from hyperslab.cli.app import (
    DaskOpt,
    InlineThresholdOpt,
    JsonOpt,
    QuietOpt,
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
from hyperslab.errors import BadInputError, HyperslabError, VerificationError, local_path_error


# ---------------------------------------------------------------- refs
@app.command()
def refs(
    sources: Annotated[
        list[str],
        typer.Argument(
            help="HDF5/NeXus files, directories (searched recursively) or fsspec URLs; "
            "or detector frames (TIFF, CBF: files, a directory or a glob), one map."
        ),
    ],
    output: Annotated[
        Path,
        typer.Option(
            "--output",
            "-o",
            help="Map to write: OUT.json, OUT.parquet "
            "(a directory), or, for several sources without --combine, "
            "a directory that receives one map per source.",
        ),
    ],
    fmt: Annotated[
        str | None,
        typer.Option(
            "--format",
            help="json or parquet (default: from the name; otherwise Parquet from 100k refs).",
        ),
    ] = None,
    new_dim: Annotated[
        str | None,
        typer.Option(
            "--combine-new-dim",
            help="Combine all sources into one "
            "map, stacking arrays along a new leading axis of this name.",
        ),
    ] = None,
    concat_dim: Annotated[
        int | None,
        typer.Option(
            "--combine-dim",
            help="Combine all sources into one map, concatenating arrays along this existing axis.",
        ),
    ] = None,
    inline_threshold: InlineThresholdOpt = 500,
    allow_broken_links: Annotated[
        bool, typer.Option(help="Report dangling soft/external links instead of failing the file.")
    ] = False,
    fail_fast: Annotated[
        bool,
        typer.Option(
            help="Stop at the first bad file (default: convert the rest and report the bad ones)."
        ),
    ] = False,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Write kerchunk reference maps that expose HDF5 chunks in place as Zarr.

    The map names each source by its absolute path (or URL) and carries any
    materialised data inline, so plain fsspec + zarr can read it. Every dataset
    is either referenced in place (virtual) or materialised with the reason given.

    Examples:

      hyperslab refs scan_0001.nxs -o scan_0001.json

      hyperslab refs /data/run42/ -o maps/            # one map per file

      hyperslab refs frames_*.h5 --combine-dim 0 -o run.parquet

      hyperslab refs pilatus/ -o run.json   # CBF/TIFF frames: one (frame, y, x) array
    """
    from hyperslab.convert.api import (
        build_frames_refmap,
        build_refmap,
        combine_refmaps,
        expand_sources,
        is_frame_series,
    )
    from hyperslab.convert.hdf5 import ConvertOptions
    from hyperslab.references.refmap_files import choose_format, write_refmap

    with handle_errors(as_json):
        if fmt not in (None, "json", "parquet"):
            raise BadInputError(f"--format must be json or parquet, not {fmt!r}")
        if new_dim is not None and concat_dim is not None:
            raise BadInputError("give at most one of --combine-new-dim and --combine-dim")
        files = expand_sources(sources)
        if is_frame_series(files):
            res = build_frames_refmap(files)
            write_refmap(res.refmap, output, fmt)  # type: ignore[arg-type]
            summary = {"refs": str(output), **res.to_json()}
            if as_json:
                print(json.dumps({"ok": True, "written": [summary], "failed": []}, default=str))
            else:
                _print_refs_summary(summary)
            return
        options = ConvertOptions(
            inline_threshold=inline_threshold, allow_broken_links=allow_broken_links
        )
        combine = new_dim is not None or concat_dim is not None
        many = len(files) > 1 and not combine
        if many and output.suffix in (".json",):
            raise BadInputError(
                f"{len(files)} sources without --combine need a directory for -o, not {output}"
            )
        if many:
            stems = [Path(f).stem for f in files]
            dupes = sorted({s for s in stems if stems.count(s) > 1})
            if dupes:
                raise BadInputError(
                    f"several sources share the name {dupes[0]!r}; convert them separately"
                )
        done: list[tuple[str, Any]] = []
        failed: list[tuple[str, HyperslabError]] = []
        written: list[dict[str, Any]] = []
        with progress_bar(show_progress(as_json, quiet)) as prog:
            task = prog.add_task("scanning", total=len(files), item="")
            for f in files:
                prog.update(task, item=Path(f).name)
                try:
                    res = build_refmap(f, options=options)
                except HyperslabError as exc:
                    failed.append((f, exc))
                    if not as_json:
                        err.print(
                            f"[red]✗[/] {f}: {exc.message} [dim]({exc.code})[/]", highlight=False
                        )
                    if fail_fast or (combine and len(files) > 1):
                        break
                    continue
                finally:
                    prog.advance(task)
                if many:
                    target = output / (
                        Path(f).stem + "." + (fmt or choose_format("", res.refmap.n_refs))
                    )
                    write_refmap(res.refmap, target, fmt)  # type: ignore[arg-type]
                    written.append({"source": f, "refs": str(target), **res.to_json()})
                done.append((f, res))
        if done and not many:
            result = (
                done[0][1]
                if not combine
                else combine_refmaps([r for _, r in done], dim=concat_dim, new_dim=new_dim)
            )
            write_refmap(result.refmap, output, fmt)  # type: ignore[arg-type]
            # named as the user gave it, as maps written into a directory are
            written.append({"refs": str(output), **result.to_json()})
        left = note_frames_left_out(sources, as_json)
        if as_json:
            doc = {
                "ok": not failed,
                "written": written,
                "failed": [{"source": f, **e.to_json()} for f, e in failed],
            }
            print(json.dumps({**doc, "frames_left_out": left} if left else doc, default=str))
        else:
            for w in written:
                _print_refs_summary(w)
            if failed:
                err.print(f"[red]{len(failed)} of {len(files)} source(s) failed[/]")
        if failed:
            raise typer.Exit(failed[0][1].exit_status)


def _print_refs_summary(w: dict[str, Any]) -> None:
    """One line per map written: arrays by status and chunk refs; combined maps say how."""
    counts = w["counts"]
    line = describe_arrays(w["arrays"], counts)
    comb = w.get("combined")
    if comb:
        how = (
            f"stacked along the new axis {comb['new_dim']!r}"
            if comb["new_dim"] is not None
            else f"concatenated along axis {comb['dim']}"
        )
        line += f" from {comb['files']} files: {comb['arrays']} {how}"
        rest = w["arrays"] - comb["arrays"]
        if rest:
            line += f", {rest} as in the first file"
    frames = w.get("frames")
    if frames:
        shape = " x ".join(map(str, frames["shape"]))
        line += (
            f" from {plural(frames['files'], frames['format'].upper() + ' file')}: "
            f"{plural(frames['frames'], 'frame')} as one {shape} array"
        )
    line += f", {plural(w['n_refs'], 'chunk ref')}"
    if counts.get("skipped"):
        line += f"; {plural(counts['skipped'], 'dataset')} skipped (unreadable here)"
    out.print(f"[green]✓[/] wrote {w['refs']}: {line}", highlight=False)
    # a combined map's files share their datasets: name each one once, not once a file
    by_reason: dict[tuple[str, str], list[str]] = {}
    warnings: list[str] = []
    for f in w["files"]:
        for d in f["datasets"]:
            # skipped: nobody can read it here, left out of the map; else materialised
            what = "skipped" if d["status"] == "skipped" else "materialised"
            paths = by_reason.setdefault((what, d["reason"]), []) if d["reason"] else None
            if paths is not None and d["path"] not in paths:
                paths.append(d["path"])
        warnings.extend(x for x in f["warnings"] if x not in warnings)
    for (what, reason), paths in by_reason.items():
        shown = ", ".join(paths[:3]) + (f" and {len(paths) - 3} more" if len(paths) > 3 else "")
        out.print(f"    [yellow]{what}[/] {len(paths)}: {reason} ({shown})", highlight=False)
    for warning in warnings:
        out.print(f"    [yellow]warning[/] {warning}", highlight=False)


# -------------------------------------------------------------- verify
@app.command()
def verify(
    *,
    sources: Annotated[
        list[str] | None,
        typer.Argument(
            metavar="SOURCE",
            help="The HDF5/NeXus file the map was made from; for a combined map, the files "
            "it was combined from (all, some, or none to use the files it names); for "
            "a frame series, its TIFF/CBF frames (files, a directory or a glob).",
            show_default=False,
        ),
    ] = None,
    refs_path: Annotated[
        Path, typer.Argument(metavar="REFS", help="Reference map (JSON or Parquet).")
    ],
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
    show_all: Annotated[
        bool, typer.Option("--all", help="List every array, not only failures.")
    ] = False,
    dask: DaskOpt = None,
) -> None:
    """Read every array through REFS (fsspec + zarr) and compare it bit for bit with h5py.

    A map of one file needs that file: verify SOURCE REFS. A map combined from
    several files (refs --combine-new-dim / --combine-dim) is checked against
    each file it was combined from, each file's slab of every combined array
    separately: give all the files, or only REFS to use the files the map
    names. Given some of its files, only their slabs are checked, and the
    report says which files were left out.

    A frame-series map (refs FRAMES -o MAP) is checked frame by frame against
    its TIFF/CBF files, decoded by tifffile or fabio (without fabio, CBF frames
    are checked against their Content-MD5 and decoded by hyperslab's codec, as
    the report says), and its per-frame header values against the headers.

    Exit status 0 only if every array (or slab) checked matches and every
    dataset of SOURCE (of the first file, for a combined map) is in the map; 8
    otherwise.

    Examples:

      hyperslab verify scan_0001.nxs scan_0001.json

      hyperslab verify frames_*.h5 run.parquet

      hyperslab verify run.parquet

      hyperslab verify pilatus/ run.json     # CBF/TIFF frames, frame by frame

      hyperslab verify big_scan.nxs big_scan.json --dask local:4
    """
    from hyperslab.convert.cluster import dask_client
    from hyperslab.convert.verify import verify as run_verify
    from hyperslab.convert.verify_frames import frames_check

    with handle_errors(as_json):
        with progress_bar(show_progress(as_json, quiet)) as prog, dask_client(dask) as client:
            task = prog.add_task("verifying", total=None, item="")

            def tick(path: str, i: int, n: int) -> None:
                prog.update(task, total=n, completed=i, item=path)

            report = frames_check(sources or [], refs_path, tick) or run_verify(
                sources or [], refs_path, progress=tick, client=client
            )
        comb = report.combined
        frames = report.frames
        if frames is not None:
            against = (
                f"{report.source}" if frames["files"] == 1 else f"{frames['files']} frame files"
            ) + f" (read by {frames['reader']})"
        elif comb is not None:
            what = ", ".join(c["source"] for c in comb["checked"])
            if len(what) > 200:
                what = f"{len(comb['checked'])} files"
            against = f"{what} ({len(comb['checked'])} of its {comb['files']} files)"
        else:
            against = report.source
        if as_json:
            print(json.dumps(report.to_json(), default=str))
        else:
            table = Table(title=f"{refs_path} vs {against}", show_lines=False)
            by_source = comb is not None or frames is not None
            columns = (
                ("array", "source", "storage", "result")
                if by_source
                else ("array", "storage", "result")
            )
            for col in columns:
                table.add_column(col)
            for a in report.arrays:
                if show_all or not a.ok:
                    result = "[green]bit-exact[/]" if a.ok else f"[red]MISMATCH[/] {a.detail}"
                    row = [a.path or "/", a.storage, result]
                    if by_source:
                        row.insert(1, a.source or "")
                    table.add_row(*row)
            for m in report.missing:
                row = [m, "-", "[red]MISSING from map[/]"]
                if comb:
                    row.insert(1, comb["checked"][0]["source"])
                elif frames is not None:
                    row.insert(1, "")
                table.add_row(*row)
            if table.row_count:
                out.print(table)
            for path, why in report.skipped.items():
                out.print(
                    f"    [yellow]skipped[/] {path} (left out of the map: {why})", highlight=False
                )
            c = report.counts
            pct = 100.0 * c["bit_exact"] / c["arrays"] if c["arrays"] else 100.0
            colour = "green" if report.ok else "red"
            if comb:
                how = (
                    f"stacked along the new axis {comb['new_dim']!r}"
                    if comb["new_dim"] is not None
                    else f"concatenated along axis {comb['dim']}"
                )
                out.print(
                    f"combined map ({how}): checked {len(comb['checked'])} of its "
                    f"{comb['files']} files"
                    + (
                        f"; not checked: {', '.join(comb['unchecked'][:3])}"
                        + (" ..." if len(comb["unchecked"]) > 3 else "")
                        if comb["unchecked"]
                        else ""
                    ),
                    highlight=False,
                )
            noun = "array slabs" if comb else "frames and coordinates" if frames else "arrays"
            out.print(
                f"[{colour}]{c['bit_exact']}/{c['arrays']} {noun} bit-exact ({pct:.1f}%)[/]: "
                f"{c['virtual']} virtual, {c['materialised']} materialised, {c['empty']} empty; "
                f"{c['missing']} missing, "
                + (f"{c['skipped']} skipped, " if c["skipped"] else "")
                + f"{c['unverifiable']} unverifiable; {report.seconds:.2f} s",
                highlight=False,
            )
        if not report.ok:
            if not as_json:
                raise VerificationError(f"{refs_path} does not reproduce {against} bit for bit")
            raise typer.Exit(VerificationError.exit_status)


# -------------------------------------------------------------- sample
@app.command()
def sample(
    directory: Annotated[Path, typer.Argument(help="Where to write the sample NeXus files.")],
    frames: Annotated[int, typer.Option(help="Frames per detector stack.")] = 20,
    seed: Annotated[int, typer.Option(help="Random seed (same seed, same bytes of data).")] = 0,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Write realistic NeXus detector files (Pilatus-like uint32 stacks, gzip and bitshuffle-LZ4),
    and Pilatus-like frame series, one file a frame: pilatus_cbf/ (CBF) and pilatus_tiff/
    (TIFF), at most 10 frames each."""
    from hyperslab.samples import write_frame_series, write_samples

    with handle_errors(as_json):
        if frames < 1:
            raise BadInputError("--frames must be at least 1")
        try:
            paths = write_samples(
                directory, frames=frames, seed=seed, progress=show_progress(as_json, quiet)
            )
            series = write_frame_series(directory, frames=min(frames, 10), seed=seed)
        except OSError as exc:
            raise local_path_error(exc, exc.filename or directory, "write the samples to") from exc
        if as_json:
            print(json.dumps({"ok": True, "files": [str(p) for p in paths + series]}))
        else:
            for p in paths:
                out.print(f"[green]✓[/] {p} ({p.stat().st_size / 1e6:.1f} MB)", highlight=False)
            folders: dict[Path, list[Path]] = {}
            for p in series:
                folders.setdefault(p.parent, []).append(p)
            for folder, files in folders.items():
                size = sum(p.stat().st_size for p in files) / 1e6
                kind = files[0].suffix.lstrip(".").upper()
                out.print(
                    f"[green]✓[/] {folder}/ ({len(files)} {kind} frames, {size:.1f} MB)",
                    highlight=False,
                )
