"""``hyperslab ingest``: files → reference maps → one commit in a repository.

For each entry: walk each file's chunk index and build the refmap, naming each file
by its path for now; read the file ONCE for its sha256 and the CRC-32C of every chunk
it references, on a few threads while the next files are parsed
(:mod:`hyperslab.convert.source_hash`); name the source by its hash
(``hyperslab-source:<sha256>``, so one map serves every site); store the refmap
content-addressed, optionally copy the sources into the repository's site
(verified by re-reading), write the entry record, and finally commit all entries
in one snapshot. Writes are bottom-up; the branch moves last.
Re-ingesting unchanged files produces identical objects and no new snapshot.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hyperslab.convert.api import (
    META_ATTR,
    ConversionResult,
    build_frames_refmap,
    build_refmap,
    combine_refmaps,
    expand_sources,
    is_frame_series,
    source_url,
)
from hyperslab.convert.hdf5 import ConvertOptions
from hyperslab.convert.source_hash import SourceHasher
from hyperslab.errors import (
    BadInputError,
    CorruptError,
    HyperslabError,
    NotFoundError,
    SourceChangedError,
)
from hyperslab.references.catalog import entry_catalog
from hyperslab.references.checksums import (
    ALGORITHM,
    Checksums,
    FileChecksums,
    compute_checksums,
    hash_and_checksum,
    pack_checksums,
)
from hyperslab.references.format import check_entry_name
from hyperslab.references.keys import (
    REFMAP_EXTENSIONS,
    logical_source,
    logical_source_id,
    source_key,
)
from hyperslab.references.refmap import RefMap, inline_nbytes
from hyperslab.references.refmap_objects import RefmapFormat, encode_refmap
from hyperslab.references.repository import DEFAULT_BRANCH, CommitResult, Repository
from hyperslab.version import __version__

__all__ = [
    "EntryPlan",
    "IngestResult",
    "Outcome",
    "SourceChangedError",
    "array_summary",
    "entry_outcomes",
    "hash_file",
    "ingest",
    "plan_entries",
]


def hash_file(path: str | Path, block: int = 8 << 20) -> tuple[str, int]:
    """``(sha256 hex, size)`` of a local file."""
    sums = hash_and_checksum(str(path), block=block)
    return sums.sha256, sums.size


@dataclass
class EntryPlan:
    name: str
    files: list[str]


@dataclass
class IngestResult:
    commit: CommitResult | None
    entries: list[dict[str, Any]] = field(default_factory=list)
    failed: list[tuple[str, HyperslabError]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "commit": self.commit.to_json() if self.commit else None,
            "entries": self.entries,
            "failed": [{"source": s, "error": e.to_json()} for s, e in self.failed],
        }


def plan_entries(sources: Sequence[str], name: str | None, combine: bool) -> list[EntryPlan]:
    """Entry names: ``--name`` for one file or a combined set; otherwise file stems.

    Several files without combining become ``NAME/<stem>`` (or ``<stem>``); a
    directory contributes its files under their relative paths (without suffix).
    Detector frames (TIFF, CBF: files, a directory of them or a glob) are one entry,
    ``--name`` or the directory's name (else the files' common stem).
    """
    files = expand_sources(sources)
    if is_frame_series(files):
        return [EntryPlan(check_entry_name(name or _series_name(sources, files)), files)]
    named: list[tuple[str, str]] = []  # (stem-like name, file)
    for s in sources:
        p = Path(s)
        if "://" not in s and p.is_dir():
            for f in expand_sources([s]):
                rel = Path(f).relative_to(p).with_suffix("")
                named.append((rel.as_posix(), f))
        else:
            stem = Path(s.rstrip("/").rsplit("/", 1)[-1]).stem
            named.extend([(stem, s)])
    if not named:
        raise BadInputError("no sources to ingest")
    if combine:
        return [EntryPlan(check_entry_name(name or named[0][0]), [f for _, f in named])]
    if name is not None and len(named) == 1:
        return [EntryPlan(check_entry_name(name), [named[0][1]])]
    plans: dict[str, EntryPlan] = {}
    for stem, f in named:
        n = check_entry_name(f"{name}/{stem}" if name else stem)
        if n in plans:
            raise BadInputError(
                f"two sources would both become entry {n!r} ({plans[n].files[0]} and {f}); "
                "ingest them separately with --name"
            )
        plans[n] = EntryPlan(n, [f])
    return list(plans.values())


def _series_name(sources: Sequence[str], files: Sequence[str]) -> str:
    """A frame series' default entry name: its directory's, or the files' common stem."""
    if len(sources) == 1 and Path(sources[0]).is_dir():
        return Path(sources[0]).resolve().name
    stems = [Path(f).stem for f in files]
    n = next((i for i, cs in enumerate(zip(*stems, strict=False)) if len(set(cs)) > 1), None)
    stem = (stems[0] if n is None else stems[0][:n]).rstrip("0123456789_-. ")
    return stem or Path(files[0]).resolve().parent.name


class _Sources:
    """Hashes each file once (on ``hasher``'s threads) and remembers how the refmap
    names it.

    An HDF5 file's map is built first under a provisional name (its path): the walk
    of its chunk index gives the ranges whose CRC-32C to take, so its sha256 and
    every chunk CRC come from ONE read (:meth:`read`), and :meth:`resolve` then names
    it by its hash. Files reached through external links are named the same way, from
    the moment the walk meets them."""

    def __init__(self, hasher: SourceHasher) -> None:
        self.hasher = hasher
        self.by_path: dict[str, dict[str, Any]] = {}
        self.stat: dict[str, tuple[int, int]] = {}
        self.sums: dict[str, FileChecksums] = {}
        self._abs: dict[str, str] = {}
        self._provisional: dict[str, None] = {}  # in the order the maps named them
        #: (size, mtime) of a file when its chunk index was walked or its header parsed
        self.first_seen: dict[str, tuple[int, int]] = {}

    def _ap(self, path: str) -> str:
        """:func:`source_url` of ``path``, remembered (each call asks the OS for the cwd)."""
        ap = self._abs.get(path)
        if ap is None:
            ap = self._abs[path] = source_url(path)
        return ap

    def provisional(self, path: str) -> str:
        """How a map being built names ``path`` until :meth:`resolve`: its logical
        name if already hashed, else its absolute path."""
        ap = self._ap(path)
        if ap in self.by_path:
            return logical_source(self.by_path[ap]["id"])
        if "://" in ap:
            raise BadInputError(f"ingest reads local files; {ap!r} is a URL")
        self._seen(ap)  # before the walk: a change between the walk and the read is caught
        self._provisional[ap] = None
        return ap

    def _seen(self, ap: str) -> None:
        """Remember ``ap``'s (size, mtime) as first seen (see :meth:`check_unchanged`)."""
        if ap not in self.first_seen:
            try:
                st = os.stat(ap)
            except OSError:
                return  # its named error comes from the walk or the read
            self.first_seen[ap] = (st.st_size, st.st_mtime_ns)

    def read(self, path: str, refmap: RefMap) -> None:
        """Start the one read of ``path``, and of every file its map reached through an
        external link, that gives each file's sha256 and the CRC-32C of every chunk
        ``refmap`` references in it (files still under their provisional names)."""
        ap = self._ap(path)
        for i, url in enumerate(refmap.sources):
            if url in self._provisional:
                self.chunks(url, *refmap.source_ranges(i))
        if ap in self._provisional and ap not in refmap.sources:
            self.hasher.submit(ap)  # every chunk of it materialised: its sha256 alone

    def resolve(self, results: Sequence[ConversionResult]) -> None:
        """Name the provisional sources of ``results``' maps by their hashes (waiting
        for their reads)."""
        names = {ap: self.url(ap) for ap in self._provisional}
        for result in results:
            result.refmap.rename_sources(names)
            meta = result.refmap.groups.get("", {}).get(META_ATTR)
            if isinstance(meta, dict) and "sources" in meta:
                meta["sources"] = [{"url": u} for u in result.refmap.sources]
            if result.url is not None:
                result.url = names.get(result.url, result.url)

    def chunks(self, path: str, offsets: Any, lengths: Any) -> None:
        """Start the one read of a file that gives its sha256 and the CRC-32C of these
        chunk ranges (a frame's, once its header is parsed)."""
        ap = self._ap(path)
        if "://" not in ap and ap not in self.by_path:
            self._seen(ap)  # as its header was parsed: caught if it changes before the read
            self.hasher.submit(ap, offsets, lengths)

    def url(self, path: str) -> str:
        ap = self._ap(path)
        if ap not in self.by_path:
            if "://" in ap:
                raise BadInputError(f"ingest reads local files; {ap!r} is a URL")
            got = self.hasher.result(ap)
            self.stat[ap] = (got.size, got.mtime_ns)
            self.sums[ap] = got.sums
            self.by_path[ap] = {
                "id": got.sums.sha256,
                "name": Path(ap).name,
                "size": got.sums.size,
                "origin": ap,
            }
        return logical_source(self.by_path[ap]["id"])

    def check_unchanged(self) -> None:
        """SourceChangedError if a file's size or mtime moved since it was first looked
        at (before the walk of its chunk index, or its read) until now."""
        for ap, (size, mtime) in self.stat.items():
            try:
                st = os.stat(ap)
            except OSError as exc:
                raise SourceChangedError(
                    f"{ap} went away while it was being ingested ({exc.strerror})", path=ap
                ) from exc
            first = self.first_seen.get(ap, (size, mtime))
            if (st.st_size, st.st_mtime_ns) != (size, mtime) or first != (size, mtime):
                raise SourceChangedError(
                    f"{ap} changed while it was being ingested (size or mtime differ); "
                    "ingest it once the writer has closed it",
                    path=ap,
                )

    def checksums(self, refmap: RefMap) -> Checksums:
        """CRC-32C of every referenced chunk, read from the local files."""
        by_id = {r["id"]: ap for ap, r in self.by_path.items()}
        ids = [logical_source_id(url) for url in refmap.sources]
        files = {i: by_id[sha] for i, sha in enumerate(ids) if sha is not None and sha in by_id}
        return compute_checksums(refmap, files, lambda i: self.sums.get(files[i]))

    def records(self, refmap: RefMap) -> list[dict[str, Any]]:
        by_id = {r["id"]: r for r in self.by_path.values()}
        out = []
        for url in refmap.sources:
            out.append(dict(by_id[logical_source_id(url) or url]))
        # sources with no referenced chunk (all materialised) still belong to the entry
        listed = {r["id"] for r in out}
        out.extend(dict(r) for r in by_id.values() if r["id"] not in listed)
        return out


def array_summary(refmap: RefMap) -> dict[str, Any]:
    """Per array of ``refmap``: shape, chunks, dtype, codecs, status, references and
    bytes (what an entry record lists under ``arrays``)."""
    out = {}
    for path, arr in sorted(refmap.arrays.items()):
        z = arr.zarray
        codecs = [f.get("id") for f in (z.get("filters") or [])]
        if z.get("compressor"):
            codecs.append(z["compressor"].get("id"))
        s: dict[str, Any] = {
            "shape": z["shape"],
            "chunks": z["chunks"],
            "dtype": z["dtype"],
            "codecs": codecs,
            "status": arr.status,
            "refs": arr.n_refs,
            "bytes": arr.referenced_bytes() + inline_nbytes(arr.inline),
        }
        if arr.reason:
            s["reason"] = arr.reason
        out[path] = s
    return out


def _upload(repo: Repository, src: dict[str, Any]) -> bool:
    """Copy a source into the repository's site and verify it; False if already there."""
    key = source_key(src["id"], src["name"])
    site = repo.site
    try:
        if site.head(key).size == src["size"]:
            return False
    except NotFoundError:
        pass
    site.put_file(key, src["origin"])
    if site.sha256(key) != (src["id"], src["size"]):
        site.delete(key)
        raise CorruptError(
            f"uploaded copy of {src['origin']} at {repo.display}/{key} does not match the "
            "file's sha256; removed it",
            key=key,
        )
    return True


@dataclass
class _Started:
    """An entry whose maps are built and whose files are being read (hashed)."""

    plan: EntryPlan
    srcs: _Sources
    results: list[ConversionResult]


def _start_entry(plan: EntryPlan, hasher: SourceHasher, options: ConvertOptions | None) -> _Started:
    """Build ``plan``'s maps and start reading its files on ``hasher`` (a frame series
    reads each file as its header is parsed; HDF5 files once their chunk index is
    walked, under a provisional name until :func:`_finish_entry`)."""
    srcs = _Sources(hasher)
    results: list[ConversionResult] = []
    if is_frame_series(plan.files):
        results.append(build_frames_refmap(plan.files, url_for=srcs.url, on_file=srcs.chunks))
    else:
        for f in plan.files:
            res = build_refmap(
                f, options=options, url=srcs.provisional(f), url_for=srcs.provisional
            )
            srcs.read(f, res.refmap)
            results.append(res)
    return _Started(plan, srcs, results)


def ingest_entry(
    repo: Repository,
    plan: EntryPlan,
    *,
    options: ConvertOptions | None = None,
    upload_sources: bool = False,
    dim: int | None = None,
    new_dim: str | None = None,
    refmap_format: RefmapFormat | None = None,
    hasher: SourceHasher | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Store one entry's objects; returns ``(tree value, summary for the report)``.

    ``hasher``: where the sources are hashed (one shared by several entries); by
    default one of its own."""
    if hasher is None:
        with SourceHasher() as own:
            return ingest_entry(
                repo,
                plan,
                options=options,
                upload_sources=upload_sources,
                dim=dim,
                new_dim=new_dim,
                refmap_format=refmap_format,
                hasher=own,
            )
    return _finish_entry(
        repo,
        _start_entry(plan, hasher, options),
        upload_sources=upload_sources,
        dim=dim,
        new_dim=new_dim,
        refmap_format=refmap_format,
    )


def _finish_entry(
    repo: Repository,
    started: _Started,
    *,
    upload_sources: bool = False,
    dim: int | None = None,
    new_dim: str | None = None,
    refmap_format: RefmapFormat | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Wait for a started entry's reads, name its sources by hash, and store its
    objects (see :func:`ingest_entry`)."""
    plan, srcs, results = started.plan, started.srcs, started.results
    srcs.resolve(results)
    res = combine_refmaps(results, dim=dim, new_dim=new_dim) if len(results) > 1 else results[0]
    refmap = res.refmap
    sums = srcs.checksums(refmap)  # before the check: it covers these reads too
    srcs.check_unchanged()
    data, fmt = encode_refmap(refmap, refmap_format)
    refmap_id = repo.put_object("refmap", data, REFMAP_EXTENSIONS[fmt])
    checksums_id = repo.put_object("checksums", pack_checksums(refmap, sums), ".parquet")
    sources = srcs.records(refmap)
    uploaded = [s["name"] for s in sources if upload_sources and _upload(repo, s)]
    arrays = array_summary(refmap)
    counts = res.counts
    catalog = entry_catalog(
        plan.name,
        refmap.groups.get("", {}),
        files=[s["name"] for s in sources],
        n_arrays=len(arrays),
        n_materialised=sum(1 for a in arrays.values() if a["status"] in ("materialised", "mixed")),
    )
    record: dict[str, Any] = {
        "name": plan.name,
        "refmap": {"id": refmap_id, "format": fmt, "size": len(data), "refs": refmap.n_refs},
        "checksums": {
            "id": checksums_id,
            "algorithm": ALGORITHM,
            "chunks": sum(int(a.index.size) for a in refmap.arrays.values()),
        },
        "sources": sources,
        "arrays": arrays,
        "counts": counts,
        "catalog": catalog,
        "converter": f"hyperslab {__version__}",
    }
    if res.frames is not None:
        record["frames"] = res.frames
    elif len(plan.files) > 1:
        record["combined"] = {"files": len(plan.files), "dim": dim, "new_dim": new_dim}
    entry_id = repo.write_json("entry", record)
    summary = {
        "name": plan.name,
        "entry": entry_id,
        "refmap": refmap_id,
        "format": fmt,
        "refs": refmap.n_refs,
        "arrays": len(arrays),
        "counts": counts,
        "sources": [s["name"] for s in sources],
        "uploaded": uploaded,
    }
    return {"id": entry_id, "catalog": catalog}, summary


#: one entry's outcome: (tree value, summary for the report), or the named error of a bad file
Outcome = tuple[dict[str, Any], dict[str, Any]] | HyperslabError


#: files whose reads may run ahead of the entry being stored
LOOKAHEAD_FILES = 8


def entry_outcomes(
    repo: Repository,
    plans: Sequence[EntryPlan],
    *,
    options: ConvertOptions | None = None,
    **store: Any,
) -> Generator[tuple[EntryPlan, Outcome], None, None]:
    """Each entry's outcome in the order of ``plans``, in this process: what a serial
    ingest does, and what each cluster task does with its batch. A bad file's named
    error is its outcome, so the rest go on.

    Pipelined: the maps of the next entries (up to :data:`LOOKAHEAD_FILES` files) are
    built while earlier files are still being read on the hasher's threads, so
    several large files hash at once and headers are parsed meanwhile. ``store``:
    the keywords of :func:`ingest_entry` for storing an entry."""
    pending: deque[tuple[EntryPlan, _Started | HyperslabError]] = deque()
    in_flight = 0

    def finish() -> tuple[EntryPlan, Outcome]:
        nonlocal in_flight
        plan, started = pending.popleft()
        in_flight -= len(plan.files)
        if isinstance(started, HyperslabError):
            return plan, started
        try:
            return plan, _finish_entry(repo, started, **store)
        except HyperslabError as exc:
            return plan, exc

    with SourceHasher() as hasher:
        for plan in plans:
            while pending and in_flight + len(plan.files) > LOOKAHEAD_FILES:
                yield finish()
            try:
                pending.append((plan, _start_entry(plan, hasher, options)))
            except HyperslabError as exc:
                pending.append((plan, exc))
            in_flight += len(plan.files)
        while pending:
            yield finish()


def ingest(
    repo: Repository,
    sources: Sequence[str],
    *,
    name: str | None = None,
    branch: str = DEFAULT_BRANCH,
    message: str | None = None,
    author: str | None = None,
    upload_sources: bool = False,
    options: ConvertOptions | None = None,
    dim: int | None = None,
    new_dim: str | None = None,
    fail_fast: bool = False,
    refmap_format: RefmapFormat | None = None,
    on_entry: Callable[[str, dict[str, Any] | HyperslabError], None] | None = None,
    client: Any = None,
) -> IngestResult:
    """Convert ``sources`` and commit them to ``branch`` in one snapshot.

    Entries that fail are reported (and skipped) unless ``fail_fast``; if none
    succeeds the first error is raised and nothing is committed. ``client``: a
    ``dask.distributed.Client`` whose workers do the per-file work, a batch of
    entries a task (:mod:`hyperslab.convert.cluster`); this process makes the
    commit, and the result is the same as without it.
    """
    combine = dim is not None or new_dim is not None
    plans = plan_entries(list(sources), name, combine)
    repo.check_writable()
    base, _ = repo.branch_head(branch)
    out = IngestResult(None)
    changes: dict[str, dict[str, Any] | None] = {}
    work: dict[str, Any] = {
        "options": options,
        "upload_sources": upload_sources,
        "dim": dim,
        "new_dim": new_dim,
        "refmap_format": refmap_format,
    }
    if client is None:
        outcomes: Generator[tuple[EntryPlan, Outcome], None, None] = entry_outcomes(
            repo, plans, **work
        )
    else:
        from hyperslab.convert.cluster import ingest_on_cluster

        outcomes = ingest_on_cluster(client, repo, plans, entry_outcomes, work)
    by_name = {plan.name: i for i, plan in enumerate(plans)}
    by_files = {", ".join(plan.files): i for i, plan in enumerate(plans)}
    try:
        for plan, outcome in outcomes:
            if isinstance(outcome, HyperslabError):
                out.failed.append((", ".join(plan.files), outcome))
                if on_entry:
                    on_entry(plan.name, outcome)
                if fail_fast:
                    raise outcome
                continue
            value, summary = outcome
            changes[plan.name] = value
            out.entries.append(summary)
            if on_entry:
                on_entry(plan.name, summary)
    finally:
        outcomes.close()  # a cluster's tasks still queued are cancelled
    # the report in the order of the sources, however the tasks finished
    out.entries.sort(key=lambda e: by_name[e["name"]])
    out.failed.sort(key=lambda f: by_files[f[0]])
    if not changes:
        raise out.failed[0][1]
    names = sorted(changes)
    msg = message or (
        f"ingest {names[0]}" if len(names) == 1 else f"ingest {len(names)} entries: {names[0]}, …"
    )
    out.commit = repo.commit(changes, branch=branch, message=msg, author=author, base=base)
    return out
