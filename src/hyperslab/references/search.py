"""``search``: the entries of a snapshot whose catalog record matches a query.

The query language is :mod:`.catalog`'s; each index root of the entry tree (a
leaf in format 1, a node of at most 1,024 entries in format 2) carries a columnar
catalog index (:mod:`.catalog_index`) on which a query is evaluated in one
vectorised pass, so a search reads one small object per index root and rebuilds
the records of only the hits it returns.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from hyperslab.errors import did_you_mean
from hyperslab.references.catalog import Query, QuerySyntaxError, parse_query
from hyperslab.references.catalog_index import LeafCatalog
from hyperslab.references.repository import Repository

__all__ = ["SearchResult", "search"]


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
    leaves = list(repo.tree.index_roots(snap.tree))  # format 1: the leaves

    def select(leaf_id: str) -> tuple[LeafCatalog, np.ndarray]:
        cat = repo.leaf_catalog(leaf_id)
        return cat, cat.select(q)

    if len(leaves) > 1:
        with ThreadPoolExecutor(max_workers=min(workers, len(leaves))) as pool:
            selected = list(pool.map(select, leaves))
    else:
        selected = [select(leaf) for leaf in leaves]
    _check_keys(q, [cat for cat, _ in selected])
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


def _check_keys(query: Query, catalogs: list[LeafCatalog]) -> None:
    """A key no entry of the snapshot records is a typo, not a query that matches nothing
    (or, negated, everything): ``bad_query`` naming close keys."""
    wanted = {t.key for t in query.terms if t.key is not None}
    if not wanted or not any(cat.names for cat in catalogs):
        return
    known: set[str] = set()
    for cat in catalogs:
        known |= cat.keys()
    for term in query.terms:
        if term.key is not None and term.key not in known:
            raise QuerySyntaxError(
                f"bad query term {term.text!r}: no entry of this snapshot records "
                f"{term.key!r}" + did_you_mean(term.key, known, what="keys")
            )


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
