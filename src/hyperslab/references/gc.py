"""``gc``: delete what no branch or tag reaches, once it is older than a grace period.

Objects younger than the grace period survive: they may belong to a commit or a
sync in flight, which writes bottom-up and moves its ref last. Every deletion is
decided afresh (each candidate's age is re-read just before it is deleted), and gc
never deletes anything a reachable locator or replica index names.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from hyperslab.errors import BadInputError, NotFoundError
from hyperslab.references.keys import (
    CATALOG_PREFIX,
    CHUNK_PREFIX,
    JOB_PREFIX,
    LOCATOR_PREFIX,
    PACK_PREFIX,
    REPLICA_PREFIX,
    SOURCE_PREFIX,
    is_object_id,
    kind_dir,
)
from hyperslab.references.reachability import Progress, walk
from hyperslab.references.repository import REFRESH_AGE, Repository

__all__ = ["MIN_GRACE", "GcReport", "gc", "parse_duration"]


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$", re.I)
_UNITS = {"": 86400, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
#: gc refuses shorter grace periods unless forced: an ingest in flight must finish
#: within the grace period, and reused old objects are refreshed after REFRESH_AGE
MIN_GRACE = REFRESH_AGE * 2


def parse_duration(text: str) -> timedelta:
    """``30d``, ``12h``, ``90m``, ``3600s``, ``2w`` (a bare number means days)."""
    m = _DURATION.match(text or "")
    if not m:
        raise BadInputError(f"bad duration {text!r}: use e.g. 7d, 12h, 90m, 2w")
    return timedelta(seconds=float(m.group(1)) * _UNITS[m.group(2).lower()])


@dataclass
class GcReport:
    """What gc deleted (or, with ``dry_run``, would delete) and what it kept."""

    deleted: list[str] = field(default_factory=list)
    kept_young: int = 0
    reachable: int = 0
    bytes_freed: int = 0
    dry_run: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "deleted": len(self.deleted),
            "deleted_keys": self.deleted[:1000],
            "bytes_freed": self.bytes_freed,
            "kept_young": self.kept_young,
            "reachable": self.reachable,
        }


_GC_PREFIXES = (
    kind_dir("snapshot") + "/",
    kind_dir("manifest") + "/",
    CATALOG_PREFIX,
    kind_dir("entry") + "/",
    kind_dir("refmap") + "/",
    kind_dir("checksums") + "/",
    LOCATOR_PREFIX,  # before packs/: a locator goes before the packs it names
    PACK_PREFIX,
    SOURCE_PREFIX,
    REPLICA_PREFIX,  # before chunks/: an index goes before the pack it names
    CHUNK_PREFIX,
    JOB_PREFIX,  # records of jobs killed and never resumed (compress)
)


def gc(
    repo: Repository,
    *,
    older_than: timedelta,
    dry_run: bool = False,
    force: bool = False,
    now: datetime | None = None,
    progress: Progress | None = None,
) -> GcReport:
    """Delete objects that no branch or tag reaches and that are older than ``older_than``.

    Objects younger than the grace period survive (they may belong to a commit in
    flight). Each candidate's age is re-read just before it is deleted.
    """
    if older_than < MIN_GRACE and not force:
        raise BadInputError(
            f"a grace period under {MIN_GRACE} could delete objects of an ingest in flight; "
            "pass --force if no one is writing to this repository"
        )
    repo.check_writable()
    report = GcReport(dry_run=dry_run)
    reachable = walk(repo, None, progress).keys()
    report.reachable = len(reachable)
    cutoff = (now or datetime.now(UTC)) - older_than
    for prefix in _GC_PREFIXES:
        for key in repo.site.list(prefix):
            if key in reachable:
                continue
            name = key.rsplit("/", 1)[-1]
            if prefix not in (SOURCE_PREFIX, JOB_PREFIX) and not is_object_id(
                name.split(".", 1)[0]
            ):
                continue  # not ours
            try:
                info = repo.site.head(key)
            except NotFoundError:
                continue
            if info.mtime > cutoff:
                report.kept_young += 1
                continue
            report.deleted.append(key)
            report.bytes_freed += info.size
            if not dry_run:
                repo.site.delete(key)
            if progress:
                progress("deleted", 1)
    return report
