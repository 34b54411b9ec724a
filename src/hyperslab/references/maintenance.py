"""Repository upkeep: ``fsck`` (is everything reachable present and intact?),
``gc`` (delete what nothing reaches, after a grace period) and catalog ``search``.

Reachability starts at every branch and tag and follows snapshot parents, the
entry trees, entry records, their refmaps, uploaded sources and chunk replicas, and
the locators of reachable leaves with the object packs they name.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
from google_crc32c import value as crc32c

from hyperslab.errors import BadInputError, HyperslabError, NotFoundError
from hyperslab.references.catalog import Query, parse_query
from hyperslab.references.catalog_index import LeafCatalog
from hyperslab.references.checksums import unpack_checksums
from hyperslab.references.chunk_replicas import read_replica_index
from hyperslab.references.format import object_id
from hyperslab.references.keys import (
    BRANCH_PREFIX,
    CATALOG_PREFIX,
    LOCATOR_PREFIX,
    PACK_PREFIX,
    REFMAP_EXTENSIONS,
    REPLICA_PREFIX,
    SOURCE_PREFIX,
    TAG_PREFIX,
    catalog_key,
    chunk_pack_key,
    is_object_id,
    locator_key,
    object_key,
    object_pack_key,
    source_key,
)
from hyperslab.references.refmap_objects import decode_refmap
from hyperslab.references.repository import REFRESH_AGE, Repository

__all__ = [
    "FsckReport",
    "GcReport",
    "SearchResult",
    "fsck",
    "gc",
    "parse_duration",
    "search",
]

Progress = Callable[[str, int], None]


@dataclass
class FsckReport:
    checked: dict[str, int] = field(default_factory=dict)
    problems: list[dict[str, Any]] = field(default_factory=list)
    #: not damage, but worth knowing (e.g. a missing catalog index: search is slower)
    warnings: list[dict[str, Any]] = field(default_factory=list)
    bytes_checked: int = 0

    @property
    def clean(self) -> bool:
        return not self.problems

    def add(self, kind: str, oid: str, problem: str, **details: Any) -> None:
        self.problems.append({"kind": kind, "id": oid, "problem": problem, **details})

    def failed(self, kind: str, oid: str, exc: HyperslabError) -> None:
        """An object that could not be read: ``missing`` if absent, else ``corrupt``."""
        problem = "missing" if isinstance(exc, NotFoundError) else "corrupt"
        self.add(kind, oid, problem, error=exc.message)

    def to_json(self) -> dict[str, Any]:
        return {
            "clean": self.clean,
            "checked": self.checked,
            "bytes_checked": self.bytes_checked,
            "problems": self.problems,
            "warnings": self.warnings,
        }


@dataclass
class Reachable:
    snapshots: set[str] = field(default_factory=set)
    manifests: set[str] = field(default_factory=set)
    leaves: set[str] = field(default_factory=set)  # the manifests that are entry-tree leaves
    entries: set[str] = field(default_factory=set)
    refmaps: dict[str, str] = field(default_factory=dict)  # id → extension
    checksums: dict[str, int] = field(default_factory=dict)  # id → chunk count
    sources: set[str] = field(default_factory=set)  # keys
    chunks: set[str] = field(default_factory=set)  # keys
    #: for fsck, so entry records are read once: refmap id → (entry, arrays, refs)
    refmap_owner: dict[str, tuple[str, frozenset[str], int | None]] = field(default_factory=dict)
    #: size each held source must have, by key
    source_sizes: dict[str, int] = field(default_factory=dict)
    #: every source id a reachable entry uses (held here or not): their replicas count
    source_ids: set[str] = field(default_factory=set)
    #: replica index keys of reachable sources → their pack keys (see _walk_replicas)
    replicas: dict[str, str] = field(default_factory=dict)
    #: leaves with a locator here, and the object packs those locators name
    locators: set[str] = field(default_factory=set)
    packs: set[str] = field(default_factory=set)

    def keys(self) -> set[str]:
        out = {object_key("snapshot", s) for s in self.snapshots}
        out |= {object_key("manifest", m) for m in self.manifests}
        out |= {catalog_key(leaf) for leaf in self.leaves}
        out |= {object_key("entry", e) for e in self.entries}
        out |= {object_key("refmap", r, ext) for r, ext in self.refmaps.items()}
        out |= {object_key("checksums", c, ".parquet") for c in self.checksums}
        out |= set(self.replicas) | set(self.replicas.values())
        out |= {locator_key(leaf) for leaf in self.locators}
        out |= {object_pack_key(p) for p in self.packs}
        return out | self.sources | self.chunks


def _walk(
    repo: Repository,
    report: FsckReport | None,
    progress: Progress | None = None,
) -> Reachable:
    """Mark everything reachable; with ``report``, record what is missing or corrupt."""
    r = Reachable()

    def bad(kind: str, oid: str, exc: HyperslabError) -> None:
        if report is None:
            raise exc
        report.failed(kind, oid, exc)

    heads: list[str] = []
    for prefix, what in ((BRANCH_PREFIX, "branch"), (TAG_PREFIX, "tag")):
        for key in repo.site.list(prefix):
            try:
                heads.append(repo.refs.read(key)[0])
            except HyperslabError as exc:
                bad(what, key[len(prefix) :], exc)
    # one listing of sources/ instead of a HEAD request per source of every entry
    held = set(repo.site.list(SOURCE_PREFIX))
    stack = list(heads)
    while stack:
        sid = stack.pop()
        if sid in r.snapshots:
            continue
        r.snapshots.add(sid)
        try:
            snap = repo.snapshot(sid)
        except HyperslabError as exc:
            bad("snapshot", sid, exc)
            continue
        if progress:
            progress("snapshots", 1)
        stack.extend(snap.parents)
        _walk_tree(repo, snap.tree, r, bad, progress, held)
    _walk_locators(repo, r, bad)
    _walk_replicas(repo, r, report)
    return r


def _walk_locators(
    repo: Repository, r: Reachable, bad: Callable[[str, str, HyperslabError], None]
) -> None:
    """The locators of reachable leaves (most were read already, when an entry was
    packed) and the object packs they name."""
    for leaf in sorted(r.leaves):
        try:
            loc = repo.locator(leaf)
        except HyperslabError as exc:
            bad("locator", leaf, exc)
            continue
        if loc is not None:
            r.locators.add(leaf)
            r.packs |= loc.packs()


def _walk_replicas(repo: Repository, r: Reachable, report: FsckReport | None) -> None:
    """Hot-chunk replicas of reachable sources (one listing of ``replicas/``): each index
    and the pack it names. With ``report``, check both, chunk by chunk."""
    for key in repo.site.list(REPLICA_PREFIX):
        parts = key.split("/")
        if len(parts) != 3 or parts[1] not in r.source_ids or not key.endswith(".parquet"):
            continue  # another source's, or a completion marker (replicas/done/)
        try:
            index = read_replica_index(repo.site, key)
        except HyperslabError as exc:
            if report is None:
                raise
            report.failed("replica", key, exc)
            continue
        r.replicas[key] = chunk_pack_key(index.pack)
        if report is None:
            continue
        try:
            pack = repo.site.get(chunk_pack_key(index.pack))
        except HyperslabError as exc:
            report.failed("chunk pack", index.pack, exc)
            continue
        report.bytes_checked += len(pack)
        if len(pack) != index.pack_size or object_id(pack) != index.pack:
            report.add("chunk pack", index.pack, "corrupt", error="content does not match sha256")
            continue
        bad = [
            int(off)
            for off, n, crc, at in zip(
                index.offset, index.length, index.crc32c, index.at, strict=True
            )
            if crc32c(pack[int(at) : int(at) + int(n)]) != int(crc)
        ]
        if bad:
            report.add("replica", key, "corrupt", error=f"{len(bad)} chunk(s) fail CRC-32C")


def _walk_tree(
    repo: Repository,
    root: str | None,
    r: Reachable,
    bad: Callable[[str, str, HyperslabError], None],
    progress: Progress | None,
    held: set[str],
) -> None:
    stack = [root] if root else []
    while stack:
        oid = stack.pop()
        if oid in r.manifests:
            continue  # shared subtree, already walked
        r.manifests.add(oid)
        try:
            node = repo.read_node(oid)
        except HyperslabError as exc:
            bad("manifest", oid, exc)
            continue
        if node.get("kind") == "inner":
            stack.extend(c[0] for c in node["children"].values())
            continue
        r.leaves.add(oid)
        for value in node.get("entries", {}).values():
            eid = value.get("id")
            if not isinstance(eid, str) or eid in r.entries:
                continue
            r.entries.add(eid)
            try:
                rec = repo.read_json("entry", eid)
            except HyperslabError as exc:
                bad("entry", eid, exc)
                continue
            if progress:
                progress("entries", 1)
            rm = rec.get("refmap", {})
            r.refmaps[rm["id"]] = REFMAP_EXTENSIONS.get(rm.get("format", "json"), ".json")
            r.refmap_owner.setdefault(
                rm["id"], (rec.get("name", eid), frozenset(rec.get("arrays", {})), rm.get("refs"))
            )
            sums = rec.get("checksums")
            if isinstance(sums, dict) and isinstance(sums.get("id"), str):
                r.checksums[sums["id"]] = int(sums.get("chunks", -1))
            for s in rec.get("sources", []):
                r.source_ids.add(s["id"])
                key = source_key(s["id"], s["name"])
                # only sources this site holds are part of the repository here
                if key in held:
                    r.sources.add(key)
                    r.source_sizes[key] = int(s["size"])
            for key in rec.get("chunks", []):
                r.chunks.add(key)


def fsck(
    repo: Repository, *, verify_sources: bool = True, progress: Progress | None = None
) -> FsckReport:
    """Check that every reachable object exists and matches its hash.

    Also parses each refmap and checks it against its entry record (array list and
    reference counts), and re-hashes uploaded sources unless ``verify_sources`` is
    False (then only their sizes are checked).
    """
    report = FsckReport()
    try:
        repo.site.get("repo.json")
    except HyperslabError as exc:
        report.add("repository", "repo.json", "missing", error=exc.message)
    r = _walk(repo, report, progress)
    report.checked = {
        "snapshots": len(r.snapshots),
        "manifests": len(r.manifests),
        "entries": len(r.entries),
    }
    for rid, ext in sorted(r.refmaps.items()):
        try:
            data = repo.get_object("refmap", rid, ext)
        except HyperslabError as exc:
            report.failed("refmap", rid, exc)
            continue
        report.bytes_checked += len(data)
        if progress:
            progress("refmaps", 1)
        owner = r.refmap_owner.get(rid)
        try:
            refmap = decode_refmap(data, "parquet" if ext == ".parquet" else "json")
        except HyperslabError as exc:
            report.add("refmap", rid, "unreadable", error=exc.message)
            continue
        if owner is not None:
            name, arrays, refs = owner
            if set(refmap.arrays) != arrays:
                report.add("refmap", rid, "arrays differ from entry record", entry=name)
            elif refs is not None and refmap.n_refs != refs:
                report.add("refmap", rid, "reference count differs from entry record", entry=name)
    report.checked["refmaps"] = len(r.refmaps)
    for cid, chunks in sorted(r.checksums.items()):
        try:
            data = repo.get_object("checksums", cid, ".parquet")
            report.bytes_checked += len(data)
            rows = sum(idx.size for idx, _ in unpack_checksums(data).values())
        except HyperslabError as exc:
            report.failed("checksums", cid, exc)
            continue
        if chunks >= 0 and rows != chunks:
            report.add("checksums", cid, "corrupt", error=f"{rows} rows, entry says {chunks}")
    report.checked["checksums"] = len(r.checksums)
    for key in sorted(r.sources):
        sha = key.split("/")[1]
        try:
            if verify_sources:
                digest, n = repo.site.sha256(key)
                report.bytes_checked += n
                if digest != sha:
                    report.add("source", key, "corrupt", error="content does not match sha256")
                    continue
            else:
                n = repo.site.head(key).size
            if n != r.source_sizes[key]:
                report.add(
                    "source", key, "corrupt", error=f"size {n}, expected {r.source_sizes[key]}"
                )
        except HyperslabError as exc:
            report.failed("source", key, exc)
        if progress:
            progress("sources", 1)
    report.checked["sources"] = len(r.sources)
    for key in sorted(r.chunks):
        try:
            data = repo.site.get(key)
        except HyperslabError as exc:
            report.add("chunk", key, "missing", error=exc.message)
            continue
        report.bytes_checked += len(data)
        if hashlib.sha256(data).hexdigest() != key.rsplit("/", 1)[-1]:
            report.add("chunk", key, "corrupt", error="content does not match sha256")
    report.checked["chunks"] = len(r.chunks)
    report.checked["replicas"] = len(r.replicas)
    report.checked["locators"] = len(r.locators)
    report.checked["packs"] = len(r.packs)
    _check_catalogs(repo, r, report, progress)
    return report


def _check_catalogs(
    repo: Repository, r: Reachable, report: FsckReport, progress: Progress | None
) -> None:
    """Each leaf's catalog index must equal a fresh build from the leaf (or be absent)."""
    missing = 0
    for leaf in sorted(r.leaves):
        try:
            data = repo.site.get(catalog_key(leaf))
        except NotFoundError:
            missing += 1
            continue
        except HyperslabError as exc:
            report.add("catalog", leaf, "unreadable", error=exc.message)
            continue
        report.bytes_checked += len(data)
        try:
            stored = LeafCatalog.from_bytes(data, leaf)
            fresh = LeafCatalog.from_leaf(leaf, repo.read_node(leaf))
        except HyperslabError as exc:
            report.add("catalog", leaf, "corrupt", error=exc.message)
            continue
        if not stored.same_as(fresh):
            report.add("catalog", leaf, "corrupt", error="index differs from its leaf's records")
        if progress:
            progress("catalogs", 1)
    report.checked["catalogs"] = len(r.leaves) - missing
    if missing:
        report.warnings.append(
            {
                "kind": "catalog",
                "problem": "missing",
                "count": missing,
                "error": f"{missing} entry-tree leaves have no catalog index (written by an "
                "older hyperslab): search reads those leaves instead, which is slower",
            }
        )


# ------------------------------------------------------------------------- gc

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
    "snapshots/",
    "manifests/",
    CATALOG_PREFIX,
    "entries/",
    "refmaps/",
    "checksums/",
    LOCATOR_PREFIX,  # before packs/: a locator goes before the packs it names
    PACK_PREFIX,
    SOURCE_PREFIX,
    REPLICA_PREFIX,  # before chunks/: an index goes before the pack it names
    "chunks/",
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
    reachable = _walk(repo, None, progress).keys()
    report.reachable = len(reachable)
    cutoff = (now or datetime.now(UTC)) - older_than
    for prefix in _GC_PREFIXES:
        for key in repo.site.list(prefix):
            if key in reachable:
                continue
            name = key.rsplit("/", 1)[-1]
            if prefix != SOURCE_PREFIX and not is_object_id(name.split(".", 1)[0]):
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


# ------------------------------------------------------------------------- search


def search(
    repo: Repository,
    ref: str,
    query: str | Query,
    *,
    limit: int | None = None,
    workers: int = 16,
) -> SearchResult:
    """Entries of snapshot ``ref`` whose catalog record matches ``query``, sorted by name.

    ``limit`` caps the records returned (``total`` still counts every match).

    Evaluates the query on each leaf's columnar catalog index (fetched and filtered
    concurrently, see :mod:`~hyperslab.references.catalog_index`), then rebuilds the
    records of only the hits that are returned.
    """
    q = parse_query(query) if isinstance(query, str) else query
    snap = repo.snapshot(repo.resolve(ref))
    leaves = list(repo.tree.leaves(snap.tree))

    def select(leaf_id: str) -> tuple[LeafCatalog, np.ndarray]:
        cat = repo.leaf_catalog(leaf_id)
        return cat, cat.select(q)

    if len(leaves) > 1:
        with ThreadPoolExecutor(max_workers=min(workers, len(leaves))) as pool:
            selected = list(pool.map(select, leaves))
    else:
        selected = [select(leaf) for leaf in leaves]
    hits = sorted(
        (cat.names[i], n, int(i))
        for n, (cat, mask) in enumerate(selected)
        for i in np.flatnonzero(mask)
    )
    total = len(hits)
    if limit is not None:
        hits = hits[:limit]
    wanted: dict[int, np.ndarray] = {}
    for _, n, i in hits:
        wanted.setdefault(n, np.zeros(len(selected[n][0].names), dtype=bool))[i] = True
    records: dict[str, dict[str, Any]] = {}
    for n, m in wanted.items():
        records.update(selected[n][0].records(m))
    return SearchResult([(name, records[name]) for name, _, _ in hits], total)


@dataclass
class SearchResult:
    """The matches of a search, in name order: iterate for ``(name, record)`` pairs."""

    hits: list[tuple[str, dict[str, Any]]]
    total: int  # every match, also those beyond the limit

    def __iter__(self) -> Iterator[tuple[str, dict[str, Any]]]:
        return iter(self.hits)

    def __len__(self) -> int:
        return len(self.hits)

    def __getitem__(self, i: int) -> tuple[str, dict[str, Any]]:
        return self.hits[i]
