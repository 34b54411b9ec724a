"""Open a reference map with plain fsspec + zarr + xarray and read one slice.

Usage: python examples/read_slice.py MAP.json [GROUP]
"""

from __future__ import annotations

import sys
import time

import xarray as xr


def main() -> None:
    refs = sys.argv[1]
    group = sys.argv[2] if len(sys.argv) > 2 else "entry/data"
    t0 = time.perf_counter()
    # the group goes into the URL: zarr 3.1 cannot list nested groups of a root reference store
    ds = xr.open_dataset(
        f"reference://{group}",
        engine="zarr",
        backend_kwargs={"storage_options": {"fo": refs}, "consolidated": False},
    )  # lazy: only the chunks a selection touches are read (add chunks={} for dask)
    print(ds)
    signal = ds.attrs.get("signal", next(iter(ds.data_vars)))
    frame = ds[signal][0, 100:164, 200:264].values
    dt = time.perf_counter() - t0
    print(
        f"\n64x64 region of frame 0: sum={int(frame.sum())} max={int(frame.max())} ({dt:.2f} s incl. open)"
    )


if __name__ == "__main__":
    main()
