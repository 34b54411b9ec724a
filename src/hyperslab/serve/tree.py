"""JSON documents of ``hyperslab serve``: an entry's tree (``GET /api/tree/<entry>``) and
:func:`json_safe`, which makes any answer strict JSON (browsers' ``JSON.parse`` refuses
``NaN``).

The tree is flat, by path (``""`` is the root group)::

    {"groups": {"entry/data": {"attrs": {...}}, ...},
     "arrays": {"entry/data/data": {"shape": [...], "dtype": "<u4", "chunks": [...],
                                   "codecs": ["shuffle", "zlib"], "dims": [...],
                                   "attrs": {...}}, ...}}

``attrs`` leave out the store's encoding attributes (``_ARRAY_DIMENSIONS``, which is
``dims``, ``hyperslab:*``, and the root's ``hyperslab`` record of sources).
"""

from __future__ import annotations

import math
from typing import Any

from hyperslab.references.refmap import RefMap
from hyperslab.serve.slices import public_attrs

__all__ = ["entry_tree", "json_safe"]


def json_safe(value: Any) -> Any:
    """``value`` with each non-finite float as the string ``"NaN"``, ``"Infinity"`` or
    ``"-Infinity"`` (as the slices' json format writes them), lists and dicts walked."""
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if value != value else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def _codecs(zarray: dict[str, Any]) -> list[str]:
    codecs = [str(f.get("id")) for f in zarray.get("filters") or []]
    compressor = zarray.get("compressor")
    return codecs + ([str(compressor.get("id"))] if compressor else [])


def entry_tree(refmap: RefMap) -> dict[str, Any]:
    """The groups and arrays of ``refmap`` (see the module's description)."""
    groups = {}
    for path, attrs in sorted(refmap.groups.items()):
        shown = public_attrs(attrs)
        if path == "":
            shown.pop("hyperslab", None)
        groups[path] = {"attrs": shown}
    arrays = {}
    for path, refs in sorted(refmap.arrays.items()):
        z = refs.zarray
        arrays[path] = {
            "shape": list(z.get("shape", [])),
            "dtype": z.get("dtype"),
            "chunks": list(z.get("chunks", [])),
            "codecs": _codecs(z),
            "dims": list(refs.attrs.get("_ARRAY_DIMENSIONS", [])),
            "attrs": public_attrs(refs.attrs),
        }
    return {"groups": groups, "arrays": arrays}
