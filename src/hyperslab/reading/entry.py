"""One entry of one snapshot, ready to be read: its reference map, its chunk tables, and
the places each of its source files can be read from.

:class:`EntryView` is the zarr-free heart of every reader (the Zarr store, NumPy-style
arrays) and of sync's hot-chunk copy: it downloads the refmap and checksums once,
lists the hot-chunk replicas each site holds (while the refmap downloads), and
answers "where can the bytes of source S be read?" in preference order
(:meth:`EntryView.locations`), which :class:`~hyperslab.reading.routing.Router` asks.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from hyperslab.config import Config
from hyperslab.errors import BadInputError, CorruptError, HyperslabError, NotFoundError
from hyperslab.reading.chunk_tables import EagerChunks, LazyChunks, LazyRows
from hyperslab.reading.routing import Location
from hyperslab.references.checksums import aligned, read_checksums_meta, unpack_checksums
from hyperslab.references.chunk_replicas import ReplicaIndex, load_replicas
from hyperslab.references.keys import (
    REFMAP_EXTENSIONS,
    chunk_pack_key,
    logical_source_id,
    source_key,
)
from hyperslab.references.refmap import RefMap
from hyperslab.references.refmap_objects import decode_refmap, read_object_meta
from hyperslab.references.repository import DEFAULT_BRANCH, Repository
from hyperslab.storage import FileSite, Site, open_site

__all__ = ["EntryAddress", "EntryView", "pinned_snapshot", "replica_sites", "replica_specs"]

log = logging.getLogger(__name__)

_T = TypeVar("_T")


def _background(fn: Callable[[], _T]) -> Future[_T]:
    """Run ``fn`` on a daemon thread; its result (or exception) arrives in the future."""
    fut: Future[_T] = Future()

    def run() -> None:
        try:
            fut.set_result(fn())
        except BaseException as exc:  # handed to whoever waits for the result
            fut.set_exception(exc)

    threading.Thread(target=run, name="hyperslab-replicas", daemon=True).start()
    return fut


@dataclass(frozen=True)
class EntryAddress:
    """Everything needed to reopen the same pinned view (what stores and arrays pickle as)."""

    repo: str
    entry: str
    snapshot: str
    sites: tuple[str, ...]
    cache: bool
    stats: bool | str = True  # False: none; a path: that statistics database
    memory_cache: bool | int = True  # decoded chunks in memory: the configured size, or bytes


class EntryView:
    """One entry of one snapshot: its reference map and where each source can be read."""

    def __init__(
        self,
        repo: Repository,
        entry: str,
        snapshot: str,
        *,
        replicas: Sequence[tuple[str, Site]] = (),
    ) -> None:
        self.repo = repo
        self.entry = entry
        self.snapshot = snapshot
        self.record = repo.entry(snapshot, entry)
        self.source_names = {s["id"]: s["name"] for s in self.record.get("sources", [])}
        # the repository itself first unless the caller ordered sites explicitly
        self.sites: list[tuple[str, Site]] = list(replicas) or [(repo.display, repo.site)]
        # which hot chunks each site holds: listed while the refmap downloads
        self._replicas: Future[dict[tuple[str, str], list[ReplicaIndex]]] | None = None
        if self.source_names:
            self._replicas = _background(self._load_replicas)
        rm = self.record.get("refmap") or {}
        fmt = rm.get("format", "json")
        if fmt not in REFMAP_EXTENSIONS:
            raise CorruptError(f"entry {entry!r} names an unknown refmap format {fmt!r}")
        data = repo.get_object("refmap", rm["id"], REFMAP_EXTENSIONS[fmt])
        sums = self.record.get("checksums")
        sums_data = (
            repo.get_object("checksums", sums["id"], ".parquet")
            if isinstance(sums, dict) and sums.get("id")
            else None
        )
        self.refmap: RefMap
        self.chunks: EagerChunks | LazyChunks
        if fmt == "parquet":
            # large maps: metadata now, rows one row group at a time when asked for
            refs = LazyRows(data, ["source", "offset", "length", "raw"])
            meta = read_object_meta(refs.metadata)
            self.refmap = RefMap.from_metadata(meta["metadata"])
            self.refmap.sources = list(meta["sources"])
            paths = list(meta["arrays"])
            lazy_sums = None
            if sums_data is not None:
                lazy_sums = LazyRows(sums_data, ["crc32c"])
                if read_checksums_meta(lazy_sums.metadata)["arrays"] != paths:
                    raise CorruptError(f"chunk checksums of entry {entry!r} list other arrays")
            self.chunks = LazyChunks(paths, refs, lazy_sums)
        else:
            self.refmap = decode_refmap(data, fmt)
            checks = (
                aligned(self.refmap, unpack_checksums(sums_data)) if sums_data is not None else {}
            )
            self.chunks = EagerChunks(self.refmap, checks)
        self.verified = sums_data is not None
        self.source_ids: list[str | None] = [logical_source_id(s) for s in self.refmap.sources]
        self._held: dict[tuple[str, str], bool] = {}
        self._lock = threading.Lock()

    def _load_replicas(self) -> dict[tuple[str, str], list[ReplicaIndex]]:
        out: dict[tuple[str, str], list[ReplicaIndex]] = {}
        for display, site in self.sites:
            try:
                found = load_replicas(site, self.source_names)
            except HyperslabError as exc:  # the site is down: its replicas cannot help now
                log.info("cannot list chunk replicas at %s: %s", display, exc.message)
                continue
            for source, indexes in found.items():
                if indexes:
                    out[(display, source)] = indexes
        return out

    def replicas(self) -> dict[tuple[str, str], list[ReplicaIndex]]:
        """``(site display, source) → replica indexes`` of hot chunks held at each site."""
        return self._replicas.result() if self._replicas is not None else {}

    def locations(self, source: str) -> list[Location]:
        """Sites that may hold ``source``, in preference order.

        No request is made here: the first range read at a site tells (a site that
        answers "no such object" is remembered as not holding it, see :meth:`absent`),
        which saves a round trip on every cold open.
        """
        name = self.source_names.get(source)
        if name is None:
            return []
        key = source_key(source, name)
        replicas = self.replicas()
        out = []
        for display, site in self.sites:
            # a site's hot-chunk packs first: they hold just the chunks, nothing else
            for index in replicas.get((display, source), ()):
                out.append(Location(site, chunk_pack_key(index.pack), display, index))
            out.append(Location(site, key, display))
        with self._lock:
            out = [loc for loc in out if self._held.get((loc.name, loc.key)) is not False]
        origin = self._origin(source)
        if origin is not None:
            out.append(origin)
        return out

    def absent(self, location: Location) -> None:
        """``location`` answered that it does not hold its object: skip it from now on."""
        with self._lock:
            self._held[(location.name, location.key)] = False

    def _origin(self, source: str) -> Location | None:
        """The file ingest read, if it is here with its recorded size: a last resort.

        Only for entries with chunk checksums: every chunk read from it is checked, so a
        file rewritten since ingest is refused chunk by chunk, never served.
        """
        if not self.verified:
            return None
        rec = next((s for s in self.record.get("sources", []) if s.get("id") == source), None)
        if rec is None or not isinstance(rec.get("origin"), str) or "://" in rec["origin"]:
            return None
        p = Path(rec["origin"])
        try:
            if not p.is_file() or p.stat().st_size != int(rec.get("size", -1)):
                return None
        except OSError:
            return None
        return Location(FileSite(p.parent, fsync=False), p.name, f"origin {p}")


def pinned_snapshot(
    repo: Repository,
    *,
    branch: str | None = None,
    tag: str | None = None,
    snapshot: str | None = None,
) -> str:
    """The snapshot id at most one of ``branch`` (default ``main``), ``tag`` or
    ``snapshot`` (an id or unique prefix) names now."""
    if sum(x is not None for x in (branch, tag, snapshot)) > 1:
        raise BadInputError("give at most one of branch=, tag= and snapshot=")
    if tag is not None:
        tags = repo.tags()
        if tag not in tags:
            raise NotFoundError(
                f"no tag {tag!r} in {repo.display} (tags: {', '.join(sorted(tags)) or 'none'})",
                tag=tag,
            )
        return tags[tag]
    if snapshot is not None:
        return repo.resolve(snapshot)
    return repo.branch_head(branch or DEFAULT_BRANCH)[0]


def replica_sites(
    repo: Repository, spec: str | None, sites: Sequence[str] | None, config: Config
) -> tuple[list[str], list[tuple[str, Site]]]:
    """The repository locations to read chunk bytes from, most preferred first, as
    ``(specs, [(display, site)])``: ``sites`` as given; else, for ``SITE:path``, that
    path at every configured site in preference order; else none (the repository
    itself). The repository's own site is always among them."""
    specs = list(sites) if sites else (replica_specs(spec, config) if spec else [])
    out: list[tuple[str, Site]] = []
    for s in specs:
        if s == spec:
            out.append((repo.display, repo.site))
            continue
        site, display = open_site(s, config)
        # the repository's own location, named another way: its open site serves
        out.append((repo.display, repo.site) if display == repo.display else (display, site))
    if out and not any(site is repo.site for _, site in out):
        out.append((repo.display, repo.site))
    return specs, out


def replica_specs(repo: str, config: Config) -> list[str]:
    """``SITE:path`` → the same path at every configured site, in preference order
    (empty for any other repository spec)."""
    name, colon, path = repo.partition(":")
    if not colon or "/" in name or name not in config.sites:
        return []
    order = list(config.preference) or list(config.sites)
    order += [s for s in config.sites if s not in order]
    return [f"{s}:{path}" for s in order]
