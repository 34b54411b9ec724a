"""Opening a site by URL, path or ``SITE:path`` name from ``hyperslab.toml``."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlsplit

from hyperslab.config import Config, SiteConfig, load_config
from hyperslab.errors import BadInputError, ConfigError, redact
from hyperslab.storage.file import FileSite
from hyperslab.storage.keys import has_control_characters, join_key, validate_prefix
from hyperslab.storage.memory import MemorySite
from hyperslab.storage.site import Site

__all__ = ["open_site", "site_for_url", "site_from_config"]


def site_for_url(url: str, sc: SiteConfig | None = None, *, extra: str = "") -> Site:
    """A site for ``url`` (+ ``/extra``), using endpoint/region/... of ``sc`` if given."""
    options = dict(sc.options) if sc is not None else {}
    if "://" not in url:
        if sc is not None and options:
            raise ConfigError(f"site {sc.name!r}: options are only supported for s3:// sites")
        root = Path(url).expanduser()
        if extra:
            validate_prefix(extra)
            root = root.joinpath(*extra.strip("/").split("/"))
        return FileSite(root.resolve())
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    path = parts.path.strip("/")
    if extra:
        path = join_key(path, extra.strip("/"))
    if scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise BadInputError(
                f"file URL {redact(url)!r} names host {parts.netloc!r}; use file:///absolute/path"
            )
        if sc is not None and options:
            raise ConfigError(f"site {sc.name!r}: options are only supported for s3:// sites")
        validate_prefix(unquote(path))
        return FileSite(Path("/" + unquote(path)))
    if scheme == "memory":
        return MemorySite(parts.netloc, validate_prefix(path))
    if scheme in ("s3", "s3a"):
        from hyperslab.storage.s3.site import S3Site  # its clients and asyncio: only for S3

        if not parts.netloc:
            raise BadInputError(f"S3 URL {redact(url)!r} has no bucket; use s3://bucket/prefix")
        if "@" in parts.netloc:
            raise ConfigError(
                f"S3 URL {redact(url)!r} contains credentials; use the AWS environment instead"
            )
        if sc is None:
            return S3Site(parts.netloc, validate_prefix(path))
        return S3Site(
            parts.netloc,
            validate_prefix(path),
            endpoint_url=sc.endpoint_url,
            region=sc.region,
            profile=sc.profile,
            anon=sc.anon,
            options=options,
        )
    raise BadInputError(
        f"unsupported URL scheme {parts.scheme!r} in {redact(url)!r}; "
        "use file:///path, a local path, s3://bucket/prefix, memory://name/prefix or SITE:path"
    )


def site_from_config(sc: SiteConfig, path: str = "") -> Site:
    """The site configured as ``sc``, rooted at ``path`` below its url."""
    return site_for_url(sc.url, sc, extra=validate_prefix(path.strip("/")) if path else "")


def _matching_site(url: str, config: Config) -> tuple[SiteConfig, str] | None:
    """The configured S3 site whose url is the longest prefix of ``url`` (for its endpoint)."""
    best: tuple[SiteConfig, str] | None = None
    target = url.rstrip("/")
    for sc in config.sites.values():
        base = sc.url.rstrip("/")
        if not base.lower().startswith(("s3://", "s3a://")):
            continue
        if target == base or target.startswith(base + "/"):
            rest = target[len(base) :].strip("/")
            if best is None or len(base) > len(best[0].url.rstrip("/")):
                best = (sc, rest)
    return best


def open_site(spec: str, config: Config | None = None) -> tuple[Site, str]:
    """Open ``spec`` and return ``(site, display)``.

    ``spec`` is ``file:///abs/path``, a local path, ``s3://bucket/prefix``,
    ``memory://name/prefix`` or ``SITE:path`` with SITE a name in ``config.sites``.
    With ``config=None`` the configuration is loaded (:func:`hyperslab.config.load_config`)
    when the spec needs it (``SITE:path`` and ``s3://`` URLs, which pick up the endpoint
    of a configured site whose url contains them). A local path whose first component
    contains ':' must be written ``./a:b``.
    """
    if not isinstance(spec, str) or not spec or has_control_characters(spec):
        raise BadInputError(f"bad site spec {spec!r}")
    if "://" in spec:
        scheme = spec.split("://", 1)[0].lower()
        if scheme in ("s3", "s3a"):
            cfg = config if config is not None else load_config()
            match = _matching_site(spec, cfg)
            if match is not None:
                sc, rest = match
                site = site_from_config(sc, rest)
                return site, f"{site.url} (site {sc.name})"
        site = site_for_url(spec)
        return site, site.url

    name, colon, rest = spec.partition(":")
    if colon and "/" not in name and name:
        cfg = config if config is not None else load_config()
        if name in cfg.sites:
            sc = cfg.sites[name]
            path = rest.strip("/")
            site = site_from_config(sc, path)
            return site, f"{name}:{path} ({site.url})"
        if not Path(spec).expanduser().exists():
            raise ConfigError(
                f"unknown site {name!r} in {spec!r}; "
                + (
                    f"known sites: {', '.join(cfg.sites)}"
                    if cfg.sites
                    else "no sites are configured (hyperslab.toml)"
                )
                + "; for a local path containing ':' write ./"
                + spec,
                site=name,
            )
    site = site_for_url(spec)
    return site, site.url
