"""The repository's on-storage format: object kinds, keys, ids and canonical JSON.

Layout below the repository prefix (format version 1)::

    repo.json                       {"format": "hyperslab-repository", "version": 1, ...}
    refs/branches/<name>            {"snapshot": id}          mutable, moved by CAS only
    refs/tags/<name>                {"snapshot": id, ...}     create-only
    snapshots/<id>.json             parents, time, author, message, entry tree root
    manifests/<id>.json             entry-tree nodes (hash trie over entry names)
    catalogs/<leaf id>.parquet      a leaf's catalog records as a columnar search index
                                    (derived from the leaf; optional: search falls back)
    entries/<id>.json               one entry: refmap id, sources, array summaries, catalog
    refmaps/<id>.json|.parquet      kerchunk JSON / packed Parquet reference maps
    checksums/<id>.parquet          CRC-32C of every referenced chunk of a refmap
    sources/<sha256>/<file name>    raw HDF5 files copied in with --upload-sources
    chunks/<sha256>                 chunk replicas (written by sync)
    packs/<sha256>.pack             entry records, refmaps and checksums packed by sync
    locators/<leaf id>.json         where a leaf's packed objects are (references/packs.py)

Every object but the branch pointers is immutable and named by the sha256 of its
bytes (sources: of the file), so readers verify what they get and copies are
idempotent. Derived, site-local indexes are named by the leaf they serve instead
(catalogs, locators); what a locator points at is still checked against its id. JSON objects are written canonically (sorted keys, no spaces, UTF-8)
so the same content always has the same id.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from typing import Any, Literal

from hyperslab.errors import BadInputError, CorruptError, FormatVersionError, UnsafeNameError

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "Kind",
    "canonical_json",
    "check_entry_name",
    "check_ref_name",
    "object_id",
    "object_key",
    "parse_object",
]

FORMAT_NAME = "hyperslab-repository"
#: the newest repository format this version reads and writes
FORMAT_VERSION = 1

Kind = Literal["snapshot", "manifest", "entry", "refmap", "checksums"]

_DIRS: dict[str, str] = {
    "snapshot": "snapshots",
    "manifest": "manifests",
    "entry": "entries",
    "refmap": "refmaps",
    "checksums": "checksums",
}
#: the kind of object stored under each folder (``refmaps`` → ``refmap``)
KIND_OF_DIR: dict[str, Kind] = {d: k for k, d in _DIRS.items()}  # type: ignore[misc]
_ID = re.compile(r"^[0-9a-f]{64}$")
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
    return hashlib.sha256(data).hexdigest()


def is_object_id(text: str) -> bool:
    return bool(_ID.match(text))


def object_key(kind: Kind, oid: str, ext: str = ".json") -> str:
    if not _ID.match(oid):
        raise BadInputError(f"{oid!r} is not a {kind} id (64 lowercase hex digits)")
    return f"{_DIRS[kind]}/{oid}{ext}"


def split_object_key(key: str) -> tuple[str, str, str]:
    """``(folder, id, ext)`` of an object key ``folder/<id><ext>`` (:func:`object_key`'s
    inverse, without checks: ext is ``""`` or starts with ``.``)."""
    folder, _, name = key.partition("/")
    oid, dot, ext = name.partition(".")
    return folder, oid, dot + ext


def kind_dir(kind: Kind) -> str:
    return _DIRS[kind]


def parse_object(data: bytes, kind: str, where: str) -> dict[str, Any]:
    """Decode a JSON object of the given ``type`` and check its format version."""
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


#: where each trie leaf's catalog index lives (references/catalog_index.py)
CATALOG_PREFIX = "catalogs/"


def catalog_key(leaf_id: str) -> str:
    """Key of the catalog index of trie leaf ``leaf_id``."""
    return f"{CATALOG_PREFIX}{leaf_id}.parquet"


#: file name extension of a stored reference map, by its format
REFMAP_EXTENSIONS: dict[str, str] = {"json": ".json", "parquet": ".parquet"}
