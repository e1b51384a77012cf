"""``hangfree.Pool``: the API of ``multiprocessing.Pool`` on an engine that cannot hang."""

from __future__ import annotations

import collections
import itertools
import os
import threading
import time
import warnings
from multiprocessing import TimeoutError
# Annotations only (strings here): importing typing costs a pool's creation ~4 ms.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

    from hangfree._progress import ProgressArg

from hangfree._client import SLICE, EngineClient, as_items, cpu_count
from hangfree._progress import Progress

__all__ = ["Pool", "AsyncResult", "ApplyResult", "MapResult", "IMapIterator", "cpu_count"]


def __getattr__(name: str) -> Any:
    # The rest of multiprocessing.pool (ThreadPool, RemoteTraceback, MaybeEncodingError,
    # ...), for programs that import from multiprocessing.pool.
    import multiprocessing.pool

    return getattr(multiprocessing.pool, name)


def _interrupted_wait(event: threading.Event, timeout: Optional[float], client: EngineClient) -> bool:
    """Waits in short slices so Ctrl-C is handled at once even on old interpreters. In a
    forked child nothing would ever set the event: raise instead of waiting forever."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while not event.is_set():
        client.check_can_wait()
        left = SLICE if deadline is None else min(SLICE, deadline - time.monotonic())
        if left <= 0:
            return False
        event.wait(left)
    return True


class ApplyResult:
    """The result of ``apply_async``: ``get``, ``wait``, ``ready`` and ``successful`` as in
    ``multiprocessing.pool.AsyncResult``."""

    def __init__(self, pool: "Pool", callback: Optional[Callable], error_callback: Optional[Callable]):
        self._pool: Optional[Pool] = pool
        self._client = pool._client
        self._event = threading.Event()
        self._callback = callback
        self._error_callback = error_callback
        self._success = False
        self._value: Any = None

    # Set for a call without callbacks: a caller waiting in get() takes its outcome
    # straight from the engine, without the hop through the result thread.
    _claim_key: Optional[int] = None

    def ready(self) -> bool:
        """Whether the call has finished."""
        return self._event.is_set()

    def successful(self) -> bool:
        """Whether the call finished without raising. ``ValueError`` if not ready."""
        if not self.ready():
            raise ValueError(f"{self!r} not ready")
        return self._success

    def wait(self, timeout: Optional[float] = None) -> None:
        """Waits until the result is ready or ``timeout`` seconds pass."""
        if self._claim_key is None:
            _interrupted_wait(self._event, timeout, self._client)
        else:
            self._client.await_claim(self._claim_key, self._event.is_set, timeout)

    def get(self, timeout: Optional[float] = None) -> Any:
        """Returns the result, raising the task's exception (or the hangfree error saying
        why it has none). ``multiprocessing.TimeoutError`` if ``timeout`` passes first."""
        self.wait(timeout)
        if not self.ready():
            raise TimeoutError
        if self._success:
            return self._value
        raise self._value

    def _finish(self, success: bool, value: Any) -> None:
        self._success, self._value = success, value
        try:
            if success and self._callback is not None:
                self._callback(value)
            elif not success and self._error_callback is not None:
                self._error_callback(value)
        finally:
            self._event.set()
            self._pool = None

    # Called by the result thread with each item's outcome.
    def _put(self, index: int, ok: bool, value: Any) -> None:
        self._finish(ok, value)


AsyncResult = ApplyResult


class MapResult(ApplyResult):
    """The result of ``map_async``/``starmap_async``: a list in input order, or the first
    error once every item has finished. With ``return_exceptions=True`` the list holds
    each failed item's exception in its place instead."""

    def __init__(self, pool: "Pool", n: int, callback: Optional[Callable], error_callback: Optional[Callable],
                 return_exceptions: bool = False):
        super().__init__(pool, callback, error_callback)
        # Made at the first outcome, not here: the first chunk goes out sooner.
        self._values: Optional[List[Any]] = None
        self._n = n
        self._left = n
        self._first_error: Optional[BaseException] = None
        self._return_exceptions = return_exceptions
        self._lock = threading.Lock()
        if n == 0:
            self._finish(True, [])

    def _slots(self) -> List[Any]:
        if self._values is None:
            self._values = [None] * self._n
        return self._values

    # The result thread delivers outcomes, and so does the submitting thread for calls
    # whose arguments cannot be pickled, possibly at the same time: the count-down and
    # the slots' creation must not interleave.
    def _put_many(self, first: int, values: List[Any]) -> None:
        with self._lock:
            self._slots()[first:first + len(values)] = values
            done = self._count_down(len(values))
        self._finish_if(done)

    def _put(self, index: int, ok: bool, value: Any) -> None:
        with self._lock:
            if ok or self._return_exceptions:
                self._slots()[index] = value
            elif self._first_error is None:
                self._first_error = value
            done = self._count_down(1)
        self._finish_if(done)

    def _count_down(self, n: int) -> bool:
        self._left -= n
        return self._left == 0

    def _finish_if(self, done: bool) -> None:
        if not done:
            return
        if self._first_error is None:
            self._finish(True, self._slots())
        else:
            self._values = []
            self._finish(False, self._first_error)


class IMapIterator:
    """The iterator of ``imap`` (in order) and ``imap_unordered`` (as completed).
    ``next(timeout)`` raises ``multiprocessing.TimeoutError`` if nothing arrives in time."""

    def __init__(self, pool: "Pool", n: Optional[int], ordered: bool, return_exceptions: bool = False,
                 with_index: bool = False):
        self._client = pool._client
        self._cond = threading.Condition(threading.Lock())
        self._ordered = ordered
        self._return_exceptions = return_exceptions
        self._with_index = with_index
        # How many items in all; None while a feeder is still reading the input.
        self._n = n
        self._next_index = 0
        self._yielded = 0
        # Outcomes not yet handed out: single (index, ok, value) entries, or runs of
        # successful consecutive items from one chunk, kept whole (no per-item work).
        self._ready: Dict[int, Any] = {}
        self._unordered: List[Any] = []
        # Entries taken from the shared state in one go, handed out without the lock.
        self._taken: "collections.deque[Any]" = collections.deque()
        self._taken_n = 0

    def __iter__(self) -> "IMapIterator":
        return self

    def _add(self, first: int, entry: Any) -> None:
        with self._cond:
            if self._ordered:
                self._ready[first] = entry
            else:
                self._unordered.append(entry)
            self._cond.notify()

    def _put(self, index: int, ok: bool, value: Any) -> None:
        self._add(index, (index, ok, value))

    def _put_many(self, first: int, values: List[Any]) -> None:
        if values:
            self._add(first, _Run(first, values))

    def _take(self) -> bool:
        """Moves every entry that may be handed out now into ``_taken`` (in order: only
        those that follow the last one taken without a gap)."""
        if self._ordered:
            i = self._next_index + self._taken_n
            while True:
                entry = self._ready.pop(i, None)
                if entry is None:
                    break
                n = entry.left() if isinstance(entry, _Run) else 1
                self._taken.append(entry)
                self._taken_n += n
                i += n
        else:
            for entry in self._unordered:
                self._taken.append(entry)
                self._taken_n += entry.left() if isinstance(entry, _Run) else 1
            self._unordered.clear()
        return bool(self._taken)

    def _pop_one(self) -> Tuple[int, bool, Any]:
        entry = self._taken[0]
        if isinstance(entry, _Run):
            index, value = entry.first + entry.pos, entry.values[entry.pos]
            entry.pos += 1
            if entry.pos == len(entry.values):
                self._taken.popleft()
            item = (index, True, value)
        else:
            item = self._taken.popleft()
        self._taken_n -= 1
        self._yielded += 1
        self._next_index += 1
        return item

    def _wait_taken(self, timeout: Optional[float]) -> None:
        """Waits until ``_taken`` holds at least one outcome."""
        if not self._taken:
            deadline = None if timeout is None else time.monotonic() + timeout
            with self._cond:
                while not self._take():
                    if self._n is not None and self._yielded >= self._n:
                        return  # the input ended: nothing more will come
                    self._client.check_can_wait()
                    left = SLICE if deadline is None else min(SLICE, deadline - time.monotonic())
                    if left <= 0:
                        raise TimeoutError
                    self._cond.wait(left)

    def next(self, timeout: Optional[float] = None) -> Any:
        """The next result; raises its error, ``StopIteration`` at the end, or
        ``multiprocessing.TimeoutError`` if ``timeout`` passes."""
        if self._n is not None and self._yielded >= self._n:
            raise StopIteration
        self._wait_taken(timeout)
        if not self._taken:
            raise StopIteration
        index, ok, value = self._pop_one()
        if not ok and not self._return_exceptions:
            raise value
        return (index, value) if self._with_index else value

    __next__ = next

    def _set_total(self, n: int) -> None:
        """The input ended after ``n`` items (set by an imap's feeder)."""
        with self._cond:
            self._n = n
            self._cond.notify_all()


class _Run:
    """The values of consecutive successful items, as one chunk delivered them."""

    __slots__ = ("first", "values", "pos")

    def __init__(self, first: int, values: List[Any]):
        self.first = first
        self.values = values
        self.pos = 0

    def left(self) -> int:
        return len(self.values) - self.pos


class _WithMany:
    """An outcome callback that also takes runs of successful items at once."""

    __slots__ = ("put", "many")

    def __init__(self, put: Callable[[int, bool, Any], None], many: Callable[[int, List[Any]], None]):
        self.put = put
        self.many = many

    def __call__(self, i: int, ok: bool, value: Any) -> None:
        self.put(i, ok, value)


class Pool:
    """A process pool with the API of ``multiprocessing.Pool`` that cannot hang.

    Differences from ``multiprocessing.Pool``, each an error instead of a hang:

    - a worker that dies (crash, ``sys.exit``, ``os._exit``, a signal) fails only the task
      it was running, with :class:`WorkerLostError`; the pool starts a new worker;
    - ``task_timeout`` (seconds) bounds every task; a late task fails with
      :class:`TaskTimeoutError`, which shows the line it was stuck on, and only its worker
      is stopped;
    - ``terminate()`` stops workers with SIGTERM to each worker's process group, then
      SIGKILL after ``grace`` seconds, so it returns in bounded time even when workers
      ignore SIGTERM; their child processes die with them;
    - an initializer that raises fails every waiting and later call with
      :class:`InitializerError` instead of respawning workers forever.

    Beyond the stdlib: ``max_memory`` (bytes, or a size such as ``"2GiB"``) stops a worker
    whose memory passes it, failing its task with :class:`MemoryLimitError`; ``retries``
    runs a task whose worker died again on a fresh worker, up to that many times; the
    map-style calls take ``return_exceptions=True`` (every item's outcome instead of the
    first error) and ``progress=True`` (a tqdm bar) or a callback; :meth:`imap_outcomes`
    streams ``(index, result or exception)`` pairs; :meth:`stats` counts everything; and
    every worker death, time-out and escalation step is logged under ``hangfree``.
    ``cgroup=True`` puts each worker in a cgroup (v2) of its own, killed whole with it, so
    even descendants that left its process group (``setsid`` daemons) die with it; it
    needs a writable cgroup v2 hierarchy and fails at construction otherwise.

    Workers start as children spawned by multiprocessing do: with this process's
    ``sys.path``, ``sys.argv``, working directory, interpreter flags and authkey, and the
    main script imported as ``__mp_main__``, so its functions travel by reference (what
    has no importable name, such as a lambda, travels by value), and ``initargs`` may hold
    locks, ``Value``s, queues and Manager proxies. They are forked from a fork server: an
    idle worker interpreter started by exec when the pool is made, which imports the
    script once, so a worker (and a replacement after a crash) is up in about a
    millisecond, and no thread of this process is ever forked; workers see the
    environment variables of the pool's creation. With ``fork_server=False``, in cgroup
    mode, or if the server fails, workers are started by exec (each a fresh interpreter,
    ~25 ms or more to start, seeing the environment of its own start). ``context`` (any
    multiprocessing context) is accepted; workers start the same way whatever it is.

    Durations are in seconds. ``task_timeout`` (here and per call) must be > 0 or None,
    ``startup_timeout`` > 0, ``grace`` ≥ 0; anything else (NaN, a negative value, a zero
    limit) is a ``ValueError`` that names it. A value past what the clock can hold (over
    100 years, ``float("inf")``) means no limit. ``retries`` over ``2**32 - 1`` is taken
    as that many.

    Defaults, for each setting left at None: ``processes`` the number of CPUs this process
    may use (its affinity mask and cgroup CPU quota), ``grace`` 1.0 s, ``startup_timeout``
    60.0 s, ``max_startup_failures`` 3, ``retries`` 0, ``fork_server`` True, ``cgroup``
    False; no ``task_timeout``, ``max_memory`` or ``maxtasksperchild``. A task past its
    time limit is asked where it is with SIGUSR1, and given 0.5 s to answer.

    ``preload`` names modules the fork server imports once, before it forks any worker,
    so that every worker starts with them (as ``multiprocessing``'s
    ``set_forkserver_preload``): what tasks import inside their functions (scikit-learn
    takes a second) is then paid once, not by each worker's first task.
    """

    def __init__(
        self,
        processes: Optional[int] = None,
        initializer: Optional[Callable[..., Any]] = None,
        initargs: Iterable[Any] = (),
        maxtasksperchild: Optional[int] = None,
        context: Any = None,
        *,
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
        self._state = "INIT"
        if processes is not None and processes < 1:
            raise ValueError("Number of processes must be at least 1")
        if maxtasksperchild is not None and (not isinstance(maxtasksperchild, int) or maxtasksperchild <= 0):
            raise ValueError("maxtasksperchild must be a positive int or None")
        self._client = EngineClient(
            workers=processes,
            initializer=initializer,
            initargs=initargs,
            max_tasks_per_worker=maxtasksperchild,
            task_timeout=task_timeout,
            grace=grace,
            startup_timeout=startup_timeout,
            max_startup_failures=max_startup_failures,
            owner="Pool",
            front=self,
            closed_error=lambda: ValueError("Pool not running"),
            max_memory=max_memory,
            retries=retries,
            cgroup=cgroup,
            fork_server=fork_server,
            preload=preload,
        )
        self._processes = self._client.workers
        self._state = "RUN"

    # ----- submission ---------------------------------------------------------------

    def _check_running(self) -> None:
        self._client.check_process()
        if self._state != "RUN":
            raise ValueError("Pool not running")

    def _submit(self, job: Any, fn: Callable[..., Any], arg_list: Sequence[Any], kwargs: Optional[dict],
                chunksize: int, timeout: Optional[float], progress: ProgressArg = None, star: bool = True,
                borrowed: bool = False) -> None:
        put: Callable[[int, bool, Any], None]
        if progress:
            bar = Progress(progress, len(arg_list), getattr(fn, "__qualname__", None))

            def put(i: int, ok: bool, value: Any) -> None:
                # The bar first: once the caller has its result, the bar shows it.
                bar.update(ok)
                job._put(i, ok, value)

        elif hasattr(job, "_put_many"):
            put = _WithMany(job._put, job._put_many)
        else:
            put = job._put
        self._client.submit(fn, arg_list, kwargs, put, chunksize=chunksize, timeout=timeout, star=star,
                            borrowed=borrowed)

    def apply(self, func: Callable[..., Any], args: Iterable[Any] = (), kwds: dict = {}, *,
              task_timeout: Optional[float] = None) -> Any:
        """Calls ``func(*args, **kwds)`` in a worker and returns its result."""
        return self.apply_async(func, args, kwds, task_timeout=task_timeout).get()

    def apply_async(
        self,
        func: Callable[..., Any],
        args: Iterable[Any] = (),
        kwds: dict = {},
        callback: Optional[Callable[[Any], None]] = None,
        error_callback: Optional[Callable[[BaseException], None]] = None,
        *,
        task_timeout: Optional[float] = None,
    ) -> ApplyResult:
        """Runs ``func(*args, **kwds)`` in a worker; returns an :class:`ApplyResult`."""
        self._check_running()
        job = ApplyResult(self, callback, error_callback)
        args = tuple(args)
        if callback is None and error_callback is None:
            _, job._claim_key = self._client.submit_claimable(func, args, kwds, job._put, task_timeout)
            return job
        self._submit(job, func, [args], kwds, 1, task_timeout)
        return job

    def _default_chunksize(self, n: int) -> int:
        chunksize, extra = divmod(n, self._processes * 4)
        return chunksize + 1 if extra else max(chunksize, 1)

    def _map_async(self, func, arg_list, chunksize, callback, error_callback, task_timeout,
                   return_exceptions=False, progress=None, star=True, iterable=None) -> MapResult:
        """``iterable``: what the caller passed, when ``arg_list`` is it (not a copy)."""
        self._check_running()
        if chunksize is None:
            chunksize = self._default_chunksize(len(arg_list))
        if chunksize < 1:
            raise ValueError(f"Chunksize must be 1+, not {chunksize}")
        job = MapResult(self, len(arg_list), callback, error_callback, return_exceptions)
        if arg_list:
            self._submit(job, func, arg_list, None, chunksize, task_timeout, progress, star,
                         borrowed=arg_list is iterable)
        return job

    def map(self, func: Callable[[Any], Any], iterable: Iterable[Any], chunksize: Optional[int] = None, *,
            task_timeout: Optional[float] = None, return_exceptions: bool = False,
            progress: ProgressArg = None) -> List[Any]:
        """``list(map(func, iterable))`` computed by the workers, in order. With
        ``return_exceptions=True`` a failed item's exception stands in its place instead
        of the first error being raised; ``progress=True`` shows a tqdm bar, or pass a
        callable ``progress(done, failed, total)``."""
        # No `iterable=`: the caller's list is not copied for the failures' labels, which
        # are all made before this returns (as the stdlib's map reads the list it was given).
        return self._map_async(func, as_items(iterable), chunksize, None, None, task_timeout,
                               return_exceptions, progress, star=False).get()

    def map_async(self, func, iterable, chunksize=None, callback=None, error_callback=None, *,
                  task_timeout=None, return_exceptions=False, progress=None) -> MapResult:
        """Like :meth:`map`, returning a :class:`MapResult`."""
        return self._map_async(func, as_items(iterable), chunksize, callback, error_callback, task_timeout,
                               return_exceptions, progress, star=False, iterable=iterable)

    def starmap(self, func: Callable[..., Any], iterable: Iterable[Iterable[Any]], chunksize: Optional[int] = None,
                *, task_timeout: Optional[float] = None, return_exceptions: bool = False,
                progress: ProgressArg = None) -> List[Any]:
        """Like :meth:`map`, calling ``func(*args)`` for each ``args`` of ``iterable``."""
        return self._map_async(func, [tuple(a) for a in iterable], chunksize, None, None, task_timeout,
                               return_exceptions, progress).get()

    def starmap_async(self, func, iterable, chunksize=None, callback=None, error_callback=None, *,
                      task_timeout=None, return_exceptions=False, progress=None) -> MapResult:
        """Like :meth:`starmap`, returning a :class:`MapResult`."""
        return self._map_async(func, [tuple(a) for a in iterable], chunksize, callback, error_callback, task_timeout,
                               return_exceptions, progress)

    def _imap(self, func, iterable, chunksize, ordered, task_timeout, return_exceptions=False,
              progress=None, with_index=False) -> IMapIterator:
        self._check_running()
        if chunksize < 1:
            raise ValueError(f"Chunksize must be 1+, not {chunksize:n}")
        if not progress and type(iterable) not in (list, tuple, range):
            return self._imap_fed(func, iter(iterable), chunksize, ordered, task_timeout, return_exceptions,
                                  with_index)
        arg_list = as_items(iterable)
        it = IMapIterator(self, len(arg_list), ordered, return_exceptions, with_index)
        if arg_list:
            self._submit(it, func, arg_list, None, chunksize, task_timeout, progress, star=False,
                         borrowed=arg_list is iterable)
        return it

    def _imap_fed(self, func, source, chunksize, ordered, task_timeout, return_exceptions,
                  with_index) -> IMapIterator:
        """imap over an iterator: a feeder thread reads it in batches and submits each as
        it is read (as the stdlib's task thread does), so the first results come while
        the input is still being read, and a long or endless input does not stall this
        call. An exception raised by the input ends the results there, in the place of
        the chunk it interrupted, as in the stdlib."""
        it = IMapIterator(self, None, ordered, return_exceptions, with_index)
        client = self._client
        # A close() meanwhile waits for the whole input, as with multiprocessing.
        client.hold()

        def feed() -> None:
            # One chunk at a time, each submitted as soon as it is read (the input may
            # block between items: what was read must not wait for the rest).
            n = 0
            try:
                while True:
                    items: List[Any] = []
                    failed: Optional[BaseException] = None
                    try:
                        for item in itertools.islice(source, chunksize):
                            items.append(item)
                    except BaseException as e:  # the input itself raised
                        # As the stdlib: its error takes the place of the chunk being
                        # read (whose items never run), and the results end there.
                        failed = e
                        items = []
                    if items:
                        put = _WithMany(lambda i, ok, v, off=n: it._put(off + i, ok, v),
                                        lambda first, values, off=n: it._put_many(off + first, values))
                        try:
                            client.submit(func, items, None, put, chunksize=chunksize, timeout=task_timeout,
                                          star=False)
                        except BaseException as e:  # the pool was terminated meanwhile
                            failed = e
                        else:
                            n += len(items)
                    if failed is not None:
                        it._put(n, False, failed)
                        n += 1
                        return
                    if len(items) < chunksize:
                        return
            finally:
                it._set_total(n)
                client.release()

        threading.Thread(target=feed, name="hangfree-imap-feeder", daemon=True).start()
        return it

    def imap(self, func: Callable[[Any], Any], iterable: Iterable[Any], chunksize: int = 1, *,
             task_timeout: Optional[float] = None, return_exceptions: bool = False,
             progress: ProgressArg = None) -> IMapIterator:
        """Like :meth:`map`, but yields results lazily, in order."""
        return self._imap(func, iterable, chunksize, True, task_timeout, return_exceptions, progress)

    def imap_unordered(self, func: Callable[[Any], Any], iterable: Iterable[Any], chunksize: int = 1, *,
                       task_timeout: Optional[float] = None, return_exceptions: bool = False,
                       progress: ProgressArg = None) -> IMapIterator:
        """Like :meth:`imap`, but yields results as they complete."""
        return self._imap(func, iterable, chunksize, False, task_timeout, return_exceptions, progress)

    def imap_outcomes(self, func: Callable[[Any], Any], iterable: Iterable[Any], chunksize: int = 1, *,
                      task_timeout: Optional[float] = None, progress: ProgressArg = None) -> Iterator[Tuple[int, Any]]:
        """Yields ``(index, outcome)`` for every item as it completes, where ``outcome`` is
        the result or the exception that item ended with (``isinstance(outcome,
        BaseException)`` tells which). One item's failure never hides another's result."""
        return self._imap(func, iterable, chunksize, False, task_timeout, True, progress, with_index=True)

    # ----- lifecycle ----------------------------------------------------------------

    def close(self) -> None:
        """Accepts no more tasks; workers exit once the submitted ones are done."""
        self._client.check_process()
        if self._state == "RUN":
            self._state = "CLOSE"
            self._client.close()

    def terminate(self) -> None:
        """Stops every worker now: pending tasks fail with :class:`PoolTerminatedError`.
        Returns within ``grace`` seconds plus a small constant even when workers ignore
        SIGTERM or sit in C code; their child processes are killed with them."""
        if os.getpid() != self._client.pid:
            return
        self._state = "TERMINATE"
        self._client.terminate()

    def join(self) -> None:
        """Waits for the workers to exit; call :meth:`close` or :meth:`terminate` first."""
        self._client.check_process()
        if self._state == "RUN":
            raise ValueError("Pool is still running")
        if self._state == "INIT":
            raise ValueError("Pool is not initialized")
        self._client.join()

    def stats(self) -> Dict[str, int]:
        """The pool's counters: tasks submitted and by outcome (values, raised,
        worker_lost, timed_out, memory_limited, cancelled, terminated, ...), retries, and
        workers spawned, lost, recycled and abandoned."""
        return self._client.stats()

    def __enter__(self) -> "Pool":
        self._check_running()
        return self

    def __exit__(self, exc_type: Any, exc_val: Any, exc_tb: Any) -> None:
        self.terminate()

    def __reduce__(self) -> Any:
        raise NotImplementedError("pool objects cannot be passed between processes or pickled")

    def __repr__(self) -> str:
        return f"<hangfree.Pool state={self._state} processes={self._processes}>"

    def __del__(self, _warn: Callable[..., None] = warnings.warn) -> None:
        # Collected while running (never closed): stop the workers, as multiprocessing
        # does. Never blocks: the result thread finishes the job and then exits.
        client = self.__dict__.get("_client")
        state = self.__dict__.get("_state")
        if state == "RUN":
            # Bound at definition: at interpreter shutdown nothing can be imported.
            _warn(f"unclosed running multiprocessing pool {self!r}", ResourceWarning, source=self)
        if client is not None and state in ("RUN", "CLOSE"):
            self._state = "TERMINATE"
            try:
                client.terminate_nowait()
            except Exception:
                pass
