"""Replication of snapshots, reference maps, hot chunks and sources between sites.

* :func:`sync` (``hyperslab sync``): one source repository to one destination,
  verified, resumable, never deleting, refs moved last by compare-and-swap.
* :mod:`.engine`: the protocol, step by step; :mod:`.refs` plans and moves refs,
  :mod:`.plan` walks the new snapshots, :mod:`.presence` asks the destination what it
  lacks, :mod:`.transfer` copies (verified), :mod:`.packing` packs entry objects,
  :mod:`.report` says what happened.
* :mod:`.hot_rules`: which chunks to make local (rules files and access statistics);
  :mod:`.hot_copy`: the chunk packs a destination lacks, built and copied.
* :mod:`.replicate` (``hyperslab replicate``): declarative jobs over many
  repositories and sites, for cron/systemd.
"""

from hyperslab.sync.engine import sync
from hyperslab.sync.hot_rules import HotRules
from hyperslab.sync.report import (
    DivergedError,
    RefUpdate,
    RepositoryMismatchError,
    SyncFailedError,
    SyncReport,
)

__all__ = [
    "DivergedError",
    "HotRules",
    "RefUpdate",
    "RepositoryMismatchError",
    "SyncFailedError",
    "SyncReport",
    "sync",
]
