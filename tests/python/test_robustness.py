"""Edge values and hostile tasks that once reached the engine's panics or the caller.

Durations: NaN and negative values are a ValueError naming the parameter, a time limit
of zero is refused, values past what the clock can hold (``sys.maxsize``, ``1e300``,
``inf``) mean no limit; ``retries`` past the engine's count saturates. A task that moves
its worker into the caller's process group cannot get the caller killed.
"""

from __future__ import annotations

import sys
import time

import pytest

import hangfree
import helpers
import tasks

HUGE = [sys.maxsize, 1e19, 1e300, float("inf")]


def _no_failures(stats: dict) -> None:
    for k in ("worker_lost", "timed_out", "terminated", "startup_failed", "pool_failed", "workers_abandoned"):
        assert stats[k] == 0, (k, stats)


@pytest.mark.parametrize("param", ["task_timeout", "grace", "startup_timeout"])
@pytest.mark.parametrize("value", HUGE, ids=repr)
def test_pool_durations_past_the_clock_mean_no_limit(param, value):
    p = hangfree.Pool(1, **{param: value})
    try:
        assert p.apply(tasks.square, (7,)) == 49
        assert p.map(tasks.square, range(4)) == [0, 1, 4, 9]
        _no_failures(p.stats())
    finally:
        t0 = time.monotonic()
        p.terminate()
        p.join()
    # The workers answer SIGTERM: even an unbounded grace ends at once.
    assert time.monotonic() - t0 < 10


@pytest.mark.parametrize("param", ["task_timeout", "grace", "startup_timeout"])
@pytest.mark.parametrize("value", HUGE, ids=repr)
def test_executor_durations_past_the_clock_mean_no_limit(param, value):
    with hangfree.ProcessPoolExecutor(1, **{param: value}) as ex:
        assert ex.submit(tasks.square, 6).result(timeout=30) == 36


@pytest.mark.parametrize("front", ["Pool", "ProcessPoolExecutor"])
@pytest.mark.parametrize("param", ["task_timeout", "grace", "startup_timeout"])
@pytest.mark.parametrize("value", [float("nan"), -1, -1e300, float("-inf")], ids=repr)
def test_nan_and_negative_durations_are_value_errors_naming_the_parameter(front, param, value):
    with pytest.raises(ValueError, match=f"{param} must be a non-negative number of seconds"):
        getattr(hangfree, front)(1, **{param: value})


@pytest.mark.parametrize("front", ["Pool", "ProcessPoolExecutor"])
def test_a_time_limit_of_zero_is_refused(front):
    make = getattr(hangfree, front)
    with pytest.raises(ValueError, match=r"^task_timeout must be > 0 or None$"):
        make(1, task_timeout=0)
    with pytest.raises(ValueError, match=r"^startup_timeout must be > 0$"):
        make(1, startup_timeout=0.0)


def test_per_call_time_limits():
    with hangfree.Pool(1) as p:
        for bad, why in [(0, "must be > 0 or None"), (float("nan"), "not NaN"), (-1, "not -1")]:
            with pytest.raises(ValueError, match=f"a task's timeout {why}" if bad == 0 else why):
                p.apply_async(tasks.square, (2,), task_timeout=bad)
            with pytest.raises(ValueError, match=why):
                p.map(tasks.square, range(3), task_timeout=bad)
        for huge in HUGE:
            assert p.apply_async(tasks.square, (2,), task_timeout=huge).get(30) == 4
            assert p.map(tasks.square, range(3), task_timeout=huge) == [0, 1, 4]
            assert list(p.imap(tasks.square, range(3), task_timeout=huge)) == [0, 1, 4]
        # Nothing refused was left behind: the pool goes on and closes cleanly.
        assert p.apply(tasks.square, (5,)) == 25
        _no_failures(p.stats())


def test_executor_per_call_limits_and_shutdown_timeout():
    ex = hangfree.ProcessPoolExecutor(1)
    try:
        for bad in (0, float("nan"), -1):
            with pytest.raises(ValueError, match="a task's timeout"):
                ex.submit_with(tasks.square, (2,), timeout=bad)
        for huge in HUGE:
            assert ex.submit_with(tasks.square, (3,), timeout=huge).result(timeout=30) == 9
    finally:
        ex.shutdown(timeout=float("inf"))
    ex = hangfree.ProcessPoolExecutor(1)
    ex.submit(tasks.square, 1).result(timeout=30)
    ex.shutdown(timeout=1e300)


@pytest.mark.parametrize("retries", [2**32, 10**12, 10**40])
def test_retries_past_the_engine_count_saturate(retries):
    with hangfree.Pool(1, retries=retries) as p:
        assert p.apply(tasks.square, (3,)) == 9


@pytest.mark.parametrize("retries", [-1, 1.5, "2"])
def test_retries_must_be_a_non_negative_int(retries):
    with pytest.raises(ValueError, match="retries must be a non-negative int"):
        hangfree.Pool(1, retries=retries)


LEAVER_SCRIPT = """
import os, signal, sys, time
import hangfree

def leave_idle():
    # Into the caller's group, deaf to SIGTERM: the worker then finds its channel
    # closed at terminate() and kills "its group" itself.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    os.setpgid(0, os.getpgid(os.getppid()))
    return os.getpid(), os.getpgid(0)

def leave_busy(mark):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    os.setpgid(0, os.getpgid(os.getppid()))
    with open(mark, "w") as f:
        f.write(str(os.getpid()))
    time.sleep(60)

def gone(pid, within):
    end = time.monotonic() + within
    while time.monotonic() < end:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    return True
        except FileNotFoundError:
            return True
        time.sleep(0.01)
    return False

if __name__ == "__main__":
    fork_server = sys.argv[1] == "1"
    p = hangfree.Pool(1, grace=0.3, fork_server=fork_server)
    pid, group = p.apply(leave_idle)
    assert group == os.getpgid(0), (group, os.getpgid(0))
    p.terminate()
    p.join()
    # The worker's own kill would land on this process now, if it took the wrong group.
    time.sleep(0.5)
    print("idle", pid, gone(pid, 5), flush=True)

    p = hangfree.Pool(1, grace=0.3, fork_server=fork_server)
    mark = sys.argv[2]
    r = p.apply_async(leave_busy, (mark,))
    end = time.monotonic() + 20
    while not (os.path.exists(mark) and open(mark).read()) and time.monotonic() < end:
        time.sleep(0.01)
    print("left", open(mark).read(), flush=True)
    t0 = time.monotonic()
    p.terminate()
    p.join()
    took = time.monotonic() - t0
    time.sleep(0.5)
    print("busy", took, p.stats()["workers_abandoned"], flush=True)
"""


@pytest.mark.parametrize("fork_server", [True, False], ids=["fork_server", "exec"])
def test_a_task_that_moves_into_the_callers_group_cannot_kill_the_caller(tmp_path, fork_server):
    script = helpers.write_script(tmp_path, LEAVER_SCRIPT)
    res, _ = helpers.run_python([str(script), "1" if fork_server else "0", str(tmp_path / "left")], timeout=40)
    # The script runs in a session of its own (run_python): a regression kills it, not us.
    assert res.returncode == 0, f"rc={res.returncode}\nstdout:\n{res.stdout}\nstderr:\n{res.stderr}"
    lines = dict(line.split(" ", 1) for line in res.stdout.splitlines())
    assert lines["idle"].split()[1] == "True", res.stdout
    left_pid = int(lines["left"])
    took, abandoned = lines["busy"].split()
    # SIGKILL reached the worker through its pidfd after the grace: not abandoned.
    assert float(took) < 0.3 + 3.0, res.stdout
    assert abandoned == "0", res.stdout
    assert not helpers.alive(left_pid) or helpers.zombie(left_pid)


@pytest.mark.timeout(180)
def test_payloads_and_results_past_1_gib_travel_whole():
    """Frames carry up to 2**56 bytes (the header's spare bytes hold the high part of the
    length): an argument and a result a little over 1 GiB, the old ceiling, go through,
    and the pool goes on serving."""
    n = (1 << 30) + (64 << 20)
    with hangfree.Pool(1) as pool:
        assert pool.apply(tasks.nbytes, (b"x" * n,)) == n
        result = pool.apply(tasks.zeros, (n,))
        assert len(result) == n and result[-1] == 0
        del result
        assert pool.apply(tasks.square, (3,)) == 9
