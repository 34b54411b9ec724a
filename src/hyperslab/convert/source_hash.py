"""Hashing ingest's source files on a few threads, while the main thread parses headers.

Ingest names every source by its sha256 and records the CRC-32C of every chunk it
references (:mod:`hyperslab.references.checksums`). Both read every byte; hashlib
releases the GIL, so a :class:`SourceHasher` reads files on a small thread pool
while the caller goes on parsing. Where a file's chunk ranges are known before its
name is needed (detector frames: each header gives them), :meth:`SourceHasher.submit`
takes them and the sha256 and the chunk CRCs come from ONE read of the file; else
the sha256 is taken alone and the CRCs later (:func:`compute_checksums`).

Memory stays bounded: a thread holds one read buffer (8 MiB at most, reused), and a
finished job only its digests.
"""

from __future__ import annotations

import os
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from types import TracebackType

import numpy as np

from hyperslab.errors import AccessDeniedError, NotFoundError
from hyperslab.references.checksums import FileChecksums, hash_and_checksum

__all__ = ["HASH_THREADS", "HashedFile", "SourceHasher"]

#: threads hashing at once (each holds one read buffer)
HASH_THREADS = max(1, min(4, os.cpu_count() or 1))


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


class SourceHasher:
    """Reads local files on ``threads`` threads: :meth:`submit` starts one (once per
    path), :meth:`result` waits for it (starting it if nobody did). Use it as a
    context manager: leaving cancels what has not started."""

    def __init__(self, threads: int = HASH_THREADS) -> None:
        self.threads = threads
        self._pool: ThreadPoolExecutor | None = None
        self._jobs: dict[str, Future[HashedFile]] = {}

    def submit(
        self, path: str, offsets: np.ndarray | None = None, lengths: np.ndarray | None = None
    ) -> None:
        """Start reading ``path`` (absolute) unless already started; ``offsets`` and
        ``lengths``: byte ranges whose CRC-32C to take in the same read."""
        if path in self._jobs:
            return
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="hyperslab-hash")
        self._jobs[path] = self._pool.submit(_read, path, offsets, lengths)

    def result(self, path: str) -> HashedFile:
        """The read of ``path``, waiting for it; its named error if it failed."""
        self.submit(path)
        return self._jobs.pop(path).result()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        self._jobs.clear()

    def __enter__(self) -> SourceHasher:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
