"""Columnar catalog indexes: what makes ``search`` over 10^5 entries take well under a second.

The catalog records live in the entry tree's leaves (JSON, about 1 KB per entry):
the source of truth. Parsing 10^5 of them takes seconds, so next to each leaf the
repository keeps a **catalog index**, ``catalogs/<leaf id>.parquet``, the same
records as one entity-attribute-value table:

==========  =========  =====================================================
column      type       meaning
==========  =========  =====================================================
``entity``  int32      index into the leaf's entry names (sorted; in metadata)
``key``     string     the record key, as written (dictionary-encoded)
``pos``     int16      -1 for a scalar value, else the position in a list value
``kind``    int8       0 text, 1 int, 2 float, 3 bool, 4 null
``text``    string     ``str(value)`` (dictionary-encoded)
``lower``   string     ``str(value).lower()``, what text terms compare against
``num``     float64    the value as a number when it reads as one, else null
==========  =========  =====================================================

A query is evaluated with ``pyarrow.compute`` on the dictionaries (a few thousand
distinct values per leaf) and mapped to rows through the dictionary indices, so it
costs a few vectorised passes, never a Python loop per record. It gives exactly
the answers of :meth:`hyperslab.references.catalog.Query.matches` on the JSON
records (a property test holds the two together).

The index is *derived*: a pure function of its leaf, named by the leaf's id, written
when the leaf is written, and rebuilt in memory from the leaf whenever it is
missing, unreadable or names another leaf (repositories written before indexes
existed still search correctly, only slower). Parquet page checksums guard its
bytes; ``fsck`` compares every index with a fresh build from its leaf.

In format 2 leaves are small (128 entries at most), so search reads the index of
each *index root* instead (:meth:`~hyperslab.references.tree.EntryTree.index_roots`,
at most 1,024 entries): for an inner node, ``catalogs/<node id>.parquet`` is the
same table over all entries below it (:meth:`LeafCatalog.combine` of its leaves'
indexes). Commits do not write those: the first search that needs one combines it
and stores it, so a commit stays O(changed) and a search after it re-reads only the
leaf indexes below the index roots that changed.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from hyperslab.errors import CorruptError
from hyperslab.references.arrow_columns import (
    int_column,
    int_values,
    primitive_array,
    string_array,
    validity,
)
from hyperslab.references.catalog import Query, Term, as_number

__all__ = ["LeafCatalog", "leaf_records"]

_META = b"hyperslab.catalog"
_VERSION = 1
_KIND_STR, _KIND_INT, _KIND_FLOAT, _KIND_BOOL, _KIND_NULL = range(5)

SCHEMA = pa.schema(
    [
        ("entity", pa.int32()),
        ("key", pa.string()),
        ("pos", pa.int16()),
        ("kind", pa.int8()),
        ("text", pa.string()),
        ("lower", pa.string()),
        ("num", pa.float64()),
    ]
)
_DICT_COLUMNS = ["key", "text", "lower"]


def leaf_records(leaf: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """``name → catalog record`` of a leaf node, as search sees them."""
    return {
        name: (value.get("catalog") or {"name": name})
        for name, value in sorted(leaf.get("entries", {}).items())
    }


def _kind(v: Any) -> int:
    if isinstance(v, bool):
        return _KIND_BOOL
    if isinstance(v, int):
        return _KIND_INT
    if isinstance(v, float):
        return _KIND_FLOAT
    if v is None:
        return _KIND_NULL
    return _KIND_STR


def _from_text(kind: int, text: str) -> Any:
    if kind == _KIND_STR:
        return text
    if kind == _KIND_INT:
        return int(text)
    if kind == _KIND_FLOAT:
        return float(text)
    if kind == _KIND_BOOL:
        return text == "True"
    return None


@dataclass
class LeafCatalog:
    """One leaf's records as a table (see the module docstring)."""

    leaf_id: str
    names: list[str]
    table: pa.Table

    # ------------------------------------------------------------ building
    @classmethod
    def build(cls, leaf_id: str, records: Mapping[str, Mapping[str, Any]]) -> LeafCatalog:
        names = sorted(records)
        entity: list[int] = []
        keys: list[str] = []
        pos: list[int] = []
        kinds: list[int] = []
        texts: list[str] = []
        nums: list[float | None] = []
        for i, name in enumerate(names):
            for key, value in records[name].items():
                items = enumerate(value) if isinstance(value, list) else ((-1, value),)
                for p, v in items:
                    if isinstance(v, dict | list):
                        v = json.dumps(v, sort_keys=True)  # never produced by entry_catalog
                    entity.append(i)
                    keys.append(key)
                    pos.append(p)
                    kinds.append(_kind(v))
                    texts.append(str(v))
                    nums.append(as_number(v))
        num_values = np.array([x if x is not None else 0.0 for x in nums], np.float64)
        num_valid = np.array([x is not None for x in nums], bool)
        table = pa.Table.from_arrays(
            [
                primitive_array(pa.int32(), np.array(entity, np.int32)),
                string_array(keys),
                primitive_array(pa.int16(), np.array(pos, np.int16)),
                primitive_array(pa.int8(), np.array(kinds, np.int8)),
                string_array(texts),
                string_array([t.lower() for t in texts]),
                primitive_array(pa.float64(), num_values, num_valid),
            ],
            schema=SCHEMA,
        )
        return cls(leaf_id, names, table)

    @classmethod
    def from_leaf(cls, leaf_id: str, leaf: Mapping[str, Any]) -> LeafCatalog:
        return cls.build(leaf_id, leaf_records(leaf))

    def updated(
        self, leaf_id: str, records: Mapping[str, Mapping[str, Any]], changed: set[str]
    ) -> LeafCatalog:
        """The index of a new leaf holding ``records``, reusing this one's rows.

        Only the entries in ``changed`` (new or modified) are encoded afresh; rows of the
        others are carried over. Equal, row for row, to ``build(leaf_id, records)``.
        """
        names = sorted(records)
        new_pos = {n: i for i, n in enumerate(names)}
        fresh = LeafCatalog.build(leaf_id, {n: records[n] for n in changed if n in records})
        old_to_new = np.array(
            [-1 if (n in changed or n not in new_pos) else new_pos[n] for n in self.names],
            dtype=np.int64,
        )
        old = _plain(self.table)
        old_entity = _col_ints(old.column("entity"))
        target = old_to_new[old_entity]
        keep = np.flatnonzero(target >= 0)
        kept = old.take(_indices(keep)).set_column(
            0, "entity", primitive_array(pa.int32(), target[keep].astype(np.int32))
        )
        fresh_map = np.array([new_pos[n] for n in fresh.names], dtype=np.int64)
        fresh_entity = _col_ints(fresh.table.column("entity"))
        added = fresh.table.set_column(
            0,
            "entity",
            primitive_array(pa.int32(), fresh_map[fresh_entity].astype(np.int32)),
        )
        both = pa.concat_tables([kept, added])
        order = np.argsort(_col_ints(both.column("entity")), kind="stable")
        return LeafCatalog(leaf_id, names, both.take(_indices(order)))

    @classmethod
    def combine(cls, node_id: str, parts: list[LeafCatalog]) -> LeafCatalog:
        """The index of a node whose entries are those of ``parts`` (disjoint: the
        leaves below it). Equal, row for row, to a build from all their records."""
        names = sorted(n for part in parts for n in part.names)
        if len(parts) == 1:
            return LeafCatalog(node_id, names, parts[0].table)
        pos = {n: i for i, n in enumerate(names)}
        tables = []
        for part in parts:
            if not part.names:
                continue
            remap = np.array([pos[n] for n in part.names], dtype=np.int64)
            table = _plain(part.table)
            entity = remap[_col_ints(table.column("entity"))]
            tables.append(
                table.set_column(0, "entity", primitive_array(pa.int32(), entity.astype(np.int32)))
            )
        if not tables:
            return LeafCatalog.build(node_id, {})
        both = pa.concat_tables(tables)
        order = np.argsort(_col_ints(both.column("entity")), kind="stable")
        return LeafCatalog(node_id, names, both.take(_indices(order)).combine_chunks())

    # ------------------------------------------------------------ storage
    def to_bytes(self) -> bytes:
        meta = {"version": _VERSION, "leaf": self.leaf_id, "names": self.names}
        table = self.table.replace_schema_metadata({_META: json.dumps(meta).encode()})
        sink = pa.BufferOutputStream()
        pq.write_table(
            table,
            sink,
            compression="zstd",
            use_dictionary=_DICT_COLUMNS,
            write_page_checksum=True,
            write_statistics=False,
        )
        return bytes(sink.getvalue().to_pybytes())

    @classmethod
    def from_bytes(cls, data: bytes, leaf_id: str) -> LeafCatalog:
        """Parse an index; :class:`CorruptError` unless it is intact and belongs to ``leaf_id``."""
        try:
            pf = pq.ParquetFile(
                pa.BufferReader(data),
                read_dictionary=_DICT_COLUMNS,
                page_checksum_verification=True,
            )
            meta = json.loads((pf.schema_arrow.metadata or {})[_META])
            table = pf.read(use_threads=False)  # callers fetch many indexes in threads
        except (pa.ArrowException, KeyError, ValueError, OSError) as exc:
            raise CorruptError(f"catalog index of leaf {leaf_id} is unreadable: {exc}") from None
        if meta.get("version") != _VERSION or meta.get("leaf") != leaf_id:
            raise CorruptError(f"catalog index of leaf {leaf_id} names another leaf or version")
        names = meta.get("names")
        if not isinstance(names, list) or table.schema.remove_metadata() != _dict_schema():
            raise CorruptError(f"catalog index of leaf {leaf_id} has an unexpected layout")
        return cls(leaf_id, names, table.combine_chunks())

    def same_as(self, other: LeafCatalog) -> bool:
        """Equal content (dictionary encoding aside), for fsck."""
        if self.names != other.names:
            return False
        a, b = _plain(self.table), _plain(other.table)
        if a.num_rows != b.num_rows:
            return False
        for f in SCHEMA:
            x, y = a.column(f.name).combine_chunks(), b.column(f.name).combine_chunks()
            if f.name != "num":
                if not x.equals(y):
                    return False
                continue
            # NaN is a value here ("nan" reads as a number): equal to itself
            if not x.is_valid().equals(y.is_valid()):
                return False
            xs = _floats(x.fill_null(0.0))
            ys = _floats(y.fill_null(0.0))
            if not np.array_equal(xs, ys, equal_nan=True):
                return False
        return True

    # ------------------------------------------------------------ querying
    def keys(self) -> set[str]:
        """The keys (lower-cased) that some entry of this leaf records."""
        if not self.names:
            return set()
        return set(_Columns(self.table).keys_lower[1])

    def select(self, query: Query) -> np.ndarray:
        """Boolean mask over :attr:`names`: which entries match ``query``."""
        hit = np.ones(len(self.names), dtype=bool)
        if not self.names:
            return hit
        cols = _Columns(self.table)
        for term in query.terms:
            rows = _term_rows(term, cols)
            found = np.zeros(len(self.names), dtype=bool)
            found[cols.entity[rows]] = True
            hit &= ~found if term.negate else found
        return hit

    def records(self, mask: np.ndarray) -> list[tuple[str, dict[str, Any]]]:
        """``(name, record)`` of the entries selected by ``mask``, records rebuilt exactly."""
        wanted = np.flatnonzero(mask)
        if wanted.size == 0:
            return []
        entity = _col_ints(self.table.column("entity"))
        rows = np.flatnonzero(mask[entity])
        sub = self.table.take(_indices(rows))
        ent = _col_ints(sub.column("entity")).tolist()
        pos = _col_ints(sub.column("pos")).tolist()
        keys = _decoded(sub.column("key")).tolist()
        values = _decoded(sub.column("text"))
        kind = _col_ints(sub.column("kind"))
        for code, convert in ((_KIND_INT, int), (_KIND_FLOAT, float)):
            where = np.flatnonzero(kind == code)
            if where.size:
                values[where] = [convert(t) for t in values[where].tolist()]
        for row in np.flatnonzero(kind >= _KIND_BOOL).tolist():
            values[row] = _from_text(int(kind[row]), str(values[row]))
        out: dict[int, dict[str, Any]] = {int(i): {} for i in wanted}
        for e, k, p, value in zip(ent, keys, pos, values.tolist(), strict=True):
            rec = out[e]
            if p < 0:
                rec[k] = value
            else:
                rec.setdefault(k, []).append(value)
        return [(self.names[i], out[i]) for i in out]


def _dict_schema() -> pa.Schema:
    return pa.schema(
        [
            pa.field(
                f.name, pa.dictionary(pa.int32(), f.type) if f.name in _DICT_COLUMNS else f.type
            )
            for f in SCHEMA
        ]
    )


def _plain(table: pa.Table) -> pa.Table:
    import pyarrow.compute as pc  # reading only: a commit need not import it

    cols = [
        pc.cast(table.column(f.name), f.type) if f.name in _DICT_COLUMNS else table.column(f.name)
        for f in SCHEMA
    ]
    return pa.Table.from_arrays(cols, schema=SCHEMA)


def _decoded(col: pa.ChunkedArray) -> np.ndarray:
    """A string column as an object array (dictionaries decoded once per chunk)."""
    parts = []
    for chunk in col.chunks:
        if pa.types.is_dictionary(chunk.type):
            words = np.array([*chunk.dictionary.to_pylist(), None], dtype=object)
            idx = int_values(chunk.indices.fill_null(len(chunk.dictionary)))[0]
            parts.append(words[idx])
        else:
            parts.append(np.array(chunk.to_pylist(), dtype=object))
    return np.concatenate(parts) if parts else np.array([], dtype=object)


# numpy views of Arrow arrays from their buffers: Array.to_numpy and pa.array import
# pandas (~0.5 s, ~50 MB) the first time, which a one-shot commit or search would pay
def _col_ints(col: pa.ChunkedArray) -> np.ndarray:
    return int_column(col)[0]


def _floats(a: pa.Array) -> np.ndarray:
    return np.frombuffer(a.buffers()[1], np.float64, count=len(a), offset=a.offset * 8)


def _bools(a: Any) -> np.ndarray:
    if isinstance(a, pa.ChunkedArray):
        a = a.combine_chunks()
    a = a.fill_null(False)
    bits = np.unpackbits(np.frombuffer(a.buffers()[1], np.uint8), bitorder="little")
    return bits[a.offset : a.offset + len(a)].astype(bool)


def _indices(rows: np.ndarray) -> pa.Array:
    return primitive_array(pa.int64(), np.ascontiguousarray(rows, dtype=np.int64))


class _Columns:
    """The table's columns, ready for vectorised tests (dictionary columns stay encoded)."""

    def __init__(self, table: pa.Table) -> None:
        self.table = table
        self.entity = _col_ints(table.column("entity"))

    def arr(self, name: str) -> pa.Array:
        col = self.table.column(name)
        return col.chunk(0) if col.num_chunks == 1 else col.combine_chunks()

    @cached_property
    def kind(self) -> np.ndarray:
        return int_values(self.arr("kind"))[0]

    @cached_property
    def num(self) -> np.ndarray:
        return _floats(self.arr("num"))  # under nulls: any value (masked by num_valid)

    @cached_property
    def num_valid(self) -> np.ndarray:
        return validity(self.arr("num"))

    @cached_property
    def keys_lower(self) -> tuple[np.ndarray, list[str]]:
        """(row → key code, lower-cased key of each code)."""
        a = self.arr("key")
        if pa.types.is_dictionary(a.type):
            return int_values(a.indices)[0], [str(k).lower() for k in a.dictionary.to_pylist()]
        words_all = [str(k).lower() for k in a.to_pylist()]
        uniq = sorted(set(words_all))
        where = {w: i for i, w in enumerate(uniq)}
        return np.array([where[w] for w in words_all], dtype=np.int64), uniq

    def key_rows(self, key: str) -> np.ndarray:
        idx, words = self.keys_lower
        codes = [i for i, w in enumerate(words) if w == key]
        if not codes:
            return np.zeros(len(idx), dtype=bool)
        return np.isin(idx, codes)

    def lower_test(self, test: Any) -> np.ndarray:
        """Rows whose ``lower`` text passes the Arrow predicate ``test`` (dictionary-wise)."""
        a = self.arr("lower")
        if pa.types.is_dictionary(a.type):
            on_dict = _bools(test(a.dictionary))
            return on_dict[int_values(a.indices)[0]]
        return _bools(test(a))


def _term_rows(term: Term, cols: _Columns) -> np.ndarray:
    """Rows (values) that satisfy ``term``'s positive test, restricted to its key."""
    rows = term.spec.rows(cols)
    if term.key is not None:
        rows = rows & cols.key_rows(term.key)
    return rows
