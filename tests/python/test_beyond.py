"""Beyond the stdlib: the stack of a late task, max_memory, retries, per-item outcomes,
progress, stats and logging. Real worker processes; every test is time-bounded."""

from __future__ import annotations

import inspect
import logging
import os
import signal
import sys
import time

import pytest

import beyond_tasks as bt
import hangfree
import helpers
import tasks

# The pool's default stack wait is 0.5 s; generous margins for 2 shared cores.
STACK_WAIT = 0.5
SLACK = 3.0


def line_of(fn, marker):
    """The line number in ``fn``'s file of the source line carrying ``marker``."""
    lines, first = inspect.getsourcelines(fn)
    for n, text in enumerate(lines):
        if marker in text:
            return first + n
    raise AssertionError(f"{marker} not in {fn.__name__}")


def wait_for(predicate, timeout=5.0, what="condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what} not reached within {timeout} s")
        time.sleep(0.02)


def assert_pool_works(p):
    assert p.map(tasks.square, range(6)) == [0, 1, 4, 9, 16, 25]


# ----- 1. where was it stuck? --------------------------------------------------------

def test_stack_of_a_task_stuck_in_sleep_names_the_function_and_line():
    with hangfree.Pool(2, task_timeout=1.0) as p:
        t0 = time.monotonic()
        with pytest.raises(hangfree.TaskTimeoutError) as ei:
            p.apply(bt.stuck_outer, (30,))
        elapsed = time.monotonic() - t0
        e = ei.value
        assert 0.9 < elapsed < 1.0 + STACK_WAIT + SLACK
        assert e.limit == pytest.approx(1.0) and e.pid
        stack = e.stack
        assert stack, "no stack in the time-out error"
        inner_line = line_of(bt.stuck_inner, "STUCK-HERE")
        outer_line = line_of(bt.stuck_outer, "return stuck_inner")
        assert f'File "{bt.__file__}", line {inner_line}, in stuck_inner' in stack
        assert f'File "{bt.__file__}", line {outer_line}, in stuck_outer' in stack
        # Innermost frame last, as in a traceback, and the source line shown.
        assert stack.index("in stuck_outer") < stack.index("in stuck_inner")
        assert "time.sleep(seconds)" in stack
        # The worker's own loop is not part of the task's stack.
        assert "_worker.py" not in stack
        # The message carries it too.
        msg = str(e)
        assert "timed out after 1.000 s" in msg and "stuck_outer(30)" in msg
        assert f"line {inner_line}, in stuck_inner" in msg
        # Escalation followed: the worker is gone, the pool goes on.
        assert helpers.wait_gone({e.pid}, 5.0) == set()
        assert_pool_works(p)


def test_stack_of_a_function_sent_by_value_names_its_line():
    # A function defined here cannot be imported by the worker: it travels by value
    # (cloudpickle), which keeps names and line numbers but not the file name.
    def waits_here(seconds):
        time.sleep(seconds)  # BY-VALUE-STUCK

    line = line_of(waits_here, "BY-VALUE-STUCK")
    with hangfree.Pool(1, task_timeout=1.0) as p:
        with pytest.raises(hangfree.TaskTimeoutError) as ei:
            p.apply(waits_here, (30,))
        assert f"line {line}, in waits_here" in ei.value.stack
        assert_pool_works(p)


def test_stack_of_a_task_blocked_in_os_read_names_the_line():
    with hangfree.Pool(1, task_timeout=1.0) as p:
        t0 = time.monotonic()
        with pytest.raises(hangfree.TaskTimeoutError) as ei:
            p.apply(bt.read_pipe_nobody_writes)
        assert time.monotonic() - t0 < 1.0 + STACK_WAIT + SLACK
        line = line_of(bt.read_pipe_nobody_writes, "BLOCKED-READ")
        assert f"line {line}, in read_pipe_nobody_writes" in ei.value.stack
        assert_pool_works(p)


def test_task_in_a_libc_sleep_times_out_on_time():
    with hangfree.Pool(1, task_timeout=1.0) as p:
        t0 = time.monotonic()
        with pytest.raises(hangfree.TaskTimeoutError) as ei:
            p.apply(bt.libc_sleep, (30,))
        assert time.monotonic() - t0 < 1.0 + STACK_WAIT + SLACK
        e = ei.value
        # The request interrupts the C sleep, so Python answers between two C calls.
        assert e.stack and "in libc_sleep" in e.stack
        assert helpers.wait_gone({e.pid}, 5.0) == set()
        assert_pool_works(p)
        assert p.stats()["protocol_errors"] == 0


def test_task_that_cannot_answer_in_c_is_still_stopped_on_time():
    grace = 1.0
    with hangfree.Pool(1, task_timeout=1.0, grace=grace) as p:
        t0 = time.monotonic()
        with pytest.raises(hangfree.TaskTimeoutError) as ei:
            p.apply(bt.libc_sleep_deaf, (60,))
        elapsed = time.monotonic() - t0
        e = ei.value
        # The error comes once the stack wait is over: not before, and not much later.
        assert 1.0 + STACK_WAIT - 0.1 < elapsed < 1.0 + STACK_WAIT + SLACK
        assert e.stack is None
        assert "stack could not be taken in time" in str(e) and "native call" in str(e)
        # It ignores SIGTERM: SIGKILL after the grace period ends it.
        t1 = time.monotonic()
        assert helpers.wait_gone({e.pid}, grace + 5.0) == set()
        assert time.monotonic() - t1 < grace + 3.0
        assert_pool_works(p)


def test_task_spinning_in_one_c_call_is_stopped_on_time():
    with hangfree.Pool(1, task_timeout=1.0) as p:
        t0 = time.monotonic()
        with pytest.raises(hangfree.TaskTimeoutError) as ei:
            p.apply(bt.cpu_in_c)
        assert time.monotonic() - t0 < 1.0 + STACK_WAIT + SLACK
        assert ei.value.stack is None and "could not be taken in time" in str(ei.value)
        assert helpers.wait_gone({ei.value.pid}, 5.0) == set()
        assert_pool_works(p)


def test_executor_time_out_carries_the_stack():
    with hangfree.ProcessPoolExecutor(1, task_timeout=1.0) as ex:
        f = ex.submit(bt.stuck_outer, 30)
        e = f.exception(timeout=1.0 + STACK_WAIT + SLACK)
        assert isinstance(e, hangfree.TaskTimeoutError)
        assert f"line {line_of(bt.stuck_inner, 'STUCK-HERE')}, in stuck_inner" in e.stack
        assert ex.submit(tasks.square, 4).result(timeout=10) == 16


# ----- 2. memory limit ---------------------------------------------------------------

def test_memory_hog_is_stopped_at_the_limit_and_the_pool_goes_on():
    limit = 200 << 20
    with hangfree.Pool(2, max_memory="200MiB") as p:
        slow = p.apply_async(tasks.sleep_return, (1.0, "other"))
        t0 = time.monotonic()
        with pytest.raises(hangfree.MemoryLimitError) as ei:
            p.apply(bt.hog, (10, 800))
        assert time.monotonic() - t0 < 15
        e = ei.value
        assert e.limit == limit
        assert e.peak > limit and e.peak < 800 << 20
        msg = str(e)
        assert "hog(10, 800)" in msg and "200.0 MiB" in msg and "peak seen" in msg
        assert isinstance(e, hangfree.HangfreeError)
        assert helpers.wait_gone({e.pid}, 5.0) == set()
        # The other worker's task was not disturbed; the pool goes on.
        assert slow.get(timeout=10) == "other"
        assert_pool_works(p)
        assert p.stats()["memory_limited"] == 1
        assert p.stats()["workers_lost"] == 0


def test_memory_limit_in_bytes_on_the_executor():
    with hangfree.ProcessPoolExecutor(1, max_memory=150 << 20) as ex:
        f = ex.submit(bt.hog, 10, 600)
        e = f.exception(timeout=20)
        assert isinstance(e, hangfree.MemoryLimitError)
        assert e.limit == 150 << 20 and e.peak > e.limit
        assert ex.submit(tasks.square, 5).result(timeout=10) == 25


@pytest.mark.parametrize("bad", ["lots", "3 parsecs", 0, -1, True, 1.5])
def test_bad_memory_limits_are_refused(bad):
    with pytest.raises(ValueError):
        hangfree.Pool(1, max_memory=bad)


def test_sigkill_from_outside_is_not_called_oom(tmp_path):
    with hangfree.Pool(1) as p:
        r = p.apply_async(tasks.announce_and_sleep, (str(tmp_path), 30))
        helpers.wait_files(tmp_path, 1, 10)
        (pid,) = helpers.pids_in(tmp_path)
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(hangfree.WorkerLostError) as ei:
            r.get(timeout=10)
        e = ei.value
        assert e.pid == pid and e.signal == signal.SIGKILL and e.signal_name == "SIGKILL"
        assert e.probably_oom is False and "OOM" not in str(e)
        assert e.earlier_attempts == []
        assert_pool_works(p)


# ----- 3. retries --------------------------------------------------------------------

def test_task_that_dies_once_succeeds_on_retry(tmp_path):
    marker = tmp_path / "died"
    with hangfree.Pool(2, retries=1) as p:
        assert p.apply(bt.die_once, (str(marker), "second time lucky")) == "second time lucky"
        assert marker.exists()
        first_pid = int(marker.read_text())
        assert not helpers.alive(first_pid)
        s = p.stats()
        assert s["retries"] == 1 and s["values"] == 1 and s["worker_lost"] == 0 and s["workers_lost"] == 1


def test_retries_are_off_by_default(tmp_path):
    with hangfree.Pool(1) as p:
        with pytest.raises(hangfree.WorkerLostError) as ei:
            p.apply(bt.die_once, (str(tmp_path / "died"), "never"))
        assert ei.value.exitcode == 9 and ei.value.earlier_attempts == []
        assert "attempts" not in str(ei.value)
        assert p.stats()["retries"] == 0


def test_task_that_always_dies_is_quarantined_after_n_plus_1_attempts():
    n = 2
    with hangfree.Pool(2, retries=n) as p:
        t0 = time.monotonic()
        with pytest.raises(hangfree.WorkerLostError) as ei:
            p.apply(bt.always_die, (5,))
        assert time.monotonic() - t0 < 20
        e = ei.value
        assert e.exitcode == 5
        assert len(e.earlier_attempts) == n
        assert all(a["exitcode"] == 5 for a in e.earlier_attempts)
        pids = [a["pid"] for a in e.earlier_attempts] + [e.pid]
        assert len(set(pids)) == n + 1, "each attempt must run on a fresh worker"
        msg = str(e)
        assert f"killed {n + 1} workers in {n + 1} attempts" in msg
        for i, pid in enumerate(pids, 1):
            assert f"attempt {i}: worker {pid} died with exit code 5" in msg
        assert "always_die(5)" in msg
        s = p.stats()
        assert s["retries"] == n and s["worker_lost"] == 1 and s["workers_lost"] == n + 1
        assert_pool_works(p)


def test_a_task_that_raised_is_not_retried(tmp_path):
    runs = tmp_path / "runs"
    with hangfree.Pool(1, retries=3) as p:
        with pytest.raises(ValueError, match="raised on purpose"):
            p.apply(bt.record_and_raise, (str(runs),))
        assert len(runs.read_text().split()) == 1
        assert p.stats()["retries"] == 0


def test_a_task_that_timed_out_is_not_retried(tmp_path):
    runs = tmp_path / "runs"
    with hangfree.Pool(1, retries=2, task_timeout=0.5) as p:
        with pytest.raises(hangfree.TaskTimeoutError):
            p.apply(bt.record_and_sleep, (str(runs), 30))
        assert_pool_works(p)
        assert len(runs.read_text().split()) == 1
        assert p.stats()["retries"] == 0


def test_executor_retries(tmp_path):
    with hangfree.ProcessPoolExecutor(2, retries=1) as ex:
        assert ex.submit(bt.die_once, str(tmp_path / "m"), 42).result(timeout=20) == 42
        e = ex.submit(bt.always_die, 4).exception(timeout=20)
        assert isinstance(e, hangfree.WorkerLostError)
        assert "killed 2 workers in 2 attempts" in str(e) and len(e.earlier_attempts) == 1


@pytest.mark.parametrize("bad", [-1, 1.5, "2"])
def test_bad_retries_are_refused(bad):
    with pytest.raises(ValueError):
        hangfree.Pool(1, retries=bad)


# ----- 4. per-item outcomes ----------------------------------------------------------

def check_outcome(i, outcome):
    kind, expected = bt.mixed_expected(i)
    if kind == "value":
        assert outcome == expected, (i, outcome)
    elif kind == "raised":
        assert isinstance(outcome, ValueError) and str(outcome) == expected, (i, outcome)
    else:
        assert isinstance(outcome, hangfree.WorkerLostError) and outcome.exitcode == 3, (i, outcome)
        assert f"mixed({i})" in str(outcome)


def test_map_return_exceptions_keeps_every_good_value():
    n = 1000
    with hangfree.Pool(2) as p:
        out = p.map(bt.mixed, range(n), return_exceptions=True)
        assert len(out) == n
        for i, o in enumerate(out):
            check_outcome(i, o)
        assert sum(1 for o in out if not isinstance(o, BaseException)) == sum(
            1 for i in range(n) if bt.mixed_expected(i)[0] == "value")
        # Without it, the first error is raised, as in the stdlib.
        with pytest.raises((ValueError, hangfree.WorkerLostError)):
            p.map(bt.mixed, range(20))


def test_starmap_and_map_async_return_exceptions():
    with hangfree.Pool(2) as p:
        assert p.starmap(tasks.add, [(1, 2), (3, "x"), (5, 6)], return_exceptions=True)[0] == 3
        out = p.starmap(tasks.add, [(1, 2), (3, "x"), (5, 6)], return_exceptions=True)
        assert out[0] == 3 and isinstance(out[1], TypeError) and out[2] == 11
        r = p.map_async(tasks.fail_if_odd, range(6), return_exceptions=True)
        out = r.get(timeout=20)
        assert r.successful()
        assert out[0::2] == [0, 2, 4] and all(isinstance(x, ValueError) for x in out[1::2])


def test_imap_outcomes_yields_each_index_once_unordered():
    n = 1000
    with hangfree.Pool(2) as p:
        seen = {}
        for pair in p.imap_outcomes(bt.mixed, range(n), chunksize=10):
            i, outcome = pair
            assert i not in seen
            seen[i] = outcome
        assert sorted(seen) == list(range(n))
        for i, o in seen.items():
            check_outcome(i, o)


def test_imap_outcomes_is_really_unordered():
    with hangfree.Pool(2) as p:
        order = [i for i, _ in p.imap_outcomes(tasks.sleep_return, [1.5, 0.01, 0.01, 0.01])]
        assert sorted(order) == [0, 1, 2, 3] and order[-1] == 0


def test_executor_map_return_exceptions():
    n = 300
    with hangfree.ProcessPoolExecutor(2) as ex:
        out = list(ex.map(bt.mixed, range(n), return_exceptions=True, chunksize=5, timeout=50))
        assert len(out) == n
        for i, o in enumerate(out):
            check_outcome(i, o)
        # Without it, the first failure ends the iteration, as in the stdlib.
        with pytest.raises(ValueError, match="item 0"):
            list(ex.map(bt.mixed, range(10)))


# ----- 5. progress -------------------------------------------------------------------

def test_progress_bar_reaches_the_total(capsys):
    pytest.importorskip("tqdm")
    with hangfree.Pool(2) as p:
        assert p.map(tasks.square, range(1000), progress=True) == [x * x for x in range(1000)]
        err = capsys.readouterr().err
        assert "1000/1000" in err, err[-500:]
        # imap with failures: the bar counts them.
        out = list(p.imap(tasks.fail_if_odd, range(40), progress=True, return_exceptions=True))
        assert len(out) == 40
        err = capsys.readouterr().err
        assert "40/40" in err and "failed=20" in err, err[-500:]


def test_progress_callback_sees_every_item():
    calls = []
    with hangfree.Pool(2) as p:
        out = p.map(tasks.fail_if_odd, range(100), progress=lambda *a: calls.append(a), return_exceptions=True)
        assert len(out) == 100
        # When map returns, the callback has seen every item.
        assert len(calls) == 100
        assert [c[0] for c in calls] == list(range(1, 101))
        assert all(c[2] == 100 for c in calls)
        assert calls[-1] == (100, 50, 100)
        failed = [c[1] for c in calls]
        assert failed == sorted(failed)


def test_progress_callback_that_raises_does_not_stop_the_call(capfd):
    def boom(done, failed, total):
        raise RuntimeError("callback trouble")

    with hangfree.Pool(2) as p:
        assert p.map(tasks.square, range(10), progress=boom) == [x * x for x in range(10)]
        assert_pool_works(p)
    assert "callback trouble" in capfd.readouterr().err


def test_map_async_callback_that_raises_does_not_stop_the_pool(capfd):
    def bad_callback(values):
        raise RuntimeError("user callback trouble")

    with hangfree.Pool(2) as p:
        r = p.map_async(tasks.square, range(20), callback=bad_callback)
        assert r.get(timeout=20) == [x * x for x in range(20)]
        # The result thread lives on: later calls still get their results.
        assert p.map(tasks.square, range(20), chunksize=4) == [x * x for x in range(20)]
    assert "user callback trouble" in capfd.readouterr().err


def test_progress_without_tqdm_says_how_to_get_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "tqdm", None)
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)
    with hangfree.Pool(1) as p:
        assert p.stats()["submitted"] == 0
        with pytest.raises(ImportError) as ei:
            p.map(tasks.square, range(5), progress=True)
        assert "pip install tqdm" in str(ei.value) and "progress" in str(ei.value)
        with pytest.raises(ImportError):
            p.imap_outcomes(tasks.square, range(5), progress=True)
        # A callable needs no tqdm, and the pool is unharmed.
        # Refused before anything was sent.
        assert p.stats()["submitted"] == 0
        calls = []
        assert p.map(tasks.square, range(5), progress=lambda *a: calls.append(a)) == [0, 1, 4, 9, 16]
        assert calls[-1] == (5, 0, 5)


# ----- 6. stats and logging ----------------------------------------------------------

def test_stats_count_what_happened(tmp_path):
    with hangfree.Pool(2, retries=1, max_memory="200MiB") as p:
        s = p.stats()
        assert s["submitted"] == 0 and s["values"] == 0
        assert p.map(tasks.square, range(10), chunksize=1) == [x * x for x in range(10)]
        assert len(p.map(tasks.fail, range(3), return_exceptions=True)) == 3
        assert p.apply(bt.die_once, (str(tmp_path / "m"), 1)) == 1
        with pytest.raises(hangfree.WorkerLostError):
            p.apply(bt.always_die, (6,))
        with pytest.raises(hangfree.TaskTimeoutError):
            p.apply(tasks.sleep_return, (30,), task_timeout=0.5)
        with pytest.raises(hangfree.MemoryLimitError):
            p.apply(bt.hog, (10, 800))
        expected = {
            "submitted": 10 + 3 + 1 + 1 + 1 + 1,
            "values": 10 + 1,
            "raised": 3,
            "worker_lost": 1,
            "timed_out": 1,
            "memory_limited": 1,
            "retries": 2,
            "cancelled": 0,
            "terminated": 0,
            "protocol_errors": 0,
            "startup_failed": 0,
            "workers_lost": 3,
            "workers_recycled": 0,
            "workers_abandoned": 0,
        }
        s = p.stats()
        assert {k: s[k] for k in expected} == expected
        # 2 at start, a replacement for each of 3 lost, 1 timed out, 1 over the limit.
        wait_for(lambda: p.stats()["workers_spawned"] == 7, 10, "7 workers spawned")


def test_stats_count_items_of_a_chunked_map():
    # Counted per item, whatever the chunk size: a user maps items, not chunks.
    with hangfree.Pool(2) as p:
        assert p.map(tasks.square, range(100)) == [x * x for x in range(100)]
        assert len(p.map(tasks.fail_if_odd, range(20), chunksize=5, return_exceptions=True)) == 20
        s = p.stats()
        assert s["submitted"] == 120 and s["values"] == 100 + 10 and s["raised"] == 10


def test_stats_count_recycled_workers_and_executor_calls():
    with hangfree.Pool(1, maxtasksperchild=2) as p:
        assert p.map(tasks.square, range(6), chunksize=1) == [x * x for x in range(6)]
        wait_for(lambda: p.stats()["workers_recycled"] >= 2, 10, "recycling")
        s = p.stats()
        assert s["values"] == 6 and s["submitted"] == 6 and s["workers_lost"] == 0
    with hangfree.ProcessPoolExecutor(2) as ex:
        fs = [ex.submit(tasks.square, i) for i in range(5)] + [ex.submit(tasks.fail, 1)]
        for f in fs:
            f.exception(timeout=20)
        s = ex.stats()
        assert s["submitted"] == 6 and s["values"] == 5 and s["raised"] == 1


def records(caplog, event, pid=None):
    return [r for r in caplog.records
            if r.name == "hangfree" and getattr(r, "hangfree_event", None) == event
            and (pid is None or getattr(r, "pid", None) == pid)]


def test_log_records_for_a_worker_death(caplog):
    caplog.set_level(logging.DEBUG, logger="hangfree")
    with hangfree.Pool(1) as p:
        with pytest.raises(hangfree.WorkerLostError) as ei:
            p.apply(tasks.os_exit, (7,))
        pid = ei.value.pid
        (rec,) = wait_for(lambda: records(caplog, "WorkerLost", pid), 5, "WorkerLost record")
        assert rec.levelno == logging.WARNING
        assert "exit code 7" in rec.getMessage() and str(pid) in rec.getMessage()
        assert rec.task_id == ei.value.task_id
        wait_for(lambda: records(caplog, "WorkerStarted"), 5, "WorkerStarted record")


def test_log_records_for_a_time_out_and_both_escalation_steps(caplog, tmp_path):
    caplog.set_level(logging.DEBUG, logger="hangfree")
    grace = 0.5
    with hangfree.Pool(1, task_timeout=1.0, grace=grace) as p:
        with pytest.raises(hangfree.TaskTimeoutError) as ei:
            p.apply(tasks.ignore_sigterm_and_sleep, (str(tmp_path), 30))
        pid = ei.value.pid
        (timed,) = wait_for(lambda: records(caplog, "TaskTimedOut", pid), 5, "TaskTimedOut record")
        assert timed.levelno == logging.WARNING and "timed out after 1.000 s" in timed.getMessage()
        assert timed.task_id == ei.value.task_id
        # The stack is in the log record too.
        assert "in ignore_sigterm_and_sleep" in timed.getMessage()
        (term,) = wait_for(lambda: records(caplog, "Terminate", pid), 5, "SIGTERM record")
        assert "SIGTERM" in term.getMessage() and term.levelno == logging.INFO
        (kill,) = wait_for(lambda: records(caplog, "Kill", pid), grace + 5, "SIGKILL record")
        assert "SIGKILL" in kill.getMessage() and kill.levelno == logging.WARNING
        # In order: time-out, SIGTERM, SIGKILL.
        recs = caplog.records
        assert recs.index(timed) < recs.index(term) < recs.index(kill)
        assert_pool_works(p)


def test_log_records_for_memory_limit_and_retry(caplog, tmp_path):
    caplog.set_level(logging.INFO, logger="hangfree")
    with hangfree.Pool(1, max_memory="200MiB", retries=1) as p:
        with pytest.raises(hangfree.MemoryLimitError) as ei:
            p.apply(bt.hog, (10, 800))
        (mem,) = wait_for(lambda: records(caplog, "MemoryLimit", ei.value.pid), 5, "MemoryLimit record")
        assert "memory limit" in mem.getMessage() and mem.levelno == logging.WARNING
        assert p.apply(bt.die_once, (str(tmp_path / "m"), 3)) == 3
        (retry,) = wait_for(lambda: records(caplog, "Retry"), 5, "Retry record")
        assert "retry 1 of 1" in retry.getMessage()
