"""hangfree: a process pool that can never hang.

A drop-in for ``multiprocessing.Pool`` and ``concurrent.futures.ProcessPoolExecutor``:
change ``import multiprocessing as mp`` to ``import hangfree as mp`` (or import
``ProcessPoolExecutor`` from hangfree) and a program that would hang, or lose its
executor, on a crashed, stuck or SIGTERM-ignoring worker finishes with a clear error
instead.
"""

from __future__ import annotations

import importlib

# Not typing.TYPE_CHECKING: importing typing costs a worker about 9 ms of its start.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, List

# The names below are loaded on first use (PEP 562): a worker process, which imports
# this package to reach hangfree._worker, then starts without the pool machinery and
# multiprocessing (about 40 ms of imports; workers are started often).
_LAZY = {
    "Pool": "hangfree.pool",
    "ApplyResult": "hangfree.pool",
    "AsyncResult": "hangfree.pool",
    "MapResult": "hangfree.pool",
    "IMapIterator": "hangfree.pool",
    "cpu_count": "hangfree.pool",
    "ProcessPoolExecutor": "hangfree.executor",
    "TimeoutError": "multiprocessing",
    "HangfreeError": "hangfree._errors",
    "InitializerError": "hangfree._errors",
    "MemoryLimitError": "hangfree._errors",
    "PoolTerminatedError": "hangfree._errors",
    "TaskCancelledError": "hangfree._errors",
    "TaskTimeoutError": "hangfree._errors",
    "WorkerLostError": "hangfree._errors",
    "WorkerProtocolError": "hangfree._errors",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'hangfree' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> List[str]:
    return sorted(set(globals()) | set(_LAZY))


if TYPE_CHECKING:
    from multiprocessing import TimeoutError

    from hangfree._errors import (
        HangfreeError,
        InitializerError,
        MemoryLimitError,
        PoolTerminatedError,
        TaskCancelledError,
        TaskTimeoutError,
        WorkerLostError,
        WorkerProtocolError,
    )
    from hangfree.executor import ProcessPoolExecutor
    from hangfree.pool import ApplyResult, AsyncResult, IMapIterator, MapResult, Pool, cpu_count

__version__ = "0.1.0"

__all__ = [
    "Pool",
    "ProcessPoolExecutor",
    "ApplyResult",
    "AsyncResult",
    "MapResult",
    "IMapIterator",
    "TimeoutError",
    "cpu_count",
    "HangfreeError",
    "WorkerLostError",
    "WorkerProtocolError",
    "TaskTimeoutError",
    "MemoryLimitError",
    "InitializerError",
    "TaskCancelledError",
    "PoolTerminatedError",
]
