"""Combined maps: the new axis is named, counts are of the map, verify checks each file."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

from hyperslab.cli import app
from hyperslab.convert.api import build_refmap, combine_refmaps
from hyperslab.convert.verify import verify
from hyperslab.errors import BadInputError
from hyperslab.references.refmap_files import write_refmap

runner = CliRunner()
DIMS = "_ARRAY_DIMENSIONS"


def run(*args: str) -> tuple[int, str]:
    res = runner.invoke(app, list(args), catch_exceptions=False)
    return res.exit_code, res.stdout + (res.stderr or "")


def frames(tmp_path: Path, n: int = 3) -> list[Path]:
    """``n`` files of one chunked, compressed ``data`` (4, 16, 16), distinct values each."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        p = tmp_path / f"frames_{i:03d}.h5"
        with h5py.File(p, "w") as f:
            f.create_dataset(
                "data",
                data=np.random.default_rng(i).integers(0, 1000, (4, 16, 16)).astype("<u2"),
                chunks=(1, 16, 16),
                compression="gzip",
            )
        out.append(p)
    return out


def nexus_parts(tmp_path: Path, n: int = 3) -> list[Path]:
    """NXdata files whose signal's first axis is named ``frame`` (and a per-file title)."""
    out = []
    for i in range(n):
        p = tmp_path / f"scan_{i:03d}.nxs"
        with h5py.File(p, "w") as f:
            e = f.create_group("entry")
            e.attrs["NX_class"] = "NXentry"
            d = e.create_group("data")
            d.attrs.update(NX_class="NXdata", signal="frames", axes=["frame", ".", "."])
            d.create_dataset(
                "frames",
                data=np.random.default_rng(i).integers(0, 1000, (4, 8, 8)).astype("<u4"),
                chunks=(2, 8, 8),
                compression="gzip",
            )
            d["frame"] = np.arange(4) + 4 * i
            e["title"] = f"part {i}"
        out.append(p)
    return out


def test_new_axis_is_named_and_other_dims_are_the_single_file_ones(tmp_path: Path) -> None:
    files = nexus_parts(tmp_path)
    single = build_refmap(files[0]).refmap
    results = [build_refmap(p) for p in files]
    stacked = combine_refmaps(results, new_dim="run").refmap
    one = single.arrays["entry/data/frames"].attrs[DIMS]
    assert one[0] == "frame"
    assert stacked.arrays["entry/data/frames"].attrs[DIMS] == ["run", *one]
    assert stacked.arrays["entry/data/frame"].attrs[DIMS] == ["run", "frame"]
    assert stacked.arrays["entry/title"].attrs.get(DIMS) == single.arrays["entry/title"].attrs.get(
        DIMS
    )
    concat = combine_refmaps(results, dim=0).refmap
    assert concat.arrays["entry/data/frames"].attrs[DIMS] == one
    assert concat.arrays["entry/data/frames"].zarray["shape"] == [12, 8, 8]
    # plain HDF5: the same phony names a single file's map uses, after the new axis
    plain = frames(tmp_path / "p")
    one = build_refmap(plain[0]).refmap.arrays["data"].attrs[DIMS]
    got = combine_refmaps([build_refmap(p) for p in plain], new_dim="run").refmap
    assert got.arrays["data"].attrs[DIMS] == ["run", *one]


def test_new_axis_name_must_be_new(tmp_path: Path) -> None:
    results = [build_refmap(p) for p in nexus_parts(tmp_path)]
    with pytest.raises(BadInputError, match="already has a dimension"):
        combine_refmaps(results, new_dim="frame")


def test_combined_map_records_its_parts(tmp_path: Path) -> None:
    files = frames(tmp_path)
    res = combine_refmaps([build_refmap(p) for p in files], dim=0)
    rec = res.refmap.groups[""]["hyperslab"]["combined"]
    assert rec["files"] == 3 and rec["dim"] == 0 and rec["new_dim"] is None
    assert [p["start"] for p in rec["parts"]] == [0, 4, 8]
    assert [p["url"] for p in rec["parts"]] == [str(p.resolve()) for p in files]
    assert res.counts == {"virtual": 1}  # one array, not one per file


def test_refs_report_counts_arrays_and_refs(tmp_path: Path) -> None:
    files = [str(p) for p in frames(tmp_path)]
    rc, text = run("refs", *files, "--combine-new-dim", "run", "-o", str(tmp_path / "run.json"))
    assert rc == 0, text
    line = " ".join(text.split())
    assert (
        "1 array (1 virtual) from 3 files: 1 stacked along the new axis 'run', 12 chunk refs"
        in line
    ), line
    assert "3 virtual" not in line and "1 arrays" not in line
    rc, out = run("refs", *files, "--combine-dim", "0", "-o", str(tmp_path / "c.json"), "--json")
    w = json.loads(out)["written"][0]
    assert w["arrays"] == 1 and w["counts"] == {"virtual": 1} and w["n_refs"] == 12
    assert w["combined"] == {"files": 3, "new_dim": None, "dim": 0, "arrays": 1}
    rc, text = run("refs", files[0], "-o", str(tmp_path / "one.json"))
    assert "1 array (1 virtual), 4 chunk refs" in " ".join(text.split()), text
    rc, out = run("refs", files[0], "-o", str(tmp_path / "one2.json"), "--json")
    assert "combined" not in json.loads(out)["written"][0]


def test_refs_report_names_a_materialised_dataset_once(tmp_path: Path) -> None:
    files = [str(p) for p in nexus_parts(tmp_path)]
    rc, text = run("refs", *files, "--combine-new-dim", "run", "-o", str(tmp_path / "r.json"))
    assert rc == 0, text
    assert text.count("materialised 1:") == 1, text
    assert "3 arrays (2 virtual, 1 materialised) from 3 files: 2 stacked" in " ".join(text.split())


@pytest.mark.parametrize("fmt", ["json", "parquet"])
@pytest.mark.parametrize("how", [("--combine-new-dim", "run"), ("--combine-dim", "0")])
def test_verify_combined_map_against_its_sources(
    tmp_path: Path, fmt: str, how: tuple[str, str]
) -> None:
    files = [str(p) for p in nexus_parts(tmp_path)]
    refs = str(tmp_path / f"run.{fmt}")
    assert run("refs", *files, *how, "-o", refs)[0] == 0
    rc, out = run("verify", *files, refs, "--json")
    rep = json.loads(out)
    assert rc == 0 and rep["ok"], out
    # 2 combined arrays x 3 files + the title, from the first file
    assert rep["counts"]["arrays"] == 7 and rep["counts"]["bit_exact"] == 7
    assert rep["combined"]["unchecked"] == [] and len(rep["combined"]["checked"]) == 3
    assert {a["source"] for a in rep["arrays"]} == set(files)
    rc, text = run("verify", *files, refs)
    assert rc == 0 and "7/7 array slabs bit-exact" in " ".join(text.split()), text
    # the map alone: the files it names
    rc, out = run("verify", refs, "--json")
    assert rc == 0 and json.loads(out)["counts"]["bit_exact"] == 7, out


def test_verify_one_source_of_a_combined_map_checks_its_slab(tmp_path: Path) -> None:
    files = [str(p) for p in frames(tmp_path)]
    refs = str(tmp_path / "run.parquet")
    run("refs", *files, "--combine-new-dim", "run", "-o", refs)
    rc, out = run("verify", files[1], refs, "--json")
    rep = json.loads(out)
    assert rc == 0 and rep["ok"], out
    assert [c["part"] for c in rep["combined"]["checked"]] == [1]
    assert len(rep["combined"]["unchecked"]) == 2
    rc, text = run("verify", files[0], refs)
    text = " ".join(text.split())
    assert rc == 0 and "checked 1 of its 3 files; not checked:" in text, text
    # a file that is not one of its parts
    other = frames(tmp_path / "other", 1)[0]
    rc, out = run("verify", str(other), refs, "--json")
    err = json.loads(out)
    assert rc == 2 and err["error"]["code"] == "bad_input", out
    assert "is not one of the 3 files" in err["error"]["message"]


def test_verify_combined_map_fails_when_a_source_changed(tmp_path: Path) -> None:
    files = [str(p) for p in frames(tmp_path)]
    refs = str(tmp_path / "run.json")
    run("refs", *files, "--combine-dim", "0", "-o", refs, "--inline-threshold", "0")
    with h5py.File(files[1], "r+") as f:
        # less compressible than before: HDF5 writes the chunk elsewhere, the map's ref is stale
        f["data"][2] = np.random.default_rng(9).integers(0, 2**16, (16, 16)).astype("<u2")
    rc, out = run("verify", *files, refs, "--json")
    rep = json.loads(out)
    assert rc == 8 and not rep["ok"], out
    bad = [a for a in rep["arrays"] if not a["ok"]]
    assert [(a["path"], a["source"]) for a in bad] == [("data", files[1])], bad
    rc, _ = run("verify", files[0], refs)
    assert rc == 0  # the unchanged file's slab still matches
    rc, text = run("verify", *files, refs)
    assert rc == 8 and "MISMATCH" in text


def test_verify_single_file_map_needs_exactly_its_file(tmp_path: Path) -> None:
    files = [str(p) for p in frames(tmp_path, 2)]
    refs = str(tmp_path / "one.json")
    run("refs", files[0], "-o", refs)
    assert run("verify", files[0], refs)[0] == 0
    for args in ([refs], [*files, refs]):
        rc, out = run("verify", *args, "--json")
        assert rc == 2 and json.loads(out)["error"]["code"] == "bad_input", out
    # the Python function as before
    assert verify(files[0], refs).ok


def test_verify_combined_python_api(tmp_path: Path) -> None:
    files = frames(tmp_path)
    res = combine_refmaps([build_refmap(p) for p in files], new_dim="run")
    out = write_refmap(res.refmap, tmp_path / "r.json")
    rep = verify(files, out)
    assert rep.ok and rep.combined is not None and len(rep.arrays) == 3
    assert verify(None, out).ok
