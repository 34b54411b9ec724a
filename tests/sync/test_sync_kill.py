"""``hyperslab sync`` SIGKILLed at random points, then re-run.

Each run is a real process (tests/sync/kill_driver.py) killed with SIGKILL at its
N-th site request, N drawn at random over the whole run: planning, data, hot-chunk
packs, metadata and the branch move. After the re-run the destination must be fsck
clean and identical to an uninterrupted sync, and no object may have been uploaded
again after an upload of it verified.
"""

from __future__ import annotations

import os
import random
import re
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from hyperslab.convert.ingest import ingest
from hyperslab.references.fsck import fsck
from hyperslab.references.repository import Repository
from hyperslab.storage import FileSite
from hyperslab.sync import HotRules, sync

ROOT = Path(__file__).resolve().parents[2]
KILLS = 21
HOT = """
[[rule]]
entries = "scan_*"
arrays = "entry/data/data"
frames = "-4:"
"""


def _driver(
    kill_at: int, log: Path, src: Path, dst: Path, rules: Path
) -> subprocess.CompletedProcess:
    args = ["sync", str(src), str(dst), "--sources", "--hot", str(rules), "--json", "-j", "4"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])}
    return subprocess.run(
        [sys.executable, "-m", "tests.sync.kill_driver", str(kill_at), str(log), "--", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=120,
    )


def _state(root: Path) -> dict[str, bytes]:
    site = FileSite(root)
    return {k: site.get(k) for k in site.list("") if not k.startswith("replicas/done/")}


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict[str, bytes]]:
    tmp = tmp_path_factory.mktemp("kill")
    rng = np.random.default_rng(3)
    files = []
    for i in range(3):
        path = tmp / f"scan_{i}.h5"
        with h5py.File(path, "w") as f:
            f.create_dataset(
                "entry/data/data",
                data=rng.integers(0, 5000, size=(8, 32, 32), dtype=np.uint32),
                chunks=(1, 32, 32),
                compression="gzip",
            )
        files.append(str(path))
    src = tmp / "src"
    repo = Repository.init(str(src))
    ingest(repo, files[:2], upload_sources=True, fail_fast=True)
    ingest(repo, files[2:], upload_sources=True, fail_fast=True)  # two commits
    rules = tmp / "hot.toml"
    rules.write_text(HOT)
    reference = tmp / "reference"
    sync(repo, str(reference), sources=True, hot=HotRules.load(rules))
    return src, rules, _state(reference)


def test_sigkill_at_random_points_then_rerun_ends_identical(
    source: tuple[Path, Path, dict[str, bytes]], tmp_path: Path
) -> None:
    src, rules, want = source
    probe = _driver(0, tmp_path / "probe.log", src, tmp_path / "probe", rules)
    assert probe.returncode == 0, probe.stderr
    total = int(re.search(r"requests=(\d+)", probe.stderr).group(1))  # type: ignore[union-attr]
    assert total > KILLS * 2
    points = sorted(random.Random(11).sample(range(1, total), KILLS))
    killed = 0
    for n in points:
        dst, log = tmp_path / f"dst-{n}", tmp_path / f"uploads-{n}.log"
        first = _driver(n, log, src, dst, rules)
        killed += first.returncode == -9
        second = _driver(0, log, src, dst, rules)
        assert second.returncode == 0, (n, second.stdout, second.stderr)
        uploads = log.read_text().split() if log.exists() else []
        again = sorted({k for k in uploads if uploads.count(k) > 1})
        assert not again, f"killed at request {n}: uploaded twice after verifying: {again}"
        assert _state(dst) == want, f"killed at request {n}: final state differs"
        assert fsck(Repository.open(str(dst))).clean
    assert killed == KILLS  # every run really died mid-way
