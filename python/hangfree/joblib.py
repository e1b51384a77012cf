"""A joblib backend: ``Parallel`` calls (and scikit-learn's ``n_jobs=``) run in hangfree
workers.

::

    import joblib
    import hangfree.joblib  # registers the "hangfree" backend

    with joblib.parallel_config(backend="hangfree", task_timeout=60, max_memory="2GiB"):
        results = joblib.Parallel(n_jobs=4)(joblib.delayed(fit)(fold) for fold in folds)

A task whose worker dies (a segfault, the OOM killer) fails with
:class:`hangfree.WorkerLostError`, one that passes ``task_timeout`` with
:class:`hangfree.TaskTimeoutError`, one over ``max_memory`` with
:class:`hangfree.MemoryLimitError`; the ``Parallel`` call raises it, the other tasks of
that call are stopped, and the workers are there for the next call (the executor is
kept and reused, as loky's is). ``register(make_default=True)`` makes it joblib's default
backend; :func:`shutdown` stops the kept executor. Options (``parallel_config``
keywords): ``task_timeout``, ``max_memory``,
``retries``, ``grace``, ``max_tasks_per_child``, ``initializer``, ``initargs``,
``cgroup``, ``fork_server``.

Not done here, unlike loky: large NumPy arrays are pickled, not memory-mapped, and no
thread limit is set for the libraries a task uses (but see README on OpenBLAS).
"""

from __future__ import annotations

import threading

from joblib._parallel_backends import AutoBatchingMixin, FallbackToBackend, ParallelBackendBase, SequentialBackend
from joblib.parallel import register_parallel_backend

import hangfree

# Annotations only (strings here).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from concurrent.futures import Future
    from typing import Any, Callable, Dict, Optional, Tuple

OPTIONS = ("task_timeout", "max_memory", "retries", "grace", "max_tasks_per_child", "initializer", "initargs",
           "cgroup", "fork_server")

# The executor kept between Parallel calls, and what it was made with: starting workers
# is the cost a reused pool saves (a scikit-learn search makes one Parallel call per
# fit). One at a time: another configuration replaces it.
_lock = threading.Lock()
_shared: "Optional[Tuple[Tuple[Any, ...], hangfree.ProcessPoolExecutor]]" = None


def _executor(n_jobs: int, options: "Dict[str, Any]") -> "hangfree.ProcessPoolExecutor":
    global _shared
    key = (n_jobs, *((k, repr(options.get(k))) for k in OPTIONS))
    with _lock:
        if _shared is not None and _shared[0] == key and not _shared[1]._shutdown:
            return _shared[1]
        if _shared is not None:
            _shared[1].shutdown(wait=False, cancel_futures=True)
        ex = hangfree.ProcessPoolExecutor(n_jobs, **options)
        _shared = (key, ex)
        return ex


def shutdown(wait: bool = True) -> None:
    """Shuts down the executor kept between Parallel calls (it is also shut down when
    the interpreter exits, after its calls finish)."""
    global _shared
    with _lock:
        kept, _shared = _shared, None
    if kept is not None:
        kept[1].shutdown(wait=wait, cancel_futures=True)


def _in_worker() -> bool:
    """Whether this process is a hangfree worker (a Parallel call inside a task)."""
    from multiprocessing import current_process

    return current_process().name.startswith("HangfreePoolWorker")


class _Batch:
    """A joblib batch of calls, named in error messages by the calls it holds (joblib's
    own object has no name to show)."""

    def __init__(self, batch: "Callable[[], Any]"):
        self.batch = batch
        self.__qualname__ = f"joblib batch[{_calls(batch)}]"

    def __call__(self) -> "Any":
        return self.batch()


def _calls(batch: "Any") -> str:
    from hangfree._client import label

    items = getattr(batch, "items", None)
    if not isinstance(items, list):
        return repr(batch)
    shown = ", ".join(label(f, tuple(a), k) for f, a, k in items[:3])
    return shown + (f", ... {len(items)} calls" if len(items) > 3 else "")


class HangfreeBackend(AutoBatchingMixin, ParallelBackendBase):
    """joblib's process backend on a :class:`hangfree.ProcessPoolExecutor`."""

    supports_retrieve_callback = True

    def __init__(self, nesting_level: "Optional[int]" = None, inner_max_num_threads: "Optional[int]" = None,
                 **options: "Any"):
        unknown = sorted(set(options) - set(OPTIONS))
        if unknown:
            raise TypeError(f"the hangfree joblib backend takes no option {', '.join(unknown)} "
                            f"(it takes {', '.join(OPTIONS)})")
        super().__init__(nesting_level=nesting_level, inner_max_num_threads=inner_max_num_threads, **options)
        self._pool: "Optional[hangfree.ProcessPoolExecutor]" = None
        self._futures: "set[Future]" = set()

    def effective_n_jobs(self, n_jobs: "Optional[int]") -> int:
        if n_jobs == 0:
            raise ValueError("n_jobs == 0 in Parallel has no meaning")
        if n_jobs is None or _in_worker():
            # Inside a task the CPUs are the pool's already: a nested call runs in turn.
            return 1
        if n_jobs < 0:
            return max(hangfree.cpu_count() + 1 + n_jobs, 1)
        return n_jobs

    def configure(self, n_jobs: int = 1, parallel: "Any" = None, prefer: "Any" = None, require: "Any" = None,
                  **options: "Any") -> int:
        n_jobs = self.effective_n_jobs(n_jobs)
        if n_jobs == 1:
            raise FallbackToBackend(SequentialBackend(nesting_level=self.nesting_level))
        # Parallel passes its own settings for loky's memory-mapping (temp_folder,
        # max_nbytes, mmap_mode, ...) to every backend: only ours are taken.
        merged = {**self.backend_kwargs, **{k: v for k, v in options.items() if k in OPTIONS}}
        self.parallel = parallel
        self._pool = _executor(n_jobs, merged)
        return n_jobs

    def submit(self, func: "Callable[[], Any]", callback: "Optional[Callable[[Future], Any]]" = None) -> "Future":
        assert self._pool is not None, "configure() first"
        future = self._pool.submit(_Batch(func))
        self._futures.add(future)
        future.add_done_callback(self._futures.discard)
        if callback is not None:
            future.add_done_callback(callback)
        return future

    def retrieve_result_callback(self, future: "Future") -> "Any":
        return future.result()

    def abort_everything(self, ensure_ready: bool = True) -> None:
        """A task failed: the call's other tasks are stopped (queued ones cancelled,
        running ones have their workers replaced); the executor stays for the next call."""
        pool = self._pool
        for future in list(self._futures):
            if pool is not None:
                pool.stop(future)
        self._futures.clear()

    def terminate(self) -> None:
        # The executor stays up for the next Parallel call (see `_executor`).
        self._pool = None
        self._futures.clear()
        self.reset_batch_stats()

    def get_nested_backend(self) -> "Tuple[ParallelBackendBase, None]":
        # A Parallel call inside a task (or a thread of the caller during one) runs in
        # turn: the workers already fill the CPUs.
        return SequentialBackend(nesting_level=(self.nesting_level or 0) + 1), None


def register(make_default: bool = False) -> None:
    """Registers the backend as ``"hangfree"`` (done on import); ``make_default=True``
    also makes it joblib's default backend."""
    register_parallel_backend("hangfree", HangfreeBackend, make_default=make_default)


register()
