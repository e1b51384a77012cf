"""The functions the benchmark runs in the workers.

They live in their own module (not in ``measure.py``) so that every implementation can
import them by name in its workers: fork, spawn, loky's and hangfree's exec'd workers.
"""

import os
import signal
import time


def noop():
    return None


def inc(x):
    return x + 1


def echo(data):
    return data


def pid():
    return os.getpid()


def nap_pid(seconds):
    time.sleep(seconds)
    return os.getpid()


def spin(n):
    """Pure-Python CPU work: about ``n`` loop iterations."""
    s = 0
    for i in range(n):
        s += i * i
    return s


def crash():
    """A worker that exits under the pool (what ``sys.exit`` in C code or a segfault do)."""
    os._exit(1)


def sigkill_self(path):
    """Writes CLOCK_MONOTONIC (system-wide on Linux, so the caller can compare it with its
    own clock) to ``path``, then SIGKILLs its own process. The time written is taken
    before the file is written, so the detection time measured includes the write."""
    t = time.monotonic()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.write(fd, repr(t).encode())
    os.close(fd)
    os.kill(os.getpid(), signal.SIGKILL)


def stubborn(directory, seconds):
    """Ignores SIGTERM, says it is running (a file named after its pid), then sleeps."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    path = os.path.join(directory, str(os.getpid()))
    with open(path + ".tmp", "w") as f:
        f.write("ready")
    os.rename(path + ".tmp", path)
    time.sleep(seconds)
    return "woke up"
