"""Every array of the generated feature corpus verifies bit-exact, through JSON and Parquet maps."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import xarray as xr
import zarr

from hyperslab.convert.api import build_refmap, combine_refmaps
from hyperslab.convert.hdf5 import BrokenLinkError, ConvertOptions
from hyperslab.convert.verify import open_refs_store, verify
from hyperslab.errors import NotHDF5Error
from hyperslab.references.refmap_files import write_refmap
from tests.convert.corpus import build_corpus


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return build_corpus(tmp_path_factory.mktemp("corpus"))


def _h5(files: list[Path]) -> list[Path]:
    return [f for f in files if f.suffix in (".h5", ".nxs") and f.stem != "corpus_cycle"]


@pytest.mark.parametrize("fmt", ["json", "parquet"])
def test_corpus_is_bit_exact(corpus: list[Path], fmt: str, tmp_path: Path) -> None:
    totals = {"arrays": 0, "bit_exact": 0, "virtual": 0, "materialised": 0}
    for f in _h5(corpus):
        result = build_refmap(f, options=ConvertOptions(allow_broken_links="dangling" in f.name))
        out = write_refmap(result.refmap, tmp_path / f"{f.stem}.{fmt}", fmt)  # type: ignore[arg-type]
        report = verify(f, out)
        assert report.ok, (
            f.name,
            [(a.path, a.detail) for a in report.arrays if not a.ok],
            report.missing,
        )
        for k in totals:
            totals[k] += report.counts[k]
    assert totals["arrays"] == totals["bit_exact"] >= 150
    # most of the corpus is referenced in place; what is not is materialised with a reason
    assert totals["virtual"] > 3 * totals["materialised"] > 0


def test_every_filter_is_referenced_in_place(corpus: list[Path]) -> None:
    f = next(p for p in corpus if p.name == "corpus_filters.h5")
    result = build_refmap(f)
    reasons = {d.path: d.reason for d in result.reports[0].datasets}
    in_place = {p for p, r in reasons.items() if r is None}
    for name in (
        "gzip",
        "lzf",
        "bitshuffle",
        "blosc",
        "lz4",
        "zstd",
        "bzip2",
        "fletcher32",
        "scaleoffset",
    ):
        assert any(name in p.lower() for p in in_place), (name, reasons)
    # every materialised dataset says why
    assert all(r for p, r in reasons.items() if p not in in_place)


def test_scalar_vlen_strings_are_not_blank(corpus: list[Path], tmp_path: Path) -> None:
    """kerchunk returns '' for these (NeXus title, sample name)."""
    f = next(p for p in corpus if p.suffix == ".nxs")
    out = write_refmap(build_refmap(f).refmap, tmp_path / "n.json")
    store, paths = open_refs_store(out)
    with h5py.File(f) as h5:
        titles = [p for p in paths if p.endswith("title")]
        assert titles
        for p in titles:
            got = zarr.open_array(store, path=p, mode="r", zarr_format=2)[()]
            want = h5[p].asstr()[()]
            assert got == want and want


def test_broken_and_cyclic_links_are_named_errors(corpus: list[Path]) -> None:
    for name in ("corpus_dangling.h5", "corpus_cycle.h5"):
        with pytest.raises(BrokenLinkError):
            build_refmap(next(p for p in corpus if p.name == name))
    res = build_refmap(
        next(p for p in corpus if p.name == "corpus_cycle.h5"),
        options=ConvertOptions(allow_broken_links=True),
    )
    assert any(link["status"] == "broken" for link in res.reports[0].links)


def test_external_raw_storage_is_another_source(corpus: list[Path]) -> None:
    f = next(p for p in corpus if p.name == "corpus_efile.h5")
    result = build_refmap(f)
    assert any(s.endswith("corpus_efile.raw") for s in result.refmap.sources)
    with pytest.raises(NotHDF5Error):
        build_refmap(f.with_suffix(".raw"))


def test_interop_plain_fsspec_zarr_xarray(tmp_path: Path) -> None:
    """A map with concrete paths opens with fsspec + zarr + xarray and nothing of ours."""
    from hyperslab.samples import write_samples

    src = next(p for p in write_samples(tmp_path / "s", frames=4) if "gzip" in p.name)
    out = write_refmap(build_refmap(src).refmap, tmp_path / "m.json")
    doc = json.loads(out.read_text())
    assert str(src.resolve()) in doc["templates"].values()
    ds = xr.open_dataset(
        "reference://entry/data",
        engine="zarr",
        backend_kwargs={"storage_options": {"fo": str(out)}, "consolidated": False},
    )
    signal = ds.attrs["signal"]
    with h5py.File(src) as h5:
        want = h5["entry/data"][signal][...]
        np.testing.assert_array_equal(ds[signal].values, want)
        assert ds[signal].dtype == want.dtype  # no fill-value masking turned uint32 into float
        assert ds[signal].dims[0] != "phony_dim_0" or "axes" not in ds.attrs


def test_combine_along_existing_and_new_axis(tmp_path: Path) -> None:
    files = []
    for i in range(3):
        p = tmp_path / f"part{i}.h5"
        with h5py.File(p, "w") as f:
            f.create_dataset(
                "frames",
                data=np.full((4, 5, 6), i, dtype="<u2") + np.arange(6, dtype="<u2"),
                chunks=(2, 5, 6),
                compression="gzip",
            )
            f["title"] = f"part {i}"
        files.append(p)
    results = [build_refmap(p) for p in files]
    for kwargs, shape in (({"dim": 0}, (12, 5, 6)), ({"new_dim": "point"}, (3, 4, 5, 6))):
        combined = combine_refmaps(results, **kwargs)  # type: ignore[arg-type]
        out = write_refmap(combined.refmap, tmp_path / f"c{len(shape)}.json")
        store, _ = open_refs_store(out)
        got = zarr.open_array(store, path="frames", mode="r", zarr_format=2)[...]
        assert got.shape == shape
        want = np.stack([h5py.File(p)["frames"][...] for p in files])
        np.testing.assert_array_equal(got.reshape(want.shape), want)
        assert len(combined.refmap.sources) == 3


_MAP_OF = """
import sys
from hyperslab.convert.api import build_refmap
from hyperslab.convert.hdf5 import ConvertOptions
from hyperslab.references.refmap_objects import encode_refmap
for f in sys.argv[1:]:
    opts = ConvertOptions(allow_broken_links="dangling" in f)
    data, _ = encode_refmap(build_refmap(f, options=opts).refmap, "json")
    sys.stdout.write(f"{len(data)} {hash(data)}\\n")
"""


def test_maps_are_the_same_bytes_in_every_process(corpus: list[Path]) -> None:
    """Re-ingesting an unchanged file must give the same objects. HDF5's conversion
    of a fill value leaves memory garbage in the gaps of a compound and the padding
    of a long double; those bytes must not reach the map (they did: the map of
    corpus_dtypes changed with every run)."""
    import os
    import subprocess
    import sys

    files = [str(f) for f in _h5(corpus)]
    env = dict(os.environ, PYTHONHASHSEED="0")
    runs = {
        subprocess.run(
            [sys.executable, "-c", _MAP_OF, *files],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for _ in range(3)
    }
    assert len(runs) == 1


def test_fill_values_have_no_padding_garbage(corpus: list[Path]) -> None:
    from hyperslab.convert.dtypes import value_bytes, value_bytes_mask

    f = next(p for p in corpus if p.name == "corpus_dtypes.h5")
    zarrays = build_refmap(f).refmap.arrays
    # both fills are zero, zarr's default: null, not base64 of leftover memory
    assert zarrays["compound/gaps"].zarray["fill_value"] is None
    assert zarrays["numeric/longdouble"].zarray["fill_value"] is None
    gaps = np.dtype(
        {"names": ["a", "b"], "formats": ["<u2", "<f8"], "offsets": [0, 8], "itemsize": 24}
    )
    assert value_bytes_mask(gaps).tolist() == [True] * 2 + [False] * 6 + [True] * 8 + [False] * 8
    item = np.frombuffer(bytes(range(1, 25)), gaps)[0]
    assert value_bytes(item, gaps) == bytes([1, 2] + [0] * 6 + list(range(9, 17)) + [0] * 8)
    nested = np.dtype([("x", gaps, (2,))])
    assert value_bytes_mask(nested).tolist() == value_bytes_mask(gaps).tolist() * 2
    if np.finfo(np.longdouble).nmant == 63:  # x87 80-bit in 16 bytes
        mask = value_bytes_mask(np.dtype(np.longdouble))
        assert mask.tolist() == [True] * 10 + [False] * 6
        assert value_bytes_mask(np.dtype(np.clongdouble)).tolist() == mask.tolist() * 2
    assert value_bytes_mask(np.dtype("<f8")).all()
