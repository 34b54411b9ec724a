"""Timing one child process from spawn to exit, with its own CPU time and peak RSS.

Shared by ``run.py`` and ``sync.py``: ``os.wait4`` gives the rusage of that child
alone (``RUSAGE_CHILDREN`` would give the maximum over every child so far).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from typing import Any


def wait_timed(
    proc: subprocess.Popen[Any], t0: float, timeout: float, poll: float
) -> tuple[float, int, float, float]:
    """Wait for ``proc``, started at ``t0`` (``time.perf_counter()``), killing it once
    ``timeout`` seconds have passed; returns (wall s, exit status, CPU s, peak RSS MB)."""
    deadline = t0 + timeout
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if time.perf_counter() > deadline:
            proc.kill()
            pid, status, usage = os.wait4(proc.pid, 0)
            break
        time.sleep(poll)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    # Linux reports ru_maxrss in KiB, macOS in bytes
    rss_mb = usage.ru_maxrss / (2**20 if sys.platform == "darwin" else 2**10)
    return wall, proc.returncode, usage.ru_utime + usage.ru_stime, rss_mb
