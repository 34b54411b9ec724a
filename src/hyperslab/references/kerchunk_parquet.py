"""fsspec's lazy Parquet reference layout (``LazyReferenceMapper``), as kerchunk writes it.

A directory with ``.zmetadata`` (``{"metadata": {key: json}, "record_size": N}``) and
per array ``<array>/refs.<k>.parq`` with columns ``path`` (dictionary-encoded
strings), ``offset, size, raw``, one row per chunk in C order of the chunk grid,
``k = linear_index // record_size``. Columns are built from the model's numpy
columns through Arrow buffers (:mod:`.arrow_columns`).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from hyperslab.errors import CorruptError, NotFoundError
from hyperslab.references.arrow_columns import (
    binary_array,
    binary_rows,
    int_values,
    mask_at,
    primitive_array,
    read_parquet_table,
    string_array,
    validity,
)
from hyperslab.references.refmap import InlineChunks, RefMap, inline_columns

__all__ = ["DEFAULT_RECORD_SIZE", "read_parquet", "write_parquet"]

#: rows per Parquet file. fsspec's LazyReferenceMapper loads a whole record (through
#: pandas) on the first access to any of its chunks, so smaller records open faster
#: and hold less: at 10^6 references, open + first chunk takes about 0.1 s and 50 MB
#: less than with 100,000 rows (kerchunk's refs_to_dataframe default), for ten times
#: as many files. 10,000 is LazyReferenceMapper.create's own default.
DEFAULT_RECORD_SIZE = 10_000


def write_parquet(
    refmap: RefMap, directory: Path, *, record_size: int = DEFAULT_RECORD_SIZE
) -> None:
    """Write fsspec's lazy Parquet reference layout into ``directory`` (must not exist).

    Columns are built from the numpy columns through Arrow buffers: ``path`` is
    dictionary-encoded (pandas reads it as a categorical, as in kerchunk's own
    maps), ``raw`` is one binary array over the inline chunks' bytes.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    meta = dict(refmap.metadata_items())
    directory.mkdir(parents=True)
    (directory / ".zmetadata").write_text(
        json.dumps({"metadata": meta, "record_size": record_size}, allow_nan=True)
    )
    sources = string_array(refmap.sources)
    for arr in refmap.arrays.values():
        n = arr.n_chunks
        if arr.n_refs == 0:
            continue
        adir = directory / arr.path
        adir.mkdir(parents=True, exist_ok=True)
        inl_index, inl_off, inl_data = inline_columns(arr.inline)
        for rec in range(math.ceil(n / record_size)):
            lo, hi = rec * record_size, min(n, (rec + 1) * record_size)
            s, e = (int(x) for x in np.searchsorted(arr.index, [lo, hi]))
            si, ei = (int(x) for x in np.searchsorted(inl_index, [lo, hi]))
            if e == s and ei == si:
                continue  # a record with no chunk: fsspec's KeyError → fill value
            rows = hi - lo
            sel = arr.index[s:e] - lo
            codes = np.zeros(rows, np.int32)
            codes[sel] = arr.source[s:e]
            offset = np.zeros(rows, np.int64)
            size = np.zeros(rows, np.int64)
            offset[sel] = arr.offset[s:e]
            size[sel] = arr.length[s:e]
            indices = primitive_array(pa.int32(), codes, mask_at(rows, sel))
            table = pa.table(
                {
                    "path": pa.DictionaryArray.from_arrays(indices, sources),
                    "offset": primitive_array(pa.int64(), offset),
                    "size": primitive_array(pa.int64(), size),
                    "raw": binary_array(
                        rows,
                        inl_index[si:ei] - lo,
                        inl_off[si : ei + 1],
                        inl_data,
                    ),
                }
            )
            pq.write_table(table, adir / f"refs.{rec}.parq", compression="zstd")


def read_parquet(directory: Path) -> RefMap:
    """Read fsspec's lazy Parquet reference layout (written by hyperslab or kerchunk)."""

    try:
        doc = json.loads((directory / ".zmetadata").read_text())
        meta, record_size = doc["metadata"], int(doc["record_size"])
    except FileNotFoundError as exc:
        raise NotFoundError(f"{directory} has no .zmetadata: not a Parquet reference map") from exc
    except (ValueError, KeyError, TypeError) as exc:
        raise CorruptError(f"{directory}/.zmetadata is malformed: {exc}") from exc
    out = RefMap.from_metadata(meta)
    source_ids: dict[str, int] = {}
    for arr in out.arrays.values():
        refs: list[tuple[np.ndarray, ...]] = []
        inl: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        adir = directory / arr.path
        for rec in range(math.ceil(arr.n_chunks / record_size)):
            f = adir / f"refs.{rec}.parq"
            if not f.exists():
                continue
            try:
                t = read_parquet_table(f, read_dictionary=["path"])
                row = rec * record_size
                for batch in t.to_batches():
                    r, b = _parquet_rows(
                        row,
                        batch.column("path"),
                        batch.column("offset"),
                        batch.column("size"),
                        batch.column("raw") if "raw" in batch.schema.names else None,
                        source_ids,
                    )
                    refs.append(r)
                    if b is not None:
                        inl.append(b)
                    row += batch.num_rows
            except CorruptError:
                raise
            except Exception as exc:
                raise CorruptError(f"{f} is not a readable Parquet file: {exc}") from exc
        if refs:
            arr.index = np.concatenate([r[0] for r in refs]).astype(np.int64)
            arr.source = np.concatenate([r[1] for r in refs]).astype(np.int32)
            arr.offset = np.concatenate([r[2] for r in refs]).astype(np.int64)
            arr.length = np.concatenate([r[3] for r in refs]).astype(np.int64)
        if inl:
            index = np.concatenate([x[0] for x in inl])
            sizes = np.concatenate([np.diff(x[1]) for x in inl])
            offsets = np.zeros(index.size + 1, np.int64)
            np.cumsum(sizes, out=offsets[1:])
            data = np.concatenate([x[2] for x in inl])
            arr.inline = InlineChunks.from_columns(index, offsets, data)
    out.sources = list(source_ids)
    return out


def _parquet_rows(
    row0: int,
    path: Any,
    offset: Any,
    size: Any,
    raw: Any,
    source_ids: dict[str, int],
) -> tuple[tuple[np.ndarray, ...], tuple[np.ndarray, np.ndarray, np.ndarray] | None]:
    """One record batch of a Parquet map: its references and its inline chunks.

    A row with ``raw`` bytes is inline; otherwise a row with a ``path`` is a
    reference; otherwise the chunk was never written.
    """
    import pyarrow as pa

    m = len(path)
    if pa.types.is_dictionary(path.type):
        codes, pvalid = int_values(path.indices)
        dictionary = path.dictionary.to_pylist()
    elif pa.types.is_null(path.type):
        codes, pvalid, dictionary = np.zeros(m, np.int64), np.zeros(m, bool), []
    else:  # plain strings
        values = path.to_pylist()
        dictionary = list(dict.fromkeys(v for v in values if v is not None))
        where = {v: i for i, v in enumerate(dictionary)}
        codes = np.array([-1 if v is None else where[v] for v in values], np.int64)
        pvalid = codes >= 0
    rvalid = np.zeros(m, bool) if raw is None else validity(raw)
    sel = np.flatnonzero(pvalid & ~rvalid)
    table = np.full(len(dictionary), -1, np.int32)
    used = codes[sel]
    for c in np.unique(used).tolist():
        table[c] = source_ids.setdefault(str(dictionary[c]), len(source_ids))
    offs, ovalid = int_values(offset)
    sizes, svalid = int_values(size)
    if not (ovalid[sel].all() and svalid[sel].all()):
        raise CorruptError("a reference row has no offset or size")
    refs = (row0 + sel, table[used], offs[sel], sizes[sel])
    rsel = np.flatnonzero(rvalid)
    if rsel.size == 0:
        return refs, None
    out_off, data = binary_rows(raw, rsel)
    return refs, (row0 + rsel, out_off, data)
