"""Reference maps as single immutable objects: the repository's ``refmaps/<id>``.

A loose map on disk may be fsspec's Parquet *directory*; an object store wants
one object per map so that it can be named by its hash. Two encodings:

* ``json``: the kerchunk version-1 document, compact (small maps).
* ``parquet``: one Parquet file, rows sorted by ``(array, index)``, columns
  ``array`` (int32, position in the array list), ``index`` (linear chunk index),
  ``source`` (int32, -1 for inline bytes), ``offset``, ``length`` (int64) and
  ``raw`` (binary, inline chunks only). The Zarr metadata, the array list and
  the sources are JSON in the file's key-value metadata under
  ``hyperslab.refmap``. Row groups hold at most 100,000 rows and carry min/max
  statistics, so a reader can fetch the footer and then only the row groups of
  the chunks it needs (range reads, no whole-map download).
"""

from __future__ import annotations

import io
import json
from typing import Any, Literal

import numpy as np

from hyperslab.errors import CorruptError, FormatVersionError
from hyperslab.references.arrow_columns import (
    binary_array,
    binary_rows,
    primitive_array,
    read_parquet_table,
    validity,
)
from hyperslab.references.kerchunk_json import from_kerchunk, to_kerchunk
from hyperslab.references.refmap import PARQUET_THRESHOLD, InlineChunks, RefMap, inline_columns

__all__ = [
    "OBJECT_META_KEY",
    "ROW_GROUP",
    "RefmapFormat",
    "decode_refmap",
    "encode_refmap",
    "read_object_meta",
]

RefmapFormat = Literal["json", "parquet"]
#: the Parquet key-value metadata entry holding the map's Zarr metadata and sources
OBJECT_META_KEY = b"hyperslab.refmap"
OBJECT_VERSION = 1
#: rows per Parquet row group of a map (and of its checksums, which align with it)
ROW_GROUP = 100_000


def encode_refmap(refmap: RefMap, fmt: RefmapFormat | None = None) -> tuple[bytes, RefmapFormat]:
    """Serialise deterministically (the same map always gives the same bytes)."""
    fmt = fmt or ("parquet" if refmap.n_refs >= PARQUET_THRESHOLD else "json")
    if fmt == "json":
        doc = to_kerchunk(refmap)
        return json.dumps(doc, separators=(",", ":"), allow_nan=True).encode(), "json"
    return _encode_parquet(refmap), "parquet"


def decode_refmap(data: bytes, fmt: RefmapFormat) -> RefMap:
    if fmt == "json":
        try:
            doc = json.loads(data)
        except ValueError as exc:
            raise CorruptError(f"reference map is not valid JSON: {exc}") from exc
        return from_kerchunk(doc)
    return _decode_parquet(data)


def _encode_parquet(refmap: RefMap) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    paths = sorted(refmap.arrays)
    cols: dict[str, list[np.ndarray]] = {k: [] for k in ("array", "index", "source", "offset")}
    lengths: list[np.ndarray] = []
    raw_rows: list[np.ndarray] = []  # global row of each inline chunk, in row order
    raw_starts: list[np.ndarray] = []
    raw_data: list[np.ndarray] = []
    rows = nbytes = 0
    for k, path in enumerate(paths):
        arr = refmap.arrays[path]
        inl_index, inl_offsets, inl_data = inline_columns(arr.inline)
        n_refs, n_inl = int(arr.index.size), int(inl_index.size)
        index = np.concatenate([arr.index, inl_index])
        # stable: inline chunks keep their index order, the order of inl_data
        order = np.argsort(index, kind="stable")
        cols["array"].append(np.full(index.size, k, np.int32))
        cols["index"].append(index[order])
        cols["source"].append(
            np.concatenate([arr.source.astype(np.int32), np.full(n_inl, -1, np.int32)])[order]
        )
        cols["offset"].append(np.concatenate([arr.offset, np.zeros(n_inl, np.int64)])[order])
        lengths.append(np.concatenate([arr.length, np.diff(inl_offsets)])[order])
        raw_rows.append(rows + np.flatnonzero(order >= n_refs))
        raw_starts.append(inl_offsets[:-1] + nbytes)
        raw_data.append(inl_data[: int(inl_offsets[-1])])
        rows += int(index.size)
        nbytes += int(inl_offsets[-1])

    def cat(parts: list[np.ndarray], dtype: Any) -> np.ndarray:
        return np.concatenate(parts).astype(dtype, copy=False) if parts else np.zeros(0, dtype)

    raw_offsets = np.concatenate([cat(raw_starts, np.int64), np.array([nbytes], np.int64)])
    table = pa.table(
        {
            "array": primitive_array(pa.int32(), cat(cols["array"], np.int32)),
            "index": primitive_array(pa.int64(), cat(cols["index"], np.int64)),
            "source": primitive_array(pa.int32(), cat(cols["source"], np.int32)),
            "offset": primitive_array(pa.int64(), cat(cols["offset"], np.int64)),
            "length": primitive_array(pa.int64(), cat(lengths, np.int64)),
            "raw": binary_array(
                rows, cat(raw_rows, np.int64), raw_offsets, cat(raw_data, np.uint8)
            ),
        }
    )
    meta = {
        "format": OBJECT_VERSION,
        "sources": refmap.sources,
        "arrays": paths,
        "metadata": dict(refmap.metadata_items()),
    }
    table = table.replace_schema_metadata(
        {OBJECT_META_KEY: json.dumps(meta, separators=(",", ":"), allow_nan=True).encode()}
    )
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd", row_group_size=ROW_GROUP, write_statistics=True)
    return buf.getvalue()


def read_object_meta(schema_metadata: dict[bytes, bytes] | None) -> dict[str, Any]:
    raw = (schema_metadata or {}).get(OBJECT_META_KEY)
    if raw is None:
        raise CorruptError("Parquet reference map has no hyperslab.refmap metadata")
    try:
        meta = json.loads(raw)
    except ValueError as exc:
        raise CorruptError(f"Parquet reference map metadata is not JSON: {exc}") from exc
    if not isinstance(meta, dict) or not isinstance(meta.get("format"), int):
        raise CorruptError("Parquet reference map metadata is malformed")
    if meta["format"] > OBJECT_VERSION:
        raise FormatVersionError(
            f"packed reference map format {meta['format']} is newer than this hyperslab "
            f"reads ({OBJECT_VERSION}): upgrade hyperslab"
        )
    return meta


def _decode_parquet(data: bytes) -> RefMap:

    try:
        table = read_parquet_table(data)
    except Exception as exc:
        raise CorruptError(f"reference map is not a readable Parquet file: {exc}") from exc
    meta = read_object_meta(table.schema.metadata)
    out = RefMap.from_metadata(meta["metadata"])
    out.sources = list(meta["sources"])
    paths: list[str] = list(meta["arrays"])
    array = table.column("array").to_numpy()
    index = table.column("index").to_numpy()
    source = table.column("source").to_numpy()
    offset = table.column("offset").to_numpy()
    length = table.column("length").to_numpy()
    bounds = np.searchsorted(array, np.arange(len(paths) + 1))
    raw_col = table.column("raw").combine_chunks()
    raw_valid = validity(raw_col)
    for k, path in enumerate(paths):
        arr = out.arrays.get(path)
        if arr is None:
            raise CorruptError(f"Parquet reference map lists array {path!r} without metadata")
        lo, hi = int(bounds[k]), int(bounds[k + 1])
        src = source[lo:hi]
        ref = src >= 0
        arr.index = index[lo:hi][ref].astype(np.int64)
        arr.source = src[ref].astype(np.int32)
        arr.offset = offset[lo:hi][ref].astype(np.int64)
        arr.length = length[lo:hi][ref].astype(np.int64)
        inl = lo + np.flatnonzero(~ref)
        if inl.size == 0:
            continue
        if not raw_valid[inl].all():
            bad = int(index[inl[~raw_valid[inl]][0]])
            raise CorruptError(f"inline chunk {bad} of {path!r} has no bytes")
        offsets, body = binary_rows(raw_col, inl)
        arr.inline = InlineChunks.from_columns(index[inl].astype(np.int64), offsets, body)
    return out
