"""hyperslab against kerchunk 0.2.10 on one HDF5 file with N chunks, in the same run.

``make bench`` runs ``.venv/bin/python benchmarks/run.py``. Every measurement is a
fresh child process: the parent times it from spawn to exit (wall seconds, so
interpreter start and imports count) and reads the child's own peak RSS from
``os.wait4`` (``ru_maxrss`` of that child alone, unlike ``RUSAGE_CHILDREN``, which
is the maximum over all children so far). Children that time phases inside
themselves report them as one JSON line on stdout.

Phase 1, reference generation (whole process each): ``hyperslab refs`` to JSON
and to Parquet, kerchunk's ``SingleHdf5ToZarr(...).translate()`` + ``json.dump``
and + ``kerchunk.df.refs_to_dataframe``, and a bare h5py ``chunk_iter`` walk as
the floor. Each ``--inline-threshold`` given runs the whole phase once.

Phase 2, opening the maps: fsspec ``reference://`` + ``zarr.open_array``, then read
the first chunk and one in the middle (checking the values), plus hyperslab's
own ``read_refmap`` for its two formats. Opening takes about a second, so noise
from other load is as large as the differences: each map is opened
``--open-repeats`` times (default 3), round-robin, and the median run is reported.

Ratios are ``kerchunk / hyperslab``: above 1 means hyperslab is faster or smaller.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from timing import wait_timed

ROOT = Path(__file__).resolve().parent.parent
ARRAY = "data"  # the dataset write_many_chunks_file writes

# ----------------------------------------------------------------- child code
# Children import nothing of this module (no rich, no hyperslab unless measured)
# so that their peak RSS is that of the work alone. Each gets one JSON argument.

FLOOR_CHILD = """
import json, sys, time
t0 = time.perf_counter()
import h5py
a = json.loads(sys.argv[1])
n = 0
def visit(info):
    global n
    n += 1
t1 = time.perf_counter()
with h5py.File(a["h5"], "r") as f:
    f[a["array"]].id.chunk_iter(visit)
t2 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "walk_s": t2 - t1, "chunks": n}))
"""

KERCHUNK_CHILD = """
import json, sys, time
t0 = time.perf_counter()
a = json.loads(sys.argv[1])
from kerchunk.hdf import SingleHdf5ToZarr
t1 = time.perf_counter()
refs = SingleHdf5ToZarr(a["h5"], inline_threshold=a["inline"]).translate()
t2 = time.perf_counter()
out = {"import_s": t1 - t0, "translate_s": t2 - t1, "refs": len(refs.get("refs", refs))}
if a["format"] == "json":
    with open(a["out"], "w") as fh:
        json.dump(refs, fh)
else:
    import kerchunk.df
    try:
        kerchunk.df.refs_to_dataframe(refs, a["out"])
        out["writer"] = "kerchunk.df.refs_to_dataframe"
    except ImportError as exc:
        # refs_to_dataframe hard-codes fsspec's default engine, fastparquet. Same
        # code as kerchunk.df.refs_to_dataframe, with engine="pyarrow".
        import fsspec
        from fsspec.implementations.reference import LazyReferenceMapper
        out["writer"] = "refs_to_dataframe body, engine=pyarrow"
        out["note"] = f"refs_to_dataframe failed ({exc.__class__.__name__}: no fastparquet)"
        r = refs["refs"] if "refs" in refs else refs
        fs, _ = fsspec.core.url_to_fs(a["out"])
        m = LazyReferenceMapper.create(
            record_size=100_000, root=a["out"], fs=fs, categorical_threshold=10,
            engine="pyarrow",
        )
        for k in sorted(r):
            m[k] = r[k]
        m.flush()
out["write_s"] = time.perf_counter() - t2
print(json.dumps(out))
"""

OPEN_CHILD = """
import json, sys, time
t0 = time.perf_counter()
a = json.loads(sys.argv[1])
out = {}
try:
    import fsspec
    import zarr
    from fsspec.implementations.reference import LazyReferenceMapper
    t1 = time.perf_counter()
    out["import_s"] = t1 - t0
    if a["format"] == "parquet":
        # fsspec's default engine is fastparquet (not installed): ask for pyarrow.
        fo = LazyReferenceMapper(a["map"], fs=fsspec.filesystem("file"), engine="pyarrow")
    else:
        fo = a["map"]
    fs = fsspec.filesystem("reference", fo=fo, remote_protocol="file")
    store = zarr.storage.FsspecStore(fs, read_only=True, path="")
    arr = zarr.open_array(store, path=a["array"], mode="r", zarr_format=2)
    t2 = time.perf_counter()
    out["open_s"] = t2 - t1
    for name, (start, expect) in a["reads"].items():
        t = time.perf_counter()
        got = arr[start : start + 1]
        out[name + "_s"] = time.perf_counter() - t
        if int(got[0]) != expect:
            raise AssertionError(f"{name} chunk: element {start} is {got[0]}, not {expect}")
    out["total_s"] = time.perf_counter() - t1
except Exception as exc:
    out["error"] = f"{type(exc).__name__}: {exc}"[:300]
print(json.dumps(out))
"""

# Run once, unmeasured, before anything else: the first process to import a package
# pays for cold caches, and without this whichever contender runs first would too.
WARM_CHILD = """
import fsspec, h5py, kerchunk.hdf, pandas, pyarrow.parquet, zarr
import hyperslab.cli, hyperslab.convert.api, hyperslab.references.refmap
"""

READ_REFMAP_CHILD = """
import json, sys, time
t0 = time.perf_counter()
a = json.loads(sys.argv[1])
from hyperslab.references.refmap_files import read_refmap
t1 = time.perf_counter()
out = {"import_s": t1 - t0}
try:
    rm = read_refmap(a["map"])
    out["read_s"] = time.perf_counter() - t1
    out["refs"] = rm.n_refs
except Exception as exc:
    out["error"] = f"{type(exc).__name__}: {exc}"[:300]
print(json.dumps(out))
"""


# ------------------------------------------------------------------ measuring
@dataclass
class Run:
    """One child process: what it was, how long it took, how much memory it held."""

    phase: str
    tool: str  # "hyperslab", "kerchunk" or "h5py"
    what: str  # e.g. "JSON", "Parquet", "chunk_iter floor"
    inline: int | None
    wall_s: float = 0.0
    rss_mb: float = 0.0
    rc: int = 0
    out_bytes: int | None = None
    inner: dict[str, Any] = field(default_factory=dict)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.rc == 0 and self.error is None


def spawn(cmd: list[str], timeout: float = 900.0) -> tuple[float, float, int, str]:
    """Run ``cmd``; return (wall s, peak RSS MB of that child, exit status, output)."""
    with tempfile.TemporaryFile() as log:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        wall, rc, _cpu, rss = wait_timed(proc, t0, timeout, 0.005)
        log.seek(0)
        text = log.read().decode(errors="replace")
    return wall, rss, rc, text


def last_json(text: str) -> dict[str, Any]:
    for line in reversed(text.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                doc = json.loads(line)
            except ValueError:
                continue
            if isinstance(doc, dict):
                return doc
    return {}


def size_of(path: Path) -> int | None:
    if path.is_file():
        return path.stat().st_size
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return None


def remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


def measure(run: Run, cmd: list[str], out: Path | None = None) -> Run:
    if out is not None:
        remove(out)
    run.wall_s, run.rss_mb, run.rc, text = spawn(cmd)
    run.inner = last_json(text)
    if run.rc != 0:
        tail = text.strip().splitlines()[-1:] or [""]
        run.error = f"exit {run.rc}: {tail[0][:200]}"
    elif "error" in run.inner:
        run.error = str(run.inner["error"])
    if out is not None:
        run.out_bytes = size_of(out)
    return run


def hyperslab_cmd() -> list[str]:
    exe = Path(sys.executable).with_name("hyperslab")
    if exe.exists():
        return [str(exe)]
    return [sys.executable, "-c", "from hyperslab.cli import main; main()"]


def child(code: str, args: dict[str, Any]) -> list[str]:
    return [sys.executable, "-c", code, json.dumps(args)]


# ------------------------------------------------------------------ the input
def sample_file(workdir: Path, n_chunks: int, log: Any) -> tuple[Path, dict[str, Any]]:
    """The N-chunk file (cached in ``workdir``) and where to read in phase 2."""
    import h5py

    path = workdir / f"many_chunks_{n_chunks}.h5"
    if path.exists():
        try:
            with h5py.File(path, "r") as f:
                if int(f[ARRAY].attrs["chunks_written"]) != n_chunks:
                    raise ValueError("stale")
        except Exception:
            path.unlink()
    if not path.exists():
        from hyperslab.samples import write_many_chunks_file

        log(f"writing {path} ({n_chunks:,} chunks, cached for later runs)…")
        t0 = time.perf_counter()
        tmp = path.with_suffix(".h5.tmp")
        write_many_chunks_file(tmp, n_chunks=n_chunks)
        os.replace(tmp, path)
        log(f"  written in {time.perf_counter() - t0:.1f} s")
    with h5py.File(path, "r") as f:
        dset = f[ARRAY]
        chunk = int(dset.chunks[0])
        total = -(-int(dset.shape[0]) // chunk)
        unwritten = {int(i) for i in dset.attrs["unwritten_chunks"]}
        stored = int(dset.id.get_num_chunks())
    middle = total // 2
    while middle in unwritten:
        middle += 1
    # element i holds i; read one element at the start of each chunk
    reads = {"first": [0, 0], "middle": [middle * chunk, middle * chunk]}
    info = {
        "path": str(path),
        "bytes": path.stat().st_size,
        "chunks_stored": stored,
        "chunk_grid": total,
        "chunk_elements": chunk,
        "unwritten": sorted(unwritten),
        "reads": reads,
    }
    return path, info


# ------------------------------------------------------------------ the phases
def phase_refs(h5: Path, out: Path, inline: int, log: Any) -> list[Run]:
    runs: list[Run] = []
    hs = hyperslab_cmd()
    for fmt, suffix in (("JSON", "json"), ("Parquet", "parquet")):
        target = out / f"hyperslab_i{inline}.{suffix}"
        cmd = [*hs, "refs", str(h5), "-o", str(target), "--inline-threshold", str(inline), "-q"]
        runs.append(measure(Run("refs", "hyperslab", fmt, inline), cmd, target))
        log_run(log, runs[-1])
        target = out / f"kerchunk_i{inline}.{suffix}"
        args = {"h5": str(h5), "inline": inline, "format": suffix, "out": str(target)}
        runs.append(
            measure(Run("refs", "kerchunk", fmt, inline), child(KERCHUNK_CHILD, args), target)
        )
        log_run(log, runs[-1])
    return runs


def phase_floor(h5: Path, log: Any) -> Run:
    run = measure(
        Run("refs", "h5py", "chunk_iter floor", None),
        child(FLOOR_CHILD, {"h5": str(h5), "array": ARRAY}),
    )
    log_run(log, run)
    return run


def phase_open(
    out: Path, inline: int, reads: dict[str, Any], log: Any, repeats: int = 1
) -> list[Run]:
    """Open every map ``repeats`` times, round-robin, and keep each one's median run."""
    tries: dict[tuple[str, str], list[Run]] = {}
    for _ in range(repeats):
        for tool in ("hyperslab", "kerchunk"):
            for fmt, suffix in (("JSON", "json"), ("Parquet", "parquet")):
                target = out / f"{tool}_i{inline}.{suffix}"
                run = Run("open", tool, fmt, inline)
                if not target.exists():
                    run.error = f"{target.name} was not written in phase 1"
                else:
                    args = {"map": str(target), "format": suffix, "array": ARRAY, "reads": reads}
                    measure(run, child(OPEN_CHILD, args))
                tries.setdefault((tool, fmt), []).append(run)
    runs: list[Run] = []
    for (_tool, _fmt), got in tries.items():
        ok = sorted((r for r in got if r.ok), key=lambda r: r.inner.get("total_s", 0.0))
        run = ok[len(ok) // 2] if ok else got[0]
        if len(got) > 1:
            run.inner["repeats"] = len(got)
            run.inner["totals_s"] = [r.inner.get("total_s") for r in got]
        runs.append(run)
        log_run(log, run)
    for fmt, suffix in (("JSON", "json"), ("Parquet", "parquet")):
        target = out / f"hyperslab_i{inline}.{suffix}"
        run = Run("read_refmap", "hyperslab", fmt, inline)
        if target.exists():
            measure(run, child(READ_REFMAP_CHILD, {"map": str(target)}))
        else:
            run.error = f"{target.name} was not written in phase 1"
        runs.append(run)
        log_run(log, run)
    return runs


def log_run(log: Any, run: Run) -> None:
    inline = "" if run.inline is None else f" inline<{run.inline}"
    status = f"error: {run.error}" if run.error else f"{run.wall_s:.2f} s, {run.rss_mb:.0f} MB"
    log(f"  {run.phase:<11} {run.tool:<9} {run.what:<16}{inline}: {status}")


# ------------------------------------------------------------------ reporting
def ratio(k: float | None, h: float | None) -> str:
    if not k or not h:
        return "—"
    return f"{k / h:.2f}×"


def mb(n: int | None) -> str:
    return "—" if n is None else f"{n / 1e6:.1f}"


def find(runs: list[Run], phase: str, tool: str, what: str, inline: int | None) -> Run | None:
    for r in runs:
        if (r.phase, r.tool, r.what, r.inline) == (phase, tool, what, inline):
            return r
    return None


def render(runs: list[Run], info: dict[str, Any], thresholds: list[int]) -> list[Any]:
    from rich import box
    from rich.table import Table

    n = info["chunks_stored"]
    floor = find(runs, "refs", "h5py", "chunk_iter floor", None)
    t1 = Table(
        title=f"1. Reference generation, {n:,} chunks, whole process each "
        "(ratio = kerchunk / hyperslab, >1: hyperslab faster/smaller)",
        box=box.SIMPLE_HEAVY,
    )
    for col in ("inline <", "tool", "output", "wall s", "peak RSS MB", "output MB"):
        t1.add_column(col, justify="right" if col not in ("tool", "output") else "left")
    for col in ("time ratio", "RSS ratio", "size ratio"):
        t1.add_column(col, justify="right", style="bold")
    t1.add_column("notes", overflow="fold", max_width=34)
    footnotes: set[str] = set()
    for inline in thresholds:
        for fmt in ("JSON", "Parquet"):
            h = find(runs, "refs", "hyperslab", fmt, inline)
            k = find(runs, "refs", "kerchunk", fmt, inline)
            for r in (h, k):
                if r is None:
                    continue
                notes = r.error or ""
                if r.tool == "kerchunk" and r.inner and not r.error:
                    notes = (
                        f"translate {r.inner.get('translate_s', 0):.1f} s, "
                        f"write {r.inner.get('write_s', 0):.1f} s"
                    )
                    if "note" in r.inner:
                        notes += " (¹)"
                        footnotes.add(f"¹ {r.inner['note']}: written with the {r.inner['writer']}.")
                both = r is k and h is not None and h.ok and k.ok
                t1.add_row(
                    str(inline),
                    r.tool,
                    fmt,
                    f"{r.wall_s:.2f}" if r.ok else "—",
                    f"{r.rss_mb:.0f}" if r.ok else "—",
                    mb(r.out_bytes),
                    ratio(k.wall_s, h.wall_s) if both and h and k else "",
                    ratio(k.rss_mb, h.rss_mb) if both and h and k else "",
                    ratio(k.out_bytes, h.out_bytes) if both and h and k else "",
                    notes,
                )
        t1.add_section()
    if floor is not None:
        t1.add_row(
            "—",
            "h5py",
            "chunk_iter floor",
            f"{floor.wall_s:.2f}" if floor.ok else "—",
            f"{floor.rss_mb:.0f}" if floor.ok else "—",
            "—",
            "",
            "",
            "",
            floor.error
            or f"walk {floor.inner.get('walk_s', 0):.2f} s, counting "
            f"{floor.inner.get('chunks', 0):,} chunks",
        )

    t2 = Table(
        title="2. Opening the maps: fsspec reference:// + zarr.open_array, then read the "
        "first and a middle chunk (fresh process each; median of the repeats)",
        box=box.SIMPLE_HEAVY,
    )
    for col in ("inline <", "tool", "map", "open s", "first s", "middle s", "open+reads s"):
        t2.add_column(col, justify="right" if col not in ("tool", "map") else "left")
    for col in ("process s", "peak RSS MB", "time ratio", "RSS ratio"):
        t2.add_column(col, justify="right", style="bold" if "ratio" in col else None)
    t2.add_column("notes", overflow="fold", max_width=36)
    for inline in thresholds:
        for fmt in ("JSON", "Parquet"):
            h = find(runs, "open", "hyperslab", fmt, inline)
            k = find(runs, "open", "kerchunk", fmt, inline)
            for r in (h, k):
                if r is None:
                    continue
                i = r.inner
                both = r is k and h is not None and h.ok and k.ok
                t2.add_row(
                    str(inline),
                    r.tool,
                    fmt,
                    *(
                        f"{i[key]:.3f}" if r.ok and key in i else "—"
                        for key in ("open_s", "first_s", "middle_s", "total_s")
                    ),
                    f"{r.wall_s:.2f}" if r.ok else "—",
                    f"{r.rss_mb:.0f}" if r.ok else "—",
                    ratio(k.inner.get("total_s"), h.inner.get("total_s"))
                    if both and h and k
                    else "",
                    ratio(k.rss_mb, h.rss_mb) if both and h and k else "",
                    r.error or "",
                )
        for fmt in ("JSON", "Parquet"):
            r = find(runs, "read_refmap", "hyperslab", fmt, inline)
            if r is None:
                continue
            t2.add_row(
                str(inline),
                "hyperslab",
                f"{fmt} via read_refmap",
                f"{r.inner['read_s']:.3f}" if r.ok else "—",
                "",
                "",
                f"{r.inner['read_s']:.3f}" if r.ok else "—",
                f"{r.wall_s:.2f}" if r.ok else "—",
                f"{r.rss_mb:.0f}" if r.ok else "—",
                "",
                "",
                r.error or f"whole map → RefMap, {r.inner.get('refs', 0):,} refs",
            )
        t2.add_section()
    return [t1, *sorted(footnotes), t2]


def summary(runs: list[Run], info: dict[str, Any], thresholds: list[int]) -> str:
    n = info["chunks_stored"]
    size = info["chunk_elements"] * 4
    parts = [
        f"Summary ({n:,} chunks of {size} bytes, {os.cpu_count()} CPU(s); "
        "ratios kerchunk / hyperslab, >1 favours hyperslab)."
    ]
    for inline in thresholds:
        bits = []
        for fmt in ("JSON", "Parquet"):
            h = find(runs, "refs", "hyperslab", fmt, inline)
            k = find(runs, "refs", "kerchunk", fmt, inline)
            if h and k and h.ok and k.ok:
                bits.append(
                    f"{fmt} {h.wall_s:.1f} s vs {k.wall_s:.1f} s "
                    f"({k.wall_s / h.wall_s:.2f}×; peak RSS {h.rss_mb:.0f} vs "
                    f"{k.rss_mb:.0f} MB, {k.rss_mb / h.rss_mb:.2f}×)"
                )
            elif h or k:
                bits.append(f"{fmt}: " + "; ".join(r.error or "ok" for r in (h, k) if r))
        what = (
            "references only"
            if inline <= size
            else f"every chunk is below it, so both tools copy all {n:,} chunks into the map"
        )
        parts.append(
            f"Reference generation with inline threshold {inline} ({what}), hyperslab vs "
            "kerchunk: " + ", ".join(bits) + "."
        )
    floor = find(runs, "refs", "h5py", "chunk_iter floor", None)
    if floor and floor.ok:
        parts.append(
            f"A bare h5py chunk_iter walk, the floor for any tool, takes {floor.wall_s:.1f} s "
            "as a whole process."
        )
    for inline in thresholds:
        opens = []
        for fmt in ("JSON", "Parquet"):
            h = find(runs, "open", "hyperslab", fmt, inline)
            k = find(runs, "open", "kerchunk", fmt, inline)
            if h and k and h.ok and k.ok:
                opens.append(
                    f"{fmt} {h.inner['total_s']:.2f} s vs {k.inner['total_s']:.2f} s "
                    f"({k.inner['total_s'] / h.inner['total_s']:.2f}×; peak RSS "
                    f"{h.rss_mb:.0f} vs {k.rss_mb:.0f} MB)"
                )
            elif h and k:
                opens.append(f"{fmt}: " + "; ".join(r.error or "ok" for r in (h, k)))
        if opens:
            parts.append(
                f"Opening the inline-{inline} maps and reading two chunks through fsspec + zarr, "
                "hyperslab vs kerchunk: " + ", ".join(opens) + "."
            )
    return " ".join(parts)


# ------------------------------------------------------------------ main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chunks", type=int, default=1_000_000, help="chunks in the HDF5 file")
    parser.add_argument("--quick", action="store_true", help="100,000 chunks")
    parser.add_argument("--workdir", type=Path, default=Path("bench-data"))
    parser.add_argument("--json", type=Path, metavar="OUT", help="also write results here")
    parser.add_argument(
        "--open-repeats",
        type=int,
        default=3,
        metavar="N",
        help="open each map N times, round-robin, and report the median run (default 3)",
    )
    parser.add_argument(
        "--inline-threshold",
        type=int,
        action="append",
        metavar="BYTES",
        help="run phases 1 and 2 with this inline threshold (repeatable; default: 500 "
        "as kerchunk and hyperslab default, then 0 = references only)",
    )
    args = parser.parse_args(argv)
    n_chunks = 100_000 if args.quick else args.chunks
    thresholds = args.inline_threshold or [500, 0]

    from rich.console import Console

    console = Console(stderr=True, highlight=False)
    log = console.print
    started = time.perf_counter()
    workdir = args.workdir.absolute()
    out = workdir / f"out-{n_chunks}"
    out.mkdir(parents=True, exist_ok=True)
    h5, info = sample_file(workdir, n_chunks, log)
    log(f"input: {h5} ({info['bytes'] / 1e6:.1f} MB, {info['chunks_stored']:,} chunks)")

    spawn([sys.executable, "-c", WARM_CHILD])
    runs: list[Run] = [phase_floor(h5, log)]
    for inline in thresholds:
        log(f"[bold]phase 1, inline threshold {inline}[/]")
        runs += phase_refs(h5, out, inline, log)
    for inline in thresholds:
        log(f"[bold]phase 2, inline threshold {inline}[/]")
        runs += phase_open(out, inline, info["reads"], log, max(1, args.open_repeats))

    stdout = Console(width=max(Console().width, 150))
    for table in render(runs, info, thresholds):
        stdout.print(table)
    text = summary(runs, info, thresholds)
    stdout.print(text)
    elapsed = time.perf_counter() - started
    log(f"benchmark took {elapsed:.0f} s")

    if args.json:
        import fsspec
        import h5py
        import kerchunk
        import pandas
        import pyarrow
        import zarr

        import hyperslab

        doc = {
            "chunks": n_chunks,
            "input": info,
            "inline_thresholds": thresholds,
            "machine": {
                "cpus": os.cpu_count(),
                "platform": platform.platform(),
                "python": platform.python_version(),
            },
            "versions": {
                m.__name__: getattr(m, "__version__", "?")
                for m in (hyperslab, kerchunk, h5py, fsspec, zarr, pandas, pyarrow)
            },
            "elapsed_s": elapsed,
            "runs": [asdict(r) for r in runs],
            "summary": text,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(doc, indent=1))
        log(f"wrote {args.json}")
    return 0 if all(r.ok for r in runs if r.phase == "refs" and r.tool != "kerchunk") else 1


if __name__ == "__main__":
    sys.exit(main())
