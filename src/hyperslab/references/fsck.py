"""``fsck``: is everything the branches and tags reach present and intact?

Every reachable object is read and checked against its id (sha256); each refmap is
parsed and compared with its entry record; uploaded sources are re-hashed; chunk
replicas are checked chunk by chunk (CRC-32C); each leaf's catalog index must equal
a fresh build from the leaf.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from google_crc32c import value as crc32c

from hyperslab.errors import HyperslabError, NotFoundError
from hyperslab.references.catalog_index import LeafCatalog
from hyperslab.references.checksums import unpack_checksums
from hyperslab.references.chunk_replicas import ReplicaIndex
from hyperslab.references.format import object_id
from hyperslab.references.keys import REPO_KEY, catalog_key, chunk_pack_key
from hyperslab.references.reachability import Progress, Reachable, walk
from hyperslab.references.refmap_objects import decode_refmap
from hyperslab.references.repository import Repository

__all__ = ["FsckReport", "archivable_sources", "fsck"]


@dataclass
class FsckReport:
    """What fsck checked and what it found wrong (``clean``: nothing)."""

    checked: dict[str, int] = field(default_factory=dict)
    problems: list[dict[str, Any]] = field(default_factory=list)
    #: not damage, but worth knowing (e.g. a missing catalog index: search is slower)
    warnings: list[dict[str, Any]] = field(default_factory=list)
    bytes_checked: int = 0
    #: source files that entries read before ``compress`` and that no branch head or tag
    #: reads any more (only older snapshots do): ``{id, name, size, entries}``
    archivable: list[dict[str, Any]] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not self.problems

    def add(self, kind: str, oid: str, problem: str, **details: Any) -> None:
        self.problems.append({"kind": kind, "id": oid, "problem": problem, **details})

    def failed(self, kind: str, oid: str, exc: HyperslabError) -> None:
        """An object that could not be read: ``missing`` if absent, else ``corrupt``."""
        problem = "missing" if isinstance(exc, NotFoundError) else "corrupt"
        self.add(kind, oid, problem, error=exc.message)

    def describe(self) -> str:
        """:attr:`checked` in words that say which objects are which (the same numbers
        as ``to_json``): ``chunks`` are chunk objects entries name, ``chunk_packs`` the
        hot-chunk packs (both in ``chunks/``), ``replicas`` the indexes of those packs
        (``replicas/``), ``packs`` the object packs of entry records, refmaps and
        checksums (``packs/``)."""
        parts = []
        for k, n in self.checked.items():
            if k == "hot_chunks":
                continue
            one, many = _LABELS.get(k, (k.rstrip("s"), k))
            part = f"{n} {one if n == 1 else many}"
            if k == "chunk_packs":
                hot = self.checked.get("hot_chunks", 0)
                part += f" (holding {hot} hot chunk{'' if hot == 1 else 's'})"
            parts.append(part)
        return ", ".join(parts)

    def to_json(self) -> dict[str, Any]:
        return {
            "clean": self.clean,
            "checked": self.checked,
            "bytes_checked": self.bytes_checked,
            "problems": self.problems,
            "warnings": self.warnings,
            "archivable": self.archivable,
        }


#: what fsck's counts are called in text: the objects under ``chunks/`` are chunk
#: objects entries name and hot-chunk packs; ``replicas/`` holds the packs' indexes
_LABELS = {
    "chunks": ("chunk object", "chunk objects"),
    "chunk_packs": ("chunk pack", "chunk packs"),
    "replicas": ("replica index", "replica indexes"),
    "packs": ("object pack", "object packs"),
    "entries": ("entry", "entries"),
    "checksums": ("checksums", "checksums"),  # one table of a source's chunk checksums
}


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
        repo.site.get(REPO_KEY)
    except HyperslabError as exc:
        report.add("repository", REPO_KEY, "missing", error=exc.message)
    r = walk(repo, report.failed, progress)
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
    for key, index in sorted(r.replicas.items()):
        _check_replica(repo, key, index, report)
    report.checked["chunk_packs"] = len({ix.pack for ix in r.replicas.values()})
    report.checked["hot_chunks"] = sum(len(ix.offset) for ix in r.replicas.values())
    report.checked["replicas"] = len(r.replicas)
    report.checked["locators"] = len(r.locators)
    report.checked["packs"] = len(r.packs)
    _check_catalogs(repo, r, report, progress)
    report.archivable = archivable_sources(repo)
    return report


def archivable_sources(repo: Repository) -> list[dict[str, Any]]:
    """Sources that compressed entries were made from and that no entry at a branch head
    or tag reads any more: only older snapshots need them, so an operator may archive
    them (reading those snapshots then needs them back). Sorted by name."""
    used: set[str] = set()
    before: dict[str, dict[str, Any]] = {}
    heads = set(repo.branches().values()) | set(repo.tags().values())
    for head in heads:
        try:
            items = list(repo.entries(head))
        except HyperslabError:
            continue  # the walk reported it
        for name, value in items:
            try:
                rec = repo.read_json("entry", value["id"])
            except HyperslabError:
                continue  # the walk reported it
            used.update(s["id"] for s in rec.get("sources", []))
            made = rec.get("compressed")
            if not isinstance(made, dict):
                continue
            earlier = (made.get("from") or {}).get("sources", []) + made.get("originals", [])
            for s in earlier:
                item = before.setdefault(s["id"], {**s, "entries": []})
                if name not in item["entries"]:
                    item["entries"].append(name)
    out = [item for sid, item in before.items() if sid not in used]
    return sorted(out, key=lambda s: (s.get("name", ""), s["id"]))


def _check_catalogs(
    repo: Repository, r: Reachable, report: FsckReport, progress: Progress | None
) -> None:
    """Each leaf's catalog index must equal a fresh build from the leaf (or be absent);
    so must each combined index of an inner node that exists (format 2: a cache)."""
    outcomes = {
        leaf: _check_index(repo, report, leaf, partial(_fresh_leaf, repo, leaf), "leaf's", progress)
        for leaf in sorted(r.leaves)
    }
    absent = [leaf for leaf, outcome in outcomes.items() if outcome == "missing"]
    # small leaves of format 3 have none by design: search reads them
    missing = sum(1 for leaf in absent if repo.indexes_leaf(repo.read_node(leaf)))
    present = sum(
        _check_index(repo, report, node, partial(_fresh_combined, repo, node), "leaves'", progress)
        == "read"
        for node in sorted(r.indexed_inner)
    )
    report.checked["catalogs"] = len(r.leaves) - len(absent) + present
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


def _check_index(
    repo: Repository,
    report: FsckReport,
    node: str,
    fresh: Callable[[], LeafCatalog],
    whose: str,
    progress: Progress | None,
) -> str:
    """Compare ``node``'s stored catalog index with ``fresh()``, a build from the
    records (``whose`` records, for the message); "missing", "unreadable" or "read"."""
    try:
        data = repo.site.get(catalog_key(node))
    except NotFoundError:
        return "missing"
    except HyperslabError as exc:
        report.add("catalog", node, "unreadable", error=exc.message)
        return "unreadable"
    report.bytes_checked += len(data)
    try:
        stored = LeafCatalog.from_bytes(data, node)
        built = fresh()
    except HyperslabError as exc:
        report.add("catalog", node, "corrupt", error=exc.message)
        return "read"
    if not stored.same_as(built):
        report.add("catalog", node, "corrupt", error=f"index differs from its {whose} records")
    if progress:
        progress("catalogs", 1)
    return "read"


def _fresh_leaf(repo: Repository, leaf: str) -> LeafCatalog:
    """A leaf's index built from its records."""
    return LeafCatalog.from_leaf(leaf, repo.read_node(leaf))


def _fresh_combined(repo: Repository, node: str) -> LeafCatalog:
    """An inner node's index built from its leaves' records (never from stored indexes)."""
    return LeafCatalog.combine(
        node, [LeafCatalog.from_leaf(leaf, repo.read_node(leaf)) for leaf in repo.tree.leaves(node)]
    )


def _check_replica(repo: Repository, key: str, index: ReplicaIndex, report: FsckReport) -> None:
    """The chunk pack a replica index names: present, whole, and every chunk's CRC-32C."""
    try:
        pack = repo.site.get(chunk_pack_key(index.pack))
    except HyperslabError as exc:
        report.failed("chunk pack", index.pack, exc)
        return
    report.bytes_checked += len(pack)
    if len(pack) != index.pack_size or object_id(pack) != index.pack:
        report.add("chunk pack", index.pack, "corrupt", error="content does not match sha256")
        return
    bad = [
        int(off)
        for off, n, crc, at in zip(index.offset, index.length, index.crc32c, index.at, strict=True)
        if crc32c(pack[int(at) : int(at) + int(n)]) != int(crc)
    ]
    if bad:
        report.add("replica", key, "corrupt", error=f"{len(bad)} chunk(s) fail CRC-32C")
