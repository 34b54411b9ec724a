"""ML data sets over a repository: every sample once per epoch, equal to h5py's value,
whatever the workers and ranks; deterministic orders; faults; bad arguments."""

from __future__ import annotations

import itertools
import math
import shutil
import subprocess
import sys
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest

from hyperslab.convert.hdf5 import ConvertOptions
from hyperslab.convert.ingest import ingest
from hyperslab.errors import BadInputError, NotFoundError
from hyperslab.ml import ArrayDataset, ArraySamples, ChunkAwareSampler, to_device
from hyperslab.references.repository import Repository

torch = pytest.importorskip("torch")
from torch.utils.data import DataLoader  # noqa: E402

ARRAY = "entry/data/data"
# frames per entry: 7 (chunks of 2 frames: an uneven last unit), 4, 5
FRAMES = {"scan_a": 7, "scan_b": 4, "scan_c": 5}
FRAME = (16, 24)
# every chunk referenced in place (none inlined into the map): reads go through routing
IN_PLACE = ConvertOptions(inline_threshold=0)


def _write(path: Path, n: int, base: int, chunks: tuple[int, ...] = (2, 8, 12)) -> np.ndarray:
    values = (np.arange(n * FRAME[0] * FRAME[1], dtype=np.uint16) + base).reshape(n, *FRAME)
    with h5py.File(path, "w") as f:
        f.attrs["NX_class"] = "NXroot"
        entry = f.create_group("entry")
        entry.attrs["NX_class"] = "NXentry"
        entry.create_dataset("title", data="a scan")
        entry.create_dataset("count_time", data=0.5)
        data = entry.create_group("data")
        data.attrs["NX_class"] = "NXdata"
        data.attrs["signal"] = "data"
        data.attrs["axes"] = ["frame_number", ".", "."]
        data.attrs["frame_number_indices"] = 0
        data.create_dataset("data", data=values, chunks=chunks, compression="gzip", shuffle=True)
        data.create_dataset("frame_number", data=np.arange(n, dtype=np.int32) + 100)
    return values


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict[str, np.ndarray]]:
    d = tmp_path_factory.mktemp("ml")
    truth = {}
    files = []
    for k, (name, n) in enumerate(FRAMES.items()):
        path = d / f"{name}.nxs"
        truth[f"run/{name}"] = _write(path, n, 1000 * k)
        files.append(str(path))
    spec = str(d / "repo")
    r = Repository.init(spec)
    ingest(r, files, name="run", upload_sources=True, options=IN_PLACE)
    r.close()
    return spec, truth


def _key(item: dict[str, Any], i: int | None = None) -> tuple[str, int]:
    entry = item["entry"] if i is None else item["entry"][i]
    index = item["index"] if i is None else item["index"][i]
    return str(entry), int(index)


def _check_all_once(items: list[tuple[str, int, np.ndarray]], truth: dict[str, np.ndarray]) -> None:
    counts = Counter((e, i) for e, i, _ in items)
    want = {(e, i) for e, v in truth.items() for i in range(len(v))}
    assert set(counts) == want
    assert all(n == 1 for n in counts.values()), [k for k, n in counts.items() if n > 1]
    for e, i, data in items:
        np.testing.assert_array_equal(data, truth[e][i])


def _epoch(ds: Any, **loader: Any) -> list[tuple[str, int, np.ndarray]]:
    out = []
    for batch in DataLoader(ds, batch_size=3, **loader):
        for i in range(len(batch["entry"])):
            out.append((*_key(batch, i), batch["data"][i].numpy()))
    return out


def test_one_epoch_yields_every_frame_once_equal_to_h5py(repo: Any) -> None:
    spec, truth = repo
    ds = ArrayDataset(spec, ARRAY, seed=3, buffer_chunks=2, cache=False)
    items = [(*_key(it), it["data"].numpy()) for it in ds]
    _check_all_once(items, truth)
    assert len(ds) == sum(FRAMES.values())
    first = next(iter(ds))
    assert isinstance(first["data"], torch.Tensor) and first["data"].shape == FRAME
    assert int(first["frame_number"]) == 100 + int(first["index"])  # the NeXus axis


def test_same_seed_same_order_other_epoch_other_order(repo: Any) -> None:
    spec, _ = repo
    a = ArrayDataset(spec, ARRAY, seed=7, buffer_chunks=2, cache=False)
    b = ArrayDataset(spec, ARRAY, seed=7, buffer_chunks=2, cache=False)
    order = [_key(it) for it in a]
    assert order == [_key(it) for it in b]
    a.set_epoch(1)
    assert [_key(it) for it in a] != order
    assert sorted(_key(it) for it in a) == sorted(order)


@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_dataloader_workers_share_the_epoch(repo: Any, context: str) -> None:
    spec, truth = repo
    ds = ArrayDataset(spec, ARRAY, seed=1, buffer_chunks=2)
    items = _epoch(ds, num_workers=2, multiprocessing_context=context)
    _check_all_once(items, truth)


@pytest.mark.parametrize("drop_last", [False, True])
def test_distributed_ranks_split_the_epoch(repo: Any, drop_last: bool) -> None:
    spec, truth = repo
    total = sum(FRAMES.values())
    shares = []
    for rank in range(2):
        ds = ArrayDataset(
            spec, ARRAY, seed=5, rank=rank, world_size=2, drop_last=drop_last, cache=False
        )
        shares.append(_epoch(ds, num_workers=2, multiprocessing_context="fork"))
    keys = [(e, i) for share in shares for e, i, _ in share]
    assert len(keys) == len(set(keys))  # none twice
    if drop_last:
        assert [len(s) for s in shares] == [total // 2, total // 2]
    else:
        _check_all_once([x for s in shares for x in s], truth)
        assert abs(len(shares[0]) - len(shares[1])) <= 1


def test_map_style_with_the_chunk_aware_sampler(repo: Any) -> None:
    spec, truth = repo
    samples = ArraySamples(spec, ARRAY, cache=False)
    assert len(samples) == sum(FRAMES.values())
    item = samples[len(samples) - 1]
    np.testing.assert_array_equal(item["data"].numpy(), truth["run/scan_c"][-1])
    sampler = ChunkAwareSampler(samples, seed=2, buffer_chunks=2)
    order = list(sampler)
    assert sorted(order) == list(range(len(samples)))
    loader = DataLoader(samples, batch_size=4, sampler=sampler, num_workers=2)
    items = []
    for batch in loader:
        for i in range(len(batch["entry"])):
            items.append((*_key(batch, i), batch["data"][i].numpy()))
    _check_all_once(items, truth)
    sampler.set_epoch(1)
    assert list(sampler) != order


def test_patches_tile_each_frame(repo: Any) -> None:
    spec, truth = repo
    ds = ArrayDataset(spec, ARRAY, sample_shape=(8, 12), seed=0, as_tensors=False, cache=False)
    seen = Counter()
    for it in ds:
        frame, y, x = (int(v) for v in it["origin"])
        np.testing.assert_array_equal(it["data"], truth[it["entry"]][frame, y : y + 8, x : x + 12])
        seen[(it["entry"], frame, y, x)] += 1
    assert len(seen) == sum(FRAMES.values()) * 4 and set(seen.values()) == {1}


def test_bad_arguments_are_named(repo: Any) -> None:
    spec, _ = repo
    with pytest.raises(NotFoundError, match="no array"):
        ArrayDataset(spec, "entry/data/nope")
    with pytest.raises(BadInputError, match="selects no entry"):
        ArrayDataset(spec, ARRAY, entries="other/*")
    with pytest.raises(NotFoundError, match="run/missing"):
        ArrayDataset(spec, ARRAY, entries=["run/missing"])
    with pytest.raises(BadInputError, match="larger than the array"):
        ArrayDataset(spec, ARRAY, sample_shape=(2, 64, 24))
    with pytest.raises(BadInputError, match="must be numbers"):
        ArrayDataset(spec, "entry/title")
    with pytest.raises(BadInputError, match="scalar"):
        ArrayDataset(spec, "entry/count_time")
    with pytest.raises(BadInputError, match="rank 2 is not one of world_size 2"):
        ArrayDataset(spec, ARRAY, rank=2, world_size=2)


def test_the_order_mixes_units(repo: Any) -> None:
    spec, _ = repo
    shuffled = ArrayDataset(spec, ARRAY, seed=0, buffer_chunks=4).mixing()
    ordered = ArrayDataset(spec, ARRAY, shuffle=False).mixing()
    assert ordered["displacement"] == 0.0
    assert shuffled["displacement"] > 0.05
    assert shuffled["same_unit_neighbours"] < ordered["same_unit_neighbours"]


def test_mixing_counts_near_neighbours_against_a_permutation(repo: Any) -> None:
    from hyperslab.ml.order import mixing

    emitted = [(0, 0), (0, 1), (0, 5), (0, 6)]
    m = mixing(emitted, {x: x[1] // 2 for x in emitted}, window=2)
    assert m["near_neighbours"] == pytest.approx(2 / 3)  # 0-1 and 5-6, not 1-5
    # a permutation of the four: 2 of the 6 pairs (0-1, 5-6) are near, each both ways
    assert m["near_neighbours_permutation"] == pytest.approx(4 / 12)
    assert m["same_unit_neighbours"] == pytest.approx(1 / 3)  # only 0-1 share a unit
    assert m["same_unit_neighbours_permutation"] == pytest.approx(2 / 12)
    spec, _ = repo
    alone = ArrayDataset(spec, ARRAY, seed=0, fetch_units=1).mixing()
    runs = ArrayDataset(spec, ARRAY, seed=0, fetch_units=4).mixing()
    assert runs["near_neighbours"] > alone["near_neighbours"]  # what fetching runs costs


@pytest.mark.parametrize("fetch_units", [1, 3])
def test_consecutive_units_are_fetched_together(
    repo: Any, fetch_units: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Runs of ``fetch_units`` units of an entry stay together in the order and are read
    in one call (one coalesced request); every frame still comes once, equal to h5py's."""
    from hyperslab.ml.units import UnitReader

    spec, truth = repo
    calls: list[tuple[int, int, int]] = []
    real = UnitReader.read_units

    def counted(self: UnitReader, part: int, first: int, n: int) -> Any:
        calls.append((part, first, n))
        return real(self, part, first, n)

    monkeypatch.setattr(UnitReader, "read_units", counted)
    # a small window (2 + 3 units), so most runs start as earlier ones are spent
    ds = ArrayDataset(
        spec,
        ARRAY,
        seed=2,
        fetch_units=fetch_units,
        buffer_chunks=2,
        readahead=0,
        cache=False,
        coordinates=False,  # no request but the frames'
    )
    items = [(*_key(it), it["data"].numpy()) for it in ds]
    _check_all_once(items, truth)
    units = [math.ceil(n / 2) for n in FRAMES.values()]  # chunks of 2 frames
    assert len(calls) == sum(math.ceil(u / fetch_units) for u in units)
    readers = ds._unit_reader()._readers.values()
    assert sum(r.router.stats.requests for r in readers) == len(calls)  # one request each
    pieces = ds.pieces()
    for p, q in itertools.pairwise(pieces):  # a run ends only at its last unit
        run_goes_on = p.unit % fetch_units != fetch_units - 1
        if run_goes_on and p.unit + 1 < ds.spec.grids[p.part].n_units:
            assert (q.part, q.unit) == (p.part, p.unit + 1)
    unit_bytes = 2 * FRAME[0] * FRAME[1] * 2
    assert ds.memory_bound() == (2 + fetch_units) * unit_bytes
    assert ds.memory_bound(batch_size=4) == (2 + fetch_units + 4) * unit_bytes
    with pytest.raises(BadInputError, match="fetch_units must be >= 1"):
        ArrayDataset(spec, ARRAY, fetch_units=0)


def test_a_spent_unit_is_dropped_before_the_rest_of_its_run() -> None:
    """Memory follows the units drawn from, not the runs fetched: a unit is freed as
    soon as its piece is spent, while the other units of its run are still in use."""
    import weakref

    from hyperslab.ml.dataset import _ReadAhead
    from hyperslab.ml.order import Piece

    made: list[weakref.ref[np.ndarray]] = []

    class Units:  # a reader of units 0..7 of one part, each a fresh array
        def read_units(self, part: int, first: int, n: int) -> list[np.ndarray]:
            out = [np.full(4, first + k) for k in range(n)]
            made.extend(weakref.ref(a) for a in out)
            return out

    pieces = [Piece(0, u, 0, 1) for u in range(8)]
    ahead = _ReadAhead(Units(), pieces, ahead=8, run=4)  # type: ignore[arg-type]
    try:
        assert int(ahead.get(0)[0]) == 0
        for fut, _ in list(ahead.blocks.values()):
            fut.result()  # the second run, read ahead in the background
        assert len(made) == 8  # two runs of four
        ahead.release(0)
        assert made[0]() is None  # unit 0 gone ...
        assert all(r() is not None for r in made[1:])  # ... its run's others kept
        for i in (2, 1, 3):
            assert int(ahead.get(i)[0]) == i
            ahead.release(i)
        assert all(r() is None for r in made[:4]) and made[4]() is not None
    finally:
        ahead.close()


def test_fetch_units_default_to_a_request_worth_of_bytes(repo: Any) -> None:
    spec, _ = repo
    assert ArrayDataset(spec, ARRAY, buffer_chunks=2).fetch_units == 1  # the buffer decides
    assert ArrayDataset(spec, ARRAY, buffer_chunks=16).fetch_units == 4  # tiny chunks


def test_a_site_that_lost_the_sources_falls_back(repo: Any, tmp_path: Path) -> None:
    """Reading from two replicas: the first loses its source files mid-epoch; every
    chunk then comes from the second, and the epoch completes with the right values."""
    spec, truth = repo
    replica = tmp_path / "replica"
    shutil.copytree(spec, replica)
    ds = ArrayDataset(
        str(replica), ARRAY, sites=[str(replica), spec], seed=4, buffer_chunks=1, readahead=0,
        cache=False, as_tensors=False,
    )  # fmt: skip
    items = []
    for n, it in enumerate(ds):
        if n == 2:
            shutil.rmtree(replica / "sources")
        items.append((*_key(it), it["data"]))
    _check_all_once(items, truth)


def _damage(root: Path) -> None:
    """Flip a byte in the middle of every chunk of the array in the repository's copies."""
    for f in (root / "sources").rglob("*.nxs"):
        with h5py.File(f, "r") as h:
            dset = h[ARRAY]
            spots = [
                info.byte_offset + info.size // 2
                for info in (dset.id.get_chunk_info(i) for i in range(dset.id.get_num_chunks()))
            ]
        raw = bytearray(f.read_bytes())
        for at in spots:
            raw[at] ^= 0xFF
        f.write_bytes(bytes(raw))


def test_a_damaged_chunk_falls_back_to_an_intact_copy(repo: Any, tmp_path: Path) -> None:
    """The repository's copies of the sources are damaged; the files ingest read are
    still where they were (the last resort): every value comes out right."""
    spec, truth = repo
    copy = tmp_path / "damaged"
    shutil.copytree(spec, copy)
    _damage(copy)
    ds = ArrayDataset(str(copy), ARRAY, cache=False, as_tensors=False)
    _check_all_once([(*_key(it), it["data"]) for it in ds], truth)


def test_a_damaged_chunk_with_no_intact_copy_is_a_named_error(tmp_path: Path) -> None:
    src = tmp_path / "scan.nxs"
    _write(src, 3, 0)
    spec = str(tmp_path / "repo")
    r = Repository.init(spec)
    ingest(r, [str(src)], name="only", upload_sources=True, options=IN_PLACE)
    r.close()
    src.unlink()  # no last resort
    _damage(Path(spec))
    ds = ArrayDataset(spec, ARRAY, cache=False, as_tensors=False)
    with pytest.raises(Exception) as info:
        list(ds)
    assert getattr(info.value, "code", "") == "chunk_unavailable"
    assert "checksum" in str(info.value)


@pytest.mark.parametrize("memory_cache", [False, True])
def test_samples_are_writable_and_changing_one_changes_nothing_stored(
    tmp_path: Path, memory_cache: bool
) -> None:
    """One frame per chunk: a unit is handed out without a copy when nothing else holds
    it; a sample changed in place (a transform that works in place) never changes what a
    later read returns, with decoded chunks kept in memory or not."""
    src = tmp_path / "scan.nxs"
    truth = _write(src, 6, 0, chunks=(1, *FRAME))
    spec = str(tmp_path / "repo")
    r = Repository.init(spec)
    ingest(r, [str(src)], name="one", upload_sources=True, options=IN_PLACE)
    r.close()
    ds = ArrayDataset(spec, ARRAY, cache=False, memory_cache=memory_cache, coordinates=False)
    for _ in range(2):
        items = []
        for it in ds:
            data = it["data"].numpy()
            assert data.flags.writeable
            items.append((it["entry"], it["index"], data.copy()))
            data[...] = 7  # in place, through the tensor's memory
        _check_all_once(items, {"one": truth})


def test_a_worker_reading_never_imports_pandas(repo: Any) -> None:
    """Opening an entry and reading units stays off pandas (~40 MB per worker, pulled in
    by pyarrow.dataset), checksums and chunk tables included."""
    spec, _ = repo
    code = (
        "import sys\n"
        "from hyperslab.ml import ArrayDataset\n"
        f"ds = ArrayDataset({spec!r}, {ARRAY!r}, cache=False, as_tensors=False)\n"
        "n = sum(1 for _ in ds)\n"
        "print(n, 'pandas' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [str(sum(FRAMES.values())), "False"]


def test_the_gpu_path_pinned_batches_moved_to_a_device(repo: Any) -> None:
    """pin_memory=True (pinning needs an accelerator: on a CPU-only machine the DataLoader
    skips it with a warning) and to_device: every tensor moves, names stay. The "meta"
    device stands in for a GPU: a real transfer, no values."""
    spec, truth = repo
    ds = ArrayDataset(spec, ARRAY, seed=1)
    items = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "no accelerator is found"
        loader = DataLoader(ds, batch_size=4, num_workers=2, pin_memory=True)
        for batch in loader:
            on_cpu = to_device(batch, "cpu")
            moved = to_device(batch, "meta")
            assert (
                moved["data"].device.type == "meta" and moved["data"].shape == batch["data"].shape
            )
            assert moved["frame_number"].device.type == "meta"
            assert moved["entry"] == batch["entry"]  # names stay names
            for i in range(len(batch["entry"])):
                items.append((*_key(on_cpu, i), on_cpu["data"][i].numpy()))
    _check_all_once(items, truth)


def test_without_torch_items_are_numpy(repo: Any) -> None:
    spec, truth = repo
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "import numpy as np\n"
        "from hyperslab.ml import ArrayDataset\n"
        f"ds = ArrayDataset({spec!r}, {ARRAY!r}, cache=False)\n"
        "items = list(ds)\n"
        "assert all(isinstance(i['data'], np.ndarray) for i in items)\n"
        "from hyperslab.errors import BadInputError\n"
        "from hyperslab.ml import to_device\n"
        "try:\n"
        "    to_device({}, 'cpu')\n"
        "    raise SystemExit('to_device without torch did not fail')\n"
        "except BadInputError as exc:\n"
        "    assert 'needs PyTorch' in str(exc)\n"
        "print(len(items), sum(int(i['data'].sum()) for i in items))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    n, total = (int(x) for x in out.stdout.split())
    assert n == sum(FRAMES.values())
    assert total == sum(int(v.sum()) for v in truth.values())
