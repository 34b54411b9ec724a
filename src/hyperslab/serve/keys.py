"""API keys of ``hyperslab serve``: a TOML file of named, hashed keys, each limited to
repository, entry and ref globs (or not at all).

::

    [[key]]
    name = "alice"
    hash = "sha256:3f0c..."        # hyperslab serve --hash-key  (the key is never stored)
    repositories = ["beamline"]    # optional: globs of repository names; absent = all
    entries = ["run42/*"]          # optional: globs of entry names; absent = all
    refs = ["main", "v*"]          # optional: globs of branch and tag names; absent = all,
                                   # or only "main" for a key limited by entries

Globs are shell globs (``*`` also matches ``/``) and apply together: alice reads the
entries ``run42/*`` of the repository ``beamline`` only, at the branch ``main`` (or any
snapshot id). A key limited by ``entries`` is *restricted*: the listings it gets (log,
branches, tags, entries, search) say nothing of other entries; see
:mod:`hyperslab.serve.history`. Branch and tag names are free text that may name
entries, so such a key sees only the refs its ``refs`` globs name (``main`` unless
given). To give one collaborator different entries in two repositories, give them two
keys.

A client sends ``Authorization: Bearer <key>``. Keys are random tokens of 256 bits
(:func:`new_key`), so one SHA-256 is enough to store them safely; the presented key is
hashed and compared in constant time. Neither keys nor their hashes are ever logged.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path

from hyperslab.errors import ConfigError, local_path_error

__all__ = ["ANONYMOUS", "RESTRICTED_REFS", "Grant", "KeyRing", "hash_key", "new_key"]

_PREFIX = "sha256:"


def new_key() -> str:
    """A fresh random API key (43 URL-safe characters)."""
    return secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    """What a keys file stores for ``key``: ``sha256:<hex>``."""
    return _PREFIX + hashlib.sha256(key.encode()).hexdigest()


#: the refs a key limited by entries sees when its ``refs`` are not given
RESTRICTED_REFS = ("main",)


def _matches(name: str, globs: tuple[str, ...] | None) -> bool:
    return globs is None or any(fnmatchcase(name, g) for g in globs)


@dataclass(frozen=True)
class Grant:
    """Who a request is (a key's name, or ``anonymous``) and what it may read: each of
    ``repositories``, ``entries`` and ``refs`` is None (all) or shell globs of the names
    allowed (``*`` also matches ``/``)."""

    name: str
    entries: tuple[str, ...] | None = None
    repositories: tuple[str, ...] | None = None
    refs: tuple[str, ...] | None = None

    def allows(self, entry: str) -> bool:
        """Whether the entry named ``entry`` may be read."""
        return _matches(entry, self.entries)

    def allows_repository(self, name: str) -> bool:
        return _matches(name, self.repositories)

    def allows_ref(self, name: str) -> bool:
        """Whether the branch or tag ``name`` may be listed and read through."""
        return _matches(name, self.refs)

    @property
    def restricted(self) -> bool:
        """Limited to some entries: listings and errors must not name the others."""
        return self.entries is not None


ANONYMOUS = Grant("anonymous")


@dataclass(frozen=True)
class _Key:
    digest: bytes
    grant: Grant


class KeyRing:
    """The keys of a keys file; :meth:`grant` finds the one a presented key is."""

    def __init__(self, keys: Sequence[_Key] = ()) -> None:
        self._keys = list(keys)

    def __len__(self) -> int:
        return len(self._keys)

    @classmethod
    def load(cls, path: str | Path) -> KeyRing:
        """Read a keys file; a malformed one is a :class:`ConfigError` naming the fault."""
        path = Path(path)
        try:
            text = path.read_text()
        except OSError as exc:
            raise local_path_error(exc, path, "read keys from") from None
        except UnicodeDecodeError:
            raise ConfigError(f"keys file {path} is not text") from None
        try:
            doc = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"keys file {path} is not valid TOML: {exc}") from None
        extra = set(doc) - {"key"}
        if extra:
            raise ConfigError(f"keys file {path}: unknown table(s) {sorted(extra)}; use [[key]]")
        items = doc.get("key", [])
        if not isinstance(items, list) or not items:
            raise ConfigError(f"keys file {path} holds no [[key]] tables")
        keys = [_parse(path, i, item) for i, item in enumerate(items)]
        names = [k.grant.name for k in keys]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ConfigError(f"keys file {path}: key names given twice: {dup}")
        return cls(keys)

    def grant(self, key: str) -> Grant | None:
        """The grant of the presented ``key``, or None when it is no key of this ring."""
        digest = hashlib.sha256(key.encode()).digest()
        found = None
        for k in self._keys:  # every key compared: the time says nothing about which
            if hmac.compare_digest(k.digest, digest):
                found = k.grant
        return found


def _parse(path: Path, i: int, item: object) -> _Key:
    where = f"keys file {path}, key {i + 1}"
    if not isinstance(item, dict):
        raise ConfigError(f"{where}: not a table")
    fields = ("name", "hash", "repositories", "entries", "refs")
    unknown = set(item) - set(fields)
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {sorted(unknown)} ({', '.join(fields)})")
    name, digest = item.get("name"), item.get("hash")
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{where}: needs a name")
    where = f"keys file {path}, key {name!r}"
    if not isinstance(digest, str) or not digest.startswith(_PREFIX):
        raise ConfigError(f"{where}: hash must be 'sha256:<hex>' (hyperslab serve --hash-key)")
    try:
        raw = bytes.fromhex(digest[len(_PREFIX) :])
    except ValueError:
        raw = b""
    if len(raw) != 32:
        raise ConfigError(f"{where}: hash must be 'sha256:' and 64 hex digits")
    globs: dict[str, tuple[str, ...] | None] = {}
    for field in ("repositories", "entries", "refs"):
        value = item.get(field)
        if value is not None and (
            not isinstance(value, list) or not all(isinstance(g, str) and g for g in value)
        ):
            raise ConfigError(f"{where}: {field} must be a list of name globs")
        globs[field] = tuple(value) if value is not None else None
    if globs["entries"] is not None and globs["refs"] is None:
        globs["refs"] = RESTRICTED_REFS
    return _Key(raw, Grant(name, **globs))
