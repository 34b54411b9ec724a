"""Read a repository shared with ``hyperslab serve``, as a collaborator would: plain HTTP,
zarr, xarray and numpy; neither hyperslab nor storage credentials.

Usage: python examples/read_over_http.py URL ENTRY [--key KEY] [--ref REF] [--query Q]

URL is the server (http://host:8000), ENTRY an entry's name (run42/scan_0001_gzip); the
key comes from --key or $HYPERSLAB_KEY (none: the server must allow anonymous reads).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

import numpy as np
import xarray as xr


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("url", help="the server, e.g. http://host:8000")
    parser.add_argument("entry", help="an entry's name, e.g. run42/scan_0001_gzip")
    parser.add_argument("--key", default=os.environ.get("HYPERSLAB_KEY"), help="API key")
    parser.add_argument("--ref", default="main", help="branch, tag or snapshot id")
    parser.add_argument("--query", default="name~*", help="a catalog search")
    args = parser.parse_args()
    base = args.url.rstrip("/")
    headers = {"Authorization": f"Bearer {args.key}"} if args.key else {}

    def get(path: str, **params: str) -> bytes:
        query = urllib.parse.urlencode({"ref": args.ref, **params})
        request = urllib.request.Request(f"{base}{path}?{query}", headers=headers)
        with urllib.request.urlopen(request, timeout=60) as response:
            body: bytes = response.read()
            return body

    def get_json(path: str, **params: str) -> Any:
        return json.loads(get(path, **params))

    # %% what is there: branches, the entries this key may read, a search
    print("branches:", ", ".join(get_json("/api/branches")["branches"]))
    page = get_json("/api/entries", limit="20")
    print(f"entries ({page['total']}):", ", ".join(e["name"] for e in page["entries"]))
    hits = get_json("/api/search", q=args.query)
    print(f"search {args.query!r}: {hits['total']} hit(s)")

    # %% the entry's record: its catalog names the signal (NeXus: default group + signal)
    record = get_json(f"/api/entries/{args.entry}")
    catalog = record.get("catalog", {})
    arrays = record["arrays"]
    group = catalog.get("default")
    signal = f"{group}/{catalog['signal']}" if group and "signal" in catalog else ""
    if signal not in arrays:  # else the largest numeric array of 2 or more dimensions
        numeric = [
            (int(np.prod(a["shape"])), name)
            for name, a in arrays.items()
            if len(a["shape"]) >= 2 and np.dtype(a["dtype"]).kind in "iuf"
        ]
        signal = max(numeric)[1]
    group, _, name = signal.rpartition("/")
    print(f"signal: {signal} {arrays[signal]['shape']} {arrays[signal]['dtype']}")

    # %% open it lazily with xarray over HTTP (the key goes in fsspec's headers)
    ds = xr.open_zarr(
        f"{base}/zarr/@{args.ref}/{args.entry}/{group}",
        storage_options={"headers": headers},
        consolidated=True,
        zarr_format=2,
    )
    frame = ds[name][0].values  # only frame 0's chunks are fetched
    print(f"frame 0 mean: {float(frame.mean()):.4f}")

    # %% or download a slice as .npy (one request) and read it with numpy
    raw = get(f"/api/slice/{args.entry}/{signal}", sel="0", format="npy")
    part = np.load(io.BytesIO(raw))
    print(f"slice 0 via npy: shape {part.shape}, mean {float(part.mean()):.4f}")
    assert np.array_equal(part, frame), "the slice and the zarr frame differ"


if __name__ == "__main__":
    try:
        main()
    except urllib.error.HTTPError as exc:  # the server's JSON error, not a traceback
        raise SystemExit(f"{exc.code} {exc.url}: {exc.read().decode(errors='replace')}") from None
