"""Tasks for test_at_most_once.py: each run appends its item to a file of its own, so a
test counts how often every item started."""

from __future__ import annotations

import os
import signal
import time


def _log(path: str, x: int) -> None:
    # One write of a short line with O_APPEND: lines of concurrent runs never mix.
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(fd, f"{x}\n".encode())
    finally:
        os.close(fd)


def runs(path: str) -> dict:
    """How many times each item started."""
    counts: dict = {}
    with open(path) as f:
        for line in f:
            counts[int(line)] = counts.get(int(line), 0) + 1
    return counts


def exit_at(x: int, path: str, bad: int) -> int:
    _log(path, x)
    if x == bad:
        os._exit(3)
    return x * 2


def segfault_at(x: int, path: str, bad: int) -> int:
    _log(path, x)
    if x == bad:
        os.kill(os.getpid(), signal.SIGSEGV)
    return x * 2


def sleep_at(x: int, path: str, bad: int, seconds: float) -> int:
    _log(path, x)
    if x == bad:
        time.sleep(seconds)
    return x * 2


def slow_each(x: int, path: str, seconds: float) -> int:
    _log(path, x)
    time.sleep(seconds)
    return x * 2


def exit_once_at(x: int, path: str, bad: int, marker: str) -> int:
    """Kills its worker the first time item ``bad`` runs (``marker`` records it)."""
    _log(path, x)
    if x == bad:
        try:
            os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return x * 2
        os._exit(3)
    return x * 2


def raise_at(x: int, path: str, bad: int) -> int:
    _log(path, x)
    if x == bad:
        raise ValueError(f"bad item {x}")
    return x * 2


def hog_at(x: int, path: str, bad: int) -> int:
    _log(path, x)
    if x == bad:
        block = bytearray(400 * 1024 * 1024)
        for i in range(0, len(block), 4096):
            block[i] = 1
        time.sleep(5)
    return x * 2
