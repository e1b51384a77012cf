"""Tasks for test_fork_server.py: what a worker can tell about how it was started."""

from __future__ import annotations

import ctypes
import os


def origin(_=None):
    """(pid, ppid, whether the variable that made the fork server is visible here)."""
    libc = ctypes.CDLL(None)
    libc.getenv.restype = ctypes.c_char_p
    seen = "HANGFREE_FORK_SERVER" in os.environ or libc.getenv(b"HANGFREE_FORK_SERVER") is not None
    return os.getpid(), os.getppid(), seen


def abort(_=None):
    os.abort()


def crash(_=None):
    os._exit(3)
