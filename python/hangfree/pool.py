"""``hangfree.Pool``: the API of ``multiprocessing.Pool`` on an engine that cannot hang."""

from __future__ import annotations

import functools
import itertools
import os
import reprlib
import sys
import threading
import weakref
from multiprocessing import TimeoutError
from multiprocessing.pool import RemoteTraceback
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Tuple

from hangfree import _core
from hangfree._errors import HangfreeError, failure, initializer_error
from hangfree._pickling import dumps, loads

__all__ = ["Pool", "AsyncResult", "ApplyResult", "MapResult", "IMapIterator", "cpu_count"]

_WORKER_ARGV = [sys.executable, "-m", "hangfree._worker"]
# How long a blocked call sleeps between checks for Ctrl-C and pool failure.
_SLICE = 0.05
_label_repr = reprlib.Repr()
_label_repr.maxstring = 40
_label_repr.maxother = 40
_label_repr.maxlist = 4
_label_repr.maxtuple = 4
_label_repr.maxdict = 4

_live_pools: "weakref.WeakSet[Pool]" = weakref.WeakSet()


class _Shared:
    """What a pool and its result thread share. The thread holds this, never the pool,
    so a pool nobody references is collected and its ``__del__`` stops the workers."""

    __slots__ = ("state", "stop", "__weakref__")

    def __init__(self) -> None:
        self.state = "INIT"
        self.stop = False


# Every result thread still running, to be stopped at interpreter exit even when its
# pool was already collected (a thread waking in Rust code during finalization crashes).
_result_threads: "Dict[threading.Thread, _Shared]" = {}


def cpu_count() -> int:
    """The number of CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _label(fn: Callable[..., Any], args: tuple, kwargs: Optional[dict] = None) -> str:
    name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or repr(fn)
    parts = [_label_repr.repr(a) for a in args]
    parts += [f"{k}={_label_repr.repr(v)}" for k, v in (kwargs or {}).items()]
    return f"{name}({', '.join(parts)})"


def _raised(data: bytes, label: Optional[str]) -> BaseException:
    """Rebuilds the exception a task raised, with the worker's traceback as its cause."""
    try:
        info = loads(data)
    except Exception as e:
        return HangfreeError(f"{label}: the task raised an exception that cannot be unpickled here: {e}")
    exc = info.get("exc")
    if info.get("input_error"):
        # The worker could not unpickle the call: an error on this task, named.
        exc = HangfreeError(f"{label}: {info.get('summary', 'the worker cannot unpickle the call')}")
    elif not isinstance(exc, BaseException):
        note = info.get("note", "")
        exc = HangfreeError(f"{label}: the task raised {info.get('summary', 'an exception')} {note}".rstrip())
    exc.__cause__ = RemoteTraceback(info.get("traceback", ""))
    return exc


def _forked_error(owner: int) -> RuntimeError:
    return RuntimeError(
        f"this hangfree.Pool was created by process {owner} and cannot be used "
        f"in the forked child {os.getpid()}; create a new pool in the child"
    )


def _interrupted_wait(event: threading.Event, timeout: Optional[float], owner: int) -> bool:
    """Waits in short slices so Ctrl-C is handled at once even on old interpreters. In a
    forked child nothing would ever set the event: raise instead of waiting forever."""
    import time

    deadline = None if timeout is None else time.monotonic() + timeout
    while not event.is_set():
        if os.getpid() != owner:
            raise _forked_error(owner)
        left = _SLICE if deadline is None else min(_SLICE, deadline - time.monotonic())
        if left <= 0:
            return False
        event.wait(left)
    return True


class ApplyResult:
    """The result of ``apply_async``: ``get``, ``wait``, ``ready`` and ``successful`` as in
    ``multiprocessing.pool.AsyncResult``."""

    def __init__(self, pool: "Pool", callback: Optional[Callable], error_callback: Optional[Callable]):
        self._pool = pool
        self._owner = pool._pid
        self._event = threading.Event()
        self._callback = callback
        self._error_callback = error_callback
        self._success = False
        self._value: Any = None

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
        _interrupted_wait(self._event, timeout, self._owner)

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
            self._pool = None  # type: ignore[assignment]

    # Called by the result thread for each outcome; `label` names the task in errors.
    def _set(self, index: int, kind: str, data: Any, label: Optional[str]) -> None:
        self._put(index, *_decode(kind, data, label))

    def _put(self, index: int, ok: bool, value: Any) -> None:
        self._finish(ok, value)


AsyncResult = ApplyResult


def _decode(kind: str, data: Any, label: Any) -> Tuple[bool, Any]:
    """``label`` is the task's name, or a function returning it (called only on errors)."""
    if kind == "value":
        try:
            return True, loads(data)
        except Exception as e:
            label = label() if callable(label) else label
            return False, HangfreeError(f"{label}: the result cannot be unpickled here: {type(e).__name__}: {e}")
    label = label() if callable(label) else label
    if kind == "raised":
        return False, _raised(data, label)
    return False, failure(kind, data, label)


class MapResult(ApplyResult):
    """The result of ``map_async``/``starmap_async``: a list in input order, or the first
    error once every item has finished."""

    def __init__(self, pool: "Pool", n: int, callback: Optional[Callable], error_callback: Optional[Callable]):
        super().__init__(pool, callback, error_callback)
        self._values: List[Any] = [None] * n
        self._left = n
        self._first_error: Optional[BaseException] = None
        if n == 0:
            self._finish(True, [])

    def _put(self, index: int, ok: bool, value: Any) -> None:
        if ok:
            self._values[index] = value
        elif self._first_error is None:
            self._first_error = value
        self._left -= 1
        if self._left == 0:
            if self._first_error is None:
                self._finish(True, self._values)
            else:
                self._values = []
                self._finish(False, self._first_error)


class IMapIterator:
    """The iterator of ``imap`` (in order) and ``imap_unordered`` (as completed).
    ``next(timeout)`` raises ``multiprocessing.TimeoutError`` if nothing arrives in time."""

    def __init__(self, pool: "Pool", n: int, ordered: bool):
        self._pool = pool
        self._owner = pool._pid
        self._cond = threading.Condition(threading.Lock())
        self._ordered = ordered
        self._n = n
        self._next_index = 0
        self._yielded = 0
        self._ready: Dict[int, Tuple[bool, Any]] = {}
        self._unordered: List[Tuple[bool, Any]] = []

    def __iter__(self) -> "IMapIterator":
        return self

    def _set(self, index: int, kind: str, data: Any, label: Optional[str]) -> None:
        self._put(index, *_decode(kind, data, label))

    def _put(self, index: int, ok: bool, value: Any) -> None:
        item = (ok, value)
        with self._cond:
            if self._ordered:
                self._ready[index] = item
            else:
                self._unordered.append(item)
            self._cond.notify()

    def _take(self) -> Optional[Tuple[bool, Any]]:
        if self._ordered:
            return self._ready.pop(self._next_index, None)
        return self._unordered.pop(0) if self._unordered else None

    def next(self, timeout: Optional[float] = None) -> Any:
        """The next result; raises its error, ``StopIteration`` at the end, or
        ``multiprocessing.TimeoutError`` if ``timeout`` passes."""
        import time

        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while True:
                if self._yielded >= self._n:
                    raise StopIteration
                item = self._take()
                if item is not None:
                    break
                if os.getpid() != self._owner:
                    raise _forked_error(self._owner)
                left = _SLICE if deadline is None else min(_SLICE, deadline - time.monotonic())
                if left <= 0:
                    raise TimeoutError
                self._cond.wait(left)
            self._yielded += 1
            self._next_index += 1
        ok, value = item
        if ok:
            return value
        raise value

    __next__ = next


class Pool:
    """A process pool with the API of ``multiprocessing.Pool`` that cannot hang.

    Differences from ``multiprocessing.Pool``, each an error instead of a hang:

    - a worker that dies (crash, ``sys.exit``, ``os._exit``, a signal) fails only the task
      it was running, with :class:`WorkerLostError`; the pool starts a new worker;
    - ``task_timeout`` (seconds) bounds every task; a late task fails with
      :class:`TaskTimeoutError` and only its worker is stopped;
    - ``terminate()`` stops workers with SIGTERM to each worker's process group, then
      SIGKILL after ``grace`` seconds, so it returns in bounded time even when workers
      ignore SIGTERM; their child processes die with them;
    - an initializer that raises fails every waiting and later call with
      :class:`InitializerError` instead of respawning workers forever.

    Workers are fresh interpreters started by exec (``context`` is accepted for
    compatibility and ignored). Functions defined in ``__main__`` travel by value, so
    scripts without an ``if __name__ == "__main__":`` guard work.
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
        grace: float = 1.0,
        startup_timeout: float = 60.0,
        max_startup_failures: int = 3,
    ):
        self._pid = os.getpid()
        self._shared = _Shared()
        if processes is None:
            processes = cpu_count()
        if processes < 1:
            raise ValueError("Number of processes must be at least 1")
        if maxtasksperchild is not None and (not isinstance(maxtasksperchild, int) or maxtasksperchild <= 0):
            raise ValueError("maxtasksperchild must be a positive int or None")
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be a callable")
        self._processes = processes
        self._grace = float(grace)
        # The initializer travels pickled inside the payload: the worker unpickles it only
        # after it has taken this process's sys.path and cwd, so a function from a module
        # found through them can be imported there.
        init_call = dumps((initializer, tuple(initargs))) if initializer is not None else None
        init = {"sys_path": list(sys.path), "cwd": os.getcwd(), "init_call": init_call}
        self._engine = _core.Engine(
            _WORKER_ARGV,
            workers=processes,
            task_timeout=task_timeout,
            grace=self._grace,
            startup_timeout=startup_timeout,
            max_tasks_per_worker=maxtasksperchild,
            max_startup_failures=max_startup_failures,
            init_payload=dumps(init),
            # Send a task only to an idle worker, as multiprocessing does: a task sent
            # ahead would wait behind a long one while another worker sits idle.
            prefetch=1,
        )
        # key -> [job, engine index -> job index, job index -> label, outcomes still due]
        self._jobs: Dict[int, list] = {}
        self._jobs_lock = threading.Lock()
        self._keys = itertools.count(1)
        self._state = "RUN"
        self._result_thread = threading.Thread(
            target=_handle_results,
            args=(self._engine, self._jobs, self._jobs_lock, self._shared),
            name="hangfree-results",
            daemon=True,
        )
        _result_threads[self._result_thread] = self._shared
        self._result_thread.start()
        _live_pools.add(self)

    @property
    def _state(self) -> str:
        return self._shared.state

    @_state.setter
    def _state(self, value: str) -> None:
        self._shared.state = value

    # ----- submission ---------------------------------------------------------------
    # ----- submission ---------------------------------------------------------------

    def _check_running(self) -> None:
        if os.getpid() != self._pid:
            raise _forked_error(self._pid)
        if self._state != "RUN":
            raise ValueError("Pool not running")

    def _submit(
        self,
        job: Any,
        fn: Callable[..., Any],
        arg_list: List[tuple],
        kwargs: Optional[dict],
        chunksize: int,
        timeout: Optional[float],
    ) -> None:
        fn_bytes = dumps(fn)
        key = next(self._keys)
        kw = kwargs or {}

        def label_of(i: int) -> str:
            return _label(fn, arg_list[i], kw)

        payloads: List[bytes] = []
        positions: List[int] = []
        bad: List[Tuple[int, BaseException]] = []
        for i, args in enumerate(arg_list):
            try:
                payloads.append(dumps((fn_bytes, args, kw)))
                positions.append(i)
            except Exception as e:
                # An argument that cannot be pickled fails its own item, not the call.
                bad.append((i, e))
        if payloads:
            with self._jobs_lock:
                self._jobs[key] = [job, positions, label_of, len(payloads)]
            try:
                self._engine.submit(key, payloads, chunksize=max(1, chunksize), timeout=timeout)
            except _core.SubmitRefused as e:
                with self._jobs_lock:
                    self._jobs.pop(key, None)
                raise self._refused(e) from None
        for i, e in bad:
            err = HangfreeError(f"{label_of(i)}: its arguments cannot be pickled: {type(e).__name__}: {e}")
            err.__cause__ = e
            job._put(i, False, err)

    def _refused(self, e: BaseException) -> BaseException:
        kind, message, detail = e.args
        if kind in ("closed", "terminated"):
            return ValueError("Pool not running")
        if kind == "broken":
            return initializer_error(detail or {"message": message})
        if kind == "forked":
            return RuntimeError(message)
        return ValueError(message)

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
        self._submit(job, func, [tuple(args)], kwds, 1, task_timeout)
        return job

    def _default_chunksize(self, n: int) -> int:
        chunksize, extra = divmod(n, len(range(self._processes)) * 4)
        return chunksize + 1 if extra else max(chunksize, 1)

    def _map_async(self, func, arg_list, chunksize, callback, error_callback, task_timeout) -> MapResult:
        self._check_running()
        if chunksize is None:
            chunksize = self._default_chunksize(len(arg_list))
        if chunksize < 1:
            raise ValueError(f"Chunksize must be 1+, not {chunksize}")
        job = MapResult(self, len(arg_list), callback, error_callback)
        if arg_list:
            self._submit(job, func, arg_list, None, chunksize, task_timeout)
        return job

    def map(self, func: Callable[[Any], Any], iterable: Iterable[Any], chunksize: Optional[int] = None, *, task_timeout: Optional[float] = None) -> List[Any]:
        """``list(map(func, iterable))`` computed by the workers, in order."""
        return self._map_async(func, [(x,) for x in iterable], chunksize, None, None, task_timeout).get()

    def map_async(self, func, iterable, chunksize=None, callback=None, error_callback=None, *, task_timeout=None) -> MapResult:
        """Like :meth:`map`, returning a :class:`MapResult`."""
        return self._map_async(func, [(x,) for x in iterable], chunksize, callback, error_callback, task_timeout)

    def starmap(self, func: Callable[..., Any], iterable: Iterable[Iterable[Any]], chunksize: Optional[int] = None, *, task_timeout: Optional[float] = None) -> List[Any]:
        """Like :meth:`map`, calling ``func(*args)`` for each ``args`` of ``iterable``."""
        return self._map_async(func, [tuple(a) for a in iterable], chunksize, None, None, task_timeout).get()

    def starmap_async(self, func, iterable, chunksize=None, callback=None, error_callback=None, *, task_timeout=None) -> MapResult:
        """Like :meth:`starmap`, returning a :class:`MapResult`."""
        return self._map_async(func, [tuple(a) for a in iterable], chunksize, callback, error_callback, task_timeout)

    def _imap(self, func, iterable, chunksize, ordered, task_timeout) -> IMapIterator:
        self._check_running()
        if chunksize < 1:
            raise ValueError(f"Chunksize must be 1+, not {chunksize:n}")
        arg_list = [(x,) for x in iterable]
        it = IMapIterator(self, len(arg_list), ordered)
        if arg_list:
            self._submit(it, func, arg_list, None, chunksize, task_timeout)
        return it

    def imap(self, func: Callable[[Any], Any], iterable: Iterable[Any], chunksize: int = 1, *, task_timeout: Optional[float] = None) -> IMapIterator:
        """Like :meth:`map`, but yields results lazily, in order."""
        return self._imap(func, iterable, chunksize, True, task_timeout)

    def imap_unordered(self, func: Callable[[Any], Any], iterable: Iterable[Any], chunksize: int = 1, *, task_timeout: Optional[float] = None) -> IMapIterator:
        """Like :meth:`imap`, but yields results as they complete."""
        return self._imap(func, iterable, chunksize, False, task_timeout)

    # ----- lifecycle ----------------------------------------------------------------

    def close(self) -> None:
        """Accepts no more tasks; workers exit once the submitted ones are done."""
        if os.getpid() != self._pid:
            raise _forked_error(self._pid)
        if self._state == "RUN":
            self._state = "CLOSE"
            self._engine.close()

    def terminate(self) -> None:
        """Stops every worker now: pending tasks fail with :class:`PoolTerminatedError`.
        Returns within ``grace`` seconds plus a small constant even when workers ignore
        SIGTERM or sit in C code; their child processes are killed with them."""
        if os.getpid() != self._pid:
            return
        self._state = "TERMINATE"
        self._engine.terminate()
        self._engine.join(self._grace + 3.0)

    def join(self) -> None:
        """Waits for the workers to exit; call :meth:`close` or :meth:`terminate` first."""
        if os.getpid() != self._pid:
            raise _forked_error(self._pid)
        if self._state == "RUN":
            raise ValueError("Pool is still running")
        if self._state == "INIT":
            raise ValueError("Pool is not initialized")
        self._engine.join()
        self._shared.stop = True
        if threading.current_thread() is not self._result_thread:
            self._result_thread.join(1.0)

    def stats(self) -> Dict[str, int]:
        """The pool's counters: tasks by outcome, workers spawned, lost, recycled."""
        return self._engine.stats()

    def __enter__(self) -> "Pool":
        self._check_running()
        return self

    def __exit__(self, exc_type: Any, exc_val: Any, exc_tb: Any) -> None:
        self.terminate()

    def __reduce__(self) -> Any:
        raise NotImplementedError("pool objects cannot be passed between processes or pickled")

    def __repr__(self) -> str:
        return f"<hangfree.Pool state={self._state} processes={self._processes}>"

    def __del__(self) -> None:
        # Collected while running (never closed): stop the workers, as multiprocessing
        # does. Never blocks: the result thread finishes the job and then exits.
        shared = self.__dict__.get("_shared")
        if shared is not None and shared.state in ("RUN", "CLOSE") and os.getpid() == self.__dict__.get("_pid"):
            shared.state = "TERMINATE"
            try:
                self._engine.terminate()
            except Exception:
                pass


def _handle_results(engine: Any, jobs: Dict[int, list], lock: threading.Lock, shared: _Shared) -> None:
    """The result thread: delivers every outcome to its job. Holds no reference to the
    pool (see :class:`_Shared`)."""
    try:
        while not shared.stop:
            try:
                outcomes = engine.next_outcomes(_SLICE)
            except BaseException:  # never let this thread die silently with jobs waiting
                continue
            for key, index, kind, data in outcomes:
                with lock:
                    entry = jobs.get(key)
                    if entry is None:
                        continue
                    entry[3] -= 1
                    if entry[3] == 0:
                        del jobs[key]
                job, positions, label_of = entry[0], entry[1], entry[2]
                i = positions[index]
                try:
                    job._set(i, kind, data, functools.partial(label_of, i))
                except BaseException as e:  # a user callback raised: report, keep serving
                    print(f"hangfree: exception in a result callback: {e!r}", file=sys.stderr)
            if not outcomes and shared.state != "RUN" and not jobs and engine.is_finished():
                return
    finally:
        _result_threads.pop(threading.current_thread(), None)


def _shutdown_all() -> None:
    """Interpreter exit: stop every pool still open, bounded by its grace period, and
    every result thread."""
    for pool in list(_live_pools):
        try:
            if pool._state != "TERMINATE" and os.getpid() == pool._pid:
                pool.terminate()
        except Exception:
            pass
    for thread, shared in list(_result_threads.items()):
        try:
            shared.stop = True
            if thread is not threading.current_thread():
                thread.join(1.0)
        except Exception:
            pass


# threading's exit hook runs before the interpreter starts tearing down, while every
# thread can still take the GIL; fall back to atexit where it is missing.
_register = getattr(threading, "_register_atexit", None)
if _register is not None:
    _register(_shutdown_all)
else:  # pragma: no cover
    import atexit

    atexit.register(_shutdown_all)
