"""``hyperslab sync``: make a destination repository hold what the source's refs reach.

The protocol, in the order it runs:

1. **Refs.** Read the selected branches (and tags) at both sites. Equal heads need
   nothing more, so a sync of an unchanged repository costs a constant handful of
   requests whatever its size. A destination head the source's history does not
   contain is a conflict (both heads named; nothing is written) unless ``force``; a
   destination that is *ahead* is left alone (sync never moves a branch backwards).
2. **Plan.** Walk the source snapshots from each new head back to the destination's
   head, and diff each snapshot's entry tree against its parent's: identical subtrees
   have identical ids, so only what changed is read (a Merkle diff, linear in the
   change). Every object found is a candidate; the destination is asked which it
   lacks (HEAD per object, or one listing per prefix when the destination has
   nothing of this ref yet). ``dry_run`` stops here.
3. **Copy**, bottom-up, with bounded concurrency: sources, refmaps, checksums and
   hot-chunk packs, then replica indexes, then entries, catalogs, tree nodes and
   snapshots. Every object read from the source is checked against its name (sha256)
   before it is sent, and every upload is verified at the destination (S3: Content-MD5
   and the ETag; files: read back). An object that fails is reported and the refs
   are not moved.
4. **Move refs** last, by compare-and-swap: a branch only fast-forwards; a tag is
   only created. Two syncs racing to one destination both end consistent: the loser
   of the CAS re-reads the head and is done if it is already there or ahead.

Nothing is ever deleted at the destination. A sync killed anywhere leaves only
unreachable objects, and re-running it copies only what is still missing.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence, Set
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from fnmatch import fnmatchcase
from itertools import islice
from pathlib import Path
from typing import Any

from google_crc32c import value as crc32c

from hyperslab.errors import (
    BadInputError,
    ConflictError,
    CorruptError,
    HyperslabError,
    NotFoundError,
)
from hyperslab.references.format import canonical_json, object_id
from hyperslab.references.keys import (
    HOT_MARKER_PREFIX,
    KIND_OF_DIR,
    REPO_KEY,
    catalog_key,
    locator_key,
    object_key,
    object_pack_key,
    source_key,
    split_object_key,
)
from hyperslab.references.keys import REFMAP_EXTENSIONS as EXTENSIONS
from hyperslab.references.object_packs import PACK_OBJECT_MAX, Locator, Packer, PackSlot
from hyperslab.references.repository import REFRESH_AGE, Repository
from hyperslab.storage import Site
from hyperslab.sync.hot import HotChunk, HotRules, select_hot

__all__ = [
    "DivergedError",
    "RefUpdate",
    "RepositoryMismatchError",
    "SyncFailedError",
    "SyncReport",
    "sync",
]

log = logging.getLogger(__name__)

Progress = Callable[[str, int, int], None]  # (phase, objects done, bytes done)

#: at least this many candidates under one prefix, at a destination that has nothing
#: of the synced refs yet (a resumed first sync): one listing of the prefix (1,000 keys
#: per request) instead of a HEAD per object
LIST_THRESHOLD = 50
#: source files up to this size are copied in memory (one GET, one verified PUT)
#: rather than streamed through a temporary file
SMALL_SOURCE = 64 << 20


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


# --------------------------------------------------------------------------- report


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
class _Obj:
    key: str
    kind: str
    phase: int  # copy order: 0 data (and hot-chunk packs with their indexes), 2 metadata
    data: bytes | None = None
    size: int | None = None
    sha256: str | None = None  # what the bytes must hash to (sources)
    #: builds what to store instead of copying ``key``: ``[(key, bytes), ...]`` in order
    make: Callable[[], list[tuple[str, bytes]]] | None = None
    #: packed at the destination: the pack builder of its leaf, and its place in it
    packer: Packer | None = None
    index: int = 0


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


# --------------------------------------------------------------------------- limits


class RateLimiter:
    """Token bucket over bytes, shared by the copy threads (``--bwlimit``)."""

    def __init__(self, rate: int | None) -> None:
        self.rate = rate
        self._lock = threading.Lock()
        self._next = time.monotonic()

    def take(self, n: int) -> None:
        if not self.rate:
            return
        with self._lock:
            now = time.monotonic()
            start = max(now, self._next)
            self._next = start + n / self.rate
            wait = start - now
        if wait > 0:
            time.sleep(wait)


# --------------------------------------------------------------------------- sync


def sync(
    src: str | Site | Repository,
    dst: str | Site | Repository,
    *,
    branches: Sequence[str] | None = None,
    all_branches: bool = False,
    tags: bool | Sequence[str] = False,
    hot: HotRules | None = None,
    stats: Any = None,
    sources: bool = False,
    dry_run: bool = False,
    force: bool = False,
    pack: bool = True,
    jobs: int = 16,
    bwlimit: int | None = None,
    progress: Progress | None = None,
    config: Any = None,
) -> SyncReport:
    """Copy what ``dst`` lacks of the selected refs of ``src``, verified; then move refs.

    ``branches``: names to sync (default ``["main"]``); ``all_branches``: every source
    branch; ``tags``: every source tag too (True) or the named ones. ``hot``: hot-chunk
    rules (with ``stats``, an :class:`~hyperslab.reading.access_stats.AccessStats`, for
    ``[[used]]`` rules).
    ``sources``: copy the raw source files as well. ``pack``: store the entry records,
    refmaps and checksums the destination lacks in one pack per entry-tree leaf
    (:mod:`~hyperslab.references.object_packs`) rather than one object each. ``force``: move a diverged
    destination branch to the source's head (the destination's own commits become
    unreachable there; nothing is deleted). Raises :class:`DivergedError` (nothing
    written), :class:`SyncFailedError` (some objects failed, refs not moved) or the
    site's error when a site is unreachable.
    """
    t0 = time.perf_counter()
    if jobs < 1:
        raise BadInputError(f"jobs must be at least 1, got {jobs}")
    src = src if isinstance(src, Repository) else Repository.open(src, config=config)
    dst = open_destination(dst, config)
    if src.site.url == dst.site.url:
        raise BadInputError(f"source and destination are the same place ({src.display})")
    report = SyncReport(src.display, dst.display, dry_run=dry_run)
    fresh_dst = _check_repositories(src, dst)
    report.refs = _plan_refs(src, dst, branches, all_branches, tags, fresh_dst)
    diverged = [u for u in report.refs if u.status == "diverged"]
    tags_differ = [u for u in diverged if u.kind == "tag"]
    if tags_differ:  # refused before anything is copied, --force or not
        u = tags_differ[0]
        raise u.diverged(
            f"tag {u.name!r} at {dst.display} names {(u.destination or '')[:12]}…, the "
            f"source's names {u.source[:12]}…; tags never move, not even with --force, "
            "so nothing was copied. Delete one of them, or leave the tag out (--tags NAME…)"
        )
    if diverged and not force:
        u = diverged[0]
        raise u.diverged(
            f"{u.kind} {u.name!r} has diverged: the destination is at {(u.destination or '')[:12]}… "
            f"({dst.display}), which the source's history ({u.source[:12]}… at "
            f"{src.display}) does not contain; nothing was copied. Reconcile the two, or "
            "pass --force to move the destination to the source's head"
        )
    for u in diverged:
        u.status = "forced"
    walker = _Walker(src, sources)
    for u in report.refs:
        if u.moves:
            walker.add_chain(u.chain)
    objs = walker.objects()
    hot_objs, marker = _plan_hot(src, dst, report, hot, stats) if hot else ([], None)
    all_objs = objs + hot_objs
    report.candidates = len(all_objs)
    if fresh_dst:
        # no repo.json there: not even a killed sync of ours wrote anything (it writes
        # repo.json first), so everything is missing and asking would only cost requests
        missing = list(all_objs)
    else:
        fresh = all(u.destination is None for u in report.refs)
        _read_locators(dst, walker.leaves, jobs)
        missing = _missing(dst, all_objs, fresh, jobs)
    report.present = len(all_objs) - len(missing)
    for o in missing:
        report.planned[o.kind] = report.planned.get(o.kind, 0) + 1
    if dry_run:
        report.planned_bytes = _planned_bytes(src, missing, jobs)
        report.seconds = time.perf_counter() - t0
        return report
    if fresh_dst:
        _create_repository(src, dst)
    if any(u.moves for u in report.refs) or missing or marker:
        dst.check_writable()
    packing = _Packing(walker, dst, fresh_dst, pack, missing, jobs)
    _copy(src, dst, missing, report, jobs, RateLimiter(bwlimit), progress, packing)
    if report.failures:
        report.seconds = time.perf_counter() - t0
        first = report.failures[0]
        raise SyncFailedError(
            f"{len(report.failures)} object(s) could not be copied, so no ref was moved "
            f"(first: {first['key']}: {first['error']}); re-run sync to finish",
            failures=report.failures[:100],
        )
    for u in report.refs:
        if u.moves:
            _move_ref(src, dst, u)
    if marker is not None:
        dst.site.put(marker[0], marker[1])
    report.seconds = time.perf_counter() - t0
    return report


# --------------------------------------------------------------------------- refs


def _check_repositories(src: Repository, dst: Repository) -> bool:
    """True if ``dst`` has no repository yet (sync creates it); error if it is another."""
    if not dst.info:
        return True
    if dst.id != src.id:
        raise RepositoryMismatchError(
            f"{dst.display} is a different repository (id {dst.id}) from {src.display} "
            f"(id {src.id}); sync copies between replicas of one repository: sync into an "
            "empty location instead",
            source_id=src.id,
            destination_id=dst.id,
        )
    return False


def _create_repository(src: Repository, dst: Repository) -> None:
    """The destination becomes a replica: the same ``repo.json`` (id, format, writers)."""
    try:
        dst.site.put_if_absent(REPO_KEY, src.site.get(REPO_KEY))
    except ConflictError:
        info = Repository.open(dst.site).info  # another sync created it meanwhile
        if info.get("id") != src.id:
            raise RepositoryMismatchError(
                f"{dst.display} became a different repository during the sync"
            ) from None
    dst.info = dict(src.info)
    dst.id = src.id
    dst.single_writer = src.single_writer


def open_destination(spec: str | Site | Repository, config: Any = None) -> Repository:
    """The destination repository, or an empty one there (``info`` empty) for sync to create."""
    if isinstance(spec, Repository):
        return spec
    return Repository.open(spec, config=config, missing_ok=True)


def _plan_refs(
    src: Repository,
    dst: Repository,
    branches: Sequence[str] | None,
    all_branches: bool,
    tags: bool | Sequence[str],
    fresh_dst: bool,
) -> list[RefUpdate]:
    wanted: list[tuple[str, str, str]] = []  # kind, name, source head
    if all_branches:
        wanted += [("branch", n, sid) for n, sid in src.branches().items()]
    else:
        for name in branches if branches is not None else ["main"]:
            wanted.append(("branch", name, src.branch_head(name)[0]))
    if tags is True:
        wanted += [("tag", n, sid) for n, sid in src.tags().items()]
    elif tags:
        have = src.tags()
        for name in tags:
            if name not in have:
                raise NotFoundError(
                    f"no tag {name!r} in {src.display} (tags: {', '.join(have) or 'none'})",
                    tag=name,
                )
            wanted.append(("tag", name, have[name]))
    updates: list[RefUpdate] = []
    known_at_dst: set[str] = set()
    for kind, name, sid in wanted:
        head, etag = (None, None) if fresh_dst else dst.refs.head(kind, name)
        u = RefUpdate(kind, name, sid, head, "up-to-date", etag)
        if head is not None:
            known_at_dst.add(head)
        updates.append(u)
    others: set[str] | None = None
    for u in updates:
        if u.destination == u.source:
            continue
        if u.destination is None:
            if others is None and not fresh_dst:
                # a new ref usually shares history with refs the destination has
                others = set(dst.branches().values()) | set(dst.tags().values())
            u.chain = list(_history(src, u.source, known_at_dst | (others or set())))
            u.status = "create"
            continue
        if u.kind == "tag":
            u.status = "diverged"  # tags never move
            u.chain = list(_history(src, u.source, known_at_dst))
            continue
        chain = list(_history(src, u.source, known_at_dst | {u.destination}))
        if _reaches(src, chain, u.destination):
            u.chain = chain
            u.status = "fast-forward"
        elif _is_ancestor(dst, u.source, u.destination):
            u.status = "ahead"
        else:
            u.chain = chain
            u.status = "diverged"
    return updates


def _history(
    repo: Repository, head: str, stop: Set[str] = frozenset(), *, missing_ok: bool = False
) -> Iterator[str]:
    """Snapshot ids from ``head`` back through parents, breadth first, each once; ids in
    ``stop`` are neither yielded nor walked past. ``missing_ok``: a snapshot that cannot
    be found ends that line of history instead of raising."""
    seen: set[str] = set()
    todo = deque([head])
    while todo:
        sid = todo.popleft()
        if sid in seen or sid in stop:
            continue
        seen.add(sid)
        yield sid
        try:
            todo.extend(repo.snapshot(sid).parents)
        except NotFoundError:
            if not missing_ok:
                raise


def _reaches(repo: Repository, chain: list[str], target: str) -> bool:
    """Whether a snapshot of ``chain`` has ``target`` as a parent (snapshots are cached)."""
    return any(target in repo.snapshot(sid).parents for sid in chain)


def _is_ancestor(repo: Repository, ancestor: str, head: str, limit: int = 100_000) -> bool:
    walk = islice(_history(repo, head, missing_ok=True), limit)
    return any(sid == ancestor for sid in walk)


def _move_ref(src: Repository, dst: Repository, u: RefUpdate) -> None:
    """Move ``u`` at the destination: a tag is created (it never moves); a branch is
    compare-and-swapped forward, re-read and judged again when someone else moved it."""
    if u.kind == "tag":
        now = dst.refs.create_tag(u.name, src.refs.tag_object(u.name))  # message, author too
        if now is not None and now != u.source:
            raise DivergedError(
                f"tag {u.name!r} at {dst.display} names {now[:12]}…, the source's "
                f"{u.source[:12]}…; tags never move",
                name=u.name,
                source_head=u.source,
                destination_head=now,
            )
        return
    etag = u.etag
    for attempt in range(1, 21):
        move = dst.refs.move_branch(u.name, u.source, etag, attempt=attempt)
        if move.moved:
            return
        now, etag = move.head, move.etag
        if now is not None and _is_ancestor(dst, u.source, now):
            u.status = "ahead"
            return  # another sync got there first and the destination moved on
        if now is not None and not _is_ancestor(src, now, u.source):
            raise DivergedError(
                f"branch {u.name!r} at {dst.display} moved to {now[:12]}… during the sync, "
                f"which the source's history does not contain; the copied objects stay, the "
                "branch was not moved",
                name=u.name,
                source_head=u.source,
                destination_head=now,
            )
    raise ConflictError(f"branch {u.name!r} at {dst.display} kept changing; re-run sync")


# --------------------------------------------------------------------------- walk


class _Walker:
    """The objects new snapshots need, found by diffing each tree against its parent's."""

    def __init__(self, src: Repository, sources: bool) -> None:
        self.src = src
        self.sources = sources
        self.found: dict[str, _Obj] = {}
        self.done_snapshots: set[str] = set()
        self.seen_nodes: set[str] = set()
        self.seen_entries: set[str] = set()
        #: every new leaf, in walk order: (the leaf it was diffed against, its entry ids)
        self.leaves: dict[str, tuple[str | None, list[str]]] = {}
        #: packable object key → the new leaf whose pack holds it (the first to need it)
        self.owner: dict[str, str] = {}
        #: packable object keys of each entry the walk found new
        self.entry_keys: dict[str, list[str]] = {}

    def objects(self) -> list[_Obj]:
        return list(self.found.values())

    def _add(self, obj: _Obj) -> None:
        self.found.setdefault(obj.key, obj)

    def _add_packable(self, obj: _Obj, eid: str, leaf: str) -> None:
        self._add(obj)
        self.owner.setdefault(obj.key, leaf)
        self.entry_keys.setdefault(eid, []).append(obj.key)

    def _json(self, kind: Any, oid: str) -> tuple[bytes, dict[str, Any]]:
        return self.src.load_json(kind, oid)  # checked against its sha256

    def add_chain(self, chain: list[str]) -> None:
        for sid in reversed(chain):  # oldest first: its parent's tree is the diff base
            if sid in self.done_snapshots:
                continue
            self.done_snapshots.add(sid)
            data, doc = self._json("snapshot", sid)
            self._add(_Obj(object_key("snapshot", sid), "snapshot", 2, data))
            base = None
            parents = doc.get("parents") or []
            if parents:
                base = self.src.snapshot(parents[0]).tree
            self._diff_tree(doc.get("tree"), base)

    def _fetch(self, kind: Any, ids: list[str]) -> list[tuple[bytes, dict[str, Any]]]:
        """``_json`` of several objects, concurrently (order kept)."""
        if len(ids) <= 1:
            return [self._json(kind, o) for o in ids]
        with ThreadPoolExecutor(min(16, len(ids))) as pool:
            return list(pool.map(lambda o: self._json(kind, o), ids))

    def _diff_tree(self, new: str | None, old: str | None) -> None:
        frontier: list[tuple[str, str | None]] = [(new, old)] if new and new != old else []
        entry_leaf: dict[str, str] = {}  # new entry id → the leaf it was found in
        while frontier:
            pairs = [(n, o) for n, o in frontier if n not in self.seen_nodes]
            self.seen_nodes.update(n for n, _ in pairs)
            news = self._fetch("manifest", [n for n, _ in pairs])
            old_ids = sorted({o for _, o in pairs if o})
            olds = dict(zip(old_ids, self.src.read_many("manifest", old_ids), strict=True))
            frontier = []
            for (n, o), (data, node) in zip(pairs, news, strict=True):
                self._add(_Obj(object_key("manifest", n), "manifest", 2, data))
                old_node = olds[o] if o else None
                if node.get("kind") == "inner":
                    if old_node and old_node.get("kind") == "leaf":
                        # a leaf that split: each new child is diffed against it, so only
                        # changed entries are copied and the rest keep their locations
                        frontier += [(cid, o) for cid, _count in node["children"].values()]
                        continue
                    old_children = (
                        old_node.get("children", {})
                        if old_node and old_node.get("kind") == "inner"
                        else {}
                    )
                    for k, (cid, _count) in node["children"].items():
                        ocid = old_children.get(k, [None])[0]
                        if cid != ocid:
                            frontier.append((cid, ocid))
                    continue
                self._add(
                    _Obj(catalog_key(n), "catalog", 2, make=_catalog_maker(self.src, n, node))
                )
                is_leaf = old_node is not None and old_node.get("kind") == "leaf"
                old_entries = old_node.get("entries", {}) if old_node and is_leaf else {}
                entries = node.get("entries", {})
                self.leaves.setdefault(
                    n, (o if is_leaf else None, [v["id"] for v in entries.values()])
                )
                for name, value in entries.items():
                    eid = value.get("id")
                    if old_entries.get(name, {}).get("id") == eid or eid in self.seen_entries:
                        continue
                    self.seen_entries.add(eid)
                    entry_leaf[eid] = n
        if not entry_leaf:
            return
        entry_ids = list(entry_leaf)
        for eid, (data, rec) in zip(entry_ids, self._fetch("entry", entry_ids), strict=True):
            leaf = entry_leaf[eid]
            self._add_packable(_Obj(object_key("entry", eid), "entry", 2, data), eid, leaf)
            rm = rec.get("refmap") or {}
            ext = EXTENSIONS.get(rm.get("format", "json"), ".json")
            self._add_packable(_Obj(object_key("refmap", rm["id"], ext), "refmap", 0), eid, leaf)
            sums = rec.get("checksums")
            if isinstance(sums, dict) and isinstance(sums.get("id"), str):
                key = object_key("checksums", sums["id"], ".parquet")
                self._add_packable(_Obj(key, "checksums", 0), eid, leaf)
            if self.sources:
                for s in rec.get("sources", []):
                    key = source_key(s["id"], s["name"])
                    self._add(_Obj(key, "source", 0, size=int(s["size"]), sha256=s["id"]))


def _catalog_maker(
    src: Repository, leaf: str, node: dict[str, Any]
) -> Callable[[], list[tuple[str, bytes]]]:
    def make() -> list[tuple[str, bytes]]:
        from hyperslab.references.catalog_index import LeafCatalog  # pyarrow, when needed

        try:
            data = src.site.get(catalog_key(leaf))
            LeafCatalog.from_bytes(data, leaf)  # page checksums and shape
        except NotFoundError:  # written by an older hyperslab: build it here
            data = LeafCatalog.from_leaf(leaf, node).to_bytes()
        return [(catalog_key(leaf), data)]

    return make


# --------------------------------------------------------------------------- hot


def _plan_hot(
    src: Repository,
    dst: Repository,
    report: SyncReport,
    rules: HotRules,
    stats: Any,
) -> tuple[list[_Obj], tuple[str, bytes] | None]:
    """Packs and indexes of the selected chunks ``dst`` does not hold yet, plus the marker
    that says this selection is complete (so an unchanged re-sync checks one object)."""
    from hyperslab.references.chunk_replicas import (  # numpy, pyarrow
        chunk_pack_group,
        load_replicas,
    )

    heads = sorted({u.source for u in report.refs})
    used: dict[str, list[tuple[str, str, int]]] = {}
    if rules.used and stats is not None:
        for k, ur in enumerate(rules.used):
            rows = stats.hot_chunks(
                src.id, entry_glob=ur.entries, array_glob=ur.arrays,
                min_reads=ur.min_reads, days=ur.days,
            )  # fmt: skip
            used[str(k)] = [(h.entry, h.key, h.reads) for h in rows]
    marker_doc = {"heads": heads, "rules": rules.to_json(), "used": used}
    marker_key = f"{HOT_MARKER_PREFIX}{object_id(canonical_json(marker_doc))}.json"
    try:
        dst.site.head(marker_key)
        return [], None  # this exact selection was completed before
    except NotFoundError:
        pass
    from hyperslab.reading.entry import EntryView  # zarr & co: only when there is work

    chosen: dict[tuple[str, int, int], HotChunk] = {}
    views: dict[str, Any] = {}
    globs = [r.entries for r in rules.rules] + [u.entries for u in rules.used]
    for sid in heads:
        names = [n for n, _ in src.entries(sid) if any(fnmatchcase(n, g) for g in globs)]
        here = {n: EntryView(src, n, sid) for n in names}
        for c in select_hot(here, rules, used):
            chosen.setdefault((c.source, c.offset, c.length), c)
            views.setdefault(c.source, here[c.entry])
    chunks = sorted(chosen.values())
    report.hot_chunks = len(chunks)
    report.hot_bytes = sum(c.length for c in chunks)
    sources = sorted({c.source for c in chunks})
    held = load_replicas(dst.site, sources) if sources else {}
    todo: dict[tuple[str, int], list[HotChunk]] = {}
    for c in chunks:
        if any(ix.find(c.offset, c.length) is not None for ix in held.get(c.source, [])):
            report.hot_held += 1
            continue
        todo.setdefault((c.source, chunk_pack_group(c.offset)), []).append(c)
    objs = [
        _Obj(f"pack:{source}:{group}", "pack", 0, size=sum(c.length for c in group_chunks),
             make=_pack_maker(src, dst, views[source], group_chunks))
        for (source, group), group_chunks in sorted(todo.items())
    ]  # fmt: skip
    return objs, (marker_key, canonical_json({**marker_doc, "time": _now()}))


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _pack_maker(
    src: Repository, dst: Repository, view: Any, chunks: list[HotChunk]
) -> Callable[[], list[tuple[str, bytes]]]:
    """Reads the chunks from the source site (coalesced, CRC-checked by the router) and
    packs them; returns the pack (unless the destination has it: a killed sync's upload)
    and then its index."""
    from hyperslab.references.chunk_replicas import build_chunk_pack
    from hyperslab.references.keys import chunk_pack_key

    def make() -> list[tuple[str, bytes]]:
        from hyperslab.reading.routing import ChunkRef, Router

        router = Router(view.locations, on_absent=view.absent)
        try:
            refs = [ChunkRef(c.source, c.offset, c.length, c.checksum, c.key) for c in chunks]
            got = router.fetch(refs)
        finally:
            router.close()
        rows = []
        for c, data in zip(chunks, got, strict=True):
            if isinstance(data, BaseException):
                raise data
            rows.append((c.offset, c.length, crc32c(data), data))
        pack, index, index_bytes = build_chunk_pack(chunks[0].source, rows)
        out = [(index.key, index_bytes)]
        try:
            dst.site.head(chunk_pack_key(index.pack))
        except NotFoundError:
            out.insert(0, (chunk_pack_key(index.pack), pack))
        return out

    return make


# --------------------------------------------------------------------------- presence


def _missing(dst: Repository, objs: list[_Obj], fresh: bool, jobs: int) -> list[_Obj]:
    """The objects ``dst`` does not hold (or holds so old that gc may be about to take
    them: those are rewritten, which refreshes their age)."""
    packs = [o for o in objs if o.kind == "pack"]  # known missing: their index was absent
    # held in an object pack that a locator read by _read_locators names
    rest = [o for o in objs if o.kind != "pack" and dst.packed_location(o.key) is None]
    by_prefix: dict[str, list[_Obj]] = {}
    for o in rest:
        by_prefix.setdefault(o.key.split("/", 1)[0] + "/", []).append(o)
    out: list[_Obj] = list(packs)
    heads: list[_Obj] = []
    for prefix, group in by_prefix.items():
        if fresh and len(group) >= LIST_THRESHOLD:
            have = set(dst.site.list(prefix))
            out += [o for o in group if o.key not in have]
        else:
            heads += group
    if heads:
        cutoff = datetime.now(UTC) - REFRESH_AGE

        def absent(o: _Obj) -> bool:
            try:
                return dst.site.head(o.key).mtime < cutoff
            except NotFoundError:
                return True

        with ThreadPoolExecutor(min(jobs, len(heads))) as pool:
            flags = list(pool.map(absent, heads))
        out += [o for o, f in zip(heads, flags, strict=True) if f]
    return out


def _read_locators(dst: Repository, leaves: Iterable[str], jobs: int) -> None:
    """The destination's locators of the walk's new leaves: a killed sync may have
    written some (with the packs they name). A damaged one counts as absent: the copy
    writes it again, since no reader reaches its leaf yet."""

    def read(leaf: str) -> None:
        try:
            dst.locator(leaf)
        except CorruptError as exc:
            log.warning("sync: %s; writing it again", exc.message)
            dst.remember_locator(leaf, None)

    todo = list(leaves)
    if todo:
        with ThreadPoolExecutor(min(jobs, len(todo))) as pool:
            list(pool.map(read, todo))


def _planned_bytes(src: Repository, objs: list[_Obj], jobs: int) -> int | None:
    """Bytes the plan would copy: known sizes, else the source's HEAD (None if unknown)."""
    unknown = [o for o in objs if o.size is None and o.data is None and o.make is None]

    def size(o: _Obj) -> int | None:
        where = src.packed_location(o.key)
        if where is not None:
            return where[2]
        try:
            return src.site.head(o.key).size
        except HyperslabError:
            return None

    heads = {}
    if unknown:
        with ThreadPoolExecutor(min(jobs, len(unknown))) as pool:
            heads = dict(zip([o.key for o in unknown], pool.map(size, unknown), strict=True))
    total = 0
    for o in objs:
        n = (
            o.size
            if o.size is not None
            else len(o.data)
            if o.data is not None
            else heads.get(o.key)
        )
        if n is None:
            if o.kind == "catalog":
                continue  # derived, small: built or copied at copy time
            return None
        total += n
    return total


# --------------------------------------------------------------------------- copy


class _Packing:
    """The object packs and leaf locators one sync writes (references/packs.py).

    Missing entry records, refmaps and checksums are packed per leaf of the walk (the
    first leaf that needs each); once every pack is verified, each new leaf gets its
    locator: the unchanged entries' locations from its base leaf's locator, the new
    ones from this sync's packs or the destination's existing locators."""

    def __init__(
        self,
        walker: _Walker,
        dst: Repository,
        fresh: bool,
        pack: bool,
        missing: list[_Obj],
        jobs: int = 16,
    ) -> None:
        self.walker = walker
        self.dst = dst
        self.jobs = jobs
        self.fresh = fresh  # the destination had nothing: no pack can be there yet
        self.packed: dict[str, PackSlot] = {}
        self._lock = threading.Lock()
        if not pack:
            return
        by_leaf: dict[str, list[_Obj]] = {}
        for o in missing:
            leaf = walker.owner.get(o.key)
            if leaf is not None:
                by_leaf.setdefault(leaf, []).append(o)
        for leaf in walker.leaves:  # walk order, keys sorted: the same packs every run
            group = sorted(by_leaf.get(leaf, []), key=lambda o: o.key)
            packer = Packer([o.key for o in group])
            for i, o in enumerate(group):
                o.packer, o.index, o.phase = packer, i, 0

    def record(self, where: dict[str, PackSlot]) -> None:
        with self._lock:
            self.packed.update(where)

    def locators(self) -> list[Locator]:
        """The new leaves' locators to write (those the destination lacks), in walk order."""
        dst, walker = self.dst, self.walker
        bases = {b for b, _ in walker.leaves.values() if b and b not in walker.leaves}
        if bases and not self.fresh:
            _read_locators(dst, bases, self.jobs)
        built: dict[str, Locator | None] = {}
        out = []
        for leaf, (base, eids) in walker.leaves.items():
            # read (and remembered) before the copy by _read_locators
            have = None if self.fresh else dst.locator(leaf)
            if have is not None:  # a killed sync wrote it (after the packs it names)
                built[leaf] = have
                continue
            base_loc = built.get(base) if base in built else (
                None if self.fresh or base is None else dst.locator(base)
            )  # fmt: skip
            entries: dict[str, dict[str, PackSlot]] = {}
            for eid in eids:
                objs = dict(base_loc.entries.get(eid, {})) if base_loc else {}
                for key in walker.entry_keys.get(eid, ()):
                    where = self.packed.get(key) or dst.packed_location(key)
                    if where is not None:
                        objs[key] = where
                if objs:
                    entries[eid] = objs
            loc = Locator(leaf, entries) if entries else None
            built[leaf] = loc
            if loc is not None:
                out.append(loc)
        return out


def _copy(
    src: Repository,
    dst: Repository,
    objs: list[_Obj],
    report: SyncReport,
    jobs: int,
    limiter: RateLimiter,
    progress: Progress | None,
    packing: _Packing,
) -> None:
    lock = threading.Lock()

    def done(kind: str, n: int) -> None:
        with lock:
            report.copied[kind] = report.copied.get(kind, 0) + 1
            report.bytes_copied += n
        if progress:
            progress(kind, 1, n)

    def landed(counts: list[tuple[str, int]], packs: int) -> None:
        with lock:
            report.packs += packs
        for kind, n in counts:
            done(kind, n)

    def failed(o: _Obj, exc: HyperslabError, absent: bool = False) -> None:
        if absent:  # see _absent_source: nothing to copy, no reason to fail the sync
            with lock:
                report.sources_absent.append(o.key)
            return
        with lock:
            report.failures.append({"key": o.key, "kind": o.kind, "error": exc.message,
                                    "code": exc.code})  # fmt: skip
        log.warning("sync: %s failed: %s", o.key, exc.message)

    def one(o: _Obj) -> None:
        try:
            if o.packer is not None:
                return landed(*_pack_one(src, dst, o, packing, limiter))
            n = _copy_one(src, dst, o, limiter)
        except HyperslabError as exc:
            return failed(o, exc, _absent_source(src, o, exc))
        done(o.kind, n)

    async def fast(o: _Obj) -> None:
        import asyncio

        try:
            if o.packer is not None:
                return landed(*await _pack_on_loop(src, dst, o, packing))
            n = await _copy_on_loop(src, dst, o)
        except HyperslabError as exc:
            # asking the source site is a blocking request: not on the IO loop
            return failed(o, exc, await asyncio.to_thread(_absent_source, src, o, exc))
        done(o.kind, n)

    loop = _shared_loop(src.site, dst.site) if not limiter.rate else None
    streams = loop is not None and src.site.supports_streaming and dst.site.supports_streaming

    def on_loop(o: _Obj) -> bool:
        if o.make is not None or (o.packer is None and src.packed_location(o.key)):
            return False  # built, or read out of a source pack through the repository
        size = o.size or 0
        return size <= LOOP_COPY_MAX or (streams and size <= STREAM_COPY_MAX)

    for phase in (0, 2):
        # largest first: a big file started last would be the whole tail of the copy
        # (a stable sort: packed objects stay in pack order, so packs complete early)
        batch = sorted((o for o in objs if o.phase == phase), key=lambda o: -(o.size or 0))
        if report.failures and phase == 2:
            return  # never write metadata over missing data
        if phase == 2:
            _write_locators(dst, packing, report, jobs)
            if report.failures:
                return
        if not batch:
            continue
        with ThreadPoolExecutor(min(jobs, len(batch))) as pool:
            if loop is None:
                list(pool.map(one, batch))
            else:
                from fsspec.asyn import sync as run_on

                run_on(loop, _drain, batch, jobs, on_loop, fast, one, pool)


def _absent_source(src: Repository, o: _Obj, exc: HyperslabError) -> bool:
    """Whether ``exc`` means that source file ``o`` is not stored at the source site
    (ingested without --upload-sources): then readers keep using the sites that hold
    it. A NotFound from anywhere else, or one that cannot be confirmed, is a failure."""
    if o.kind != "source" or not isinstance(exc, NotFoundError):
        return False
    try:
        return not src.site.exists(o.key)
    except HyperslabError:
        return False


def _write_locators(dst: Repository, packing: _Packing, report: SyncReport, jobs: int) -> None:
    """Every new leaf's locator, once every pack it may name is verified at ``dst``, and
    before the leaf itself (phase 2)."""
    try:
        todo = packing.locators()
    except HyperslabError as exc:
        report.failures.append({"key": "locators/", "kind": "locator", "error": exc.message,
                                "code": exc.code})  # fmt: skip
        return

    def put(loc: Locator) -> None:
        try:
            dst.site.put_verified(locator_key(loc.leaf), loc.to_bytes())
        except HyperslabError as exc:
            report.failures.append({"key": locator_key(loc.leaf), "kind": "locator",
                                    "error": exc.message, "code": exc.code})  # fmt: skip
            return
        dst.remember_locator(loc.leaf, loc)
        report.locators += 1

    if todo:
        with ThreadPoolExecutor(min(jobs, len(todo))) as pool:
            list(pool.map(put, todo))


def _pack_ready(o: _Obj, data: bytes) -> tuple[bool, list[tuple[str, bytes, dict[str, PackSlot]]]]:
    """Hand a packed object's verified bytes to its leaf's packer: ``(store it loose?,
    the packs it completed)``."""
    assert o.packer is not None
    loose = len(data) > PACK_OBJECT_MAX
    return loose, o.packer.add(o.index, None if loose else data)


def _pack_counts(where: dict[str, PackSlot]) -> list[tuple[str, int]]:
    return [(KIND_OF_DIR[split_object_key(k)[0]], n) for k, (_, _, n) in where.items()]


def _pack_one(
    src: Repository, dst: Repository, o: _Obj, packing: _Packing, limiter: RateLimiter
) -> tuple[list[tuple[str, int]], int]:
    """Thread twin of :func:`_pack_on_loop`."""
    data = o.data if o.data is not None else src.get_key(o.key)  # sha256-checked
    loose, ready = _pack_ready(o, data)
    counts: list[tuple[str, int]] = []
    if loose:
        limiter.take(len(data))
        dst.site.put_verified(o.key, data)
        counts.append((o.kind, len(data)))
    uploaded = 0
    for pid, pack, where in ready:
        key = object_pack_key(pid)
        if packing.fresh or not dst.site.exists(key):  # else a killed sync's upload
            limiter.take(len(pack))
            dst.site.put_verified(key, pack)
            counts += _pack_counts(where)
            uploaded += 1
        packing.record(where)
    return counts, uploaded


async def _pack_on_loop(
    src: Repository, dst: Repository, o: _Obj, packing: _Packing
) -> tuple[list[tuple[str, int]], int]:
    """Read one object to pack (checked against its id); upload, verified, the packs its
    bytes complete. Returns what landed, for the report: ``((kind, bytes)…, packs)``."""
    import asyncio

    data = o.data if o.data is not None else await _aread_checked(src, o)
    loose, ready = _pack_ready(o, data)
    counts: list[tuple[str, int]] = []
    if loose:
        await dst.site.aput_verified(o.key, data)
        counts.append((o.kind, len(data)))
    uploaded = 0
    for pid, pack, where in ready:
        key = object_pack_key(pid)
        if packing.fresh or not await asyncio.to_thread(dst.site.exists, key):
            await dst.site.aput_verified(key, pack)
            counts += _pack_counts(where)
            uploaded += 1
        packing.record(where)
    return counts, uploaded


async def _aread_checked(src: Repository, o: _Obj) -> bytes:
    """Object ``o``'s bytes from the source, checked against its id (or, for a source
    file, its recorded size and sha256)."""
    import asyncio

    if src.packed_location(o.key) is not None:
        return await asyncio.to_thread(src.get_key, o.key)
    data = await src.site.aget(o.key)
    # hashing a large object would stall every other request on the loop
    digest = (
        await asyncio.to_thread(_sha256_hex, data) if len(data) > 1 << 20 else _sha256_hex(data)
    )
    if o.kind == "source":
        _check_source(src, o, len(data), digest)
    else:
        src.check_object(o.key, digest)
    return data


def _shared_loop(a: Site, b: Site) -> Any:
    """The IO loop both sites' requests run on (two S3 sites), else None."""
    loop = a.io_loop
    return loop if loop is not None and loop is b.io_loop else None


#: objects up to this size are copied as coroutines on the IO loop, whole in memory;
#: larger ones up to STREAM_COPY_MAX are piped from one GET into one PUT where both
#: sites can stream (S3's single-PUT limit); the rest, hot-chunk packs and catalogs
#: (built, not copied) go through threads
LOOP_COPY_MAX = 4 << 20
STREAM_COPY_MAX = 5 << 30


async def _drain(
    batch: list[_Obj],
    jobs: int,
    on_loop: Callable[[_Obj], bool],
    fast: Callable[[_Obj], Any],
    slow: Callable[[_Obj], None],
    pool: ThreadPoolExecutor,
) -> None:
    """Copy ``batch`` with ``jobs`` workers on the IO loop: an object for which
    ``on_loop`` holds is copied by ``fast`` awaited in place (no thread hop per request,
    which is what a first sync of many small objects spends its CPU on); the rest run
    ``slow`` on ``pool``."""
    import asyncio

    loop = asyncio.get_running_loop()
    todo = iter(batch)

    async def worker() -> None:
        for o in todo:
            if on_loop(o):
                await fast(o)
            else:
                await loop.run_in_executor(pool, slow, o)

    await asyncio.gather(*(worker() for _ in range(min(jobs, len(batch)))))


async def _copy_on_loop(src: Repository, dst: Repository, o: _Obj) -> int:
    """:func:`_copy_one` for an object copied as is, as a coroutine on the IO loop."""
    if o.data is None and (o.size or 0) > LOOP_COPY_MAX:
        return await _stream_on_loop(src, dst, o)
    data = o.data if o.data is not None else await _aread_checked(src, o)
    await dst.site.aput_verified(o.key, data)
    return len(data)


async def _stream_on_loop(src: Repository, dst: Repository, o: _Obj) -> int:
    """Pipe a large object from one GET into one PUT; the PUT is completed only once
    every byte hashed to what the object must be (its id, or a source's checksum)."""
    if o.kind == "source":
        assert o.sha256 is not None
        expected = o.sha256

        def check(n: int, digest: str) -> None:
            _check_source(src, o, n, digest)
    else:
        expected = split_object_key(o.key)[1]

        def check(n: int, digest: str) -> None:
            src.check_object(o.key, digest)

    async with src.site.aget_stream(o.key) as (size, blocks):
        await dst.site.aput_stream(o.key, size, blocks, expected, check)
    return int(size)


def _sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _copy_one(src: Repository, dst: Repository, o: _Obj, limiter: RateLimiter) -> int:
    if o.kind == "source":
        return _copy_source(src, dst, o, limiter)
    if o.make is not None:
        items = o.make()
    elif o.data is not None:
        items = [(o.key, o.data)]
    else:
        items = [(o.key, src.get_key(o.key))]  # sha256-checked
    total = 0
    for key, data in items:  # in order: a pack before its index
        limiter.take(len(data))
        dst.site.put_verified(key, data)
        total += len(data)
    return total


def _copy_source(src: Repository, dst: Repository, o: _Obj, limiter: RateLimiter) -> int:
    """Stream a source file through a temporary file, hashing it; upload it; verify."""
    assert o.sha256 is not None
    if o.size is not None and o.size <= SMALL_SOURCE:
        data = src.site.get(o.key)
        limiter.take(len(data))
        _check_source(src, o, len(data), hashlib.sha256(data).hexdigest())
        dst.site.put_verified(o.key, data)
        return len(data)
    h = hashlib.sha256()
    n = 0
    fd, tmp = tempfile.mkstemp(prefix="hyperslab-sync-")
    try:
        with os.fdopen(fd, "wb") as fh:
            for block in src.site.iter_bytes(o.key):
                limiter.take(len(block))
                h.update(block)
                fh.write(block)
                n += len(block)
        _check_source(src, o, n, h.hexdigest())
        dst.site.put_file_verified(o.key, Path(tmp), o.sha256)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return n


def _check_source(src: Repository, o: _Obj, n: int, digest: str) -> None:
    if digest != o.sha256 or (o.size is not None and n != o.size):
        raise CorruptError(
            f"source {o.key} at {src.display} is corrupt: {n} bytes hashing to "
            f"{digest[:12]}…, expected {o.size} bytes hashing to {str(o.sha256)[:12]}…",
            key=o.key,
        )


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
