"""Every command, fed the ordinary mistakes a new user makes, answers with a named error
and a non-zero exit status that is not 1 (``internal``), and leaves nothing broken.

The table walks missing, empty, truncated, wrong-type and unwritable paths, malformed
maps, configurations, rules and queries, and unknown names, for every command.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path

import h5py
import numpy as np
import pytest
import tifffile
from typer.testing import CliRunner

from hyperslab.cli import app
from hyperslab.convert.cbf import byte_offset_encode
from hyperslab.samples import write_frame_series

runner = CliRunner()


@pytest.fixture(scope="module")
def place(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with a good file, a repository holding it, and bad inputs of each kind."""
    d = tmp_path_factory.mktemp("bad")
    good = d / "good.h5"
    with h5py.File(good, "w") as f:
        f.create_dataset(
            "entry/data", data=np.arange(100, dtype="<i4").reshape(10, 10), chunks=(5, 5)
        )
    assert runner.invoke(app, ["init", str(d / "repo")]).exit_code == 0
    assert (
        runner.invoke(app, ["ingest", str(good), "-r", str(d / "repo"), "-n", "run/a"]).exit_code
        == 0
    )
    assert runner.invoke(app, ["refs", str(good), "-o", str(d / "good.json")]).exit_code == 0
    (d / "notes.txt").write_text("not hdf5, not json\n")
    (d / "empty.h5").write_bytes(b"")
    (d / "truncated.h5").write_bytes(good.read_bytes()[:700])
    (d / "truncated.json").write_text((d / "good.json").read_text()[:120])
    (d / "list.json").write_text("[1, 2, 3]")
    (d / "a_folder").mkdir()
    (d / "plain_dir").mkdir()  # a folder that is not a repository
    (d / "bad.toml").write_text("[sites.x\nurl = ")
    (d / "wrong_rules.toml").write_text("[[job]]\nsrc = 3\n")
    (d / "wrong_hot.toml").write_text("[[hot]]\nentries = 7\n")
    (d / "stats.sqlite").write_text("this is not a database")
    frames = d / "frames"
    frames.mkdir()
    cbf = _cbf_frame(np.arange(12, dtype="<i4").reshape(3, 4))
    (frames / "truncated.cbf").write_bytes(cbf[: len(cbf) - 40])
    mixed = d / "mixed_frames"
    mixed.mkdir()
    (mixed / "a_1.cbf").write_bytes(cbf)
    (mixed / "a_2.cbf").write_bytes(_cbf_frame(np.zeros((4, 4), "<i4")))
    tifffile.imwrite(d / "jpeg.tif", np.zeros((16, 16), np.uint8), compression="jpeg")
    (d / "dead.toml").write_text(
        '[sites.dead]\nurl = "s3://bucket"\nendpoint_url = "http://127.0.0.1:9"\n'
    )
    return d


def _cbf_frame(image: np.ndarray) -> bytes:
    """A small Pilatus-like CBF file (what ``hyperslab sample`` writes)."""
    d = tempfile.mkdtemp()
    write_frame_series(Path(d), frames=1, shape=(8, 8))
    text = (Path(d) / "pilatus_cbf" / "frame_00001.cbf").read_bytes()
    head, _, _ = text.partition(b"\x0c\x1a\x04\xd5")
    data = byte_offset_encode(image)
    head = re.sub(rb"X-Binary-Size: \d+", b"X-Binary-Size: %d" % len(data), head)
    head = re.sub(rb"Fastest-Dimension: \d+", b"Fastest-Dimension: %d" % image.shape[1], head)
    head = re.sub(rb"Second-Dimension: \d+", b"Second-Dimension: %d" % image.shape[0], head)
    return head + b"\x0c\x1a\x04\xd5" + data + b"\x00" * 16


def cases(d: Path) -> Iterator[tuple[str, list[str]]]:
    """``(what, argv)`` of the bad inputs, command by command."""
    repo, good, notes = str(d / "repo"), str(d / "good.h5"), str(d / "notes.txt")
    out = str(d / "out.json")
    missing = str(d / "missing.h5")
    file_as_dir = str(d / "notes.txt" / "x.json")
    unwritable = "/proc/hyperslab-test/x.json"
    # refs
    yield "refs: missing file", ["refs", missing, "-o", out]
    yield "refs: not HDF5", ["refs", notes, "-o", out]
    yield "refs: empty file", ["refs", str(d / "empty.h5"), "-o", out]
    yield "refs: truncated HDF5", ["refs", str(d / "truncated.h5"), "-o", out]
    yield "refs: empty folder", ["refs", str(d / "a_folder"), "-o", out]
    yield "refs: output under a file", ["refs", good, "-o", file_as_dir]
    yield "refs: unwritable output", ["refs", good, "-o", unwritable]
    yield "refs: output is a folder", ["refs", good, "-o", str(d / "a_folder"), "--format", "json"]
    yield "refs: unknown format", ["refs", good, "-o", out, "--format", "xml"]
    yield "refs: negative inline threshold", ["refs", good, "-o", out, "--inline-threshold", "-1"]
    yield "refs: combine one source", ["refs", good, "-o", out, "--combine-dim", "5"]
    yield "refs: truncated CBF", ["refs", str(d / "frames"), "-o", out]
    yield "refs: frames of two shapes", ["refs", str(d / "mixed_frames"), "-o", out]
    yield "refs: TIFF compression without a codec", ["refs", str(d / "jpeg.tif"), "-o", out]
    yield "refs: frames mixed with HDF5", ["refs", good, str(d / "jpeg.tif"), "-o", out]
    # verify
    yield "verify: map not JSON", ["verify", good, notes]
    yield "verify: truncated map", ["verify", good, str(d / "truncated.json")]
    yield "verify: map is a JSON list", ["verify", good, str(d / "list.json")]
    yield "verify: missing map", ["verify", good, str(d / "missing.json")]
    yield "verify: missing source", ["verify", missing, str(d / "good.json")]
    yield "verify: source not HDF5", ["verify", notes, str(d / "good.json")]
    yield "verify: source is the map", ["verify", str(d / "good.json"), str(d / "good.json")]
    # sample
    yield "sample: into a file", ["sample", notes]
    yield "sample: unwritable", ["sample", "/proc/hyperslab-test"]
    yield "sample: no frames", ["sample", str(d / "s"), "--frames", "0"]
    # repositories
    for cmd in (["log"], ["show"], ["fsck"], ["gc"], ["branch"], ["tag"], ["upgrade"]):
        yield f"{cmd[0]}: not a repository", [*cmd, str(d / "plain_dir")]
        yield f"{cmd[0]}: a file as repository", [*cmd, notes]
        yield f"{cmd[0]}: missing repository", [*cmd, str(d / "nowhere")]
    yield "init: under a file", ["init", file_as_dir]
    yield "init: unwritable", ["init", "/proc/hyperslab-test/repo"]
    yield "init: twice", ["init", repo]
    yield "log: unknown ref", ["log", repo, "mian"]
    yield "log: negative limit", ["log", repo, "-n", "-1"]
    yield "show: unknown entry", ["show", repo, "main", "run/b"]
    yield "show: unknown ref", ["show", repo, "v9"]
    yield "diff: unknown refs", ["diff", repo, "main", "nope"]
    yield "branch: bad name", ["branch", repo, "../x"]
    yield "branch: delete missing", ["branch", repo, "nope", "--delete"]
    yield "branch: from unknown", ["branch", repo, "dev", "--from", "nope"]
    yield "tag: of unknown ref", ["tag", repo, "v1", "nope"]
    yield "tag: bad name", ["tag", repo, "a b"]
    yield "gc: bad duration", ["gc", repo, "--older-than", "soon"]
    yield "search: unknown key", ["search", repo, "nokey=3"]
    yield "search: bad comparison", ["search", repo, "energy>abc"]
    yield "search: unclosed glob", ["search", repo, "name~["]
    yield "search: unterminated quote", ["search", repo, 'title~"x']
    yield "search: negative limit", ["search", repo, "name~*", "-n", "-2"]
    # ingest
    yield "ingest: missing file", ["ingest", missing, "-r", repo]
    yield "ingest: not HDF5", ["ingest", notes, "-r", repo]
    yield "ingest: truncated CBF", ["ingest", str(d / "frames"), "-r", repo]
    yield "ingest: frames of two shapes", ["ingest", str(d / "mixed_frames" / "*.cbf"), "-r", repo]
    yield "ingest: into no repository", ["ingest", good, "-r", str(d / "plain_dir")]
    yield "ingest: bad entry name", ["ingest", good, "-r", repo, "-n", "../up"]
    yield "ingest: unknown branch", ["ingest", good, "-r", repo, "-b", "nope"]
    # watch
    folder = str(d / "a_folder")
    yield "watch: missing folder", ["watch", str(d / "nowhere"), "-r", repo, "--once"]
    yield "watch: a file as folder", ["watch", notes, "-r", repo, "--once"]
    yield "watch: into no repository", ["watch", folder, "-r", str(d / "plain_dir"), "--once"]
    yield "watch: unknown template field", ["watch", folder, "-r", repo, "-n", "{nope}", "--once"]
    yield "watch: template naming no file", ["watch", folder, "-r", repo, "-n", "run42", "--once"]
    yield "watch: negative settle", ["watch", folder, "-r", repo, "--settle", "-1", "--once"]
    # export-refs
    yield "export-refs: unknown entry", ["export-refs", repo, "run/b", "--site", repo, "-o", out]
    yield "export-refs: output under a file", [
        "export-refs", repo, "run/a", "--site", repo, "-o", file_as_dir,
    ]  # fmt: skip
    yield "export-refs: unknown site", ["export-refs", repo, "run/a", "--site", "nosite", "-o", out]
    # sync / replicate
    yield "sync: source not a repository", ["sync", str(d / "plain_dir"), str(d / "copy")]
    yield "sync: destination is a file", ["sync", repo, notes]
    yield "sync: unknown branch", ["sync", repo, str(d / "copy2"), "-b", "nope"]
    yield "sync: missing hot rules", ["sync", repo, str(d / "copy3"), "--hot", str(d / "no.toml")]
    yield (
        "sync: malformed hot rules",
        ["sync", repo, str(d / "copy4"), "--hot", str(d / "bad.toml")],
    )
    yield (
        "sync: wrong hot rules",
        ["sync", repo, str(d / "copy5"), "--hot", str(d / "wrong_hot.toml")],
    )
    yield "sync: bad bandwidth", ["sync", repo, str(d / "copy6"), "--bwlimit", "fast"]
    yield "replicate: missing rules", ["replicate", "-r", str(d / "no.toml")]
    yield "replicate: malformed rules", ["replicate", "-r", str(d / "bad.toml")]
    yield "replicate: wrong rules", ["replicate", "-r", str(d / "wrong_rules.toml")]
    yield "replicate: rules are a folder", ["replicate", "-r", str(d / "a_folder")]
    yield "init: unknown format version", ["init", str(d / "new_repo"), "--format-version", "7"]
    # compress
    yield "compress: not a repository", ["compress", str(d / "plain_dir"), "run/a"]
    yield "compress: unknown entry", ["compress", repo, "run/nope"]
    yield "compress: a glob of nothing", ["compress", repo, "other/*"]
    yield "compress: unknown branch", ["compress", repo, "run/a", "-b", "nobranch"]
    yield "compress: unknown codec", ["compress", repo, "run/a", "--codec", "gzip"]
    yield "compress: level out of range", ["compress", repo, "run/a", "-c", "zstd", "--level", "99"]
    yield "compress: a level lz4 lacks", ["compress", repo, "run/a", "--level", "3"]
    yield "compress: unreadable pack size", ["compress", repo, "run/a", "--pack-size", "lots"]
    yield "ingest: unknown --compress codec", ["ingest", good, "-r", repo, "--compress", "rar"]
    # serve (each refused before it listens)
    yield "serve: no repository", ["serve", "--allow-anonymous"]
    yield "serve: not a repository", ["serve", str(d / "plain_dir"), "--allow-anonymous"]
    yield "serve: neither keys nor anonymous", ["serve", repo]
    yield "serve: malformed keys file", ["serve", repo, "--keys", str(d / "bad.toml")]
    yield "serve: missing keys file", ["serve", repo, "--keys", str(d / "no.toml")]
    yield "serve: keys file of other tables", ["serve", repo, "--keys", str(d / "wrong_hot.toml")]
    # caches and statistics
    yield "cache info: a file as cache", ["cache", "info", "--dir", notes]
    yield "stats show: not a database", ["stats", "show", "--file", str(d / "stats.sqlite")]
    yield "stats show: unknown repository", ["stats", "show", "--repo", "zzzz"]
    yield "stats clear: not a database", ["stats", "clear", "--file", str(d / "stats.sqlite")]
    yield "cache clear: a file as cache", ["cache", "clear", "--dir", notes]
    # configuration and sites
    yield "show: unknown site", ["show", "nosite:repo"]
    yield "show: unknown URL scheme", ["show", "ftp://host/repo"]
    yield "show: malformed config", ["show", "x:repo", f"@config={d / 'bad.toml'}"]
    yield "show: config missing", ["show", "x:repo", f"@config={d / 'none.toml'}"]
    yield "show: server down", ["show", "dead:repo", f"@config={d / 'dead.toml'}"]
    yield "search: server down", ["search", "dead:repo", "x", f"@config={d / 'dead.toml'}"]


CASES = list(cases(Path("/x")))


def _env(argv: list[str]) -> tuple[list[str], dict[str, str]]:
    """``@config=PATH`` in a case is the configuration file it runs with (none: no file)."""
    env = {"HYPERSLAB_CONFIG": os.devnull, "AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s"}
    rest = []
    for a in argv:
        if a.startswith("@config="):
            env["HYPERSLAB_CONFIG"] = a[len("@config=") :]
        else:
            rest.append(a)
    return rest, env


@pytest.mark.parametrize("index", range(len(CASES)), ids=[w for w, _ in CASES])
def test_an_ordinary_mistake_is_a_named_error(place: Path, index: int) -> None:
    what, argv = list(cases(place))[index]
    argv, env = _env(argv)
    before = sorted(p.name for p in place.iterdir())
    kept = {p.name: p.read_bytes() for p in place.iterdir() if p.is_file()}
    res = runner.invoke(app, argv, env=env)
    text = res.stdout + (res.stderr or "")
    assert res.exception is None or isinstance(res.exception, SystemExit), (what, res.exception)
    assert res.exit_code not in (0, 1), f"{what}: exit {res.exit_code}\n{text}"
    assert "internal" not in text, f"{what}: {text}"
    # nothing half-written is left beside the inputs
    after = sorted(p.name for p in place.iterdir())
    assert [n for n in after if n not in before and ".hyperslab-tmp-" in n] == [], what
    # and every file the user had is still there, unchanged (a wrong --file is not deleted)
    assert {n: (place / n).read_bytes() for n in kept if (place / n).is_file()} == kept, what
    # --json says the same, as one document
    if "Usage:" in text:
        return  # refused by the argument parser itself (exit 2, its usage message)
    status = res.exit_code
    res = runner.invoke(app, [*argv, "--json"], env=env)
    assert res.exit_code == status, f"{what}: --json exits {res.exit_code}, text {status}"
    doc = json.loads(res.stdout.strip().splitlines()[-1])
    assert doc["ok"] is False, (what, doc)
    codes = [doc["error"]["code"]] if "error" in doc else [f["code"] for f in doc["failed"]]
    assert codes and "internal" not in codes, (what, doc)


def test_the_table_covers_every_command() -> None:
    names = {argv[0] for _, argv in CASES}
    commands = {c.name or c.callback.__name__.replace("_", "-") for c in app.registered_commands}
    groups = {g.name for g in app.registered_groups}
    assert commands | groups <= names | {"stats", "cache"}, (commands | groups) - names
    assert len(CASES) >= 80
