"""``hyperslab watch``: follow a directory a detector writes into and commit each file
once it is complete.

Design
======

A poll loop (``os.scandir`` of the tree every ``interval`` seconds; no inotify, so it
works the same on NFS, GPFS and Lustre, where inotify sees nothing of other clients'
writes). Each HDF5-looking file (the suffixes ``refs`` and ``ingest`` take; names
starting with ``.`` are skipped, so ``.scan.h5.tmp``-style temporaries are not
followed) goes through these guards, in order; any one of them failing means "not
ready yet", never "failed":

1. **Stability window** (``settle``). A file's *signature* is ``(size, mtime, ctime,
   inode)``. It must not have changed for ``settle`` seconds: either this process
   saw the same signature ``settle`` seconds ago, or the file's own mtime and ctime
   are both that old (so a restart, or a ``--once`` run from cron, need not wait
   again for files that were finished long ago). ctime cannot be set back by a
   program (``touch -d`` and ``rsync -t`` move it forward), so a file rewritten in
   place, truncated or renamed over always restarts the window. The timestamp half
   assumes the file server's clock is not behind this machine's by more than
   ``settle``; the guards below do not depend on clocks.
2. **Superblock.** The HDF5 superblock (at 0, 512, 1024, ... bytes) is read directly:
   its *file consistency flags* say "open for writing" (bit 0) or "open for SWMR
   writing" (bit 2) from the writer's open until its close (HDF5 marks version 3
   superblocks, ``libver="latest"`` and SWMR files; HDF5 2.0 marks version 0/1 too);
   and its *end-of-file address* must not lie past the file's size (a file copied
   or written sequentially is a prefix of itself until done). A writer that
   crashed leaves the flag set: the file waits, reported once, until it is
   repaired (``h5clear -s``) or replaced. A file with no signature yet is left to
   the conversion, which reports it as ``not_hdf5``.
3. **Locks.** HDF5 >= 1.10 holds a file lock while a writer has the file open
   (``flock``, or ``fcntl`` locks in some builds). A non-blocking shared ``flock``
   and ``lockf`` probe, released at once, then ``h5py.File(path, "r")`` with h5py's
   default locking: "unable to lock file" or "already open for write" means the
   writer still has it. (The probe is taken only on settled files and lasts
   milliseconds; a writer that re-opens a settled file in append mode at that very
   moment sees the same lock error any reader would cause.) With
   ``HDF5_USE_FILE_LOCKING=FALSE`` (common on parallel filesystems) guard 2 and the
   window remain.
4. **Conversion.** The file is converted and its objects stored (content
   addressed: a file already in the repository writes nothing). ``ingest`` refuses
   a source whose size or mtime changed while it was read (``source_changed``); the
   watcher also re-stats the file after converting and again just before the
   commit, and a file whose signature moved goes back to step 1 (its converted
   objects, if any, are unreachable and ``gc`` removes them). A conversion that
   fails on a lock, or on an external link whose target is not there yet, waits
   (the latter is retried when new files appear); any other failure is reported
   once as ``file_failed`` and skipped until the file changes.

**Batching.** Converted files wait in one batch. It is committed (one snapshot,
``Repository.commit`` merges with concurrent writers) when it holds ``batch_files``
files, or at the end of a scan once ``batch_seconds`` have passed since the previous
commit: a lone file after a quiet spell is committed at once, a burst becomes one
commit per ``batch_seconds`` or per ``batch_files`` files. A commit that fails for a
transient reason is retried (backing off up to 5 minutes); an entry conflict (another
job changed the same entry) fails those files.

**Entry names.** ``template`` is a ``str.format`` string over the fields in
:data:`TEMPLATE_FIELDS`; empty path segments are dropped (``{dir}/{stem}`` at the top
level is ``{stem}``). Two files may not map to one entry.

**Restarts and state.** Correctness never depends on the state: re-ingesting an
unchanged file writes nothing and makes no snapshot. The state only saves work: a
small JSON file (``state``; by default under the user state directory, keyed by
repository, branch, directory and template) holds, for each file now in the
directory that was committed or failed, its signature, entry name and outcome. A
restart skips files whose signature is unchanged without reading them, and does not
retry failures until the file changes. It is written atomically (temp + rename)
after each commit or failure and holds nothing about files that have left the
directory, so memory and state are bounded by what the directory holds; an
exclusive lock on ``state + ".lock"`` keeps two watchers from sharing one.

**Running for days.** One event per line (``emit``; the CLI prints text or JSON,
flushed), a periodic ``heartbeat``, no growing lists. ``stop`` (set by SIGTERM/SIGINT
in the CLI) ends the loop after the current batch is committed and the state saved.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import resource
import string
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from hyperslab.convert.api import HDF5_SUFFIXES
from hyperslab.convert.hdf5 import BrokenLinkError, ConvertOptions
from hyperslab.convert.ingest import EntryPlan, ingest_entry
from hyperslab.convert.watch_series import (
    SeriesRule,
    SeriesStat,
    frames_in,
    is_series,
    series_folder,
    series_stat,
)
from hyperslab.errors import (
    AccessDeniedError,
    BadInputError,
    ConflictError,
    HyperslabError,
    NotFoundError,
    SourceChangedError,
)
from hyperslab.references.format import check_entry_name
from hyperslab.references.refmap_objects import RefmapFormat
from hyperslab.references.repository import DEFAULT_BRANCH, EntryConflictError, Repository

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "TEMPLATE_FIELDS",
    "WatchSummary",
    "check_template",
    "entry_name",
    "not_ready_reason",
    "now_iso",
    "watch",
]

#: the fields of a name template, for ``sub/scan_0001.h5`` under DIR ``run42``
TEMPLATE_FIELDS = {
    "path": "the path under DIR without the suffix (sub/scan_0001)",
    "stem": "the file name without its suffix (scan_0001)",
    "name": "the file name (scan_0001.h5)",
    "ext": "the suffix without the dot (h5)",
    "dir": "the folder under DIR ('' at the top level: its segment is dropped) (sub)",
    "parent": "the name of the folder holding the file (DIR's own name at the top) (sub)",
    "root": "DIR's name (run42)",
}
_NAMING = ("path", "stem", "name")
_SIGNATURE = b"\x89HDF\r\n\x1a\n"
_STATE_FORMAT = "hyperslab-watch-state"
_MAX_BACKOFF = 300.0

Signature = tuple[int, int, int, int]  # size, mtime_ns, ctime_ns, inode
Event = dict[str, Any]


# ---------------------------------------------------------------- entry names
def check_template(template: str) -> None:
    """Refuse a template with unknown fields, or one that could give two files one name."""
    fields: list[str] = []
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise BadInputError(f"bad name template {template!r}: {exc}") from None
    for _, fname, spec, conv in parsed:
        if fname is None:
            continue
        if fname not in TEMPLATE_FIELDS:
            raise BadInputError(
                f"bad name template {template!r}: unknown field {{{fname}}}; fields are "
                + ", ".join(f"{{{f}}}" for f in TEMPLATE_FIELDS)
            )
        if spec or conv:
            raise BadInputError(
                f"bad name template {template!r}: {{{fname}}} takes no format or conversion"
            )
        fields.append(fname)
    if not any(f in _NAMING for f in fields):
        raise BadInputError(
            f"bad name template {template!r}: it would give every file the same entry; "
            "use {stem}, {name} or {path} (e.g. 'run42/{stem}')"
        )
    entry_name(template, Path("/d/run"), "sub/scan_0001.h5")  # a bad constant part


def entry_name(template: str, root: Path, rel: str) -> str:
    """The entry name ``template`` gives file ``rel`` (a POSIX path under ``root``)."""
    p = Path(rel)
    d = p.parent.as_posix()
    d = "" if d == "." else d
    values = {
        "path": p.with_suffix("").as_posix(),
        "stem": p.stem,
        "name": p.name,
        "ext": p.suffix[1:],
        "dir": d,
        "parent": p.parent.name if d else root.name,
        "root": root.name,
    }
    name = "/".join(s for s in template.format(**values).split("/") if s)
    return check_entry_name(name)


# ---------------------------------------------------------------- readiness
def _superblock_reason(path: str, size: int) -> str | None:
    with open(path, "rb") as fh:
        offset = 0
        while offset < size:
            fh.seek(offset)
            head = fh.read(64)
            if head[:8] == _SIGNATURE:
                break
            offset = 512 if offset == 0 else offset * 2
        else:
            return None  # no signature: the conversion reports not_hdf5
    if len(head) < 16:
        return "incomplete: the superblock is cut short"
    version = head[8]
    if version in (0, 1):
        width, start, flags = head[13], (24 if version == 0 else 28), head[20:24]
        flag = struct.unpack("<I", flags)[0] if len(flags) == 4 else 0
        driver_at = start + 3 * width
    elif version in (2, 3):
        width, start, flag, driver_at = head[9], 12, head[11], -1
    else:
        return None  # a newer format: the conversion decides
    if flag & 0x1 or flag & 0x4:
        what = "SWMR writing" if flag & 0x4 else "writing"
        return (
            f"open for {what} (superblock flags; a writer that crashed leaves them: "
            "h5clear -s clears them)"
        )
    if width not in (2, 4, 8) or len(head) < start + 4 * width:
        return None
    undefined = (1 << (8 * width)) - 1
    eof = int.from_bytes(head[start + 2 * width : start + 3 * width], "little")
    driver = int.from_bytes(head[driver_at : driver_at + width], "little") if driver_at > 0 else 0
    if driver_at > 0 and driver != undefined:
        return None  # family/split/multi files: the EOF address spans several files
    if eof != undefined and size < eof:
        return f"incomplete: {size} bytes of {eof} (end-of-file address in the superblock)"
    return None


def _lock_reason(path: str) -> str | None:
    if fcntl is not None:
        fd = os.open(path, os.O_RDONLY)
        try:
            for lock, how in ((fcntl.flock, "flock"), (fcntl.lockf, "fcntl")):
                try:
                    lock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                except (BlockingIOError, PermissionError):
                    return f"locked by a writer ({how})"
                except OSError:
                    continue  # no locks on this filesystem
                lock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)
    import h5py

    try:
        with h5py.File(path, "r"):
            pass
    except OSError as exc:
        return _writer_open(str(exc))
    return None


def _writer_open(message: str) -> str | None:
    low = message.lower()
    if "unable to lock file" in low:
        return "locked by a writer (HDF5 file locking)"
    if "already open for write" in low:
        return "open for writing (HDF5 refuses to read it)"
    if "truncated file" in low:
        return "incomplete (HDF5: truncated file)"
    return None


def not_ready_reason(path: str | Path, size: int | None = None) -> str | None:
    """Why the HDF5 file at ``path`` is still being written, or None (guards 2 and 3)."""
    p = str(path)
    size = os.stat(p).st_size if size is None else size
    return _superblock_reason(p, size) or _lock_reason(p)


# ---------------------------------------------------------------- the watcher
@dataclass
class _File:
    sig: Signature
    since: float  # monotonic time this signature was first seen
    status: str = "new"  # new | waiting | pending | done | failed
    reason: str | None = None  # the waiting reason last reported
    generation: int = -1  # for conversion waits: the file-set generation of that try
    entry: str | None = None
    value: dict[str, Any] | None = None
    code: str | None = None


@dataclass
class WatchSummary:
    """What one :func:`watch` call did."""

    snapshots: list[str] = field(default_factory=list)
    committed: int = 0  # entries added or modified by those snapshots
    unchanged: int = 0  # files converted and found already as in the repository
    failed: list[tuple[str, HyperslabError]] = field(default_factory=list)
    waiting: dict[str, str] = field(default_factory=dict)  # at the end: file → reason

    def to_json(self) -> dict[str, Any]:
        return {
            "snapshots": self.snapshots,
            "committed": self.committed,
            "unchanged": self.unchanged,
            "failed": [{"source": s, "error": e.to_json()} for s, e in self.failed],
            "waiting": self.waiting,
        }


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _signature(st: os.stat_result | SeriesStat) -> Signature:
    return (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)


def default_state_path(repo: Repository, branch: str, directory: Path, template: str) -> Path:
    """Where a watch keeps its state by default (one file per repo/branch/dir/template)."""
    import platformdirs

    key = hashlib.sha256(
        json.dumps([repo.id, repo.display, branch, str(directory), template]).encode()
    ).hexdigest()[:20]
    return Path(platformdirs.user_state_dir("hyperslab")) / "watch" / f"{key}.json"


class _Watcher:
    def __init__(
        self,
        repo: Repository,
        directory: Path,
        template: str,
        emit: Callable[[Event], None],
        *,
        branch: str,
        settle: float,
        batch_files: int,
        batch_seconds: float,
        state_path: Path,
        message: str | None,
        author: str | None,
        upload_sources: bool,
        options: ConvertOptions | None,
        refmap_format: RefmapFormat | None,
        series: SeriesRule | None = None,
    ) -> None:
        self.repo, self.root, self.template, self._emit = repo, directory, template, emit
        self.series = series  # None: HDF5 files only (watch_series.py)
        self.branch, self.settle = branch, settle
        self.batch_files, self.batch_seconds = batch_files, batch_seconds
        self.state_path, self.message, self.author = state_path, message, author
        self.ingest_kw: dict[str, Any] = {
            "options": options,
            "upload_sources": upload_sources,
            "refmap_format": refmap_format,
        }
        self.files: dict[str, _File] = {}
        self.names: dict[str, str] = {}  # entry → file, for files pending or done
        self.batch: list[str] = []
        self.base: str | None = None
        self.last_commit = -float("inf")
        self.retry_at = 0.0
        self.backoff = 1.0
        self.generation = 0
        self.dirty = False
        self.unreadable: set[str] = set()
        self.summary = WatchSummary()
        self.once = False
        self.known = self._load_state()

    def emit(self, kind: str, **fields: Any) -> None:
        self._emit({"event": kind, "time": now_iso(), **fields})

    # ------------------------------------------------------------- state
    def _state_header(self) -> dict[str, Any]:
        return {
            "format": _STATE_FORMAT,
            "version": 1,
            "repo": self.repo.id,
            "branch": self.branch,
            "dir": str(self.root),
            "template": self.template,
        }

    def _load_state(self) -> dict[str, tuple[Signature, str, str | None, str | None]]:
        try:
            doc = json.loads(self.state_path.read_text())
            if {k: doc.get(k) for k in self._state_header()} != self._state_header():
                self.emit("note", message=f"state {self.state_path} is for another watch: ignored")
                return {}
            return {
                rel: ((int(v[0]), int(v[1]), int(v[2]), int(v[3])), str(v[4]), v[5], v[6])
                for rel, v in doc["files"].items()
            }
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, KeyError, TypeError, IndexError) as exc:
            self.emit(
                "note",
                message=f"state {self.state_path} is unreadable ({type(exc).__name__}): "
                "starting afresh (unchanged files write nothing)",
            )
            return {}

    def save_state(self) -> None:
        if not self.dirty:
            return
        files = {
            rel: [*f.sig, f.status, f.entry, f.code]
            for rel, f in sorted(self.files.items())
            if f.status in ("done", "failed")
        }
        data = json.dumps({**self._state_header(), "files": files}, separators=(",", ":"))
        self.state_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.state_path.with_name(f".{self.state_path.name}.{os.getpid()}.tmp")
        tmp.write_text(data)
        os.replace(tmp, self.state_path)
        self.known = {}
        self.dirty = False

    # ------------------------------------------------------------- scanning
    def _walk(self, d: Path, rel: str) -> Iterator[tuple[str, os.stat_result | SeriesStat]]:
        try:
            with os.scandir(d) as it:
                entries = list(it)
            self.unreadable.discard(rel)
        except OSError as exc:
            if rel not in self.unreadable and len(self.unreadable) < 1000:
                self.unreadable.add(rel)
                self.emit("note", message=f"cannot list {d}: {exc.strerror}")
            return
        if self.series is not None:
            stat = series_stat(frames_in(d))
            if stat is not None:  # this folder's frames: one item
                yield (f"{rel}/" if rel else "./"), stat
        for e in entries:
            if e.name.startswith("."):
                continue
            r = f"{rel}/{e.name}" if rel else e.name
            try:
                if e.is_dir(follow_symlinks=False):
                    yield from self._walk(Path(e.path), r)
                elif e.name.lower().endswith(HDF5_SUFFIXES) and e.is_file():
                    yield r, e.stat()
            except OSError:
                continue  # vanished between the listing and the stat

    def scan(self, now: float) -> None:
        listing = dict(self._walk(self.root, ""))
        for rel in [r for r in self.files if r not in listing]:
            gone = self.files.pop(rel)
            self._forget(rel, gone)
            if gone.status != "done":
                self.emit("file_gone", path=rel)
            self.dirty = self.dirty or gone.status in ("done", "failed")
        wall = time.time()
        for rel, st in sorted(listing.items()):
            sig = _signature(st)
            f = self.files.get(rel)
            if f is None:
                known = self.known.get(rel)
                if known and known[0] == sig:
                    _, status, entry, code = known
                    self.files[rel] = _File(sig, now, status, entry=entry, code=code)
                    if entry and status == "done":
                        self.names[entry] = rel
                    continue
                age = wall - max(st.st_mtime_ns, st.st_ctime_ns) / 1e9
                since = now - max(0.0, min(age, self._window(rel)))
                self.files[rel] = _File(sig, since)
                self.generation += 1
                self.emit("file_seen", path=rel, size=st.st_size)
            elif f.sig != sig:
                if f.status in ("done", "failed", "pending"):
                    self.emit("file_changed", path=rel, size=st.st_size, was=f.status)
                    self.dirty = self.dirty or f.status != "pending"
                self._forget(rel, f)
                self.files[rel] = _File(sig, now)
                self.generation += 1
        self.known = {}

    def _forget(self, rel: str, f: _File) -> None:
        if f.entry is not None and self.names.get(f.entry) == rel:
            del self.names[f.entry]
        if rel in self.batch:
            self.batch.remove(rel)

    def next_wake(self, now: float) -> float:
        """Seconds until the earliest settling file settles (inf: none)."""
        t = [
            f.since + self.settle - now
            for f in self.files.values()
            if f.status == "new" or (f.status == "waiting" and f.generation < 0)
        ]
        if self.batch:
            t.append(self.last_commit + self.batch_seconds - now)
        return max(0.0, min(t, default=float("inf")))

    # ------------------------------------------------------------- converting
    def candidates(self, now: float) -> list[str]:
        out = []
        for rel, f in self.files.items():
            if f.status == "new" or f.status == "waiting":
                if f.status == "waiting" and f.generation >= 0 and f.generation == self.generation:
                    continue  # waits for new files (a link target) before trying again
                if now - f.since >= self._window(rel):
                    out.append(rel)
        return sorted(out, key=lambda r: (self.files[r].sig[1], r))

    def _window(self, rel: str) -> float:
        """How long an item must stay unchanged: ``settle``; for a series, its rule's."""
        if self.series is not None and is_series(rel):
            return self.series.window(self.settle)
        return self.settle

    def _wait(self, rel: str, f: _File, reason: str, *, conversion: bool = False) -> None:
        f.status = "waiting"
        f.generation = self.generation if conversion else -1
        if reason != f.reason:
            f.reason = reason
            self.emit("file_waiting", path=rel, reason=reason)

    def _fail(self, rel: str, f: _File, exc: HyperslabError) -> None:
        f.status, f.code, f.value = "failed", exc.code, None
        self.dirty = True
        self.summary.failed.append((rel, exc))
        self.emit("file_failed", path=rel, entry=f.entry, error=exc.to_json())

    def _restat(self, rel: str) -> Signature | None:
        if is_series(rel):
            stat = series_stat(frames_in(series_folder(self.root, rel)))
            return None if stat is None else _signature(stat)
        try:
            return _signature(os.stat(self.root / rel))
        except OSError:
            return None

    def convert(self, rel: str, now: float) -> None:
        f = self.files[rel]
        series = self.series is not None and is_series(rel)
        folder = series_folder(self.root, rel)
        path = str(folder) if series else str(self.root / rel)
        frames = frames_in(folder) if series else [path]
        if self._restat(rel) != f.sig:
            return  # the next scan sees the change
        try:
            named = (rel.rstrip("/") if rel != "./" else self.root.name) if series else rel
            f.entry = entry_name(self.template, self.root, named)
        except HyperslabError as exc:
            self._fail(rel, f, exc)
            return
        holder = self.names.get(f.entry)
        if holder is not None and holder != rel and holder in self.files:
            self._fail(
                rel,
                f,
                BadInputError(
                    f"the name template gives {rel} the entry {f.entry!r} of {holder}; "
                    "give each file its own name (e.g. '{path}')",
                    entry=f.entry,
                ),
            )
            return
        try:
            if series:
                assert self.series is not None
                reason = self.series.incomplete(folder, frames)
            else:
                reason = not_ready_reason(path, f.sig[0])
        except OSError as exc:
            reason = f"cannot read it yet: {exc.strerror}"
        if reason:
            self._wait(rel, f, reason)
            return
        if self.base is None:
            self.base = self.repo.branch_head(self.branch)[0]
        try:
            value, summary = ingest_entry(self.repo, EntryPlan(f.entry, frames), **self.ingest_kw)
        except SourceChangedError:
            return
        except BrokenLinkError as exc:
            self._wait(rel, f, f"waiting for a link target: {exc.message}", conversion=True)
            return
        except HyperslabError as exc:
            why = _writer_open(exc.message)
            if why:
                self._wait(rel, f, why)
            else:
                self._fail(rel, f, exc)
            return
        except Exception as exc:  # a bug must not stop a watch of days
            err = HyperslabError(f"internal error: {type(exc).__name__}: {exc}")
            self._fail(rel, f, err)
            return
        if self._restat(rel) != f.sig:
            return
        f.status, f.value, f.reason = "pending", value, None
        self.names[f.entry] = rel
        self.batch.append(rel)
        self.emit(
            "file_ready",
            path=rel,
            entry=f.entry,
            arrays=summary["arrays"],
            counts=summary["counts"],
            refs=summary["refs"],
            seconds_settled=round(now - f.since, 3),
        )

    # ------------------------------------------------------------- committing
    def commit(self, now: float) -> None:
        for rel in list(self.batch):
            f = self.files[rel]
            if self._restat(rel) != f.sig:  # changed after converting: back to settling
                self.batch.remove(rel)
                self._forget(rel, f)
                self.files[rel] = _File(self._restat(rel) or f.sig, now)
        if not self.batch:
            self.base = None
            return
        changes = {self.files[r].entry or "": self.files[r].value for r in self.batch}
        names = sorted(changes)
        what = names[0] if len(names) == 1 else f"{len(names)} entries: {names[0]}, …"
        msg = self.message or f"watch {self.root.name}: ingest {what}"
        try:
            res = self.repo.commit(
                changes, branch=self.branch, message=msg, author=self.author, base=self.base
            )
        except EntryConflictError as exc:  # another job changed these entries: theirs stand
            self.emit("commit_failed", error=exc.to_json(), files=len(changes), retry=False)
            for rel in list(self.batch):
                self._forget(rel, self.files[rel])
                self._fail(rel, self.files[rel], exc)
            self.batch, self.base = [], None
            return
        except HyperslabError as exc:
            if self.once:
                raise
            self.retry_at = now + self.backoff
            self.emit("commit_failed", error=exc.to_json(), files=len(changes), retry=self.backoff)
            self.backoff = min(self.backoff * 2, _MAX_BACKOFF)
            return
        self.backoff, self.retry_at, self.last_commit = 1.0, 0.0, now
        for rel in self.batch:
            f = self.files[rel]
            f.status, f.value = "done", None
        files = [{"path": r, "entry": self.files[r].entry} for r in self.batch]
        self.summary.committed += len(res.added) + len(res.modified)
        self.summary.unchanged += len(res.unchanged)
        self.batch, self.base, self.dirty = [], None, True
        if res.snapshot is None:
            self.emit("unchanged", entries=len(res.unchanged), files=files)
        else:
            self.summary.snapshots.append(res.snapshot.id)
            self.emit(
                "committed",
                snapshot=res.snapshot.id,
                branch=self.branch,
                added=len(res.added),
                modified=len(res.modified),
                unchanged=len(res.unchanged),
                files=files,
            )
        self.save_state()

    def due(self, now: float, final: bool) -> bool:
        if not self.batch or now < self.retry_at:
            return False
        return (
            final
            or len(self.batch) >= self.batch_files
            or now - self.last_commit >= self.batch_seconds
        )

    def cycle(self, stop: threading.Event, final: bool) -> None:
        now = time.monotonic()
        self.scan(now)
        for rel in self.candidates(now):
            if stop.is_set():
                break
            if rel in self.files:
                self.convert(rel, time.monotonic())
            if len(self.batch) >= self.batch_files and self.due(time.monotonic(), False):
                self.commit(time.monotonic())
        if final:  # --once: say why the rest is left for next time
            for rel, f in self.files.items():
                if f.status == "new":
                    left = max(0.0, self.settle - (now - f.since))
                    self._wait(rel, f, f"settling: {left:.1f} s of --settle {self.settle:g} s left")
        if self.due(time.monotonic(), final or stop.is_set()):
            self.commit(time.monotonic())
        self.save_state()

    def counts(self) -> dict[str, int]:
        c = {"files": len(self.files), "waiting": 0, "pending": 0, "settling": 0}
        for f in self.files.values():
            key = {"new": "settling", "waiting": "waiting", "pending": "pending"}.get(f.status)
            if key:
                c[key] += 1
        return c


def _lock_state(path: Path) -> Any:
    path.parent.mkdir(parents=True, exist_ok=True)
    fh = open(path.with_name(path.name + ".lock"), "a")  # noqa: SIM115 - held for the run
    if fcntl is not None:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.close()
            raise ConflictError(
                f"another watch is running with the state {path}; stop it or give --state",
                state=str(path),
            ) from None
    return fh


def watch(
    repo: Repository,
    directory: str | Path,
    template: str = "{path}",
    *,
    branch: str = DEFAULT_BRANCH,
    settle: float = 5.0,
    interval: float = 1.0,
    batch_files: int = 100,
    batch_seconds: float = 1.0,
    heartbeat: float = 300.0,
    once: bool = False,
    state: str | Path | None = None,
    message: str | None = None,
    author: str | None = None,
    upload_sources: bool = False,
    options: ConvertOptions | None = None,
    refmap_format: RefmapFormat | None = None,
    emit: Callable[[Event], None] | None = None,
    stop: threading.Event | None = None,
    series: SeriesRule | None = None,
) -> WatchSummary:
    """Follow ``directory`` and commit each complete HDF5 file to ``branch`` of ``repo``
    as the entry ``template`` names (see the module docstring for the guards).

    ``once``: one scan; commit what is complete now and return. Otherwise loop until
    ``stop`` is set, then commit the current batch and return. ``emit`` receives one
    event dict per event (``event``: started, file_seen, file_waiting, file_ready,
    file_failed, file_changed, file_gone, committed, unchanged, commit_failed,
    heartbeat, note, stopped). ``series``: also follow folders of detector frames, one
    entry a folder, complete by that rule (:mod:`.watch_series`).
    """
    root = Path(directory).absolute()
    if not root.exists():
        raise NotFoundError(f"{directory} does not exist", path=str(directory))
    if not root.is_dir():
        raise BadInputError(f"{directory} is a file, not a directory to watch")
    if not os.access(root, os.R_OK | os.X_OK):
        raise AccessDeniedError(f"permission denied listing {directory}", path=str(directory))
    check_template(template)
    for what, v, low in (
        ("--settle", settle, 0.0),
        ("--batch-seconds", batch_seconds, 0.0),
        ("--heartbeat", heartbeat, 0.0),
    ):
        if not v >= low:
            raise BadInputError(f"{what} must be at least {low:g} seconds, not {v}")
    if not interval > 0:
        raise BadInputError(f"--interval must be more than 0 seconds, not {interval}")
    if batch_files < 1:
        raise BadInputError(f"--batch-files must be at least 1, not {batch_files}")
    repo.check_writable()
    repo.branch_head(branch)  # the branch must exist
    state_path = Path(state) if state else default_state_path(repo, branch, root, template)
    stop = stop or threading.Event()
    emit = emit or (lambda e: None)
    lock = _lock_state(state_path)
    try:
        w = _Watcher(
            repo,
            root,
            template,
            emit,
            branch=branch,
            settle=settle,
            batch_files=batch_files,
            batch_seconds=batch_seconds,
            state_path=state_path,
            message=message,
            author=author,
            upload_sources=upload_sources,
            options=options,
            refmap_format=refmap_format,
            series=series,
        )
        w.once = once
        w.emit(
            "started",
            dir=str(directory),  # as the user gave it
            repo=repo.display,
            branch=branch,
            template=template,
            settle=settle,
            interval=interval,
            batch_files=batch_files,
            batch_seconds=batch_seconds,
            once=once,
            state=str(state_path),
        )
        started = last_beat = time.monotonic()
        while True:
            w.cycle(stop, final=once)
            if once or stop.is_set():
                break
            now = time.monotonic()
            if heartbeat and now - last_beat >= heartbeat:
                last_beat = now
                w.emit(
                    "heartbeat",
                    **w.counts(),
                    committed=w.summary.committed,
                    snapshots=len(w.summary.snapshots),
                    failed=len(w.summary.failed),
                    uptime_s=round(now - started, 1),
                    max_rss_mb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
                )
            stop.wait(max(0.02, min(interval, w.next_wake(now) + 0.01)))
        if w.batch:  # stopping: what was converted is committed
            w.retry_at = 0.0
            w.commit(time.monotonic())
        w.save_state()
        w.summary.waiting = {
            rel: f.reason or "settling"
            for rel, f in sorted(w.files.items())
            if f.status in ("new", "waiting")
        }
        w.emit(
            "stopped",
            committed=w.summary.committed,
            snapshots=len(w.summary.snapshots),
            unchanged=w.summary.unchanged,
            failed=len(w.summary.failed),
            waiting=len(w.summary.waiting),
        )
        return w.summary
    finally:
        with contextlib.suppress(OSError):
            lock.close()
