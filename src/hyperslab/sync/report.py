"""What a sync did, and the errors that stop one: for ``--json``, the CLI and jobs.

:class:`SyncReport` counts candidates, objects present, hot chunks and failures; what
the sync would copy and what it copied are two :class:`Tally` objects counted the same
way, which the plan line, the result line and ``--json`` all read, and its
:meth:`~SyncReport.notes` (requested work that was not done, and why) are the same in
text and JSON. :class:`RefUpdate` says what happens to each ref (create, fast-forward,
ahead, diverged, forced).
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
    "Tally",
    "describe_plan",
    "describe_result",
]


Progress = Callable[[str, int, int], None]  # (phase, objects done, bytes done)

#: kinds of what a hot-chunk selection writes: chunk packs (``chunks/``) and, one per
#: pack, the replica index that says which chunks it holds (``replicas/``)
CHUNK_PACK, REPLICA_INDEX = "chunk_pack", "replica_index"


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
class Tally:
    """What one side of a sync moves: the plan's (what the destination lacks) or the
    copy's (what landed there). Both are counted the same way, and the text lines and
    ``--json`` are read off them, so the plan, the result and the JSON cannot disagree.

    ``objects``: kind → objects. Entry records, refmaps and checksums count one each
    whether stored loose or inside an object pack (``packed`` of them inside ``packs``
    object packs, ``packs/``); ``chunk_pack``: hot-chunk packs (``chunks/``), holding
    ``hot_chunks`` chunks; ``replica_index``: their indexes (``replicas/``).
    ``bytes``: bytes written (None: not known, e.g. a plan that was not sized).
    """

    objects: dict[str, int] = field(default_factory=dict)
    packs: int = 0
    packed: int = 0
    hot_chunks: int = 0
    bytes: int | None = 0

    def add(self, kind: str, n: int = 1) -> None:
        self.objects[kind] = self.objects.get(kind, 0) + n

    @property
    def total(self) -> int:
        """Objects, entry records, refmaps and checksums counted one each (packed or not)."""
        return sum(self.objects.values())

    def to_json(self) -> dict[str, Any]:
        return {
            "objects": dict(sorted(self.objects.items())),
            "object_packs": self.packs,
            "packed_objects": self.packed,
            "chunk_packs": self.objects.get(CHUNK_PACK, 0),
            "hot_chunks": self.hot_chunks,
            "replica_indexes": self.objects.get(REPLICA_INDEX, 0),
            "bytes": self.bytes,
        }

    def describe(self) -> str:
        """One line of text: ``1 catalog, 4 entry, … (12 of them in 1 object pack);
        16 hot chunks in 4 chunk packs, with 4 replica indexes``."""
        plain = {k: n for k, n in self.objects.items() if k not in (CHUNK_PACK, REPLICA_INDEX)}
        parts = []
        if plain:
            text = ", ".join(f"{n} {k}" for k, n in sorted(plain.items()))
            if self.packed:
                text += f" ({self.packed} of them in {_n(self.packs, 'object pack')})"
            parts.append(text)
        packs, indexes = self.objects.get(CHUNK_PACK, 0), self.objects.get(REPLICA_INDEX, 0)
        if packs or indexes or self.hot_chunks:
            parts.append(
                f"{_n(self.hot_chunks, 'hot chunk')} in {_n(packs, 'chunk pack')}, "
                f"with {_n(indexes, 'replica index', 'replica indexes')}"
            )
        return "; ".join(parts) or "nothing"


def _n(n: int, one: str, many: str | None = None) -> str:
    return f"{n} {one if n == 1 else many or one + 's'}"


@dataclass
class SyncReport:
    source: str
    destination: str
    refs: list[RefUpdate] = field(default_factory=list)
    dry_run: bool = False
    candidates: int = 0
    present: int = 0
    #: what the destination lacks and the sync copies (bytes: sized in dry runs only)
    plan: Tally = field(default_factory=lambda: Tally(bytes=None))
    #: what the copy wrote (the same counts as ``plan`` once a sync succeeded)
    result: Tally = field(default_factory=Tally)
    hot_chunks: int = 0  # selected by the rules (held already or not)
    hot_bytes: int = 0
    hot_held: int = 0
    #: source files (--sources) the source site does not hold, so none to copy
    sources_absent: list[str] = field(default_factory=list)
    #: the other sites looked at for them (the same path at every other configured site)
    sources_sites_checked: list[str] = field(default_factory=list)
    #: source key → the checked sites that hold it
    sources_held: dict[str, list[str]] = field(default_factory=dict)
    locators: int = 0  # leaf locators written
    failures: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.failures

    # the counts under their earlier names (read off the tallies)
    @property
    def planned(self) -> dict[str, int]:
        return self.plan.objects

    @property
    def planned_bytes(self) -> int | None:
        return self.plan.bytes

    @property
    def copied(self) -> dict[str, int]:
        return self.result.objects

    @property
    def bytes_copied(self) -> int:
        return self.result.bytes or 0

    @property
    def packs(self) -> int:
        """Object packs uploaded."""
        return self.result.packs

    def notes(self) -> list[dict[str, Any]]:
        """Work that was asked for and not done, and why, from what the sync found
        (``code``, ``message`` and details); the CLI's text and ``--json`` both print
        these. A report with notes is ``ok`` (nothing failed) but not complete."""
        if not self.sources_absent:
            return []
        n = len(self.sources_absent)
        by_site: dict[str, int] = {}
        nowhere = 0
        for key in self.sources_absent:
            held = self.sources_held.get(key) or []
            if not held:
                nowhere += 1
            for site in held:
                by_site[site] = by_site.get(site, 0) + 1
        where = [f"site {s} holds {c if c < n else 'them'}" for s, c in by_site.items()]
        which = "them" if nowhere == n else f"{nowhere} of them"
        if nowhere and self.sources_sites_checked:
            checked = ", ".join(self.sources_sites_checked)
            where.append(f"no other configured site holds {which} (checked: {checked})")
        elif nowhere:
            where.append(f"no other configured site has this repository's path to look for {which}")
        message = (
            f"{n} source file(s) not copied: {self.source} does not hold them; "
            f"{'; '.join(where)} (first: {self.sources_absent[0]})"
        )
        return [
            {
                "code": "sources_not_copied",
                "message": message,
                "count": n,
                "absent_at": self.source,
                "held_at": by_site,
                "held_nowhere_checked": nowhere,
                "sites_checked": self.sources_sites_checked,
                "keys": self.sources_absent[:100],
            }
        ]

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "source": self.source,
            "destination": self.destination,
            "dry_run": self.dry_run,
            "refs": [r.to_json() for r in self.refs],
            "candidates": self.candidates,
            "present": self.present,
            "plan": self.plan.to_json(),
            "result": None if self.dry_run else self.result.to_json(),
            "notes": self.notes(),
            # the same numbers under their earlier names
            "planned": self.planned,
            "planned_bytes": self.planned_bytes,
            "copied": self.copied,
            "objects_copied": self.result.total,
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
    if report.plan.objects:
        size = "" if report.plan.bytes is None else f"; {report.plan.bytes:,} bytes"
        yield f"to copy: {report.plan.describe()}{size}; {report.present} already there"
    else:
        yield "nothing to copy"


def describe_result(report: SyncReport) -> Iterable[str]:
    """Human lines for what a sync did: its notes, then the same counts as the plan."""
    for note in report.notes():
        yield f"note: {note['message']}"
    r = report.result
    hot = (
        f"; hot chunks: {report.hot_chunks} selected, {report.hot_held} already held"
        if report.hot_chunks
        else ""
    )
    locators = f", {_n(report.locators, 'locator')}" if report.locators else ""
    what = r.describe() if r.objects else "nothing"
    yield f"copied: {what}{locators}; {r.bytes or 0:,} bytes in {report.seconds:.2f} s{hot}"
