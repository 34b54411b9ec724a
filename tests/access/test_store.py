"""The read-only store over loopback S3: bit-exact reads, zarr/xarray/dask, loops, pinning."""

from __future__ import annotations

import asyncio
import pickle
import uuid
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import zarr

from hyperslab.access.store import HyperslabStore, open_store
from hyperslab.convert.ingest import ingest
from hyperslab.convert.verify import verify_store
from hyperslab.errors import BadInputError, NotFoundError
from hyperslab.references.repository import Repository
from tests.access.conftest import CorpusRepo


def test_every_corpus_dataset_reads_bit_exact_over_s3(
    corpus_repo: CorpusRepo, s3_env: None
) -> None:
    arrays = exact = 0
    for entry, path in sorted(corpus_repo.files.items()):
        store = open_store(corpus_repo.spec, entry, cache=False)
        report = verify_store(path, store, sorted(store.view.refmap.arrays), label=entry)
        assert report.ok, (entry, [(a.path, a.detail) for a in report.arrays if not a.ok])
        arrays += report.counts["arrays"]
        exact += report.counts["bit_exact"]
        assert store.view.verified  # chunk checksums recorded at ingest, checked on read
    assert arrays == exact >= 150


def test_cache_makes_second_read_free(
    corpus_repo: CorpusRepo, s3_env: None, tmp_path: Path
) -> None:
    from hyperslab.reading.chunk_cache import ChunkCache

    cache = ChunkCache(tmp_path / "cache", max_bytes=64 << 20)
    first = open_store(corpus_repo.spec, "corpus_filters", cache=cache, memory_cache=False)
    g = zarr.open_group(first, mode="r")
    paths = sorted(first.view.refmap.arrays)
    want = {p: g[p][...] for p in paths}
    assert first.router.stats.requests > 0 and first.router.stats.cache_hits == 0
    second = open_store(corpus_repo.spec, "corpus_filters", cache=cache, memory_cache=False)
    g2 = zarr.open_group(second, mode="r")
    for p in paths:
        np.testing.assert_array_equal(g2[p][...], want[p])
    assert second.router.stats.requests == 0 and second.router.stats.cache_hits > 0


def test_xarray_dask_and_pickle(corpus_repo: CorpusRepo, s3_env: None) -> None:
    store = open_store(corpus_repo.spec, "corpus_nexus", cache=False)
    ds = xr.open_zarr(store, group="entry/data", chunks={})
    name = next(iter(ds.data_vars))
    var = ds[name]
    assert var.chunks is not None  # dask-backed
    truth = zarr.open_group(store, mode="r")[f"entry/data/{name}"][...]
    np.testing.assert_array_equal(var.values, truth)
    again = pickle.loads(pickle.dumps(store))
    assert isinstance(again, HyperslabStore) and again == store
    np.testing.assert_array_equal(xr.open_zarr(again, group="entry/data")[name].values, truth)


def test_works_inside_a_running_event_loop(corpus_repo: CorpusRepo, s3_env: None) -> None:
    """Jupyter's situation: a loop is running in this thread; plain sync calls still work."""
    store = open_store(corpus_repo.spec, "corpus_layouts", cache=False)
    path = next(p for p in store.view.refmap.arrays if store.view.chunks.indices(p).size > 1)
    want = zarr.open_group(store, mode="r")[path][...]

    async def notebook_cell() -> tuple[np.ndarray, np.ndarray]:
        sync_read = zarr.open_group(store, mode="r")[path][...]
        # and the async API on this very loop
        group = await zarr.api.asynchronous.open_group(store=store, mode="r")
        arr = await group.getitem(path)
        async_read = await arr.getitem(Ellipsis)
        return sync_read, np.asarray(async_read)

    sync_read, async_read = asyncio.run(notebook_cell())
    np.testing.assert_array_equal(sync_read, want)
    np.testing.assert_array_equal(async_read, want)


def test_store_is_pinned_to_its_snapshot(
    corpus_repo: CorpusRepo, s3_env: None, tmp_path: Path
) -> None:
    import h5py

    repo = Repository.open(corpus_repo.spec)
    repo.create_branch(f"pin-{uuid.uuid4().hex[:6]}")
    branch = sorted(b for b in repo.branches() if b.startswith("pin-"))[-1]
    f = tmp_path / "pinned.h5"
    with h5py.File(f, "w") as h:
        h.create_dataset("x", data=np.arange(10), chunks=(5,))
    ingest(repo, [str(f)], branch=branch, upload_sources=True)
    old = open_store(corpus_repo.spec, "pinned", branch=branch, cache=False)
    with h5py.File(f, "w") as h:
        h.create_dataset("x", data=np.arange(10) * 2, chunks=(5,))
    ingest(repo, [str(f)], branch=branch, upload_sources=True)
    new = open_store(corpus_repo.spec, "pinned", branch=branch, cache=False)
    np.testing.assert_array_equal(zarr.open_group(old, mode="r")["x"][...], np.arange(10))
    np.testing.assert_array_equal(zarr.open_group(new, mode="r")["x"][...], np.arange(10) * 2)
    by_id = open_store(corpus_repo.spec, "pinned", snapshot=old.view.snapshot[:10], cache=False)
    assert by_id == old


def test_store_contract_read_only(corpus_repo: CorpusRepo, s3_env: None) -> None:
    from zarr.abc.store import OffsetByteRequest, RangeByteRequest, SuffixByteRequest
    from zarr.core.buffer import default_buffer_prototype

    store = open_store(corpus_repo.spec, "corpus_layouts", cache=False)
    proto = default_buffer_prototype()
    path, arr = next((p, a) for p, a in store.view.refmap.arrays.items() if a.index.size)
    key = arr.chunk_key(int(arr.index[0]))  # a referenced chunk (JSON map: loaded eagerly)

    async def run() -> None:
        whole = (await store.get(key, proto)).to_bytes()
        assert len(whole) == int(arr.length[0]) == await store.getsize(key)
        assert (await store.get(key, proto, RangeByteRequest(1, 5))).to_bytes() == whole[1:5]
        assert (await store.get(key, proto, OffsetByteRequest(3))).to_bytes() == whole[3:]
        assert (await store.get(key, proto, SuffixByteRequest(2))).to_bytes() == whole[-2:]
        assert await store.get("no/such/key", proto) is None
        assert await store.exists(key) and await store.exists(".zgroup")
        assert not await store.exists("nope/.zarray")
        parts = await store.get_partial_values(proto, [(key, None), ("nope", None)])
        assert parts[0] is not None and parts[0].to_bytes() == whole and parts[1] is None
        keys = [k async for k in store.list()]
        assert key in keys and ".zmetadata" in keys
        assert [k async for k in store.list_prefix(path + "/")]
        top = [k async for k in store.list_dir("")]
        assert ".zgroup" in top
        with pytest.raises(ValueError, match="read-only"):
            await store.set(key, proto.buffer.from_bytes(b"x"))
        with pytest.raises(ValueError, match="read-only"):
            await store.delete(key)

    asyncio.run(run())
    assert store.read_only and not store.supports_writes


def test_open_store_bad_input(corpus_repo: CorpusRepo, s3_env: None) -> None:
    with pytest.raises(NotFoundError, match="no_such_entry"):
        open_store(corpus_repo.spec, "no_such_entry")
    with pytest.raises(BadInputError, match="at most one"):
        open_store(corpus_repo.spec, "corpus_nexus", branch="main", tag="v1")
    with pytest.raises(NotFoundError, match="no tag"):
        open_store(corpus_repo.spec, "corpus_nexus", tag="never-made")
