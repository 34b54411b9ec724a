"""Small chunks copied into the map: vectorised range reads give exactly the stored bytes."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from hyperslab.convert import hdf5 as hdf5_mod
from hyperslab.convert.api import build_refmap
from hyperslab.convert.hdf5 import ConvertOptions, read_ranges
from hyperslab.errors import NotHDF5Error
from hyperslab.references.refmap import InlineChunks


@pytest.mark.parametrize("small_batches", [False, True])
def test_read_ranges_matches_slices(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, small_batches: bool
) -> None:
    if small_batches:  # many blocks and many batches
        monkeypatch.setattr(hdf5_mod, "_READ_GAP", 3)
        monkeypatch.setattr(hdf5_mod, "_READ_BATCH", 64)
    rng = np.random.default_rng(7)
    blob = rng.integers(0, 256, 200_000, dtype=np.uint8).tobytes()
    f = tmp_path / "blob"
    f.write_bytes(blob)
    addr = rng.integers(0, 199_000, 3000)
    size = rng.integers(0, 900, 3000)
    addr[:5], size[:5] = [0, 0, 10, 199_990, 50_000], [10, 10, 0, 10, 150_000]  # dups, overlap
    with open(f, "rb") as fh:
        data, offsets = read_ranges(fh, str(f), addr, size)
    assert offsets[0] == 0 and offsets[-1] == data.size == size.sum()
    for i in range(addr.size):
        a, n = int(addr[i]), int(size[i])
        assert data[offsets[i] : offsets[i + 1]].tobytes() == blob[a : a + n]


def test_read_ranges_past_the_end_is_truncation(tmp_path: Path) -> None:
    f = tmp_path / "short"
    f.write_bytes(b"x" * 1000)
    with open(f, "rb") as fh, pytest.raises(NotHDF5Error, match=r"truncated: chunk at 995\+10"):
        read_ranges(fh, str(f), np.array([0, 995, 10]), np.array([4, 10, 4]))


def test_inlined_chunks_are_the_stored_bytes(tmp_path: Path) -> None:
    f = tmp_path / "mixed.h5"
    rng = np.random.default_rng(3)
    values = rng.integers(0, 1000, (40, 30)).astype("<i4")
    values[:20] = 0  # compresses to a few bytes: those chunks are inlined
    with h5py.File(f, "w") as h5:
        h5.create_dataset("z", data=values, chunks=(4, 3), compression="gzip")
        h5.create_dataset("c", data=np.arange(12, dtype="<u1"))  # small contiguous
    for threshold in (0, 60, 500, 10**6):
        refmap = build_refmap(f, options=ConvertOptions(inline_threshold=threshold)).refmap
        arr = refmap.arrays["z"]
        assert isinstance(arr.inline, InlineChunks)
        with h5py.File(f) as h5:
            dset, grid = h5["z"], arr.grid
            for lin in range(arr.n_chunks):
                coords = tuple(
                    int(c) * k for c, k in zip(np.unravel_index(lin, grid), (4, 3), strict=True)
                )
                stored = dset.id.read_direct_chunk(coords)[1]
                if len(stored) < threshold:
                    assert arr.inline[lin] == stored
                else:
                    assert lin not in arr.inline and lin in arr.index.tolist()
        assert arr.n_refs == arr.n_chunks
        c = refmap.arrays["c"]
        if threshold > 12:
            assert dict(c.inline) == {0: bytes(range(12))} and c.index.size == 0
        else:
            assert len(c.inline) == 0 and c.index.tolist() == [0]
