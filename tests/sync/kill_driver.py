"""Run ``hyperslab sync`` in this process and SIGKILL it at its N-th site request.

    python -m tests.sync.kill_driver N LOG -- sync SRC DST [options]

Every request any site makes (get, head, list, put ...) is counted across threads;
request number N (1-based) kills the process with SIGKILL before it is made (N = 0:
never). Each upload that returned verified is appended to LOG (one key per line),
so the test can check that no object is uploaded again after its verified upload.
On a normal exit the number of requests made is printed to stderr as
``requests=<n>``.
"""

from __future__ import annotations

import functools
import os
import signal
import sys
import threading
from typing import Any

from hyperslab.storage import FileSite, Site

_lock = threading.Lock()
_count = 0


def _counted(fn: Any, kill_at: int) -> Any:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        global _count
        with _lock:
            _count += 1
            if _count == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
        return fn(*args, **kwargs)

    return wrapper


def _logged(fn: Any, log: str) -> Any:
    @functools.wraps(fn)
    def wrapper(self: Site, key: str, *args: Any, **kwargs: Any) -> Any:
        out = fn(self, key, *args, **kwargs)
        with _lock, open(log, "a") as fh:
            fh.write(key + "\n")
        return out

    return wrapper


def main() -> None:
    kill_at, log = int(sys.argv[1]), sys.argv[2]
    argv = sys.argv[sys.argv.index("--") + 1 :]
    for name in ("get", "get_range", "get_with_etag", "head", "list", "put", "put_if_match"):
        setattr(FileSite, name, _counted(getattr(FileSite, name), kill_at))
    for name in ("put_verified", "put_file_verified"):
        setattr(FileSite, name, _logged(getattr(Site, name), log))
    from hyperslab.cli import main as cli

    try:
        cli(argv)
    except SystemExit as exc:
        print(f"requests={_count}", file=sys.stderr)
        raise SystemExit(exc.code) from None


if __name__ == "__main__":
    main()
