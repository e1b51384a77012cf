"""The worker process: ``python -m hangfree._worker``.

It speaks the hangfree protocol (see PROTOCOL.md) through the engine's own Rust code in
``hangfree._core.WorkerChannel``: receives the Init frame (sys.path, initializer), then
runs one task at a time and answers each with its value or its exception.
"""

from __future__ import annotations

import functools
import itertools
import os
import signal
import sys
# Annotations only (strings here); importing typing would cost every worker start ~9 ms.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable, Dict

from hangfree import _core
from hangfree._pickling import dumps, dumps_payload, dumps_result, loads


# Workers start often (after every crash, every max_tasks_per_child calls): modules only
# needed when something fails (traceback, multiprocessing) are imported then.


def _encoding_error(exc: BaseException, value: Any) -> BaseException:
    """multiprocessing's error for a result that cannot be pickled."""
    from multiprocessing.pool import MaybeEncodingError

    return MaybeEncodingError(exc, value)


def _describe(exc: BaseException, input_error: bool = False) -> bytes:
    """The Raised payload: the exception itself when it pickles, its text otherwise."""
    import traceback

    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    summary = f"{type(exc).__name__}: {exc}"
    extra = {"input_error": True} if input_error else {}
    try:
        return dumps({"exc": exc, "traceback": tb, "summary": summary, **extra})
    except Exception as e:
        note = f"(the exception could not be pickled: {type(e).__name__}: {e})"
        return dumps({"exc": None, "traceback": tb, "summary": summary, "note": note, **extra})


# The task running now, for the stack-dump handler (0 between tasks).
_current_task = 0


def _answer_stack_request(ch: Any) -> None:
    """On SIGUSR1 (sent by the pool when a task passes its time limit) send where the
    running task is. Python runs the handler between bytecodes, so a task stuck inside a
    C call cannot answer; the pool then says so and stops the worker on time anyway."""

    def handler(signum: int, frame: Any) -> None:
        import traceback

        if _current_task and frame is not None:
            stack = traceback.extract_stack(frame)
            # Only the task's own frames: drop this module's loop around it.
            ours = [i for i, f in enumerate(stack) if f.filename == __file__]
            if ours:
                stack = stack[ours[-1] + 1 :] if ours[-1] + 1 < len(stack) else stack
            text = "".join(traceback.format_list(stack))
            ch.send(_core.KIND_STACK, _current_task, text.encode("utf-8", "replace"))

    signal.signal(signal.SIGUSR1, handler)


def main() -> int:
    try:
        # In the pool's fork server this returns only in each forked worker.
        ch = _core.WorkerChannel.from_stdin()
    except OSError as e:
        print(f"hangfree worker: {e}", file=sys.stderr)
        return 70
    # The engine took it out of the C environment; os.environ is a copy made at start.
    os.environ.pop("HANGFREE_FORK_SERVER", None)
    _answer_stack_request(ch)
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
                ch.send(_core.KIND_INIT_FAILED, 0, _describe(e))
                return 1
            ch.send(_core.KIND_READY, 0, b"")
        elif kind == _core.KIND_TASK:
            _task(ch, task_id, payload, functions)
        elif kind == _core.KIND_SHUTDOWN:
            return 0


def _init(ch: Any, payload: bytes) -> None:
    if not payload:
        return
    info = loads(payload)
    sys.path[:] = info.get("sys_path", sys.path)
    if info.get("cwd"):
        try:
            os.chdir(info["cwd"])
        except OSError:
            pass
    # Unpickled only now, with the caller's sys.path and cwd in place.
    init_call = info.get("init_call")
    if init_call is not None:
        init, initargs = loads(init_call)
        init(*initargs)
        return
    init = info.get("initializer")
    if init is not None:
        init(*info.get("initargs", ()))


def _task(ch: Any, task_id: int, payload: bytes, functions: Dict[bytes, Callable[..., Any]]) -> None:
    try:
        call = loads(payload)
        fn_bytes, args, kwargs = call[:3]
        fn = functions.get(fn_bytes)
        if fn is None:
            fn = functions[fn_bytes] = loads(fn_bytes)
            if len(functions) > 64:
                functions.pop(next(iter(functions)))
    except BaseException as e:
        err = RuntimeError(f"cannot unpickle the task's function or arguments: {type(e).__name__}: {e}")
        err.__cause__ = e
        # `input_error` lets the caller name the task in the error it raises.
        ch.send(_core.KIND_RAISED, task_id, _describe(err, input_error=True))
        return
    global _current_task
    _current_task = task_id
    if len(call) == 4:
        _run_chunk(ch, task_id, fn, args, kwargs, call[3])
        _current_task = 0
        return
    try:
        result = fn(*args, **kwargs)
    except SystemExit:
        # sys.exit() in a task ends this worker, as in multiprocessing; the pool reports
        # it as a lost worker naming the exit code instead of hanging.
        raise
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


def _run_chunk(ch: Any, task_id: int, fn: Callable[..., Any], items: list, kwargs: dict, star: bool) -> None:
    """Runs a packed chunk: every item in order, each outcome kept, one answer for all:
    the list of values (None where an item failed) and the failures by position. Items
    are argument tuples, or single arguments when ``star`` is false."""
    values: list = []
    failures: Dict[int, bytes] = {}
    call = functools.partial(fn, **kwargs) if kwargs else fn
    apply = itertools.starmap if star else map
    start = 0
    # The loop is the whole cost of a large map: run it in C. list.extend keeps what an
    # iterator gave before it raised, so a failure costs only its own item; the loop
    # resumes after it.
    while start < len(items):
        try:
            values.extend(apply(call, itertools.islice(items, start, None) if start else items))
            break
        except SystemExit:
            raise
        except BaseException as e:
            failures[len(values)] = _describe(e)
            values.append(None)
            start = len(values)
    try:
        data = dumps_payload((values, failures))
    except BaseException:
        # Some value does not pickle: find it, and fail only that item.
        for j, value in enumerate(values):
            try:
                dumps(value)
            except BaseException as e:
                values[j] = None
                failures[j] = _describe(_encoding_error(e, value))
        data = dumps_payload((values, failures))
    ch.send(_core.KIND_VALUE, task_id, data)


if __name__ == "__main__":
    sys.exit(main())
