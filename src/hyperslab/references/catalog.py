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

import math
import operator
import re
import shlex
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from hyperslab.errors import BadInputError

__all__ = ["Query", "QuerySyntaxError", "Term", "as_number", "entry_catalog", "parse_query"]

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
#
# Each term compiles to a small *spec* that can test one Python value (``test``,
# the reference semantics used on JSON records) and select values of a columnar
# catalog index in one vectorised pass (``rows``, see catalog_index.py). Both
# follow the same rules, and a property test holds them together.

_STR_KIND = 0


_NUMERIC_START = frozenset("0123456789+-.iInN")


def as_number(text: Any) -> float | None:
    """The value as a number if ``float()`` reads it (bools are not numbers), else None:
    how the query language and the catalog index decide what compares as a number."""
    if isinstance(text, bool):
        return None
    if isinstance(text, int | float):
        return float(text)
    if isinstance(text, str):
        # most catalog text is not a number: skip float()'s exception when it cannot be
        head = text.lstrip()[:1]
        if not head or (head not in _NUMERIC_START and not head.isdigit()):
            return None
    try:
        return float(text)
    except (TypeError, ValueError, OverflowError):
        return None


def _glob_regex(pattern: str) -> str:
    """fnmatch-style glob → a regex body that Python's re and RE2 (Arrow) read alike."""
    out: list[str] = []
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        i += 1
        if c == "*":
            if not out or out[-1] != ".*":
                out.append(".*")
        elif c == "?":
            out.append(".")
        elif c == "[":
            j = i
            if j < n and pattern[j] == "!":
                j += 1
            if j < n and pattern[j] == "]":
                j += 1
            while j < n and pattern[j] != "]":
                j += 1
            if j >= n:
                out.append(re.escape(c))
                continue
            body, i = pattern[i:j], j + 1
            negate = body.startswith("!")
            if negate:
                body = body[1:]
            body = "".join("\\" + ch if ch in "\\[]^" else ch for ch in body)
            out.append(("[^" if negate else "[") + body + "]")
        else:
            out.append(re.escape(c))
    return "".join(out)


def _has_wildcard(pattern: str) -> bool:
    return any(c in pattern for c in "*?[")


def _check_glob(pattern: str, word: str) -> None:
    """A ``[`` that no ``]`` closes is a mistake, not a literal bracket to look for."""
    i = 0
    while (i := pattern.find("[", i)) >= 0:
        j = i + 1
        j += pattern[j : j + 1] == "!"
        j += pattern[j : j + 1] == "]"
        close = pattern.find("]", j)
        if close < 0:
            raise QuerySyntaxError(
                f"bad query term {word!r}: '[' at {i} is never closed (a set of characters "
                "is [abc] or [!abc]; a literal bracket is [[])"
            )
        i = close + 1


#: values ``<``/``>`` compare as text: ISO dates and times (2026-01-31, 2026-01-31T08:00)
_ISO_TIME = re.compile(
    r"^\d{4}-\d{2}(-\d{2}([T ]\d{2}(:\d{2}(:\d{2}(\.\d+)?)?)?)?)?([+-]\d{2}:?\d{2}|Z)?$"
)


@dataclass(frozen=True)
class _Glob:
    """Glob (or, without wildcards, substring) match on ``str(value).lower()``."""

    pattern: str  # lower-cased
    text_only: bool  # only text values can match (``=`` with a glob, bare words)

    def __post_init__(self) -> None:
        if _has_wildcard(self.pattern):
            try:
                rx = re.compile("(?s:" + _glob_regex(self.pattern) + r")\Z")
            except re.error as exc:
                raise QuerySyntaxError(f"bad pattern {self.pattern!r}: {exc}") from None
            object.__setattr__(self, "_match", lambda s: rx.match(s) is not None)
        else:
            pat = self.pattern
            object.__setattr__(self, "_match", lambda s: pat in s)

    def test(self, v: Any) -> bool:
        if self.text_only and not isinstance(v, str):
            return False
        return bool(self._match(str(v).lower()))  # type: ignore[attr-defined]

    def rows(self, cols: Any) -> Any:
        import pyarrow.compute as pc  # queries only: not imported by ingest

        pat = self.pattern
        core = pat.strip("*")
        if not _has_wildcard(core):  # 'lit', '*lit*', 'lit*', '*lit': no regex needed
            if not _has_wildcard(pat) or (pat.startswith("*") and pat.endswith("*")):
                rows = cols.lower_test(lambda a: pc.match_substring(a, core))
            elif pat.endswith("*"):
                rows = cols.lower_test(lambda a: pc.starts_with(a, core))
            else:
                rows = cols.lower_test(lambda a: pc.ends_with(a, core))
        else:
            rx = "^(?s:" + _glob_regex(pat) + r")\z"
            rows = cols.lower_test(lambda a: pc.match_substring_regex(a, rx))
        return rows & (cols.kind == _STR_KIND) if self.text_only else rows


@dataclass(frozen=True)
class _Equal:
    """``=`` one value: numbers compare as numbers, anything else as lower-case text."""

    number: float | None
    low: str

    def test(self, v: Any) -> bool:
        if self.number is not None and (x := as_number(v)) is not None:
            return x == self.number
        return str(v).lower() == self.low

    def rows(self, cols: Any) -> Any:
        import pyarrow.compute as pc  # queries only: not imported by ingest

        low = self.low
        as_text = cols.lower_test(lambda a: pc.equal(a, low))
        if self.number is None:
            return as_text
        valid = cols.num_valid
        return (valid & (cols.num == self.number)) | (~valid & as_text)


@dataclass(frozen=True)
class _AnyOf:
    options: tuple[Any, ...]

    def test(self, v: Any) -> bool:
        return any(o.test(v) for o in self.options)

    def rows(self, cols: Any) -> Any:
        out = self.options[0].rows(cols)
        for o in self.options[1:]:
            out = out | o.rows(cols)
        return out


_CMP: dict[str, Callable[[Any, Any], Any]] = {
    ">": operator.gt,
    ">=": operator.ge,
    "<": operator.lt,
    "<=": operator.le,
}
_ARROW_CMP = {">": "greater", ">=": "greater_equal", "<": "less", "<=": "less_equal"}


@dataclass(frozen=True)
class _Compare:
    """Ordering: numeric when the query value is a number, else text (ISO times)."""

    op: str
    number: float | None
    low: str

    def test(self, v: Any) -> bool:
        f = _CMP[self.op]
        if self.number is not None:
            return (x := as_number(v)) is not None and bool(f(x, self.number))
        return isinstance(v, str) and bool(f(v.lower(), self.low))

    def rows(self, cols: Any) -> Any:
        import pyarrow.compute as pc  # queries only: not imported by ingest

        if self.number is not None:
            with np.errstate(invalid="ignore"):
                return cols.num_valid & _CMP[self.op](cols.num, self.number)
        fn = getattr(pc, _ARROW_CMP[self.op])
        low = self.low
        return cols.lower_test(lambda a: fn(a, low)) & (cols.kind == _STR_KIND)


def _equals(value: str) -> Any:
    options: list[Any] = []
    for opt in value.split("|"):
        if _has_wildcard(opt):
            options.append(_Glob(opt.lower(), text_only=True))
        else:
            options.append(_Equal(as_number(opt), opt.lower()))
    return options[0] if len(options) == 1 else _AnyOf(tuple(options))


@dataclass(frozen=True)
class Term:
    """One term of a query: which key (None: any), negated or not, and its *spec*,
    which tests one value (``spec.test``) or selects rows of a catalog index
    (``spec.rows``, catalog_index.py)."""

    key: str | None  # lower-cased; None: a bare word over every value
    negate: bool
    spec: Any  # _Glob | _Equal | _AnyOf | _Compare
    text: str

    def holds(self, record: Mapping[str, Any], lowered: Mapping[str, list[str]]) -> bool:
        if self.key is None:
            values: Iterable[Any] = record.values()
        else:
            values = [record[k] for k in lowered.get(self.key, ())]
        found = any(_any(self.spec.test, v) for v in values)
        return found != self.negate


def _any(test: Callable[[Any], bool], v: Any) -> bool:
    if isinstance(v, list):
        return any(test(x) for x in v)
    return test(v)


@dataclass(frozen=True)
class Query:
    terms: tuple[Term, ...]
    text: str

    def matches(self, record: Mapping[str, Any]) -> bool:
        """Does one catalog record match? (Keys compare case-insensitively.)"""
        lowered: dict[str, list[str]] = {}
        for k in record:
            lowered.setdefault(k.lower(), []).append(k)
        return all(t.holds(record, lowered) for t in self.terms)


def parse_query(text: str) -> Query:
    """Parse the filter language described in the module docstring."""
    try:
        words = shlex.split(text, posix=True)
    except ValueError as exc:
        raise QuerySyntaxError(f"bad query {text!r}: {exc}") from exc
    terms: list[Term] = []
    for word in words:
        m = _TERM.match(word)
        if m is None:
            negate = word.startswith("-") and len(word) > 1
            body = word[1:] if negate else word
            if not body.strip() or body == "-":
                raise QuerySyntaxError(
                    f"bad query term {word!r}: nothing to look for (a leading '-' negates a "
                    "word: -dark)"
                )
            if any(body.startswith(op) or body.endswith(op) for op in _OPS):
                raise QuerySyntaxError(
                    f"bad query term {word!r}: expected KEY OP VALUE with OP one of "
                    + " ".join(_OPS)
                )
            if body == "@":
                raise QuerySyntaxError(
                    f"bad query term {word!r}: '@' needs an attribute name (@creator~*pilatus*)"
                )
            if body.startswith("@"):
                raise QuerySyntaxError(
                    f"bad query term {word!r}: {body!r} names a root attribute but says "
                    f"nothing of it (e.g. {body}~*pilatus*, or {body}!= for entries without it)"
                )
            _check_glob(body, word)
            terms.append(Term(None, negate, _Glob(body.lower(), text_only=True), word))
            continue
        key, op, value = m.group("key").lower(), m.group("op"), m.group("value")
        if value == "" and op not in ("=", "!="):
            raise QuerySyntaxError(f"bad query term {word!r}: {op} needs a value")
        if key == "@":
            raise QuerySyntaxError(f"bad query term {word!r}: '@' needs an attribute name")
        negate = op.startswith("!")
        spec: Any
        if op in ("=", "!="):
            for option in value.split("|"):
                if _has_wildcard(option):
                    _check_glob(option, word)
            spec = _equals(value)
        elif op in ("~", "!~"):
            _check_glob(value, word)
            spec = _Glob(value.lower(), text_only=False)
        else:
            number = as_number(value)
            if number is None and not _ISO_TIME.match(value):
                raise QuerySyntaxError(
                    f"bad query term {word!r}: {op} compares numbers or ISO dates and times "
                    f"(energy>12, start_time>=2026-01-31), and {value!r} is neither"
                )
            spec = _Compare(op, number, value.lower())
        terms.append(Term(key, negate, spec, word))
    return Query(tuple(terms), text)
