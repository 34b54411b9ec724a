"""The refs of a sync: where each selected branch and tag stands at both sites, the
source history a destination lacks, and moving the destination's refs at the end.

Branches only fast-forward, by compare-and-swap
(:meth:`~hyperslab.references.refs.Refs.move_branch`, the same move commits make);
a destination that is ahead is left alone; one with commits the source lacks is a
conflict unless forced. Tags are only created.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Sequence, Set
from itertools import islice
from typing import Any

from hyperslab.errors import ConflictError, NotFoundError
from hyperslab.references.keys import REPO_KEY
from hyperslab.references.repository import Repository
from hyperslab.storage import Site
from hyperslab.sync.report import DivergedError, RefUpdate, RepositoryMismatchError

__all__ = [
    "check_repositories",
    "create_repository",
    "history",
    "is_ancestor",
    "move_ref",
    "open_destination",
    "plan_refs",
    "reaches",
]


def check_repositories(src: Repository, dst: Repository) -> bool:
    """True if ``dst`` has no repository yet (sync creates it); error if it is another."""
    if not dst.info:
        return True
    if dst.id != src.id:
        raise RepositoryMismatchError(
            f"{dst.display} is a different repository (id {dst.id}) from {src.display} "
            f"(id {src.id}); sync copies between replicas of one repository: sync into an "
            "empty location instead",
            source_id=src.id,
            destination_id=dst.id,
        )
    return False


def create_repository(src: Repository, dst: Repository) -> None:
    """The destination becomes a replica: the same ``repo.json`` (id, format, writers)."""
    try:
        dst.site.put_if_absent(REPO_KEY, src.site.get(REPO_KEY))
    except ConflictError:
        info = Repository.open(dst.site).info  # another sync created it meanwhile
        if info.get("id") != src.id:
            raise RepositoryMismatchError(
                f"{dst.display} became a different repository during the sync"
            ) from None
    dst.info = dict(src.info)
    dst.id = src.id
    dst.single_writer = src.single_writer


def open_destination(spec: str | Site | Repository, config: Any = None) -> Repository:
    """The destination repository, or an empty one there (``info`` empty) for sync to create."""
    if isinstance(spec, Repository):
        return spec
    return Repository.open(spec, config=config, missing_ok=True)


def plan_refs(
    src: Repository,
    dst: Repository,
    branches: Sequence[str] | None,
    all_branches: bool,
    tags: bool | Sequence[str],
    fresh_dst: bool,
) -> list[RefUpdate]:
    wanted: list[tuple[str, str, str]] = []  # kind, name, source head
    if all_branches:
        wanted += [("branch", n, sid) for n, sid in src.branches().items()]
    else:
        for name in branches if branches is not None else ["main"]:
            wanted.append(("branch", name, src.branch_head(name)[0]))
    if tags is True:
        wanted += [("tag", n, sid) for n, sid in src.tags().items()]
    elif tags:
        have = src.tags()
        for name in tags:
            if name not in have:
                raise NotFoundError(
                    f"no tag {name!r} in {src.display} (tags: {', '.join(have) or 'none'})",
                    tag=name,
                )
            wanted.append(("tag", name, have[name]))
    updates: list[RefUpdate] = []
    known_at_dst: set[str] = set()
    for kind, name, sid in wanted:
        head, etag = (None, None) if fresh_dst else dst.refs.head(kind, name)
        u = RefUpdate(kind, name, sid, head, "up-to-date", etag)
        if head is not None:
            known_at_dst.add(head)
        updates.append(u)
    others: set[str] | None = None
    for u in updates:
        if u.destination == u.source:
            continue
        if u.destination is None:
            if others is None and not fresh_dst:
                # a new ref usually shares history with refs the destination has
                others = set(dst.branches().values()) | set(dst.tags().values())
            u.chain = list(history(src, u.source, known_at_dst | (others or set())))
            u.status = "create"
            continue
        if u.kind == "tag":
            u.status = "diverged"  # tags never move
            u.chain = list(history(src, u.source, known_at_dst))
            continue
        chain = list(history(src, u.source, known_at_dst | {u.destination}))
        if reaches(src, chain, u.destination):
            u.chain = chain
            u.status = "fast-forward"
        elif is_ancestor(dst, u.source, u.destination):
            u.status = "ahead"
        else:
            u.chain = chain
            u.status = "diverged"
    return updates


def history(
    repo: Repository, head: str, stop: Set[str] = frozenset(), *, missing_ok: bool = False
) -> Iterator[str]:
    """Snapshot ids from ``head`` back through parents, breadth first, each once; ids in
    ``stop`` are neither yielded nor walked past. ``missing_ok``: a snapshot that cannot
    be found ends that line of history instead of raising."""
    seen: set[str] = set()
    todo = deque([head])
    while todo:
        sid = todo.popleft()
        if sid in seen or sid in stop:
            continue
        seen.add(sid)
        yield sid
        try:
            todo.extend(repo.snapshot(sid).parents)
        except NotFoundError:
            if not missing_ok:
                raise


def reaches(repo: Repository, chain: list[str], target: str) -> bool:
    """Whether a snapshot of ``chain`` has ``target`` as a parent (snapshots are cached)."""
    return any(target in repo.snapshot(sid).parents for sid in chain)


def is_ancestor(repo: Repository, ancestor: str, head: str, limit: int = 100_000) -> bool:
    walk = islice(history(repo, head, missing_ok=True), limit)
    return any(sid == ancestor for sid in walk)


def move_ref(src: Repository, dst: Repository, u: RefUpdate) -> None:
    """Move ``u`` at the destination: a tag is created (it never moves); a branch is
    compare-and-swapped forward, re-read and judged again when someone else moved it."""
    if u.kind == "tag":
        now = dst.refs.create_tag(u.name, src.refs.tag_object(u.name))  # message, author too
        if now is not None and now != u.source:
            raise DivergedError(
                f"tag {u.name!r} at {dst.display} names {now[:12]}…, the source's "
                f"{u.source[:12]}…; tags never move",
                name=u.name,
                source_head=u.source,
                destination_head=now,
            )
        return
    etag = u.etag
    for attempt in range(1, 21):
        move = dst.refs.move_branch(u.name, u.source, etag, attempt=attempt)
        if move.moved:
            return
        now, etag = move.head, move.etag
        if now is not None and is_ancestor(dst, u.source, now):
            u.status = "ahead"
            return  # another sync got there first and the destination moved on
        if now is not None and not is_ancestor(src, now, u.source):
            raise DivergedError(
                f"branch {u.name!r} at {dst.display} moved to {now[:12]}… during the sync, "
                f"which the source's history does not contain; the copied objects stay, the "
                "branch was not moved",
                name=u.name,
                source_head=u.source,
                destination_head=now,
            )
    raise ConflictError(f"branch {u.name!r} at {dst.display} kept changing; re-run sync")
