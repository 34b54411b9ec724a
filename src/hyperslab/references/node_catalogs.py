"""Where the catalog indexes of the entry tree's nodes come from (see :mod:`.catalog_index`).

* A commit builds the index of each leaf it writes: from the index of the leaf it
  replaces when this process holds it (only changed entries are encoded), else from
  scratch (leaves of format 2 hold at most 128 entries: cheaper than a GET).
* A subtree built whole (a bulk build, a leaf that split) that counts at most
  :data:`~hyperslab.references.tree.INDEX_SPAN` entries gets its combined index with it.
* Otherwise an inner node's index is combined by the first search that needs it, from
  its leaves' indexes, and stored (best effort: a derived object named by its node,
  so writing it is idempotent; a read-only site just does not keep it).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Protocol

from hyperslab.errors import CorruptError, HyperslabError, NotFoundError
from hyperslab.references.keys import catalog_key
from hyperslab.references.tree import EntryTree
from hyperslab.storage import Site

if TYPE_CHECKING:  # pyarrow and numpy load only when a catalog is built or searched
    from hyperslab.references.catalog_index import LeafCatalog

__all__ = ["NodeCatalogs", "NodeSource"]


class NodeSource(Protocol):
    """What the indexes need of a repository (:class:`~.repository.Repository`)."""

    site: Site
    tree: EntryTree
    store_derived: bool

    def read_node(self, oid: str) -> dict[str, Any]: ...

    def indexes_leaf(self, leaf: Mapping[str, Any]) -> bool: ...

    def cache_get(self, key: str) -> Any: ...

    def cache_put(self, key: str, value: Any) -> None: ...


log = logging.getLogger(__name__)


class NodeCatalogs:
    """The catalog indexes of one repository's tree nodes, cached in its memory cache."""

    def __init__(self, repo: NodeSource) -> None:
        self.repo = repo

    def _cached(self, node_id: str) -> LeafCatalog | None:
        cat: LeafCatalog | None = self.repo.cache_get(f"catalog:{node_id}")
        return cat

    def _keep(self, cat: LeafCatalog) -> LeafCatalog:
        self.repo.cache_put(f"catalog:{cat.leaf_id}", cat)
        return cat

    def for_new_leaf(self, oid: str, leaf: dict[str, Any], base: str | None) -> LeafCatalog:
        """The index of leaf ``oid`` being written (``base``: the leaf it replaces)."""
        from hyperslab.references.catalog_index import LeafCatalog, leaf_records

        records = leaf_records(leaf)
        if base is not None:
            previous = self._cached(base)
            old_leaf = self.repo.cache_get(f"manifest:{base}")
            if previous is not None and old_leaf is not None:
                old_entries = old_leaf.get("entries", {})
                new_entries = leaf.get("entries", {})
                changed = {n for n, v in new_entries.items() if old_entries.get(n) != v}
                return self._keep(previous.updated(oid, records, changed))
        return self._keep(LeafCatalog.build(oid, records))

    def for_new_subtree(self, node_id: str) -> LeafCatalog | None:
        """The combined index of an inner node whose leaves were all just written (their
        indexes are in memory), or None when some are not."""
        from hyperslab.references.catalog_index import LeafCatalog

        parts = [self._cached(leaf) for leaf in self.repo.tree.leaves(node_id)]
        if not parts or any(p is None for p in parts):
            return None
        return self._keep(LeafCatalog.combine(node_id, [p for p in parts if p is not None]))

    def get(self, node_id: str) -> LeafCatalog:
        """The index of a leaf, or of an inner node of at most INDEX_SPAN entries: read
        from ``catalogs/<node id>.parquet``, else rebuilt (an inner node's then stored)."""
        from hyperslab.references.catalog_index import LeafCatalog

        cat = self._cached(node_id)
        if cat is not None:
            return cat
        repo = self.repo
        node = repo.read_node(node_id)
        if node.get("kind") == "leaf" and not repo.indexes_leaf(node):
            return self._keep(LeafCatalog.from_leaf(node_id, node))  # small: none stored
        try:
            cat = LeafCatalog.from_bytes(repo.site.get(catalog_key(node_id)), node_id)
        except (NotFoundError, CorruptError) as exc:
            log.debug("catalog index of node %s not usable (%s): rebuilding it", node_id, exc)
            cat = self.build(node_id)
            if repo.read_node(node_id).get("kind") == "inner" and repo.store_derived:
                try:
                    repo.site.put(catalog_key(node_id), cat.to_bytes())
                except HyperslabError as put_exc:  # a read-only site: search works on
                    log.debug("not storing catalog index of %s: %s", node_id, put_exc)
        return self._keep(cat)

    def build(self, node_id: str) -> LeafCatalog:
        """A node's index built afresh: from a leaf's records, or for an inner node by
        combining the indexes of its leaves (read, or built from them)."""
        from hyperslab.references.catalog_index import LeafCatalog

        node = self.repo.read_node(node_id)
        kind = node.get("kind")
        if kind == "leaf":
            return LeafCatalog.from_leaf(node_id, node)
        if kind != "inner":
            raise CorruptError(f"manifest {node_id} is not a node of the entry tree")
        leaves = list(self.repo.tree.leaves(node_id))
        if len(leaves) > 1:
            with ThreadPoolExecutor(max_workers=min(8, len(leaves))) as pool:
                parts = list(pool.map(self.get, leaves))
        else:
            parts = [self.get(leaf) for leaf in leaves]
        return LeafCatalog.combine(node_id, parts)
