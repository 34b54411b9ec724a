"""SourceHasher: the same digests however files are read (on threads, inline, unqueued)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from google_crc32c import value as crc32c

from hyperslab.convert.source_hash import SourceHasher
from hyperslab.errors import NotFoundError, SourceChangedError


def _files(tmp_path, sizes: list[int]) -> list[tuple[str, bytes]]:
    out = []
    for i, n in enumerate(sizes):
        data = np.random.default_rng(i).integers(0, 256, n, np.uint8).tobytes()
        p = tmp_path / f"f{i}.bin"
        p.write_bytes(data)
        out.append((str(p), data))
    return out


@pytest.mark.parametrize("inline_bytes", [0, 2000, 1 << 30])
def test_digests_equal_on_threads_or_inline(tmp_path, inline_bytes):
    files = _files(tmp_path, [1000, 2500, 0, 4000, 10])
    with SourceHasher(threads=2, inline_bytes=inline_bytes) as h:
        for p, data in files[:-1]:  # the last one is never queued
            h.submit(p, np.array([0, 0]), np.array([min(5, len(data)), 0]))
        h.submit(files[0][0])  # queued twice: read once, as first asked
        for k, (p, data) in enumerate(files):
            got = h.result(p)
            assert got.sums.sha256 == hashlib.sha256(data).hexdigest()
            assert got.size == got.sums.size == len(data)
            if k < len(files) - 1:
                n = min(5, len(data))
                found, crcs = got.sums.lookup(np.array([0, 0]), np.array([n, 0]))
                assert found.all()
                assert crcs.tolist() == [crc32c(data[:n]), crc32c(b"")]


def test_errors_are_named_and_per_file(tmp_path):
    (p, _), (q, _) = _files(tmp_path, [100, 100])
    with SourceHasher(threads=1, inline_bytes=0) as h:
        h.submit(str(tmp_path / "missing.bin"))
        h.submit(p, np.array([50]), np.array([51]))  # past the end
        h.submit(q)
        with pytest.raises(NotFoundError):
            h.result(str(tmp_path / "missing.bin"))
        with pytest.raises(SourceChangedError):
            h.result(p)
        assert h.result(q).size == 100


def test_an_hdf5_source_is_read_once_for_its_hash_and_chunk_checksums(tmp_path, monkeypatch):
    """The chunk index is walked first, so one read of each HDF5 file gives its sha256
    and every chunk's CRC-32C (chunks are never read again for their checksums), and
    the entries are the same as when the CRCs are taken in a second read."""
    from hyperslab.convert.ingest import ingest
    from hyperslab.references import checksums
    from hyperslab.references.repository import Repository
    from hyperslab.samples import write_samples

    write_samples(tmp_path / "s", frames=4)
    files = sorted(str(p) for p in (tmp_path / "s").glob("*.nxs"))
    repo_ref = Repository.init(str(tmp_path / "ref"))
    real = checksums.hash_and_checksum

    def hash_only(path, offsets=None, lengths=None, **kw):  # the CRCs come from a 2nd read
        return real(path, **kw)

    monkeypatch.setattr("hyperslab.convert.source_hash.hash_and_checksum", hash_only)
    expected = ingest(repo_ref, files).commit
    monkeypatch.undo()

    again: list[str] = []

    def second_read(path, offsets, lengths):
        again.append(Path(path).name)
        return real_crc_ranges(path, offsets, lengths)

    real_crc_ranges = checksums.crc_ranges
    monkeypatch.setattr(checksums, "crc_ranges", second_read)
    repo = Repository.init(str(tmp_path / "r"))
    got = ingest(repo, files).commit
    assert expected.snapshot is not None and got.snapshot is not None
    assert got.snapshot.tree == expected.snapshot.tree
    assert len(got.added) == len(files) == 3
    # a file reached through an external link is read once too
    assert again == []


def test_a_file_changed_between_its_walk_and_its_read_is_refused(tmp_path, monkeypatch):
    """The chunk index is walked before the file is read for its hashes: a writer that
    changes the file in between must not get offsets of the old file recorded with
    checksums of the new one."""
    import h5py

    import hyperslab.convert.ingest as ingest_mod
    from hyperslab.references.repository import Repository

    path = tmp_path / "scan.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("data", data=np.arange(4000, dtype="<i4"), chunks=(500,))
    real = ingest_mod.build_refmap

    def walk_then_write(source, **kw):
        res = real(source, **kw)
        with open(source, "ab") as fh:  # the writer appends after the walk
            fh.write(b"\0" * 4096)
        return res

    monkeypatch.setattr(ingest_mod, "build_refmap", walk_then_write)
    repo = Repository.init(str(tmp_path / "r"))
    with pytest.raises(SourceChangedError, match="changed while it was being ingested"):
        ingest_mod.ingest(repo, [str(path)])


def test_a_frame_changed_between_its_header_and_its_read_is_refused(tmp_path, monkeypatch):
    import hyperslab.convert.ingest as ingest_mod
    from hyperslab.references.repository import Repository
    from hyperslab.samples import write_frame_series

    write_frame_series(tmp_path, frames=3, shape=(16, 24))
    real = ingest_mod._Sources.chunks

    def parsed_then_rewritten(self, path, offsets, lengths):
        real(self, path, offsets, lengths)
        if path.endswith("00002.cbf"):
            with open(path, "ab") as fh:  # rewritten after its header was read
                fh.write(b"\0" * 64)

    monkeypatch.setattr(ingest_mod._Sources, "chunks", parsed_then_rewritten)
    repo = Repository.init(str(tmp_path / "r"))
    with pytest.raises(SourceChangedError, match=r"00002\.cbf changed"):
        ingest_mod.ingest(repo, [str(tmp_path / "pilatus_cbf")])


def test_a_file_gone_before_the_last_check_is_a_named_error(tmp_path, monkeypatch):
    import h5py

    import hyperslab.convert.ingest as ingest_mod
    from hyperslab.references.repository import Repository

    path = tmp_path / "scan.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("data", data=np.arange(100, dtype="<i4"), chunks=(50,))
    real = ingest_mod._Sources.checksums

    def then_deleted(self, refmap):
        sums = real(self, refmap)
        path.unlink()
        return sums

    monkeypatch.setattr(ingest_mod._Sources, "checksums", then_deleted)
    repo = Repository.init(str(tmp_path / "r"))
    with pytest.raises(SourceChangedError, match="went away while it was being ingested"):
        ingest_mod.ingest(repo, [str(path)])
