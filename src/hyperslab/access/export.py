"""``hyperslab export-refs``: an entry's references with one site's concrete URLs.

A repository refmap names each source by content (``hyperslab-source:<sha256>``)
so that one map serves every site. Users of plain fsspec/kerchunk, without
hyperslab, need URLs instead: the export replaces each source with the URL of
``sources/<sha256>/<name>`` at the chosen site, after checking that the site
holds it, and writes an ordinary kerchunk map (JSON file or fsspec Parquet
directory)::

    refs = export_refs("s3://beamline/repo", "run42/scan_0007", "s3://beamline/repo",
                       Path("scan_0007.json"))

The map carries URLs only: never credentials or endpoints (readers bring their own,
e.g. ``remote_options={"endpoint_url": ...}`` for MinIO). It loses what only
hyperslab does on reading: per-chunk checksum verification, routing across sites
and the local cache.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from hyperslab.config import Config, load_config
from hyperslab.errors import BadInputError, ConfigError, CorruptError, NotFoundError
from hyperslab.references.keys import REFMAP_EXTENSIONS, logical_source_id, source_key
from hyperslab.references.refmap import RefMap
from hyperslab.references.refmap_files import write_refmap
from hyperslab.references.refmap_objects import decode_refmap
from hyperslab.references.repository import DEFAULT_BRANCH, Repository
from hyperslab.storage import Site, open_site

__all__ = ["ExportResult", "export_format", "export_refs", "open_export_site"]

_FORMATS: dict[str, Literal["json", "parquet"]] = {
    ".json": "json",
    ".parquet": "parquet",
    ".parq": "parquet",
}


@dataclass
class ExportResult:
    path: Path
    format: str
    entry: str
    snapshot: str
    site: str
    #: fsspec protocol of the source URLs (give it as ``remote_protocol`` for Parquet maps)
    remote_protocol: str
    refs: int
    arrays: int
    sources: list[dict[str, str]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "refs_path": str(self.path),
            "format": self.format,
            "entry": self.entry,
            "snapshot": self.snapshot,
            "site": self.site,
            "remote_protocol": self.remote_protocol,
            "refs": self.refs,
            "arrays": self.arrays,
            "sources": self.sources,
        }


def export_format(output: Path) -> Literal["json", "parquet"]:
    """The map format an output name asks for: ``.json``, or ``.parquet``/``.parq`` (a directory)."""
    fmt = _FORMATS.get(output.suffix.lower())
    if fmt is None:
        raise BadInputError(
            f"cannot tell the format of {output.name!r}: name the output *.json (one file) or "
            "*.parquet (an fsspec Parquet reference directory)",
            output=str(output),
        )
    return fmt


def open_export_site(site: str, repo: str | None, config: Config) -> Site:
    """The repository's location at ``site``: a URL, a path, ``SITE:path``, or a site name.

    A bare site name means the repository's path at that site, which needs REPO
    given as ``SITE:path``.
    """
    bare = not any(c in site for c in ":/")
    if not bare or site not in config.sites:
        if bare and not Path(site).exists():
            known = ", ".join(sorted(config.sites)) or "none configured (hyperslab.toml)"
            raise ConfigError(
                f"--site {site!r} is neither a configured site (sites: {known}) nor a URL, "
                "SITE:path or an existing path",
                site=site,
            )
        return open_site(site, config)[0]
    name, colon, path = (repo or "").partition(":")
    if not colon or "/" in name or name not in config.sites:
        raise BadInputError(
            f"--site {site!r} names a site, which needs the repository as SITE:path to know "
            "where the repository lives there; give --site as a URL or SITE:path instead",
            site=site,
        )
    return open_site(f"{site}:{path.strip('/')}", config)[0]


def _whole_refmap(repo: Repository, snapshot: str, entry: str) -> tuple[RefMap, dict[str, str]]:
    """The entry's complete map (every reference, unlike a store's lazily read view) and
    its source names by id."""
    record = repo.entry(snapshot, entry)
    info = record.get("refmap") or {}
    fmt = info.get("format", "json")
    if fmt not in REFMAP_EXTENSIONS or not info.get("id"):
        raise CorruptError(f"entry {entry!r} names no readable refmap ({fmt!r})", entry=entry)
    refmap = decode_refmap(repo.get_object("refmap", info["id"], REFMAP_EXTENSIONS[fmt]), fmt)
    for arr in refmap.arrays.values():
        if arr.index.size > 1 and (np.diff(arr.index) < 0).any():
            arr.sort()  # the writers look chunks up by position
    return refmap, {s["id"]: s["name"] for s in record.get("sources", [])}


def _concrete(
    refmap: RefMap, names: dict[str, str], entry: str, site: Site
) -> tuple[list[str], list[dict[str, str]]]:
    """Every source of the map as a URL at ``site``; NotFoundError naming what it lacks."""
    urls: list[str] = []
    listed: list[dict[str, str]] = []
    missing: list[str] = []
    base = site.url.rstrip("/")
    for logical in refmap.sources:
        sha = logical_source_id(logical)
        if sha is None:
            urls.append(logical)  # already a concrete location, not a repository source
            continue
        name = names.get(sha)
        if name is None:
            raise CorruptError(
                f"entry {entry!r}: its map names source {sha} that its record does not list",
                entry=entry,
                source=sha,
            )
        key = source_key(sha, name)
        if not site.exists(key):
            missing.append(f"{name} (sha256 {sha})")
        url = f"{base}/{key}"
        urls.append(url)
        listed.append({"id": sha, "name": name, "url": url})
    if missing:
        raise NotFoundError(
            f"{site.url} does not hold source {missing[0]} of entry {entry!r}"
            + (f" (nor {len(missing) - 1} more)" if len(missing) > 1 else "")
            + "; export for a site that holds it, or copy it there "
            "(ingest --upload-sources, sync)",
            entry=entry,
            site=site.url,
            missing=missing,
        )
    return urls, listed


def export_refs(
    repo: str | Repository,
    entry: str,
    site: str,
    output: Path,
    *,
    ref: str | None = None,
    config: Config | None = None,
) -> ExportResult:
    """Write ``entry`` (at ``ref``, default the main branch) as a plain kerchunk map to ``output``.

    ``site``: where readers will fetch the sources (see :func:`open_export_site`);
    it must hold every source of the entry. ``output``: ``*.json`` or ``*.parquet``.
    """
    fmt = export_format(output)  # before any request: a bad name costs nothing
    cfg = config if config is not None else load_config()
    r = Repository.open(repo, config=cfg) if isinstance(repo, str) else repo
    sid = r.resolve(ref or DEFAULT_BRANCH)
    rm, names = _whole_refmap(r, sid, entry)
    target = open_export_site(site, repo if isinstance(repo, str) else None, cfg)
    urls, listed = _concrete(rm, names, entry, target)
    root = dict(rm.groups.get("", {}))
    meta = dict(root.get("hyperslab") or {})
    meta["sources"] = [{"url": u} for u in urls]
    meta["exported"] = {
        "repository": r.display,
        "entry": entry,
        "snapshot": sid,
        "site": target.url,
    }
    root["hyperslab"] = meta
    out = RefMap(sources=urls, groups={**rm.groups, "": root}, arrays=rm.arrays)
    path = write_refmap(out, output, fmt)
    return ExportResult(
        path=path,
        format=fmt,
        entry=entry,
        snapshot=sid,
        site=target.url,
        remote_protocol=target.url.partition("://")[0] if "://" in target.url else "file",
        refs=out.n_refs,
        arrays=len(out.arrays),
        sources=listed,
    )
