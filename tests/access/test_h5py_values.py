"""Readers give h5py's values for the types Zarr v2 cannot describe (issue 19, item 1):
compounds with gaps or nested members, long double, ragged sequences, records with
variable-length members. Real files (PyTables' test files written by other tools) and
a file written here, read through open_array, open_dataset and plain zarr + the
documented decoding, each compared with h5py."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import h5py
import numpy as np
import pytest
import zarr

import hyperslab
from hyperslab.access.array import open_array
from hyperslab.access.store import open_store
from hyperslab.convert.ingest import ingest
from hyperslab.reading.values import first_difference, h5py_values, needs_decoding
from hyperslab.references.repository import Repository

#: PyTables' files the issue names: raw |V records, |V16, bytes objects, JSON strings
REAL = [
    "smpl_compound_chunked.h5",
    "float.h5",
    "vlunicode_endian.h5",
    "flavored_vlarrays-format1.6.h5",
    "smpl_unsupptype.h5",
]


def _tables_file(name: str) -> Path:
    spec = importlib.util.find_spec("tables")
    assert spec is not None and spec.origin is not None, "the test extra installs tables"
    return Path(spec.origin).parent / "tests" / name


def _write_odd_types(path: Path) -> None:
    gappy = np.dtype(
        {"names": ["a", "b"], "formats": ["<i2", "<f8"], "offsets": [0, 8], "itemsize": 24}
    )
    nested = np.dtype([("pos", [("x", "<f4"), ("y", "<f4")]), ("hkl", "<i4", (3,))])
    with h5py.File(path, "w") as f:
        g = f.create_group("odd")
        data = np.zeros(50, gappy)
        data["a"], data["b"] = np.arange(50), np.linspace(0, 1, 50)
        g.create_dataset("gaps", data=data, chunks=(16,))
        nest = np.zeros(7, nested)
        nest["pos"]["x"], nest["hkl"] = np.arange(7), np.arange(21).reshape(7, 3)
        g.create_dataset("nested", data=nest, chunks=(4,), compression="gzip")
        g.create_dataset("longdouble", data=np.arange(10, dtype=np.longdouble) / 3, chunks=(4,))
        ragged = g.create_dataset("ragged", (4,), dtype=h5py.vlen_dtype(np.dtype("<i4")))
        for i in range(4):
            ragged[i] = np.arange(i * 2, dtype="<i4")
        member = np.dtype(
            [("n", "<i4"), ("seq", h5py.vlen_dtype(np.float64)), ("s", h5py.string_dtype())]
        )
        recs = g.create_dataset("vlen_member", (3,), dtype=member)
        for i in range(3):
            recs[i] = (i, np.linspace(0, 1, i + 1), f"row {i}")


@pytest.fixture(scope="module")
def odd_repo(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict[str, Path]]:
    tmp = tmp_path_factory.mktemp("values")
    files = {"odd_types": tmp / "odd_types.h5"}
    _write_odd_types(files["odd_types"])
    for name in REAL:
        files[Path(name).stem] = _tables_file(name)
    repo = Repository.init(str(tmp / "repo"))
    result = ingest(repo, [str(p) for p in files.values()])
    assert not result.failed, result.failed
    return str(tmp / "repo"), files


def _h5_arrays(path: Path) -> dict[str, h5py.Dataset]:
    out: dict[str, h5py.Dataset] = {}

    def visit(name: str, obj: object) -> None:
        if isinstance(obj, h5py.Dataset):
            out[name] = obj

    h5py.File(path, "r").visititems(visit)
    return out


def test_open_array_gives_h5py_values(odd_repo: tuple[str, dict[str, Path]]) -> None:
    repo, files = odd_repo
    decoded = 0
    for entry, path in files.items():
        for name, dset in _h5_arrays(path).items():
            store = open_store(repo, entry, cache=False)
            if "hyperslab:hdf5_type" in store.view.refmap.arrays[name].attrs:
                continue  # no numpy type exists (h5py cannot read it either)
            arr = open_array(repo, entry, name, cache=False)
            want = dset[()]
            decoded += needs_decoding(arr.attrs)
            assert arr.dtype == dset.dtype or arr.dtype.kind == "O", (entry, name, arr.dtype)
            assert first_difference(want, arr[()]) is None, (entry, name)
            if dset.shape and dset.shape[0] > 1:  # a slice, and a warm re-read
                assert first_difference(want[1:], arr[1:]) is None, (entry, name)
                assert first_difference(want[1:], arr[1:]) is None, (entry, name)
    assert decoded >= 10, decoded


def test_the_issue_s_arrays_are_typed(odd_repo: tuple[str, dict[str, Path]]) -> None:
    repo, _ = odd_repo
    gaps = open_array(repo, "odd_types", "odd/gaps", cache=False)
    assert gaps.dtype.names == ("a", "b") and gaps.dtype.itemsize == 24
    assert gaps[3]["b"] == pytest.approx(3 / 49)
    assert open_array(repo, "odd_types", "odd/longdouble", cache=False).dtype == np.longdouble
    ragged = open_array(repo, "odd_types", "odd/ragged", cache=False)[()]
    assert ragged.dtype == object and ragged[3].tolist() == [0, 1, 2, 3, 4, 5]
    rec = open_array(repo, "odd_types", "odd/vlen_member", cache=False)[2]
    assert rec["n"] == 2 and rec["seq"].tolist() == [0.0, 0.5, 1.0] and rec["s"] == b"row 2"
    compound = open_array(repo, "smpl_compound_chunked", "CompoundChunked", cache=False)
    assert compound.dtype.names is not None and compound.dtype.kind == "V"


def test_open_dataset_gives_h5py_values(odd_repo: tuple[str, dict[str, Path]]) -> None:
    repo, files = odd_repo
    arrays = _h5_arrays(files["odd_types"])
    for chunks in (None, {}):
        ds = hyperslab.open_dataset(repo, "odd_types", group="odd", cache=False, chunks=chunks)
        for name in ("gaps", "nested", "longdouble", "ragged", "vlen_member"):
            assert first_difference(arrays[f"odd/{name}"][()], ds[name].values) is None, name
        assert first_difference(arrays["odd/gaps"][5:9], ds["gaps"][5:9].values) is None


def test_plain_zarr_keeps_the_encodings_and_the_recipe_decodes_them(
    odd_repo: tuple[str, dict[str, Path]],
) -> None:
    """zarr alone sees |V records, bytes and JSON (documented); h5py_values(values,
    attrs), the README's recipe, gives h5py's."""
    repo, files = odd_repo
    store = open_store(repo, "odd_types", cache=False)
    arrays = _h5_arrays(files["odd_types"])
    for name in ("gaps", "nested", "longdouble", "ragged", "vlen_member"):
        z = zarr.open_array(store, path=f"odd/{name}", mode="r")
        raw = z[()]
        assert first_difference(arrays[f"odd/{name}"][()], raw) is not None, name
        assert first_difference(arrays[f"odd/{name}"][()], h5py_values(raw, z.attrs)) is None
