"""What a sync did, and the errors that stop one: for ``--json``, the CLI and jobs.

:class:`SyncReport` counts candidates, objects present and copied (per kind), bytes,
packs and locators written, hot chunks and failures; :class:`RefUpdate` says what
happens to each ref (create, fast-forward, ahead, diverged, forced).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from hyperslab.errors import ConflictError, HyperslabError

__all__ = [
    "DivergedError",
    "Progress",
    "RefUpdate",
    "RepositoryMismatchError",
    "SyncFailedError",
    "SyncReport",
    "describe_plan",
]


Progress = Callable[[str, int, int], None]  # (phase, objects done, bytes done)


class DivergedError(ConflictError):
    """The destination branch has commits the source does not have."""

    code = "diverged"


class RepositoryMismatchError(ConflictError):
    """Source and destination are different repositories (their repo ids differ)."""

    code = "repository_mismatch"


class SyncFailedError(HyperslabError):
    """Some objects could not be copied; no ref was moved."""

    code = "sync_failed"
    exit_status = 7


@dataclass
class RefUpdate:
    kind: str  # "branch" | "tag"
    name: str
    source: str  # snapshot id at the source
    destination: str | None  # at the destination before the sync
    status: str  # up-to-date | create | fast-forward | ahead | forced | diverged
    etag: str | None = None
    chain: list[str] = field(default_factory=list)  # new snapshots, newest first

    @property
    def moves(self) -> bool:
        """Whether the sync writes this ref at the destination."""
        return self.status in ("create", "fast-forward", "forced")

    def diverged(self, message: str) -> DivergedError:
        """The conflict error for this ref, naming both heads."""
        return DivergedError(
            message,
            kind=self.kind,
            name=self.name,
            source_head=self.source,
            destination_head=self.destination,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "name": self.name,
            "source": self.source,
            "destination": self.destination,
            "status": self.status,
            "new_snapshots": len(self.chain),
        }


@dataclass
class SyncReport:
    source: str
    destination: str
    refs: list[RefUpdate] = field(default_factory=list)
    dry_run: bool = False
    candidates: int = 0
    present: int = 0
    planned: dict[str, int] = field(default_factory=dict)  # kind → objects to copy
    planned_bytes: int | None = None  # dry runs: what the copy would move (None: unknown)
    copied: dict[str, int] = field(default_factory=dict)
    bytes_copied: int = 0
    hot_chunks: int = 0
    hot_bytes: int = 0
    hot_held: int = 0
    packs: int = 0  # object packs uploaded
    #: source files (--sources) the source site does not hold, so none to copy
    sources_absent: list[str] = field(default_factory=list)
    locators: int = 0  # leaf locators written
    failures: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.failures

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "source": self.source,
            "destination": self.destination,
            "dry_run": self.dry_run,
            "refs": [r.to_json() for r in self.refs],
            "candidates": self.candidates,
            "present": self.present,
            "planned": self.planned,
            "planned_bytes": self.planned_bytes,
            "copied": self.copied,
            "objects_copied": sum(self.copied.values()),
            "bytes_copied": self.bytes_copied,
            "packs": {"written": self.packs, "locators": self.locators},
            "sources_absent": self.sources_absent[:100],
            "hot": {
                "chunks": self.hot_chunks,
                "bytes": self.hot_bytes,
                "already_held": self.hot_held,
            },
            "failures": self.failures,
            "seconds": round(self.seconds, 3),
        }


def describe_plan(report: SyncReport) -> Iterable[str]:
    """Human lines for a plan (``--dry-run``)."""
    for u in report.refs:
        yield f"{u.kind} {u.name}: {u.status} ({(u.destination or 'absent')[:12]} → {u.source[:12]})"
    if report.planned:
        parts = ", ".join(f"{n} {k}" for k, n in sorted(report.planned.items()))
        size = "" if report.planned_bytes is None else f" ({report.planned_bytes:,} bytes)"
        yield f"to copy: {parts}{size}; {report.present} already there"
    else:
        yield "nothing to copy"
