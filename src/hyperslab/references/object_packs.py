"""Object packs: many small repository objects stored as one, found through locators.

A repository holds three small objects per entry: its record, its reference map and
its chunk checksums. Written one by one, a sync of 2,500 entries costs 7,500 PUTs,
and on an object store every request costs the same whatever its size: they were
most of a first sync's time. So ``sync`` writes them packed, one pack per entry-tree
leaf (split at :data:`PACK_TARGET` bytes), and a *locator* per leaf says where each
of that leaf's objects lives. Layout below the repository prefix::

    packs/<sha256>.pack        objects' bytes, concatenated (named by the sha256 of
                               the whole pack, so re-uploading one is idempotent)
    locators/<leaf id>.json    for each entry of that leaf: its objects' keys →
                               [pack number, offset, length]

The rule every site keeps: **each object an entry of leaf L needs (entry record,
refmap, checksums) is stored either loose under its own key or in a pack named by
``locators/<L>.json``, which is written before L itself.** Readers reach entries
through leaves, so a reader tries the loose key first and, if it is absent, the
locator of the leaf it found the entry in (:class:`Repository` remembers which).
What a pack yields is checked against the object's sha256 like any loose object, so
a wrong locator or a damaged pack is an error, never wrong data.

Locators are site-local, like catalog indexes and hot-chunk replicas: two sites
holding the same snapshot may hold its objects differently (loose at the site that
ingested them, packed where sync put them), and snapshot ids stay the same
everywhere. Whoever writes a leaf writes its locator: sync for the leaves it copies
(the unchanged entries' locations come from the base leaf's locator), and a commit
at a site with packs for the leaves it rewrites (from the locators of the leaves it
read). Entries a commit adds are loose.

Packs are deterministic: a leaf's missing objects, sorted by key, are cut into packs
where the running size first reaches :data:`PACK_TARGET`. A sync killed after
uploading a pack rebuilds the very same bytes, finds the pack present and does not
upload it again. Objects over :data:`PACK_OBJECT_MAX` (large Parquet refmaps) stay
loose: packing saves a request, which matters only for small objects.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from hyperslab.errors import CorruptError, FormatVersionError, NotFoundError
from hyperslab.references.format import canonical_json, object_id
from hyperslab.references.keys import LOCATOR_PREFIX, is_object_id, locator_key, object_pack_key
from hyperslab.storage import Site

__all__ = [
    "PACK_OBJECT_MAX",
    "PACK_TARGET",
    "Locator",
    "PackSlot",
    "PackedObjects",
    "Packer",
]

#: a pack is cut once it holds at least this many bytes
PACK_TARGET = 16 << 20
#: objects larger than this are stored loose, never packed
PACK_OBJECT_MAX = 1 << 20
_VERSION = 1

#: where a packed object lives: (pack id, offset, length)
PackSlot = tuple[str, int, int]


@dataclass
class Locator:
    """Where the packed objects of one leaf's entries live: entry id → key → location.

    Entries whose objects are all loose at the site are simply not listed."""

    leaf: str
    entries: dict[str, dict[str, PackSlot]] = field(default_factory=dict)

    def locations(self) -> Iterator[tuple[str, PackSlot]]:
        for objs in self.entries.values():
            yield from objs.items()

    def packs(self) -> set[str]:
        return {where[0] for _, where in self.locations()}

    def to_bytes(self) -> bytes:
        packs = sorted(self.packs())
        number = {p: i for i, p in enumerate(packs)}
        entries = {
            eid: {key: [number[p], off, n] for key, (p, off, n) in objs.items()}
            for eid, objs in self.entries.items()
        }
        doc = {
            "type": "locator",
            "format": _VERSION,
            "leaf": self.leaf,
            "packs": packs,
            "entries": entries,
        }
        return canonical_json(doc)

    @classmethod
    def from_bytes(cls, data: bytes, leaf: str) -> Locator:
        where = f"locator of leaf {leaf}"
        try:
            doc = json.loads(data)
        except ValueError as exc:
            raise CorruptError(f"{where} is not valid JSON: {exc}", leaf=leaf) from exc
        if not isinstance(doc, dict) or doc.get("type") != "locator":
            raise CorruptError(f"{where} is not a locator", leaf=leaf)
        version = doc.get("format")
        if isinstance(version, int) and version > _VERSION:
            raise FormatVersionError(
                f"{where} uses locator format {version}; this hyperslab reads up to "
                f"{_VERSION}: upgrade hyperslab",
                version=version,
            )
        if version != _VERSION or doc.get("leaf") != leaf:
            raise CorruptError(f"{where} names another leaf or has no valid format", leaf=leaf)
        try:
            packs = [str(p) for p in doc["packs"]]
            if not all(is_object_id(p) for p in packs):
                raise ValueError("bad pack id")
            entries: dict[str, dict[str, PackSlot]] = {}
            for eid, objs in doc["entries"].items():
                if not is_object_id(eid):
                    raise ValueError(f"bad entry id {eid!r}")
                entries[eid] = {
                    str(key): (packs[_nonneg(i)], _nonneg(off), _nonneg(n))
                    for key, (i, off, n) in objs.items()
                }
        except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
            raise CorruptError(f"{where} is malformed: {exc}", leaf=leaf) from exc
        return cls(leaf, entries)


def _nonneg(x: Any) -> int:
    if not isinstance(x, int) or isinstance(x, bool) or x < 0:
        raise ValueError(f"bad offset or length {x!r}")
    return x


class Packer:
    """Cuts one leaf's objects into deterministic packs as their bytes arrive.

    ``keys`` is the order of the objects in the packs. Bytes may be handed in out of
    order from several threads or tasks (:meth:`add`); packs come out in order, each
    as soon as every object before its cut has arrived, so memory holds about one
    pack. An object handed in as ``None`` is not packed (stored loose instead)."""

    def __init__(self, keys: Sequence[str], target: int = PACK_TARGET) -> None:
        self.keys = list(keys)
        self.target = target
        self._got: dict[int, bytes | None] = {}
        self._next = 0
        self._buf: list[tuple[str, bytes]] = []
        self._size = 0
        self._lock = threading.Lock()

    def add(self, i: int, data: bytes | None) -> list[tuple[str, bytes, dict[str, PackSlot]]]:
        """Object ``i``'s bytes; returns the packs completed by it: ``(pack id, pack
        bytes, key → location)``, in order."""
        out = []
        with self._lock:
            self._got[i] = data
            while self._next in self._got:
                got = self._got.pop(self._next)
                if got is not None:
                    self._buf.append((self.keys[self._next], got))
                    self._size += len(got)
                self._next += 1
                if self._buf and (self._size >= self.target or self._next == len(self.keys)):
                    out.append(self._cut())
        return out

    def _cut(self) -> tuple[str, bytes, dict[str, PackSlot]]:
        pack = b"".join(data for _, data in self._buf)
        pid = object_id(pack)
        where: dict[str, PackSlot] = {}
        at = 0
        for key, data in self._buf:
            where[key] = (pid, at, len(data))
            at += len(data)
        self._buf, self._size = [], 0
        return pid, pack, where


class PackedObjects:
    """What one site keeps in packs, as far as this process has looked: the locators
    read (or written) so far, what they locate, and which leaf each entry, refmap and
    checksums id was reached through (readers find a packed object through the
    locator of that leaf). A :class:`~hyperslab.references.repository.Repository`
    holds one; sync and fsck ask it too."""

    def __init__(self, site: Site, display: str) -> None:
        self.site = site
        self.display = display
        self._leaf_of: dict[str, str] = {}
        self._locators: dict[str, Locator | None] = {}
        self._located: dict[str, PackSlot] = {}
        self._has_locators: bool | None = None

    def location(self, key: str) -> PackSlot | None:
        """Where object ``key`` is packed, if a locator read so far says so."""
        return self._located.get(key)

    def locator(self, leaf: str) -> Locator | None:
        """The locator of entry-tree leaf ``leaf`` at this site (None: there is none,
        all of its objects are loose). What it locates is remembered for reads."""
        if leaf in self._locators:
            return self._locators[leaf]
        try:
            loc: Locator | None = Locator.from_bytes(self.site.get(locator_key(leaf)), leaf)
        except NotFoundError:
            loc = None
        self.remember(leaf, loc)
        return loc

    def remember(self, leaf: str, loc: Locator | None) -> None:
        """Use ``loc`` as leaf ``leaf``'s locator here (just read or just written)."""
        self._locators[leaf] = loc
        if loc is not None:
            self._located.update(loc.locations())

    def note(self, kind: str, oid: str, doc: Mapping[str, Any]) -> None:
        """Remember which leaf the ids a parsed object names were reached through, so
        that a packed object can be found through that leaf's locator."""
        if kind == "manifest" and doc.get("kind") == "leaf":
            for value in doc.get("entries", {}).values():
                eid = value.get("id") if isinstance(value, dict) else None
                if isinstance(eid, str):
                    self._leaf_of[eid] = oid
        elif kind == "entry":
            leaf = self._leaf_of.get(oid)
            if leaf is None:
                return
            for ref in (doc.get("refmap"), doc.get("checksums")):
                if isinstance(ref, dict) and isinstance(ref.get("id"), str):
                    self._leaf_of[ref["id"]] = leaf

    def find(self, key: str, oid: str) -> PackSlot | None:
        """Where ``key`` is packed, from the locator of the leaf ``oid`` was reached
        through (None: not packed there, or not reached through a leaf)."""
        leaf = self._leaf_of.get(oid)
        if leaf is None:
            return None
        self.locator(leaf)
        return self._located.get(key)

    def read(self, kind: str, oid: str, where: PackSlot) -> bytes:
        """The packed bytes of object ``oid`` (the caller checks them against the id)."""
        pack, offset, length = where
        try:
            return self.site.get_range(object_pack_key(pack), offset, length)
        except NotFoundError:
            raise NotFoundError(
                f"{kind} {oid} is in pack {pack[:12]}…, which is missing from {self.display}",
                key=object_pack_key(pack),
                object=oid,
            ) from None

    def carried_locator(self, leaf: str, doc: Mapping[str, Any]) -> Locator | None:
        """A new leaf's locator, from the locators of the leaves its entries were read
        from (entries this writer adds are loose: they need none). Only at a site that
        has locators at all: elsewhere every object is loose."""
        if self._has_locators is None:
            self._has_locators = next(iter(self.site.list(LOCATOR_PREFIX)), None) is not None
        if not self._has_locators:
            return None
        entries = {}
        for value in doc.get("entries", {}).values():
            eid = value.get("id")
            came_from = self._leaf_of.get(eid)
            if came_from is None or came_from == leaf:
                continue
            old = self.locator(came_from)
            if old is not None and eid in old.entries:
                entries[eid] = old.entries[eid]
        return Locator(leaf, entries) if entries else None
