"""What an ML data set holds: the entries selected, and one array of each, checked.

Entries are named (``"run42/scan_0001"``), matched by shell globs (``"run42/*"``), or
found with the catalog's query language (``query="sample~insulin energy>12"``), all
in one pinned snapshot. Every selected entry must hold the array, numeric, with the
same dtype and the same shape after the first axis (samples of all entries stack);
anything else is a named error before a single chunk is read. The entry records hold
shapes, chunks and dtypes, so checking costs one small object per entry.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from hyperslab.errors import BadInputError, NotFoundError
from hyperslab.references.repository import Repository
from hyperslab.references.selection import select_entries

__all__ = ["Part", "describe_parts", "select_entries"]


@dataclass(frozen=True)
class Part:
    """One entry's array in a data set."""

    entry: str
    shape: tuple[int, ...]
    chunks: tuple[int, ...]
    dtype: str  # NumPy's string form, e.g. "<u4"
    stored: int = 0  # bytes the array's chunks take where they are stored (compressed)


def describe_parts(repo: Repository, snapshot: str, names: Sequence[str], array: str) -> list[Part]:
    """``array`` of each entry, from the entry records; named errors for an entry that
    lacks it, a non-numeric or scalar array, or entries that do not stack."""
    array = array.strip("/")
    parts: list[Part] = []
    for name in names:
        arrays = repo.entry(snapshot, name).get("arrays", {})
        info = arrays.get(array)
        if info is None:
            near = sorted(a for a in arrays if a.rsplit("/", 1)[-1] == array.rsplit("/", 1)[-1])
            raise NotFoundError(
                f"entry {name!r} has no array {array!r}"
                + (f" (did you mean {', '.join(near)}?)" if near else f" ({len(arrays)} arrays)"),
                entry=name,
                array=array,
            )
        dtype = np.dtype(info["dtype"])
        if dtype.kind not in "biufc":
            raise BadInputError(
                f"array {array!r} of entry {name!r} holds {dtype} values: ML samples must be "
                "numbers (bool, integer, float or complex)",
                entry=name,
                array=array,
            )
        shape = tuple(int(n) for n in info["shape"])
        if not shape:
            raise BadInputError(
                f"array {array!r} of entry {name!r} is a scalar: samples are slices along "
                "its first axis",
                entry=name,
            )
        chunks = tuple(int(c) for c in info["chunks"])
        parts.append(Part(name, shape, chunks, dtype.str, int(info.get("bytes") or 0)))
    first = parts[0]
    for p in parts[1:]:
        if p.dtype != first.dtype or p.shape[1:] != first.shape[1:]:
            raise BadInputError(
                f"entries {first.entry!r} and {p.entry!r} do not stack: {array!r} is "
                f"{first.dtype} {first.shape} in one and {p.dtype} {p.shape} in the other "
                "(dtype and every axis but the first must agree)",
                entries=[first.entry, p.entry],
            )
    return parts
