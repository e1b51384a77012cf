"""``hangfree.ProcessPoolExecutor``: futures that survive a crashed worker."""

from __future__ import annotations

import itertools
import queue
import threading
import time
import weakref
from concurrent.futures import CancelledError, Executor, Future
from concurrent.futures._base import CANCELLED, CANCELLED_AND_NOTIFIED, FINISHED, PENDING, RUNNING
# Annotations only (strings here): importing typing costs a pool's creation ~4 ms.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable, Dict, Generator, Iterable, Iterator, List, Optional, Union

from concurrent.futures import TimeoutError as FuturesTimeoutError

from hangfree._client import SLICE, EngineClient, as_items
from hangfree._errors import TaskCancelledError

__all__ = ["ProcessPoolExecutor"]


class _Future(Future):
    """A ``concurrent.futures.Future`` whose ``cancel`` and ``running`` ask the engine, so
    that they keep the stdlib's meaning: ``cancel`` succeeds only while no worker has the
    call yet, and ``running`` is True while a worker runs it."""

    def __init__(self, executor: "ProcessPoolExecutor"):
        super().__init__()
        self._executor: Optional[ProcessPoolExecutor] = executor
        self._task_id: Optional[int] = None
        # The engine key under which a thread waiting in result() takes the outcome.
        self._claim_key: Optional[int] = None
        self._stopped = False

    def _claim(self, timeout: Optional[float]) -> Optional[float]:
        """Waits for the outcome in this thread, taking it straight from the engine (see
        ``EngineClient.await_claim``). Returns what is left of ``timeout``."""
        deadline = None if timeout is None else time.monotonic() + timeout
        ex, key = self._executor, self._claim_key
        if ex is not None and key is not None:
            ex._client.await_claim(key, self.done, timeout)
        return None if deadline is None else max(0.0, deadline - time.monotonic())

    def result(self, timeout: Optional[float] = None) -> Any:
        return super().result(self._claim(timeout))

    def exception(self, timeout: Optional[float] = None) -> Optional[BaseException]:
        return super().exception(self._claim(timeout))

    def cancel(self) -> bool:
        with self._condition:
            if self._state != PENDING:
                return self._state in (CANCELLED, CANCELLED_AND_NOTIFIED)
        ex = self._executor
        if ex is not None and self._task_id is not None and ex._client.cancel_if_queued(self._task_id):
            return super().cancel()
        with self._condition:
            if self._state == PENDING:
                # A worker has it: from now on it counts as running, as in the stdlib.
                self._state = RUNNING
            return self._state in (CANCELLED, CANCELLED_AND_NOTIFIED)

    def running(self) -> bool:
        """True if a worker has started the call and it has not finished. A call sent
        ahead to a busy worker, waiting there behind the call that worker runs, has not
        started; but once ``cancel()`` has returned False the call counts as running, as
        in the stdlib (it can no longer be taken back). Once True it stays True until the
        future is done, also while a call whose worker died waits for a retry."""
        with self._condition:
            if self._state != PENDING:
                return self._state == RUNNING
        ex, task_id = self._executor, self._task_id
        # A round trip to the engine's supervisor thread, with the GIL released.
        if ex is None or task_id is None or ex._client.engine.task_state(task_id) != "running":
            return False
        with self._condition:
            if self._state == PENDING:
                self._state = RUNNING
            return self._state == RUNNING


# When a map's caller catches up with results that are streaming in (the one it last
# waited for came within _LINGER), it waits for the next _BATCH of them, for at most
# _LINGER seconds, before it waits for the next one alone. Woken for each next one, it
# woke every ~4 results of a map of short calls, each wake-up ~30 µs of CPU taken from
# the workers (1.3-1.5x the CPU of Pool.map's caller, which sleeps until the end). The
# first result, and the first after a pause, come at once.
_BATCH = 64
_LINGER = 0.001

# A slot's state in _MapOutcomes: no outcome yet, a value, an exception, or a value of a
# chunk that is kept whole.
_EMPTY, _VALUE, _FAILED, _IN_RUN = 0, 1, 2, 3
_IN_RUN_MARK = bytes([_IN_RUN])


class _MapOutcomes:
    """The outcomes of one ``map`` call, one slot per call, filled by the result thread.

    Filling a slot takes no lock and wakes nobody unless the consumer is waiting for
    that very slot: a map of short calls brings hundreds of outcomes per batch, and a
    lock and notify per outcome cost more than the rest of its delivery."""

    __slots__ = ("values", "runs", "state", "ids", "yielded", "wanted", "wake", "streaming", "lock",
                 "__weakref__")

    def __init__(self, n: int):
        # Made at the first single outcome, not here: 100,000 slots cost 0.5 ms before the
        # first chunk of a map could go, and a map sent in chunks may never need them.
        self.values: Optional[List[Any]] = None
        self.lock = threading.Lock()
        # The values of a chunk that all succeeded, by the chunk's first slot: handed out
        # as the list they came in (copying 100,000 values in and out cost 2 ms).
        self.runs: Dict[int, List[Any]] = {}
        # A bytearray of slot states, so that the end of the ready slots and the first
        # failure or chunk among them are C-level finds.
        self.state = bytearray(n)
        # Each call's task id (None for calls without one of their own), for cancelling.
        self.ids: List[Optional[int]] = []
        # How many calls have been handed out: those after them may still be cancelled.
        self.yielded = 0
        # The slot the consumer sleeps on (-1: it is not sleeping).
        self.wanted = -1
        # A token per wake-up; a stale one costs the consumer one more look at its slot.
        # (SimpleQueue: put and get are C, where an Event is a Python-level Condition.)
        self.wake: "queue.SimpleQueue[None]" = queue.SimpleQueue()
        # Whether the slot last waited for came within _LINGER (see _BATCH).
        self.streaming = False

    def __call__(self, i: int, ok: bool, value: Any) -> None:
        values = self.values
        if values is None:
            values = self._make_values()
        if ok:
            values[i] = value
            self.state[i] = _VALUE
        else:
            if isinstance(value, TaskCancelledError):
                # Cancelled by shutdown(cancel_futures=True): as the stdlib says it.
                value = CancelledError()
            values[i] = value
            self.state[i] = _FAILED
        # The consumer sets `wanted` before it looks at the slot, and this reads it after
        # filling the slot: either the consumer sees the slot filled or this sees it wait.
        if i == self.wanted:
            self.wake.put(None)

    def _make_values(self) -> List[Any]:
        # Under the lock: a call that cannot be pickled is reported by the submitting
        # thread, maybe while the result thread reports another.
        with self.lock:
            if self.values is None:
                self.values = [None] * len(self.state)
            return self.values

    def many(self, first: int, values: List[Any]) -> None:
        """The values of consecutive calls that all succeeded (a chunk sent as one task)."""
        end = first + len(values)
        self.runs[first] = values
        self.state[first:end] = _IN_RUN_MARK * len(values)
        if first <= self.wanted < end:
            self.wake.put(None)

    def wait(self, pos: int, client: EngineClient, end_time: Optional[float]) -> None:
        """Sleeps until slot ``pos`` is filled, in short slices so a fork is noticed."""
        try:
            last = min(pos + _BATCH, len(self.state)) - 1
            if self.streaming and last > pos:
                self.wanted = last
                if not self.state[last]:
                    self._sleep(_LINGER)
            start = time.monotonic()
            while True:
                self.wanted = pos
                if self.state[pos]:
                    break
                client.check_can_wait()
                left = SLICE if end_time is None else min(SLICE, end_time - time.monotonic())
                if left <= 0:
                    raise FuturesTimeoutError()
                self._sleep(left)
        finally:
            self.wanted = -1
        self.streaming = time.monotonic() - start < _LINGER

    def _sleep(self, timeout: float) -> None:
        try:
            self.wake.get(timeout=timeout)
        except queue.Empty:
            pass


def _handed_out(run: List[Any]) -> Iterator[Any]:
    """The values of ``run`` in order, each let go of once handed out (nothing here keeps
    a value the caller has dropped, as the stdlib promises), still without a Python call
    per value: ``list.pop`` from the end of the reversed list, called by ``starmap`` a
    known number of times (``iter(run.pop, marker)`` compared every value with the
    marker, which for an int meant two refused ``__eq__`` calls: 2.5x slower)."""
    run.reverse()
    return itertools.starmap(run.pop, itertools.repeat((), len(run)))


class _Results(itertools.chain):
    """The iterator ``map`` returns: a chain of result runs (C-level ``__next__``), with
    a generator's ``close`` (which cancels the calls not started, as in the stdlib)."""

    _runs: Optional[Generator[List[Any], None, None]] = None

    @classmethod
    def from_iterable(cls, runs: Any) -> "_Results":  # type: ignore[override]
        it = super().from_iterable(runs)
        it._runs = runs
        return it

    def close(self) -> None:
        if self._runs is not None:
            self._runs.close()


class ProcessPoolExecutor(Executor):
    """A ``concurrent.futures.ProcessPoolExecutor`` whose workers may crash, hang or
    ignore signals without taking the executor down.

    Differences from the stdlib, each an error instead of a broken executor or a hang:

    - a worker that dies fails only the future it was running, with
      :class:`hangfree.WorkerLostError` (also a ``BrokenProcessPool``); pending futures
      run on a replacement worker and the executor stays usable;
    - ``task_timeout`` (seconds) bounds every call, and :meth:`submit_with` gives one call
      its own limit; a late call fails with :class:`hangfree.TaskTimeoutError` and only
      its worker is stopped (SIGTERM to its process group, ``grace`` seconds, SIGKILL);
    - ``shutdown(wait=True, timeout=...)`` stops the workers that are still busy when the
      timeout passes; leaving the interpreter with the executor open, or Ctrl-C inside
      ``with executor:``, stops the workers within ``grace`` instead of waiting forever;
    - an initializer that raises breaks the executor, as in the stdlib, with
      :class:`hangfree.InitializerError` (also a ``BrokenProcessPool``) carrying the
      worker's traceback.

    ``future.cancel()`` keeps the stdlib meaning (False once a worker has the call). To
    stop a call that is running, use :meth:`stop` or a time limit.

    Workers start as children spawned by multiprocessing do (the main script imported
    as ``__mp_main__``, its functions by reference) and are forked from a fork server, an
    idle worker interpreter started by exec with the executor (no thread of this process
    is ever forked), as :class:`hangfree.Pool` describes (``fork_server=False`` starts
    each by exec); ``mp_context`` (any multiprocessing context) is accepted. ``preload``
    names modules the fork server imports once, before it forks any worker, as
    :class:`hangfree.Pool` describes.

    Durations are in seconds. ``task_timeout`` and :meth:`submit_with`'s ``timeout``
    must be > 0 or None, ``startup_timeout`` > 0, ``grace`` ≥ 0; anything else (NaN, a
    negative value, a zero limit) is a ``ValueError`` that names it. A value past what
    the clock can hold (over 100 years, ``float("inf")``) means no limit. ``retries``
    over ``2**32 - 1`` is taken as that many.

    Defaults, for each setting left at None: ``max_workers`` the number of CPUs this process
    may use (its affinity mask and cgroup CPU quota), ``grace`` 1.0 s, ``startup_timeout``
    60.0 s, ``max_startup_failures`` 3, ``retries`` 0, ``fork_server`` True, ``cgroup``
    False; no ``task_timeout``, ``max_memory`` or ``max_tasks_per_child``. A task past its
    time limit is asked where it is with SIGUSR1, and given 0.5 s to answer.
    """

    def __init__(
        self,
        max_workers: Optional[int] = None,
        mp_context: Any = None,
        initializer: Optional[Callable[..., Any]] = None,
        initargs: Iterable[Any] = (),
        *,
        max_tasks_per_child: Optional[int] = None,
        task_timeout: Optional[float] = None,
        grace: Optional[float] = None,
        max_memory: Union[int, str, None] = None,
        retries: Optional[int] = None,
        cgroup: Optional[bool] = None,
        fork_server: Optional[bool] = None,
        startup_timeout: Optional[float] = None,
        max_startup_failures: Optional[int] = None,
        preload: Iterable[str] = (),
    ):
        if max_workers is not None and max_workers <= 0:
            raise ValueError("max_workers must be greater than 0")
        if max_tasks_per_child is not None:
            if not isinstance(max_tasks_per_child, int):
                raise TypeError("max_tasks_per_child must be an integer")
            if max_tasks_per_child <= 0:
                raise ValueError("max_tasks_per_child must be >= 1")
        self._client = EngineClient(
            workers=max_workers,
            initializer=initializer,
            initargs=initargs,
            max_tasks_per_worker=max_tasks_per_child,
            task_timeout=task_timeout,
            grace=grace,
            startup_timeout=startup_timeout,
            max_startup_failures=max_startup_failures,
            owner="ProcessPoolExecutor",
            front=self,
            closed_error=lambda: RuntimeError("cannot schedule new futures after shutdown"),
            max_memory=max_memory,
            retries=retries,
            cgroup=cgroup,
            fork_server=fork_server,
            preload=preload,
        )
        self._max_workers = self._client.workers
        self._lock = threading.Lock()
        self._shutdown = False
        # Futures not finished yet, by task id (for cancel_futures and stop).
        self._pending: Dict[int, _Future] = {}
        # The collectors of map calls not yet fully consumed (for cancel_futures).
        self._maps: "weakref.WeakSet[_MapOutcomes]" = weakref.WeakSet()

    # ----- submission ---------------------------------------------------------------

    def _settle(self, f: _Future, ok: bool, value: Any) -> None:
        if f._task_id is not None:
            self._pending.pop(f._task_id, None)
        if isinstance(value, TaskCancelledError) and not f._stopped and Future.cancel(f):
            # Cancelled while queued: the stdlib's cancelled state, waiters notified.
            f.set_running_or_notify_cancel()
            return
        with f._condition:
            if f._state in (CANCELLED, CANCELLED_AND_NOTIFIED, FINISHED):
                return
        if ok:
            f.set_result(value)
        else:
            f.set_exception(value)
        f._executor = None

    def _start(self, fn: Callable[..., Any], args: tuple, kwargs: Optional[dict], timeout: Optional[float]) -> _Future:
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot schedule new futures after shutdown")
        f = _Future(self)
        task_id, f._claim_key = self._client.submit_claimable(
            fn, args, kwargs, lambda _i, ok, v: self._settle(f, ok, v), timeout)
        f._task_id = task_id
        if task_id is not None and not f.done():
            self._pending[task_id] = f
            # The outcome may have come in between: never leave a finished one listed.
            if f.done():
                self._pending.pop(task_id, None)
        return f

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        """Schedules ``fn(*args, **kwargs)``; returns a ``concurrent.futures.Future``."""
        return self._start(fn, args, kwargs, None)

    def submit_with(
        self,
        fn: Callable[..., Any],
        args: Iterable[Any] = (),
        kwargs: Optional[dict] = None,
        *,
        timeout: Optional[float] = None,
    ) -> Future:
        """Like :meth:`submit`, with options that cannot collide with ``fn``'s own keyword
        arguments: ``timeout`` is this call's time limit in seconds (overriding
        ``task_timeout``); past it the future fails with ``TaskTimeoutError``."""
        return self._start(fn, tuple(args), kwargs, timeout)

    def map(
        self,
        fn: Callable[..., Any],
        *iterables: Iterable[Any],
        timeout: Optional[float] = None,
        chunksize: int = 1,
        return_exceptions: bool = False,
    ) -> Iterator[Any]:
        """Returns an iterator of ``fn(*args)`` over the zipped ``iterables``, in order.
        Calls are sent to workers ``chunksize`` at a time. ``TimeoutError`` is raised by
        the iterator if a result is not ready ``timeout`` seconds after this call. With
        ``return_exceptions=True`` a failed call's exception is yielded in its place
        instead of raised, so one failure does not end the iteration."""
        if chunksize < 1:
            raise ValueError("chunksize must be >= 1.")
        end_time = None if timeout is None else timeout + time.monotonic()
        return self._map_collected(fn, iterables, chunksize, end_time, return_exceptions)

    def _map_collected(self, fn: Callable[..., Any], iterables: tuple, chunksize: int,
                       end_time: Optional[float], return_exceptions: bool) -> Iterator[Any]:
        """``map`` without a future per call: the results come back in order through one
        collector (a chunk travels as one message where it can). Closing the iterator
        early cancels the calls no worker has started, as the stdlib does."""
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot schedule new futures after shutdown")
        # One iterable: its items go as they are, cheaper to pickle than 1-tuples.
        star = len(iterables) != 1
        arg_list = list(zip(*iterables)) if star else as_items(iterables[0])
        n = len(arg_list)
        out = _MapOutcomes(n)
        if arg_list:
            out.ids = self._client.submit(fn, arg_list, None, out, chunksize=chunksize, star=star,
                                          borrowed=arg_list is iterables[0])
        self._maps.add(out)
        client = self._client

        def runs() -> Iterator[List[Any]]:
            # Yields the ready values in order, as many at a time as have come in; the
            # C-level chain below hands them out without a Python call per item.
            chunks, state = out.runs, out.state
            pos = 0
            try:
                while pos < n:
                    end = state.find(_EMPTY, pos)
                    if end < 0:
                        end = n
                    elif end == pos:
                        out.wait(pos, client, end_time)
                        continue
                    if state[pos] == _IN_RUN:
                        run = chunks.pop(pos)
                        pos = out.yielded = pos + len(run)
                        yield _handed_out(run)
                        continue
                    # Single outcomes, up to the next chunk kept whole or the first failure.
                    stop = state.find(_IN_RUN, pos, end)
                    if stop < 0:
                        stop = end
                    failed = -1 if return_exceptions else state.find(_FAILED, pos, stop)
                    if failed >= 0:
                        stop = failed
                    # Not taken before the loop: made at the first single outcome, which
                    # marks its slot only after that.
                    values = out.values
                    if stop > pos:
                        run = values[pos:stop]
                        # Handed out: a value the caller drops can be freed.
                        values[pos:stop] = [None] * (stop - pos)
                        pos = out.yielded = stop
                        yield _handed_out(run)
                    if failed >= 0:
                        error, values[failed] = values[failed], None
                        out.yielded = failed + 1
                        raise error
            finally:
                self._cancel_unstarted(out)

        return _Results.from_iterable(runs())

    def _cancel_unstarted(self, out: _MapOutcomes) -> None:
        """Cancels the calls of a map that no worker has started yet."""
        self._maps.discard(out)
        for task_id in out.ids[out.yielded:]:
            if task_id is not None:
                self._client.cancel_if_queued(task_id)

    def stop(self, future: Future) -> bool:
        """Stops a call whether or not it is running: a queued call is cancelled; a
        running one has its worker stopped (SIGTERM to its process group, ``grace``
        seconds, SIGKILL) and its future fails with :class:`TaskCancelledError`. Returns
        False if the future had already finished."""
        if future.done() or not isinstance(future, _Future) or future._task_id is None:
            return False
        future._stopped = True
        self._client.cancel(future._task_id)
        return True

    # ----- shutdown -----------------------------------------------------------------

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False, timeout: Optional[float] = None) -> None:
        """Accepts no more calls and frees the workers once the submitted calls finish.

        ``cancel_futures=True`` cancels the calls no worker has started. With
        ``wait=True`` this returns when the workers are gone; ``timeout`` (seconds) bounds
        that wait, after which the calls still running are stopped and their futures fail
        with :class:`hangfree.PoolTerminatedError`.
        """
        with self._lock:
            self._shutdown = True
        if cancel_futures:
            for f in list(self._pending.values()):
                f.cancel()
            for out in list(self._maps):
                self._cancel_unstarted(out)
        self._client.close()
        if wait:
            try:
                done = self._client.join(timeout)
            except BaseException:
                # Ctrl-C while waiting (in `with executor:` too): stop the workers before
                # the exception leaves, so a program that catches it does not keep them.
                self._client.terminate()
                raise
            if not done:
                self._client.terminate()
                self._client.join(self._client.engine.shutdown_bound)

    def terminate(self) -> None:
        """Stops every worker now; unfinished futures fail with
        :class:`hangfree.PoolTerminatedError`. Returns within ``grace`` plus a small
        constant."""
        with self._lock:
            self._shutdown = True
        self._client.terminate()
        self._client.join(self._client.engine.shutdown_bound)

    def __del__(self) -> None:
        # Collected without shutdown: let the submitted calls finish, then the workers
        # exit (the result thread holds the engine, not this object). Never blocks.
        client = self.__dict__.get("_client")
        if client is not None and not self.__dict__.get("_shutdown", True):
            try:
                client.close()
            except Exception:
                pass

    def stats(self) -> Dict[str, int]:
        """The executor's counters: calls by outcome, workers spawned, lost, recycled."""
        return self._client.stats()

    def __exit__(self, exc_type: Any, exc_val: Any, exc_tb: Any) -> bool:
        if exc_type is not None and not issubclass(exc_type, Exception):
            # Ctrl-C or SystemExit: leave now, with the workers gone, instead of waiting.
            self.terminate()
        else:
            self.shutdown(wait=True)
        return False
