"""Which chunks to make local at a destination: rules (TOML) and access statistics.

A rules file (``hyperslab sync --hot hot.toml``)::

    max_bytes = "50GB"             # optional cap over everything selected below

    [[rule]]                       # by position
    entries = "run42/*"            # glob over entry names (default "*"; "*" matches "/")
    arrays = "entry/data/data"     # glob over array paths (default "*")
    frames = "-10:"                # optional slice over the first axis, Python syntax:
                                   # "-100:" the last 100 frames, "::10" every 10th,
                                   # "0:50" the first 50; default: every chunk
    max_bytes = "2GB"              # optional cap for this rule

    [[used]]                       # by use: chunks read often on this machine
    entries = "*"                  # (hyperslab stats show; HYPERSLAB_ACCESS_STATS)
    arrays = "*"
    min_reads = 3                  # read at least this often ...
    days = 7                       # ... in the last 7 days (default: ever)
    max_bytes = "10GB"

Chunks are taken rule by rule (within a rule: entry, array, chunk order; by use:
most read first) until a cap is reached. Inline chunks live in the reference map and
need no replica.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hyperslab.config import parse_size, read_toml
from hyperslab.errors import ConfigError, HyperslabError

__all__ = ["HotChunk", "HotRule", "HotRules", "UsedRule", "select_hot"]

_SLICE = re.compile(r"^\s*(-?\d+)?\s*:\s*(-?\d+)?\s*(?::\s*(-?\d+)?\s*)?$")


@dataclass(frozen=True)
class HotRule:
    entries: str = "*"
    arrays: str = "*"
    frames: str | None = None  # slice text, checked at load
    max_bytes: int | None = None

    def frame_slice(self) -> slice | None:
        return _parse_slice(self.frames) if self.frames is not None else None


@dataclass(frozen=True)
class UsedRule:
    entries: str = "*"
    arrays: str = "*"
    min_reads: int = 2
    days: int | None = None
    max_bytes: int | None = None


@dataclass(frozen=True)
class HotRules:
    rules: tuple[HotRule, ...] = ()
    used: tuple[UsedRule, ...] = ()
    max_bytes: int | None = None

    def __bool__(self) -> bool:
        return bool(self.rules or self.used)

    def to_json(self) -> dict[str, Any]:
        return {
            "max_bytes": self.max_bytes,
            "rules": [r.__dict__ for r in self.rules],
            "used": [u.__dict__ for u in self.used],
        }

    @classmethod
    def load(cls, path: str | Path) -> HotRules:
        p = Path(path)
        doc = read_toml(p, "hot-chunk rules file")
        return cls.from_dict(doc, str(p))

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any], where: str = "hot rules") -> HotRules:
        unknown = set(doc) - {"max_bytes", "rule", "used"}
        if unknown:
            raise ConfigError(f"{where}: unknown keys {sorted(unknown)} (max_bytes, rule, used)")
        rules = tuple(
            HotRule(
                entries=_glob(r, "entries", where),
                arrays=_glob(r, "arrays", where),
                frames=_frames(r, where),
                max_bytes=_size(r.get("max_bytes"), where),
            )
            for r in _tables(doc, "rule", where, {"entries", "arrays", "frames", "max_bytes"})
        )
        used = tuple(
            UsedRule(
                entries=_glob(u, "entries", where),
                arrays=_glob(u, "arrays", where),
                min_reads=_positive(u.get("min_reads", 2), "min_reads", where),
                days=_positive(u["days"], "days", where) if "days" in u else None,
                max_bytes=_size(u.get("max_bytes"), where),
            )
            for u in _tables(
                doc, "used", where, {"entries", "arrays", "min_reads", "days", "max_bytes"}
            )
        )
        out = cls(rules, used, _size(doc.get("max_bytes"), where))
        if not out:
            raise ConfigError(f"{where}: no [[rule]] or [[used]] tables: nothing would be hot")
        return out


def _tables(doc: Mapping[str, Any], name: str, where: str, keys: set[str]) -> list[dict[str, Any]]:
    tables = doc.get(name, [])
    if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
        raise ConfigError(f"{where}: {name} must be an array of tables ([[{name}]])")
    for t in tables:
        extra = set(t) - keys
        if extra:
            raise ConfigError(f"{where}: [[{name}]] has unknown keys {sorted(extra)}")
    return tables


def _glob(t: Mapping[str, Any], key: str, where: str) -> str:
    value = t.get(key, "*")
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where}: {key} must be a non-empty glob string")
    return value


def _frames(t: Mapping[str, Any], where: str) -> str | None:
    value = t.get("frames")
    if value is None:
        return None
    if not isinstance(value, str):
        raise ConfigError(f"{where}: frames must be a slice string such as '-10:' or '::10'")
    _parse_slice(value, where)
    return value


def _parse_slice(text: str, where: str = "frames") -> slice:
    m = _SLICE.match(text)
    if not m:
        raise ConfigError(f"{where}: frames {text!r} is not a slice ('-10:', '::10', '0:50')")
    start, stop, step = (int(g) if g is not None else None for g in m.groups())
    if step is not None and step <= 0:
        raise ConfigError(f"{where}: frames {text!r} needs a positive step")
    return slice(start, stop, step)


def _size(value: Any, where: str) -> int | None:
    if value is None:
        return None
    try:
        return parse_size(value)
    except HyperslabError as exc:
        raise ConfigError(f"{where}: max_bytes: {exc.message}") from None


def _positive(value: Any, key: str, where: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"{where}: {key} must be a positive integer, got {value!r}")
    return value


# ------------------------------------------------------------------- selection


@dataclass(frozen=True, order=True)
class HotChunk:
    """One referenced chunk chosen to be made local."""

    source: str
    offset: int
    length: int
    checksum: int | None = field(compare=False)
    entry: str = field(compare=False)
    key: str = field(compare=False)  # the Zarr key, for messages


class _Budget:
    def __init__(self, cap: int | None) -> None:
        self.left = cap

    def take(self, n: int) -> bool:
        if self.left is None:
            return True
        if n > self.left:
            return False
        self.left -= n
        return True


def select_hot(
    views: Mapping[str, Any],
    rules: HotRules,
    used: Mapping[str, list[tuple[str, str, int]]] | None = None,
) -> list[HotChunk]:
    from hyperslab.references.refmap import chunk_index  # numpy: only when selecting

    """The chunks ``rules`` select among ``views`` (entry name → access ``EntryView``).

    ``used``: per :class:`UsedRule` position (as a string), the ``(entry, zarr key,
    reads)`` rows the access statistics returned for it, most read first.
    """
    chosen: dict[tuple[str, int, int], HotChunk] = {}
    total = _Budget(rules.max_bytes)

    def add(view: Any, path: str, lin: int, budget: _Budget) -> bool:
        found = view.chunks.find(path, lin)
        if found is None or isinstance(found, bytes):
            return True  # never written, or inline in the reference map
        src, offset, length, crc = found
        source = view.source_ids[src] if 0 <= src < len(view.source_ids) else None
        if source is None or (source, offset, length) in chosen:
            return True
        if not budget.take(length):
            return False
        if not total.take(length):
            return False
        key = f"{path}/{_chunk_name(view, path, lin)}" if path else _chunk_name(view, path, lin)
        chosen[(source, offset, length)] = HotChunk(source, offset, length, crc, view.entry, key)
        return True

    for rule in rules.rules:
        budget = _Budget(rule.max_bytes)
        for name in sorted(views):
            if not fnmatch.fnmatchcase(name, rule.entries):
                continue
            view = views[name]
            for path in sorted(view.refmap.arrays):
                if not fnmatch.fnmatchcase(path, rule.arrays):
                    continue
                if not all(add(view, path, lin, budget) for lin in _rule_chunks(view, path, rule)):
                    break
    for k, urule in enumerate(rules.used):
        budget = _Budget(urule.max_bytes)
        for entry, zkey, _reads in (used or {}).get(str(k), []):
            view = views.get(entry)
            if view is None:
                continue
            path, _, name = zkey.rpartition("/")
            arr = view.refmap.arrays.get(path)
            if arr is None:
                continue
            try:
                lin = chunk_index(name, arr.grid, zkey)
            except HyperslabError:
                continue
            if not add(view, path, lin, budget):
                break
    return sorted(chosen.values())


def _chunk_name(view: Any, path: str, lin: int) -> str:
    import numpy as np

    grid = view.refmap.arrays[path].grid
    return ".".join(str(int(i)) for i in np.unravel_index(lin, grid)) if grid else "0"


def _rule_chunks(view: Any, path: str, rule: HotRule) -> Iterator[int]:
    import numpy as np

    indices = np.asarray(view.chunks.indices(path), np.int64)
    frames = rule.frame_slice()
    arr = view.refmap.arrays[path]
    shape, chunks = arr.zarray["shape"], arr.zarray["chunks"]
    if frames is not None and shape:
        wanted = np.arange(shape[0])[frames]
        first = np.unique(wanted // max(1, chunks[0]))
        inner = int(np.prod(arr.grid[1:])) if len(arr.grid) > 1 else 1
        indices = indices[np.isin(indices // inner, first)]
    yield from (int(i) for i in np.sort(indices))
