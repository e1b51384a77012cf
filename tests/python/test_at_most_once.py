"""Guarantee 8: every item of a map starts at most once unless ``retries`` asks for more.

A chunk of a map is one engine task whose worker marks each item's start on its
progress page. When the worker dies, passes a time limit or the memory limit mid-chunk,
the item it was on gets the error, items whose results came keep them, and the items it
had not started run elsewhere. Every run appends its item to a file, so the tests count
how often each item really started (real workers, real crashes, no mock).
"""

from __future__ import annotations

import functools
import time

import pytest

import hangfree
import once_tasks

N = 20


def outcomes(pool, fn, n=N, chunksize=10):
    """Each item's outcome of ``pool.imap``: ("value", v) or ("error", exception)."""
    got = []
    it = pool.imap(fn, range(n), chunksize=chunksize)
    for _ in range(n):
        try:
            got.append(("value", next(it)))
        except StopIteration:
            break
        except Exception as e:
            got.append(("error", e))
    return got


def _finished_or_kept(got):
    """Items that finished before their worker was killed: each keeps its value, or, if
    it finished within the last 5 ms (its result had not left the worker), ends as
    worker lost with ``finished`` set. Either way it ran once."""
    for i, (kind, v) in enumerate(got):
        if kind == "error":
            assert isinstance(v, hangfree.WorkerLostError) and v.finished, v
            assert "before its outcome was sent (it is not run again)" in str(v)
        else:
            assert v == 2 * i


@pytest.fixture
def log(tmp_path):
    path = tmp_path / "runs"
    path.touch()
    return str(path)


def test_a_worker_exiting_mid_chunk_runs_no_item_twice(log):
    with hangfree.Pool(2) as pool:
        got = outcomes(pool, functools.partial(once_tasks.exit_at, path=log, bad=5))
        assert pool.apply(abs, (-3,)) == 3, "the pool goes on serving"
        stats = pool.stats()
    assert once_tasks.runs(log) == {i: 1 for i in range(N)}
    for i, (kind, v) in enumerate(got):
        if i == 5:
            assert kind == "error" and isinstance(v, hangfree.WorkerLostError), v
            assert "exit code 3" in str(v) and "exit_at" in str(v)
        else:
            # The items before the crash keep their results (sent as the worker exited).
            assert (kind, v) == ("value", 2 * i)
    assert stats["submitted"] == N + 1 and stats["values"] == N and stats["worker_lost"] == 1, stats


def test_a_segfault_mid_chunk_runs_no_item_twice_and_gives_each_item_one_outcome(log):
    with hangfree.Pool(2) as pool:
        got = outcomes(pool, functools.partial(once_tasks.segfault_at, path=log, bad=5))
    assert once_tasks.runs(log) == {i: 1 for i in range(N)}
    assert len(got) == N
    kind, err = got[5]
    assert kind == "error" and isinstance(err, hangfree.WorkerLostError) and err.signal_name == "SIGSEGV"
    assert not getattr(err, "finished", False)
    _finished_or_kept(got[:5])
    # Items after the crash never started on that worker: they ran elsewhere.
    assert all(got[i] == ("value", 2 * i) for i in range(6, N))


def test_a_time_limit_inside_a_chunk_is_per_item(log):
    with hangfree.Pool(2, task_timeout=1.0) as pool:
        t0 = time.monotonic()
        got = outcomes(pool, functools.partial(once_tasks.sleep_at, path=log, bad=3, seconds=30))
        took = time.monotonic() - t0
    assert took < 15, took
    assert once_tasks.runs(log) == {i: 1 for i in range(N)}
    kind, err = got[3]
    assert kind == "error" and isinstance(err, hangfree.TaskTimeoutError), err
    assert "sleep_at" in str(err) and err.stack and "time.sleep" in err.stack
    assert all(got[i] == ("value", 2 * i) for i in range(N) if i != 3)


def test_items_slower_together_than_the_limit_are_not_timed_out(log):
    # Ten items of 0.2 s in a chunk take 2 s, twice the limit: the limit is per item.
    with hangfree.Pool(1, task_timeout=1.0) as pool:
        got = outcomes(pool, functools.partial(once_tasks.slow_each, path=log, seconds=0.2), n=10, chunksize=10)
    assert got == [("value", 2 * i) for i in range(10)]
    assert once_tasks.runs(log) == {i: 1 for i in range(10)}


def test_retries_run_the_crashing_item_again_and_no_other(log, tmp_path):
    marker = str(tmp_path / "crashed")
    with hangfree.Pool(2, retries=1) as pool:
        got = outcomes(pool, functools.partial(once_tasks.exit_once_at, path=log, bad=5, marker=marker))
        stats = pool.stats()
    assert got == [("value", 2 * i) for i in range(N)]
    assert once_tasks.runs(log) == {i: (2 if i == 5 else 1) for i in range(N)}
    assert stats["retries"] == 1 and stats["values"] == N, stats


def test_an_item_that_raises_costs_only_itself(log):
    with hangfree.Pool(2) as pool:
        got = outcomes(pool, functools.partial(once_tasks.raise_at, path=log, bad=7))
        stats = pool.stats()
    assert once_tasks.runs(log) == {i: 1 for i in range(N)}
    assert got[7][0] == "error" and isinstance(got[7][1], ValueError)
    assert all(got[i] == ("value", 2 * i) for i in range(N) if i != 7)
    assert stats["values"] == N - 1 and stats["raised"] == 1, stats


def test_the_memory_limit_inside_a_chunk_stops_only_its_item(log):
    with hangfree.Pool(2, max_memory="200MiB") as pool:
        got = outcomes(pool, functools.partial(once_tasks.hog_at, path=log, bad=4))
    assert once_tasks.runs(log) == {i: 1 for i in range(N)}
    kind, err = got[4]
    assert kind == "error" and isinstance(err, hangfree.MemoryLimitError), err
    _finished_or_kept(got[:4])
    assert all(got[i] == ("value", 2 * i) for i in range(5, N))


def test_the_executor_map_keeps_items_at_most_once(log):
    with hangfree.ProcessPoolExecutor(2) as ex:
        it = ex.map(functools.partial(once_tasks.exit_at, path=log, bad=5), range(N), chunksize=10)
        got = []
        with pytest.raises(hangfree.WorkerLostError):
            for v in it:
                got.append(v)
        assert ex.submit(abs, -4).result(timeout=30) == 4
    assert got == [2 * i for i in range(5)]
    runs = once_tasks.runs(log)
    assert all(n == 1 for n in runs.values()), runs
