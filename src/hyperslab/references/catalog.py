"""The metadata catalog: what each entry records for search, and the query language.

Every entry carries a flat *catalog record* (``key → scalar or list``) in the
snapshot's entry tree, next to its id, so a search reads only the tree's leaves
(a few hundred objects for 10^5 entries, fetched concurrently) and never the
entry records or refmaps. The record holds:

* ``name`` (the entry name), ``files`` (source file names), ``arrays`` (count),
  ``materialised`` (count of arrays not referenced in place);
* the NeXus metadata found at ingest: ``title``, ``start_time``, ``end_time``,
  ``sample``, ``sample_temperature``, ``instrument``, ``beamline``, ``source``,
  ``detector``, ``energy``, ``wavelength``, ``definition`` (with ``*_units``),
  ``signal``, ``signal_shape``, ``signal_dtype``, ``axes``;
* the root group's scalar attributes (``file_name``, ``creator``, ...), as ``@name``.

Query language (all terms must hold; keys are case-insensitive)::

    sample=Si                 equal (numbers compare as numbers; strings ignore case)
    sample=Si|Ge              any of several values
    energy>10  energy<=12.5   numeric comparison (ISO times compare as text:
                              start_time>=2026-01-01)
    title~"*scan*"            glob match, case-insensitive (no wildcard: substring)
    sample!=Si  title!~dark   negations (true when the key is missing)
    name~run42/*              the entry name is the key ``name``
    @creator~*pilatus*        root attributes are ``@<attr>``
    insulin                   a bare word: any value or the name contains it
    -dark                     a leading '-' negates a bare word

Values with spaces go in double quotes: ``sample="insulin crystal 7"``. A list value
(``axes``, ``signal_shape``, ``files``) matches when any element does.
"""

from __future__ import annotations

import fnmatch
import math
import re
import shlex
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from hyperslab.errors import BadInputError

__all__ = ["Query", "QuerySyntaxError", "entry_catalog", "parse_query"]

_MAX_TEXT = 256
_OPS = ("!=", ">=", "<=", "!~", "=", ">", "<", "~")
_TERM = re.compile(r"^(?P<key>[A-Za-z0-9_.@/:\-]+?)(?P<op>!=|>=|<=|!~|=|>|<|~)(?P<value>.*)$", re.S)


class QuerySyntaxError(BadInputError):
    code = "bad_query"


def _scalar(v: Any) -> Any:
    if isinstance(v, bool) or v is None:
        return v
    if isinstance(v, int | str):
        return v if not isinstance(v, str) or len(v) <= _MAX_TEXT else v[:_MAX_TEXT]
    if isinstance(v, float):
        return v if math.isfinite(v) else str(v)
    return None


def _value(v: Any) -> Any:
    if isinstance(v, list):
        items = [_scalar(x) for x in v[:64]]
        return [x for x in items if x is not None] or None
    return _scalar(v)


def entry_catalog(
    name: str,
    root_attrs: Mapping[str, Any],
    *,
    files: Iterable[str],
    n_arrays: int,
    n_materialised: int,
) -> dict[str, Any]:
    """The catalog record of one entry (small, flat, JSON-safe)."""
    out: dict[str, Any] = {
        "name": name,
        "files": sorted(set(files)),
        "arrays": n_arrays,
        "materialised": n_materialised,
    }
    meta = root_attrs.get("hyperslab")
    nexus = meta.get("nexus") if isinstance(meta, Mapping) else None
    for key, v in (nexus or {}).items():
        val = _value(v)
        if val is not None and key not in out:
            out[str(key)] = val
    for key, v in root_attrs.items():
        if key == "hyperslab" or key.startswith("_"):
            continue
        val = _value(v)
        if val is not None:
            out[f"@{key}"] = val
    return out


# --------------------------------------------------------------------- queries


def _num(text: Any) -> float | None:
    if isinstance(text, bool):
        return None
    if isinstance(text, int | float):
        return float(text)
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def _glob(pattern: str) -> Callable[[str], bool]:
    pat = pattern.lower()
    if not any(c in pat for c in "*?["):
        return lambda s: pat in s
    rx = re.compile(fnmatch.translate(pat), re.S)
    return lambda s: rx.match(s) is not None


def _text_glob(pattern: str) -> Callable[[Any], bool]:
    g = _glob(pattern)

    def test(v: Any) -> bool:
        return isinstance(v, str) and g(v.lower())

    return test


def _any_glob(pattern: str) -> Callable[[Any], bool]:
    g = _glob(pattern)

    def test(v: Any) -> bool:
        return g(str(v).lower())

    return test


def _equal_one(opt: str) -> Callable[[Any], bool]:
    if any(c in opt for c in "*?["):
        return _text_glob(opt)
    n = _num(opt)
    low = opt.lower()

    def test(v: Any) -> bool:
        if n is not None and (x := _num(v)) is not None:
            return x == n
        return str(v).lower() == low

    return test


def _equals(value: str) -> Callable[[Any], bool]:
    tests = [_equal_one(opt) for opt in value.split("|")]
    if len(tests) == 1:
        return tests[0]
    return lambda v: any(t(v) for t in tests)


def _compare(op: str, value: str) -> Callable[[Any], bool]:
    n = _num(value)
    cmp: dict[str, Callable[[Any, Any], bool]] = {
        ">": lambda a, b: a > b,
        ">=": lambda a, b: a >= b,
        "<": lambda a, b: a < b,
        "<=": lambda a, b: a <= b,
    }
    f = cmp[op]
    if n is not None:
        return lambda v: (x := _num(v)) is not None and f(x, n)
    low = value.lower()
    return lambda v: isinstance(v, str) and f(v.lower(), low)


@dataclass(frozen=True)
class _Term:
    key: str | None  # None: a bare word over every value
    negate: bool
    test: Callable[[Any], bool]
    text: str

    def holds(self, record: Mapping[str, Any], lowered: Mapping[str, str]) -> bool:
        if self.key is None:
            found = any(_any(self.test, v) for v in record.values())
            return found != self.negate
        actual = lowered.get(self.key)
        if actual is None:
            return self.negate
        return _any(self.test, record[actual]) != self.negate


def _any(test: Callable[[Any], bool], v: Any) -> bool:
    if isinstance(v, list):
        return any(test(x) for x in v)
    return test(v)


@dataclass(frozen=True)
class Query:
    terms: tuple[_Term, ...]
    text: str

    def matches(self, record: Mapping[str, Any]) -> bool:
        lowered = {k.lower(): k for k in record}
        return all(t.holds(record, lowered) for t in self.terms)


def parse_query(text: str) -> Query:
    """Parse the filter language described in the module docstring."""
    try:
        words = shlex.split(text, posix=True)
    except ValueError as exc:
        raise QuerySyntaxError(f"bad query {text!r}: {exc}") from exc
    terms: list[_Term] = []
    for word in words:
        m = _TERM.match(word)
        if m is None:
            negate = word.startswith("-") and len(word) > 1
            body = word[1:] if negate else word
            if any(body.startswith(op) or body.endswith(op) for op in _OPS):
                raise QuerySyntaxError(
                    f"bad query term {word!r}: expected KEY OP VALUE with OP one of "
                    + " ".join(_OPS)
                )
            terms.append(_Term(None, negate, _text_glob(body), word))
            continue
        key, op, value = m.group("key").lower(), m.group("op"), m.group("value")
        if value == "" and op not in ("=", "!="):
            raise QuerySyntaxError(f"bad query term {word!r}: {op} needs a value")
        negate = op.startswith("!")
        if op in ("=", "!="):
            test = _equals(value)
        elif op in ("~", "!~"):
            test = _any_glob(value)
        else:
            test = _compare(op, value)
        terms.append(_Term(key, negate, test, word))
    return Query(tuple(terms), text)
