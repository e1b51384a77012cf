"""Task functions the workers import by reference (the pool sends them sys.path)."""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

INIT_VALUE = None


def square(x):
    return x * x


def add(a, b):
    return a + b


def with_kwargs(a, b=0, *, c=1, **more):
    return (a, b, c, sorted(more.items()))


def identity(x):
    return x


def getpid(_=None):
    return os.getpid()


def sleep_return(seconds, value=None):
    time.sleep(seconds)
    return value


def fail(x):
    raise ValueError(f"bad input {x!r}")


def fail_if_odd(x):
    if x % 2:
        raise ValueError(f"odd {x}")
    return x


def segfault(_=None):
    ctypes.string_at(0)


def os_exit(code):
    os._exit(code)


def sys_exit(code):
    sys.exit(code)


def stderr_then_exit(message, code):
    sys.stderr.write(message + "\n")
    sys.stderr.flush()
    os._exit(code)


def die_every_10th(i):
    if i % 10 == 0:
        os._exit(7)
    return i * i


def announce(directory, *extra_pids):
    """Makes a file named after this worker's pid (and extra pids) in ``directory``."""
    name = "-".join(str(p) for p in (os.getpid(), *extra_pids))
    tmp = Path(directory) / f".{name}"
    tmp.write_text("")
    tmp.rename(Path(directory) / name)


def announce_and_sleep(directory, seconds, value=None):
    announce(directory)
    time.sleep(seconds)
    return value


def ignore_sigterm_and_sleep(directory, seconds):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    announce(directory)
    time.sleep(seconds)


def block_sigterm_in_c(directory, seconds):
    """Blocks SIGTERM and sleeps inside libc, as a worker stuck in C code."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    announce(directory)
    libc = ctypes.CDLL(None)
    libc.sleep(int(seconds))


def grandchild_and_sleep(directory, seconds):
    """Starts a grandchild that ignores SIGTERM, announces both pids, sleeps."""
    child = subprocess.Popen([sys.executable, "-c",
                              "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"])
    announce(directory, child.pid)
    time.sleep(seconds)


def grandchild_and_exit(directory, code):
    child = subprocess.Popen(["sleep", "600"])
    announce(directory, child.pid)
    os._exit(code)


def return_unpicklable(_=None):
    return threading.Lock()


class Unpicklable:
    def __reduce__(self):
        raise TypeError("Unpicklable refuses to be pickled")

    def __repr__(self):
        return "Unpicklable()"


def _refuse():
    raise RuntimeError("this object cannot be unpickled here")


class FailsToUnpickle:
    """Pickles fine, raises when unpickled (in the worker)."""

    def __reduce__(self):
        return (_refuse, ())

    def __repr__(self):
        return "FailsToUnpickle()"


class NeedsTwoArgs(Exception):
    """Pickles, but cannot be rebuilt from its args: unpickling it raises TypeError."""

    def __init__(self, a, b):
        super().__init__(a)
        self.b = b


def raise_needs_two_args(_=None):
    raise NeedsTwoArgs("first", "second")


class HoldsALock(Exception):
    def __init__(self, msg):
        super().__init__(msg)
        self.lock = threading.Lock()


def raise_unpicklable_exception(_=None):
    raise HoldsALock("lock inside")


def set_init_value(value):
    global INIT_VALUE
    INIT_VALUE = value


def get_init_value(_=None):
    return INIT_VALUE


def init_fails(message):
    raise RuntimeError(message)


def init_exits(code):
    os._exit(code)


def return_env(name):
    return os.environ.get(name)


def return_cwd(_=None):
    return os.getcwd()


def describe_buffers(*args, **kwargs):
    """For each argument: its type name, length, whether it can be written, a checksum."""
    import hashlib

    def one(v):
        writable = not memoryview(v).readonly
        return (type(v).__name__, len(v), writable, hashlib.sha256(v).hexdigest())

    return [one(a) for a in args], {k: one(v) for k, v in kwargs.items()}


def flip_bytearray(data):
    """Changes the worker's copy in place and returns it (the caller's must not change)."""
    data[0] ^= 0xFF
    return data


def append_and_sleep(path, seconds):
    """Appends a line to ``path`` (one per call that started), then sleeps."""
    with open(path, "a") as f:
        f.write(f"{os.getpid()}\n")
    time.sleep(seconds)


def nbytes(data: bytes) -> int:
    return len(data)


def zeros(n: int) -> bytes:
    return bytes(n)


def big_result_then_killed(path, size, delay):
    """Appends a line to ``path`` (one per run), then returns ``size`` bytes while a
    thread SIGKILLs this worker ``delay`` seconds from now: mid-copy of the result into
    the arena, or around it."""
    with open(path, "a") as f:
        f.write(f"{os.getpid()}\n")
    threading.Timer(delay, os.kill, (os.getpid(), signal.SIGKILL)).start()
    data = b"r" * size
    return data


def pattern(seed, size):
    """``size`` bytes that depend on ``seed`` (a result to keep while others arrive)."""
    return bytes([seed % 256]) * size


def pattern_array(seed, n):
    import numpy

    return numpy.full(n, seed, dtype=numpy.int64)


def nested_buffers(x):
    """A structure with large buffers at several depths, of several kinds."""
    return {"list": [x, bytearray(x)], "tuple": (memoryview(x).tobytes(),), "deep": {"b": [[bytes(x)]]}}
