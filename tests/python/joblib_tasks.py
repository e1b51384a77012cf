"""Tasks for test_joblib.py (importable by every worker)."""

from __future__ import annotations

import os
import signal
import time


def square(x: int) -> int:
    return x * x


def pid(_: int) -> int:
    return os.getpid()


def segfault_at(x: int, bad: int) -> int:
    if x == bad:
        os.kill(os.getpid(), signal.SIGSEGV)
    return x


def sleep_for(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def nested(n: int) -> list:
    import joblib

    return joblib.Parallel(n_jobs=2, backend="hangfree")(joblib.delayed(square)(i) for i in range(n))
