"""``hyperslab sync``: make a destination repository hold what the source's refs reach.

The protocol, in the order it runs:

1. **Refs.** Read the selected branches (and tags) at both sites. Equal heads need
   nothing more, so a sync of an unchanged repository costs a constant handful of
   requests whatever its size. A destination head the source's history does not
   contain is a conflict (both heads named; nothing is written) unless ``force``; a
   destination that is *ahead* is left alone (sync never moves a branch backwards).
2. **Plan.** Walk the source snapshots from each new head back to the destination's
   head, and diff each snapshot's entry tree against its parent's: identical subtrees
   have identical ids, so only what changed is read (a Merkle diff, linear in the
   change). Every object found is a candidate; the destination is asked which it
   lacks (HEAD per object, or one listing per prefix when the destination has
   nothing of this ref yet). ``dry_run`` stops here.
3. **Copy**, bottom-up, with bounded concurrency: sources, refmaps, checksums and
   hot-chunk packs, then replica indexes, then entries, catalogs, tree nodes and
   snapshots. Every object read from the source is checked against its name (sha256)
   before it is sent, and every upload is verified at the destination (S3: Content-MD5
   and the ETag; files: read back). An object that fails is reported and the refs
   are not moved.
4. **Move refs** last, by compare-and-swap: a branch only fast-forwards; a tag is
   only created. Two syncs racing to one destination both end consistent: the loser
   of the CAS re-reads the head and is done if it is already there or ahead.

Nothing is ever deleted at the destination. A sync killed anywhere leaves only
unreachable objects, and re-running it copies only what is still missing.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from hyperslab.errors import BadInputError
from hyperslab.references.repository import Repository
from hyperslab.storage import Site
from hyperslab.sync.hot_copy import plan_hot
from hyperslab.sync.hot_rules import HotRules
from hyperslab.sync.packing import Packing, plan_tally
from hyperslab.sync.plan import Walker
from hyperslab.sync.presence import (
    missing_at,
    planned_bytes,
    read_locators,
    sources_elsewhere,
)
from hyperslab.sync.refs import (
    check_repositories,
    create_repository,
    move_ref,
    open_destination,
    plan_refs,
)
from hyperslab.sync.report import Progress, SyncFailedError, SyncReport
from hyperslab.sync.transfer import RateLimiter, copy_all

__all__ = ["sync"]


def sync(
    src: str | Site | Repository,
    dst: str | Site | Repository,
    *,
    branches: Sequence[str] | None = None,
    all_branches: bool = False,
    tags: bool | Sequence[str] = False,
    hot: HotRules | None = None,
    stats: Any = None,
    sources: bool = False,
    dry_run: bool = False,
    force: bool = False,
    pack: bool = True,
    jobs: int = 16,
    bwlimit: int | None = None,
    progress: Progress | None = None,
    config: Any = None,
) -> SyncReport:
    """Copy what ``dst`` lacks of the selected refs of ``src``, verified; then move refs.

    ``branches``: names to sync (default ``["main"]``); ``all_branches``: every source
    branch; ``tags``: every source tag too (True) or the named ones. ``hot``: hot-chunk
    rules (with ``stats``, an :class:`~hyperslab.reading.access_stats.AccessStats`, for
    ``[[used]]`` rules).
    ``sources``: copy the raw source files as well. ``pack``: store the entry records,
    refmaps and checksums the destination lacks in one pack per entry-tree leaf
    (:mod:`~hyperslab.references.object_packs`) rather than one object each. ``force``: move a diverged
    destination branch to the source's head (the destination's own commits become
    unreachable there; nothing is deleted). Raises :class:`DivergedError` (nothing
    written), :class:`SyncFailedError` (some objects failed, refs not moved) or the
    site's error when a site is unreachable.
    """
    t0 = time.perf_counter()
    if jobs < 1:
        raise BadInputError(f"jobs must be at least 1, got {jobs}")
    src = src if isinstance(src, Repository) else Repository.open(src, config=config)
    dst = open_destination(dst, config)
    if src.site.url == dst.site.url:
        raise BadInputError(f"source and destination are the same place ({src.display})")
    report = SyncReport(src.display, dst.display, dry_run=dry_run)
    fresh_dst = check_repositories(src, dst)
    report.refs = plan_refs(src, dst, branches, all_branches, tags, fresh_dst)
    diverged = [u for u in report.refs if u.status == "diverged"]
    tags_differ = [u for u in diverged if u.kind == "tag"]
    if tags_differ:  # refused before anything is copied, --force or not
        u = tags_differ[0]
        raise u.diverged(
            f"tag {u.name!r} at {dst.display} names {(u.destination or '')[:12]}…, the "
            f"source's names {u.source[:12]}…; tags never move, not even with --force, "
            "so nothing was copied. Delete one of them, or leave the tag out (--tags NAME…)"
        )
    if diverged and not force:
        u = diverged[0]
        raise u.diverged(
            f"{u.kind} {u.name!r} has diverged: the destination is at {(u.destination or '')[:12]}… "
            f"({dst.display}), which the source's history ({u.source[:12]}… at "
            f"{src.display}) does not contain; nothing was copied. Reconcile the two, or "
            "pass --force to move the destination to the source's head"
        )
    for u in diverged:
        u.status = "forced"
    walker = Walker(src, sources)
    for u in report.refs:
        if u.moves:
            walker.add_chain(u.chain)
    objs = walker.objects()
    hot_objs, marker = plan_hot(src, dst, report, hot, stats) if hot else ([], None)
    all_objs = objs + hot_objs
    report.candidates = len(all_objs)
    if fresh_dst:
        # no repo.json there: not even a killed sync of ours wrote anything (it writes
        # repo.json first), so everything is missing and asking would only cost requests
        missing = list(all_objs)
    else:
        fresh = all(u.destination is None for u in report.refs)
        read_locators(dst, walker.leaves, jobs)
        missing = missing_at(dst, all_objs, fresh, jobs)
    report.present = len(all_objs) - len(missing)
    packing = Packing(walker, dst, fresh_dst, pack, missing, jobs)
    plan_tally(report.plan, missing)
    if dry_run:
        report.plan.bytes = planned_bytes(src, missing, jobs)
        report.seconds = time.perf_counter() - t0
        return report
    if fresh_dst:
        create_repository(src, dst)
    if any(u.moves for u in report.refs) or missing or marker:
        dst.check_writable()
    copy_all(src, dst, missing, report, jobs, RateLimiter(bwlimit), progress, packing)
    if report.sources_absent:  # say where they are, so the report says what happened
        report.sources_absent.sort()  # found by parallel copies: in any order
        report.sources_sites_checked, report.sources_held = sources_elsewhere(
            src, report.sources_absent, config
        )
    if report.failures:
        report.seconds = time.perf_counter() - t0
        first = report.failures[0]
        raise SyncFailedError(
            f"{len(report.failures)} object(s) could not be copied, so no ref was moved "
            f"(first: {first['key']}: {first['error']}); re-run sync to finish",
            failures=report.failures[:100],
        )
    for u in report.refs:
        if u.moves:
            move_ref(src, dst, u)
    if marker is not None:
        dst.site.put(marker[0], marker[1])
    report.seconds = time.perf_counter() - t0
    return report
