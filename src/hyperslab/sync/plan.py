"""What the new snapshots need: the objects a sync may copy, found by a Merkle diff.

The source snapshots from each new head back to the destination's head are walked
oldest first, and each snapshot's entry tree is diffed against its parent's:
identical subtrees have identical ids, so only what changed is read (linear in the
change). Each object found becomes a :class:`CopyItem`; entry records, refmaps and
checksums remember the new leaf that reached them (for object packs).
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from hyperslab.errors import NotFoundError
from hyperslab.references.keys import REFMAP_EXTENSIONS, catalog_key, object_key, source_key
from hyperslab.references.object_packs import Packer
from hyperslab.references.repository import Repository

__all__ = ["CopyItem", "Walker"]


@dataclass
class CopyItem:
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
    #: hot-chunk packs: the chunks the pack holds
    chunks: int = 0


class Walker:
    """The objects new snapshots need, found by diffing each tree against its parent's."""

    def __init__(self, src: Repository, sources: bool) -> None:
        self.src = src
        self.sources = sources
        self.found: dict[str, CopyItem] = {}
        self.done_snapshots: set[str] = set()
        self.seen_nodes: set[str] = set()
        self.seen_entries: set[str] = set()
        #: every new leaf, in walk order: (the leaf it was diffed against, its entry ids)
        self.leaves: dict[str, tuple[str | None, list[str]]] = {}
        #: packable object key → the new leaf whose pack holds it (the first to need it)
        self.owner: dict[str, str] = {}
        #: packable object keys of each entry the walk found new
        self.entry_keys: dict[str, list[str]] = {}

    def objects(self) -> list[CopyItem]:
        return list(self.found.values())

    def _add(self, obj: CopyItem) -> None:
        self.found.setdefault(obj.key, obj)

    def _add_packable(self, obj: CopyItem, eid: str, leaf: str) -> None:
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
            self._add(CopyItem(object_key("snapshot", sid), "snapshot", 2, data))
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
                self._add(CopyItem(object_key("manifest", n), "manifest", 2, data))
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
                if self.src.indexes_leaf(node):  # small leaves of format 3 have none
                    maker = _catalog_maker(self.src, n, node)
                    self._add(CopyItem(catalog_key(n), "catalog", 2, make=maker))
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
            self._add_packable(CopyItem(object_key("entry", eid), "entry", 2, data), eid, leaf)
            rm = rec.get("refmap") or {}
            ext = REFMAP_EXTENSIONS.get(rm.get("format", "json"), ".json")
            self._add_packable(
                CopyItem(object_key("refmap", rm["id"], ext), "refmap", 0), eid, leaf
            )
            sums = rec.get("checksums")
            if isinstance(sums, dict) and isinstance(sums.get("id"), str):
                key = object_key("checksums", sums["id"], ".parquet")
                self._add_packable(CopyItem(key, "checksums", 0), eid, leaf)
            if self.sources:
                for s in rec.get("sources", []):
                    key = source_key(s["id"], s["name"])
                    self._add(CopyItem(key, "source", 0, size=int(s["size"]), sha256=s["id"]))


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
