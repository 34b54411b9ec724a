"""The entries of a snapshot that names, shell globs or a catalog query select.

Shared by everything that works on many entries at once: ML data sets
(``hyperslab.ml``) and many entries as one xarray Dataset (``open_datasets``).
"""

from __future__ import annotations

from collections.abc import Sequence
from fnmatch import fnmatchcase

from hyperslab.errors import BadInputError, NotFoundError
from hyperslab.references.repository import Repository
from hyperslab.references.search import search

__all__ = ["select_entries"]


def select_entries(
    repo: Repository,
    snapshot: str,
    entries: str | Sequence[str] | None = None,
    query: str | None = None,
    *,
    purpose: str = "an ML data set",
) -> list[str]:
    """The entry names of ``snapshot`` that ``entries`` (names or globs) and ``query``
    (catalog search language) both select, sorted; every entry when both are None.

    Named errors: an entry named (not a glob) that is not there (``NotFoundError``),
    ``entries=[]``, or a selection of nothing (``BadInputError``, saying that
    ``purpose`` needs at least one)."""
    if isinstance(entries, str):
        entries = [entries]
    if entries is not None and not entries:
        raise BadInputError("entries=[] selects nothing; leave it out to take every entry")
    if query is not None:
        names = [name for name, _ in search(repo, snapshot, query)]
    else:
        names = [name for name, _ in repo.entries(snapshot)]
    if entries is not None:
        patterns = list(entries)
        chosen = [n for n in names if any(fnmatchcase(n, p) for p in patterns)]
        missing = [p for p in patterns if not any(ch in p for ch in "*?[") and p not in names]
        if missing:
            raise NotFoundError(
                f"no entr{'y' if len(missing) == 1 else 'ies'} {', '.join(map(repr, missing))} "
                f"in snapshot {snapshot[:12]} of {repo.display}"
                + (" matching the query" if query is not None else ""),
                entries=missing,
            )
        names = chosen
    if not names:
        what = " and ".join(
            x
            for x in (
                f"entries={list(entries)!r}" if entries is not None else "",
                f"query={query!r}" if query is not None else "",
            )
            if x
        )
        raise BadInputError(
            f"{what or 'the snapshot'} selects no entry of {repo.display} (snapshot "
            f"{snapshot[:12]}): {purpose} needs at least one"
        )
    return sorted(names)
