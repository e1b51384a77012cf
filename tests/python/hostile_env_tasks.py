"""Task functions for test_hostile_env.py (imported by reference in the workers)."""

from __future__ import annotations

import os
import subprocess
import sys
import time


def square(x: int) -> int:
    return x * x


def pid(_: object = None) -> int:
    return os.getpid()


def exit_(code: int) -> None:
    os._exit(code)


def sleep(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def close_stdout_and_print(x: int) -> tuple:
    """Closes this worker's stdout (fd 1) if still open, then prints: the print fails
    with EBADF, which must be this task's exception or value, never a hang."""
    try:
        os.close(1)
    except OSError:
        pass
    try:
        print(f"task {x} prints to a closed stdout", flush=True)
        return (x, "printed")
    except OSError as e:
        return (x, f"OSError {e.errno}")


def print_and_square(x: int) -> int:
    print(f"task {x} on stdout", flush=True)
    return x * x


def flood_stderr(mib: int) -> int:
    """Writes ``mib`` MiB to stderr (fd 2), in 64 KiB writes."""
    block = b"x" * 65535 + b"\n"
    for _ in range(mib * 16):
        os.write(2, block)
    return mib


def flood_stderr_and_die(mib: int) -> None:
    flood_stderr(mib)
    os.write(2, b"\nTHE LAST LINE BEFORE DYING\n")
    os._exit(5)


def start_daemon(_: object = None) -> int:
    """Starts a child that leaves this worker's process group with setsid (as a daemon
    does) and returns its pid."""
    p = subprocess.Popen(["sleep", "3600"], start_new_session=True, stdin=subprocess.DEVNULL,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return p.pid


def start_grandchild(_: object = None) -> int:
    """Starts a child in this worker's process group and returns its pid."""
    p = subprocess.Popen(["sleep", "3600"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    return p.pid


def stderr_line(x: int) -> int:
    sys.stderr.write(f"line from task {x}\n")
    sys.stderr.flush()
    return x
