"""The map shows the paths h5py shows (issue 19, item 1): a group reached by a soft
link appears at the link's path as well, its arrays referencing the same chunks; a
dataset nobody can read here is reported and skipped while the rest converts."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
from typer.testing import CliRunner

from hyperslab.cli import app
from hyperslab.convert.api import build_refmap
from hyperslab.convert.hdf5 import SKIPPED_ATTR
from hyperslab.convert.verify import verify
from hyperslab.references.refmap_files import write_refmap

runner = CliRunner()


def _h5py_paths(f: h5py.File) -> set[str]:
    """Every dataset path h5py opens, following soft links (not back into an ancestor)."""
    found: set[str] = set()

    def walk(group: h5py.Group, prefix: str, ancestors: tuple[object, ...]) -> None:
        for name in group:
            obj = group[name]
            path = f"{prefix}{name}"
            if isinstance(obj, h5py.Dataset):
                found.add(path)
            elif isinstance(obj, h5py.Group) and obj.id not in ancestors:
                walk(obj, path + "/", (*ancestors, obj.id))

    walk(f, "", (f.id,))
    return found


def test_a_group_behind_a_soft_link_appears_at_the_link(tmp_path: Path) -> None:
    src = tmp_path / "nwb_like.h5"
    data = np.arange(600, dtype="<u2").reshape(6, 10, 10)
    with h5py.File(src, "w") as f:
        det = f.create_group("entry/instrument/detector")
        det.attrs["NX_class"] = "NXdetector"
        det.create_dataset("data", data=data, chunks=(1, 10, 10), compression="gzip")
        det.create_dataset("distance", data=0.25)
        f["entry/data"] = h5py.SoftLink("/entry/instrument/detector")
        f["entry/instrument/detector/back"] = h5py.SoftLink("/entry")  # a loop
    result = build_refmap(src)
    refmap = result.refmap
    with h5py.File(src) as f:
        assert _h5py_paths(f) <= set(refmap.arrays)
    linked, target = (
        refmap.arrays["entry/data/data"],
        refmap.arrays["entry/instrument/detector/data"],
    )
    assert linked.n_refs == 6  # the same chunks, not copies
    for column in ("index", "source", "offset", "length"):
        assert np.array_equal(getattr(linked, column), getattr(target, column)), column
    assert refmap.groups["entry/data"]["NX_class"] == "NXdetector"
    assert refmap.groups["entry/data"]["hyperslab:link"] == "/entry/instrument/detector"
    assert refmap.groups["entry"]["hyperslab:links"] == {"data": "/entry/instrument/detector"}
    assert any("back" in w and "not followed" in w for w in result.reports[0].warnings)
    out = write_refmap(refmap, tmp_path / "refs.json", "json")
    report = verify(src, out)
    assert report.ok and not report.missing, [(a.path, a.detail) for a in report.arrays]


def _unreadable_file(path: Path) -> None:
    """A dataset whose chunk says it went through filter 40000, which no plugin here
    provides (as when a ZFP plugin fails), next to one that reads."""
    with h5py.File(path, "w") as f:
        f.create_dataset("entry/good", data=np.arange(100.0).reshape(10, 10), chunks=(5, 5))
        dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
        dcpl.set_chunk((4,))
        dcpl.set_filter(40000, h5py.h5z.FLAG_OPTIONAL, (1, 2))
        space = h5py.h5s.create_simple((8,))
        bad = h5py.h5d.create(f["entry"].id, b"bad", h5py.h5t.NATIVE_INT32, space, dcpl=dcpl)
        bad.write_direct_chunk((0,), np.arange(4, dtype="<i4").tobytes(), filter_mask=0)


def test_a_dataset_nobody_can_read_is_skipped_and_the_rest_converts(tmp_path: Path) -> None:
    src = tmp_path / "zfp.h5"
    _unreadable_file(src)
    with h5py.File(src) as f:
        try:
            f["entry/bad"][0]
            raise AssertionError("h5py read the dataset: the test file is not unreadable")
        except OSError:
            pass
    result = build_refmap(src)
    assert set(result.refmap.arrays) == {"entry/good"}
    assert result.reports[0].counts == {"virtual": 1, "skipped": 1}
    assert "40000" in result.refmap.groups["entry"][SKIPPED_ATTR]["bad"]

    refs = tmp_path / "zfp.json"
    res = runner.invoke(app, ["refs", str(src), "-o", str(refs), "--json"])
    assert res.exit_code == 0, res.stdout
    doc = json.loads(res.stdout)["written"][0]
    assert doc["counts"] == {"virtual": 1, "skipped": 1}
    res = runner.invoke(app, ["refs", str(src), "-o", str(refs)])
    assert res.exit_code == 0, res.stdout
    text = " ".join(res.stdout.split())  # as wide as the test runner's COLUMNS
    assert "1 array (1 virtual), 4 chunk refs; 1 dataset skipped (unreadable here)" in text
    assert " skipped 1: " in text and text.endswith("(entry/bad)")
    assert "materialised" not in res.stdout
    res = runner.invoke(app, ["verify", str(src), str(refs), "--json"])
    assert res.exit_code == 0, res.stdout  # skipped on purpose, not missing
    doc = json.loads(res.stdout)
    assert doc["missing"] == [] and list(doc["skipped"]) == ["entry/bad"]
    assert doc["counts"]["skipped"] == 1 and doc["counts"]["bit_exact"] == 1
    res = runner.invoke(app, ["verify", str(src), str(refs)])
    text = " ".join(res.stdout.split())
    assert res.exit_code == 0 and "skipped entry/bad (left out of the map: " in text
    assert "0 missing, 1 skipped, 0 unverifiable" in text
