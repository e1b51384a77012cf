"""The worker process: ``python -c "...; hangfree._worker.main()" PREPARATION``.

It starts as a child spawned by multiprocessing would: PREPARATION (JSON, from
``hangfree._client.preparation``) gives sys.path, sys.argv, the working directory and the
main script, which is imported as ``__mp_main__`` (``multiprocessing.spawn.prepare``).
In the pool's fork server that happens once, before any worker is forked, so forked
workers start with the script and its imports loaded.

It then speaks the hangfree protocol (see PROTOCOL.md) through the engine's own Rust code
in ``hangfree._core.WorkerChannel``: receives the Init frame (the caller's authkey, the
initializer), then runs one task at a time and answers each with its value or its
exception.
"""

from __future__ import annotations

import functools
import itertools
import os
import signal
import struct
import sys
# Annotations only (strings here); importing typing would cost every worker start ~9 ms.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable, Dict, Optional

from hangfree import _core
from hangfree._pickling import dumps, dumps_payload, dumps_result, loads


# Workers start often (after every crash, every max_tasks_per_child calls): modules only
# needed when something fails (traceback, multiprocessing) are imported then.


def _encoding_error(exc: BaseException, value: Any) -> BaseException:
    """The error for a result that cannot be pickled: multiprocessing.Pool's
    MaybeEncodingError, or the pickling error itself in an executor's call, as
    concurrent.futures reports it."""
    if _for_executor:
        return exc
    from multiprocessing.pool import MaybeEncodingError

    return MaybeEncodingError(exc, value)


def _describe(exc: BaseException, input_error: bool = False, during: Any = None) -> bytes:
    """The Raised payload: the exception itself when it pickles, its text otherwise."""
    import traceback

    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    summary = f"{type(exc).__name__}: {exc}"
    extra: Dict[str, Any] = {"input_error": True} if input_error else {}
    if during:
        extra["during"] = during
    try:
        return dumps({"exc": exc, "traceback": tb, "summary": summary, **extra})
    except Exception as e:
        note = f"(the exception could not be pickled: {type(e).__name__}: {e})"
        return dumps({"exc": None, "traceback": tb, "summary": summary, "note": note, **extra})


# The task running now, for the stack-dump handler (0 between tasks).
_current_task = 0
# Whether this works for an executor (sys.exit() in a call and an unpicklable result are
# the call's exceptions, as in concurrent.futures) or a Pool (sys.exit() ends the worker;
# MaybeEncodingError, as in multiprocessing).
_for_executor = False


def _answer_stack_request(ch: Any) -> None:
    """On the engine's stack signal (SIGUSR1, sent by the pool when a task passes its
    time limit) send where the
    running task is. Python runs the handler between bytecodes, so a task stuck inside a
    C call cannot answer; the pool then says so and stops the worker on time anyway."""

    def handler(signum: int, frame: Any) -> None:
        import traceback

        if _part is not None:
            # The worker is stopped after this: what its chunk finished is sent first.
            _part.send()
        if _current_task and frame is not None:
            stack = traceback.extract_stack(frame)
            # Only the task's own frames: drop this module's loop around it.
            ours = [i for i, f in enumerate(stack) if f.filename == __file__]
            if ours:
                stack = stack[ours[-1] + 1 :] if ours[-1] + 1 < len(stack) else stack
            text = "".join(traceback.format_list(stack))
            ch.send(_core.KIND_STACK, _current_task, text.encode("utf-8", "replace"))

    signal.signal(_core.STACK_DUMP_SIGNAL, handler)


def _leave(code: int) -> None:
    """Ends this worker as multiprocessing ends a forked child: waits for the threads
    its tasks started, runs the exit handlers (``atexit``, multiprocessing's finalizers),
    flushes stdout and stderr, then ``os._exit``. Skipping the interpreter's own teardown
    is what makes ``close(); join()`` quick after tasks imported heavy libraries (with
    scikit-learn loaded: 10 ms instead of 250-600 ms)."""
    try:
        if "threading" in sys.modules:
            sys.modules["threading"]._shutdown()
        import atexit

        atexit._run_exitfuncs()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except BaseException:
                pass
        os._exit(code)


def _send_before_exit() -> None:
    """A task that ends its worker with ``os._exit`` (as tests of crash handling do)
    first lets the chunk's finished items be sent: their results are kept, not lost.
    Only in this process: a child the task forked shares the channel but not the chunk."""
    real_exit = os._exit
    me = os.getpid()

    def _exit(status: int) -> None:
        if _part is not None and os.getpid() == me:
            try:
                _part.send()
            except BaseException:
                pass
        real_exit(status)

    functools.update_wrapper(_exit, real_exit)
    os._exit = _exit


# The variables that make OpenBLAS start without threads of its own (GOTO_NUM_THREADS is
# its older name).
_BLAS_THREADS = ("OPENBLAS_NUM_THREADS", "GOTO_NUM_THREADS")

# In the fork server, how many workers it has forked; in a forked worker, its number.
_forks = 0


def _count_fork() -> None:
    global _forks
    _forks += 1


# What importing the main script raised, if it did: every worker then reports it at Init.
_prepare_error: Any = None
# What the worker was doing when that happened (for the error's message).
_prepare_during: Any = None


def _prepare(data: Dict[str, Any], setup: bool = True, main: bool = True) -> None:
    """Does what a child spawned by multiprocessing does before it runs anything: takes
    the caller's sys.path, sys.argv and working directory (``setup``) and imports its main
    script as ``__mp_main__`` (``main``), with ``current_process()._inheriting`` set
    meanwhile, so a script without an ``if __name__ == "__main__":`` guard that makes a
    pool gets multiprocessing's error instead of a pool of pools."""
    global _prepare_error, _prepare_during
    from multiprocessing import process, spawn

    me = process.current_process()
    me._inheriting = True
    try:
        if setup:
            spawn.prepare({k: v for k, v in data.items() if not k.startswith("init_main_") and k != "preload"})
        if main:
            main_name = data.get("init_main_from_path") or data.get("init_main_from_name")
            _prepare_during = f"importing the main script {main_name} in the worker"
            _import_main(data.get("init_main_from_name"), data.get("init_main_from_path"))
            # The pool's `preload`: imported with the script, so that a fork server
            # imports them once for all its workers.
            for name in data.get("preload", ()):
                _prepare_during = f"importing {name} (preload) in the worker"
                __import__(name)
    except BaseException as e:  # reported as the pool's start-up failure, at Init
        _prepare_error = e
    finally:
        me._inheriting = False


def _threads() -> int:
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return 1


def _import_main(name: Any, path: Any) -> None:
    """Imports the caller's main module as ``__mp_main__``, which also stands as this
    process's ``__main__``, as multiprocessing's spawn does (``-m`` package mains and
    IPython excepted, as there). Unlike spawn's ``runpy``, the module's own dict is the
    globals of its functions, so what one function of it sets (an initializer's
    ``global``) every other sees."""
    import importlib.machinery
    import importlib.util
    import types

    spec = None
    if name is not None:
        if name == "__main__" or name.endswith(".__main__"):
            return
        spec = importlib.util.find_spec(name)
        if spec is None or not spec.origin or not os.path.isfile(spec.origin):
            return
        path = spec.origin
    elif path is None or os.path.splitext(os.path.basename(path))[0] == "ipython":
        return
    with open(path, "rb") as f:
        if path.endswith(".pyc"):
            import pkgutil

            code = pkgutil.read_code(f)
            if code is None:
                raise ImportError(f"{path} is compiled for another Python version")
        else:
            code = compile(f.read(), path, "exec")
    module = types.ModuleType("__mp_main__")
    module.__file__ = path
    module.__spec__ = spec
    module.__package__ = spec.parent if spec is not None else None
    module.__loader__ = importlib.machinery.SourceFileLoader("__mp_main__", path)
    previous = sys.modules.get("__main__")
    sys.modules["__main__"] = sys.modules["__mp_main__"] = module
    try:
        exec(code, module.__dict__)
    except BaseException:
        sys.modules["__main__"] = previous  # type: ignore[assignment]
        del sys.modules["__mp_main__"]
        raise


def main() -> int:
    import json

    preparation = json.loads(sys.argv[1]) if len(sys.argv) > 1 else {}
    server = os.environ.get("HANGFREE_FORK_SERVER") == "1"
    # Whether each forked worker imports the script itself (see below).
    main_after_fork = preparation.pop("main_after_fork", False)
    if server:
        # Once for every worker this server will fork, unless that cannot be. The
        # server's channel is its stdin until it serves: the script sees /dev/null there
        # meanwhile, as a worker does, so a script that reads stdin cannot eat requests.
        channel = os.dup(0)
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.close(devnull)
        # OpenBLAS starts its threads when it is loaded (numpy's import), and a process
        # with threads cannot be forked: loaded with one thread, it lets the server keep
        # the script's imports, which every worker then inherits instead of paying for
        # them again (numpy 80 ms, scikit-learn a second). Each worker's BLAS then runs on
        # one thread, as joblib's workers do: a pool already fills the CPUs. Where the
        # caller set the variable, its value stands.
        pinned = [] if main_after_fork else [v for v in _BLAS_THREADS if v not in os.environ]
        for v in pinned:
            os.environ[v] = "1"
        try:
            _prepare(preparation, main=not main_after_fork)
        finally:
            os.dup2(channel, 0)
            os.close(channel)
            for v in pinned:
                os.environ.pop(v, None)
        argv = _own_argv()
        if not main_after_fork and _threads() > 1 and argv:
            # The script's imports started threads (OpenBLAS does, for numpy), and a
            # fork copies only the calling thread. Start over as a server that has not
            # imported the script, whose workers import it after the fork (as the
            # stdlib's forkserver children do): same process, same channel.
            preparation["main_after_fork"] = True
            sys.stdout.flush()
            sys.stderr.flush()
            os.execv(sys.executable, [*argv[:-1], json.dumps(preparation)])
        # Counted before each fork (the binding runs Python's fork hooks around it), so
        # each forked worker has a number of its own: 1, 2, 3, ... for the pool's life.
        os.register_at_fork(before=_count_fork)
    try:
        # In the pool's fork server this returns only in each forked worker.
        ch = _core.WorkerChannel.from_stdin()
    except OSError as e:
        print(f"hangfree worker: {e}", file=sys.stderr)
        return 70
    # The engine took it out of the C environment; os.environ is a copy made at start.
    os.environ.pop("HANGFREE_FORK_SERVER", None)
    if not server:
        _prepare(preparation)
    elif main_after_fork:
        _prepare(preparation, setup=False)
    _answer_stack_request(ch)
    _send_before_exit()
    try:
        return _serve(ch, preparation)
    except SystemExit as e:
        # sys.exit() in a Pool task ends this worker (see `_task`): at once, as a forked
        # child ends, so the pool sees the exit with its code rather than a channel that
        # closed while the interpreter was still tearing itself down.
        code = e.code
        if code is not None and not isinstance(code, int):
            print(code, file=sys.stderr)
        _leave(1 if code is not None and not isinstance(code, int) else (code or 0) & 0xFF)
        raise


def _own_argv() -> list:
    """This interpreter's command line (``sys.orig_argv`` from 3.10; /proc before)."""
    argv = getattr(sys, "orig_argv", None)
    if argv:
        return list(argv)
    try:
        with open("/proc/self/cmdline", "rb") as f:
            return [os.fsdecode(a) for a in f.read().split(b"\0")[:-1]]
    except OSError:
        return []


def _serve(ch: Any, preparation: Dict[str, Any]) -> int:
    """Answers the pool's frames until it says to stop; returns the exit status."""
    functions: Dict[bytes, Callable[..., Any]] = {}
    while True:
        frame = ch.recv()
        if frame is None:
            # The channel ended without a Shutdown frame: the pool is gone (or stopping
            # this worker). Take the children this worker's tasks started along.
            _core.kill_own_group()
        kind, task_id, payload = frame
        if kind == _core.KIND_INIT:
            try:
                _init(ch, payload)
            except BaseException as e:  # the initializer's failure is the pool's to report
                during = None
                if e is _prepare_error:
                    during = _prepare_during
                ch.send(_core.KIND_INIT_FAILED, 0, _describe(e, during=during))
                return 1
            ch.send(_core.KIND_READY, 0, b"")
        elif kind == _core.KIND_TASK:
            _task(ch, task_id, payload, functions)
        elif kind == _core.KIND_CHUNK:
            _chunk(ch, task_id, payload, functions)
        elif kind == _core.KIND_SHUTDOWN:
            _leave(0)


def _in_main(fn: Any) -> Any:
    """A function of the caller's ``__main__`` that came by value (a lambda, a closure, a
    function of the main block), moved into this worker's ``__main__`` (the imported
    script, or an empty module): by value it has a globals dict of its own, so what the
    initializer sets, or another such function, would be invisible to it. Names it brought
    that the worker's ``__main__`` lacks are added there, as under fork they would be
    there; names the worker already has keep the worker's value."""
    import types

    if not isinstance(fn, types.FunctionType) or fn.__module__ != "__main__":
        return fn
    main = sys.modules["__main__"].__dict__
    brought = fn.__globals__
    if brought is main:
        return fn
    moved: Dict[int, Any] = {}

    def move(f: Any) -> Any:
        if id(f) not in moved:
            g = types.FunctionType(f.__code__, main, f.__name__, f.__defaults__, f.__closure__)
            g.__kwdefaults__ = f.__kwdefaults__
            g.__qualname__ = f.__qualname__
            g.__module__ = f.__module__
            g.__doc__ = f.__doc__
            g.__dict__.update(f.__dict__)
            moved[id(f)] = g
        return moved[id(f)]

    for name, value in list(brought.items()):
        if name not in main:
            shares = isinstance(value, types.FunctionType) and value.__globals__ is brought
            main[name] = move(value) if shares else value
    return move(fn)


def _init(ch: Any, payload: bytes) -> None:
    global _for_executor
    if not payload:
        return
    info = loads(payload)
    from multiprocessing import process

    me = process.current_process()
    # Before anything is unpickled: Manager proxies and the descriptors of objects in
    # initargs are fetched from the caller, which checks this key.
    me.authkey = info["authkey"]
    if _forks:
        # As a stdlib pool's workers are numbered (ForkPoolWorker-3, _identity (3,)),
        # which programs use to tell workers apart (a GPU or a progress bar each).
        me._identity = (_forks,)
    me.name = f"{info.get('name', 'HangfreePoolWorker')}-{_forks or os.getpid()}"
    try:
        # multiprocessing.parent_process(), as in a spawned child: its sentinel (a pidfd
        # of the pool's process) is ready once that process is gone.
        parent = os.getppid()
        process._parent_process = process._ParentProcess(info.get("parent_name", "MainProcess"), parent,
                                                         os.pidfd_open(parent))
    except (AttributeError, OSError):
        pass
    _for_executor = info.get("for_executor", False)
    if _prepare_error is not None:
        raise _prepare_error
    init_call = info.get("init_call")
    if init_call is not None:
        fn_bytes, args_bytes = init_call
        init = _in_main(loads(fn_bytes))
        # As in a spawned child: objects passed by inheritance (locks, Values, queues,
        # proxies) are rebuilt while the process counts as inheriting.
        me._inheriting = True
        try:
            initargs = loads(args_bytes)
        finally:
            me._inheriting = False
        init(*initargs)


def _function(fn_bytes: bytes, functions: Dict[bytes, Callable[..., Any]]) -> Callable[..., Any]:
    fn = functions.get(fn_bytes)
    if fn is None:
        fn = functions[fn_bytes] = _in_main(loads(fn_bytes))
        if len(functions) > 64:
            functions.pop(next(iter(functions)))
    return fn


def _unloadable(ch: Any, task_id: int, e: BaseException) -> None:
    err = RuntimeError(f"cannot unpickle the task's function or arguments: {type(e).__name__}: {e}")
    err.__cause__ = e
    # `input_error` lets the caller name the task in the error it raises.
    ch.send(_core.KIND_RAISED, task_id, _describe(err, input_error=True))


def _task(ch: Any, task_id: int, payload: bytes, functions: Dict[bytes, Callable[..., Any]]) -> None:
    try:
        fn_bytes, args, kwargs = loads(payload)
        fn = _function(fn_bytes, functions)
    except BaseException as e:
        _unloadable(ch, task_id, e)
        return
    global _current_task
    _current_task = task_id
    try:
        result = fn(*args, **kwargs)
    except SystemExit as e:
        # sys.exit() in a Pool task ends this worker, as in multiprocessing; the pool
        # reports it as a lost worker naming the exit code instead of hanging. In an
        # executor's call it is the call's exception, as in concurrent.futures.
        if not _for_executor:
            raise
        _current_task = 0
        ch.send(_core.KIND_RAISED, task_id, _describe(e))
        return
    except BaseException as e:
        _current_task = 0
        ch.send(_core.KIND_RAISED, task_id, _describe(e))
        return
    _current_task = 0
    try:
        data = dumps_result(result)
    except BaseException as e:
        ch.send(_core.KIND_RAISED, task_id, _describe(_encoding_error(e, result)))
        return
    ch.send(_core.KIND_VALUE, task_id, data)


def _chunk(ch: Any, task_id: int, payload: bytes, functions: Dict[bytes, Callable[..., Any]]) -> None:
    """Runs items ``start..`` of a chunk (the engine's trailer says which) and answers
    with their outcomes a few at a time (see `_Part`)."""
    global _current_task, _part
    start, count = struct.unpack_from("<II", payload, len(payload) - 8)
    try:
        fn_bytes, items, kwargs, star = loads(payload, len(payload) - 8)
        fn = _function(fn_bytes, functions)
        if len(items) != count:
            raise ValueError(f"the chunk has {len(items)} items, the engine says {count}")
    except BaseException as e:
        _unloadable(ch, task_id, e)
        return
    call = functools.partial(fn, **kwargs) if kwargs else fn
    apply = itertools.starmap if star else map
    items_left = ch.items(items, start)
    part = _part = _Part(ch, task_id, start)
    _current_task = task_id
    try:
        # The loop is the whole cost of a large map: run it in C. list.extend keeps what
        # an iterator gave before it raised, so a failure costs only its own item; the
        # loop resumes after it. `items_left` stops it to send what finished (every
        # 5 ms), and for good once every item has started.
        while True:
            try:
                part.values.extend(apply(call, items_left))
            except BaseException as e:
                if isinstance(e, SystemExit) and not _for_executor:
                    part.send()
                    raise
                part.failures[len(part.values)] = _describe(e)
                part.values.append(None)
                continue
            part.send(done=True)
            items_left.flushed()
            if items_left.revoked:
                # The pool is stopping this worker and gave the other items to others.
                _core.kill_own_group()
            if items_left.done:
                return
    finally:
        _current_task = 0
        _part = None


class _Part:
    """The outcomes of a chunk's items that finished and are not sent yet. ``send`` may
    also run in the stack-dump handler, in the middle of the loop's ``extend`` into
    ``values``: it then sends what is new without touching the list."""

    __slots__ = ("ch", "task_id", "first", "values", "failures", "sent", "sending")

    def __init__(self, ch: Any, task_id: int, first: int):
        self.ch = ch
        self.task_id = task_id
        self.first = first  # the chunk's index of values[0]
        self.values: list = []
        self.failures: Dict[int, bytes] = {}
        self.sent = 0  # values already sent
        self.sending = False

    def send(self, done: bool = False) -> None:
        """Sends the finished items not sent yet; ``done``: the loop is out of
        ``extend``, so the list can be emptied."""
        if self.sending:
            return
        self.sending = True
        try:
            values, sent = self.values, self.sent
            if len(values) > sent:
                # Out of the loop with nothing sent yet (most chunks), the list itself
                # is what goes: a copy cost the worker ~10 % of a cheap map.
                new = values if done and not sent else values[sent:]
                failures = {j - sent: f for j, f in self.failures.items() if j >= sent}
                self.ch.send(_core.KIND_ITEMS, self.task_id, _items_payload(new, failures, self.first + sent))
                self.sent = len(values)
            if done:
                self.first += len(values)
                values.clear()
                self.failures.clear()
                self.sent = 0
        finally:
            self.sending = False


def _items_payload(values: list, failures: Dict[int, bytes], first: int) -> list:
    """An Items frame's payload: the pickled ``(values, failures)`` and the trailer."""
    try:
        data = dumps_payload((values, failures))
    except BaseException:
        # Some value does not pickle: find it, and fail only that item.
        values = list(values)
        for j, value in enumerate(values):
            try:
                dumps(value)
            except BaseException as e:
                values[j] = None
                failures[j] = _describe(_encoding_error(e, value))
        data = dumps_payload((values, failures))
    parts = list(data) if isinstance(data, list) else [data]
    parts.append(struct.pack("<III", first, len(values), len(failures)))
    return parts


# The chunk running now, for the stack-dump handler and os._exit (None between chunks).
_part: Optional[_Part] = None


if __name__ == "__main__":
    sys.exit(main())
