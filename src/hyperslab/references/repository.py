"""A snapshot-versioned repository of reference maps at one site prefix.

See :mod:`hyperslab.references.format` for the layout. The commit protocol
(:meth:`Repository.commit`) writes bottom-up — refmaps, entry records, tree
nodes, the snapshot — and moves the branch pointer last, by compare-and-swap on
its etag. A crash anywhere leaves only unreachable objects; a reader following
a branch always finds a complete snapshot. Two committers racing on one branch:
the loser re-reads the head and, if the entries it changes were not changed
meanwhile by someone else, re-applies its changes on top and tries again;
otherwise it fails with :class:`EntryConflictError`. No update is ever lost.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import logging
import os
import random
import threading
import uuid
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from hyperslab.config import Config
from hyperslab.errors import (
    BadInputError,
    ConflictError,
    CorruptError,
    FormatVersionError,
    HyperslabError,
    NotFoundError,
    TransientError,
    did_you_mean,
)
from hyperslab.references.format import (
    COMPRESSED_NODES,
    FORMAT_NAME,
    FORMAT_VERSION,
    OBJECT_FORMAT,
    SMALL_LEAF,
    canonical_json,
    check_entry_name,
    check_ref_name,
    compress_object,
    object_id,
    parse_object,
)
from hyperslab.references.keys import (
    KIND_OF_DIR,
    REPO_KEY,
    Kind,
    catalog_key,
    is_object_id,
    kind_dir,
    locator_key,
    object_key,
    split_object_key,
)
from hyperslab.references.node_catalogs import NodeCatalogs
from hyperslab.references.object_packs import PackedObjects
from hyperslab.references.refs import Refs
from hyperslab.references.tree import DEFAULT_LEAF_MAX, LEAF_MAX, EntryTree
from hyperslab.storage import Site, open_site

if TYPE_CHECKING:  # pyarrow and numpy load only when a catalog is built or searched
    from hyperslab.references.catalog_index import LeafCatalog

__all__ = [
    "BranchConflictError",
    "CasUnsupportedError",
    "CommitResult",
    "EntryConflictError",
    "NotARepositoryError",
    "Repository",
    "RepositoryExistsError",
    "Snapshot",
]

log = logging.getLogger(__name__)

DEFAULT_BRANCH = "main"
#: an existing content-addressed object older than this is rewritten when a new
#: commit reuses it, so that ``gc`` (whose grace period must exceed it) never
#: deletes an object that a commit in flight is about to make reachable again
REFRESH_AGE = timedelta(hours=1)
#: how often a committer re-applies its changes after losing a branch race
MAX_COMMIT_ATTEMPTS = 60
#: objects up to this size are rewritten rather than checked for first (see put_object)
SMALL_OBJECT = 1 << 20


class NotARepositoryError(NotFoundError):
    code = "not_a_repository"


class CasUnsupportedError(HyperslabError):
    """The site ignores conditional writes, so concurrent writers could lose updates."""

    code = "cas_unsupported"
    exit_status = 2


class EntryConflictError(ConflictError):
    """Someone else changed the same entries since this commit's base snapshot."""

    code = "entry_conflict"


class RepositoryExistsError(ConflictError):
    """``init`` where a repository already is (nothing of it is touched)."""

    code = "repository_exists"


class BranchConflictError(ConflictError):
    """A branch is not where the caller expected (exists already, or moved)."""

    code = "branch_conflict"


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def default_author() -> str:
    env = os.environ.get("HYPERSLAB_AUTHOR")
    if env:
        return env
    try:
        return getpass.getuser()
    except Exception:  # no passwd entry (containers)
        return "unknown"


@dataclass(frozen=True)
class Snapshot:
    id: str
    parents: tuple[str, ...]
    time: str
    author: str
    message: str
    tree: str | None
    n_entries: int
    changes: dict[str, Any] = field(default_factory=dict)

    @property
    def short(self) -> str:
        return self.id[:12]

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "parents": list(self.parents),
            "time": self.time,
            "author": self.author,
            "message": self.message,
            "entries": self.n_entries,
            "changes": self.changes,
        }

    @classmethod
    def from_doc(cls, oid: str, doc: Mapping[str, Any]) -> Snapshot:
        try:
            return cls(
                id=oid,
                parents=tuple(doc["parents"]),
                time=str(doc["time"]),
                author=str(doc["author"]),
                message=str(doc["message"]),
                tree=doc["tree"],
                n_entries=int(doc["entries"]),
                changes=dict(doc.get("changes") or {}),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise CorruptError(f"snapshot {oid} is malformed: {exc}", snapshot=oid) from exc


@dataclass
class CommitResult:
    snapshot: Snapshot | None  # None: nothing changed, no snapshot written
    branch: str
    attempts: int
    added: list[str] = field(default_factory=list)
    modified: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "snapshot": self.snapshot.id if self.snapshot else None,
            "branch": self.branch,
            "attempts": self.attempts,
            "added": self.added,
            "modified": self.modified,
            "removed": self.removed,
            "unchanged": self.unchanged,
        }


class _LRU:
    def __init__(self, size: int) -> None:
        self.size = size
        self._d: OrderedDict[str, Any] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str) -> Any:
        with self._lock:
            v = self._d.get(key)
            if v is not None:
                self._d.move_to_end(key)
            return v

    def put(self, key: str, value: Any) -> None:
        with self._lock:
            self._d[key] = value
            self._d.move_to_end(key)
            while len(self._d) > self.size:
                self._d.popitem(last=False)


class Repository:
    """A repository at ``site`` (use :meth:`open` or :meth:`init`)."""

    def __init__(self, site: Site, display: str, info: Mapping[str, Any]) -> None:
        self.site = site
        self.display = display
        self.info = dict(info)
        self.id = str(self.info.get("id", ""))
        self.single_writer = bool(self.info.get("single_writer", False))
        self._cache = _LRU(8192)
        self.tree = EntryTree(self, leaf_max=_leaf_max(self.info, display))
        self.catalogs = NodeCatalogs(self)
        #: search may store the catalog indexes of inner nodes it had to build (derived
        #: objects named by their node: idempotent); False for a strictly read-only use
        self.store_derived = True
        self.refs = Refs(site, display)
        self._writes = threading.local()  # per thread: the PUTs of a commit in flight
        self._pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()
        #: objects this site keeps in packs (sync destinations): references/object_packs.py
        self.packs = PackedObjects(site, display)

    # ------------------------------------------------------------- open/init
    @staticmethod
    def _site(spec: str | Site, config: Config | None) -> tuple[Site, str]:
        if isinstance(spec, Site):
            return spec, spec.url
        return open_site(spec, config)

    @classmethod
    def open(
        cls, spec: str | Site, *, config: Config | None = None, missing_ok: bool = False
    ) -> Repository:
        """The repository at ``spec`` (a URL, path, ``SITE:path`` or a site).

        ``missing_ok``: where there is no repository yet, a handle with empty
        :attr:`info` instead of :class:`NotARepositoryError` (sync creates one there).
        """
        site, display = cls._site(spec, config)
        try:
            raw = site.get(REPO_KEY)
        except NotFoundError:
            if missing_ok:
                return cls(site, display, {})
            raise NotARepositoryError(
                f"{display} is not a hyperslab repository (no {REPO_KEY}); "
                "create one with `hyperslab init`",
                repo=display,
            ) from None
        info = cls._parse_info(raw, display)
        return cls(site, display, info)

    @staticmethod
    def _parse_info(raw: bytes, display: str) -> dict[str, Any]:
        try:
            info = json.loads(raw)
        except ValueError as exc:
            raise CorruptError(f"{display}/{REPO_KEY} is not valid JSON: {exc}") from exc
        if not isinstance(info, dict) or info.get("format") != FORMAT_NAME:
            raise CorruptError(f"{display}/{REPO_KEY} is not a hyperslab repository descriptor")
        version = info.get("version")
        if not isinstance(version, int) or version < 1:
            raise CorruptError(f"{display}/{REPO_KEY} has no valid format version")
        if version > FORMAT_VERSION:
            raise FormatVersionError(
                f"{display} uses repository format {version}; this hyperslab reads up to "
                f"{FORMAT_VERSION}: upgrade hyperslab",
                repo=display,
                version=version,
            )
        return info

    @classmethod
    def init(
        cls,
        spec: str | Site,
        *,
        config: Config | None = None,
        single_writer: bool = False,
        branch: str = DEFAULT_BRANCH,
        author: str | None = None,
        version: int = FORMAT_VERSION,
    ) -> Repository:
        """Create an empty repository with one branch pointing at an empty snapshot.

        The site is probed for working conditional writes first; one that ignores
        them is refused unless ``single_writer`` (then only one process may write).
        ``version``: the repository format, 2 for readers with an older hyperslab (no
        compressed manifests), or the newest (the default).
        """
        site, display = cls._site(spec, config)
        check_ref_name(branch)
        if version not in (2, FORMAT_VERSION):
            raise BadInputError(
                f"repository format {version}: this hyperslab creates format 2 or {FORMAT_VERSION}"
            )
        if not single_writer and not site.supports_cas:
            raise CasUnsupportedError(
                f"{display} ignores conditional writes (a second create-only PUT succeeded), "
                "so concurrent writers could overwrite each other's commits; use a server "
                "with If-None-Match/If-Match support (MinIO, AWS S3) or pass --single-writer "
                "if only one process will ever write",
                repo=display,
            )
        info = {
            "format": FORMAT_NAME,
            "version": version,
            "id": uuid.uuid4().hex,
            "created": _now(),
            "single_writer": single_writer,
            "leaf_max": DEFAULT_LEAF_MAX,
        }
        if site.exists(REPO_KEY):
            raise RepositoryExistsError(
                f"{display} already holds a repository ({REPO_KEY} exists): use it as it "
                "is, or init another path",
                repo=display,
            )
        repo = cls(site, display, info)
        # The initial snapshot and the branch first, repo.json last: a crash leaves a
        # prefix that `init` can be re-run on, never a repository without its branch.
        snap = repo._write_snapshot(
            parents=[], tree=None, message="repository created", author=author, changes={}
        )
        repo.refs.create_branch(branch, snap.id)  # False: an earlier interrupted init made it
        try:
            site.put_if_absent(REPO_KEY, json.dumps(info, indent=2).encode())
        except ConflictError:
            raise RepositoryExistsError(
                f"{display} already holds a repository ({REPO_KEY} exists): use it as it "
                "is, or init another path",
                repo=display,
            ) from None
        return repo

    def check_writable(self) -> None:
        """Refuse shared writing to a site without working conditional writes."""
        if self.single_writer:
            return  # S3Site probes once and caches; file and memory sites always have CAS
        if not self.site.supports_cas:
            raise CasUnsupportedError(
                f"{self.display} ignores conditional writes; this repository was created for "
                "shared writing, and committing without CAS could lose other writers' updates",
                repo=self.display,
            )

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
        self.site.close()

    def __enter__(self) -> Repository:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------- objects
    def put_object(self, kind: Kind, data: bytes, ext: str = ".json") -> str:
        """Store immutable bytes under their sha256; idempotent.

        Small objects are simply PUT: a PUT costs what a HEAD costs, and rewriting an
        existing object refreshes the age ``gc`` sees. Large ones are written only if
        absent or old (see :data:`REFRESH_AGE`).
        """
        oid = object_id(data)
        key = object_key(kind, oid, ext)
        if self._should_put(key, data):
            self._put(key, data)
        return oid

    def _should_put(self, key: str, data: bytes) -> bool:
        landed: set[str] | None = getattr(self._writes, "landed", None)
        if landed is not None and key in landed:
            return False  # this commit wrote it in an earlier attempt (same key, same bytes)
        return len(data) <= SMALL_OBJECT or self._needs_write(key)

    def _put(self, key: str, data: bytes) -> None:
        """PUT now, or, inside :meth:`_parallel_writes`, on a worker thread."""
        landed: set[str] | None = getattr(self._writes, "landed", None)
        pending: list[Future[None]] | None = getattr(self._writes, "pending", None)
        if pending is None:
            _put_noting(self.site, key, data, landed)
            return
        with self._pool_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(8, thread_name_prefix="hyperslab-commit")
            pool = self._pool
        pending.append(pool.submit(_put_noting, self.site, key, data, landed))

    @contextlib.contextmanager
    def _remember_writes(self) -> Iterator[None]:
        """Within: objects already written are not written again (a commit re-applying
        its changes after losing a race makes mostly the same objects). Only for the
        length of one commit: gc's grace period covers a commit in flight, not longer."""
        if getattr(self._writes, "landed", None) is not None:
            yield
            return
        self._writes.landed = set()
        try:
            yield
        finally:
            self._writes.landed = None

    @contextlib.contextmanager
    def _parallel_writes(self) -> Iterator[None]:
        """Objects written inside run concurrently; all have landed when it exits.

        Their order does not matter: nothing they write is reachable until the branch
        pointer moves, which callers do only after this exits (bottom-up invariant).
        """
        outer = getattr(self._writes, "pending", None)
        if outer is not None:  # nested: the outer block waits
            yield
            return
        pending: list[Future[None]] = []
        self._writes.pending = pending
        try:
            yield
        finally:
            self._writes.pending = None
            errors = [f.exception() for f in pending]
        first = next((e for e in errors if e is not None), None)
        if first is not None:
            raise first

    def _needs_write(self, key: str) -> bool:
        """Absent, or old enough that gc could be about to delete it (then refresh it)."""
        try:
            info = self.site.head(key)
        except NotFoundError:
            return True
        return info.mtime < datetime.now(UTC) - REFRESH_AGE

    def get_object(self, kind: Kind, oid: str, ext: str = ".json") -> bytes:
        """The bytes of object ``oid``, loose or packed, checked against its id."""
        key = object_key(kind, oid, ext)
        where = self.packs.location(key)
        if where is None:
            try:
                data = self.site.get(key)
            except NotFoundError:
                where = self.packs.find(key, oid)
                if where is None:
                    raise NotFoundError(
                        f"{kind} {oid} is missing from {self.display} ({key})",
                        key=key,
                        object=oid,
                    ) from None
        if where is not None:
            data = self.packs.read(kind, oid, where)
        self.check_object(key, object_id(data))
        return data

    def get_key(self, key: str) -> bytes:
        """:meth:`get_object` by object key ``folder/<id><ext>``."""
        folder, oid, ext = split_object_key(key)
        return self.get_object(KIND_OF_DIR[folder], oid, ext)

    def check_object(self, key: str, digest: str) -> None:
        """CorruptError unless content-addressed object ``key`` (``kind/<id>.ext``) read
        as bytes hashing to ``digest``, its id."""
        folder, oid, _ = split_object_key(key)
        if digest != oid:
            raise CorruptError(
                f"{KIND_OF_DIR.get(folder, folder)} {oid} at {self.display} is corrupt: "
                f"its bytes hash to {digest}",
                key=key,
                object=oid,
            )

    def read_json(self, kind: Kind, oid: str) -> dict[str, Any]:
        ck = f"{kind}:{oid}"
        doc = self._cache.get(ck)
        if doc is None:
            doc = self.load_json(kind, oid)[1]
            self._cache.put(ck, doc)
        return doc

    def load_json(self, kind: Kind, oid: str) -> tuple[bytes, dict[str, Any]]:
        """An object's bytes and parsed document (not cached; see :meth:`read_json`)."""
        data = self.get_object(kind, oid)
        doc = parse_object(data, kind, f"{kind} {oid}")
        self.packs.note(kind, oid, doc)
        return data, doc

    def write_json(self, kind: Kind, doc: dict[str, Any]) -> str:
        text = _encode(kind, doc)
        oid = self.put_object(kind, self._stored_form(kind, text))
        self._cache.put(f"{kind}:{oid}", json.loads(text))
        return oid

    @property
    def format_version(self) -> int:
        """This repository's format (``repo.json``'s ``version``)."""
        return int(self.info.get("version", 1))

    def _stored_form(self, kind: Kind, text: bytes) -> bytes:
        """The bytes a JSON object is stored as here: manifests compressed from format 3."""
        if kind == "manifest" and self.format_version >= COMPRESSED_NODES:
            return compress_object(text)
        return text

    def read_many(self, kind: Kind, oids: Sequence[str], workers: int = 16) -> list[dict[str, Any]]:
        """Several JSON objects, fetched concurrently (order kept)."""
        if len(oids) <= 1:
            return [self.read_json(kind, o) for o in oids]
        with ThreadPoolExecutor(max_workers=min(workers, len(oids))) as pool:
            return list(pool.map(lambda o: self.read_json(kind, o), oids))

    # NodeStore for the entry tree
    def read_node(self, oid: str) -> dict[str, Any]:
        return self.read_json("manifest", oid)

    def write_node(self, doc: dict[str, Any], base: str | None = None) -> str:
        if doc.get("kind") != "leaf":
            return self.write_json("manifest", doc)
        # A leaf and its catalog index (derived, named by the leaf's id): index first,
        # so every leaf this version writes is searchable without parsing it (in format
        # 3 but small leaves, which search parses: their JSON is smaller than an index).
        text = _encode("manifest", doc)
        data = self._stored_form("manifest", text)
        oid = object_id(data)
        key = object_key("manifest", oid)
        stored = json.loads(text)  # what readers will see (tuples are lists, etc.)
        if self._should_put(key, data):
            # built either way: combined indexes of new subtrees are made from it
            cat = self.catalogs.for_new_leaf(oid, stored, base)
            if self.indexes_leaf(stored):
                self._put(catalog_key(oid), cat.to_bytes())
            loc = self.packs.carried_locator(oid, stored)
            if loc is not None:  # where this site packed the entries it keeps
                self._put(locator_key(oid), loc.to_bytes())
                self.packs.remember(oid, loc)
            self._put(key, data)
        self._cache.put(f"manifest:{oid}", stored)
        return oid

    def indexes_leaf(self, leaf: Mapping[str, Any]) -> bool:
        """Whether this repository keeps a catalog index of ``leaf`` (a leaf document):
        always before format 3, then only from :data:`SMALL_LEAF` entries."""
        if self.format_version < COMPRESSED_NODES:
            return True
        return len(leaf.get("entries", {})) >= SMALL_LEAF

    def index_new_subtree(self, node_id: str) -> None:
        """Called by the tree for a subtree it built whole, of at most INDEX_SPAN
        entries: its combined catalog index comes with it (see :mod:`.node_catalogs`)."""
        cat = self.catalogs.for_new_subtree(node_id)
        if cat is not None:
            self._put(catalog_key(node_id), cat.to_bytes())

    def leaf_catalog(self, node_id: str) -> LeafCatalog:
        """The columnar catalog of a leaf, or of an inner node of at most 1,024 entries
        (format 2's index roots), read or rebuilt (see :mod:`.node_catalogs`)."""
        return self.catalogs.get(node_id)

    def cache_get(self, key: str) -> Any:
        """A document or index this handle holds in memory (``kind:id``), or None."""
        return self._cache.get(key)

    def cache_put(self, key: str, value: Any) -> None:
        self._cache.put(key, value)

    # ------------------------------------------------------------- snapshots
    def snapshot(self, oid: str) -> Snapshot:
        try:
            doc = self.read_json("snapshot", oid)
        except NotFoundError:
            raise NotFoundError(
                f"snapshot {oid} does not exist in {self.display}", snapshot=oid
            ) from None
        return Snapshot.from_doc(oid, doc)

    def _write_snapshot(
        self,
        *,
        parents: Sequence[str],
        tree: str | None,
        message: str,
        author: str | None,
        changes: Mapping[str, Any],
    ) -> Snapshot:
        doc = {
            "parents": list(parents),
            "time": _now(),
            "author": author or default_author(),
            "message": message,
            "tree": tree,
            "entries": self.tree.count(tree),
            "changes": dict(changes),
            "repository": self.id,
        }
        oid = self.write_json("snapshot", doc)
        return Snapshot.from_doc(oid, doc)

    # ------------------------------------------------------------- refs
    def branches(self) -> dict[str, str]:
        return self.refs.listing("branch")

    def tags(self) -> dict[str, str]:
        return self.refs.listing("tag")

    def branch_head(self, name: str) -> tuple[str, str]:
        """``(snapshot id, etag)`` of branch ``name``."""
        return self.refs.branch_head(name)

    def resolve(self, ref: str) -> str:
        """Snapshot id of a branch, tag, snapshot id (or unique prefix >= 6), with ``~N``."""
        if not isinstance(ref, str) or not ref:
            raise BadInputError(f"bad reference {ref!r}")
        base, _, back = ref.partition("~")
        steps = 0
        if _:
            if not back.isdigit():
                raise BadInputError(f"bad reference {ref!r}: '~' takes a number of steps back")
            steps = int(back)
        sid = self._resolve_base(base)
        for i in range(steps):
            parents = self.snapshot(sid).parents
            if not parents:
                raise NotFoundError(f"{ref!r}: history has only {i + 1} snapshots", ref=ref)
            sid = parents[0]
        return sid

    def _resolve_base(self, ref: str) -> str:
        if is_object_id(ref):
            self.snapshot(ref)  # must exist
            return ref
        for kind in ("branch", "tag"):
            try:
                check_ref_name(ref)
            except BadInputError:
                break
            sid = self.refs.head(kind, ref)[0]
            if sid is not None:
                return sid
        low = ref.lower()
        if len(low) >= 6 and all(c in "0123456789abcdef" for c in low):
            d = kind_dir("snapshot") + "/"
            found = [k[len(d) : -5] for k in self.site.list(d + low)]
            if len(found) == 1:
                return found[0]
            if len(found) > 1:
                raise BadInputError(f"snapshot prefix {ref!r} is ambiguous ({len(found)} match)")
        known = [*self.refs.listing("branch"), *self.refs.listing("tag")]
        raise NotFoundError(
            f"{ref!r} is not a branch, tag or snapshot of {self.display}"
            + did_you_mean(ref, known, what="branches and tags"),
            ref=ref,
        )

    def create_branch(self, name: str, from_ref: str = DEFAULT_BRANCH) -> str:
        check_ref_name(name)
        self.check_writable()
        sid = self.resolve(from_ref)
        if not self.refs.create_branch(name, sid):
            raise BranchConflictError(
                f"branch {name!r} already exists in {self.display}", branch=name
            )
        return sid

    def delete_branch(self, name: str) -> None:
        check_ref_name(name)
        self.branch_head(name)
        self.refs.delete_branch(name)

    def create_tag(self, name: str, ref: str, message: str = "", author: str | None = None) -> str:
        check_ref_name(name, "tag")
        self.check_writable()
        sid = self.resolve(ref)
        doc = {"snapshot": sid, "time": _now(), "author": author or default_author()}
        if message:
            doc["message"] = message
        existing = self.refs.create_tag(name, canonical_json(doc))
        if existing is not None:
            raise BranchConflictError(
                f"tag {name!r} already exists (at {existing[:12]}); tags never move",
                tag=name,
                snapshot=existing,
            )
        return sid

    # ------------------------------------------------------------- reading
    def log(self, ref: str = DEFAULT_BRANCH, limit: int | None = None) -> Iterator[Snapshot]:
        """Snapshots from ``ref`` back along first parents (``limit``: at most that many)."""
        if limit is not None and limit < 1:
            raise BadInputError(f"limit must be at least 1 (or none: all), not {limit}")
        sid: str | None = self.resolve(ref)
        n = 0
        while sid is not None and (limit is None or n < limit):
            snap = self.snapshot(sid)
            yield snap
            n += 1
            sid = snap.parents[0] if snap.parents else None

    def pinned(self, ref: Snapshot | str) -> Snapshot:
        """The snapshot a branch, tag or id names now (a Snapshot is returned as is)."""
        return ref if isinstance(ref, Snapshot) else self.snapshot(self.resolve(ref))

    def entries(self, snapshot: Snapshot | str) -> Iterator[tuple[str, dict[str, Any]]]:
        return self.tree.items(self.pinned(snapshot).tree)

    def entry(self, snapshot: Snapshot | str, name: str) -> dict[str, Any]:
        """The full entry record of ``name`` in a snapshot (or branch/tag)."""
        snap = self.pinned(snapshot)
        value = self.tree.get(snap.tree, name)
        if value is None:
            raise NotFoundError(
                f"entry {name!r} is not in snapshot {snap.short} of {self.display}"
                + self._close_entries(snap, name),
                entry=name,
            )
        return self.read_json("entry", value["id"])

    #: entries a "did you mean" looks through at most (it reads every leaf of the tree)
    SUGGEST_MAX_ENTRIES = 20_000

    def _close_entries(self, snap: Snapshot, name: str) -> str:
        """`` (did you mean ...)`` for an entry name not in ``snap`` (nothing when the
        snapshot is too large to scan on an error path)."""
        if self.tree.count(snap.tree) > self.SUGGEST_MAX_ENTRIES:
            return ""
        return did_you_mean(name, (n for n, _ in self.tree.items(snap.tree)), what="entries")

    def diff(
        self, a: str, b: str
    ) -> dict[str, tuple[dict[str, Any] | None, dict[str, Any] | None]]:
        """Entries that differ between two refs: ``name → (value in a, value in b)``."""
        sa, sb = self.snapshot(self.resolve(a)), self.snapshot(self.resolve(b))
        return dict(sorted(self.tree.diff(sa.tree, sb.tree).items()))

    # ------------------------------------------------------------- commit
    def commit(
        self,
        changes: Mapping[str, dict[str, Any] | None],
        *,
        branch: str = DEFAULT_BRANCH,
        message: str,
        author: str | None = None,
        base: str | None = None,
        max_attempts: int = MAX_COMMIT_ATTEMPTS,
    ) -> CommitResult:
        """Apply ``changes`` (entry name → tree value ``{"id", "catalog"}``, None removes).

        ``base`` is the snapshot the caller prepared the changes against (default:
        the branch head now). If, by the time the pointer moves, others changed one
        of the same entries differently since ``base``, :class:`EntryConflictError`;
        if they changed only other entries, the changes are re-applied on the new
        head and the CAS retried.
        """
        for name in changes:
            check_entry_name(name)
        self.check_writable()
        with self._remember_writes():
            return self._commit(changes, branch, message, author, base, max_attempts)

    def _commit(
        self,
        changes: Mapping[str, dict[str, Any] | None],
        branch: str,
        message: str,
        author: str | None,
        base: str | None,
        max_attempts: int,
    ) -> CommitResult:
        head, etag = self.branch_head(branch)
        base = base or head
        pending = dict(changes)
        rng = random.Random()
        for attempt in range(1, max_attempts + 1):
            if head != base:
                # only the subtrees that could hold our entries are read: what did not
                # change is in the cache, what others changed elsewhere is skipped
                theirs = self.tree.diff(self.snapshot(base).tree, self.snapshot(head).tree, pending)
                clash = []
                for name in list(pending):
                    if name not in theirs:
                        continue
                    new = theirs[name][1]
                    ours = pending[name]
                    if (new or {}).get("id") == (ours or {}).get("id"):
                        continue  # they made the very same change
                    clash.append(name)
                if clash:
                    raise EntryConflictError(
                        f"{len(clash)} entr{'y' if len(clash) == 1 else 'ies'} changed on branch "
                        f"{branch!r} since snapshot {base[:12]} by another commit: "
                        + ", ".join(sorted(clash)[:10])
                        + "; re-run to apply your changes on top of the new head",
                        branch=branch,
                        entries=sorted(clash),
                        base=base,
                        head=head,
                    )
            head_snap = self.snapshot(head)
            result = CommitResult(None, branch, attempt)
            effective: dict[str, dict[str, Any] | None] = {}
            for name, value in pending.items():
                old = self.tree.get(head_snap.tree, name)
                if (old or {}).get("id") == (value or {}).get("id"):
                    result.unchanged.append(name)
                    continue
                effective[name] = value
                if value is None:
                    result.removed.append(name)
                elif old is None:
                    result.added.append(name)
                else:
                    result.modified.append(name)
            if not effective:
                result.snapshot = None
                return result
            with self._parallel_writes():  # all objects land before the pointer moves
                tree = self.tree.update(head_snap.tree, effective)
                snap = self._write_snapshot(
                    parents=[head],
                    tree=tree,
                    message=message,
                    author=author,
                    changes=_summarise(result),
                )
            move = self.refs.move_branch(
                branch,
                snap.id,
                etag,
                attempt=attempt,
                contention_pause=rng.random() * min(0.2, 0.005 * 2 ** min(attempt, 8)),
            )
            if not move.moved:  # lost the race: rebase on the new head and try again
                if move.head is None or move.etag is None:
                    raise NotFoundError(
                        f"branch {branch!r} was deleted from {self.display} during the commit",
                        branch=branch,
                    )
                head, etag = move.head, move.etag
                continue
            result.snapshot = snap
            return result
        raise TransientError(
            f"branch {branch!r} of {self.display} kept moving: gave up after {max_attempts} "
            "attempts; try again",
            branch=branch,
        )


def _encode(kind: Kind, doc: dict[str, Any]) -> bytes:
    """The stored form of a JSON object: format header, canonical bytes."""
    return canonical_json({"format": OBJECT_FORMAT, "type": kind, **doc})


def _put_noting(site: Site, key: str, data: bytes, landed: set[str] | None) -> None:
    site.put(key, data)
    if landed is not None:
        landed.add(key)  # set.add is atomic under the GIL


def _leaf_max(info: Mapping[str, Any], display: str) -> int:
    """The entry-trie leaf size a repository is written with (format 1: 1,024)."""
    value = info.get("leaf_max", LEAF_MAX)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise CorruptError(f"{display}/{REPO_KEY} has an invalid leaf_max {value!r}")
    return value


def _summarise(result: CommitResult, cap: int = 100) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for what in ("added", "modified", "removed"):
        names = sorted(getattr(result, what))
        if names:
            out[what] = len(names)
            out[f"{what}_names"] = names[:cap]
    return out
