"""In-process sites for tests: ``memory://name/prefix``.

The one process-wide registry of the storage layer lives here: memory sites with the
same name share storage (as two handles on one bucket would), so tests can open a
"remote" twice. :func:`forget_memory_site` drops one.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator
from datetime import UTC, datetime

from hyperslab.errors import BadInputError, redact
from hyperslab.storage.keys import has_control_characters, join_key, validate_key, validate_prefix
from hyperslab.storage.site import ObjectInfo, Site, check_range, range_error

__all__ = ["MemorySite", "forget_memory_site"]

_memory_lock = threading.Lock()


class _MemoryStore:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.objects: dict[str, tuple[bytes, str, datetime]] = {}


# The one process-wide registry in this module: memory:// sites with the same name
# share storage (as two handles on one bucket would), so tests can open a "remote"
# twice. Nothing else is cached globally.
_memory_stores: dict[str, _MemoryStore] = {}


def forget_memory_site(name: str) -> None:
    """Drop the shared storage of ``memory://name`` (for tests)."""
    with _memory_lock:
        _memory_stores.pop(name, None)


class MemorySite(Site):
    """In-process site for tests; same ``name`` → same storage (see ``forget_memory_site``)."""

    def __init__(self, name: str, prefix: str = "") -> None:
        if not name or "/" in name or has_control_characters(name):
            raise BadInputError(f"bad memory site name {name!r}")
        self.name = name
        self.prefix = validate_prefix(prefix.strip("/"))
        with _memory_lock:
            self._store = _memory_stores.setdefault(name, _MemoryStore())

    @property
    def url(self) -> str:
        return redact(f"memory://{self.name}/{self.prefix}".rstrip("/"))

    def _full(self, key: str) -> str:
        return join_key(self.prefix, validate_key(key))

    def _obj(self, key: str) -> tuple[bytes, str, datetime]:
        full = self._full(key)
        with self._store.lock:
            obj = self._store.objects.get(full)
        if obj is None:
            raise self._not_found(key)
        return obj

    def get(self, key: str) -> bytes:
        return self._obj(key)[0]

    def get_with_etag(self, key: str) -> tuple[bytes, str]:
        data, etag, _ = self._obj(key)
        return data, etag

    def get_range(self, key: str, start: int, length: int) -> bytes:
        check_range(key, start, length)
        data = self._obj(key)[0]
        if start + length > len(data):
            raise range_error(key, self.url, start, length, len(data))
        return data[start : start + length]

    def put(self, key: str, data: bytes) -> None:
        full = self._full(key)
        data = bytes(data)
        obj = (data, hashlib.sha256(data).hexdigest(), datetime.now(UTC))
        with self._store.lock:
            self._store.objects[full] = obj

    def put_if_match(self, key: str, data: bytes, expected_etag: str | None) -> str:
        full = self._full(key)
        data = bytes(data)
        obj = (data, hashlib.sha256(data).hexdigest(), datetime.now(UTC))
        with self._store.lock:
            current = self._store.objects.get(full)
            actual = None if current is None else current[1]
            if actual != expected_etag:
                what = "create" if expected_etag is None else "conditional write of"
                raise self._conflict(key, expected_etag, actual, what)
            self._store.objects[full] = obj
        return obj[1]

    def head(self, key: str) -> ObjectInfo:
        data, etag, mtime = self._obj(key)
        return ObjectInfo(size=len(data), etag=etag, mtime=mtime)

    def list(self, prefix: str = "") -> Iterator[str]:
        full = join_key(self.prefix, validate_prefix(prefix)) if prefix else self.prefix
        if self.prefix and not prefix:
            full += "/"
        cut = len(self.prefix) + 1 if self.prefix else 0
        with self._store.lock:
            keys = sorted(k for k in self._store.objects if k.startswith(full))
        for k in keys:
            yield k[cut:]

    def delete(self, key: str) -> None:
        full = self._full(key)
        with self._store.lock:
            self._store.objects.pop(full, None)
