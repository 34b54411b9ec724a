"""``hyperslab serve`` (issue 18): every array of the test corpus (dtypes, layouts,
filters, links, NeXus, ...; ``tests/convert/corpus.py``) read over HTTP, by plain
``zarr.open_group`` and ``xr.open_zarr`` through fsspec's HTTP filesystem with the API key
in ``storage_options`` headers, equals h5py's values.

zarr: each array is compared with h5py by :func:`~hyperslab.convert.verify.verify_store`
(bit for bit; the documented encodings of compounds, vlen types, long double, references
decoded as ``hyperslab verify`` and the direct store test decode them), and every
dataset of each file must be there. xarray: each variable of each group equals, value
for value (:func:`~hyperslab.reading.values.first_difference`), what zarr read over
HTTP from the same server, hence h5py's values too."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

import xarray as xr
import zarr

from hyperslab.access.store import open_store
from hyperslab.convert.verify import verify_store
from hyperslab.reading.values import first_difference
from hyperslab.references.repository import Repository
from hyperslab.serve.app import create_app
from hyperslab.serve.keys import KeyRing, hash_key
from tests.access.conftest import corpus_files, ingest_corpus
from tests.serve.conftest import BOB, auth, running

#: arrays xarray cannot read (from any zarr store, not only over HTTP): zarr reads them
#: and the zarr test compares them with h5py
XARRAY_CANNOT = {
    ("corpus_dtypes", "compound/big_endian_members"): (
        "xarray describes a record of big-endian members as a bare void type (|V12) and "
        "then fails to cast the values to it"
    ),
}
#: xarray's CF decoding off where it changes values: masking turns fill values into NaN
#: (and fails on a record's fill value), time decoding turns numbers with a "since"
#: unit into dates; h5py gives the stored numbers
XARRAY_OPTIONS: dict[str, Any] = {
    "mask_and_scale": False,
    "decode_times": False,
    "decode_timedelta": False,
}


@dataclass
class Served:
    url: str
    repo: Repository
    files: dict[str, Path]  # entry → the corpus file it was ingested from


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """The corpus ingested (one entry per file), served behind a key by real uvicorn."""
    d = tmp_path_factory.mktemp("corpus_http")
    files = corpus_files(d / "corpus")
    repo = Repository.init(str(d / "repo"))
    ingest_corpus(repo, files)
    keys = d / "keys.toml"
    keys.write_text(f'[[key]]\nname = "bob"\nhash = "{hash_key(BOB)}"\n')
    with running(create_app(repo, keys=KeyRing.load(keys))) as url:
        yield Served(url, repo, {f.stem: f for f in files})


KEYED = {"headers": auth(BOB)}


def _array_paths(entry_url: str) -> list[str]:
    """The arrays an entry's consolidated metadata lists, as any client sees them."""
    req = urllib.request.Request(f"{entry_url}/.zmetadata", headers=auth(BOB))
    with urllib.request.urlopen(req, timeout=30) as res:
        meta = json.loads(res.read())["metadata"]
    return sorted(
        k[: -len("/.zarray")] if k != ".zarray" else ""
        for k in meta
        if k == ".zarray" or k.endswith("/.zarray")
    )


def _objects(values: Any) -> Any:
    """NumPy's variable-width strings (zarr gives vlen strings so) as an object array, as
    xarray gives them: :func:`first_difference` compares object arrays element by element."""
    arr = np.asarray(values)
    return arr.astype(object) if arr.dtype.kind == "T" else values


def test_zarr_over_http_equals_h5py_for_every_corpus_array(served: Served) -> None:
    arrays = exact = 0
    for entry, path in sorted(served.files.items()):
        url = f"{served.url}/zarr/{entry}"
        group = zarr.open_group(url, mode="r", zarr_format=2, storage_options=KEYED)
        paths = _array_paths(url)
        # the server lists every array the entry has
        assert paths == sorted(open_store(served.repo, entry, cache=False).view.refmap.arrays)
        report = verify_store(path, group.store, paths, label=url)
        assert report.ok, (
            entry,
            [(a.path, a.detail) for a in report.arrays if not a.ok],
            report.missing,
        )
        arrays += report.counts["arrays"]
        exact += report.counts["bit_exact"]
    assert arrays == exact >= 150


def test_xarray_over_http_equals_h5py_for_every_corpus_array(served: Served) -> None:
    compared = 0
    for entry in sorted(served.files):
        url = f"{served.url}/zarr/{entry}"
        group = zarr.open_group(url, mode="r", zarr_format=2, storage_options=KEYED)
        paths = _array_paths(url)
        by_group: dict[str, list[str]] = {}
        for p in paths:
            parent, _, name = p.rpartition("/")
            by_group.setdefault(parent, []).append(name)
        for parent, names in sorted(by_group.items()):
            ds = xr.open_zarr(
                f"{url}/{parent}" if parent else url,
                consolidated=True,
                zarr_format=2,
                chunks=None,
                storage_options=KEYED,
                **XARRAY_OPTIONS,
            )
            for name in names:
                path = f"{parent}/{name}" if parent else name
                if (entry, path) in XARRAY_CANNOT:
                    continue
                want = group[path][()]  # equal to h5py's (the zarr test above)
                why = first_difference(_objects(want), _objects(ds[name].values))
                assert why is None, (entry, path, why)
                compared += 1
    assert compared >= 150
