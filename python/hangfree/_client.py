"""The Python side of one engine: submission, the result thread, logging, exit handling.

Both fronts (``Pool`` and ``ProcessPoolExecutor``) sit on an :class:`EngineClient`. It
pickles calls, hands them to the Rust engine, and runs one thread that drains the
engine's outcomes and passes each, decoded into ``(ok, value)``, to the callback given
at submission. Errors are worded by the engine; this module only names the task in them.

The result thread holds the client, never the front that owns it, so a pool or executor
nobody references can be collected (its ``__del__`` then stops the engine).
"""

from __future__ import annotations

import itertools
import logging
import os
import reprlib
import sys
import threading
import time
import weakref
from multiprocessing.pool import RemoteTraceback
# Annotations only (strings here): importing typing costs a pool's creation ~4 ms.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

    # (caller's index, ok, value or exception). It may have an attribute
    # `many(first, values)` taking the values of consecutive items that all succeeded.
    OnOutcome = Callable[[int, bool, Any], None]

from hangfree import _core
from hangfree._errors import HangfreeError, failure, initializer_error
from hangfree._inherit import dumps_inherited, release
from hangfree._pickling import (dumps, dumps_call, dumps_function, dumps_payload, loads, made_by_unguarded_main_code,
                                main_is_imported)

if TYPE_CHECKING:
    from hangfree._pickling import Payload

# How long the result thread sleeps between checks for shutdown.
SLICE = 0.05

log = logging.getLogger("hangfree")
# A library logs; the application decides where records go (nowhere by default).
log.addHandler(logging.NullHandler())

_EVENT_LEVELS = {"WorkerStarted": logging.DEBUG, "ForkServerStarted": logging.DEBUG, "Recycled": logging.INFO,
                 "Terminate": logging.INFO}

class _LabelRepr(reprlib.Repr):
    """reprlib, but a large bytes-like argument is cut before it is repr'd (reprlib
    builds the whole repr first: 6 ms for 1 MiB, on every error naming such a call)."""

    def _cut(self, data: Any) -> str:
        s = repr(bytes(data[: self.maxstring]))
        return s if len(data) <= self.maxstring else f"{s[:-1]}...{s[-1]} ({len(data)} bytes)"

    def repr_bytes(self, x: bytes, level: int) -> str:
        return self._cut(x)

    def repr_bytearray(self, x: bytearray, level: int) -> str:
        return f"bytearray({self._cut(x)})"


_label_repr = _LabelRepr()
_label_repr.maxstring = 40
_label_repr.maxother = 40
_label_repr.maxlist = 4
_label_repr.maxtuple = 4
_label_repr.maxdict = 4

_live: "weakref.WeakSet[EngineClient]" = weakref.WeakSet()


def cpu_count() -> int:
    """The number of CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def preparation() -> Dict[str, Any]:
    """What a worker needs to start as a child spawned by multiprocessing would, as
    ``multiprocessing.spawn.get_preparation_data`` gives it, but for the authkey (sent on
    the worker's channel instead) and without fixing the start method as a side effect."""
    from multiprocessing import context, process, util

    sys_path = list(sys.path)
    if "" in sys_path:
        sys_path[sys_path.index("")] = process.ORIGINAL_DIR
    data = {"name": "HangfreePoolWorker", "log_to_stderr": util._log_to_stderr, "sys_path": sys_path,
            "sys_argv": sys.argv, "orig_dir": process.ORIGINAL_DIR, "dir": os.getcwd()}
    if util._logger is not None:
        data["log_level"] = util._logger.getEffectiveLevel()
    method = context._default_context.get_start_method(allow_none=True)
    # A start method of another library's context (loky's, in a loky worker) means
    # nothing to the stdlib a worker prepares with.
    if method is not None and method in context._default_context.get_all_start_methods():
        data["start_method"] = method
    if not main_is_imported():
        return data
    main = sys.modules["__main__"]
    main_name = getattr(getattr(main, "__spec__", None), "name", None)
    if main_name is not None:
        data["init_main_from_name"] = main_name
    else:
        main_path = main.__file__
        if not os.path.isabs(main_path) and process.ORIGINAL_DIR is not None:
            main_path = os.path.join(process.ORIGINAL_DIR, main_path)
        data["init_main_from_path"] = os.path.normpath(main_path)
    if _library_threads_settled() > _openblas_threads():
        # The script's imports most likely started threads here, and would in the fork
        # server, which cannot fork then: let each forked worker import the script
        # instead, rather than have the server import it, find threads and start over.
        # OpenBLAS's threads (numpy's) do not count: the server loads it without threads
        # (see `hangfree._worker.main`).
        data["main_after_fork"] = True
    return data


def _openblas_threads() -> int:
    """How many threads numpy's OpenBLAS started here, as far as can be told: one fewer
    than the CPUs (its default), when numpy is loaded and nothing set its thread count."""
    if "numpy" not in sys.modules or "OPENBLAS_NUM_THREADS" in os.environ or "GOTO_NUM_THREADS" in os.environ:
        return 0
    return min(os.cpu_count() or 1, 64) - 1


def _library_threads() -> int:
    """How many threads of this process are neither Python threads nor engines'
    supervisors (named ``hangfree-...``): threads a native library started."""
    try:
        tids = os.listdir("/proc/self/task")
    except OSError:
        return 0
    engines = 0
    for tid in tids:
        try:
            with open(f"/proc/self/task/{tid}/comm") as f:
                engines += f.read().startswith("hangfree-")
        except OSError:
            pass
    return max(0, len(tids) - engines - threading.active_count())


# When a pool's result thread last ended (time.monotonic()), and how many library
# threads the last pool made here counted (see `_library_threads_settled`).
_result_thread_ended = float("-inf")
_library_threads_seen = 0


def _library_threads_settled() -> int:
    """`_library_threads`, looked at again for a few milliseconds while it counts any,
    when a pool's result thread ended a moment ago: a Python thread that has just ended is
    out of ``threading`` before its OS thread is gone, and would count as a library's for
    that moment (then the next pool would not take the kept fork server: its command
    differs)."""
    global _library_threads_seen
    n = _library_threads()
    for _ in range(5):
        # More than the last pool saw, a moment after a result thread ended: it may be that.
        if n <= max(_openblas_threads(), _library_threads_seen) or time.monotonic() - _result_thread_ended > 0.1:
            break
        time.sleep(0.002)
        n = _library_threads()
    _library_threads_seen = n
    return n


def worker_command(preload: Sequence[str] = ()) -> List[str]:
    """The worker's command line: this interpreter (or ``set_executable``'s) with this
    interpreter's flags (-O, -X dev, -W ...), as multiprocessing starts its children;
    ``preload``: modules it imports after the main script (in the fork server, once)."""
    from multiprocessing import util

    data = preparation()
    if preload:
        data["preload"] = list(preload)
    # multiprocessing.spawn (a millisecond of imports) holds set_executable's choice; until
    # it is imported (set_executable imports it) the executable is this interpreter.
    spawn = sys.modules.get("multiprocessing.spawn")
    executable = spawn.get_executable() if spawn is not None else sys.executable
    return [os.fsdecode(executable), *util._args_from_interpreter_flags(), "-c",
            "import sys; from hangfree._worker import main; sys.exit(main())", _json(data)]


def _json(value: Any) -> str:
    """``json.dumps(value)`` (ASCII) for what a worker's preparation holds: None, bools,
    ints, strings, lists and dicts of them. Importing ``json`` took 1.4-8 ms of a pool's
    creation in a script that had not."""
    if value is None or value is True or value is False:
        return "null" if value is None else "true" if value else "false"
    if type(value) is int:
        return str(value)
    if isinstance(value, str):
        if value.isascii() and value.isprintable():
            return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
        return '"' + "".join(_json_char(c) for c in value) + '"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_json(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_json(str(k))}: {_json(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"cannot put {type(value).__name__} in a worker's preparation")


def _json_char(c: str) -> str:
    if c == '"' or c == "\\":
        return "\\" + c
    n = ord(c)
    if 0x20 <= n < 0x7F:
        return c
    if n > 0xFFFF:
        n -= 0x10000
        return f"\\u{0xD800 | (n >> 10):04x}\\u{0xDC00 | (n & 0x3FF):04x}"
    return f"\\u{n:04x}"


def as_items(iterable: Iterable[Any]) -> Sequence[Any]:
    """The items of a map call. A list, tuple or range is used as it is (as
    multiprocessing does), which saves a copy before the first chunk can go; the client
    copies a list once its chunks are sent (see ``EngineClient.submit``)."""
    return iterable if type(iterable) in (list, tuple, range) else list(iterable)  # type: ignore[return-value]


def label(fn: Callable[..., Any], args: tuple, kwargs: Optional[dict] = None) -> str:
    """A short name for a call, such as ``square(3)``, used in error messages."""
    name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or repr(fn)
    parts = [_label_repr.repr(a) for a in args]
    parts += [f"{k}={_label_repr.repr(v)}" for k, v in (kwargs or {}).items()]
    return f"{name}({', '.join(parts)})"


def unpicklable_arguments(exc: BaseException, name: str) -> BaseException:
    """The error of a call whose arguments cannot be pickled: the pickling error itself,
    as the stdlib raises it, with a note naming the call (Python 3.11+)."""
    if hasattr(exc, "add_note"):
        exc.add_note(f"hangfree: the arguments of {name} cannot be pickled")
    return exc


def _raised(data: bytes, name: str, tb_class: Callable[[str], BaseException] = RemoteTraceback) -> BaseException:
    """Rebuilds the exception a task raised, with the worker's traceback as its cause
    (``tb_class``: the front's kind of remote traceback, as its stdlib counterpart has)."""
    try:
        info = loads(data)
    except Exception as e:
        return HangfreeError(f"{name}: the task raised an exception that cannot be unpickled here: {e}")
    exc = info.get("exc")
    if info.get("input_error"):
        # The worker could not unpickle the call: an error on this task, named.
        exc = HangfreeError(f"{name}: {info.get('summary', 'the worker cannot unpickle the call')}")
    elif not isinstance(exc, BaseException):
        note = info.get("note", "")
        exc = HangfreeError(f"{name}: the task raised {info.get('summary', 'an exception')} {note}".rstrip())
    exc.__cause__ = tb_class(info.get("traceback", ""))
    return exc


def decode(kind: str, data: Any, name: Callable[[], str],
           tb_class: Callable[[str], BaseException] = RemoteTraceback) -> Tuple[bool, Any]:
    """An engine outcome as ``(True, value)`` or ``(False, exception)``. ``name`` gives
    the task's label, computed only when an error needs it."""
    if kind == "value":
        try:
            return True, loads(data)
        except KeyboardInterrupt:
            raise
        except BaseException as e:  # SystemExit from a __setstate__ too: this task's error
            return False, unreadable_result(e, name())
    if kind == "raised":
        return False, _raised(data, name(), tb_class)
    return False, failure(kind, data, name())


def unreadable_result(exc: BaseException, name: str) -> BaseException:
    """The error of a task whose result cannot be unpickled here."""
    err = HangfreeError(f"{name}: the result cannot be unpickled here: {type(exc).__name__}: {exc}")
    err.__cause__ = exc
    return err


def memory_bytes(limit: Union[int, str, None]) -> Optional[int]:
    """``max_memory`` as bytes: an int, or a string such as ``"2GiB"`` or ``"512MB"``."""
    if limit is None:
        return None
    if isinstance(limit, str):
        return _core.parse_size(limit)
    if isinstance(limit, int) and not isinstance(limit, bool) and limit > 0:
        return limit
    raise ValueError(f"max_memory must be a positive number of bytes or a size such as '2GiB', not {limit!r}")


class EngineClient:
    """One engine and the thread that delivers its outcomes."""

    def __init__(
        self,
        *,
        workers: Optional[int],
        initializer: Optional[Callable[..., Any]],
        initargs: Iterable[Any],
        max_tasks_per_worker: Optional[int],
        task_timeout: Optional[float],
        grace: Optional[float],
        startup_timeout: Optional[float],
        max_startup_failures: Optional[int],
        owner: str,
        closed_error: Callable[[], BaseException],
        front: Any = None,
        max_memory: Union[int, str, None] = None,
        retries: Optional[int] = None,
        cgroup: Optional[bool] = None,
        fork_server: Optional[bool] = None,
        preload: Iterable[str] = (),
    ):
        """Every setting left at None takes the engine's default (``_core.defaults()``)."""
        from multiprocessing import process

        # A worker importing a main script that makes a pool at its top level (no
        # `if __name__ == "__main__":` guard): multiprocessing's error, not a pool of pools.
        if getattr(process.current_process(), "_inheriting", False):
            from multiprocessing.spawn import _check_not_importing_main

            _check_not_importing_main()
        # Such a script run as the main program is one that works under fork: its
        # workers must not import it, and its objects go by value.
        made_by_unguarded_main_code()
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be a callable")
        if isinstance(preload, str) or not all(isinstance(m, str) for m in preload):
            raise TypeError("preload must be an iterable of module names")
        preload = list(preload)
        # What keeps the engine open after close(): imap feeders still reading their input.
        self._holds = 0
        self._close_deferred = False
        # Clear while a close() waits for the holds: join() waits for it too.
        self._not_deferred = threading.Event()
        self._not_deferred.set()
        self.pid = os.getpid()
        self.owner = owner
        # The Pool or executor this serves, weakly: should it be dropped without being
        # stopped, even before its constructor could hold this client (Ctrl-C landing in
        # it), the result thread does what its __del__ would (see _deliver).
        self._front = weakref.ref(front) if front is not None else None
        # What a task's exception has as its cause, as in the front's stdlib counterpart.
        self.tb_class: Callable[[str], BaseException] = RemoteTraceback
        if owner == "ProcessPoolExecutor":
            from concurrent.futures.process import _RemoteTraceback

            self.tb_class = _RemoteTraceback
        self.closed_error = closed_error
        # By-value pickles of functions, for this pool only (see dumps_function).
        self._functions: "weakref.WeakKeyDictionary[Any, bytes]" = weakref.WeakKeyDictionary()
        # Descriptors this process serves to the workers for what initargs hold.
        self._inherited: List[int] = []
        init_call = None
        # Kept for the pool's life, as the stdlib's Pool keeps them: a lock or queue the
        # caller made only for initargs is freed (its semaphore's name unlinked) once
        # nobody holds it, and workers started later open it by that name.
        self._initargs = tuple(initargs)
        if initializer is not None:
            try:
                init_call = (dumps_function(initializer, self._functions),
                             dumps_inherited(self._initargs, self._inherited))
            except BaseException:
                release(self._inherited)
                raise
        init = {
            # Sent on the worker's private channel, never in its environment or argv.
            "authkey": bytes(process.current_process().authkey),
            "parent_name": process.current_process().name,
            "init_call": init_call,
            "for_executor": owner == "ProcessPoolExecutor",
        }
        try:
            self.engine = _core.Engine(
                worker_command(preload),
                workers=workers,
                task_timeout=task_timeout,
                grace=grace,
                startup_timeout=startup_timeout,
                max_tasks_per_worker=max_tasks_per_worker,
                max_startup_failures=max_startup_failures,
                init_payload=dumps(init),
                max_memory=memory_bytes(max_memory),
                retries=retries,
                events=True,
                cgroup=cgroup,
                fork_server=fork_server,
            )
        except BaseException:
            # The engine refused a setting or could not start: no worker will ask for these.
            release(self._inherited)
            raise
        self.workers: int = self.engine.workers
        # key -> [on_outcome, engine index -> caller's index, caller's index -> label, outcomes due]
        self._jobs: Dict[int, list] = {}
        self._lock = threading.Lock()
        self._keys = itertools.count(1)
        self._stopping = False
        # Set once the result thread runs: start() does not wait for that (see _NoWaitStart).
        self._delivering = threading.Event()
        # Set when _deliver returns: the exit handler waits for it.
        self._finished = threading.Event()
        self._thread = threading.Thread(target=self._deliver, name=f"hangfree-{owner}-results", daemon=True)
        self._thread._started = _NoWaitStart()  # type: ignore[attr-defined]
        # Known to the exit handler before the thread starts: Ctrl-C landing in start()
        # leaves the thread running, and the exit handler must stop it before the
        # interpreter finalizes (see _stop_threads_for_exit).
        _live.add(self)
        self._thread.start()

    def forked_error(self) -> RuntimeError:
        return RuntimeError(
            f"this hangfree {self.owner} was created by process {self.pid} and cannot be used "
            f"in the forked child {os.getpid()}; create a new one in the child"
        )

    def check_process(self) -> None:
        """Raises if this process is a fork of the one that made the engine."""
        if os.getpid() != self.pid:
            raise self.forked_error()

    def check_can_wait(self) -> None:
        """Raises where a wait for outcomes could never end: in a forked child, or on the
        thread that delivers them (a result callback waiting for other results, which
        deadlocks the stdlib's pool)."""
        self.check_process()
        if threading.current_thread() is self._thread:
            raise RuntimeError(
                f"a result callback of this hangfree {self.owner} cannot wait for other results: callbacks "
                f"run on the thread that delivers them, so the wait could never end (submit from the "
                f"callback and wait elsewhere)")

    def submit(
        self,
        fn: Callable[..., Any],
        arg_list: List[Any],
        kwargs: Optional[dict],
        on_outcome: OnOutcome,
        *,
        chunksize: int = 1,
        timeout: Optional[float] = None,
        star: bool = True,
        borrowed: bool = False,
    ) -> List[Optional[int]]:
        """Submits ``fn(*args, **kwargs)`` for each ``args`` of ``arg_list`` (or
        ``fn(item, **kwargs)`` for each item with ``star=False``); returns each call's task
        id (None where there is no single task to name: a call whose arguments cannot be
        pickled fails at once through ``on_outcome``, and packed chunks have one id for
        many calls). ``borrowed``: ``arg_list`` is the caller's own list, which may change
        once this returns."""
        self.check_process()
        fn_bytes = dumps_function(fn, self._functions)
        kw = kwargs or {}
        calls = _Calls(fn_bytes, arg_list, kw, star, lambda i: label(fn, calls.args(i), kw))
        try:
            if chunksize > 1 and len(arg_list) > 1:
                spans = _spans(len(arg_list), chunksize, self.workers)
                return self._submit_packed(calls, on_outcome, spans, timeout)
            return self._submit_each(calls, on_outcome, chunksize, timeout)
        finally:
            # Items are needed again only to name a failed call; by then the caller may
            # have changed a list it passed.
            if borrowed and type(arg_list) is list:
                calls.items = arg_list[:]

    def _submit_each(self, calls: "_Calls", on_outcome: OnOutcome, chunksize: int,
                     timeout: Optional[float]) -> List[Optional[int]]:
        fn_bytes, arg_list, kw, label_of = calls.fn_bytes, calls.items, calls.kw, calls.label_of
        ids: List[Optional[int]] = [None] * len(arg_list)
        payloads: List[Payload] = []
        positions: List[int] = []
        bad: List[Tuple[int, BaseException]] = []
        sent = 0
        n = len(arg_list)
        for i in range(n):
            try:
                payloads.append(dumps_call(fn_bytes, calls.args(i), kw))
                positions.append(i)
            except Exception as e:
                bad.append((i, e))
            # As with chunks: the first calls go while the rest are pickled, in groups
            # of 16, 16, 32, 64, ... (each group is one submission).
            if payloads and (i + 1 == n or len(payloads) >= max(16, sent)):
                first, _ = self._submit_group(on_outcome, payloads, positions, label_of, chunksize, timeout)
                for k, j in enumerate(positions):
                    ids[j] = first + k
                sent += len(payloads)
                payloads, positions = [], []
        for i, e in bad:
            on_outcome(i, False, unpicklable_arguments(e, label_of(i)))
        return ids

    def _submit_group(self, on_outcome: OnOutcome, payloads: List[Payload], positions: List[int],
                      label_of: Callable[[int], str], chunksize: int, timeout: Optional[float],
                      claim: bool = False) -> Tuple[int, int]:
        """Submits ``payloads`` as one engine submission; returns its first task id and key."""
        key = next(self._keys)
        with self._lock:
            self._jobs[key] = [on_outcome, positions, label_of, len(payloads)]
        try:
            return self.engine.submit(key, payloads, chunksize=max(1, chunksize), timeout=timeout, claim=claim), key
        except _core.SubmitRefused as e:
            with self._lock:
                self._jobs.pop(key, None)
            raise self.refused(e) from None

    def submit_claimable(self, fn: Callable[..., Any], args: tuple, kwargs: Optional[dict], on_outcome: OnOutcome,
                         timeout: Optional[float]) -> Tuple[Optional[int], Optional[int]]:
        """Submits one call whose outcome goes to ``on_outcome(0, ok, value)``, through
        the result thread or in a thread waiting for it in ``await_claim``. Returns its
        task id and key (both None if its arguments cannot be pickled: ``on_outcome`` has
        been told)."""
        self.check_process()
        kw = kwargs or {}
        label_of = lambda _: label(fn, args, kw)  # noqa: E731
        try:
            payload = dumps_call(dumps_function(fn, self._functions), args, kw)
        except Exception as e:
            on_outcome(0, False, unpicklable_arguments(e, label_of(0)))
            return None, None
        key: Optional[int] = None

        def settle(i: int, ok: bool, value: Any) -> None:
            on_outcome(i, ok, value)
            # Other threads waiting for this call return (the key is known by the time
            # anyone can wait for it).
            if key is not None:
                self.engine.completed(key)

        first, key = self._submit_group(settle, [payload], [0], label_of, 1, timeout, claim=True)
        return first, key

    def await_claim(self, key: int, done: Callable[[], bool], timeout: Optional[float]) -> None:
        """Waits until ``done()`` or ``timeout`` seconds pass. The call's outcome, if it
        comes while this thread waits, is taken here and handed to its ``on_outcome``
        (one wake-up fewer than through the result thread). Short slices let Ctrl-C and
        a fork be noticed."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not done():
            left = SLICE if deadline is None else min(SLICE, deadline - time.monotonic())
            if left <= 0:
                return
            self.check_process()
            got = self.engine.wait_claim(key, left)
            if got is not None:
                self._settle([(key, 0, got[0], got[1], 0, 1)])

    def _submit_packed(self, calls: "_Calls", on_outcome: OnOutcome, spans: Iterable[range],
                       timeout: Optional[float] = None) -> List[Optional[int]]:
        """Sends each chunk of a map as one engine chunk (`Task::chunk`): one pickle of
        its arguments out, its results back a few at a time, as multiprocessing does,
        instead of a message per item.

        The engine keeps each item at most once: if the worker dies (or passes a time
        limit) mid-chunk, the item it was on gets the error, items whose results came keep
        them, and the items it had not started run elsewhere.
        """
        n = len(calls.items)
        payloads: List[Payload] = []
        kept: List[range] = []
        sent = 0
        for span in spans:
            try:
                payloads.append(dumps_payload((calls.fn_bytes, calls.items[span.start:span.stop], calls.kw, calls.star)))
                kept.append(span)
            except Exception:
                # Something in this chunk does not pickle: send its items one by one, so
                # only the bad item fails.
                self.submit_items(calls, on_outcome, span)
            # Send the first chunks as soon as they are pickled, so workers start while
            # the rest are pickled: groups of 1, 1, 2, 4, ... chunks.
            if kept and len(kept) >= max(1, sent):
                self._submit_chunks(calls, on_outcome, payloads, kept, timeout)
                sent += len(kept)
                payloads, kept = [], []
        if kept:
            self._submit_chunks(calls, on_outcome, payloads, kept, timeout)
        return [None] * n

    def _submit_chunks(self, calls: "_Calls", on_outcome: OnOutcome, payloads: List[Payload], kept: List[range],
                       timeout: Optional[float]) -> None:
        key = next(self._keys)
        sizes = [len(span) for span in kept]
        with self._lock:
            # Counted in items: the engine answers a chunk a few items at a time.
            self._jobs[key] = [_Packed(calls, on_outcome, kept, self.tb_class), None, None, sum(sizes)]
        try:
            self.engine.submit(key, payloads, chunksize=1, items=sizes, timeout=timeout)
        except _core.SubmitRefused as e:
            with self._lock:
                self._jobs.pop(key, None)
            raise self.refused(e) from None

    def submit_items(self, calls: "_Calls", on_outcome: OnOutcome, idx: Iterable[int]) -> None:
        """Submits the calls ``idx`` one message each (their outcomes go to
        ``on_outcome`` under their own indices)."""
        payloads: List[Payload] = []
        positions: List[int] = []
        for i in idx:
            try:
                payloads.append(dumps_call(calls.fn_bytes, calls.args(i), calls.kw))
                positions.append(i)
            except Exception as e:
                on_outcome(i, False, unpicklable_arguments(e, calls.label_of(i)))
        if payloads:
            key = next(self._keys)
            with self._lock:
                self._jobs[key] = [on_outcome, positions, calls.label_of, len(payloads)]
            try:
                self.engine.submit(key, payloads, chunksize=1)
            except _core.SubmitRefused as e:
                with self._lock:
                    self._jobs.pop(key, None)
                err = self.refused(e)
                for i in positions:
                    on_outcome(i, False, err)

    def hold(self) -> None:
        """Keeps the engine open through a close() until the matching ``release``."""
        with self._lock:
            self._holds += 1

    def release(self) -> None:
        """A packed chunk got its outcome, or a feeder ended; a close() waiting for the
        last hold goes on."""
        with self._lock:
            self._holds -= 1
            go = self._holds == 0 and self._close_deferred
            if go:
                self._close_deferred = False
        if go:
            self.engine.close()
            self._not_deferred.set()

    def refused(self, e: BaseException) -> BaseException:
        """The exception for a submission the engine refused."""
        kind, message, detail = e.args
        if kind in ("closed", "terminated"):
            return self.closed_error()
        if kind == "broken":
            return initializer_error(detail or {"message": message})
        if kind == "forked":
            return RuntimeError(message)
        if kind == "failed":
            return HangfreeError(message)
        return ValueError(message)

    def _deliver(self) -> None:
        global _result_thread_ended
        self._delivering.set()
        try:
            self._deliver_until_finished()
        finally:
            _result_thread_ended = time.monotonic()
            self._finished.set()

    def _deliver_until_finished(self) -> None:
        engine = self.engine
        while not self._stopping:
            try:
                outcomes = engine.next_outcomes(SLICE)
                events = engine.take_events()
            except BaseException:  # never let this thread die with callers waiting
                continue
            for kind, _trouble, pid, task_id, message in events:
                log.log(_EVENT_LEVELS.get(kind, logging.WARNING), "%s", message,
                        extra={"hangfree_event": kind, "pid": pid, "task_id": task_id})
            self._settle(outcomes)
            if not outcomes and not self._jobs and engine.is_finished():
                release(self._inherited)
                return
            if self._front is not None and self._front() is None:
                # Nobody can use this pool any more: a Pool stops its workers, an
                # executor lets its calls finish (as their __del__ do).
                self._front = None
                if self.owner == "Pool":
                    engine.terminate()
                else:
                    self.close()

    def _settle(self, outcomes: List[Tuple[int, int, str, Any, int, int]]) -> None:
        """Hands each engine outcome to its job. One lock for the whole batch: a stream
        of short calls brings hundreds at a time."""
        taken = []
        with self._lock:
            jobs = self._jobs
            for key, index, kind, data, first, count in outcomes:
                entry = jobs.get(key)
                if entry is None:
                    continue
                entry[3] -= count
                if entry[3] <= 0:
                    del jobs[key]
                taken.append((entry, index, kind, data, first, count))
        for entry, index, kind, data, first, count in taken:
            if isinstance(entry[0], _Packed):
                try:
                    entry[0].settle(index, kind, data, first, count)
                except BaseException as e:  # a user callback raised: report, keep serving
                    print(f"hangfree: exception in a result callback: {e!r}", file=sys.stderr)
                continue
            on_outcome, positions, label_of = entry[0], entry[1], entry[2]
            i = positions[index]
            if kind == "value":
                try:
                    ok, value = True, loads(data)
                except BaseException:
                    ok, value = decode(kind, data, lambda: label_of(i))
            else:
                ok, value = decode(kind, data, lambda: label_of(i), self.tb_class)
            try:
                on_outcome(i, ok, value)
            except BaseException as e:  # a user callback raised: report, keep serving
                print(f"hangfree: exception in a result callback: {e!r}", file=sys.stderr)

    def cancel(self, task_id: int) -> None:
        """Cancels a task; a running one has its worker stopped."""
        self.engine.cancel(task_id)

    def cancel_if_queued(self, task_id: int) -> bool:
        """Cancels a task only if no worker has it yet."""
        return self.engine.cancel_if_queued(task_id)

    def close(self) -> None:
        """Accepts no more calls. While a packed chunk is out (its items may have to run
        again one by one if its worker dies) or an imap is still reading its input, the
        engine stays open."""
        with self._lock:
            if self._holds > 0:
                self._close_deferred = True
                self._not_deferred.clear()
                return
        self.engine.close()

    def terminate(self) -> None:
        """Stops every worker; returns once they are gone (bounded by the grace period)."""
        if os.getpid() != self.pid:
            return
        self.engine.terminate()
        with self._lock:
            self._close_deferred = False
        self._not_deferred.set()
        self.engine.join(self.engine.shutdown_bound)

    def terminate_nowait(self) -> None:
        """Starts stopping every worker and returns at once (for ``__del__``)."""
        if os.getpid() == self.pid:
            self.engine.terminate()

    def join(self, timeout: Optional[float] = None) -> bool:
        """Waits for the workers to exit; returns whether they did within ``timeout``."""
        self.check_process()
        deadline = None if timeout is None else time.monotonic() + timeout
        # A close() deferred by chunks still out or an imap still reading its input
        # reaches the engine once they are done: wait for that first (in slices, for Ctrl-C).
        while not self._not_deferred.wait(SLICE if deadline is None else max(0.0, min(SLICE, deadline - time.monotonic()))):
            if deadline is not None and time.monotonic() >= deadline:
                return False
        done = self.engine.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        if done:
            self.stop_thread()
        return done

    def stop_thread(self, timeout: float = 1.0) -> None:
        self._stopping = True
        if self.engine.is_finished():
            release(self._inherited)
        if threading.current_thread() is not self._thread:
            # join() refuses a thread that has not run yet.
            if self._delivering.wait(timeout):
                self._thread.join(timeout)

    def stats(self) -> Dict[str, int]:
        """The engine's counters, tasks counted as the caller's calls (the engine counts
        a chunk as its items)."""
        return self.engine.stats()


class _NoWaitStart(threading.Event):
    """A thread's ``_started`` event whose first ``wait`` (the one in ``Thread.start``,
    3.9 to 3.13) returns at once: the result thread then starts while the caller goes on,
    instead of the caller waiting for the new thread to be scheduled and take the GIL
    (0.2 ms on an idle machine, 2-13 ms measured on a loaded one, in every pool's
    creation). Nothing needs the thread to run before the first outcome, which it
    delivers; until it runs it is in ``threading``'s list of threads being started, so
    ``threading.active_count()`` counts it. Later waits wait."""

    _first = True

    def wait(self, timeout: Optional[float] = None) -> bool:
        if self._first:
            self._first = False
            return self.is_set()
        return super().wait(timeout)


def _spans(n: int, chunksize: int, workers: int) -> Iterator[range]:
    """The chunks of a map of ``n`` items: ``chunksize`` items each (the documented
    "approximate size"), except that the first chunk of each worker is a quarter of it
    when chunks are large: every worker starts after a short pickle instead of a full
    chunk's (measured: a default-chunk map of 100,000 short calls 8 % sooner)."""
    start = 0
    first = chunksize // 4 if chunksize >= 64 else chunksize
    for _ in range(workers):
        if start >= n:
            return
        yield range(start, min(start + first, n))
        start += first
    for start in range(start, n, chunksize):
        yield range(start, min(start + chunksize, n))


class _Calls:
    """The calls of one submission: ``fn(*items[i], **kw)``, or ``fn(items[i], **kw)``
    when ``star`` is false (``map`` sends its items as they are)."""

    __slots__ = ("fn_bytes", "items", "kw", "star", "label_of")

    def __init__(self, fn_bytes: bytes, items: List[Any], kw: dict, star: bool, label_of: Callable[[int], str]):
        self.fn_bytes = fn_bytes
        self.items = items
        self.kw = kw
        self.star = star
        self.label_of = label_of

    def args(self, i: int) -> tuple:
        return self.items[i] if self.star else (self.items[i],)


class _Packed:
    """The chunks of one packed map call, and what to do with each part of a chunk's
    outcome (the engine answers a chunk a few items at a time)."""

    __slots__ = ("calls", "on_outcome", "chunks", "tb_class")

    def __init__(self, calls: _Calls, on_outcome: OnOutcome, chunks: List[range],
                 tb_class: Callable[[str], BaseException]):
        self.calls = calls
        self.on_outcome = on_outcome
        self.chunks = chunks
        self.tb_class = tb_class

    def settle(self, chunk: int, kind: str, data: Any, first: int, count: int) -> None:
        """Items ``first .. first + count`` of chunk ``chunk`` ended: ``data`` holds their
        values and failures (by position in the part), or one failure for all of them."""
        span = self.chunks[chunk][first:first + count]
        label_of = self.calls.label_of
        if kind == "value":
            try:
                values, failures = loads(data)
            except KeyboardInterrupt:
                raise
            except BaseException as e:
                # Every item of the part gets the error: none may wait forever.
                for i in span:
                    self.on_outcome(i, False, unreadable_result(e, label_of(i)))
                return
            many = getattr(self.on_outcome, "many", None)
            if many is not None and not failures:
                many(span.start, values)
            else:
                for j, (i, value) in enumerate(zip(span, values)):
                    if j in failures:
                        self.on_outcome(i, False, _raised(failures[j], label_of(i), self.tb_class))
                    else:
                        self.on_outcome(i, True, value)
        else:
            for i in span:
                self.on_outcome(i, *decode(kind, data, lambda: label_of(i), self.tb_class))


class _Stopped(BaseException):
    """SIGTERM while submitted calls finish at interpreter exit."""


def _executors_running() -> List[EngineClient]:
    return [c for c in list(_live) if c.pid == os.getpid() and c.owner == "ProcessPoolExecutor"
            and not c.engine.is_finished()]


def _wait_at_exit(clients: List[EngineClient], wait: Callable[[EngineClient], None]) -> None:
    """Runs ``wait(client)`` for each client. Ctrl-C or SIGTERM meanwhile stops every pool
    of this process at once, says so on stderr, and ends the program by that signal."""
    import signal

    if not clients:
        return
    previous = None
    if threading.current_thread() is threading.main_thread():
        def stop(signum: int, frame: Any) -> None:
            raise _Stopped

        previous = signal.signal(signal.SIGTERM, stop)
    try:
        for client in clients:
            wait(client)
    except (KeyboardInterrupt, _Stopped) as e:
        killed_by = signal.SIGINT if isinstance(e, KeyboardInterrupt) else signal.SIGTERM
        cause = "Ctrl-C" if killed_by == signal.SIGINT else "SIGTERM"
        print(f"hangfree: {cause} at interpreter exit: stopping the calls still running in "
              f"{len(clients)} ProcessPoolExecutor(s)", file=sys.stderr, flush=True)
        _terminate_all()
        # The workers are gone: end as the signal would have ended the program.
        signal.signal(killed_by, signal.SIG_DFL)
        os.kill(os.getpid(), killed_by)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _finish_given_calls() -> None:
    """threading's exit hook (where the stdlib's executor finishes its work, before any
    atexit handler of the program runs): the calls executors have been given so far run
    now. Executors stay open: a non-daemon thread may still use them."""

    def wait(client: EngineClient) -> None:
        with client._lock:
            given = set(client._jobs)
        while True:
            with client._lock:
                if given.isdisjoint(client._jobs):
                    return
            time.sleep(SLICE)

    _wait_at_exit(_executors_running(), wait)


def _shutdown_all() -> None:
    """Interpreter exit, once the non-daemon threads have finished (they may still be
    using a pool): a ``ProcessPoolExecutor`` still open runs the calls it was given (each
    bounded by its time limit, if it has one), then every pool is terminated, bounded by
    its grace period, and the result threads are stopped (see _stop_threads_for_exit),
    even when Ctrl-C cuts the rest short."""

    def finish(client: EngineClient) -> None:
        client.close()
        client.join()

    try:
        _wait_at_exit(_executors_running(), finish)
        _terminate_all()
        release_fork_servers()
    finally:
        _stop_threads_for_exit()


# How long, at most, the exit handler waits for the result threads to end or park.
EXIT_THREAD_WAIT = 2.0


def _stop_threads_for_exit() -> None:
    """The exit handler's last step: no thread of this package may run Python code once
    the interpreter finalizes. On CPython before 3.14 a thread that does is ended with
    pthread_exit, and when that happens inside a call of the extension (a finalizer run
    by a collection while the call builds its return value), the unwind through Rust
    frames crashes the process at exit (seen as a segfault on 3.9).

    The extension's gate is closed first: from then on any other thread that comes back
    from a wait in the engine parks there for good, without the GIL. Then each result
    thread, told to stop, is waited for until it has ended or parked; bounded by
    ``EXIT_THREAD_WAIT`` (only a result callback that does not return can hold one up).
    The threads of pools half-made by Ctrl-C are among them (see EngineClient)."""
    clients = [c for c in list(_live) if c.pid == os.getpid()]
    for client in clients:
        client._stopping = True
    _core.close_gate()
    deadline = time.monotonic() + EXIT_THREAD_WAIT
    while time.monotonic() < deadline:
        try:
            parked = set(_core.parked_threads())
            # A thread in threading's _limbo was started and has not run yet (start() does
            # not wait for it, see _NoWaitStart): not alive, yet it will run.
            limbo = getattr(threading, "_limbo", {})
            if all(c._finished.is_set() or c._thread.native_id in parked
                   or (not c._thread.is_alive() and c._thread not in limbo)
                   for c in clients):
                return
            time.sleep(0.002)
        except KeyboardInterrupt:
            # A second Ctrl-C at exit: the program ends anyway, and only once this is done.
            pass


def release_fork_servers() -> int:
    """Stops the idle fork servers that pools of this process kept for later pools.

    A pool's fork server (an interpreter that imported the main script and ``preload``)
    outlives the pool by up to ``keep_fork_server`` seconds (see ``hangfree._core.defaults()``),
    so that the next pool made with the same interpreter, script, working directory and
    environment forks its workers at once instead of starting one. A kept server forks
    nothing and also dies with this process. After this call no process of an ended pool
    is left; pools that end before the next one starts keep none. Returns how many
    servers were stopped.
    """
    return _core.release_fork_servers()


def _terminate_all() -> None:
    for client in list(_live):
        if client.pid != os.getpid():
            continue
        try:
            client.terminate()
            # Told to stop, not waited for: _stop_threads_for_exit waits for them all at once.
            client.stop_thread(timeout=0)
        except Exception:
            pass


# threading's exit hook runs first, before the interpreter waits for non-daemon threads;
# atexit after that, while daemon threads (the result threads) still run;
# multiprocessing's own exit handler, registered when it was imported (before this
# module), runs after this one.
import atexit  # noqa: E402

atexit.register(_shutdown_all)
_register = getattr(threading, "_register_atexit", None)
if _register is not None:
    _register(_finish_given_calls)
