"""``Future.running()`` of ``hangfree.ProcessPoolExecutor`` is exact: False while the call
waits behind busy workers, True while a worker runs it, False once it is done; and it
agrees with ``cancel()``. Real processes, time-bounded."""

from __future__ import annotations

import time

import pytest

import hangfree

pytestmark = pytest.mark.timeout(60)

LIMIT = 20.0


def wait_for(cond, what: str, limit: float = LIMIT) -> None:
    deadline = time.monotonic() + limit
    while not cond():
        assert time.monotonic() < deadline, f"timed out after {limit} s waiting for {what}"
        time.sleep(0.005)


def test_running_only_while_a_worker_runs_the_call():
    with hangfree.ProcessPoolExecutor(1) as ex:
        busy = ex.submit(time.sleep, 1.5)
        waiting = ex.submit(time.sleep, 0.8)
        assert not waiting.running()
        wait_for(busy.running, "the first call to run")
        # Queued behind the busy worker: not running, not done.
        end = time.monotonic() + 0.3
        while time.monotonic() < end:
            assert not waiting.running() and not waiting.done()
            assert busy.running()
            time.sleep(0.01)
        assert busy.result(timeout=LIMIT) is None
        assert not busy.running()
        wait_for(lambda: waiting.running() or waiting.done(), "the second call to start")
        assert waiting.running(), "the second call sleeps 0.8 s: it must be seen running"
        assert waiting.result(timeout=LIMIT) is None
        assert not waiting.running() and waiting.done()


def test_running_and_cancel_agree():
    with hangfree.ProcessPoolExecutor(1) as ex:
        busy = ex.submit(time.sleep, 1.0)
        wait_for(busy.running, "the first call to run")
        waiting = ex.submit(time.sleep, 0.1)
        time.sleep(0.05)
        # Running: cannot be cancelled, and stays running.
        assert busy.cancel() is False
        assert busy.running() and not busy.cancelled()
        # Not running: can be cancelled, and is then neither running nor pending.
        assert not waiting.running()
        assert waiting.cancel() is True
        assert waiting.cancelled() and not waiting.running()
        assert busy.result(timeout=LIMIT) is None
        assert not busy.running()


def test_as_many_running_as_workers():
    with hangfree.ProcessPoolExecutor(2) as ex:
        futures = [ex.submit(time.sleep, 1.5) for _ in range(3)]
        wait_for(lambda: sum(f.running() for f in futures) == 2, "two calls to run")
        end = time.monotonic() + 0.3
        while time.monotonic() < end:
            assert not futures[2].running() and not futures[2].done()
            time.sleep(0.01)
        for f in futures:
            assert f.result(timeout=LIMIT) is None
        assert not any(f.running() for f in futures)


def test_running_after_shutdown_is_false():
    ex = hangfree.ProcessPoolExecutor(1)
    try:
        f = ex.submit(time.sleep, 5)
        wait_for(f.running, "the call to run")
    finally:
        ex.terminate()
    assert f.done() and not f.running()
