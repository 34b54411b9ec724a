"""Which transport an S3 site gets: ``HYPERSLAB_S3_CLIENT`` and the site's ``options``.

hyperslab's own client (:mod:`.wire`) unless ``HYPERSLAB_S3_CLIENT`` names another
(``obstore``, ``botocore``), or the site's ``options`` hold settings only botocore
understands (``client_kwargs``, ``s3_additional_kwargs``, ``requester_pays`` ...),
which then go to :mod:`.boto`. Retries and timeouts (``retries``, ``config_kwargs``
``connect_timeout``/``read_timeout``/``retries``) every transport understands.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from hyperslab.errors import ConfigError
from hyperslab.storage.s3.boto import BotocoreTransport
from hyperslab.storage.s3.obstore import ObstoreTransport
from hyperslab.storage.s3.transport import Transport, TransportSettings
from hyperslab.storage.s3.wire import WireTransport

__all__ = [
    "CLIENTS",
    "CLIENT_VAR",
    "COMMON_OPTIONS",
    "choose_transport",
    "client_choice",
    "common_options",
]

#: environment variable that picks the transport of every S3 site
CLIENT_VAR = "HYPERSLAB_S3_CLIENT"
#: the transports by the name ``HYPERSLAB_S3_CLIENT`` gives them
CLIENTS: dict[str, type[Transport]] = {
    "wire": WireTransport,
    "obstore": ObstoreTransport,
    "botocore": BotocoreTransport,
}


#: site ``options`` (s3fs spelling) every transport understands; any other needs botocore
COMMON_OPTIONS = frozenset({"retries", "config_kwargs"})
_COMMON_CONFIG = frozenset({"connect_timeout", "read_timeout", "retries"})


def common_options(options: Mapping[str, Any]) -> dict[str, Any] | None:
    """The retries and timeouts of a site's ``options`` as :class:`TransportSettings`
    fields, or None when the options hold anything else (botocore settings)."""
    config = options.get("config_kwargs") or {}
    if set(options) - COMMON_OPTIONS or not isinstance(config, dict):
        return None
    if set(config) - _COMMON_CONFIG:
        return None
    retry = config.get("retries") or {}
    if not isinstance(retry, dict) or set(retry) - {"max_attempts", "total_max_attempts", "mode"}:
        return None
    out: dict[str, Any] = {}
    attempts = [int(options["retries"])] if options.get("retries") is not None else []
    if retry.get("total_max_attempts") is not None:
        attempts.append(int(retry["total_max_attempts"]))
    elif retry.get("max_attempts") is not None:  # botocore: retries after the first try
        attempts.append(int(retry["max_attempts"]) + 1)
    if attempts:
        out["retries"] = min(attempts)
    for name in ("connect_timeout", "read_timeout"):
        if config.get(name) is not None:
            out[name] = float(config[name])
    return out


def client_choice(name: str | None = None) -> str:
    """The client ``name`` asks for, else ``HYPERSLAB_S3_CLIENT``, else ``wire``."""
    choice = (name if name is not None else os.environ.get(CLIENT_VAR, "")).strip().lower()
    choice = choice or "wire"
    choice = {"s3fs": "botocore", "lean": "wire"}.get(choice, choice)  # earlier names
    if choice not in CLIENTS:
        raise ConfigError(
            f"{CLIENT_VAR} must be one of {', '.join(map(repr, CLIENTS))}, not {choice!r}"
        )
    return choice


def choose_transport(
    settings: TransportSettings, options: Mapping[str, Any], client: str | None = None
) -> Transport:
    """The transport for a site: botocore when ``options`` hold settings only botocore
    understands (``client_kwargs``, ``s3_additional_kwargs`` ...) or
    ``HYPERSLAB_S3_CLIENT=botocore``; otherwise the client ``HYPERSLAB_S3_CLIENT``
    names, hyperslab's own by default."""
    choice = client_choice(client)
    common = common_options(options)
    if choice == "botocore" or common is None:
        return BotocoreTransport(settings, options)
    settings = replace(settings, **common)
    if choice == "obstore":
        return ObstoreTransport(settings)
    return WireTransport(settings)
