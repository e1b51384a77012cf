"""hangfree: a process pool that can never hang.

A drop-in for ``multiprocessing.Pool`` and ``concurrent.futures.ProcessPoolExecutor``:
change ``import multiprocessing as mp`` to ``import hangfree as mp`` (or import
``ProcessPoolExecutor`` from hangfree) and a program that would hang, or lose its
executor, on a crashed, stuck or SIGTERM-ignoring worker finishes with a clear error
instead.
"""

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
