"""The exceptions hangfree raises, built from the engine's outcome records.

The engine words every message (task, pid, exit code or signal name); this module only
picks the exception class and attaches the details as attributes.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
from concurrent.futures.process import BrokenProcessPool
# Annotations only (strings here): importing typing costs a pool's creation ~4 ms.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Optional

__all__ = [
    "HangfreeError",
    "WorkerLostError",
    "WorkerProtocolError",
    "TaskTimeoutError",
    "MemoryLimitError",
    "InitializerError",
    "TaskCancelledError",
    "PoolTerminatedError",
]


class HangfreeError(Exception):
    """Base class of the errors hangfree raises instead of hanging."""

    task_id: Optional[int] = None
    task: Optional[str] = None


class WorkerLostError(HangfreeError, BrokenProcessPool):
    """The worker process running the task died (crash, ``sys.exit``, ``os._exit``,
    a signal from outside, the OOM killer) or closed its channel.

    Attributes: ``pid``, ``exitcode`` (or None), ``signal`` and ``signal_name`` (or None),
    ``stderr_tail`` (the last KiB the worker wrote to stderr). Only this task fails; the
    pool replaces the worker and goes on. It is also a
    ``concurrent.futures.process.BrokenProcessPool`` so existing handlers still catch it.
    """

    pid: Optional[int] = None
    exitcode: Optional[int] = None
    signal: Optional[int] = None
    signal_name: Optional[str] = None
    stderr_tail: str = ""
    #: True when a SIGKILL nobody in the pool sent came while the kernel counted an OOM kill.
    probably_oom: bool = False
    #: With ``retries``: the earlier attempts' workers, as dicts (pid, exitcode or signal).
    earlier_attempts: list = []
    #: True for an item of a map that had finished when its worker died, before its
    #: result left the worker: the result is lost, and the item is not run again.
    finished: bool = False


class WorkerProtocolError(WorkerLostError):
    """The worker wrote bytes on its channel that break the protocol; it was stopped."""


# Where concurrent.futures has a TimeoutError of its own (before 3.11), it is one too.
_TIMEOUT_BASES = tuple(dict.fromkeys((multiprocessing.TimeoutError, TimeoutError, concurrent.futures.TimeoutError)))


class TaskTimeoutError(HangfreeError, *_TIMEOUT_BASES):  # type: ignore[misc]
    """The task ran past its time limit; its worker was stopped (SIGTERM to its process
    group, the grace period, then SIGKILL). Attributes: ``limit`` (seconds), ``pid``, and
    ``stack``: where the task was when its limit passed (the worker's Python stack), or
    None if it was stuck where Python could not answer (a C call).

    It is also ``multiprocessing.TimeoutError``, the builtin ``TimeoutError`` and
    ``concurrent.futures.TimeoutError``, so ``except TimeoutError`` catches it."""

    limit: Optional[float] = None
    pid: Optional[int] = None
    stack: Optional[str] = None


class MemoryLimitError(HangfreeError):
    """The worker running the task passed the pool's ``max_memory``; it was stopped and
    replaced. Attributes: ``limit`` and ``peak`` (bytes), ``pid``."""

    limit: Optional[int] = None
    peak: Optional[int] = None
    pid: Optional[int] = None


class InitializerError(HangfreeError, BrokenProcessPool):
    """Workers cannot start: the initializer raised (``remote_traceback`` holds the
    worker's traceback), a worker exited or hung during start-up. Raised to every waiting
    and later caller instead of respawning workers forever."""

    remote_traceback: str = ""


class TaskCancelledError(HangfreeError):
    """The task was cancelled before it finished."""


class PoolTerminatedError(HangfreeError):
    """The pool was terminated before the task finished."""


for _cls in (HangfreeError, WorkerLostError, WorkerProtocolError, TaskTimeoutError, MemoryLimitError, InitializerError,
             TaskCancelledError, PoolTerminatedError):
    # Shown in tracebacks as hangfree.WorkerLostError, the name users import.
    _cls.__module__ = "hangfree"


def _with(exc: HangfreeError, **attrs: Any) -> HangfreeError:
    for k, v in attrs.items():
        setattr(exc, k, v)
    return exc


def initializer_error(details: dict) -> InitializerError:
    """Builds the InitializerError for an engine start-up failure record."""
    from hangfree._pickling import loads

    tb = ""
    message = details.get("message", "workers cannot start")
    payload = details.get("payload")
    if payload:
        try:
            info = loads(payload)
            tb = info.get("traceback", "")
            during = info.get("during")
            cause = f"workers cannot start: {during}" if during else "the pool's initializer"
            message = f"{cause} raised {info.get('summary', '')}".rstrip()
        except Exception:  # a worker that sent garbage still gets a clear error
            pass
    if tb:
        message = f"{message}\n\nWorker traceback:\n{tb.rstrip()}"
    elif details.get("stderr_tail"):
        message = f"{message}\n\nWorker stderr:\n{details['stderr_tail'].rstrip()}"
    return _with(InitializerError(message), remote_traceback=tb)


def failure(kind: str, data: dict, label: Optional[str]) -> BaseException:
    """The exception for a failed outcome of the given kind."""
    message = data.get("message", kind)
    task_id = data.get("task_id")
    if label and task_id is not None:
        message = message.replace(f"task {task_id}:", f"task {task_id} ({label}):", 1)
    common = {"task_id": task_id, "task": label}
    if kind == "worker_lost":
        return _with(
            WorkerLostError(message),
            pid=data.get("pid"),
            exitcode=data.get("exitcode"),
            signal=data.get("signal"),
            signal_name=data.get("signal_name"),
            stderr_tail=data.get("stderr_tail", ""),
            probably_oom=data.get("probably_oom", False),
            earlier_attempts=data.get("earlier_attempts", []),
            finished=data.get("finished", False),
            **common,
        )
    if kind == "protocol":
        return _with(WorkerProtocolError(message), pid=data.get("pid"), **common)
    if kind == "timed_out":
        return _with(TaskTimeoutError(message), limit=data.get("limit"), pid=data.get("pid"),
                     stack=data.get("stack"), **common)
    if kind == "memory_limit":
        return _with(MemoryLimitError(message), limit=data.get("limit"), peak=data.get("peak"),
                     pid=data.get("pid"), **common)
    if kind == "cancelled":
        return _with(TaskCancelledError(message), **common)
    if kind == "terminated":
        return _with(PoolTerminatedError(message), **common)
    if kind == "startup_failed":
        return _with(initializer_error(data.get("failure", {})), **common)
    return _with(HangfreeError(message), **common)
