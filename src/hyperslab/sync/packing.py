"""Object packs at a sync destination: which pack each missing entry object goes into,
and the leaf locators written once every pack is verified (references/object_packs.py).
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

from hyperslab.errors import HyperslabError
from hyperslab.references.keys import KIND_OF_DIR, locator_key, split_object_key
from hyperslab.references.object_packs import PACK_OBJECT_MAX, Locator, Packer, PackSlot
from hyperslab.references.repository import Repository
from hyperslab.sync.plan import CopyItem, Walker
from hyperslab.sync.presence import read_locators
from hyperslab.sync.report import CHUNK_PACK, REPLICA_INDEX, SyncReport, Tally

__all__ = ["Packing", "pack_counts", "pack_ready", "plan_tally", "write_locators"]


class Packing:
    """The object packs and leaf locators one sync writes (references/packs.py).

    Missing entry records, refmaps and checksums are packed per leaf of the walk (the
    first leaf that needs each); once every pack is verified, each new leaf gets its
    locator: the unchanged entries' locations from its base leaf's locator, the new
    ones from this sync's packs or the destination's existing locators."""

    def __init__(
        self,
        walker: Walker,
        dst: Repository,
        fresh: bool,
        pack: bool,
        missing: list[CopyItem],
        jobs: int = 16,
    ) -> None:
        self.walker = walker
        self.dst = dst
        self.jobs = jobs
        self.fresh = fresh  # the destination had nothing: no pack can be there yet
        self.packed: dict[str, PackSlot] = {}
        self._lock = threading.Lock()
        if not pack:
            return
        by_leaf: dict[str, list[CopyItem]] = {}
        for o in missing:
            leaf = walker.owner.get(o.key)
            if leaf is not None:
                by_leaf.setdefault(leaf, []).append(o)
        for leaf in walker.leaves:  # walk order, keys sorted: the same packs every run
            group = sorted(by_leaf.get(leaf, []), key=lambda o: o.key)
            packer = Packer([o.key for o in group])
            for i, o in enumerate(group):
                o.packer, o.index, o.phase = packer, i, 0

    def record(self, where: dict[str, PackSlot]) -> None:
        with self._lock:
            self.packed.update(where)

    def locators(self) -> list[Locator]:
        """The new leaves' locators to write (those the destination lacks), in walk order."""
        dst, walker = self.dst, self.walker
        bases = {b for b, _ in walker.leaves.values() if b and b not in walker.leaves}
        if bases and not self.fresh:
            read_locators(dst, bases, self.jobs)
        built: dict[str, Locator | None] = {}
        out = []
        for leaf, (base, eids) in walker.leaves.items():
            # read (and remembered) before the copy by read_locators
            have = None if self.fresh else dst.packs.locator(leaf)
            if have is not None:  # a killed sync wrote it (after the packs it names)
                built[leaf] = have
                continue
            base_loc = built.get(base) if base in built else (
                None if self.fresh or base is None else dst.packs.locator(base)
            )  # fmt: skip
            entries: dict[str, dict[str, PackSlot]] = {}
            for eid in eids:
                objs = dict(base_loc.entries.get(eid, {})) if base_loc else {}
                for key in walker.entry_keys.get(eid, ()):
                    where = self.packed.get(key) or dst.packs.location(key)
                    if where is not None:
                        objs[key] = where
                if objs:
                    entries[eid] = objs
            loc = Locator(leaf, entries) if entries else None
            built[leaf] = loc
            if loc is not None:
                out.append(loc)
        return out


def write_locators(dst: Repository, packing: Packing, report: SyncReport, jobs: int) -> None:
    """Every new leaf's locator, once every pack it may name is verified at ``dst``, and
    before the leaf itself (phase 2)."""
    try:
        todo = packing.locators()
    except HyperslabError as exc:
        report.failures.append({"key": "locators/", "kind": "locator", "error": exc.message,
                                "code": exc.code})  # fmt: skip
        return

    def put(loc: Locator) -> None:
        try:
            dst.site.put_verified(locator_key(loc.leaf), loc.to_bytes())
        except HyperslabError as exc:
            report.failures.append({"key": locator_key(loc.leaf), "kind": "locator",
                                    "error": exc.message, "code": exc.code})  # fmt: skip
            return
        dst.packs.remember(loc.leaf, loc)
        report.locators += 1

    if todo:
        with ThreadPoolExecutor(min(jobs, len(todo))) as pool:
            list(pool.map(put, todo))


def pack_ready(
    o: CopyItem, data: bytes
) -> tuple[bool, list[tuple[str, bytes, dict[str, PackSlot]]]]:
    """Hand a packed object's verified bytes to its leaf's packer: ``(store it loose?,
    the packs it completed)``."""
    assert o.packer is not None
    loose = len(data) > PACK_OBJECT_MAX
    return loose, o.packer.add(o.index, None if loose else data)


def pack_counts(where: dict[str, PackSlot]) -> list[tuple[str, int]]:
    return [(KIND_OF_DIR[split_object_key(k)[0]], n) for k, (_, _, n) in where.items()]


def plan_tally(tally: Tally, missing: list[CopyItem]) -> None:
    """Count what copying ``missing`` (packed by :class:`Packing`) writes, the way the
    copy counts what it wrote: each object by kind, those given to an object pack and
    the packs (one per leaf that has any; a leaf's objects over 16 MiB are cut into
    more, and an object over 1 MiB is stored loose when its bytes show it), each
    hot-chunk pack with its replica index and chunks."""
    packers = set()
    for o in missing:
        tally.add(o.kind)
        if o.packer is not None:
            tally.packed += 1
            packers.add(id(o.packer))
        if o.kind == CHUNK_PACK:
            tally.add(REPLICA_INDEX)
            tally.hot_chunks += o.chunks
    tally.packs = len(packers)
