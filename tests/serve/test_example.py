"""examples/read_over_http.py runs against a real keyed server on loopback and prints
what a collaborator sees: branches, entries, a search, a frame's mean (xarray over HTTP)
and the same frame downloaded as .npy."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import h5py
import pytest

pytest.importorskip("starlette")

from hyperslab.serve.app import create_app
from tests.serve.conftest import ALICE, ENTRY, OTHER, Shared, running

SCRIPT = Path(__file__).parents[2] / "examples" / "read_over_http.py"


def _run(*args: str, key: str | None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "HYPERSLAB_KEY"}
    if key is not None:
        env["HYPERSLAB_KEY"] = key
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


def test_read_over_http_example(shared: Shared) -> None:
    with h5py.File(shared.files[ENTRY]) as f:
        mean = float(f["entry/data/data"][0].mean())
    with running(create_app(shared.repo, keys=shared.keys)) as server:
        done = _run(server, ENTRY, "--query", "name~run4*", key=ALICE)
        assert done.returncode == 0, done.stderr
        out = done.stdout
        assert "branches: main" in out
        assert f"entries (1): {ENTRY}" in out  # alice sees only run42/*
        assert OTHER not in out
        assert "search 'name~run4*': 1 hit(s)" in out
        assert "signal: entry/data/data [4, 24, 32] <u4" in out
        assert f"frame 0 mean: {mean:.4f}" in out
        assert f"slice 0 via npy: shape (24, 32), mean {mean:.4f}" in out
        # without the key the server refuses it
        refused = _run(server, ENTRY, key=None)
        assert refused.returncode != 0
        assert "401" in refused.stderr and "unauthorized" in refused.stderr
        assert "Traceback" not in refused.stderr
