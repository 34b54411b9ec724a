"""``hyperslab upgrade``: move a repository to the newest format, in place.

A repository keeps the format it was created with (``repo.json``'s ``version``), and
each format's commits cost what they cost then: a format 1 or 2 repository stores
its tree nodes as plain JSON and writes a catalog index for every leaf, about 3-4x
the bytes a format 3 commit sends (see :mod:`hyperslab.references.format`).

Upgrading changes one object, ``repo.json``, by compare-and-swap on its etag, so two
upgrades at once (or an upgrade racing anything else that rewrites it) cannot both
win. Nothing already stored is rewritten: every object's id is the hash of its
bytes, and snapshots, tags and branch histories name the objects they hold, so the
history stays byte for byte what it was. Readers of the new format read the old
objects as they are (plain and compressed nodes alike); from the next commit on,
the nodes a commit writes are compressed and small leaves get no catalog index.

A format 1 repository keeps its 1,024-entry leaves (``leaf_max`` is a property of
the tree already written, not of the format). Versions of hyperslab older than the
new format refuse the repository by its version number once it is upgraded, so
upgrade once every reader and writer runs a version that reads it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from hyperslab.errors import ConflictError, NotFoundError
from hyperslab.references.format import FORMAT_VERSION
from hyperslab.references.keys import REPO_KEY
from hyperslab.references.repository import Repository

__all__ = ["UpgradeResult", "upgrade"]


@dataclass(frozen=True)
class UpgradeResult:
    """What :func:`upgrade` did: the format before and after (equal: nothing to do)."""

    repo: str
    before: int
    after: int
    dry_run: bool = False

    @property
    def changed(self) -> bool:
        """Whether ``repo.json`` was rewritten (never on a dry run)."""
        return self.after != self.before and not self.dry_run

    @property
    def needed(self) -> bool:
        """Whether the repository was (or, on a dry run, would be) below the newest format."""
        return self.after != self.before

    def to_json(self) -> dict[str, Any]:
        return {
            "repo": self.repo,
            "from": self.before,
            "to": self.after,
            "changed": self.changed,
            "dry_run": self.dry_run,
        }


def upgrade(repo: Repository, *, dry_run: bool = False) -> UpgradeResult:
    """Move ``repo`` to format :data:`~hyperslab.references.format.FORMAT_VERSION`
    (nothing to do if it is there already). ``repo.json`` gains the new version and
    an ``upgraded`` list (from, to, time) and is replaced by compare-and-swap; a
    ConflictError if it changed since it was read. ``dry_run``: say what would be
    done, change nothing. Like a commit, it needs a site with conditional writes
    (unless the repository is single-writer)."""
    repo.check_writable()
    try:
        raw, etag = repo.site.get_with_etag(REPO_KEY)
    except NotFoundError:
        raise NotFoundError(f"{repo.display} has no {REPO_KEY}", repo=repo.display) from None
    info = json.loads(raw)  # Repository.open checked it
    before = int(info.get("version", 1))
    if before >= FORMAT_VERSION or dry_run:
        return UpgradeResult(repo.display, before, max(before, FORMAT_VERSION), dry_run)
    history = list(info.get("upgraded") or [])
    history.append(
        {
            "from": before,
            "to": FORMAT_VERSION,
            "time": datetime.now(UTC).isoformat(timespec="seconds"),
        }
    )
    new = dict(info, version=FORMAT_VERSION, upgraded=history)
    try:
        repo.site.put_if_match(REPO_KEY, json.dumps(new, indent=2).encode(), etag)
    except ConflictError:
        raise ConflictError(
            f"{repo.display}/{REPO_KEY} changed while it was being upgraded (another "
            "upgrade?); run the command again",
            repo=repo.display,
        ) from None
    repo.info = new
    return UpgradeResult(repo.display, before, FORMAT_VERSION)
