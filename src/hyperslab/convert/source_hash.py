"""Hashing ingest's source files on a few threads, while the main thread parses headers.

Ingest names every source by its sha256 and records the CRC-32C of every chunk it
references (:mod:`hyperslab.references.checksums`). Both read every byte; hashlib
releases the GIL, so a :class:`SourceHasher` reads files on a small thread pool
while the caller goes on parsing. Where a file's chunk ranges are known before its
name is needed (detector frames: each header gives them), :meth:`SourceHasher.submit`
takes them and the sha256 and the chunk CRCs come from ONE read of the file; else
the sha256 is taken alone and the CRCs later (:func:`compute_checksums`).

Small files are handed to the threads in batches of about 1 MiB (one hand-over per
file would cost as much as hashing it). Memory stays bounded: a thread holds one read
buffer (8 MiB at most, reused), and a finished job only its digests.
"""

from __future__ import annotations

import os
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from types import TracebackType

import numpy as np

from hyperslab.errors import AccessDeniedError, HyperslabError, NotFoundError
from hyperslab.references.checksums import FileChecksums, hash_and_checksum

__all__ = ["BATCH_BYTES", "HASH_THREADS", "HashedFile", "SourceHasher"]

#: threads hashing at once (each holds one read buffer)
HASH_THREADS = max(1, min(4, os.cpu_count() or 1))
#: bytes of small files handed to a thread at once
BATCH_BYTES = 1 << 20


@dataclass(frozen=True)
class HashedFile:
    """A source file as read: its size and mtime (ns) before the read, its digests."""

    size: int
    mtime_ns: int
    sums: FileChecksums


def _read(path: str, offsets: np.ndarray | None, lengths: np.ndarray | None) -> HashedFile:
    try:
        st = os.stat(path)
        sums = hash_and_checksum(path, offsets, lengths)
    except FileNotFoundError:
        raise NotFoundError(f"{path} does not exist", path=path) from None
    except OSError as exc:
        raise AccessDeniedError(f"cannot read {path}: {exc.strerror}", path=path) from exc
    return HashedFile(st.st_size, st.st_mtime_ns, sums)


_Job = tuple[str, np.ndarray | None, np.ndarray | None]


def _read_batch(batch: list[_Job]) -> dict[str, HashedFile | HyperslabError]:
    out: dict[str, HashedFile | HyperslabError] = {}
    for path, offsets, lengths in batch:
        try:
            out[path] = _read(path, offsets, lengths)
        except HyperslabError as exc:
            out[path] = exc
    return out


class SourceHasher:
    """Reads local files on ``threads`` threads: :meth:`submit` queues one (once per
    path), :meth:`result` waits for it (reading it here if nobody queued it). Small
    files go to the threads in batches of about ``batch_bytes`` (a hand-over costs
    about as much as hashing 100 kB); a batch not yet full when one of its files is
    wanted is read in the calling thread. Use it as a context manager: leaving
    cancels what has not started."""

    def __init__(self, threads: int = HASH_THREADS, batch_bytes: int = BATCH_BYTES) -> None:
        self.threads = threads
        self.batch_bytes = batch_bytes
        self._pool: ThreadPoolExecutor | None = None
        self._jobs: dict[str, Future[dict[str, HashedFile | HyperslabError]]] = {}
        self._batch: dict[str, _Job] = {}
        self._batch_size = 0

    def submit(
        self, path: str, offsets: np.ndarray | None = None, lengths: np.ndarray | None = None
    ) -> None:
        """Queue reading ``path`` (absolute) unless already queued; ``offsets`` and
        ``lengths``: byte ranges whose CRC-32C to take in the same read."""
        if path in self._jobs or path in self._batch:
            return
        try:
            size = os.stat(path).st_size
        except OSError:
            size = 0  # its named error comes from the read
        self._batch[path] = (path, offsets, lengths)
        self._batch_size += size
        if self._batch_size >= self.batch_bytes:
            self._flush()

    def _flush(self) -> None:
        if not self._batch:
            return
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="hyperslab-hash")
        fut = self._pool.submit(_read_batch, list(self._batch.values()))
        for p in self._batch:
            self._jobs[p] = fut
        self._batch, self._batch_size = {}, 0

    def result(self, path: str) -> HashedFile:
        """The read of ``path``, waiting for it; its named error if it failed."""
        if path in self._jobs:
            got = self._jobs.pop(path).result()[path]
        elif path in self._batch:
            job = self._batch.pop(path)
            got = _read_batch([job])[path]
        else:
            got = _read_batch([(path, None, None)])[path]
        if isinstance(got, HyperslabError):
            raise got
        return got

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        self._jobs.clear()
        self._batch, self._batch_size = {}, 0

    def __enter__(self) -> SourceHasher:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
