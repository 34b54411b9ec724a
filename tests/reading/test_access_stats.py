"""Access statistics: chunk reads counted through real zarr reads, hot-chunk queries over
day windows, many processes writing at once, opt-out, the CLI, and a broken database
never breaking a read."""

from __future__ import annotations

import json
import multiprocessing
import os
import pickle
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import pytest
import zarr
from typer.testing import CliRunner

from hyperslab.access.store import open_store
from hyperslab.cli import app
from hyperslab.convert.ingest import ingest
from hyperslab.errors import BadInputError, ConfigError, CorruptError
from hyperslab.reading.access_stats import AccessStats, ChunkReads, StatsWarning, shared_stats
from hyperslab.reading.chunk_cache import ChunkCache
from hyperslab.references.repository import Repository

runner = CliRunner()
DAY = 86400
FRAMES = "entry/data/data"


@dataclass(frozen=True)
class LocalRepo:
    spec: str
    id: str
    frames: int  # chunks of FRAMES: one per frame


@pytest.fixture(scope="module")
def local_repo(tmp_path_factory: pytest.TempPathFactory) -> LocalRepo:
    """One entry ``scan``: 4 referenced frame chunks, a small inlined array, and a sparse
    array whose chunks were mostly never written."""
    tmp = tmp_path_factory.mktemp("stats-repo")
    f = tmp / "scan.h5"
    with h5py.File(f, "w") as h:
        h.create_dataset(
            FRAMES, data=np.arange(4 * 64 * 64, dtype="u4").reshape(4, 64, 64), chunks=(1, 64, 64)
        )
        h.create_dataset("entry/x", data=np.arange(4), chunks=(4,))
        sparse = h.create_dataset(
            "entry/sparse", shape=(4, 4), chunks=(2, 2), fillvalue=-1, dtype="i4"
        )
        sparse[0:2, 0:2] = 7
    repo = Repository.init(str(tmp / "repo"))
    ingest(repo, [str(f)], upload_sources=True)
    return LocalRepo(str(tmp / "repo"), repo.id, 4)


@pytest.fixture
def stats_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Recording on (the suite turns it off), the default database in a temporary dir."""
    monkeypatch.setenv("HYPERSLAB_ACCESS_STATS", "1")
    monkeypatch.setenv("HYPERSLAB_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache" / "access-stats.sqlite"


class Clock:
    def __init__(self, day: int = 20_000) -> None:
        self.now = day * DAY + 3600.0

    def __call__(self) -> float:
        return self.now

    def next_day(self, n: int = 1) -> None:
        self.now += n * DAY


def _read(store: object, path: str, sel: object = Ellipsis) -> np.ndarray:
    return np.asarray(zarr.open_group(store, mode="r")[path][sel])  # type: ignore[arg-type]


# ----------------------------------------------------------------- through the store


def test_store_counts_chunk_reads_not_metadata(local_repo: LocalRepo, tmp_path: Path) -> None:
    stats = AccessStats(tmp_path / "s.sqlite")
    store = open_store(local_repo.spec, "scan", cache=False, stats=stats)
    group = zarr.open_group(store, mode="r")
    _ = group[FRAMES].shape, dict(group["entry/x"].attrs)  # metadata only
    assert stats.summary().recorded == 0
    _read(store, FRAMES, 0)  # chunk 0 (referenced: fetched from the repository site)
    _read(store, FRAMES, slice(0, 2))  # chunks 0, 1
    _read(store, "entry/x")  # inlined in the map
    np.testing.assert_array_equal(_read(store, "entry/sparse")[0:2, 0:2], 7)  # 1 of 4 written
    store.close()
    hot = stats.hot_chunks(local_repo.id)
    assert hot == [
        ChunkReads("scan", FRAMES, f"{FRAMES}/0.0.0", 2),
        ChunkReads("scan", FRAMES, f"{FRAMES}/1.0.0", 1),
        ChunkReads("scan", "entry/sparse", "entry/sparse/0.0", 1),
        ChunkReads("scan", "entry/x", "entry/x/0", 1),
    ]
    s = stats.summary()
    assert (s.reads, s.chunks, s.recorded, s.flushed, s.pending, s.dropped) == (5, 4, 5, 5, 0, 0)
    [r] = s.repositories
    assert (r.repo, r.entries, r.chunks, r.reads) == (local_repo.id, 1, 4, 5)
    assert r.display.endswith("repo") and r.first_day == r.last_day
    assert stats.repositories() == {local_repo.id: r.display}


def test_cache_hits_count_as_reads(local_repo: LocalRepo, tmp_path: Path) -> None:
    stats = AccessStats(tmp_path / "s.sqlite")
    cache = ChunkCache(tmp_path / "chunks", max_bytes=1 << 24)
    for _ in range(3):
        store = open_store(local_repo.spec, "scan", cache=cache, stats=stats, memory_cache=False)
        _read(store, FRAMES, 3)
    assert store.router.stats.cache_hits == 1 and store.router.stats.requests == 0
    assert stats.hot_chunks(local_repo.id, min_reads=3) == [
        ChunkReads("scan", FRAMES, f"{FRAMES}/3.0.0", 3)
    ]


def test_pickled_store_records_where_the_original_did(
    local_repo: LocalRepo, tmp_path: Path
) -> None:
    path = tmp_path / "s.sqlite"
    store = open_store(local_repo.spec, "scan", cache=False, stats=AccessStats(path))
    again = pickle.loads(pickle.dumps(store))
    assert again.stats is shared_stats(path) and again == store
    _read(again, FRAMES, 1)
    again.close()
    assert AccessStats(path).hot_chunks(local_repo.id)[0].key == f"{FRAMES}/1.0.0"
    off = pickle.loads(pickle.dumps(open_store(local_repo.spec, "scan", cache=False, stats=False)))
    assert off.stats is None


# ----------------------------------------------------------------- opting out


def test_default_database_and_env_opt_out(
    local_repo: LocalRepo, stats_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = open_store(local_repo.spec, "scan", cache=False)
    assert store.stats is not None and store.stats.path == stats_env
    _read(store, FRAMES, 2)
    store.close()
    assert stats_env.exists()
    assert AccessStats(stats_env).hot_chunks(local_repo.id)[0].reads == 1
    assert open_store(local_repo.spec, "scan", cache=False, stats=False).stats is None
    for off in ("0", "false", "OFF", "no"):
        monkeypatch.setenv("HYPERSLAB_ACCESS_STATS", off)
        store = open_store(local_repo.spec, "scan", cache=False)
        assert store.stats is None
        _read(store, FRAMES, 2)
        assert pickle.loads(pickle.dumps(store)).stats is None
    assert AccessStats(stats_env).hot_chunks(local_repo.id)[0].reads == 1  # nothing more
    monkeypatch.setenv("HYPERSLAB_ACCESS_STATS", "sometimes")
    with pytest.raises(ConfigError, match="HYPERSLAB_ACCESS_STATS"):
        open_store(local_repo.spec, "scan", cache=False)


# ----------------------------------------------------------------- queries


def test_hot_chunks_thresholds_globs_and_day_windows(tmp_path: Path) -> None:
    clock = Clock()
    stats = AccessStats(tmp_path / "s.sqlite", clock=clock)
    old = stats.recorder("R", "snap1", "run1/scan_1")
    new = stats.recorder("R", "snap2", "run1/scan_1")  # same entry, a later snapshot
    other = stats.recorder("R", "snap2", "run2/scan_9")
    elsewhere = stats.recorder("S", "snap9", "run1/scan_1")
    for _ in range(3):
        old("entry/data/data/0.0.0")
    clock.next_day(5)  # day 5
    for _ in range(2):
        new("entry/data/data/0.0.0")
        new("entry/data/data/1.0.0")
    other("entry/mean/0")
    clock.next_day(4)  # day 9: today
    new("entry/data/data/1.0.0")
    elsewhere("entry/data/data/0.0.0")

    def keys(**kw: object) -> list[tuple[str, str, int]]:
        return [(c.entry, c.key, c.reads) for c in stats.hot_chunks("R", **kw)]  # type: ignore[arg-type]

    assert keys() == [
        ("run1/scan_1", "entry/data/data/0.0.0", 5),  # snapshots add up
        ("run1/scan_1", "entry/data/data/1.0.0", 3),
        ("run2/scan_9", "entry/mean/0", 1),
    ]
    assert keys(min_reads=4) == [("run1/scan_1", "entry/data/data/0.0.0", 5)]
    assert keys(days=1) == [("run1/scan_1", "entry/data/data/1.0.0", 1)]  # today only
    assert keys(days=4) == keys(days=1)  # days 6..9
    assert keys(days=5) == [  # days 5..9
        ("run1/scan_1", "entry/data/data/1.0.0", 3),
        ("run1/scan_1", "entry/data/data/0.0.0", 2),
        ("run2/scan_9", "entry/mean/0", 1),
    ]
    assert keys(days=10) == keys()
    assert keys(days=5, min_reads=3) == [("run1/scan_1", "entry/data/data/1.0.0", 3)]
    assert keys(entry_glob="run2/*") == [("run2/scan_9", "entry/mean/0", 1)]
    assert keys(array_glob="entry/data") == []  # the array itself, not a prefix
    assert [k for _, k, _ in keys(array_glob="entry/*/data")] == [
        "entry/data/data/0.0.0",
        "entry/data/data/1.0.0",
    ]
    assert keys(snapshot="snap1") == [("run1/scan_1", "entry/data/data/0.0.0", 3)]
    assert keys(limit=1) == keys()[:1]
    assert stats.hot_chunks("nope") == []
    with pytest.raises(BadInputError):
        stats.hot_chunks("R", min_reads=0)
    with pytest.raises(BadInputError):
        stats.hot_chunks("R", days=0)
    summary = stats.summary()
    assert [(r.repo, r.entries, r.chunks, r.reads) for r in summary.repositories] == [
        ("R", 2, 3, 9),
        ("S", 1, 1, 1),
    ]
    r = summary.repositories[0]
    assert (r.first_day, r.last_day) == ("2024-10-04", "2024-10-13")  # epoch days 20000, 20009

    assert stats.clear(older_than=5) == 3  # day 0 (the snap1 reads) goes; days 5..9 stay
    assert keys() == keys(days=5)
    assert stats.clear() == 7
    assert keys() == [] and stats.summary().repositories == []


def test_threads_lose_no_counts(tmp_path: Path) -> None:
    stats = AccessStats(tmp_path / "s.sqlite", flush_every=50, flush_seconds=0.01)
    record = stats.recorder("R", "s", "e")

    def work() -> None:
        for i in range(2000):
            record(f"a/{i % 7}")

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    hot = stats.hot_chunks("R")
    assert sum(c.reads for c in hot) == 16000 and len(hot) == 7
    assert stats.summary().flushed == 16000


def _reader(spec: str, path: str, rounds: int, flush_every: int) -> None:
    """A separate process: reads every frame ``rounds`` times, flushing every
    ``flush_every`` reads, and leaves the last counts to the flush at exit."""
    stats = AccessStats(path, flush_every=flush_every, flush_seconds=60)
    store = open_store(spec, "scan", cache=False, stats=stats)
    arr = zarr.open_group(store, mode="r")[FRAMES]
    for _ in range(rounds):
        for i in range(arr.shape[0]):
            arr[i]


@pytest.mark.parametrize(
    ("method", "flush_every"),
    [
        ("spawn", 3),
        pytest.param(
            "fork",
            10**6,
            marks=pytest.mark.skipif(
                "fork" not in multiprocessing.get_all_start_methods(), reason="needs fork"
            ),
        ),
    ],
)
def test_many_processes_add_up(
    local_repo: LocalRepo, tmp_path: Path, method: str, flush_every: int
) -> None:
    """spawn: 4 processes flushing concurrently, the tail at exit (atexit); fork: all at
    exit, through multiprocessing's finalizers (its forked workers skip atexit)."""
    path = tmp_path / "s.sqlite"
    rounds, procs = 25, 4
    ctx = multiprocessing.get_context(method)
    workers = [
        ctx.Process(target=_reader, args=(local_repo.spec, str(path), rounds, flush_every))
        for _ in range(procs)
    ]
    for w in workers:
        w.start()
    for w in workers:
        w.join(120)
        assert w.exitcode == 0
    hot = AccessStats(path).hot_chunks(local_repo.id)
    assert [c.reads for c in hot] == [rounds * procs] * local_repo.frames


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_forked_child_does_not_count_its_parents_reads(tmp_path: Path) -> None:
    stats = AccessStats(tmp_path / "s.sqlite", flush_seconds=60)
    record = stats.recorder("R", "s", "e")
    for _ in range(3):
        record("a/0")
    pid = os.fork()
    if pid == 0:  # the child: its own read only
        try:
            record("a/1")
            stats.flush()
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    stats.flush()
    assert {c.key: c.reads for c in stats.hot_chunks("R")} == {"a/0": 3, "a/1": 1}


# ----------------------------------------------------------------- never breaks a read


def test_unwritable_database_never_breaks_reads(local_repo: LocalRepo, tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the database's directory should be")
    stats = AccessStats(blocker / "s.sqlite", flush_every=1)
    store = open_store(local_repo.spec, "scan", cache=False, stats=stats)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for i in range(3):
            np.testing.assert_array_equal(
                _read(store, FRAMES, i), np.arange(64 * 64, dtype="u4").reshape(64, 64) + i * 4096
            )
            stats.flush()
        store.close()
    assert [w.category for w in caught] == [StatsWarning]  # once
    s = stats.summary()
    assert s.recorded == 3 and s.flushed == 0 and s.dropped == 3 and s.write_errors >= 1
    assert s.last_error


def test_damaged_database_warns_then_clear_starts_afresh(
    local_repo: LocalRepo, tmp_path: Path
) -> None:
    path = tmp_path / "s.sqlite"
    # damaged inside: the header says SQLite, the pages are garbage
    path.write_bytes(b"SQLite format 3\x00" + b"this is not an SQLite database" * 100)
    stats = AccessStats(path)
    store = open_store(local_repo.spec, "scan", cache=False, stats=stats)
    with pytest.warns(StatsWarning, match="cannot be written"):
        _read(store, FRAMES, 0)
        store.close()
    with pytest.raises(CorruptError, match="stats clear"):
        stats.summary()
    assert stats.clear() == 0
    _read(store, FRAMES, 0)
    store.close()
    assert stats.hot_chunks(local_repo.id)[0].reads == 1


def test_clear_never_deletes_a_file_that_is_not_a_database(tmp_path: Path) -> None:
    """A wrong --file (notes, a data file) is refused by name and kept, byte for byte."""
    path = tmp_path / "notes.txt"
    path.write_bytes(b"my notes, not a database\n" * 50)
    with pytest.raises(BadInputError, match="not a SQLite database"):
        AccessStats(path).clear()
    assert path.read_bytes() == b"my notes, not a database\n" * 50


# ----------------------------------------------------------------- the CLI


def test_cli_show_and_clear_json(local_repo: LocalRepo, tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    stats = AccessStats(path)
    store = open_store(local_repo.spec, "scan", cache=False, stats=stats)
    for _ in range(3):
        _read(store, FRAMES, 0)
    _read(store, FRAMES, 1)
    store.close()
    stats.recorder("other-repo", "s", "e")("a/0")
    stats.flush()

    def show(*args: str) -> dict[str, object]:
        res = runner.invoke(app, ["stats", "show", "--file", str(path), "--json", *args])
        assert res.exit_code == 0, res.output
        doc: dict[str, object] = json.loads(res.stdout)
        assert doc["ok"] is True and doc["path"] == str(path)
        return doc

    everything = show()
    assert everything["reads"] == 5 and len(everything["hot"]) == 3  # type: ignore[arg-type]
    for repo in (local_repo.id, local_repo.id[:8], local_repo.spec):
        doc = show("--repo", repo, "--min-reads", "2", "--days", "1")
        assert doc["hot"] == [
            {
                "repo": local_repo.id,
                "entry": "scan",
                "array": FRAMES,
                "key": f"{FRAMES}/0.0.0",
                "reads": 3,
            }
        ]
        assert [r["repo"] for r in doc["repositories"]] == [local_repo.id]  # type: ignore[attr-defined]
    text = runner.invoke(app, ["stats", "show", "--file", str(path), "--repo", local_repo.id])
    assert text.exit_code == 0 and f"{FRAMES}/0.0.0" in text.stdout
    bad = runner.invoke(app, ["stats", "show", "--file", str(path), "--min-reads", "0"])
    assert bad.exit_code == 2

    res = runner.invoke(app, ["stats", "clear", "--file", str(path), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout) == {
        "ok": True,
        "path": str(path),
        "older_than": None,
        "removed_reads": 5,
    }
    assert show()["hot"] == []

    helptext = runner.invoke(app, ["stats", "--help"], env={"COLUMNS": "200"}).stdout
    for needle in ("HYPERSLAB_ACCESS_STATS=0", "access-stats.sqlite", "Metadata reads"):
        assert needle in helptext
