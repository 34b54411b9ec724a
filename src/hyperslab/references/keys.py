"""Where everything lives below a repository prefix: every key builder, in one place.

Layout (format version 1)::

    repo.json                       {"format": "hyperslab-repository", "version": 1, ...}
    refs/branches/<name>            {"snapshot": id}          mutable, moved by CAS only
    refs/tags/<name>                {"snapshot": id, ...}     create-only
    snapshots/<id>.json             parents, time, author, message, entry tree root
    manifests/<id>.json             entry-tree nodes (hash trie over entry names)
    catalogs/<leaf id>.parquet      a leaf's catalog records as a columnar search index
                                    (derived from the leaf; optional: search falls back)
    entries/<id>.json               one entry: refmap id, sources, array summaries, catalog
    refmaps/<id>.json|.parquet      kerchunk JSON / Parquet reference maps (refmap_objects.py)
    checksums/<id>.parquet          CRC-32C of every referenced chunk of a refmap
    sources/<sha256>/<file name>    raw HDF5 files copied in with --upload-sources
    packs/<sha256>.pack             entry records, refmaps and checksums packed by sync
    locators/<leaf id>.json         where a leaf's packed objects are (object_packs.py)
    chunks/<sha256>                 hot-chunk packs written by sync (chunk_replicas.py)
    replicas/<source>/<sha256>.parquet   which source ranges each chunk pack holds
    replicas/done/<sha256>.json     a hot-chunk selection sync completed
    jobs/compress/<job>/<n>.json    a compress job's finished packs (deleted once it
                                    commits; gc removes those of abandoned jobs)

Every object but the branch pointers is immutable and named by the sha256 of its
bytes (sources: of the file), so readers verify what they get and copies are
idempotent. Derived, site-local indexes are named by the leaf they serve instead
(catalogs, locators). Inside reference maps, a source is named logically,
``hyperslab-source:<sha256>`` (:func:`logical_source`), so one map serves every site.
"""

from __future__ import annotations

import re
from typing import Literal

from hyperslab.errors import BadInputError

__all__ = [
    "BRANCH_PREFIX",
    "CATALOG_PREFIX",
    "CHUNK_PREFIX",
    "HOT_MARKER_PREFIX",
    "JOB_PREFIX",
    "KIND_OF_DIR",
    "LOCATOR_PREFIX",
    "PACK_PREFIX",
    "REFMAP_EXTENSIONS",
    "REPLICA_PREFIX",
    "REPO_KEY",
    "SOURCE_PREFIX",
    "SOURCE_SCHEME",
    "TAG_PREFIX",
    "Kind",
    "catalog_key",
    "chunk_pack_key",
    "compress_job_key",
    "compress_job_prefix",
    "is_object_id",
    "kind_dir",
    "locator_key",
    "logical_source",
    "logical_source_id",
    "object_key",
    "object_pack_key",
    "replica_index_key",
    "replica_prefix",
    "source_key",
    "split_object_key",
]

REPO_KEY = "repo.json"
BRANCH_PREFIX = "refs/branches/"
TAG_PREFIX = "refs/tags/"

# ------------------------------------------------------------------ content-addressed objects

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
#: file name extension of a stored reference map, by its format
REFMAP_EXTENSIONS: dict[str, str] = {"json": ".json", "parquet": ".parquet"}
_ID = re.compile(r"^[0-9a-f]{64}$")


def is_object_id(text: str) -> bool:
    """Whether ``text`` is an object id (a sha256: 64 lowercase hex digits)."""
    return bool(_ID.match(text))


def object_key(kind: Kind, oid: str, ext: str = ".json") -> str:
    """``<folder>/<id><ext>`` of an object of ``kind``."""
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
    """The folder objects of ``kind`` live in (``refmap`` → ``refmaps``)."""
    return _DIRS[kind]


# ------------------------------------------------------------------ derived, per leaf

#: where the catalog indexes of trie leaves (and of format 2's small inner nodes) live
#: (catalog_index.py)
CATALOG_PREFIX = "catalogs/"
#: object packs and the locators that say what they hold (object_packs.py)
PACK_PREFIX = "packs/"
LOCATOR_PREFIX = "locators/"


def catalog_key(leaf_id: str) -> str:
    """Key of the catalog index of trie node ``leaf_id`` (a leaf, or in format 2 an
    inner node of at most 1,024 entries)."""
    return f"{CATALOG_PREFIX}{leaf_id}.parquet"


def object_pack_key(pack: str) -> str:
    """Key of object pack ``pack`` (its sha256)."""
    return f"{PACK_PREFIX}{pack}.pack"


def locator_key(leaf: str) -> str:
    """Key of the locator of trie leaf ``leaf``."""
    return f"{LOCATOR_PREFIX}{leaf}.json"


# ------------------------------------------------------------------ source files

SOURCE_PREFIX = "sources/"
#: how a reference map names a source: by content, resolved per site
SOURCE_SCHEME = "hyperslab-source:"


def source_key(sha256: str, name: str) -> str:
    """Key of a source file (its sha256 and its file name) at a site that holds it."""
    return f"{SOURCE_PREFIX}{sha256}/{name}"


def logical_source(sha256: str) -> str:
    """The logical URL a reference map names source ``sha256`` by."""
    return SOURCE_SCHEME + sha256


def logical_source_id(url: str) -> str | None:
    """The sha256 a logical source URL names, or None for any other URL."""
    return url[len(SOURCE_SCHEME) :] if url.startswith(SOURCE_SCHEME) else None


# ------------------------------------------------------------------ hot-chunk replicas

#: hot-chunk packs (chunk_replicas.py), their per-source indexes, and the markers of
#: completed selections (sync)
CHUNK_PREFIX = "chunks/"
REPLICA_PREFIX = "replicas/"
HOT_MARKER_PREFIX = "replicas/done/"


def chunk_pack_key(pack: str) -> str:
    """Key of hot-chunk pack ``pack`` (its sha256)."""
    return f"{CHUNK_PREFIX}{pack}"


def replica_prefix(source: str) -> str:
    """Prefix of the replica indexes of source ``source``."""
    return f"{REPLICA_PREFIX}{source}/"


def replica_index_key(source: str, index_id: str) -> str:
    """Key of a replica index of ``source`` (named by its own sha256)."""
    return f"{replica_prefix(source)}{index_id}.parquet"


# ------------------------------------------------------------------ jobs in progress

#: records of long jobs in progress (compress), so that a killed job resumes where it
#: stopped; not objects of any snapshot
JOB_PREFIX = "jobs/"


def compress_job_prefix(job: str) -> str:
    """Prefix of the records of compress job ``job`` (a sha256 of what it does)."""
    return f"{JOB_PREFIX}compress/{job}/"


def compress_job_key(job: str, number: int) -> str:
    """Key of the record of pack ``number`` of compress job ``job``."""
    return f"{compress_job_prefix(job)}{number:06d}.json"
