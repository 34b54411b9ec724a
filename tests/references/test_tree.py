"""The entry trie is canonical: its shape depends only on the set of entries."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from hyperslab.references.format import canonical_json, object_id
from hyperslab.references.tree import EntryTree


class _Nodes:
    def __init__(self) -> None:
        self.nodes: dict[str, dict[str, Any]] = {}
        self.writes = 0

    def read_node(self, oid: str) -> dict[str, Any]:
        return self.nodes[oid]

    def write_node(self, doc: dict[str, Any], base: str | None = None) -> str:
        oid = object_id(canonical_json(doc))
        self.nodes[oid] = doc
        self.writes += 1
        return oid


names = st.text(alphabet="abcxyz/_0123", min_size=1, max_size=6)
ops = st.lists(st.tuples(names, st.one_of(st.none(), st.integers(0, 3))), max_size=80)


@settings(max_examples=150, deadline=None)
@given(batches=st.lists(ops, max_size=6))
def test_incremental_updates_equal_a_fresh_build(
    batches: list[list[tuple[str, int | None]]],
) -> None:
    store = _Nodes()
    tree = EntryTree(store, leaf_max=3)  # tiny leaves: deep tries, splits and collapses
    root = None
    model: dict[str, dict[str, Any]] = {}
    for batch in batches:
        changes = {n: (None if v is None else {"id": f"{n}:{v}"}) for n, v in batch}
        root = tree.update(root, changes)
        for n, v in changes.items():
            if v is None:
                model.pop(n, None)
            else:
                model[n] = v
        assert dict(tree.items(root)) == model
        assert tree.count(root) == len(model)
        assert root == tree.build(model)  # canonical: same content, same root
        for n in list(model)[:5]:
            assert tree.get(root, n) == model[n]
        assert tree.get(root, "not-there-") is None


@settings(max_examples=60, deadline=None)
@given(
    a=st.dictionaries(names, st.integers(0, 3), max_size=40),
    b=st.dictionaries(names, st.integers(0, 3), max_size=40),
)
def test_diff_is_exact(a: dict[str, int], b: dict[str, int]) -> None:
    store = _Nodes()
    tree = EntryTree(store, leaf_max=4)
    ra = tree.build({n: {"id": str(v)} for n, v in a.items()})
    rb = tree.build({n: {"id": str(v)} for n, v in b.items()})
    d = tree.diff(ra, rb)
    expected = {n for n in set(a) | set(b) if a.get(n) != b.get(n)}
    assert set(d) == expected
    for n, (va, vb) in d.items():
        assert (va or {}).get("id") == (str(a[n]) if n in a else None)
        assert (vb or {}).get("id") == (str(b[n]) if n in b else None)


def test_one_change_in_a_large_tree_rewrites_few_nodes() -> None:
    store = _Nodes()
    tree = EntryTree(store, leaf_max=64)
    root = tree.build({f"run{i // 100}/scan_{i:05d}": {"id": str(i)} for i in range(20_000)})
    before = store.writes
    root2 = tree.update(root, {"run7/scan_00777": {"id": "new"}})
    assert root2 is not None
    depth = 0
    node = store.read_node(root2)
    while node["kind"] == "inner":
        depth += 1
        node = store.read_node(next(iter(node["children"].values()))[0])
    assert store.writes - before == depth + 1  # one leaf plus the inner nodes above it
    assert set(tree.diff(root, root2)) == {"run7/scan_00777"}
