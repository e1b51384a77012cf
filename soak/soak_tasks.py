"""The task functions the soak runs in hangfree workers: one normal task that computes a
checkable value, and one per fault kind. Imported by reference (the soak puts this
directory on sys.path, which the workers take over)."""

from __future__ import annotations

import ctypes
import os
import subprocess
import threading
import time

# How long a faulty task sleeps when it waits to be killed from outside, timed out or
# stopped for garbage: far longer than the fault takes to be handled, and each of those
# calls also gets a per-call time limit below this as a backstop, so nothing hangs.
LONG_SLEEP = 60.0


def checksum(i: int) -> int:
    """The value a normal task must return for ``i`` (the parent recomputes it)."""
    h = 2166136261
    for k in range(64):
        h = ((h ^ (i + k)) * 16777619) & 0xFFFFFFFF
    return h


def normal(i: int) -> tuple:
    return (i, checksum(i))


def exit_(i: int) -> None:
    os._exit(3)


def segfault(i: int) -> None:
    ctypes.string_at(0)  # reads address 0: SIGSEGV


def announce_and_sleep(i: int, directory: str) -> str:
    """Writes this worker's pid where the soak's killer thread looks, then sleeps until it
    is SIGKILLed from outside."""
    tmp = os.path.join(directory, f".{i}.tmp")
    with open(tmp, "w") as f:
        f.write(str(os.getpid()))
    os.rename(tmp, os.path.join(directory, str(i)))
    time.sleep(LONG_SLEEP)
    return "not killed"


def sleep_long(i: int) -> str:
    time.sleep(LONG_SLEEP)
    return "not timed out"


def _channel_fd() -> int:
    """The worker's channel to the pool: the one socket among its descriptors (the worker
    moved it off fd 0, onto a close-on-exec descriptor >= 3)."""
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd <= 2:
            continue
        try:
            if os.readlink(f"/proc/self/fd/{fd}").startswith("socket:"):
                return fd
        except OSError:
            continue
    raise RuntimeError("no channel socket found among this worker's descriptors")


def garbage(i: int) -> str:
    """Writes bytes that are not a hangfree frame on the worker's channel, then sleeps:
    the pool must call that a protocol error and stop the worker."""
    os.write(_channel_fd(), b"\xfe\xff\xff\xff this is not a hangfree frame at all")
    time.sleep(LONG_SLEEP)
    return "garbage not noticed"


def unpicklable(i: int) -> object:
    return threading.Lock()  # neither pickle nor cloudpickle can send a lock


def raise_(i: int) -> None:
    raise ValueError(f"soak task {i} raised on purpose")


def grandchild(i: int) -> tuple:
    """Starts a child in this worker's process group and leaves it running: it must die
    with the worker's group, at the latest when the pool is shut down."""
    p = subprocess.Popen(["sleep", "3600"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    return (i, p.pid)
