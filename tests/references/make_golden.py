"""Write the golden repository of the current format (run by hand, output committed).

    .venv/bin/python -m tests.references.make_golden [SUFFIX]

Later versions of hyperslab must keep reading ``golden/v<N>/`` exactly as
``test_golden.py`` expects. Never regenerate an existing version's directory;
add a new one when the format changes. SUFFIX names an additive revision of the
same format version (``.1``: v1 plus catalog indexes and chunk checksums, written
with no inlined chunks so that every chunk is a checksummed reference).

    .venv/bin/python -m tests.references.make_golden packed

writes ``golden/v1.1-packed``: ``golden/v1.1`` synced (every branch and tag, with
its sources) into a replica whose entry records, refmaps and checksums are packed
(references/object_packs.py).
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from hyperslab.convert.hdf5 import ConvertOptions
from hyperslab.convert.ingest import ingest
from hyperslab.references.format import FORMAT_VERSION
from hyperslab.references.repository import Repository
from hyperslab.samples import write_samples

HERE = Path(__file__).parent / "golden"
SOURCES = Path("/tmp/hyperslab-golden-sources")  # a neutral path: it is recorded as origin


def packed() -> None:
    from hyperslab.sync import sync

    out = HERE / "v1.1-packed"
    if out.exists():
        raise SystemExit(f"{out} exists; golden repositories are never regenerated")
    sync(str(HERE / "v1.1"), str(out), all_branches=True, tags=True, sources=True)
    for lock in out.rglob(".hyperslab-lock"):
        lock.unlink()
    print(f"wrote {out}")


def main() -> None:
    if sys.argv[1:] == ["packed"]:
        return packed()
    out = HERE / f"v{FORMAT_VERSION}{sys.argv[1] if len(sys.argv) > 1 else ''}"
    if out.exists():
        raise SystemExit(f"{out} exists; golden repositories are never regenerated")
    shutil.rmtree(SOURCES, ignore_errors=True)
    paths = write_samples(SOURCES, frames=2, shape=(16, 24), seed=5)
    os.environ["HYPERSLAB_AUTHOR"] = "golden"
    repo = Repository.init(str(out))
    # v1 was written with the default inline threshold (500 bytes: these tiny samples
    # were almost all inline); later revisions reference every chunk
    opts = ConvertOptions(inline_threshold=0) if out.name != "v1" else None
    ingest(repo, [str(paths[0])], name="run1/scan_0001", message="first scan", options=opts)
    repo.create_tag("v1", "main", "one entry")
    repo.create_branch("dev", "main")
    ingest(
        repo,
        [str(p) for p in paths[1:3]],
        name="run1",
        message="two more",
        upload_sources=True,
        refmap_format="parquet",
        options=opts,
    )
    ingest(repo, [str(paths[1])], name="dev/only", branch="dev", message="on dev", options=opts)
    for lock in out.rglob(".hyperslab-lock"):
        lock.unlink()
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
