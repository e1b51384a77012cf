"""Task functions for test_beyond.py (stack dumps, memory limit, retries, outcomes).

Module-level so that workers import them by reference: their frames then carry this
file's name and source lines in a time-out's stack."""

from __future__ import annotations

import ctypes
import hashlib
import os
import signal
import time
from pathlib import Path


def stuck_inner(seconds):
    time.sleep(seconds)  # STUCK-HERE
    return "woke"


def stuck_outer(seconds):
    return stuck_inner(seconds)


def libc_sleep(seconds):
    """Sleeps inside libc (a C call), again and again until ``seconds`` have passed."""
    libc = ctypes.CDLL(None)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        libc.sleep(int(seconds))
    return "slept"


def libc_sleep_deaf(seconds):
    """A C call that cannot answer the stack request (SIGUSR1 blocked) and ignores
    SIGTERM (blocked too): only SIGKILL ends it."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1, signal.SIGTERM})
    ctypes.CDLL(None).sleep(int(seconds))
    return "slept"


def cpu_in_c(_=None):
    """Minutes of CPU inside one C call that never returns to the interpreter."""
    return hashlib.pbkdf2_hmac("sha256", b"password", b"salt", 10**9)


def read_pipe_nobody_writes(_=None):
    r, w = os.pipe()
    return os.read(r, 1)  # BLOCKED-READ


def hog(step_mib=10, max_mib=800, pause=0.01):
    """Allocates (and writes) memory in a loop, up to ``max_mib``; then holds it a while."""
    chunks = []
    for _ in range(max_mib // step_mib):
        chunks.append(b"\xa5" * (step_mib << 20))
        time.sleep(pause)
    time.sleep(20)
    return len(chunks)


def die_once(marker, value):
    """Kills its worker the first time (leaving ``marker``), returns ``value`` after."""
    m = Path(marker)
    if not m.exists():
        m.write_text(str(os.getpid()))
        os._exit(9)
    return value


def always_die(code):
    os._exit(code)


def record_and_raise(path):
    """Appends this run's pid to ``path``, then raises."""
    with open(path, "a") as f:
        f.write(f"{os.getpid()}\n")
    raise ValueError("raised on purpose")


def record_and_sleep(path, seconds):
    with open(path, "a") as f:
        f.write(f"{os.getpid()}\n")
    time.sleep(seconds)


def mixed(i):
    """Most items return i*i; every 7th raises; a few kill their worker."""
    if i in (100, 501, 902):
        os._exit(3)
    if i % 7 == 0:
        raise ValueError(f"item {i}")
    return i * i


def mixed_expected(i):
    """What :func:`mixed` ends with: ('value', v), ('raised', text) or ('lost', None)."""
    if i in (100, 501, 902):
        return ("lost", None)
    if i % 7 == 0:
        return ("raised", f"item {i}")
    return ("value", i * i)
