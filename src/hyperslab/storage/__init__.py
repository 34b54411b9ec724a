"""Storage: where bytes live. The bottom layer; it imports nothing else of hyperslab
but :mod:`hyperslab.errors` and :mod:`hyperslab.config`.

* ``site.py``: the :class:`Site` interface every backend implements (and
  :func:`probe_cas`);
* ``keys.py``: the rules every key obeys on every site;
* ``file.py``, ``memory.py``, ``s3/``: the backends;
* ``opening.py``: a site from a URL, a path or a ``SITE:path`` name of
  ``hyperslab.toml``.
"""

from typing import TYPE_CHECKING, Any

from hyperslab.storage.file import FileSite
from hyperslab.storage.keys import validate_key, validate_prefix
from hyperslab.storage.memory import MemorySite, forget_memory_site
from hyperslab.storage.opening import open_site, site_from_config
from hyperslab.storage.site import ObjectInfo, Site, probe_cas

if TYPE_CHECKING:
    from hyperslab.storage.s3 import S3Site

__all__ = [
    "FileSite",
    "MemorySite",
    "ObjectInfo",
    "S3Site",
    "Site",
    "forget_memory_site",
    "open_site",
    "probe_cas",
    "site_from_config",
    "validate_key",
    "validate_prefix",
]


def __getattr__(name: str) -> Any:
    """``S3Site`` on first use: its clients (and asyncio) load only where S3 is used."""
    if name == "S3Site":
        from hyperslab.storage.s3 import S3Site

        return S3Site
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
