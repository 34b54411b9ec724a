"""Train a tiny CNN on detector frames read straight from a repository on (loopback) S3.

    python examples/train_frames.py                 # starts a throw-away S3 server on 127.0.0.1
    python examples/train_frames.py s3://bucket/repo --entries 'run42/*'

With no repository given, the script starts moto's S3 server on 127.0.0.1, writes the
sample NeXus scans (``hyperslab sample``), ingests them with their sources uploaded and
deletes the local files, so every frame the model sees comes from S3 through
``hyperslab.ml.ArrayDataset``: chunk-aware shuffling, two DataLoader workers, each
reading its own share of the epoch. The toy task: tell frames that hold a bright Bragg
spot from those that do not (the label is read off the frame itself).
Needs PyTorch (``pip install hyperslab[ml]``) and, for the loopback server, moto.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader

from hyperslab.ml import ArrayDataset, to_device

ARRAY = "entry/data/data"


@contextlib.contextmanager
def loopback_repository() -> Iterator[str]:
    """A repository on a throw-away S3 server holding two sample scans."""
    import boto3
    from moto.server import ThreadedMotoServer

    from hyperslab.convert.ingest import ingest
    from hyperslab.references.repository import Repository
    from hyperslab.samples import write_samples

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    os.environ.update(
        AWS_ACCESS_KEY_ID="example",
        AWS_SECRET_ACCESS_KEY="example-secret",
        AWS_DEFAULT_REGION="us-east-1",
        AWS_ENDPOINT_URL=endpoint,  # DataLoader workers inherit it
    )
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="beamline")
    try:
        with tempfile.TemporaryDirectory() as tmp:
            files = write_samples(Path(tmp), frames=96, shape=(64, 96), seed=1)[:2]
            repo = Repository.init("s3://beamline/repo")
            ingest(repo, [str(f) for f in files], name="run42", upload_sources=True)
            repo.close()
        # the local files are gone: from here on every byte comes from S3
        yield "s3://beamline/repo"
    finally:
        server.stop()


class TinyCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveMaxPool2d(1),
            nn.Flatten(),
            nn.Linear(8, 2),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def counts(frames: torch.Tensor) -> torch.Tensor:
    """Photon counts on a log scale; module gaps (marked 2**32 - 1) count as none."""
    x = frames.double()
    x = torch.where(x >= 2**31, torch.zeros_like(x), x)
    return torch.log1p(x).float()


def train(repo: str, entries: str | None, epochs: int, workers: int, device: str) -> None:
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    ds = ArrayDataset(repo, ARRAY, entries=entries, buffer_chunks=8, seed=0)
    print(f"{ds}: a worker holds at most {ds.memory_bound() / 1e6:.1f} MB of frames")
    model = TinyCNN().to(dev)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    loss_fn = nn.CrossEntropyLoss()
    bright = None  # log-count of the brightest pixel that makes a frame "bright"
    for epoch in range(epochs):
        ds.set_epoch(epoch)  # another chunk-aware shuffle each epoch
        t0, seen, correct, total_loss = time.perf_counter(), 0, 0, 0.0
        # pinned batches copy to the GPU while it works on the previous one
        loader = DataLoader(ds, batch_size=16, num_workers=workers, pin_memory=dev.type == "cuda")
        for batch in loader:
            x = counts(to_device(batch, dev)["data"]).unsqueeze(1)
            peak = x.amax(dim=(1, 2, 3))
            if bright is None:
                bright = float(peak.median())
            y = (peak > bright).long()
            logits = model(x)
            loss = loss_fn(logits, y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            seen += len(y)
            correct += int((logits.argmax(1) == y).sum())
            total_loss += loss.item() * len(y)
        dt = time.perf_counter() - t0
        print(
            f"epoch {epoch}: {seen} frames in {dt:.2f} s ({seen / dt:.0f}/s), "
            f"loss {total_loss / seen:.3f}, accuracy {correct / seen:.2f}"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("repo", nargs="?", help="a repository (default: a loopback S3 one)")
    ap.add_argument("--entries", help="names or a glob of the entries to train on")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--device", default="auto", help="where the model runs (auto: cuda if any)")
    args = ap.parse_args()
    if args.repo:
        train(args.repo, args.entries, args.epochs, args.workers, args.device)
    else:
        with loopback_repository() as repo:
            train(repo, args.entries, args.epochs, args.workers, args.device)


if __name__ == "__main__":
    main()
