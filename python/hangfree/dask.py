"""Dask integration: tasks that may crash or hang run in hangfree workers.

**Local scheduler.** A :class:`hangfree.ProcessPoolExecutor` is what Dask's local
scheduler takes as ``scheduler=``: ``dask.compute(graph, scheduler=executor)``.

**Distributed.** :class:`HangfreeExecutor` is a worker plugin that gives each Dask worker
a hangfree executor under a name; tasks annotated with that name run there, each with
``task_timeout``, ``max_memory`` and crash isolation, while other tasks run as before::

    from distributed import Client
    from hangfree.dask import HangfreeExecutor

    client = Client(cluster)
    client.register_plugin(HangfreeExecutor(task_timeout=60, max_memory="2GiB"))
    with dask.annotate(executor="hangfree"):
        futures = client.map(risky, items, retries=2)

A task whose process segfaults, is OOM-killed or passes its limit ends as an ordinary
task error (:class:`hangfree.WorkerLostError`, :class:`hangfree.TaskTimeoutError`,
:class:`hangfree.MemoryLimitError`) that Dask's own ``retries=`` can act on; the Dask
worker itself never dies of it. The executor shuts down (within its bound) when the Dask
worker closes, and its processes die with the Dask worker, also when the nanny kills it.
Started with ``dask worker --preload hangfree.dask``, each worker gets the executor with
default options.

Inside such a task there is no Dask worker: ``get_worker()``, ``worker_client`` and
actors do not work there (run those tasks in Dask's own executor).
"""

from __future__ import annotations

import importlib

from distributed.diagnostics.plugin import WorkerPlugin

import hangfree

# Annotations only (strings here).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Optional


class HangfreeExecutor(WorkerPlugin):
    """Adds a :class:`hangfree.ProcessPoolExecutor` to each Dask worker, as
    ``worker.executors[name]``. ``max_workers`` defaults to the worker's thread count;
    other keywords (``task_timeout``, ``max_memory``, ``retries``, ``grace``, ...) go to
    the executor."""

    def __init__(self, name: str = "hangfree", max_workers: "Optional[int]" = None, **options: "Any"):
        self.name = f"hangfree-executor-{name}"
        self.executor_name = name
        self.max_workers = max_workers
        self.options = options

    def setup(self, worker: "Any") -> None:
        workers = self.max_workers or worker.state.nthreads
        options = dict(self.options)
        if "initializer" not in options:
            # Each task arrives wrapped in distributed's own function: the worker imports
            # distributed when it starts (seconds on a busy machine), not in the first
            # task, whose time limit would pay for it.
            options.update(initializer=importlib.import_module, initargs=("distributed.worker",))
        worker.executors[self.executor_name] = hangfree.ProcessPoolExecutor(workers, **options)

    def teardown(self, worker: "Any") -> None:
        executor = worker.executors.pop(self.executor_name, None)
        if executor is not None:
            # Bounded: calls still running after the grace of a shutdown are stopped.
            executor.shutdown(wait=True, cancel_futures=True, timeout=1.0)


def dask_setup(worker: "Any") -> None:
    """``dask worker --preload hangfree.dask``: the executor "hangfree" with defaults."""
    HangfreeExecutor().setup(worker)


def dask_teardown(worker: "Any") -> None:
    HangfreeExecutor().teardown(worker)
