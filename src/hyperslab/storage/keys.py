"""Key rules shared by every site: safe relative ``/``-separated keys, reserved names.

A key that works on one site works on all of them: keys are validated on every call,
and names beginning with ``.hyperslab-tmp`` and the name ``.hyperslab-lock`` are
reserved for the file backend's temporary and lock files.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from hyperslab.errors import UnsafeNameError

__all__ = [
    "LOCK_NAME",
    "PROBE_PREFIX",
    "TMP_PREFIX",
    "has_control_characters",
    "join_key",
    "validate_key",
    "validate_prefix",
]

TMP_PREFIX = ".hyperslab-tmp"
LOCK_NAME = ".hyperslab-lock"
PROBE_PREFIX = ".hyperslab-probe"
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def has_control_characters(text: str) -> bool:
    """Whether ``text`` holds C0/C1 control characters (never allowed in keys or names)."""
    return _CONTROL.search(text) is not None


def _check_segments(text: str, what: str, segments: Sequence[str]) -> None:
    for seg in segments:
        if seg in ("", ".", ".."):
            raise UnsafeNameError(
                f"unsafe {what} {text!r}: empty, '.' and '..' path segments are not allowed",
                key=text,
            )
        if seg.startswith(TMP_PREFIX) or seg == LOCK_NAME:
            raise UnsafeNameError(f"unsafe {what} {text!r}: {seg!r} is a reserved name", key=text)


def validate_key(key: str, *, what: str = "key") -> str:
    """Return ``key`` if it is a safe relative ``/``-separated path; UnsafeNameError otherwise."""
    if not isinstance(key, str):
        raise UnsafeNameError(f"{what} must be a string, got {type(key).__name__}")
    if not key:
        raise UnsafeNameError(f"{what} must not be empty")
    if has_control_characters(key):
        raise UnsafeNameError(f"unsafe {what} {key!r}: control characters are not allowed", key=key)
    if "\\" in key:
        raise UnsafeNameError(f"unsafe {what} {key!r}: backslashes are not allowed", key=key)
    if key.startswith("/"):
        raise UnsafeNameError(f"unsafe {what} {key!r}: must be relative (no leading '/')", key=key)
    _check_segments(key, what, key.split("/"))
    return key


def validate_prefix(prefix: str) -> str:
    """Like :func:`validate_key`, but ``""`` and a trailing ``/`` are allowed."""
    if prefix == "":
        return prefix
    validate_key(prefix.removesuffix("/"), what="prefix")
    return prefix


def join_key(prefix: str, key: str) -> str:
    """``prefix/key``, or ``key`` when there is no prefix."""
    return f"{prefix}/{key}" if prefix else key
