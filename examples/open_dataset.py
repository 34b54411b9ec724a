"""Open one entry of a hyperslab repository as xarray (NeXus default NXdata) and read a slice.

Usage: python examples/open_dataset.py REPO ENTRY
"""

from __future__ import annotations

import sys
import time

import hyperslab


def main() -> None:
    repo, entry = sys.argv[1], sys.argv[2]
    t0 = time.perf_counter()
    ds = hyperslab.open_dataset(repo, entry)  # pinned to the branch head; lazy
    print(ds)
    signal = ds.attrs.get("signal", next(iter(ds.data_vars)))
    data = ds[signal]
    roi = data[0, 100:164, 200:264].values  # only the chunks this touches are fetched
    t1 = time.perf_counter()
    series = data[:, 30, 40].values  # one pixel through every frame
    t2 = time.perf_counter()
    print(
        f"\n64x64 region of frame 0: sum={int(roi.sum())} max={int(roi.max())} "
        f"({t1 - t0:.2f} s incl. open)\n"
        f"pixel (30, 40) over {series.size} frames: mean={float(series.mean()):.2f} "
        f"({t2 - t1:.2f} s)"
    )


if __name__ == "__main__":
    main()
