"""The `hyperslab` command: exit statuses, --json, bad input leaves nothing behind."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from hyperslab.cli import app

runner = CliRunner()


def run(*args: str) -> tuple[int, str]:
    res = runner.invoke(app, list(args), catch_exceptions=False)
    return res.exit_code, res.stdout


def good_file(path: Path) -> Path:
    with h5py.File(path, "w") as f:
        f.create_dataset(
            "entry/data",
            data=np.arange(100, dtype="<i4").reshape(10, 10),
            chunks=(5, 5),
            compression="gzip",
        )
        f["entry/title"] = "a title"
    return path


def test_refs_and_verify_round_trip(tmp_path: Path) -> None:
    src = good_file(tmp_path / "a.h5")
    code, out = run("refs", str(src), "-o", str(tmp_path / "a.json"), "--json")
    assert code == 0, out
    doc = json.loads(out)
    assert doc["ok"] and doc["written"][0]["counts"] == {"virtual": 1, "materialised": 1}
    code, out = run("verify", str(src), str(tmp_path / "a.json"), "--json")
    assert code == 0, out
    assert json.loads(out)["counts"]["bit_exact"] == 2


def test_entry_point_runs_as_a_process(tmp_path: Path) -> None:
    exe = shutil.which("hyperslab", path=str(Path(sys.executable).parent))
    assert exe, "console script not installed"
    res = subprocess.run([exe, "--help"], capture_output=True, text=True, check=False)
    assert res.returncode == 0 and "Exit statuses" in res.stdout
    res = subprocess.run(
        [exe, "refs", str(tmp_path / "missing.h5"), "-o", str(tmp_path / "m.json")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert res.returncode == 3 and "does not exist" in res.stderr


@pytest.mark.parametrize(
    ("content", "code", "err_code"),
    [
        (b"", 2, "not_hdf5"),
        (b"this is a text file, not HDF5\n" * 10, 2, "not_hdf5"),
    ],
)
def test_not_hdf5(tmp_path: Path, content: bytes, code: int, err_code: str) -> None:
    bad = tmp_path / "bad.h5"
    bad.write_bytes(content)
    rc, out = run("refs", str(bad), "-o", str(tmp_path / "o.json"), "--json")
    assert rc == code
    assert json.loads(out)["failed"][0]["code"] == err_code
    assert not (tmp_path / "o.json").exists()


def test_truncated_file(tmp_path: Path) -> None:
    src = good_file(tmp_path / "a.h5")
    data = src.read_bytes()
    for cut in (len(data) // 2, 2048, 600):
        trunc = tmp_path / f"t{cut}.h5"
        trunc.write_bytes(data[:cut])
        rc, out = run("refs", str(trunc), "-o", str(tmp_path / "o.json"), "--json")
        assert rc == 2, out
        assert json.loads(out)["failed"][0]["code"] == "not_hdf5"
        assert not (tmp_path / "o.json").exists()


def test_permission_denied(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = good_file(tmp_path / "a.h5")
    if os.geteuid() != 0:
        src.chmod(0)
    else:  # root reads everything: simulate what a normal user gets
        real = os.access
        monkeypatch.setattr(os, "access", lambda p, m: False if str(p) == str(src) else real(p, m))
    rc, out = run("refs", str(src), "-o", str(tmp_path / "o.json"), "--json")
    assert rc == 4
    assert json.loads(out)["failed"][0]["code"] == "access_denied"


def test_dangling_external_link(tmp_path: Path) -> None:
    with h5py.File(tmp_path / "d.h5", "w") as f:
        f["x"] = np.arange(3)
        f["ext"] = h5py.ExternalLink("gone.h5", "/data")
    rc, out = run("refs", str(tmp_path / "d.h5"), "-o", str(tmp_path / "o.json"), "--json")
    assert rc == 3
    err = json.loads(out)["failed"][0]
    assert err["code"] == "broken_link" and "gone.h5" in err["message"]
    assert not (tmp_path / "o.json").exists()
    # explicitly allowed: the link is reported, the rest converted
    rc, out = run(
        "refs",
        str(tmp_path / "d.h5"),
        "-o",
        str(tmp_path / "o.json"),
        "--json",
        "--allow-broken-links",
    )
    assert rc == 0
    files = json.loads(out)["written"][0]["files"][0]
    assert files["links"][0]["status"] == "broken"


@pytest.mark.parametrize("name", [b"..", b".zarray", b"a\x01b", b"a\\b"])
def test_unsafe_names(tmp_path: Path, name: bytes) -> None:
    with h5py.File(tmp_path / "n.h5", "w") as f:
        f["x"] = 1
        f.id.links.create_soft(name, b"/x")
    rc, out = run("refs", str(tmp_path / "n.h5"), "-o", str(tmp_path / "o.json"), "--json")
    assert rc == 2
    assert json.loads(out)["failed"][0]["code"] == "unsafe_name"
    assert not (tmp_path / "o.json").exists()


def test_directory_continues_past_bad_files(tmp_path: Path) -> None:
    d = tmp_path / "in"
    d.mkdir()
    good_file(d / "a.h5")
    good_file(d / "c.h5")
    (d / "b.h5").write_bytes(b"garbage")
    rc, out = run("refs", str(d), "-o", str(tmp_path / "maps"), "--json")
    assert rc == 2
    doc = json.loads(out)
    assert [Path(w["source"]).name for w in doc["written"]] == ["a.h5", "c.h5"]
    assert [Path(f["source"]).name for f in doc["failed"]] == ["b.h5"]
    assert sorted(p.name for p in (tmp_path / "maps").iterdir()) == ["a.json", "c.json"]
    rc, out = run("refs", str(d), "-o", str(tmp_path / "maps2"), "--json", "--fail-fast")
    assert rc == 2
    assert [Path(w["source"]).name for w in json.loads(out)["written"]] == ["a.h5"]


def test_verify_detects_a_wrong_map(tmp_path: Path) -> None:
    src = good_file(tmp_path / "a.h5")
    run("refs", str(src), "-o", str(tmp_path / "a.json"))
    doc = json.loads((tmp_path / "a.json").read_text())
    # point one chunk at the wrong bytes (the next chunk's): decodes fine, wrong values
    keys = sorted(
        k
        for k in doc["refs"]
        if k.startswith("entry/data/") and not k.endswith((".zarray", ".zattrs"))
    )
    doc["refs"][keys[0]] = doc["refs"][keys[1]]
    (tmp_path / "a.json").write_text(json.dumps(doc))
    rc, out = run("verify", str(src), str(tmp_path / "a.json"), "--json")
    assert rc == 8
    rep = json.loads(out)
    assert not rep["ok"] and rep["counts"]["bit_exact"] == 1


def test_bad_options(tmp_path: Path) -> None:
    src = good_file(tmp_path / "a.h5")
    rc, _ = run("refs", str(src), "-o", str(tmp_path / "x"), "--format", "xml")
    assert rc == 2
    rc, _ = run("refs", str(src), str(src), "-o", str(tmp_path / "x.json"))
    assert rc == 2
    rc, _ = run("sample", str(tmp_path / "s"), "--frames", "0")
    assert rc == 2


def _unknown_filter_file(path: Path, *, claim_filtered: bool) -> Path:
    with h5py.File(path, "w") as f:
        dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
        dcpl.set_chunk((4,))
        dcpl.set_filter(40000, h5py.h5z.FLAG_OPTIONAL, (1, 2))
        sid = h5py.h5s.create_simple((8,))
        ds = h5py.Dataset(h5py.h5d.create(f.id, b"data", h5py.h5t.NATIVE_INT32, sid, dcpl=dcpl))
        if claim_filtered:  # a chunk that says filter 40000 was applied: nobody can decode it
            ds.id.write_direct_chunk((0,), np.arange(4, dtype="<i4").tobytes(), filter_mask=0)
        else:  # HDF5 skips an unavailable optional filter: readable, but not in place
            ds[...] = np.arange(8)
    return path


def test_unknown_filter_id(tmp_path: Path) -> None:
    ok = _unknown_filter_file(tmp_path / "opt.h5", claim_filtered=False)
    rc, out = run("refs", str(ok), "-o", str(tmp_path / "o.json"), "--json")
    assert rc == 0
    ds = json.loads(out)["written"][0]["files"][0]["datasets"][0]
    assert ds["status"] == "materialised" and "40000" in ds["reason"]
    rc, _ = run("verify", str(ok), str(tmp_path / "o.json"))
    assert rc == 0

    bad = _unknown_filter_file(tmp_path / "bad.h5", claim_filtered=True)
    rc, out = run("refs", str(bad), "-o", str(tmp_path / "b.json"), "--json")
    assert rc == 2
    err = json.loads(out)["failed"][0]
    assert err["code"] == "unsupported" and "40000" in err["message"]
    assert not (tmp_path / "b.json").exists()


def test_error_messages_print_brackets_as_text(tmp_path: Path) -> None:
    """A message that quotes the user's input ("[abc]", "[/x]") is text, not rich markup:
    nothing of it disappears, and nothing raises a markup error."""
    code, _ = run("init", str(tmp_path / "repo"))
    assert code == 0
    res = runner.invoke(app, ["search", str(tmp_path / "repo"), "sample~[/x"])
    assert res.exit_code == 2
    assert "'sample~[/x'" in res.stderr and "[abc] or [!abc]" in res.stderr


def _commands(group: Any, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    found = [prefix]
    for name, cmd in group.commands.items():
        if hasattr(cmd, "commands"):
            found += _commands(cmd, (*prefix, name))
        else:
            found.append((*prefix, name))
    return found


def test_every_help_is_whole_at_80_columns() -> None:
    """--help at 80 columns: every option name whole (rich cut them: '--allow-broken-li…'),
    a command list whose summaries are whole sentences, indented examples kept line for
    line, and no help that sends the reader to itself."""
    group: Any = typer.main.get_command(app)
    commands = _commands(group)
    assert len(commands) > 20
    for path in commands:
        res = runner.invoke(app, [*path, "--help"], env={"COLUMNS": "80"})
        assert res.exit_code == 0, path
        text = res.stdout
        assert "…" not in text and "╭" not in text, (path, text)
        assert "\\[" not in text, (path, "rich markup escapes shown as text")
        cmd = group
        for name in path:
            cmd = cmd.commands[name]
        for param in cmd.params:
            for opt in param.opts:
                if opt.startswith("-"):
                    assert opt in text, (path, opt)
        assert f"hyperslab {' '.join(path)} --help" not in text, path
        if path:
            assert "--help in the README" not in text, path
    text = runner.invoke(app, ["--help"], env={"COLUMNS": "80"}).stdout
    summary = " ".join(text.split("  refs ", 1)[1].split("\n  verify", 1)[0].split())
    assert summary == "Write kerchunk reference maps that expose HDF5 chunks in place as Zarr"
    text = runner.invoke(app, ["search", "--help"], env={"COLUMNS": "80"}).stdout
    assert (
        "\n    hyperslab search ./repo 'sample~insulin energy>12 start_time>=2026-01-15'\n" in text
    )
