"""Branches and tags: the only mutable objects of a repository, and the one way to move them.

A branch is ``refs/branches/<name>`` holding ``{"snapshot": id}``; it moves only by
compare-and-swap on its etag (:meth:`Refs.move_branch`), which commits and syncs
alike use. A tag is ``refs/tags/<name>`` (snapshot, time, author, message); it is
created once and never moves (:meth:`Refs.create_tag`).

A compare-and-swap that fails with a transient error may or may not have happened
(a timeout after the server applied the write): :meth:`Refs.move_branch` then asks
the branch itself which, and never assumes either way.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass

from hyperslab.errors import ConflictError, CorruptError, NotFoundError, TransientError
from hyperslab.references.format import canonical_json, check_ref_name
from hyperslab.references.keys import BRANCH_PREFIX, TAG_PREFIX, is_object_id
from hyperslab.storage import Site

__all__ = ["RefMove", "Refs"]


@dataclass(frozen=True)
class RefMove:
    """The outcome of one compare-and-swap of a branch: whether it now names the new
    snapshot, and where it stands (``head``, ``etag``; None: it does not exist)."""

    moved: bool
    head: str | None
    etag: str | None


class Refs:
    """The branches and tags of the repository at ``site`` (``display`` names it)."""

    def __init__(self, site: Site, display: str) -> None:
        self.site = site
        self.display = display

    # ------------------------------------------------------------------ reading
    def read(self, key: str) -> tuple[str, str]:
        """``(snapshot id, etag)`` of the branch or tag object at ``key``."""
        data, etag = self.site.get_with_etag(key)
        try:
            sid = json.loads(data)["snapshot"]
        except (ValueError, KeyError, TypeError) as exc:
            raise CorruptError(f"{key} at {self.display} is malformed: {exc}", key=key) from exc
        if not isinstance(sid, str) or not is_object_id(sid):
            raise CorruptError(f"{key} at {self.display} does not name a snapshot", key=key)
        return sid, etag

    def head(self, kind: str, name: str) -> tuple[str | None, str | None]:
        """``(snapshot id, etag)`` of branch or tag ``name`` (``kind``), or ``(None, None)``."""
        try:
            return self.read(_prefix(kind) + name)
        except NotFoundError:
            return None, None

    def listing(self, kind: str) -> dict[str, str]:
        """Every branch (or tag) name → its snapshot id, sorted by name."""
        prefix = _prefix(kind)
        out = {}
        for key in self.site.list(prefix):
            try:
                out[key[len(prefix) :]] = self.read(key)[0]
            except NotFoundError:
                continue  # deleted while listing
        return dict(sorted(out.items()))

    def branch_head(self, name: str) -> tuple[str, str]:
        """``(snapshot id, etag)`` of branch ``name``; NotFoundError naming the others."""
        check_ref_name(name)
        try:
            return self.read(BRANCH_PREFIX + name)
        except NotFoundError:
            known = ", ".join(self.listing("branch")) or "none"
            raise NotFoundError(
                f"branch {name!r} does not exist in {self.display} (branches: {known})",
                branch=name,
            ) from None

    def tag_object(self, name: str) -> bytes:
        """The stored tag (snapshot, time, author, message), as sync copies it."""
        return self.site.get(TAG_PREFIX + name)

    # ------------------------------------------------------------------ writing
    def create_branch(self, name: str, snapshot: str) -> bool:
        """Create branch ``name`` at ``snapshot``; False if it exists already."""
        try:
            self.site.put_if_absent(BRANCH_PREFIX + name, canonical_json({"snapshot": snapshot}))
        except ConflictError:
            return False
        return True

    def delete_branch(self, name: str) -> None:
        self.site.delete(BRANCH_PREFIX + name)

    def create_tag(self, name: str, body: bytes) -> str | None:
        """Create tag ``name`` from its stored form; None when created, else the
        snapshot the existing tag names (tags never move)."""
        try:
            self.site.put_if_absent(TAG_PREFIX + name, body)
        except ConflictError:
            return self.read(TAG_PREFIX + name)[0]
        return None

    def move_branch(
        self,
        name: str,
        snapshot: str,
        expected_etag: str | None,
        *,
        attempt: int = 1,
        contention_pause: float = 0.0,
    ) -> RefMove:
        """One compare-and-swap of branch ``name`` from ``expected_etag`` (None: create
        it) to ``snapshot``.

        When the swap is refused (someone moved the branch), or its outcome is unknown
        (a transient error: it may have been applied), the branch is read again and the
        result says where it stands. Before that read: ``contention_pause`` seconds after
        a refusal (the caller's backoff), a pause growing with ``attempt`` after a
        transient error (time for the server to settle).
        """
        key = BRANCH_PREFIX + name
        try:
            new = self.site.put_if_match(key, canonical_json({"snapshot": snapshot}), expected_etag)
            return RefMove(True, snapshot, new)
        except TransientError:
            time.sleep(min(1.0, 0.05 * attempt) * (0.5 + random.random()))
        except ConflictError:
            if contention_pause > 0:
                time.sleep(contention_pause)
        head, etag = self.head("branch", name)
        return RefMove(head == snapshot, head, etag)


def _prefix(kind: str) -> str:
    if kind == "branch":
        return BRANCH_PREFIX
    if kind == "tag":
        return TAG_PREFIX
    raise ValueError(f"a ref is a branch or a tag, not {kind!r}")
