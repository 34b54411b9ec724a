"""One exception hierarchy for hyperslab, grouped by what the caller does about it.

Every error carries a stable string ``code`` (for ``--json`` output and scripts) and
an ``exit_status`` the CLI returns. Codes never change meaning once released; new
ones may be added. Messages never contain credentials: sites redact URLs before
they reach an error (see :func:`redact`).

==========================  ====  ==============================================
class                       exit  what the caller does
==========================  ====  ==============================================
HyperslabError                 1  (root; unexpected internal failure)
BadInputError                  2  fix the command line / input file
  NotHDF5Error                 2  the file is not HDF5 (or is truncated)
  BadFrameError                2  a TIFF/CBF frame is truncated or not its format
  FrameMismatchError           2  frames of one series differ (shape, dtype, codec)
  UnsupportedFeatureError      2  a feature with no reference or fallback
  UnsafeNameError              2  a name would escape its directory/prefix
  ConfigError                  2  fix hyperslab.toml / environment
NotFoundError                  3  check the name / URL
AccessDeniedError              4  fix permissions / credentials
ConflictError                  5  somebody else wrote first: retry or rebase
CorruptError                   6  data does not match its checksum / format
  FormatVersionError           6  upgrade hyperslab
TransientError                 7  retry later (network, timeouts)
VerificationError              8  refs do not reproduce the source bit-exactly
==========================  ====  ==============================================
"""

from __future__ import annotations

import re
from typing import Any, ClassVar

__all__ = [
    "AccessDeniedError",
    "BadFrameError",
    "BadInputError",
    "ConfigError",
    "ConflictError",
    "CorruptError",
    "FormatVersionError",
    "FrameMismatchError",
    "HyperslabError",
    "NotFoundError",
    "NotHDF5Error",
    "SourceChangedError",
    "TransientError",
    "UnsafeNameError",
    "UnsupportedFeatureError",
    "VerificationError",
    "did_you_mean",
    "local_path_error",
    "redact",
]


class HyperslabError(Exception):
    """Root of every error hyperslab raises on purpose."""

    code: ClassVar[str] = "internal"
    exit_status: ClassVar[int] = 1

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(redact(message))
        self.details = {k: redact(v) if isinstance(v, str) else v for k, v in details.items()}

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else ""

    def to_json(self) -> dict[str, Any]:
        """The shape of an error in ``--json`` output."""
        out: dict[str, Any] = {
            "code": self.code,
            "error": type(self).__name__,
            "message": self.message,
        }
        if self.details:
            out["details"] = self.details
        return out


class BadInputError(HyperslabError):
    code = "bad_input"
    exit_status = 2


class NotHDF5Error(BadInputError):
    code = "not_hdf5"


class BadFrameError(BadInputError):
    """A detector frame file (TIFF, CBF) that cannot be read: truncated, or not its format."""

    code = "bad_frame"


class FrameMismatchError(BadInputError):
    """Frames of one series differ in shape, dtype or encoding."""

    code = "frame_mismatch"


class UnsupportedFeatureError(BadInputError):
    code = "unsupported"


class UnsafeNameError(BadInputError):
    code = "unsafe_name"


class ConfigError(BadInputError):
    code = "config"


class NotFoundError(HyperslabError):
    code = "not_found"
    exit_status = 3


class AccessDeniedError(HyperslabError):
    code = "access_denied"
    exit_status = 4


class ConflictError(HyperslabError):
    code = "conflict"
    exit_status = 5


class CorruptError(HyperslabError):
    code = "corrupt"
    exit_status = 6


class FormatVersionError(CorruptError):
    code = "format_version"


class SourceChangedError(CorruptError):
    """A source file is not the file that was ingested (size, mtime or content differ)."""

    code = "source_changed"


class TransientError(HyperslabError):
    code = "transient"
    exit_status = 7


class VerificationError(HyperslabError):
    code = "verification_failed"
    exit_status = 8


# key=value / "key": "value" pairs whose value is a secret, and user:password@ in URLs
_SECRET_KV = re.compile(
    r"(?i)((?:aws_)?(?:secret(?:_access)?_key|session_token|access_key_id|password|token|key)"
    r"[\"']?\s*[:=]\s*[\"']?)([^\s\"',}&]+)"
)
_URL_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)([^/@\s:]+):([^/@\s]+)@")
_SIGNED_QUERY = re.compile(
    r"(?i)([?&](?:X-Amz-Signature|X-Amz-Credential|X-Amz-Security-Token|Signature|AWSAccessKeyId)=)[^&\s]+"
)


def redact(text: str) -> str:
    """Remove credentials from a message or URL (invariant 3: no secrets in output)."""
    text = _URL_USERINFO.sub(r"\1***:***@", text)
    text = _SIGNED_QUERY.sub(r"\1***", text)
    return _SECRET_KV.sub(r"\1***", text)


def did_you_mean(word: str, known: Any, *, what: str = "") -> str:
    """A hint for a message about an unknown ``word``: `` (did you mean 'a', 'b'?)``
    naming up to three close names from ``known``, else `` (WHAT: a, b, c ...)`` listing
    some of them (``what`` names them, e.g. ``"branches"``), else ``""``."""
    import difflib

    names = sorted({str(k) for k in known})
    if not names:
        return ""
    close = difflib.get_close_matches(word, names, n=3, cutoff=0.6)
    if not close:  # case and prefix slips difflib scores low
        low = word.lower()
        close = [n for n in names if n.lower() == low or n.lower().startswith(low)][:3]
    if close:
        return " (did you mean " + ", ".join(repr(c) for c in close) + "?)"
    if not what:
        return ""
    shown = ", ".join(names[:8]) + (f" ... {len(names)} in all" if len(names) > 8 else "")
    return f" ({what}: {shown})"


def local_path_error(exc: OSError, path: Any, action: str) -> HyperslabError:
    """The named error for an ``OSError`` met while ``action`` (e.g. "write") a local
    file the user named (an output, an input): a folder on the way that is a file, a
    folder where a file should be, no permission, a read-only or full file system,
    a path the system refuses. Never ``internal``: the path is the user's to fix."""
    import errno

    where = f"cannot {action} {path}"
    reason = exc.strerror or str(exc)
    if isinstance(exc, NotADirectoryError | FileExistsError) and action != "read":
        return BadInputError(f"{where}: a folder on the way is a file ({reason})", path=str(path))
    if isinstance(exc, IsADirectoryError):
        return BadInputError(f"{where}: it is a folder, not a file", path=str(path))
    if isinstance(exc, PermissionError) or exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return AccessDeniedError(f"{where}: {reason}", path=str(path))
    if isinstance(exc, FileNotFoundError | NotADirectoryError):
        if action == "read":
            return NotFoundError(f"{where}: it does not exist", path=str(path))
        return BadInputError(
            f"{where}: a folder on the way is missing, or the system makes no files there "
            f"({reason})",
            path=str(path),
        )
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return TransientError(f"{where}: {reason} (free some space and retry)", path=str(path))
    return BadInputError(f"{where}: {reason}", path=str(path))
