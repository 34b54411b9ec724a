"""Chunk checksums at ingest: grouped by source, and the one-pass sha256 + CRC-32C read."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from google_crc32c import value as crc32c

from hyperslab.errors import SourceChangedError
from hyperslab.references.checksums import (
    compute_checksums,
    crc_extend,
    crc_ranges,
    hash_and_checksum,
)
from hyperslab.references.refmap import ArrayRefs, RefMap


def _file(tmp_path, name: str, size: int, seed: int) -> tuple[str, bytes]:
    data = np.random.default_rng(seed).integers(0, 256, size, np.uint8).tobytes()
    p = tmp_path / name
    p.write_bytes(data)
    return str(p), data


@pytest.mark.parametrize("block", [7, 64, 1 << 20])
def test_one_pass_equals_separate_reads(tmp_path, block):
    path, data = _file(tmp_path, "a.bin", 1000, 1)
    # unsorted, overlapping, shared starts, empty, whole file, across block edges
    offs = np.array([900, 0, 10, 10, 63, 500, 0, 999], np.int64)
    lens = np.array([100, 1000, 5, 300, 2, 0, 64, 1], np.int64)
    got = hash_and_checksum(path, offs, lens, block=block)
    assert got.sha256 == hashlib.sha256(data).hexdigest()
    assert got.size == len(data)
    found, crcs = got.lookup(offs, lens)
    assert found.all()
    assert crcs.tolist() == [crc32c(data[o : o + n]) for o, n in zip(offs, lens, strict=True)]
    miss, _ = got.lookup(np.array([10, 11]), np.array([6, 5]))
    assert not miss.any()
    o = np.argsort(offs, kind="stable")
    assert crc_ranges(path, offs[o], lens[o]).tolist() == crcs[o].tolist()


def test_one_pass_whole_file_only_and_short_file(tmp_path):
    path, data = _file(tmp_path, "a.bin", 300, 2)
    assert hash_and_checksum(path).sha256 == hashlib.sha256(data).hexdigest()
    with pytest.raises(SourceChangedError):
        hash_and_checksum(path, np.array([250]), np.array([51]))
    with pytest.raises(SourceChangedError):
        crc_ranges(path, np.array([250]), np.array([51]))


def _refmap(n_files: int) -> RefMap:
    """Two arrays whose chunks interleave over ``n_files`` sources (and one inline-only)."""
    rng = np.random.default_rng(3)
    m = RefMap(sources=[f"s{i}" for i in range(n_files)])
    for name, n in (("a", 40), ("b", 25)):
        arr = ArrayRefs(path=name, zarray={"shape": [n], "chunks": [1]})
        arr.index = np.arange(n, dtype=np.int64)
        arr.source = rng.integers(0, n_files, n).astype(np.int32)
        arr.offset = rng.integers(0, 400, n).astype(np.int64)
        arr.length = rng.integers(0, 100, n).astype(np.int64)
        m.arrays[name] = arr
    m.arrays["empty"] = ArrayRefs(path="empty", zarray={"shape": [0], "chunks": [1]})
    return m


def test_compute_checksums_groups_sources_and_uses_known(tmp_path):
    n_files = 4
    datas = [_file(tmp_path, f"f{i}.bin", 500, 10 + i) for i in range(n_files)]
    m = _refmap(n_files)
    files = {i: p for i, (p, _) in enumerate(datas)}
    want = {
        p: np.array(
            [
                crc32c(datas[s][1][o : o + n])
                for s, o, n in zip(a.source, a.offset, a.length, strict=True)
            ],
            np.uint32,
        )
        for p, a in m.arrays.items()
    }
    plain = compute_checksums(m, files)
    for p in m.arrays:
        assert plain[p].tolist() == want[p].tolist()
    # a source not among files keeps zeros
    part = compute_checksums(m, {1: files[1]})
    for p, a in m.arrays.items():
        assert (part[p][a.source != 1] == 0).all()
        assert part[p][a.source == 1].tolist() == want[p][a.source == 1].tolist()
    # CRCs taken in the sha256 read are used; ranges it lacks are read from the file
    a = m.arrays["a"]
    sel = a.source == 0
    known = hash_and_checksum(files[0], a.offset[sel][:3], a.length[sel][:3])
    calls = []

    def lookup(src: int):
        calls.append(src)
        return known if src == 0 else None

    mixed = compute_checksums(m, files, lookup)
    assert sorted(calls) == list(range(n_files))
    for p in m.arrays:
        assert mixed[p].tolist() == want[p].tolist()


def test_crc_extend_equals_google_crc32c():
    data = np.random.default_rng(5).integers(0, 256, 5000, np.uint8)
    for a, b in ((0, 5000), (3, 4001), (7, 7), (4999, 5000)):
        assert crc_extend(0, data[a:b]) == crc32c(data[a:b].tobytes())
    assert crc_extend(crc_extend(0, data[:10]), data[10:100]) == crc32c(data[:100].tobytes())


def test_crc_ranges_of_a_file_gone_is_a_named_error(tmp_path) -> None:
    gone = tmp_path / "gone.h5"
    with pytest.raises(SourceChangedError, match="went away while its chunks were read"):
        crc_ranges(str(gone), np.array([0]), np.array([4]))
