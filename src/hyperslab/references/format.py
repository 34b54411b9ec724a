"""The repository's object format: ids, canonical JSON, versions and name rules.

Every object but the branch pointers is named by the sha256 of its bytes
(:func:`object_id`); JSON objects are written canonically (sorted keys, no spaces,
UTF-8, :func:`canonical_json`) so the same content always has the same id, and carry
their ``type`` and ``format`` version, checked on reading (:func:`parse_object`).
Where each object lives is :mod:`.keys`.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import zlib
from typing import Any

from hyperslab.errors import CorruptError, FormatVersionError, UnsafeNameError

__all__ = [
    "COMPRESSED_NODES",
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "OBJECT_FORMAT",
    "SMALL_LEAF",
    "canonical_json",
    "check_entry_name",
    "check_ref_name",
    "compress_object",
    "object_id",
    "parse_object",
]

FORMAT_NAME = "hyperslab-repository"
#: the newest repository format this version reads and writes (``repo.json``'s
#: ``version``). 1: entry-trie leaves of up to 1,024 entries. 2: smaller leaves
#: (``leaf_max`` in ``repo.json``, 128 by default) whose inner nodes say their
#: ``leaf_max``, and catalog indexes of inner nodes covering at most 1,024 entries
#: (written by ``search``, see :mod:`.catalog_index`). 3: entry-tree nodes (manifests)
#: stored zlib-compressed (:func:`compress_object`; most of a commit's bytes are the
#: catalog records of the leaf it rewrites, and they compress 3-4x), and leaves of fewer
#: than :data:`SMALL_LEAF` entries carry no catalog index (search reads them: their
#: JSON is smaller than the index). Older hyperslab versions refuse a newer format;
#: this one reads and writes all three, each repository in its own format.
FORMAT_VERSION = 3
#: the first format whose manifests are compressed and whose small leaves have no index
COMPRESSED_NODES = 3
#: in format 3, leaves with fewer entries than this get no catalog index
SMALL_LEAF = 32
#: the ``format`` field of stored objects: the same in every repository format
OBJECT_FORMAT = 1
_ZLIB_LEVEL = 9

_REF_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._\-]*(/[A-Za-z0-9_][A-Za-z0-9._\-]*)*$")
_ENTRY_SEGMENT = re.compile(r"^[^\x00-\x1f\x7f/\\]+$")


def canonical_json(obj: Any) -> bytes:
    """Deterministic JSON bytes: sorted keys, compact, UTF-8, NaN/Inf as strings."""
    try:  # almost always: no NaN/Inf anywhere, so no need to walk the document first
        text = json.dumps(
            obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
        )
    except (ValueError, TypeError):  # NaN/Inf, or keys that are not all strings
        text = json.dumps(_finite(obj), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return text.encode()


def _finite(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    if isinstance(obj, dict):
        return {str(k): _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    return obj


def object_id(data: bytes) -> str:
    """The id of an object: the sha256 of its bytes."""
    return hashlib.sha256(data).hexdigest()


def compress_object(data: bytes) -> bytes:
    """A JSON object's bytes as format 3 stores manifests: zlib (level 9, deterministic:
    the same content keeps the same id). :func:`parse_object` reads both forms (JSON
    starts with ``{``, a zlib stream with ``0x78``)."""
    return zlib.compress(data, _ZLIB_LEVEL)


def parse_object(data: bytes, kind: str, where: str) -> dict[str, Any]:
    """Decode a JSON object of the given ``type`` (plain or :func:`compress_object`ed)
    and check its format version."""
    try:
        if data[:1] == b"\x78":
            data = zlib.decompress(data)
    except zlib.error as exc:
        raise CorruptError(f"{where} is not valid compressed JSON: {exc}", where=where) from exc
    try:
        doc = json.loads(data)
    except ValueError as exc:
        raise CorruptError(f"{where} is not valid JSON: {exc}", where=where) from exc
    if not isinstance(doc, dict) or doc.get("type") != kind:
        raise CorruptError(f"{where} is not a {kind} object", where=where)
    version = doc.get("format")
    if not isinstance(version, int) or version < 1:
        raise CorruptError(f"{where} has no valid format version", where=where)
    if version > FORMAT_VERSION:
        raise FormatVersionError(
            f"{where} uses repository format {version}; this hyperslab reads up to "
            f"{FORMAT_VERSION}: upgrade hyperslab",
            where=where,
            version=version,
        )
    return doc


def check_ref_name(name: str, what: str = "branch") -> str:
    """Branch and tag names: letters, digits, ``._-``, ``/`` between parts (no ``..``)."""
    if (
        not isinstance(name, str)
        or not _REF_NAME.match(name)
        or ".." in name
        or name.endswith((".", ".lock"))
        or len(name) > 200
    ):
        raise UnsafeNameError(
            f"bad {what} name {name!r}: use letters, digits, '.', '_', '-' and '/' between "
            "parts (no '..', no leading '-' or '.')",
            name=name,
        )
    return name


def check_entry_name(name: str) -> str:
    """Entry names are relative paths such as ``run42/scan_0007`` (no ``.``/``..`` parts)."""
    if not isinstance(name, str) or not name or len(name) > 1024:
        raise UnsafeNameError(f"bad entry name {name!r}", name=name)
    for part in name.split("/"):
        if part in ("", ".", "..") or not _ENTRY_SEGMENT.match(part):
            raise UnsafeNameError(
                f"bad entry name {name!r}: parts separated by single '/', no '.' or '..' "
                "parts, no control characters or backslashes",
                name=name,
            )
    return name
