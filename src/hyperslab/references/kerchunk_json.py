"""Kerchunk's JSON reference format (version 1, and version 0 on reading).

``{"version": 1, "templates": {"s0": url}, "refs": {key: value}}`` where a value is
a JSON string of Zarr metadata, ``"base64:..."`` inline bytes, or
``["{{s0}}", offset, length]``. Maps with :data:`~.refmap.TEMPLATE_LIMIT` or more
URL references write ``[url, offset, length]`` and no templates, because fsspec
renders templates one reference at a time. Writing formats the chunk entries a
batch at a time from the model's numpy columns.
"""

from __future__ import annotations

import base64
import itertools
import json
import operator
from collections.abc import Iterator, Mapping
from typing import IO, Any

import numpy as np

from hyperslab.errors import BadInputError, CorruptError, FormatVersionError
from hyperslab.references.refmap import (
    ArrayRefs,
    InlineChunks,
    RefMap,
    chunk_indices,
    inline_columns,
    join_key,
)

__all__ = ["TEMPLATE_LIMIT", "from_kerchunk", "to_kerchunk", "use_templates", "write_kerchunk_json"]

#: JSON maps with fewer URL references than this name their sources through
#: ``{{sN}}`` templates (a smaller file); larger maps write every URL in full, because
#: fsspec renders templates one reference at a time in Python (about 3 µs each,
#: which doubles the time to open a 10^6-reference map)
TEMPLATE_LIMIT = 10_000
#: chunk references formatted per batch when writing JSON (bounds peak memory)
_JSON_BATCH = 100_000


def use_templates(refmap: RefMap, templates: bool | None = None) -> bool:
    """Whether JSON output names sources through ``{{sN}}`` templates (see TEMPLATE_LIMIT)."""
    if templates is not None:
        return templates and bool(refmap.sources)
    n = sum(int(a.index.size) for a in refmap.arrays.values())
    return bool(refmap.sources) and 0 < n < TEMPLATE_LIMIT


def _url_literals(refmap: RefMap, templates: bool) -> list[str]:
    if templates:
        return [f"{{{{s{i}}}}}" for i in range(len(refmap.sources))]
    return list(refmap.sources)


def to_kerchunk(refmap: RefMap, *, templates: bool | None = None) -> dict[str, Any]:
    """The kerchunk version-1 reference dict.

    Sources are written through ``{{sN}}`` templates for small maps and as full
    URLs for large ones (``templates`` forces either; see :data:`TEMPLATE_LIMIT`).
    Per array, references come in index order, then inline chunks in index order.
    """
    use = use_templates(refmap, templates)
    urls = _url_literals(refmap, use)
    refs: dict[str, Any] = {k: _dumps(v) for k, v in refmap.metadata_items()}
    for arr in refmap.arrays.values():
        pre = f"{arr.path}/" if arr.path else ""
        for a, b in _row_batches(arr.index.size):
            names = arr.chunk_names(arr.index[a:b])
            srcs = [urls[i] for i in arr.source[a:b].tolist()]
            offs, lens = arr.offset[a:b].tolist(), arr.length[a:b].tolist()
            refs.update(
                zip(
                    [pre + k for k in names],
                    [[u, o, n] for u, o, n in zip(srcs, offs, lens, strict=True)],
                    strict=True,
                )
            )
        for names, text, pos in _inline_batches(arr):
            refs.update(
                zip(
                    [pre + k for k in names],
                    ["base64:" + text[x:y] for x, y in itertools.pairwise(pos)],
                    strict=True,
                )
            )
    doc: dict[str, Any] = {"version": 1}
    if use:
        doc["templates"] = {f"s{i}": url for i, url in enumerate(refmap.sources)}
    doc["refs"] = refs
    return doc


def write_kerchunk_json(refmap: RefMap, fh: IO[str], *, templates: bool | None = None) -> None:
    """Write :func:`to_kerchunk`'s document as compact JSON, without building it.

    The chunk entries are formatted a batch at a time from the numpy columns, so
    a 10^6-chunk map needs neither 10^6 Python lists nor one giant dict.
    """
    use = use_templates(refmap, templates)
    urls = [json.dumps(u) for u in _url_literals(refmap, use)]
    fh.write('{"version":1,')
    if use:
        tmpl = {f"s{i}": url for i, url in enumerate(refmap.sources)}
        fh.write(f'"templates":{_dumps(tmpl)},')
    fh.write('"refs":{')
    fh.write(
        ",".join(f"{json.dumps(k)}:{json.dumps(_dumps(v))}" for k, v in refmap.metadata_items())
    )
    for arr in refmap.arrays.values():
        # the opening quote and the escaped "path/" every key of this array starts with
        pre = json.dumps(f"{arr.path}/" if arr.path else "")[:-1]
        for a, b in _row_batches(arr.index.size):
            names = arr.chunk_names(arr.index[a:b])
            offs, lens = arr.offset[a:b].tolist(), arr.length[a:b].tolist()
            src = arr.source[a:b]
            if (src == src[0]).all():
                u = urls[int(src[0])]
                parts = [
                    f'{pre}{k}":[{u},{o},{n}]' for k, o, n in zip(names, offs, lens, strict=True)
                ]
            else:
                srcs = [urls[i] for i in src.tolist()]
                parts = [
                    f'{pre}{k}":[{u},{o},{n}]'
                    for k, u, o, n in zip(names, srcs, offs, lens, strict=True)
                ]
            fh.write(",")
            fh.write(",".join(parts))
        for names, text, pos in _inline_batches(arr):
            parts = [
                f'{pre}{k}":"base64:{text[x:y]}"'
                for k, x, y in zip(names, pos[:-1], pos[1:], strict=True)
            ]
            fh.write(",")
            fh.write(",".join(parts))
    fh.write("}}")


def from_kerchunk(doc: Mapping[str, Any]) -> RefMap:
    """Parse a kerchunk version-1 (or version-0) reference dict."""
    if not isinstance(doc, Mapping):
        raise CorruptError("reference map is not a JSON object")
    version = doc.get("version", 0 if "refs" not in doc else 1)
    if version not in (0, 1):
        raise FormatVersionError(f"kerchunk reference version {version!r} is not supported (1 is)")
    refs = doc.get("refs", doc) if version == 1 else doc
    if not isinstance(refs, Mapping):
        raise CorruptError("reference map has no 'refs' object")
    templates = {str(k): str(v) for k, v in (doc.get("templates") or {}).items()}
    meta: dict[str, Any] = {}
    # chunk keys grouped by array: path -> (chunk names, values)
    chunks: dict[str, tuple[list[str], list[Any]]] = {}
    for key, val in refs.items():
        path, _, name = key.rpartition("/")
        if name.startswith(".z"):
            meta[key] = json.loads(val) if isinstance(val, str | bytes) else val
            continue
        group = chunks.get(path)
        if group is None:
            group = chunks[path] = ([], [])
        group[0].append(name)
        group[1].append(val)
    out = RefMap.from_metadata(meta)
    source_ids: dict[str, int] = {}
    rendered: dict[str, int] = {}  # url as written -> source number
    for path in list(chunks):
        names, vals = chunks.pop(path)  # dropped array by array: 10^6 keys are common
        arr = out.arrays.get(path)
        if arr is None:
            raise CorruptError(
                f"chunk reference {join_key(path, names[0])!r} has no array metadata"
            )
        lins = chunk_indices(names, arr.grid, path)
        is_ref = np.fromiter((type(v) is list for v in vals), bool, len(vals))
        refs_at = np.flatnonzero(is_ref)
        if refs_at.size:
            ref_vals = vals if refs_at.size == len(vals) else [vals[i] for i in refs_at]
            if any(len(v) != 3 for v in ref_vals):
                bad = next(i for i in refs_at.tolist() if len(vals[i]) != 3)
                key = join_key(path, names[bad])
                if len(vals[bad]) == 1:
                    _render(str(vals[bad][0]), templates)  # an undefined template first
                    raise BadInputError(
                        f"whole-file reference {key!r} is not supported; give offset and length"
                    )
                raise CorruptError(f"reference {key!r} is neither bytes nor [url, offset, length]")
            urls, offs, lens = (list(map(operator.itemgetter(j), ref_vals)) for j in range(3))
            for u in dict.fromkeys(map(str, urls)):
                if u not in rendered:
                    url = _render(u, templates)
                    rendered[u] = source_ids.setdefault(url, len(source_ids))
            try:
                arr.index = lins[refs_at]
                arr.source = np.fromiter(
                    (rendered[u if type(u) is str else str(u)] for u in urls),
                    np.int32,
                    len(urls),
                )
                arr.offset = np.array(offs, dtype=np.int64)
                arr.length = np.array(lens, dtype=np.int64)
            except (TypeError, ValueError, OverflowError) as exc:
                raise CorruptError(
                    f"array {path!r} has a reference whose offset or length is not an "
                    f"integer: {exc}"
                ) from exc
            arr.sort()
        if refs_at.size < len(vals):
            inl_lin: list[int] = []
            inl_val: list[bytes] = []
            for i in np.flatnonzero(~is_ref).tolist():
                val = vals[i]
                if isinstance(val, str):
                    inl_val.append(_decode_inline(val))
                elif isinstance(val, bytes):
                    inl_val.append(val)
                else:
                    raise CorruptError(
                        f"reference {join_key(path, names[i])!r} is neither bytes nor "
                        "[url, offset, length]"
                    )
                inl_lin.append(int(lins[i]))
            arr.inline = _inline_from_lists(inl_lin, inl_val, path)
    out.sources = list(source_ids)
    return out


def _dumps(obj: Any) -> str:
    return json.dumps(obj, allow_nan=True, separators=(",", ":"))


def _row_batches(n: int, size: int = _JSON_BATCH) -> Iterator[tuple[int, int]]:
    for a in range(0, n, size):
        yield a, min(n, a + size)


_B64_BATCH_BYTES = 8 << 20
_B64_ALPHABET = np.frombuffer(
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/", np.uint8
)


def _inline_batches(arr: ArrayRefs) -> Iterator[tuple[list[str], str, list[int]]]:
    """Batches of (chunk names, base64 text, row bounds in it) of the inline chunks, in order."""
    index, offsets, data = inline_columns(arr.inline)
    n, a = int(index.size), 0
    while a < n:
        limit = int(np.searchsorted(offsets, offsets[a] + _B64_BATCH_BYTES, side="right")) - 1
        b = max(a + 1, min(n, a + _JSON_BATCH, limit))
        lo, hi = int(offsets[a]), int(offsets[b])
        text, pos = _b64_rows(data[lo:hi], offsets[a : b + 1] - lo)
        yield arr.chunk_names(index[a:b]), text, pos
        a = b


def _b64_rows(data: np.ndarray, offsets: np.ndarray) -> tuple[str, list[int]]:
    """Standard base64 (with padding) of every row ``data[offsets[i]:offsets[i + 1]]``.

    Returns the encodings concatenated as one ASCII string and the row bounds in
    it: row i is ``text[pos[i]:pos[i + 1]]``, equal to ``base64.b64encode(row)``.
    """
    lens = np.diff(offsets)
    groups = (lens + 2) // 3
    pad = 3 * groups - lens  # zero bytes appended to each row: 0, 1 or 2
    ends = np.cumsum(3 * groups)
    total = int(ends[-1]) if ends.size else 0
    if total == data.size:
        src = data
    else:
        keep = np.ones(total, bool)
        keep[ends[pad >= 1] - 1] = False
        keep[ends[pad == 2] - 2] = False
        src = np.zeros(total, np.uint8)
        src[keep] = data
    t = src.reshape(-1, 3)
    b0, b1, b2 = t[:, 0], t[:, 1], t[:, 2]
    out = np.empty((t.shape[0], 4), np.uint8)
    out[:, 0] = _B64_ALPHABET[b0 >> 2]
    out[:, 1] = _B64_ALPHABET[((b0 & 3) << 4) | (b1 >> 4)]
    out[:, 2] = _B64_ALPHABET[((b1 & 15) << 2) | (b2 >> 6)]
    out[:, 3] = _B64_ALPHABET[b2 & 63]
    flat = out.reshape(-1)
    oends = 4 * np.cumsum(groups)
    flat[oends[pad >= 1] - 1] = ord("=")
    flat[oends[pad == 2] - 2] = ord("=")
    return flat.tobytes().decode("ascii"), [0, *oends.tolist()]


def _decode_inline(val: str) -> bytes:
    if val.startswith("base64:"):
        try:
            return base64.b64decode(val[7:], validate=True)
        except ValueError as exc:
            raise CorruptError(f"inline chunk is not valid base64: {exc}") from exc
    return val.encode()


def _inline_from_lists(lins: list[int], vals: list[bytes], path: str) -> InlineChunks:
    index = np.array(lins, np.int64)
    order = np.argsort(index, kind="stable")
    index = index[order]
    if index.size > 1 and not (np.diff(index) > 0).all():
        dup = int(index[np.flatnonzero(np.diff(index) == 0)[0]])
        raise CorruptError(f"array {path!r} has two inline chunks with linear index {dup}")
    ordered = [vals[i] for i in order.tolist()]
    offsets = np.zeros(index.size + 1, np.int64)
    np.cumsum(np.fromiter(map(len, ordered), np.int64, len(ordered)), out=offsets[1:])
    return InlineChunks.from_columns(index, offsets, b"".join(ordered))


def _render(url: str, templates: Mapping[str, str]) -> str:
    if "{{" not in url:
        return url
    for name, value in templates.items():
        url = url.replace("{{" + name + "}}", value)
    if "{{" in url:
        raise CorruptError(f"reference url {url!r} uses an undefined template")
    return url
