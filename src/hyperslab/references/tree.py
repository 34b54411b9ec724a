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
  above it, ~log16(n / LEAF_MAX) + 2 objects of bounded size;
* diffs and syncs that skip every subtree whose id is unchanged.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping
from typing import Any, Protocol

from hyperslab.errors import CorruptError

__all__ = ["LEAF_MAX", "EntryTree", "NodeStore"]

#: most entries a leaf holds; a bigger subtree splits 16 ways by name hash
LEAF_MAX = 1024
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
            for cid, count in node["children"].values():
                if int(count) <= self.leaf_max:
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
        self, oid: str | None, depth: int, changes: dict[str, tuple[str, Value | None]]
    ) -> tuple[str | None, int]:
        if oid is None:
            return self._build({n: hv for n, hv in changes.items() if hv[1] is not None}, depth)
        node = self._node(oid)
        if node["kind"] == "leaf":
            entries = {n: (name_hash(n), v) for n, v in node["entries"].items()}
            for n, (h, v) in changes.items():
                if v is None:
                    entries.pop(n, None)
                else:
                    entries[n] = (h, v)
            return self._build(entries, depth, base=oid)
        children: dict[str, list[Any]] = {c: list(v) for c, v in node["children"].items()}
        groups: dict[str, dict[str, tuple[str, Value | None]]] = {}
        for n, hv in changes.items():
            groups.setdefault(hv[0][depth], {})[n] = hv
        for c, sub in groups.items():
            child = children.get(c)
            new_id, new_count = self._update(child[0] if child else None, depth + 1, sub)
            if new_id is None:
                children.pop(c, None)
            else:
                children[c] = [new_id, new_count]
        total = sum(int(v[1]) for v in children.values())
        if total <= self.leaf_max:  # shrank: collapse to the canonical leaf
            entries = {n: (name_hash(n), v) for c in children.values() for n, v in self.items(c[0])}
            return self._build(entries, depth)
        return self._write_inner(children, depth, total), total

    def _build(
        self, entries: dict[str, tuple[str, Value | None]], depth: int, base: str | None = None
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
            cid, cnt = self._build(sub, depth + 1)
            if cid is not None:
                children[c] = [cid, cnt]
        return self._write_inner(children, depth, len(live)), len(live)

    def _write_inner(self, children: dict[str, list[Any]], depth: int, total: int) -> str:
        return self.store.write_node(
            {"kind": "inner", "depth": depth, "count": total, "children": children}
        )

    # ----------------------------------------------------------------- diffing
    def diff(self, a: str | None, b: str | None) -> dict[str, tuple[Value | None, Value | None]]:
        """``name → (value in a, value in b)`` for every entry that differs."""
        out: dict[str, tuple[Value | None, Value | None]] = {}
        self._diff(a, b, out)
        return out

    def _diff(
        self, a: str | None, b: str | None, out: dict[str, tuple[Value | None, Value | None]]
    ) -> None:
        if a == b:
            return
        na = self._node(a) if a is not None else None
        nb = self._node(b) if b is not None else None
        if na is not None and nb is not None and na["kind"] == nb["kind"] == "inner":
            ca, cb = na["children"], nb["children"]
            for c in sorted(set(ca) | set(cb)):
                self._diff(ca[c][0] if c in ca else None, cb[c][0] if c in cb else None, out)
            return
        ea = dict(self.items(a))
        eb = dict(self.items(b))
        for n in set(ea) | set(eb):
            va, vb = ea.get(n), eb.get(n)
            if (va or {}).get("id") != (vb or {}).get("id"):
                out[n] = (va, vb)
