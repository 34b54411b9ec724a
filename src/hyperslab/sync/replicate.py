"""``hyperslab replicate``: declarative replication jobs for cron, systemd or a loop.

A rules file says what each site keeps::

    interval = 60                          # seconds between rounds with --watch

    [[job]]
    name = "cloud keeps main"              # optional; shown in reports
    from = "beamline:mx"                   # source repository (SITE:path, URL or path)
    to = "cloud:mx"                        # destination repository
    branches = ["main"]                    # default ["main"]; ["*"] for every branch
    hot = "hot.toml"                       # optional rules file (relative to this file) ...
    sources = false                        # copy the raw HDF5 files too
    pack = true                            # entry objects packed per leaf (false: loose)

    [job.hot_rules]                        # ... or the same rules inline
    [[job.hot_rules.rule]]
    entries = "run42/*"
    arrays = "entry/data/data"

    [[job]]
    name = "laptop keeps the paper"
    from = "cloud:mx"
    to = "~/mx"
    branches = []                          # no branch ...
    tags = ["paper-2026"]                  # ... just this tag (true: every tag)

Jobs run in order (a later job may copy what an earlier one brought). A failing job
does not stop the others; the round's exit status is that of the first failure.

With ``--watch`` the repositories stay open between rounds (:class:`OpenRepositories`):
an unchanged round then costs its ref reads and nothing else, no new S3 clients and no
``repo.json`` re-reads.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hyperslab.config import read_toml
from hyperslab.errors import ConfigError, HyperslabError
from hyperslab.references.repository import NotARepositoryError, Repository
from hyperslab.sync.engine import sync
from hyperslab.sync.hot_rules import HotRules
from hyperslab.sync.report import SyncReport

__all__ = ["Job", "OpenRepositories", "ReplicationRules", "run_round"]

_JOB_KEYS = {
    "name", "from", "to", "branches", "tags", "hot", "hot_rules", "sources", "force", "pack"
}  # fmt: skip


@dataclass(frozen=True)
class Job:
    name: str
    source: str
    destination: str
    branches: tuple[str, ...] | None  # None: every branch
    tags: bool | tuple[str, ...] = False
    hot: HotRules | None = None
    sources: bool = False
    force: bool = False
    pack: bool = True


@dataclass(frozen=True)
class ReplicationRules:
    jobs: tuple[Job, ...]
    interval: float = 60.0

    @classmethod
    def load(cls, path: str | Path) -> ReplicationRules:
        p = Path(path)
        doc = read_toml(p, "replication rules file")
        return cls.from_dict(doc, str(p), p.parent)

    @classmethod
    def from_dict(cls, doc: dict[str, Any], where: str, base: Path = Path()) -> ReplicationRules:
        extra = set(doc) - {"interval", "job"}
        if extra:
            raise ConfigError(f"{where}: unknown keys {sorted(extra)} (interval, job)")
        interval = doc.get("interval", 60)
        if not isinstance(interval, int | float) or isinstance(interval, bool) or interval <= 0:
            raise ConfigError(f"{where}: interval must be a positive number of seconds")
        tables = doc.get("job")
        if (
            not isinstance(tables, list)
            or not tables
            or not all(isinstance(t, dict) for t in tables)
        ):
            raise ConfigError(f"{where}: needs at least one [[job]] table")
        jobs = tuple(_job(t, i, where, base) for i, t in enumerate(tables))
        return cls(jobs, float(interval))


def _job(t: dict[str, Any], i: int, where: str, base: Path) -> Job:
    label = f"{where}: job {i + 1}"
    extra = set(t) - _JOB_KEYS
    if extra:
        raise ConfigError(f"{label}: unknown keys {sorted(extra)} ({', '.join(sorted(_JOB_KEYS))})")
    for key in ("from", "to"):
        if not isinstance(t.get(key), str) or not t[key]:
            raise ConfigError(f"{label}: `{key}` (a repository) is required")
    branches = t.get("branches", ["main"])
    if not isinstance(branches, list) or not all(isinstance(b, str) for b in branches):
        raise ConfigError(f"{label}: branches must be a list of names")
    tags = t.get("tags", False)
    if not (
        isinstance(tags, bool) or (isinstance(tags, list) and all(isinstance(x, str) for x in tags))
    ):
        raise ConfigError(f"{label}: tags must be true/false or a list of tag names")
    if "hot" in t and "hot_rules" in t:
        raise ConfigError(f"{label}: give hot (a file) or hot_rules (inline), not both")
    hot = None
    if "hot" in t:
        if not isinstance(t["hot"], str):
            raise ConfigError(f"{label}: hot must be the path of a rules file")
        hot = HotRules.load(base / Path(t["hot"]).expanduser())
    elif "hot_rules" in t:
        hot = HotRules.from_dict(t["hot_rules"], f"{label} hot_rules")
    for key in ("sources", "force", "pack"):
        if not isinstance(t.get(key, False), bool):
            raise ConfigError(f"{label}: {key} must be true or false")
    return Job(
        name=str(t.get("name") or f"{t['from']} -> {t['to']}"),
        source=t["from"],
        destination=t["to"],
        branches=None if branches == ["*"] else tuple(branches),
        tags=tuple(tags) if isinstance(tags, list) else tags,
        hot=hot,
        sources=bool(t.get("sources", False)),
        force=bool(t.get("force", False)),
        pack=bool(t.get("pack", True)),
    )


@dataclass
class JobResult:
    job: Job
    report: SyncReport | None = None
    error: HyperslabError | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.job.name,
            "from": self.job.source,
            "to": self.job.destination,
            "ok": self.error is None,
        }
        if self.report is not None:
            out["report"] = self.report.to_json()
        if self.error is not None:
            out["error"] = self.error.to_json()
        return out


@dataclass
class Round:
    results: list[JobResult] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return all(r.error is None for r in self.results)

    @property
    def exit_status(self) -> int:
        return next((r.error.exit_status for r in self.results if r.error is not None), 0)

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "jobs": [r.to_json() for r in self.results],
            "seconds": round(self.seconds, 3),
        }


class OpenRepositories:
    """Repositories kept open across rounds, by spec.

    Only what never changes is reused: the site clients and the repository's immutable
    objects and ``repo.json``. Branches and tags are read again by every sync. A
    destination that is not a repository yet is opened afresh each round until a sync
    has created it.
    """

    def __init__(self) -> None:
        self._repos: dict[str, Repository] = {}

    def __len__(self) -> int:
        return len(self._repos)

    def get(self, spec: str, *, destination: bool = False) -> str | Repository:
        repo = self._repos.get(spec)
        if repo is not None:
            return repo
        try:
            repo = Repository.open(spec)
        except NotARepositoryError:
            if destination:
                return spec  # sync creates it there
            raise
        self._repos[spec] = repo
        return repo


def run_round(
    rules: ReplicationRules,
    *,
    dry_run: bool = False,
    stats: Any = None,
    run: Callable[..., SyncReport] = sync,
    opened: OpenRepositories | None = None,
) -> Round:
    """Run every job once; a job's failure is recorded and the next job runs.
    ``opened``: repositories to reuse (and keep) across rounds, as ``--watch`` does."""
    t0 = time.perf_counter()
    out = Round()
    for job in rules.jobs:
        try:
            report = run(
                opened.get(job.source) if opened is not None else job.source,
                opened.get(job.destination, destination=True)
                if opened is not None
                else job.destination,
                branches=list(job.branches) if job.branches is not None else None,
                all_branches=job.branches is None,
                tags=list(job.tags) if isinstance(job.tags, tuple) else job.tags,
                hot=job.hot,
                stats=stats,
                sources=job.sources,
                force=job.force,
                pack=job.pack,
                dry_run=dry_run,
            )
            out.results.append(JobResult(job, report=report))
        except HyperslabError as exc:
            out.results.append(JobResult(job, error=exc))
    out.seconds = time.perf_counter() - t0
    return out
