"""Every way a task can fail ends in a clear error on that task; the pool goes on."""

from __future__ import annotations

import multiprocessing
import multiprocessing.pool
import os
import signal
import sys
import threading
import time
from concurrent.futures.process import BrokenProcessPool

import pytest

import hangfree
import helpers
import tasks


@pytest.fixture
def pool():
    with hangfree.Pool(2) as p:
        yield p


def assert_pool_works(p):
    assert p.map(tasks.square, range(6)) == [0, 1, 4, 9, 16, 25]


# ----- a worker dies ----------------------------------------------------------------

def test_segfault_fails_only_its_task(pool):
    t0 = time.monotonic()
    with pytest.raises(hangfree.WorkerLostError) as ei:
        pool.apply(tasks.segfault, ("boom",))
    assert time.monotonic() - t0 < 10
    e = ei.value
    assert e.signal == signal.SIGSEGV and e.signal_name == "SIGSEGV" and e.exitcode is None
    assert "SIGSEGV" in str(e) and "segfault('boom')" in str(e)
    assert e.task == "segfault('boom')" and e.pid and e.pid != os.getpid()
    assert isinstance(e, hangfree.HangfreeError) and isinstance(e, BrokenProcessPool)
    assert not helpers.alive(e.pid)
    assert_pool_works(pool)


def test_os_exit_names_the_exit_code(pool):
    with pytest.raises(hangfree.WorkerLostError) as ei:
        pool.apply(tasks.os_exit, (3,))
    assert ei.value.exitcode == 3 and ei.value.signal is None
    assert "exit code 3" in str(ei.value) and "os_exit(3)" in str(ei.value)
    assert_pool_works(pool)


@pytest.mark.parametrize("arg,code", [(1, 1), (0, 0), (5, 5), ("message", 1)])
def test_sys_exit_in_a_task_is_a_lost_worker(pool, arg, code):
    with pytest.raises(hangfree.WorkerLostError) as ei:
        pool.apply(tasks.sys_exit, (arg,))
    assert ei.value.exitcode == code
    assert f"exit code {code}" in str(ei.value) and "sys_exit(" in str(ei.value)
    assert_pool_works(pool)


def test_stderr_tail_is_in_the_error(pool):
    with pytest.raises(hangfree.WorkerLostError) as ei:
        pool.apply(tasks.stderr_then_exit, ("last words of the worker", 9))
    assert "last words of the worker" in ei.value.stderr_tail
    assert "last words of the worker" in str(ei.value)


def test_sigkill_from_outside(pool, tmp_path):
    r = pool.apply_async(tasks.announce_and_sleep, (str(tmp_path), 60))
    (pid,) = helpers.pids_in(tmp_path) if helpers.wait_files(tmp_path, 1, 15) else ()
    t0 = time.monotonic()
    os.kill(pid, signal.SIGKILL)  # a worker of our pool
    with pytest.raises(hangfree.WorkerLostError) as ei:
        r.get(timeout=10)
    assert time.monotonic() - t0 < 2.0, "death must be noticed at once"
    assert ei.value.pid == pid and ei.value.signal_name == "SIGKILL"
    assert "SIGKILL" in str(ei.value) and "announce_and_sleep(" in str(ei.value)
    assert_pool_works(pool)


def test_worker_death_in_map_fails_the_map_with_the_task_named(pool):
    t0 = time.monotonic()
    with pytest.raises(hangfree.WorkerLostError) as ei:
        pool.map(tasks.die_every_10th, range(1, 25), chunksize=3)
    assert time.monotonic() - t0 < 15
    assert "die_every_10th(10)" in str(ei.value) or "die_every_10th(20)" in str(ei.value)
    assert ei.value.exitcode == 7


def test_imap_yields_the_others_around_a_death(pool):
    it = pool.imap(tasks.die_every_10th, range(5, 15), chunksize=4)
    out = []
    for _ in range(10):
        try:
            out.append(next(it))
        except hangfree.WorkerLostError as e:
            out.append(("lost", e.exitcode))
    assert out == [25, 36, 49, 64, 81, ("lost", 7), 121, 144, 169, 196]


def test_grandchild_of_a_dead_worker_is_killed(pool, tmp_path):
    with pytest.raises(hangfree.WorkerLostError):
        pool.apply(tasks.grandchild_and_exit, (str(tmp_path), 4))
    (name,) = [p.name for p in helpers.wait_files(tmp_path, 1, 5)]
    grandchild = int(name.split("-")[1])
    assert not helpers.wait_gone([grandchild], 2.0), "the dead worker's child must be swept"


def test_a_thousand_tasks_every_tenth_kills_its_worker():
    t0 = time.monotonic()
    with hangfree.Pool(4) as p:
        results = [p.apply_async(tasks.die_every_10th, (i,)) for i in range(1000)]
        values, lost = {}, []
        for i, r in enumerate(results):
            try:
                values[i] = r.get(timeout=60)
            except hangfree.WorkerLostError as e:
                lost.append((i, e))
        stats = p.stats()
    elapsed = time.monotonic() - t0
    assert len(values) == 900 and len(lost) == 100
    assert all(values[i] == i * i for i in values)
    assert sorted(i for i, _ in lost) == list(range(0, 1000, 10))
    assert all(e.exitcode == 7 and f"die_every_10th({i})" in str(e) for i, e in lost)
    assert stats["worker_lost"] == 100 and stats["values"] == 900
    assert elapsed < 50, f"took {elapsed:.1f} s"


# ----- timeouts ------------------------------------------------------------------

def test_task_timeout_stops_only_the_late_task(tmp_path):
    with hangfree.Pool(2, task_timeout=0.5, grace=0.3) as p:
        t0 = time.monotonic()
        late = p.apply_async(tasks.ignore_sigterm_and_sleep, (str(tmp_path), 60))
        fine = p.apply_async(tasks.sleep_return, (0.1, "ok"))
        with pytest.raises(hangfree.TaskTimeoutError) as ei:
            late.get(timeout=20)
        assert time.monotonic() - t0 < 0.5 + 3.0
        assert fine.get(10) == "ok"
        e = ei.value
        assert isinstance(e, multiprocessing.TimeoutError) and isinstance(e, hangfree.HangfreeError)
        assert e.limit == pytest.approx(0.5) and e.pid
        assert "ignore_sigterm_and_sleep(" in str(e)
        assert not helpers.wait_gone([e.pid], 0.3 + 3.0)
        assert_pool_works(p)


def test_task_timeout_per_call(pool, tmp_path):
    t0 = time.monotonic()
    with pytest.raises(hangfree.TaskTimeoutError):
        pool.apply(tasks.sleep_return, (60,), task_timeout=0.3)
    with pytest.raises(hangfree.TaskTimeoutError):
        pool.map(tasks.sleep_return, [0, 60], task_timeout=0.3)
    with pytest.raises(hangfree.TaskTimeoutError):
        pool.starmap(tasks.sleep_return, [(60,)], task_timeout=0.3)
    with pytest.raises(hangfree.TaskTimeoutError):
        pool.apply_async(tasks.sleep_return, (60,), task_timeout=0.3).get(20)
    with pytest.raises(hangfree.TaskTimeoutError):
        pool.map_async(tasks.sleep_return, [60], task_timeout=0.3).get(20)
    with pytest.raises(hangfree.TaskTimeoutError):
        pool.starmap_async(tasks.sleep_return, [(60,)], task_timeout=0.3).get(20)
    with pytest.raises(hangfree.TaskTimeoutError):
        next(pool.imap(tasks.sleep_return, [60], task_timeout=0.3))
    with pytest.raises(hangfree.TaskTimeoutError):
        next(pool.imap_unordered(tasks.sleep_return, [60], task_timeout=0.3))
    assert time.monotonic() - t0 < 8 * 0.3 + 15
    assert pool.apply(tasks.sleep_return, (0.2, "in time"), task_timeout=5) == "in time"


def test_task_timeout_error_is_caught_as_multiprocessing_timeout(pool):
    try:
        pool.apply(tasks.sleep_return, (60,), task_timeout=0.2)
    except multiprocessing.TimeoutError as e:
        assert isinstance(e, hangfree.TaskTimeoutError)
    else:
        pytest.fail("no timeout")


# ----- exceptions raised by tasks ------------------------------------------------------

def test_exception_reraised_with_remote_traceback(pool, tmp_path):
    with pytest.raises(ValueError, match="bad input 5") as ei:
        pool.apply(tasks.fail, (5,))
    cause = ei.value.__cause__
    assert isinstance(cause, multiprocessing.pool.RemoteTraceback)
    assert "tasks.py" in str(cause) and "in fail" in str(cause) and "ValueError: bad input 5" in str(cause)


def test_exception_that_cannot_be_pickled(pool):
    with pytest.raises(hangfree.HangfreeError) as ei:
        pool.apply(tasks.raise_unpicklable_exception)
    assert "HoldsALock" in str(ei.value) and "lock inside" in str(ei.value)
    assert "raise_unpicklable_exception()" in str(ei.value)
    assert isinstance(ei.value.__cause__, multiprocessing.pool.RemoteTraceback)
    assert_pool_works(pool)


def test_exception_that_cannot_be_unpickled_here(pool):
    with pytest.raises(hangfree.HangfreeError) as ei:
        pool.apply(tasks.raise_needs_two_args)
    assert "raise_needs_two_args()" in str(ei.value)
    assert_pool_works(pool)


# ----- pickling of arguments and results -------------------------------------------

def test_unpicklable_result_is_maybe_encoding_error(pool):
    with pytest.raises(multiprocessing.pool.MaybeEncodingError) as ei:
        pool.apply(tasks.return_unpicklable)
    assert "lock" in str(ei.value)
    assert "return_unpicklable()" in str(ei.value) or isinstance(ei.value.__cause__, multiprocessing.pool.RemoteTraceback)
    assert_pool_works(pool)


def test_unpicklable_argument_fails_its_task_only(pool):
    """The pickling error itself, as the stdlib raises it, with a note naming the call."""
    with pytest.raises(TypeError, match="Unpicklable refuses to be pickled") as ei:
        pool.apply(tasks.identity, (tasks.Unpicklable(),))
    notes = " ".join(getattr(ei.value, "__notes__", []))
    if sys.version_info >= (3, 11):
        assert "identity(Unpicklable())" in notes and "cannot be pickled" in notes
    it = pool.imap(tasks.identity, [1, tasks.Unpicklable(), 3])
    assert next(it) == 1
    with pytest.raises(TypeError):
        next(it)
    assert next(it) == 3
    errors = []
    r = pool.map_async(tasks.identity, [1, tasks.Unpicklable()], error_callback=errors.append)
    with pytest.raises(TypeError):
        r.get(10)
    assert len(errors) == 1
    assert_pool_works(pool)


def test_argument_that_cannot_be_unpickled_in_the_worker(pool):
    with pytest.raises(hangfree.HangfreeError) as ei:
        pool.apply(tasks.identity, (tasks.FailsToUnpickle(),))
    msg = str(ei.value)
    assert "cannot unpickle" in msg and "this object cannot be unpickled here" in msg
    assert "identity(FailsToUnpickle())" in msg
    results = list(pool.imap(tasks.square, range(3)))
    assert results == [0, 1, 4]


def test_unpicklable_function(pool):
    import threading

    lock = threading.Lock()
    with pytest.raises(Exception):
        pool.apply(lambda: lock)
    assert_pool_works(pool)


# ----- initializer ------------------------------------------------------------------

def test_raising_initializer_fails_waiting_and_later_callers():
    t0 = time.monotonic()
    p = hangfree.Pool(2, initializer=tasks.init_fails, initargs=("init went wrong",))
    try:
        waiting = p.map_async(tasks.square, range(4))
        with pytest.raises(hangfree.InitializerError) as ei:
            waiting.get(timeout=30)
        e = ei.value
        assert isinstance(e, hangfree.HangfreeError)
        assert "init went wrong" in str(e) and "RuntimeError" in str(e)
        assert "init_fails" in e.remote_traceback and "tasks.py" in e.remote_traceback
        for call in (lambda: p.apply(tasks.square, (1,)), lambda: p.map(tasks.square, [1]),
                     lambda: p.apply_async(tasks.square, (1,)).get(10)):
            with pytest.raises(hangfree.InitializerError, match="init went wrong"):
                call()
        assert time.monotonic() - t0 < 20
        # No endless respawning.
        spawned = p.stats()["workers_spawned"]
        time.sleep(0.5)
        assert p.stats()["workers_spawned"] == spawned <= 4
    finally:
        p.terminate()
        p.join()


def test_initializer_that_exits():
    with hangfree.Pool(1, initializer=tasks.init_exits, initargs=(4,)) as p:
        with pytest.raises(hangfree.InitializerError, match="exit code 4"):
            p.apply(tasks.square, (2,))


def test_a_result_callback_that_waits_for_other_results_gets_an_error_not_a_deadlock(pool):
    """Callbacks run on the thread that delivers outcomes: a map() there could never end
    (the stdlib deadlocks). It raises at once; a call waited for alone still works."""
    seen = []

    def callback(value):
        seen.append(pool.apply(tasks.square, (value,)))
        try:
            pool.map(tasks.square, [1, 2])
        except RuntimeError as e:
            seen.append(str(e))

    r = pool.apply_async(tasks.square, (3,), callback=callback)
    r.wait(30)
    assert r.ready() and seen[0] == 81
    assert "cannot wait for other results" in seen[1]
    assert_pool_works(pool)


def test_an_executor_done_callback_that_waits_for_a_map_gets_an_error():
    with hangfree.ProcessPoolExecutor(1) as ex:
        seen = []
        called = threading.Event()

        def done(f):
            try:
                seen.append(list(ex.map(tasks.square, [1, 2])))
            except RuntimeError as e:
                seen.append(str(e))
            called.set()

        # Nobody waits on the future: the result thread delivers it and runs the callback.
        ex.submit(tasks.square, 2).add_done_callback(done)
        assert called.wait(30)
        assert "cannot wait for other results" in seen[0]
