"""hangfree: a process pool that can never hang.

A drop-in for ``multiprocessing.Pool`` and ``concurrent.futures.ProcessPoolExecutor``:
change ``import multiprocessing as mp`` to ``import hangfree as mp`` (or import
``ProcessPoolExecutor`` from hangfree) and a program that would hang, or lose its
executor, on a crashed, stuck or SIGTERM-ignoring worker finishes with a clear error
instead.
"""

from __future__ import annotations

import importlib
import sys

if not sys.platform.startswith("linux"):
    raise ImportError(
        f"hangfree runs on Linux only (kernel 5.4 or newer), not on {sys.platform!r}: its engine "
        "supervises workers with pidfds, process groups and PR_SET_PDEATHSIG, which only Linux "
        "has. multiprocessing and concurrent.futures are the stdlib's pools for this platform."
    )

# Not typing.TYPE_CHECKING: importing typing costs a worker about 9 ms of its start.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, List

# The names below are loaded on first use (PEP 562): a worker process, which imports
# this package to reach hangfree._worker, then starts without the pool machinery
# (about 40 ms of imports; workers are started often).
_LAZY = {
    "Pool": "hangfree.pool",
    "ApplyResult": "hangfree.pool",
    "AsyncResult": "hangfree.pool",
    "MapResult": "hangfree.pool",
    "IMapIterator": "hangfree.pool",
    "ProcessPoolExecutor": "hangfree.executor",
    "release_fork_servers": "hangfree._client",
    "HangfreeError": "hangfree._errors",
    "InitializerError": "hangfree._errors",
    "MemoryLimitError": "hangfree._errors",
    "PoolTerminatedError": "hangfree._errors",
    "TaskCancelledError": "hangfree._errors",
    "TaskTimeoutError": "hangfree._errors",
    "WorkerLostError": "hangfree._errors",
    "WorkerProtocolError": "hangfree._errors",
    # concurrent.futures, for programs that import these beside ProcessPoolExecutor.
    "Executor": "concurrent.futures",
    "Future": "concurrent.futures",
    "ThreadPoolExecutor": "concurrent.futures",
    "as_completed": "concurrent.futures",
    "wait": "concurrent.futures",
    "FIRST_COMPLETED": "concurrent.futures",
    "FIRST_EXCEPTION": "concurrent.futures",
    "ALL_COMPLETED": "concurrent.futures",
    "CancelledError": "concurrent.futures",
    "BrokenExecutor": "concurrent.futures",
    "InvalidStateError": "concurrent.futures",
    "BrokenProcessPool": "concurrent.futures.process",
    "SUBDEBUG": "multiprocessing",
    "SUBWARNING": "multiprocessing",
}

# multiprocessing's own names (its __all__): each is the stdlib's, taken from hangfree's
# default context (see hangfree.context), but for Pool, which is hangfree's.
_MULTIPROCESSING = frozenset({
    "Array", "AuthenticationError", "Barrier", "BoundedSemaphore", "BufferTooShort", "Condition", "Event",
    "JoinableQueue", "Lock", "Manager", "Pipe", "Process", "ProcessError", "Queue", "RLock", "RawArray",
    "RawValue", "Semaphore", "SimpleQueue", "TimeoutError", "Value", "active_children",
    "allow_connection_pickling", "cpu_count", "current_process", "freeze_support", "get_all_start_methods",
    "get_context", "get_logger", "get_start_method", "log_to_stderr", "parent_process", "reducer",
    "set_executable", "set_forkserver_preload", "set_start_method",
})

# Submodules of multiprocessing reachable as hangfree.<name> (`from hangfree import
# shared_memory`, `import hangfree.managers`): the stdlib's modules themselves.
_STDLIB_SUBMODULES = frozenset({
    "connection", "dummy", "forkserver", "heap", "managers", "popen_fork", "popen_forkserver",
    "popen_spawn_posix", "process", "queues", "reduction", "resource_sharer", "resource_tracker",
    "shared_memory", "sharedctypes", "spawn", "synchronize", "util",
})


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is not None:
        value = getattr(importlib.import_module(module), name)
    elif name in _MULTIPROCESSING:
        from hangfree.context import _default_context

        value = getattr(_default_context, name)
    elif name in _STDLIB_SUBMODULES:
        value = importlib.import_module(f"hangfree.{name}")
    elif name == "__version__":
        value = _version()
    else:
        raise AttributeError(f"module 'hangfree' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> List[str]:
    return sorted(set(globals()) | set(_LAZY) | _MULTIPROCESSING | {"__version__"})


def _version() -> str:
    """The installed distribution's version. Its one source is the Cargo workspace's
    ``version`` (Cargo.toml): maturin writes it into the package metadata, as
    pyproject.toml declares the version dynamic. Read on first use of ``__version__``, not
    on import: importing importlib.metadata would add milliseconds to every worker's start."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("hangfree")
    except PackageNotFoundError:  # python/ put on sys.path by hand, nothing installed
        return "0+unknown"


class _StdlibSubmodules:
    """Finds ``hangfree.<name>`` for the stdlib's multiprocessing submodules: the module
    imported is ``multiprocessing.<name>`` itself, so their objects stay the stdlib's."""

    @classmethod
    def find_spec(cls, fullname: str, path: Any = None, target: Any = None) -> Any:
        package, _, name = fullname.partition(".")
        if package != "hangfree" or name not in _STDLIB_SUBMODULES:
            return None
        from importlib.machinery import ModuleSpec

        return ModuleSpec(fullname, cls())

    def create_module(self, spec: Any) -> Any:
        module = importlib.import_module(f"multiprocessing.{spec.name.partition('.')[2]}")
        # The import system sets __spec__ on what this returns: keep the stdlib's own.
        self._spec = module.__spec__
        return module

    def exec_module(self, module: Any) -> None:
        module.__spec__ = self._spec


sys.meta_path.append(_StdlibSubmodules)  # type: ignore[arg-type]


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
    from hangfree._client import release_fork_servers
    from hangfree.executor import ProcessPoolExecutor
    from hangfree.pool import ApplyResult, AsyncResult, IMapIterator, MapResult, Pool

__all__ = [
    "ProcessPoolExecutor",
    "ApplyResult",
    "AsyncResult",
    "MapResult",
    "IMapIterator",
    "HangfreeError",
    "WorkerLostError",
    "WorkerProtocolError",
    "TaskTimeoutError",
    "MemoryLimitError",
    "InitializerError",
    "TaskCancelledError",
    "PoolTerminatedError",
    "release_fork_servers",
    *sorted(_MULTIPROCESSING | {"Pool"}),
]
