"""The columnar catalog index answers exactly like the JSON records it is built from."""

from __future__ import annotations

import string
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hyperslab.errors import CorruptError
from hyperslab.references.catalog import QuerySyntaxError, parse_query
from hyperslab.references.catalog_index import LeafCatalog

LEAF = "ab" * 32
KEYS = ["name", "sample", "Sample", "energy", "title", "axes", "@creator", "n", "flag"]
WORDS = ["Si", "si", "Ge", "LaB6", "insulin crystal 7", "12", "12.5", "1e3", "nan", "dark", "É", ""]

text = st.one_of(
    st.sampled_from(WORDS),
    st.text(alphabet=string.ascii_letters + string.digits + " -_.*?[]!é", max_size=8),
)
scalar = st.one_of(
    text,
    st.integers(-1000, 1000),
    st.floats(allow_nan=False, allow_infinity=False, width=32).map(float),
    st.booleans(),
    st.none(),
)
value = st.one_of(scalar, st.lists(scalar, min_size=1, max_size=3))
record = st.dictionaries(st.sampled_from(KEYS), value, max_size=6)
records = st.dictionaries(
    st.text(alphabet=string.ascii_lowercase + "/_0123456789", min_size=1, max_size=10),
    record,
    max_size=12,
)

glob_word = st.one_of(
    st.sampled_from(["*si*", "s?", "*a*b*", "[a-m]*", "[!s]*", "la*", "*7", "*", "[]x]*"]),
    st.sampled_from(WORDS).filter(lambda w: " " not in w and w),
)
key = st.sampled_from([k.lower() for k in KEYS] + ["missing"])
op = st.sampled_from(["=", "!=", "~", "!~", ">", ">=", "<", "<="])
term = st.one_of(
    st.builds(lambda k, o, v: f"{k}{o}{v}", key, op, glob_word),
    st.builds(lambda k, a, b: f"{k}={a}|{b}", key, glob_word, glob_word),
    st.builds(
        lambda neg, w: ("-" if neg else "") + w, st.booleans(), glob_word.filter(str.isalnum)
    ),
)
query = st.lists(term, min_size=1, max_size=3).map(" ".join)


def _reference(recs: dict[str, dict[str, Any]], q: str) -> list[str]:
    pq = parse_query(q)
    return sorted(n for n, r in recs.items() if pq.matches(r))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(recs=records, q=query)
def test_index_matches_reference_semantics(recs: dict[str, dict[str, Any]], q: str) -> None:
    try:
        parsed = parse_query(q)
    except QuerySyntaxError:
        return
    for cat in (
        LeafCatalog.build(LEAF, recs),
        LeafCatalog.from_bytes(LeafCatalog.build(LEAF, recs).to_bytes(), LEAF),
    ):
        mask = cat.select(parsed)
        assert [n for n, hit in zip(cat.names, mask, strict=True) if hit] == _reference(recs, q)


@settings(max_examples=100, deadline=None)
@given(recs=records)
def test_records_round_trip_exactly(recs: dict[str, dict[str, Any]]) -> None:
    cat = LeafCatalog.from_bytes(LeafCatalog.build(LEAF, recs).to_bytes(), LEAF)
    back = dict(cat.records(np.ones(len(cat.names), dtype=bool)))
    assert back == recs  # (entry_catalog never writes empty lists, which have no rows)
    for n, r in back.items():  # same types, not only equal values (True != 1 here)
        for k, v in r.items():
            assert type(v) is type(recs[n][k])


def test_index_bytes_are_checked() -> None:
    recs = {"a": {"name": "a", "sample": "Si"}, "b": {"name": "b", "energy": 12.5}}
    data = LeafCatalog.build(LEAF, recs).to_bytes()
    with pytest.raises(CorruptError, match="names another leaf"):
        LeafCatalog.from_bytes(data, "cd" * 32)
    with pytest.raises(CorruptError):
        LeafCatalog.from_bytes(data[: len(data) // 2], LEAF)
    with pytest.raises(CorruptError):
        LeafCatalog.from_bytes(b"not parquet at all", LEAF)
    # a flipped byte inside a data page is caught by the page checksum
    flipped = bytearray(data)
    at = data.index(b"Si")
    flipped[at] ^= 0x01
    with pytest.raises(CorruptError):
        LeafCatalog.from_bytes(bytes(flipped), LEAF)


def test_same_as_compares_content() -> None:
    a = LeafCatalog.build(LEAF, {"x": {"name": "x", "e": 1}})
    b = LeafCatalog.from_bytes(a.to_bytes(), LEAF)
    c = LeafCatalog.build(LEAF, {"x": {"name": "x", "e": 2}})
    assert a.same_as(b)
    assert not a.same_as(c)


@settings(max_examples=150, deadline=None)
@given(old=records, new=records, keep=st.sets(st.integers(0, 20), max_size=10))
def test_updated_index_equals_a_fresh_build(
    old: dict[str, dict[str, Any]], new: dict[str, dict[str, Any]], keep: set[int]
) -> None:
    """Splicing changed entries into the base leaf's index == building the new leaf's index."""
    names = sorted(old)
    # the new leaf: some old entries unchanged, some modified or removed, some added
    records = {n: old[n] for i, n in enumerate(names) if i in keep}
    records.update(new)
    changed = {n for n, r in records.items() if old.get(n) != r}
    base = LeafCatalog.from_bytes(LeafCatalog.build(LEAF, old).to_bytes(), LEAF)
    spliced = base.updated("cd" * 32, records, changed)
    fresh = LeafCatalog.build("cd" * 32, records)
    assert spliced.same_as(fresh)
    assert LeafCatalog.from_bytes(spliced.to_bytes(), "cd" * 32).same_as(fresh)
