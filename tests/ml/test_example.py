"""examples/train_frames.py runs as the README says: a tiny CNN trains on frames read
from a throw-away loopback S3 repository through two DataLoader workers."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("moto")

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "train_frames.py"


def test_the_training_example_reads_every_frame_each_epoch() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    out = subprocess.run(
        [sys.executable, str(EXAMPLE), "--epochs", "2", "--device", "cpu"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    total = int(re.search(r"\((\d+) samples\)", out.stdout).group(1))  # type: ignore[union-attr]
    epochs = re.findall(r"epoch (\d+): (\d+) frames .* loss ([\d.]+)", out.stdout)
    assert [e for e, _, _ in epochs] == ["0", "1"]
    assert all(int(n) == total for _, n, _ in epochs)  # every frame, each epoch
    assert all(float(loss) > 0 for _, _, loss in epochs)
