"""Task functions for the ProcessPoolExecutor suite (the workers import them by reference;
the executor sends them sys.path). The general helpers live in ``tasks``."""

from __future__ import annotations

import os
import time
from pathlib import Path

from tasks import announce


def die_if_multiple_of_20(i):
    """Kills its worker for 0, 20, 40, ... (10 of range(200)); squares the others."""
    if i % 20 == 0:
        os._exit(9)
    return i * i


def pid_rendezvous(directory, n, timeout=10.0):
    """Announces this worker's pid, waits until ``n`` workers have, returns the pid.

    ``n`` calls of this, submitted together to ``n`` workers, each end on a different
    worker: a call can only return once ``n`` distinct workers are running one."""
    announce(directory)
    deadline = time.monotonic() + timeout
    d = Path(directory)
    while len([p for p in d.iterdir() if not p.name.startswith(".")]) < n:
        if time.monotonic() >= deadline:
            raise TimeoutError(f"only some of {n} workers reached the rendezvous")
        time.sleep(0.01)
    return os.getpid()


def sleep_then_fail(seconds, message):
    time.sleep(seconds)
    raise ValueError(message)


def sleep_then_exit(seconds, code):
    time.sleep(seconds)
    os._exit(code)


def pid_and_value(x):
    return os.getpid(), x


def power(base, exp=2, *, offset=0):
    return base ** exp + offset


def raise_key_error(key):
    raise KeyError(key)
