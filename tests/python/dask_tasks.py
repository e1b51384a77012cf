"""Tasks for test_dask.py: importable by Dask's worker processes and by hangfree's."""

from __future__ import annotations

import os
import signal
import time

SEGFAULTS = frozenset({17, 60, 99, 140, 188})
HANGS = frozenset({33, 120, 171})


def risky(x: int, hangs: bool = True) -> int:
    if x in SEGFAULTS:
        os.kill(os.getpid(), signal.SIGSEGV)
    if hangs and x in HANGS:
        time.sleep(3600)
    return x * 2


def pid() -> int:
    return os.getpid()
