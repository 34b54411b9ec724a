"""``hyperslab.toml`` and ``HYPERSLAB_*`` environment overrides.

Lookup order for the file: ``$HYPERSLAB_CONFIG``, then ``./hyperslab.toml``, then
``<user config dir>/hyperslab/hyperslab.toml`` (platformdirs). With no file the
defaults apply: no named sites (plain paths and URLs still work), the cache in the
user cache dir.

Example::

    preference = ["beamline", "cloud"]   # optional; default: order of [sites.*]

    [cache]
    dir = "/scratch/hyperslab-cache"     # default: platformdirs.user_cache_dir("hyperslab")
    size = "20GB"                        # KB/MB/GB/TB (10^3), KiB/MiB/GiB/TiB (2^10), int
    memory = "256MiB"                    # decoded chunks kept in each process's memory; 0: none

    [sites.beamline]
    url = "s3://beamline"
    endpoint_url = "http://127.0.0.1:9000"
    region = "us-east-1"                 # optional
    profile = "beamline"                 # optional AWS profile
    anon = false                         # optional unsigned requests
    [sites.beamline.options]             # optional: retries and timeouts (every S3
    retries = 5                          # client); s3fs-style botocore settings
    config_kwargs = { connect_timeout = 3 }  # (client_kwargs ...) make the site use botocore

Environment overrides (applied after the file): ``HYPERSLAB_CACHE_DIR``,
``HYPERSLAB_CACHE_SIZE``, ``HYPERSLAB_CACHE_MEMORY``, ``HYPERSLAB_PREFERENCE`` (comma list) and, per site,
``HYPERSLAB_SITE_<NAME>_URL``, ``_ENDPOINT_URL``, ``_REGION``, ``_PROFILE``, ``_ANON``
(``<NAME>`` is the site name upper-cased with ``-`` as ``_``). A ``_URL`` variable for
an unknown name defines a new site.

A site ``url`` that is a relative directory, and a relative cache ``dir``, are taken
relative to the file that names them.

Credentials are never read from the file: they come from the standard AWS chain
(``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, ``AWS_PROFILE``, instance roles).
A site table holding something that looks like a credential is refused.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import platformdirs

from hyperslab.errors import ConfigError

__all__ = [
    "DEFAULT_CACHE_SIZE",
    "Config",
    "SiteConfig",
    "find_config_file",
    "load_config",
    "parse_size",
]

DEFAULT_CACHE_SIZE = 20 * 10**9
#: decoded chunks each process keeps in memory (reading/decode.py), like HDF5's chunk cache
DEFAULT_CACHE_MEMORY = 256 << 20
CONFIG_FILENAME = "hyperslab.toml"

_SITE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
_SITE_KEYS = frozenset({"url", "endpoint_url", "region", "profile", "anon", "options"})
# Lower-cased keys that hold (or configure) secrets; checked in site tables and their options.
_CREDENTIAL_KEYS = frozenset(
    {
        "key",
        "secret",
        "token",
        "password",
        "username",
        "access_key",
        "secret_key",
        "access_key_id",
        "secret_access_key",
        "session_token",
        "aws_access_key_id",
        "aws_secret_access_key",
        "aws_session_token",
        "credentials",
    }
)
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*$")
_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "pb": 10**15,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
    "pib": 2**50,
}
# Longest suffix first: "_ENDPOINT_URL" must win over "_URL".
_SITE_ENV_FIELDS = (
    ("_ENDPOINT_URL", "endpoint_url"),
    ("_URL", "url"),
    ("_REGION", "region"),
    ("_PROFILE", "profile"),
    ("_ANON", "anon"),
)


@dataclass(frozen=True)
class SiteConfig:
    """One named site: where it is and how to reach it (never credentials)."""

    name: str
    url: str
    endpoint_url: str | None = None
    region: str | None = None
    profile: str | None = None
    anon: bool = False
    options: dict[str, Any] = field(default_factory=dict, hash=False)


@dataclass(frozen=True)
class Config:
    """Everything ``hyperslab.toml`` and the environment say."""

    sites: dict[str, SiteConfig] = field(default_factory=dict, hash=False)
    preference: tuple[str, ...] = ()
    cache_dir: Path = field(default_factory=lambda: Path(platformdirs.user_cache_dir("hyperslab")))
    cache_size: int = DEFAULT_CACHE_SIZE
    cache_memory: int = DEFAULT_CACHE_MEMORY
    source: Path | None = None

    def site(self, name: str) -> SiteConfig:
        """The site called ``name``; ConfigError listing the known ones otherwise."""
        try:
            return self.sites[name]
        except KeyError:
            raise ConfigError(
                f"unknown site {name!r}; {_known_sites(self.sites, self.source)}",
                site=name,
            ) from None


def parse_size(value: object, *, where: str = "size") -> int:
    """Bytes from ``20GB``, ``1.5 GiB``, ``512MB``, ``1000`` or an int; ConfigError otherwise."""
    if isinstance(value, bool):
        raise ConfigError(f"{where}: expected a size like '20GB', got {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ConfigError(f"{where}: size must not be negative, got {value}")
        return value
    if isinstance(value, str):
        m = _SIZE.match(value)
        if m:
            unit = _SIZE_UNITS.get(m.group(2).lower())
            if unit is not None:
                return int(float(m.group(1)) * unit)
    raise ConfigError(
        f"{where}: cannot parse size {value!r}; use e.g. '20GB', '512MiB' or a plain number of bytes"
    )


def find_config_file(env: Mapping[str, str] = os.environ) -> Path | None:
    """The config file that :func:`load_config` would read, or None."""
    explicit = env.get("HYPERSLAB_CONFIG")
    if explicit:
        path = Path(explicit).expanduser()
        if not path.is_file():
            raise ConfigError(f"HYPERSLAB_CONFIG points to {path}, which is not a file")
        return path
    for candidate in (
        Path.cwd() / CONFIG_FILENAME,
        Path(platformdirs.user_config_dir("hyperslab")) / CONFIG_FILENAME,
    ):
        if candidate.is_file():
            return candidate
    return None


def load_config(path: Path | None = None, env: Mapping[str, str] = os.environ) -> Config:
    """Read ``path`` (or the first file of the lookup order) and apply env overrides."""
    if path is not None:
        path = Path(path).expanduser()
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
    else:
        path = find_config_file(env)
    raw: dict[str, Any] = {}
    if path is not None:
        try:
            with path.open("rb") as f:
                raw = tomllib.load(f)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: malformed TOML: {exc}", file=str(path)) from exc
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read: {exc.strerror}", file=str(path)) from exc
    return _build(raw, path, env)


def read_toml(path: str | Path, what: str) -> dict[str, Any]:
    """A TOML file as a dict: BadInputError if it does not exist, ConfigError if unreadable."""
    from hyperslab.errors import BadInputError

    p = Path(path)
    try:
        return tomllib.loads(p.read_text())
    except FileNotFoundError:
        raise BadInputError(f"{what} {p} does not exist", file=str(p)) from None
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{what} {p}: {exc}", file=str(p)) from None


def _where(path: Path | None) -> str:
    return str(path) if path is not None else "configuration"


def _known_sites(sites: Mapping[str, object], path: Path | None) -> str:
    if sites:
        return f"known sites: {', '.join(sites)}"
    return f"no sites are defined ({_where(path)})"


def _build(raw: dict[str, Any], path: Path | None, env: Mapping[str, str]) -> Config:
    where = _where(path)
    unknown = set(raw) - {"preference", "cache", "sites"}
    if unknown:
        raise ConfigError(
            f"{where}: unknown top-level key(s) {', '.join(sorted(unknown))}; "
            "expected preference, [cache], [sites.NAME]",
            file=str(path),
        )

    sites_raw = raw.get("sites", {})
    if not isinstance(sites_raw, dict):
        raise ConfigError(f"{where}: 'sites' must be a table of [sites.NAME] tables")
    fields: dict[str, dict[str, Any]] = {}
    for name, table in sites_raw.items():
        fields[name] = _site_fields(name, table, where)

    explicit_preference = "preference" in raw
    preference = raw.get("preference", list(fields))
    if not isinstance(preference, list) or not all(isinstance(p, str) for p in preference):
        raise ConfigError(f"{where}: 'preference' must be a list of site names")

    cache = raw.get("cache", {})
    if not isinstance(cache, dict):
        raise ConfigError(f"{where}: 'cache' must be a table")
    unknown = set(cache) - {"dir", "size", "memory"}
    if unknown:
        raise ConfigError(f"{where}: unknown [cache] key(s) {', '.join(sorted(unknown))}")
    cache_dir_value = cache.get("dir")
    if cache_dir_value is not None and not isinstance(cache_dir_value, str):
        raise ConfigError(f"{where}: [cache] dir must be a string")
    cache_size = parse_size(cache.get("size", DEFAULT_CACHE_SIZE), where=f"{where}: [cache] size")
    cache_memory = parse_size(
        cache.get("memory", DEFAULT_CACHE_MEMORY), where=f"{where}: [cache] memory"
    )

    # Environment overrides.
    if env.get("HYPERSLAB_CACHE_DIR"):
        cache_dir_value = env["HYPERSLAB_CACHE_DIR"]
    if env.get("HYPERSLAB_CACHE_SIZE"):
        cache_size = parse_size(env["HYPERSLAB_CACHE_SIZE"], where="HYPERSLAB_CACHE_SIZE")
    if env.get("HYPERSLAB_CACHE_MEMORY"):
        cache_memory = parse_size(env["HYPERSLAB_CACHE_MEMORY"], where="HYPERSLAB_CACHE_MEMORY")
    new_sites = _apply_site_env(fields, env)
    if not explicit_preference:
        preference = list(preference) + [n for n in new_sites if n not in preference]
    if env.get("HYPERSLAB_PREFERENCE") is not None:
        preference = [p.strip() for p in env["HYPERSLAB_PREFERENCE"].split(",") if p.strip()]
        where_pref = "HYPERSLAB_PREFERENCE"
    else:
        where_pref = f"{where}: preference"

    sites: dict[str, SiteConfig] = {}
    for name, f in fields.items():
        if "url" not in f:
            raise ConfigError(f"{where}: site {name!r} has no url", file=str(path), site=name)
        if (
            path is not None
            and "://" not in f["url"]
            and not Path(f["url"]).expanduser().is_absolute()
        ):
            # Relative directory sites are relative to the file that names them.
            f["url"] = str(path.parent / f["url"])
        sites[name] = SiteConfig(name=name, **f)

    seen: set[str] = set()
    for name in preference:
        if name not in sites:
            raise ConfigError(
                f"{where_pref} names unknown site {name!r}; {_known_sites(sites, path)}",
                file=str(path),
                site=name,
            )
        if name in seen:
            raise ConfigError(f"{where_pref} lists site {name!r} twice", file=str(path))
        seen.add(name)

    cache_dir = (
        Path(cache_dir_value).expanduser()
        if cache_dir_value
        else Path(platformdirs.user_cache_dir("hyperslab"))
    )
    if path is not None and not cache_dir.is_absolute():
        # Relative cache dirs are relative to the file that names them, not to the cwd.
        cache_dir = path.parent / cache_dir
    return Config(
        sites=sites,
        preference=tuple(preference),
        cache_dir=cache_dir,
        cache_size=cache_size,
        cache_memory=cache_memory,
        source=path,
    )


def _credential_keys(table: Mapping[str, Any], trail: str = "") -> list[str]:
    found: list[str] = []
    for k, v in table.items():
        if str(k).lower() in _CREDENTIAL_KEYS:
            found.append(trail + str(k))
        if isinstance(v, dict):
            found.extend(_credential_keys(v, f"{trail}{k}."))
    return found


def _site_fields(name: str, table: object, where: str) -> dict[str, Any]:
    if not _SITE_NAME.match(name):
        raise ConfigError(
            f"{where}: bad site name {name!r}: use letters, digits, '-' and '_'", site=name
        )
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: [sites.{name}] must be a table", site=name)
    secrets = _credential_keys(table)
    if secrets:
        raise ConfigError(
            f"{where}: [sites.{name}] contains credential key(s) {', '.join(secrets)}; "
            "credentials are never read from hyperslab.toml. Use the AWS environment "
            "(AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY) or a profile "
            '(profile = "NAME" with ~/.aws/credentials) instead',
            site=name,
        )
    unknown = set(table) - _SITE_KEYS
    if unknown:
        raise ConfigError(
            f"{where}: [sites.{name}] has unknown key(s) {', '.join(sorted(unknown))}; "
            f"expected {', '.join(sorted(_SITE_KEYS))}",
            site=name,
        )
    out: dict[str, Any] = {}
    for key in ("url", "endpoint_url", "region", "profile"):
        if key in table:
            if not isinstance(table[key], str) or not table[key]:
                raise ConfigError(
                    f"{where}: [sites.{name}] {key} must be a non-empty string", site=name
                )
            out[key] = table[key]
    if "anon" in table:
        if not isinstance(table["anon"], bool):
            raise ConfigError(f"{where}: [sites.{name}] anon must be true or false", site=name)
        out["anon"] = table["anon"]
    if "options" in table:
        if not isinstance(table["options"], dict):
            raise ConfigError(f"{where}: [sites.{name}] options must be a table", site=name)
        out["options"] = dict(table["options"])
    return out


def _split_site_var(rest: str) -> tuple[str, str] | None:
    """``BEAM_LINE_ENDPOINT_URL`` → (``BEAM_LINE``, ``endpoint_url``)."""
    for suffix, field_name in _SITE_ENV_FIELDS:
        if rest.endswith(suffix) and len(rest) > len(suffix):
            return rest[: -len(suffix)], field_name
    return None


def _apply_site_env(fields: dict[str, dict[str, Any]], env: Mapping[str, str]) -> list[str]:
    """Apply ``HYPERSLAB_SITE_<NAME>_<FIELD>``; return the names of sites it created."""
    by_env_name = {n.upper().replace("-", "_"): n for n in fields}
    new: list[str] = []
    for var in sorted(env):
        if not var.startswith("HYPERSLAB_SITE_"):
            continue
        parsed = _split_site_var(var[len("HYPERSLAB_SITE_") :])
        if parsed is None:
            raise ConfigError(
                f"unrecognised environment variable {var}; per-site variables are "
                "HYPERSLAB_SITE_<NAME>_{URL,ENDPOINT_URL,REGION,PROFILE,ANON} "
                "(credentials come from the AWS environment, never from HYPERSLAB_*)"
            )
        env_name, field_name = parsed
        value = env[var]
        name = by_env_name.get(env_name)
        if name is None:
            if field_name != "url":
                if f"HYPERSLAB_SITE_{env_name}_URL" in env:
                    name = env_name.lower()
                else:
                    raise ConfigError(
                        f"{var} refers to site {env_name.lower()!r}, which is not configured; "
                        f"set HYPERSLAB_SITE_{env_name}_URL to define it"
                    )
            else:
                name = env_name.lower()
            if not _SITE_NAME.match(name):
                raise ConfigError(f"{var}: bad site name {name!r}")
            fields[name] = {}
            by_env_name[env_name] = name
            new.append(name)
        if field_name == "anon":
            lowered = value.strip().lower()
            if lowered not in {"1", "0", "true", "false", "yes", "no"}:
                raise ConfigError(f"{var} must be true or false, got {value!r}")
            fields[name]["anon"] = lowered in {"1", "true", "yes"}
        elif value:
            fields[name][field_name] = value
        else:
            fields[name].pop(field_name, None)
    return new
