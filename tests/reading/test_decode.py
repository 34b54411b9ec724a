"""Decoding in the store (libdeflate, GIL-free unshuffle) and the decoded-chunk memory cache."""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import h5py
import numpy as np
import pytest
import zarr
from numcodecs import Shuffle, Zlib

from hyperslab.access.store import open_store
from hyperslab.config import load_config
from hyperslab.convert.ingest import ingest
from hyperslab.errors import ConfigError, CorruptError
from hyperslab.reading.decode import ChunkDecoder, DecodedCache, shared_decoded_cache
from hyperslab.references.repository import Repository

FRAMES = "entry/data/data"


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, np.ndarray]:
    """Frames of gzip + shuffle uint32 (HDF5's usual detector pipeline), one per chunk."""
    tmp = tmp_path_factory.mktemp("decode")
    rng = np.random.default_rng(7)
    data = rng.poisson(3, size=(6, 128, 96)).astype("<u4")
    with h5py.File(tmp / "scan.h5", "w") as f:
        f.create_dataset(FRAMES, data=data, chunks=(1, 128, 96), compression="gzip", shuffle=True)
        f.create_dataset(
            "entry/pairs",
            data=np.array([(i, i / 2) for i in range(40)], dtype=[("n", "<i2"), ("x", ">f8")]),
            chunks=(16,),
            compression="gzip",
            shuffle=True,
        )
        f.create_dataset("entry/raw", data=np.arange(300, dtype=">i8"), chunks=(128,))
    r = Repository.init(str(tmp / "repo"))
    ingest(r, [str(tmp / "scan.h5")], upload_sources=True)
    return str(tmp / "repo"), data


def test_store_decodes_and_serves_arrays_codec_free(repo: tuple[str, np.ndarray]) -> None:
    spec, data = repo
    store = open_store(spec, "scan", cache=False)
    meta = json.loads(store._meta[f"{FRAMES}/.zarray"])
    assert meta["filters"] is None and meta["compressor"] is None
    consolidated = json.loads(store._meta[".zmetadata"])["metadata"]
    assert consolidated[f"{FRAMES}/.zarray"]["filters"] is None
    g = zarr.open_group(store, mode="r")
    np.testing.assert_array_equal(g[FRAMES][...], data)
    with h5py.File(Path(spec).parent / "scan.h5") as f:
        np.testing.assert_array_equal(g["entry/pairs"][...], f["entry/pairs"][...])
        np.testing.assert_array_equal(g["entry/raw"][...], f["entry/raw"][...])
    # the stored bytes, served as stored: the same values through zarr's own codecs
    plain = open_store(spec, "scan", cache=False, decode=False)
    assert json.loads(plain._meta[f"{FRAMES}/.zarray"])["filters"][1]["id"] == "zlib"
    np.testing.assert_array_equal(zarr.open_group(plain, mode="r")[FRAMES][...], data)


async def test_getsize_and_byte_ranges_are_of_decoded_chunks(repo: tuple[str, np.ndarray]) -> None:
    from zarr.abc.store import RangeByteRequest
    from zarr.core.buffer import default_buffer_prototype

    spec, data = repo
    store = open_store(spec, "scan", cache=False)
    key = f"{FRAMES}/2.0.0"
    assert await store.getsize(key) == data[2].nbytes
    part = await store.get(key, default_buffer_prototype(), RangeByteRequest(8, 16))
    assert part is not None and part.to_bytes() == data[2].tobytes()[8:16]


def test_memory_cache_makes_the_second_store_free(repo: tuple[str, np.ndarray]) -> None:
    spec, data = repo
    memory = 1 << 20  # a size no other test uses: its own shared cache
    first = open_store(spec, "scan", cache=False, memory_cache=memory)
    np.testing.assert_array_equal(zarr.open_array(first, path=FRAMES, mode="r")[1:3], data[1:3])
    assert first.router.stats.requests >= 1
    second = open_store(spec, "scan", cache=False, memory_cache=memory)
    assert second.memory is first.memory is shared_decoded_cache(memory)
    got = zarr.open_array(second, path=FRAMES, mode="r")[1:3]
    np.testing.assert_array_equal(got, data[1:3])
    assert second.router.stats.requests == 0 and second.memory is not None
    assert second.memory.hits >= 2
    # a cached chunk is read-only: a caller cannot change what the next reader sees
    cached = second.memory.get(f"{next(iter(second.memory._items))}")
    assert cached is not None and not cached.flags.writeable
    off = open_store(spec, "scan", cache=False, memory_cache=False)
    assert off.memory is None


def test_memory_cache_is_bounded_lru() -> None:
    cache = DecodedCache(250)
    arrays = {k: np.full(100, i, np.uint8) for i, k in enumerate("abc")}
    cache.put("a", arrays["a"])
    cache.put("b", arrays["b"])
    assert cache.get("a") is arrays["a"]  # a is now the most recent
    cache.put("c", arrays["c"])  # 300 > 250: b, the least recent, goes
    assert cache.get("b") is None and cache.get("a") is not None and cache.used == 200
    cache.put("huge", np.zeros(251, np.uint8))  # larger than the whole cache: not kept
    assert cache.get("huge") is None and len(cache) == 2
    assert shared_decoded_cache(0) is None


def test_memory_size_from_config(tmp_path: Path) -> None:
    toml = tmp_path / "hyperslab.toml"
    toml.write_text('[cache]\nmemory = "64MiB"\n')
    assert load_config(env={"HYPERSLAB_CONFIG": str(toml)}).cache_memory == 64 << 20
    env = {"HYPERSLAB_CONFIG": str(toml), "HYPERSLAB_CACHE_MEMORY": "0"}
    assert load_config(env=env).cache_memory == 0
    toml.write_text('[cache]\nmemory = "lots"\n')
    with pytest.raises(ConfigError, match=r"\[cache\] memory"):
        load_config(env={"HYPERSLAB_CONFIG": str(toml)})


def _doc(dtype: str = "<u4", filters: list[dict[str, object]] | None = None) -> dict[str, object]:
    return {
        "zarr_format": 2,
        "shape": [64],
        "chunks": [64],
        "dtype": dtype,
        "compressor": None,
        "fill_value": 0,
        "filters": filters,
        "order": "C",
    }


GZIP_SHUFFLE = [{"id": "shuffle", "elementsize": 4}, {"id": "zlib", "level": 4}]


def test_decoder_matches_numcodecs_and_names_bad_chunks() -> None:
    values = np.arange(64, dtype="<u4") * 977
    stored = Zlib(4).encode(Shuffle(4).encode(values.tobytes()))
    decode = ChunkDecoder.for_array(_doc(filters=GZIP_SHUFFLE))
    assert decode is not None and decode.nbytes == 256
    assert decode(stored, "a/0").tobytes() == values.tobytes()
    with pytest.raises(CorruptError, match="chunk a/1 cannot be decoded"):
        decode(b"\x78\x9c not deflate at all", "a/1")
    short = Zlib(4).encode(Shuffle(4).encode(values[:10].tobytes()))
    with pytest.raises(CorruptError, match="a/2 decodes to 40 bytes, expected 256"):
        decode(short, "a/2")
    # no codecs: the bytes themselves, checked for size
    raw = ChunkDecoder.for_array(_doc(">i8"))
    assert raw is not None and raw(bytes(512)).size == 512
    # what the store leaves to zarr: object dtypes and codecs numcodecs does not know
    assert ChunkDecoder.for_array(_doc("|O", [{"id": "vlen-utf8"}])) is None
    assert ChunkDecoder.for_array(_doc(filters=[{"id": "no-such-codec"}])) is None


def test_decoder_falls_back_where_its_fast_paths_cannot_apply() -> None:
    # shuffle of 3-byte elements (no fast path) and a zlib step whose output size is not
    # known (a filter other than shuffle follows it): numcodecs decodes both
    values = np.arange(64, dtype="<u4")
    doc = _doc(filters=[{"id": "delta", "dtype": "<u4"}, {"id": "zlib", "level": 1}])
    stored = Zlib(1).encode(np.diff(values, prepend=0).astype("<u4").tobytes())
    dec = ChunkDecoder.for_array(doc)
    assert dec is not None and dec(stored).tobytes() == values.tobytes()
    rgb = _doc("|V3", [{"id": "shuffle", "elementsize": 3}, {"id": "zlib", "level": 1}])
    rgb["chunks"] = [64]
    raw = bytes(range(192))
    dec3 = ChunkDecoder.for_array(rgb)
    assert dec3 is not None
    assert dec3(zlib.compress(Shuffle(3).encode(raw))).tobytes() == raw


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs fork()")
def test_forked_child_decodes_with_its_own_threads(repo: tuple[str, np.ndarray]) -> None:
    """The decode pool's threads do not survive a fork: the child must start its own
    (a pool copied from the parent would take the work and never run it)."""
    import os

    spec, data = repo
    store = open_store(spec, "scan", cache=False)
    np.testing.assert_array_equal(zarr.open_array(store, path=FRAMES, mode="r")[0], data[0])
    pid = os.fork()
    if pid == 0:
        ok = False
        try:
            child = open_store(spec, "scan", cache=False)
            ok = bool((zarr.open_array(child, path=FRAMES, mode="r")[4] == data[4]).all())
        finally:
            os._exit(0 if ok else 1)
    import signal
    import time

    deadline = time.monotonic() + 60
    while (done := os.waitpid(pid, os.WNOHANG))[0] == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    if done[0] == 0:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        pytest.fail("the forked child hung decoding a chunk")
    assert os.waitstatus_to_exitcode(done[1]) == 0
