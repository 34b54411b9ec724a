"""Hot chunks at a destination: which chunk packs it lacks, and building them.

The chunks :func:`~hyperslab.sync.hot_rules.select_hot` picks are grouped per window
of their source (:func:`~hyperslab.references.chunk_replicas.chunk_pack_group`); a
pack is built by range-reading its chunks from the sites that hold the source
(coalesced and CRC-checked by the reading layer's router) and is uploaded with its
index. A marker records a completed selection, so an unchanged re-sync with the
same rules checks one object.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from fnmatch import fnmatchcase
from typing import Any

from google_crc32c import value as crc32c

from hyperslab.errors import NotFoundError
from hyperslab.references.format import canonical_json, object_id
from hyperslab.references.keys import HOT_MARKER_PREFIX, chunk_pack_key
from hyperslab.references.repository import Repository
from hyperslab.sync.hot_rules import HotChunk, HotRules, select_hot
from hyperslab.sync.plan import CopyItem
from hyperslab.sync.report import CHUNK_PACK, SyncReport

__all__ = ["plan_hot"]


def plan_hot(
    src: Repository,
    dst: Repository,
    report: SyncReport,
    rules: HotRules,
    stats: Any,
) -> tuple[list[CopyItem], tuple[str, bytes] | None]:
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
    from hyperslab.reading.entry import EntryView  # numpy, pyarrow: only when there is work

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
        CopyItem(f"pack:{source}:{group}", CHUNK_PACK, 0, size=sum(c.length for c in group_chunks),
             make=_pack_maker(src, dst, views[source], group_chunks), chunks=len(group_chunks))
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
