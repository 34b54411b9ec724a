"""Which of the candidate objects a destination lacks, and what copying them would move.

A HEAD per object, or one listing per prefix when the destination has nothing of the
synced refs yet; objects old enough that gc may be about to take them count as
missing (rewriting refreshes their age). Objects the destination holds in object
packs are found through the locators of the walk's new leaves. Source files the
source site lacks are looked for at the other configured sites
(:func:`sources_elsewhere`), so the report can say where they are.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

from hyperslab.errors import CorruptError, HyperslabError, NotFoundError
from hyperslab.references.repository import REFRESH_AGE, Repository
from hyperslab.sync.plan import CopyItem
from hyperslab.sync.report import CHUNK_PACK

__all__ = [
    "LIST_THRESHOLD",
    "missing_at",
    "planned_bytes",
    "read_locators",
    "sources_elsewhere",
]

log = logging.getLogger(__name__)


#: at least this many candidates under one prefix, at a destination that has nothing
#: of the synced refs yet (a resumed first sync): one listing of the prefix (1,000 keys
#: per request) instead of a HEAD per object
LIST_THRESHOLD = 50


def missing_at(dst: Repository, objs: list[CopyItem], fresh: bool, jobs: int) -> list[CopyItem]:
    """The objects ``dst`` does not hold (or holds so old that gc may be about to take
    them: those are rewritten, which refreshes their age)."""
    packs = [o for o in objs if o.kind == CHUNK_PACK]  # known missing: their index was absent
    # held in an object pack that a locator read by read_locators names
    rest = [o for o in objs if o.kind != CHUNK_PACK and dst.packs.location(o.key) is None]
    by_prefix: dict[str, list[CopyItem]] = {}
    for o in rest:
        by_prefix.setdefault(o.key.split("/", 1)[0] + "/", []).append(o)
    out: list[CopyItem] = list(packs)
    heads: list[CopyItem] = []
    for prefix, group in by_prefix.items():
        if fresh and len(group) >= LIST_THRESHOLD:
            have = set(dst.site.list(prefix))
            out += [o for o in group if o.key not in have]
        else:
            heads += group
    if heads:
        cutoff = datetime.now(UTC) - REFRESH_AGE

        def absent(o: CopyItem) -> bool:
            try:
                return dst.site.head(o.key).mtime < cutoff
            except NotFoundError:
                return True

        with ThreadPoolExecutor(min(jobs, len(heads))) as pool:
            flags = list(pool.map(absent, heads))
        out += [o for o, f in zip(heads, flags, strict=True) if f]
    return out


def read_locators(dst: Repository, leaves: Iterable[str], jobs: int) -> None:
    """The destination's locators of the walk's new leaves: a killed sync may have
    written some (with the packs they name). A damaged one counts as absent: the copy
    writes it again, since no reader reaches its leaf yet."""

    def read(leaf: str) -> None:
        try:
            dst.packs.locator(leaf)
        except CorruptError as exc:
            log.warning("sync: %s; writing it again", exc.message)
            dst.packs.remember(leaf, None)

    todo = list(leaves)
    if todo:
        with ThreadPoolExecutor(min(jobs, len(todo))) as pool:
            list(pool.map(read, todo))


def planned_bytes(src: Repository, objs: list[CopyItem], jobs: int) -> int | None:
    """Bytes the plan would copy: known sizes, else the source's HEAD (None if unknown)."""
    unknown = [o for o in objs if o.size is None and o.data is None and o.make is None]

    def size(o: CopyItem) -> int | None:
        where = src.packs.location(o.key)
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


def sources_elsewhere(
    src: Repository, keys: list[str], config: Any = None
) -> tuple[list[str], dict[str, list[str]]]:
    """Where source files ``src`` lacks are: ``(the sites checked, key → the ones holding
    it)``. Checked, as readers look for sources: the same path at every other site of
    the configuration (``config``, else the loaded one), in preference order; none when
    ``src`` is not under a configured site. A site that cannot be asked counts as not
    holding them."""
    from hyperslab.config import load_config
    from hyperslab.storage.opening import site_from_config

    try:
        cfg = config if config is not None else load_config()
        bases = [(sc, site_from_config(sc).url.rstrip("/")) for sc in cfg.sites.values()]
    except HyperslabError:
        return [], {}
    url = src.site.url.rstrip("/")
    under = [(sc, b) for sc, b in bases if url.startswith(b + "/")]
    if not under:
        return [], {}
    here = max(under, key=lambda m: len(m[1]))  # the innermost configured site
    path = url[len(here[1]) + 1 :]
    order = list(cfg.preference) or list(cfg.sites)
    order += [n for n in cfg.sites if n not in order]
    checked: list[str] = []
    held: dict[str, list[str]] = {}
    for name in order:
        if name == here[0].name:
            continue
        checked.append(name)
        try:
            site = site_from_config(cfg.sites[name], path)
        except HyperslabError:
            continue

        def has(key: str, site: Any = site) -> bool:
            try:
                return bool(site.exists(key))
            except HyperslabError:
                return False

        with ThreadPoolExecutor(min(16, len(keys))) as pool:
            for key, found in zip(keys, pool.map(has, keys), strict=True):
                if found:
                    held.setdefault(key, []).append(name)
    return checked, held
