"""What a repository's branches and tags reach: the walk ``fsck`` and ``gc`` share.

Reachability starts at every branch and tag and follows snapshot parents, the
entry trees, entry records, their refmaps and checksums, uploaded sources and
chunk replicas, and the locators of reachable leaves with the object packs they
name.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from hyperslab.errors import HyperslabError
from hyperslab.references.chunk_replicas import ReplicaIndex, read_replica_index
from hyperslab.references.keys import (
    BRANCH_PREFIX,
    REFMAP_EXTENSIONS,
    REPLICA_PREFIX,
    SOURCE_PREFIX,
    TAG_PREFIX,
    catalog_key,
    chunk_pack_key,
    locator_key,
    object_key,
    object_pack_key,
    source_key,
)
from hyperslab.references.repository import Repository
from hyperslab.references.tree import INDEX_SPAN

__all__ = ["Problem", "Progress", "Reachable", "walk"]

#: ``progress(what, n)``: n more objects of a kind were walked or checked
Progress = Callable[[str, int], None]
#: ``bad(kind, id, error)``: an object that could not be read
Problem = Callable[[str, str, HyperslabError], None]


@dataclass
class Reachable:
    """What the branches and tags of one site reach, object kind by object kind."""

    snapshots: set[str] = field(default_factory=set)
    manifests: set[str] = field(default_factory=set)
    leaves: set[str] = field(default_factory=set)  # the manifests that are entry-tree leaves
    #: inner nodes small enough to carry a catalog index (format 2's index roots, which
    #: search writes when it needs them: kept by gc, checked by fsck when present)
    indexed_inner: set[str] = field(default_factory=set)
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
    #: replica indexes of reachable sources, by key (each names its chunk pack)
    replicas: dict[str, ReplicaIndex] = field(default_factory=dict)
    #: leaves with a locator here, and the object packs those locators name
    locators: set[str] = field(default_factory=set)
    packs: set[str] = field(default_factory=set)

    def keys(self) -> set[str]:
        """Every key the reachable objects are stored under at this site."""
        out = {object_key("snapshot", s) for s in self.snapshots}
        out |= {object_key("manifest", m) for m in self.manifests}
        out |= {catalog_key(leaf) for leaf in self.leaves}
        out |= {catalog_key(node) for node in self.indexed_inner}
        out |= {object_key("entry", e) for e in self.entries}
        out |= {object_key("refmap", r, ext) for r, ext in self.refmaps.items()}
        out |= {object_key("checksums", c, ".parquet") for c in self.checksums}
        out |= set(self.replicas) | {chunk_pack_key(ix.pack) for ix in self.replicas.values()}
        out |= {locator_key(leaf) for leaf in self.locators}
        out |= {object_pack_key(p) for p in self.packs}
        return out | self.sources | self.chunks


def walk(
    repo: Repository,
    bad: Problem | None = None,
    progress: Progress | None = None,
) -> Reachable:
    """Mark everything reachable from every branch and tag. An object that cannot be
    read raises, or with ``bad`` is handed to it (``bad(kind, id, error)``: fsck
    records it and walks on)."""
    r = Reachable()

    def failed(kind: str, oid: str, exc: HyperslabError) -> None:
        if bad is None:
            raise exc
        bad(kind, oid, exc)

    heads: list[str] = []
    for prefix, what in ((BRANCH_PREFIX, "branch"), (TAG_PREFIX, "tag")):
        for key in repo.site.list(prefix):
            try:
                heads.append(repo.refs.read(key)[0])
            except HyperslabError as exc:
                failed(what, key[len(prefix) :], exc)
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
            failed("snapshot", sid, exc)
            continue
        if progress:
            progress("snapshots", 1)
        stack.extend(snap.parents)
        _walk_tree(repo, snap.tree, r, failed, progress, held)
    _walk_locators(repo, r, failed)
    _walk_replicas(repo, r, failed)
    return r


def _walk_locators(repo: Repository, r: Reachable, bad: Problem) -> None:
    """The locators of reachable leaves (most were read already, when an entry was
    packed) and the object packs they name."""
    for leaf in sorted(r.leaves):
        try:
            loc = repo.packs.locator(leaf)
        except HyperslabError as exc:
            bad("locator", leaf, exc)
            continue
        if loc is not None:
            r.locators.add(leaf)
            r.packs |= loc.packs()


def _walk_replicas(repo: Repository, r: Reachable, bad: Problem) -> None:
    """Hot-chunk replicas of reachable sources (one listing of ``replicas/``): each index
    and the chunk pack it names."""
    for key in repo.site.list(REPLICA_PREFIX):
        parts = key.split("/")
        if len(parts) != 3 or parts[1] not in r.source_ids or not key.endswith(".parquet"):
            continue  # another source's, or a completion marker (replicas/done/)
        try:
            index = read_replica_index(repo.site, key)
        except HyperslabError as exc:
            bad("replica", key, exc)
            continue
        r.replicas[key] = index


def _walk_tree(
    repo: Repository,
    root: str | None,
    r: Reachable,
    bad: Problem,
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
            if int(node.get("count", INDEX_SPAN + 1)) <= INDEX_SPAN:
                r.indexed_inner.add(oid)
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
