"""open_array: NumPy-style reads without zarr's pipeline, bit-exact, routed, counted."""

from __future__ import annotations

import threading
from pathlib import Path

import h5py
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import hyperslab
from hyperslab.access.array import HOT_CHUNKS, HyperslabArray, open_array
from hyperslab.access.store import open_store
from hyperslab.convert.ingest import ingest
from hyperslab.convert.verify import verify_store
from hyperslab.errors import NotFoundError
from hyperslab.reading.access_stats import AccessStats
from hyperslab.references.repository import Repository
from tests.access.conftest import CorpusRepo

SHAPE = (7, 30, 21)
CHUNKS = (2, 8, 16)


@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path, np.ndarray]:
    """Edge chunks in every dimension, gzip + shuffle, big-endian, a sparse array."""
    tmp = tmp_path_factory.mktemp("array")
    data = np.random.default_rng(3).integers(0, 10**6, size=SHAPE).astype(">i4")
    with h5py.File(tmp / "a.h5", "w") as f:
        f.create_dataset(
            "entry/data/data", data=data, chunks=CHUNKS, compression="gzip", shuffle=True
        )
        sparse = f.create_dataset(
            "entry/sparse", shape=(6, 6), chunks=(3, 3), fillvalue=-5, dtype="i2"
        )
        sparse[0:3, 0:3] = 9
        f.create_dataset("entry/title", data="a title")
    repo = Repository.init(str(tmp / "repo"))
    ingest(repo, [str(tmp / "a.h5")], upload_sources=True)
    return str(tmp / "repo"), tmp / "a.h5", data


def test_every_corpus_dataset_reads_bit_exact_through_open_array(
    corpus_repo: CorpusRepo, s3_env: None
) -> None:
    arrays = 0
    for entry, path in sorted(corpus_repo.files.items()):
        store = open_store(corpus_repo.spec, entry, cache=False)
        report = verify_store(
            path,
            store,
            sorted(store.view.refmap.arrays),
            label=entry,
            open_array=lambda p, store=store: HyperslabArray(store, p),  # type: ignore[misc]
        )
        assert report.ok, (entry, [(a.path, a.detail) for a in report.arrays if not a.ok])
        arrays += report.counts["arrays"]
    assert arrays >= 150


SELECTIONS = [
    (),
    (Ellipsis,),
    (3,),
    (-1, slice(None), 5),
    (slice(1, 6, 2), slice(7, 25), slice(None, None, 3)),
    (slice(None), 0, slice(3, 19)),
    (Ellipsis, 20),
    (4, 29, 20),
    (slice(5, 2),),  # empty
    (np.int64(2), slice(0, 8)),
]


@pytest.mark.parametrize("memory", [True, False])
def test_selections_match_numpy_cold_and_warm(
    local: tuple[str, Path, np.ndarray], memory: bool
) -> None:
    spec, _, data = local
    arr = open_array(spec, "a", "entry/data/data", cache=False, memory_cache=memory)
    assert (arr.shape, arr.chunks, arr.ndim, len(arr)) == (SHAPE, CHUNKS, 3, 7)
    assert arr.dtype == np.dtype(">i4") and arr.nbytes == data.nbytes
    for sel in SELECTIONS:
        for _ in range(2):  # cold, then warm (the fast path when it applies)
            got = arr[sel]
            want = data[sel]
            assert np.shape(got) == want.shape and np.asarray(got).dtype == want.dtype, sel
            np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(np.asarray(arr), data)
    assert arr.store.router.stats.requests >= 1


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_fast_path_agrees_with_the_general_path(
    local_spec_data: object, data: st.DataObject
) -> None:
    spec, truth = local_spec_data  # type: ignore[misc]
    arr = _shared_array(spec)
    sel = []
    for n in SHAPE:
        if data.draw(st.booleans()):
            sel.append(data.draw(st.integers(-n, n - 1)))
        else:
            a = data.draw(st.integers(-n - 2, n + 2))
            b = data.draw(st.integers(-n - 2, n + 2))
            sel.append(slice(a, b))
    sel_t = tuple(sel)
    np.testing.assert_array_equal(arr[sel_t], truth[sel_t])


_ARRAYS: dict[str, HyperslabArray] = {}


def _shared_array(spec: str) -> HyperslabArray:
    if spec not in _ARRAYS:
        _ARRAYS[spec] = open_array(spec, "a", "entry/data/data", cache=False, memory_cache=True)
    return _ARRAYS[spec]


@pytest.fixture(scope="module")
def local_spec_data(local: tuple[str, Path, np.ndarray]) -> tuple[str, np.ndarray]:
    return local[0], local[2]


def test_fill_values_strings_and_errors(local: tuple[str, Path, np.ndarray]) -> None:
    spec, _, _ = local
    sparse = hyperslab.open_array(spec, "a", "/entry/sparse/", cache=False)
    want = np.full((6, 6), -5, "i2")
    want[0:3, 0:3] = 9
    np.testing.assert_array_equal(sparse[...], want)
    np.testing.assert_array_equal(sparse[4], want[4])
    title = open_array(spec, "a", "entry/title", cache=False)  # object dtype: through zarr
    assert title[()] == "a title"
    with pytest.raises(NotFoundError, match=r"did you mean entry/data/data"):
        open_array(spec, "a", "data", cache=False)
    with pytest.raises(IndexError):
        _shared_array(spec)[0, 0, 0, 0]
    with pytest.raises(IndexError):  # as in h5py and zarr: no negative steps
        _shared_array(spec)[::-1]


def test_reads_are_counted_on_every_path(
    local: tuple[str, Path, np.ndarray], tmp_path: Path
) -> None:
    spec, _, _ = local
    stats = AccessStats(tmp_path / "s.sqlite")
    arr = open_array(spec, "a", "entry/data/data", cache=False, memory_cache=True, stats=stats)
    arr[0, 0:8, 0:16]  # general path: one chunk
    arr[1, 2:5, 3:9]  # the fast path: the same chunk
    arr.store.close()
    [hot] = stats.hot_chunks(Repository.open(spec).id)
    assert (hot.key, hot.reads) == ("entry/data/data/0.0.0", 2)


def test_hot_chunks_are_bounded_and_threads_agree(local: tuple[str, Path, np.ndarray]) -> None:
    spec, _, data = local
    arr = open_array(spec, "a", "entry/data/data", cache=False, memory_cache=True)
    arr[...]  # every chunk: 4 x 4 x 2 = 32 > HOT_CHUNKS
    assert len(arr._hot) == HOT_CHUNKS
    errors: list[BaseException] = []

    def work(seed: int) -> None:
        rng = np.random.default_rng(seed)
        try:
            for _ in range(200):
                i, j = int(rng.integers(0, 7)), int(rng.integers(0, 30))
                np.testing.assert_array_equal(arr[i, j], data[i, j])
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(arr._hot) <= HOT_CHUNKS
