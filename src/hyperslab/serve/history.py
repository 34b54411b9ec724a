"""What a restricted key (one limited to some entries, :mod:`.keys`) may learn from the
listings of ``hyperslab serve``: refs, the log, and error messages.

A repository's history is shared by every entry in it, and its free text (snapshot
messages, branch and tag names) is written by people who see all of them: a message
such as ``ingest run43/scan_0002`` names an entry a key limited to ``run42/*`` must not
see. Neither Tiled nor HSDS has a history to filter (their access policies filter the
node tree and the domains, which :mod:`.app` does for entries and
search), so this is our rule, stated once:

* **log** (:func:`visible_log`): only the snapshots that added, changed or removed an
  entry the key may read (against their first parent), with ``changes`` counting and
  naming those entries only. The committer's ``message`` and ``author`` are kept when
  every entry the snapshot changed is one the key may read (the message was written
  about those); otherwise both are withheld (``null``) and the snapshot says
  ``"withheld": true``. ``parents`` and the total entry count (both about other work)
  are left out. A request looks at most :data:`LOG_SCAN` snapshots back (``complete``
  says whether it reached the first).
* **branches and tags** (:func:`visible_refs`): only the names the key's ``refs`` globs
  allow (``main`` unless its keys-file line says otherwise); a ref may be read through
  (``?ref=``) only if listed, or as a snapshot id (a content hash, which names nothing).
* **errors** (:func:`quiet`): "did you mean" hints, which list branch, tag, entry or
  catalog key names, are cut from messages; an unknown ref or entry is reported alike
  whether it is hidden or absent.

Keys with every entry (and anonymous reads, when allowed) see the repository as it is.
"""

from __future__ import annotations

import re
from typing import Any

from hyperslab.errors import NotFoundError
from hyperslab.references.keys import is_object_id
from hyperslab.references.repository import Repository, Snapshot
from hyperslab.serve.keys import Grant

__all__ = ["LOG_SCAN", "changed_entries", "check_ref", "quiet", "visible_log", "visible_refs"]

#: the most snapshots one /api/log request of a restricted key looks through
LOG_SCAN = 5000
_KINDS = ("added", "modified", "removed")
_HINT = re.compile(r" \((did you mean .*\?|[a-z ]+: .*)\)$", re.DOTALL)


def quiet(message: str) -> str:
    """``message`` without a trailing "did you mean" hint (or list of known names)."""
    return _HINT.sub("", message)


def visible_refs(refs: dict[str, str], grant: Grant) -> dict[str, str]:
    """The branches or tags of ``refs`` (name → snapshot id) that ``grant`` may see."""
    return {name: sid for name, sid in refs.items() if grant.allows_ref(name)}


def check_ref(ref: str, grant: Grant) -> None:
    """Refuse ``ref`` (a ``?ref=``) as if it did not exist unless it is a snapshot id or
    a branch or tag the grant may see (``~N`` suffixes allowed)."""
    base = ref.partition("~")[0]
    if grant.refs is None or is_object_id(base) or grant.allows_ref(base):
        return
    raise NotFoundError(f"{ref!r} is not a branch, tag or snapshot this key may read", ref=ref)


def changed_entries(repo: Repository, snap: Snapshot) -> dict[str, str]:
    """Every entry ``snap`` changed against its first parent: name → added, modified or
    removed (from the snapshot's own summary when it names them all, else a tree diff)."""
    summary = snap.changes
    names = {k: summary.get(f"{k}_names") or [] for k in _KINDS}
    if summary and all(int(summary.get(k, 0)) == len(names[k]) for k in _KINDS):
        return {n: k for k in _KINDS for n in names[k]}
    parent = repo.snapshot(snap.parents[0]).tree if snap.parents else None
    out = {}
    for name, (before, after) in repo.tree.diff(parent, snap.tree).items():
        out[name] = "added" if before is None else "removed" if after is None else "modified"
    return out


def _shown(snap: Snapshot, visible: dict[str, str], every: bool) -> dict[str, Any]:
    changes: dict[str, Any] = {}
    for kind in _KINDS:
        names = sorted(n for n, k in visible.items() if k == kind)
        if names:
            changes[kind] = len(names)
            changes[f"{kind}_names"] = names
    return {
        "id": snap.id,
        "time": snap.time,
        "author": snap.author if every else None,
        "message": snap.message if every else None,
        "withheld": not every,
        "changes": changes,
    }


def visible_log(
    repo: Repository, sid: str, grant: Grant, limit: int, scan: int = LOG_SCAN
) -> tuple[list[dict[str, Any]], bool]:
    """``(snapshots, complete)``: up to ``limit`` snapshots from ``sid`` back along
    first parents as ``grant`` may see them (the module's rule; all of them, as
    :meth:`Snapshot.to_json`, for an unrestricted grant); ``complete`` is False when
    ``scan`` snapshots were looked at before the history or ``limit`` ran out."""
    if not grant.restricted:
        return [s.to_json() for s in repo.log(sid, limit=limit)], True
    out: list[dict[str, Any]] = []
    for looked, snap in enumerate(repo.log(sid)):
        if len(out) >= limit:
            return out, True
        if looked >= scan:
            return out, False
        changed = changed_entries(repo, snap)
        visible = {n: k for n, k in changed.items() if grant.allows(n)}
        if visible:
            out.append(_shown(snap, visible, len(visible) == len(changed)))
    return out, True
