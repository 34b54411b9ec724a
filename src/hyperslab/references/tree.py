"""The entry tree: a canonical hash trie from entry names to entry summaries.

A snapshot does not list its entries inline: with 10^5 entries every commit would
rewrite megabytes. It names the root of a trie whose nodes are immutable
``manifests/<id>.json`` objects (the idea of git trees and Icechunk's split
manifests). Entries are placed by ``sha256(name)``: a node holding at most
:data:`LEAF_MAX` entries is a *leaf* listing them; a larger one is an *inner* node
with up to 16 children, one per hex digit of the hash at its depth.

The shape is a pure function of the set of entries (never of the order of
commits), so equal contents have equal root ids. That gives:

* commits in O(changed): updating one entry rewrites one leaf and the inner nodes
  above it, ~log16(n / leaf_max) + 2 objects of bounded size;
* diffs and syncs that skip every subtree whose id is unchanged.

``leaf_max`` is a parameter of each repository: :data:`LEAF_MAX` (1,024) in format 1,
``repo.json``'s ``leaf_max`` (:data:`DEFAULT_LEAF_MAX`, 128) in format 2, where a
one-entry commit rewrites a leaf of ~25 to 128 entries instead of up to 1,024. An
inner node written with another ``leaf_max`` than 1,024 records it, so that readers
tell its leaf children by their counts without reading them (:meth:`EntryTree.leaves`).
Search indexes are kept per *index root* (:meth:`EntryTree.index_roots`): the topmost
nodes counting at most :data:`INDEX_SPAN` entries, that is the leaves of format 1.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Protocol

from hyperslab.errors import CorruptError

__all__ = ["DEFAULT_LEAF_MAX", "INDEX_SPAN", "LEAF_MAX", "EntryTree", "NodeStore", "name_hash"]

#: most entries a leaf holds in format 1 (and where an inner node does not say);
#: a bigger subtree splits 16 ways by name hash
LEAF_MAX = 1024
#: most entries a leaf holds in repositories created in format 2
DEFAULT_LEAF_MAX = 128
#: most entries one catalog index covers (the leaves of format 1)
INDEX_SPAN = 1024
_MAX_DEPTH = 64

Value = dict[str, Any]


class NodeStore(Protocol):
    def read_node(self, oid: str) -> dict[str, Any]: ...

    def write_node(self, doc: dict[str, Any], base: str | None = None) -> str:
        """Store a node; ``base``: the leaf this leaf was made from, if any (a hint)."""
        ...


def name_hash(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()


class EntryTree:
    """Operations on entry tries stored in a :class:`NodeStore` (nodes are immutable)."""

    def __init__(self, store: NodeStore, leaf_max: int = LEAF_MAX) -> None:
        self.store = store
        self.leaf_max = leaf_max

    # ----------------------------------------------------------------- reading
    def _node(self, oid: str) -> dict[str, Any]:
        node = self.store.read_node(oid)
        if node.get("kind") not in ("leaf", "inner"):
            raise CorruptError(f"manifest {oid} is neither a leaf nor an inner node")
        return node

    def items(self, root: str | None) -> Iterator[tuple[str, Value]]:
        """Every ``(name, value)`` in the tree, sorted by name within each leaf."""
        if root is None:
            return
        stack = [root]
        while stack:
            node = self._node(stack.pop())
            if node["kind"] == "leaf":
                yield from sorted(node["entries"].items())
            else:
                stack.extend(c[0] for _, c in sorted(node["children"].items(), reverse=True))

    def leaves(self, root: str | None) -> Iterator[str]:
        """Ids of every leaf node (for bulk readers such as search).

        Reads only inner nodes: the shape is canonical, so a child counting at most
        ``leaf_max`` entries is a leaf (callers that read it still check its kind).
        """
        if root is None:
            return
        stack = [root]
        while stack:
            oid = stack.pop()
            node = self._node(oid)
            if node["kind"] == "leaf":
                yield oid
                continue
            leaf_max = _leaf_max(node)
            for cid, count in node["children"].values():
                if int(count) <= leaf_max:
                    yield cid
                else:
                    stack.append(cid)

    def index_roots(self, root: str | None, span: int = INDEX_SPAN) -> Iterator[str]:
        """Ids of the topmost nodes counting at most ``span`` entries: each holds a
        catalog index (search reads one object per index root, whatever the leaf size).
        In format 1 these are the leaves. Reads only inner nodes above them."""
        if root is None:
            return
        node = self._node(root)
        if node["kind"] == "leaf" or int(node["count"]) <= span:
            yield root
            return
        stack = [root]
        while stack:
            node = self._node(stack.pop())
            for cid, count in node["children"].values():
                if int(count) <= span:
                    yield cid
                else:
                    stack.append(cid)

    def node_ids(self, root: str | None) -> Iterator[str]:
        """Every node id of the tree (for fsck, gc and sync)."""
        if root is None:
            return
        stack = [root]
        while stack:
            oid = stack.pop()
            yield oid
            node = self._node(oid)
            if node["kind"] == "inner":
                stack.extend(c[0] for c in node["children"].values())

    def get(self, root: str | None, name: str) -> Value | None:
        h = name_hash(name)
        oid, depth = root, 0
        while oid is not None:
            node = self._node(oid)
            if node["kind"] == "leaf":
                value: Value | None = node["entries"].get(name)
                return value
            child = node["children"].get(h[depth])
            oid, depth = (child[0] if child else None), depth + 1
        return None

    def count(self, root: str | None) -> int:
        if root is None:
            return 0
        node = self._node(root)
        return len(node["entries"]) if node["kind"] == "leaf" else int(node["count"])

    # ----------------------------------------------------------------- writing
    def update(self, root: str | None, changes: Mapping[str, Value | None]) -> str | None:
        """A new root with ``changes`` applied (value None removes the entry)."""
        if not changes:
            return root
        hashed = {name: (name_hash(name), v) for name, v in changes.items()}
        return self._update(root, 0, hashed)[0]

    def build(self, entries: Mapping[str, Value]) -> str | None:
        return self._build({n: (name_hash(n), v) for n, v in entries.items()}, 0)[0]

    def _update(
        self,
        oid: str | None,
        depth: int,
        changes: dict[str, tuple[str, Value | None]],
        indexed_above: bool = False,
    ) -> tuple[str | None, int]:
        """``indexed_above``: an ancestor counts at most INDEX_SPAN entries (is the one
        that carries the search index of this part of the tree)."""
        if oid is None:
            live = {n: hv for n, hv in changes.items() if hv[1] is not None}
            return self._build(live, depth, indexed_above=indexed_above)
        node = self._node(oid)
        if node["kind"] == "leaf":
            entries = {n: (name_hash(n), v) for n, v in node["entries"].items()}
            for n, (h, v) in changes.items():
                if v is None:
                    entries.pop(n, None)
                else:
                    entries[n] = (h, v)
            return self._build(entries, depth, base=oid, indexed_above=indexed_above)
        children: dict[str, list[Any]] = {c: list(v) for c, v in node["children"].items()}
        groups: dict[str, dict[str, tuple[str, Value | None]]] = {}
        for n, hv in changes.items():
            groups.setdefault(hv[0][depth], {})[n] = hv
        for c, sub in groups.items():
            child = children.get(c)
            new_id, new_count = self._update(
                child[0] if child else None,
                depth + 1,
                sub,
                indexed_above or int(node["count"]) <= INDEX_SPAN,
            )
            if new_id is None:
                children.pop(c, None)
            else:
                children[c] = [new_id, new_count]
        total = sum(int(v[1]) for v in children.values())
        if total <= self.leaf_max:  # shrank: collapse to the canonical leaf
            entries = {n: (name_hash(n), v) for c in children.values() for n, v in self.items(c[0])}
            return self._build(entries, depth, indexed_above=indexed_above)
        return self._write_inner(children, depth, total), total

    def _build(
        self,
        entries: dict[str, tuple[str, Value | None]],
        depth: int,
        base: str | None = None,
        indexed_above: bool = False,
    ) -> tuple[str | None, int]:
        live = {n: hv for n, hv in entries.items() if hv[1] is not None}
        if not live:
            return None, 0
        if len(live) <= self.leaf_max or depth >= _MAX_DEPTH:
            doc = {"kind": "leaf", "entries": {n: v for n, (_, v) in live.items()}}
            return self.store.write_node(doc, base), len(live)
        groups: dict[str, dict[str, tuple[str, Value | None]]] = {}
        for n, hv in live.items():
            groups.setdefault(hv[0][depth], {})[n] = hv
        children: dict[str, list[Any]] = {}
        for c, sub in groups.items():
            cid, cnt = self._build(
                sub, depth + 1, indexed_above=indexed_above or len(live) <= INDEX_SPAN
            )
            if cid is not None:
                children[c] = [cid, cnt]
        oid = self._write_inner(children, depth, len(live))
        index = getattr(self.store, "index_new_subtree", None)
        if index is not None and len(live) <= INDEX_SPAN and not indexed_above:
            # a subtree written whole (a build, a leaf that split): its search index
            # costs no more than what was just written, so it comes with it
            index(oid)
        return oid, len(live)

    def _write_inner(self, children: dict[str, list[Any]], depth: int, total: int) -> str:
        doc: dict[str, Any] = {
            "kind": "inner",
            "depth": depth,
            "count": total,
            "children": children,
        }
        if self.leaf_max != LEAF_MAX:  # format 1's nodes stay byte for byte as they were
            doc["leaf_max"] = self.leaf_max
        return self.store.write_node(doc)

    # ----------------------------------------------------------------- diffing
    def diff(
        self, a: str | None, b: str | None, names: Iterable[str] | None = None
    ) -> dict[str, tuple[Value | None, Value | None]]:
        """``name → (value in a, value in b)`` for every entry that differs.

        ``names``: only those entries are compared, and only the subtrees that could
        hold them are read (a committer's conflict check after losing a race)."""
        out: dict[str, tuple[Value | None, Value | None]] = {}
        wanted = None if names is None else {n: name_hash(n) for n in names}
        self._diff(a, b, out, wanted)
        return out

    def _diff(
        self,
        a: str | None,
        b: str | None,
        out: dict[str, tuple[Value | None, Value | None]],
        wanted: dict[str, str] | None,
    ) -> None:
        if a == b or wanted == {}:
            return
        na = self._node(a) if a is not None else None
        nb = self._node(b) if b is not None else None
        if na is not None and nb is not None and na["kind"] == nb["kind"] == "inner":
            ca, cb = na["children"], nb["children"]
            depth = int(nb["depth"])
            for c in sorted(set(ca) | set(cb)):
                sub = None
                if wanted is not None:
                    sub = {n: h for n, h in wanted.items() if h[depth] == c}
                    if not sub:
                        continue
                self._diff(ca[c][0] if c in ca else None, cb[c][0] if c in cb else None, out, sub)
            return
        ea = dict(self.items(a))
        eb = dict(self.items(b))
        for n in set(ea) | set(eb) if wanted is None else wanted:
            va, vb = ea.get(n), eb.get(n)
            if (va or {}).get("id") != (vb or {}).get("id"):
                out[n] = (va, vb)


def _leaf_max(node: Mapping[str, Any]) -> int:
    """The ``leaf_max`` an inner node was written with: any child counting at most it
    is a leaf (nodes of format 1 do not say: 1,024)."""
    return int(node.get("leaf_max", LEAF_MAX))
