"""The local chunk cache: round trips, LRU eviction within the limit, damaged files as
misses, several processes at once (killed ones too), failures that never break a read,
and ``hyperslab cache info|clear``."""

from __future__ import annotations

import errno
import json
import multiprocessing
import os
import random
import signal
import sqlite3
import time
import warnings
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from hyperslab.cli import app
from hyperslab.config import load_config
from hyperslab.errors import ConfigError, FormatVersionError
from hyperslab.reading import chunk_cache as cache_mod
from hyperslab.reading.chunk_cache import HEADER_SIZE, CacheWarning, ChunkCache

runner = CliRunner()


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Never touch the real cache or a real hyperslab.toml."""
    monkeypatch.setenv("HYPERSLAB_CACHE_DIR", str(tmp_path / "default-cache"))
    monkeypatch.delenv("HYPERSLAB_CACHE_SIZE", raising=False)
    monkeypatch.delenv("HYPERSLAB_CONFIG", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg-config"))
    monkeypatch.chdir(tmp_path)


def payload(key: str, size: int | None = None) -> bytes:
    """Deterministic bytes for a key: a reader can tell right bytes from wrong ones."""
    rng = random.Random(key)
    n = size if size is not None else rng.randrange(100, 3000)
    return rng.randbytes(n)


def data_files(root: Path) -> list[Path]:
    return [p for p in (root / "data").glob("*/*") if p.is_file()]


def index_totals(root: Path) -> tuple[int, int, int]:
    """(stats bytes, SUM(size) of the rows, stats entries) read straight from SQLite."""
    with sqlite3.connect(root / "index.sqlite") as conn:
        stats_entries, stats_bytes = conn.execute("SELECT entries, bytes FROM stats").fetchone()
        rows_bytes = conn.execute("SELECT COALESCE(SUM(size), 0) FROM entries").fetchone()[0]
    conn.close()
    return stats_bytes, rows_bytes, stats_entries


def assert_consistent(root: Path, limit: int) -> None:
    """Index totals match the rows and the files on disk, and stay within the limit."""
    stats_bytes, rows_bytes, _ = index_totals(root)
    files = data_files(root)
    assert not [p for p in files if p.name.startswith(".tmp-")], "temporary files left behind"
    assert stats_bytes == rows_bytes == sum(p.stat().st_size for p in files)
    assert stats_bytes <= limit


# ---------------------------------------------------------------- basics
def test_round_trip_and_bytes_like_values(tmp_path: Path) -> None:
    c = ChunkCache(tmp_path / "c", max_bytes=10**6)
    assert c.get("nothing") is None and not c.contains("nothing")
    c.put("sha256:ab", b"hello")
    c.put("src/0/5", bytearray(b"world"))
    c.put("src/5/3", memoryview(b"abc"))
    c.put("empty", b"")
    assert c.get("sha256:ab") == b"hello"
    assert c.get("src/0/5") == b"world" and c.get("src/5/3") == b"abc"
    assert c.get("empty") == b""  # an empty value is a hit, not a miss
    assert "sha256:ab" in c
    assert c.get_many(["sha256:ab", "missing", "src/5/3"]) == {
        "sha256:ab": b"hello",
        "src/5/3": b"abc",
    }
    info = c.info()
    assert (info.entries, info.bytes) == (4, 4 * HEADER_SIZE + 13)
    assert (info.hits, info.misses, info.puts) == (6, 2, 4)
    # another instance (another process, in effect) sees the same entries
    assert ChunkCache(tmp_path / "c", max_bytes=10**6).get("src/0/5") == b"world"
    with pytest.raises(TypeError):
        c.get(b"bytes-key")  # type: ignore[arg-type]


def test_put_many_and_repeated_put(tmp_path: Path) -> None:
    c = ChunkCache(tmp_path / "c", max_bytes=10**6)
    c.put_many({f"k{i}": payload(f"k{i}") for i in range(20)})
    c.put_many([("k0", payload("k0")), ("k0", payload("k0"))])
    assert c.get_many(f"k{i}" for i in range(20)) == {f"k{i}": payload(f"k{i}") for i in range(20)}
    assert c.info().entries == 20
    assert_consistent(c.path, 10**6)


def test_keys_never_become_paths(tmp_path: Path) -> None:
    root = tmp_path / "c"
    c = ChunkCache(root, max_bytes=10**6)
    evil = ["../../escape", "/etc/passwd", "a/../../b", "C:\\x", "nul\x00byte", "ünïcödé", "."]
    for k in evil:
        c.put(k, k.encode())
    for k in evil:
        assert c.get(k) == k.encode()
    names = {p.name for p in data_files(root)}
    assert len(names) == len(evil) and all(len(n) == 40 for n in names)
    assert not (tmp_path / "escape").exists()
    allowed = {"data", "index.sqlite", "index.sqlite-wal", "index.sqlite-shm"}
    assert {p.name for p in root.iterdir()} <= allowed


# ---------------------------------------------------------------- LRU and the limit
def test_lru_eviction_order(tmp_path: Path) -> None:
    size = 1000
    limit = 3 * (size + HEADER_SIZE)
    c = ChunkCache(tmp_path / "c", max_bytes=limit)
    for k in "abc":
        c.put(k, payload(k, size))
    assert c.get("a") == payload("a", size)  # a is now more recent than b and c
    c.put("d", payload("d", size))
    assert [k for k in "abcd" if c.contains(k)] == ["a", "c", "d"]
    c.get("c")  # now a (read before d was put) is the least recently used
    c.put("e", payload("e", size))
    assert [k for k in "abcde" if c.contains(k)] == ["c", "d", "e"]
    assert c.info().evictions == 2


def test_recency_from_another_process_counts(tmp_path: Path) -> None:
    size, root = 1000, tmp_path / "c"
    limit = 3 * (size + HEADER_SIZE)
    writer = ChunkCache(root, max_bytes=limit)
    for k in "abc":
        writer.put(k, payload(k, size))
    with ChunkCache(root, max_bytes=limit) as reader:
        assert reader.get("a") is not None  # recency kept in memory, written by close()
    writer.put("d", payload("d", size))
    assert [k for k in "abcd" if writer.contains(k)] == ["a", "c", "d"]


def test_size_bound_and_oversized_entries(tmp_path: Path) -> None:
    limit = 20_000
    c = ChunkCache(tmp_path / "c", max_bytes=limit)
    for i in range(300):
        c.put(f"k{i}", payload(f"k{i}"))
        assert c.info().bytes <= limit
    assert c.info().evictions > 0
    assert_consistent(c.path, limit)
    c.put("huge", b"x" * limit)  # header included it is over the whole limit
    assert not c.contains("huge")
    assert_consistent(c.path, limit)
    # survivors are the most recent puts, and they read back right
    kept = [i for i in range(300) if c.contains(f"k{i}")]
    assert kept == list(range(300 - len(kept), 300))
    assert all(c.get(f"k{i}") == payload(f"k{i}") for i in kept)


def test_evict_to_and_clear(tmp_path: Path) -> None:
    root = tmp_path / "c"
    c = ChunkCache(root, max_bytes=10**6, memory_bytes=10**6)
    for i in range(50):
        c.put(f"k{i}", payload(f"k{i}", 1000))
    evicted = c.evict_to(10 * (1000 + HEADER_SIZE))
    assert evicted == 40 and c.info().entries == 10
    assert_consistent(root, 10 * (1000 + HEADER_SIZE))
    (root / "data" / "ab").mkdir(exist_ok=True)
    (root / "data" / "ab" / ("ab" + "0" * 38)).write_bytes(b"orphan")  # unknown to the index
    assert c.clear() == 10
    info = c.info()
    assert (info.entries, info.bytes, info.memory_entries) == (0, 0, 0)
    assert data_files(root) == []
    assert c.get("k49") is None
    c.put("again", b"fine")  # usable after clear
    assert c.get("again") == b"fine"


def test_clear_of_a_cache_that_does_not_exist(tmp_path: Path) -> None:
    c = ChunkCache(tmp_path / "never", max_bytes=10**6)
    assert c.info().entries == 0 and c.clear() == 0
    assert not (tmp_path / "never").exists()  # looking creates nothing


# ---------------------------------------------------------------- damaged files
def _entry_file(c: ChunkCache, key: str) -> Path:
    return Path(c._file(cache_mod._name(key)))


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda b: b[: len(b) // 2], id="truncated"),
        pytest.param(lambda b: b[:10], id="header-truncated"),
        pytest.param(lambda b: b[:-1] + bytes([b[-1] ^ 1]), id="bit-flip"),
        pytest.param(lambda b: b + b"extra", id="trailing-bytes"),
        pytest.param(lambda b: b"XXXX" + b[4:], id="bad-magic"),
        pytest.param(lambda b: b"", id="empty-file"),
    ],
)
def test_damaged_file_is_a_miss_and_removed(tmp_path: Path, damage: Any) -> None:
    c = ChunkCache(tmp_path / "c", max_bytes=10**6)
    c.put("k", payload("k", 2000))
    f = _entry_file(c, "k")
    f.write_bytes(damage(f.read_bytes()))
    assert c.get("k") is None
    assert not f.exists()
    info = c.info()
    assert info.corrupt == 1 and info.entries == 0 and info.bytes == 0
    c.put("k", payload("k", 2000))  # a fresh copy is stored again
    assert c.get("k") == payload("k", 2000)


def test_file_removed_behind_our_back_is_a_miss(tmp_path: Path) -> None:
    c = ChunkCache(tmp_path / "c", max_bytes=10**6)
    c.put("k", b"data")
    _entry_file(c, "k").unlink()
    assert c.get("k") is None and c.info().misses == 1


def test_reconcile_adopts_orphans_and_forgets_missing(tmp_path: Path) -> None:
    root = tmp_path / "c"
    c = ChunkCache(root, max_bytes=10**6)
    for k in ("a", "b", "c"):
        c.put(k, payload(k))
    _entry_file(c, "a").unlink()  # indexed, file gone
    # a file whose process died between rename and commit: on disk, not indexed
    orphan_key = "orphan"
    donor = ChunkCache(tmp_path / "donor", max_bytes=10**6)
    donor.put(orphan_key, payload(orphan_key))
    target = _entry_file(c, orphan_key)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(_entry_file(donor, orphan_key).read_bytes())
    shard = _entry_file(c, "b").parent
    old_tmp, new_tmp = shard / ".tmp-1-old", shard / ".tmp-2-new"
    old_tmp.write_bytes(b"x")
    new_tmp.write_bytes(b"y")
    os.utime(old_tmp, (time.time() - 7200, time.time() - 7200))
    counts = c.reconcile()
    assert counts == {"adopted": 1, "forgotten": 1, "temp_removed": 1, "evicted": 0}
    assert not old_tmp.exists() and new_tmp.exists()  # a live put may own the new one
    new_tmp.unlink()
    assert c.get(orphan_key) == payload(orphan_key)
    assert_consistent(root, 10**6)


def test_lost_index_is_rebuilt_from_the_files(tmp_path: Path) -> None:
    root = tmp_path / "c"
    c = ChunkCache(root, max_bytes=10**6)
    for i in range(5):
        c.put(f"k{i}", payload(f"k{i}"))
    c.close()
    for p in root.glob("index.sqlite*"):
        p.unlink()
    c2 = ChunkCache(root, max_bytes=10**6)
    c2.put("new", b"n")
    assert c2.info().entries == 6
    assert_consistent(root, 10**6)


def test_corrupt_index_reported_and_cleared(tmp_path: Path) -> None:
    root = tmp_path / "c"
    c = ChunkCache(root, max_bytes=10**6)
    c.put("k", b"v")
    c.close()
    for p in root.glob("index.sqlite-*"):
        p.unlink()
    (root / "index.sqlite").write_bytes(b"this is not a database" * 100)
    code, doc = run_cli("cache", "info", "--dir", str(root), "--json")
    assert code == 6 and doc["error"]["code"] == "corrupt"
    assert "hyperslab cache clear" in doc["error"]["message"]
    code, doc = run_cli("cache", "clear", "--dir", str(root), "--json")
    assert code == 0, doc
    fresh = ChunkCache(root, max_bytes=10**6)
    assert fresh.info().entries == 0 and data_files(root) == []
    fresh.put("k", b"v")
    assert fresh.get("k") == b"v"


def test_newer_format_is_a_named_error_and_never_breaks_reads(tmp_path: Path) -> None:
    root = tmp_path / "c"
    ChunkCache(root, max_bytes=10**6).put("k", b"v")
    with sqlite3.connect(root / "index.sqlite") as conn:
        conn.execute("PRAGMA user_version = 99")
    conn.close()
    c = ChunkCache(root, max_bytes=10**6)
    with pytest.raises(FormatVersionError):
        c.info()
    assert c.get("k") == b"v"  # reads need no index
    with pytest.warns(CacheWarning, match="format 99"):
        c.put("other", b"x")
    assert c.get("other") is None


# ---------------------------------------------------------------- failures never break reads
def test_full_disk_warns_once_and_carries_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    c = ChunkCache(tmp_path / "c", max_bytes=10**6, memory_bytes=10**6)

    def full(*args: Any, **kwargs: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(cache_mod.os, "replace", full)
    with pytest.warns(CacheWarning, match="No space left") as record:
        c.put("a", b"1")
        c.put("b", b"2")
    assert len(record) == 1
    assert [p for p in data_files(c.path) if p.name.startswith(".tmp-")] == []
    assert c.get("a") == b"1"  # the memory layer still serves it
    info = c.info()
    assert info.write_errors == 1 and info.last_error == "No space left on device"
    assert info.entries == 0
    monkeypatch.undo()
    assert ChunkCache(tmp_path / "c", max_bytes=10**6).get("a") is None


def test_unwritable_cache_location_never_raises(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    c = ChunkCache(blocker / "chunks", max_bytes=10**6)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        for i in range(3):
            c.put(f"k{i}", b"v")
    assert [w.category for w in record] == [CacheWarning]
    assert c.get("k0") is None and c.info().write_errors == 1


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_read_only_directory_never_raises(tmp_path: Path) -> None:
    root = tmp_path / "c"
    ChunkCache(root, max_bytes=10**6).put("k", b"v")
    os.chmod(root / "data", 0o500)
    for shard in (root / "data").iterdir():
        os.chmod(shard, 0o500)
    try:
        c = ChunkCache(root, max_bytes=10**6)
        with pytest.warns(CacheWarning):
            c.put("other", b"x" * 100)
        assert c.get("k") == b"v"
    finally:
        for p in [root / "data", *(root / "data").iterdir()]:
            os.chmod(p, 0o700)


# ---------------------------------------------------------------- memory layer
def test_memory_layer_is_bounded_and_serves_hits(tmp_path: Path) -> None:
    c = ChunkCache(tmp_path / "c", max_bytes=10**6, memory_bytes=3000)
    for k in "abcd":
        c.put(k, payload(k, 1000))
    info = c.info()
    assert info.memory_entries == 3 and info.memory_bytes == 3000
    assert c.get("d") == payload("d", 1000) and c.info().memory_hits == 1
    assert c.get("a") == payload("a", 1000)  # from disk, then kept in memory
    assert c.info().memory_hits == 1 and c.info().memory_entries == 3
    c.put("big", b"x" * 5000)  # larger than the memory layer: disk only
    assert c.info().memory_bytes <= 3000 and c.get("big") == b"x" * 5000


# ---------------------------------------------------------------- configuration
def test_defaults_come_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HYPERSLAB_CACHE_SIZE", "500MB")
    c = ChunkCache()
    assert c.path == tmp_path / "default-cache" / "chunks" and c.max_bytes == 500 * 10**6
    monkeypatch.setenv("HYPERSLAB_CACHE_SIZE", "10GiB")
    assert ChunkCache().max_bytes == 10 * 2**30
    monkeypatch.delenv("HYPERSLAB_CACHE_DIR")
    monkeypatch.delenv("HYPERSLAB_CACHE_SIZE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    c = ChunkCache()
    assert c.path == tmp_path / "xdg" / "hyperslab" / "chunks"
    assert c.max_bytes == load_config().cache_size == 20 * 10**9
    assert ChunkCache.from_config(load_config()).path == c.path


def test_bad_sizes_are_config_errors(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HYPERSLAB_CACHE_SIZE", "lots")
    with pytest.raises(ConfigError, match="HYPERSLAB_CACHE_SIZE"):
        ChunkCache()
    with pytest.raises(ConfigError):
        ChunkCache(tmp_path / "c", max_bytes=-1)


# ---------------------------------------------------------------- concurrency
def test_threads_share_one_cache(tmp_path: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    limit = 30_000
    c = ChunkCache(tmp_path / "c", max_bytes=limit, memory_bytes=5000)

    def work(seed: int) -> int:
        rng = random.Random(seed)
        wrong = 0
        for _ in range(300):
            k = f"k{rng.randrange(40)}"
            if rng.random() < 0.5:
                c.put(k, payload(k))
            else:
                got = c.get(k)
                wrong += got is not None and got != payload(k)
        return wrong

    with warnings.catch_warnings():
        warnings.simplefilter("error", CacheWarning)
        with ThreadPoolExecutor(8) as pool:
            assert sum(pool.map(work, range(8))) == 0
    assert_consistent(c.path, limit)


def _hammer(root: str, limit: int, seed: int, ops: int) -> dict[str, int]:
    """One process of the stress test: overlapping keys, a small limit, every read checked."""
    warnings.simplefilter("error", CacheWarning)  # a failed write would be a finding here
    c = ChunkCache(root, max_bytes=limit, memory_bytes=2000 if seed % 2 else 0)
    rng = random.Random(seed)
    counts = {"wrong": 0, "hits": 0, "puts": 0}
    for i in range(ops):
        k = f"chunk/{rng.randrange(60)}"
        r = rng.random()
        if r < 0.45:
            c.put(k, payload(k))
            counts["puts"] += 1
        elif r < 0.9:
            got = c.get(k)
            if got is not None:
                counts["hits"] += 1
                counts["wrong"] += got != payload(k)
        elif r < 0.97:
            batch = [f"chunk/{rng.randrange(60)}" for _ in range(5)]
            c.put_many({b: payload(b) for b in batch})
            got_many = c.get_many(batch)
            counts["wrong"] += sum(v != payload(k2) for k2, v in got_many.items())
        elif i % 2:
            c.evict_to(limit // 2)
        else:
            c.clear()
    c.close()
    return counts


def test_processes_hammering_overlapping_keys(tmp_path: Path) -> None:
    root, limit = tmp_path / "c", 24_000
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(4) as pool:
        results = pool.starmap(_hammer, [(str(root), limit, seed, 600) for seed in range(4)])
    assert sum(r["wrong"] for r in results) == 0
    assert sum(r["hits"] for r in results) > 50  # the test did exercise hits
    assert_consistent(root, limit)
    c = ChunkCache(root, max_bytes=limit)
    for i in range(60):
        got = c.get(f"chunk/{i}")
        assert got is None or got == payload(f"chunk/{i}")


def _put_forever(root: str, limit: int) -> None:
    c = ChunkCache(root, max_bytes=limit)
    i = 0
    while True:
        k = f"chunk/{i % 500}"
        c.put(k, payload(k))
        c.get(f"chunk/{(i * 7) % 500}")
        i += 1


def test_killed_writers_leave_no_wrong_bytes(tmp_path: Path) -> None:
    root, limit = tmp_path / "c", 50_000
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_put_forever, args=(str(root), limit)) for _ in range(2)]
    for p in procs:
        p.start()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(data_files(root)) < 20:
        time.sleep(0.05)
    time.sleep(0.3)
    for p in procs:
        assert p.pid is not None
        os.kill(p.pid, signal.SIGKILL)
        p.join()
    c = ChunkCache(root, max_bytes=limit)
    for i in range(500):
        got = c.get(f"chunk/{i}")
        assert got is None or got == payload(f"chunk/{i}")
    # Temporary files of the killed puts are young; pretend an hour went by.
    for p in data_files(root):
        if p.name.startswith(".tmp-"):
            os.utime(p, (time.time() - 7200, time.time() - 7200))
    c.reconcile()
    assert_consistent(root, limit)
    c.put("after", b"still works")
    assert c.get("after") == b"still works"


# ---------------------------------------------------------------- CLI
def run_cli(*args: str) -> tuple[int, Any]:
    res = runner.invoke(app, list(args), catch_exceptions=False)
    try:
        return res.exit_code, json.loads(res.stdout)
    except ValueError:
        return res.exit_code, res.stdout


def test_cli_info_and_clear_json(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HYPERSLAB_CACHE_SIZE", "1MiB")
    c = ChunkCache()
    for i in range(5):
        c.put(f"k{i}", payload(f"k{i}", 100))
    code, doc = run_cli("cache", "info", "--json")
    assert code == 0 and doc["ok"]
    assert doc["path"] == str(tmp_path / "default-cache" / "chunks")
    assert (doc["entries"], doc["bytes"], doc["limit"]) == (5, 5 * (100 + HEADER_SIZE), 2**20)
    code, doc = run_cli("cache", "clear", "--dry-run", "--json")
    assert code == 0 and doc["removed_entries"] == 5 and doc["dry_run"]
    assert c.info().entries == 5
    code, doc = run_cli("cache", "clear", "--json")
    assert code == 0 and doc["removed_entries"] == 5 and doc["removed_bytes"] == 5 * 116
    assert c.info().entries == 0 and c.get("k0") is None
    code, text = run_cli("cache", "info", "--dir", str(tmp_path / "elsewhere"))
    assert code == 0 and "entries      0" in text and "of 1.0 MB" in text


def test_cli_bad_size_is_a_named_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HYPERSLAB_CACHE_SIZE", "10 parsecs")
    code, doc = run_cli("cache", "info", "--json")
    assert code == 2 and doc["error"]["code"] == "config"
    assert "HYPERSLAB_CACHE_SIZE" in doc["error"]["message"]
    code, _ = run_cli("cache", "clear")
    assert code == 2


def test_cli_help_teaches() -> None:
    code, text = run_cli("cache", "--help")
    assert code == 0
    text = " ".join(text.split())
    for phrase in ("HYPERSLAB_CACHE_DIR", "HYPERSLAB_CACHE_SIZE", "least recently used", "20GB"):
        assert phrase in text
    code, text = run_cli("--help")
    assert "cache" in text
