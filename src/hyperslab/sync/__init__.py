"""Replication of snapshots, reference maps, hot chunks and sources between sites.

* :func:`sync` (``hyperslab sync``): one source repository to one destination,
  verified, resumable, never deleting, refs moved last by compare-and-swap.
* :mod:`.hot`: which chunks to make local (rules files and access statistics).
* :mod:`.replicate` (``hyperslab replicate``): declarative jobs over many
  repositories and sites, for cron/systemd.
"""

from hyperslab.sync.engine import (
    DivergedError,
    RefUpdate,
    RepositoryMismatchError,
    SyncFailedError,
    SyncReport,
    sync,
)
from hyperslab.sync.hot import HotRules

__all__ = [
    "DivergedError",
    "HotRules",
    "RefUpdate",
    "RepositoryMismatchError",
    "SyncFailedError",
    "SyncReport",
    "sync",
]
