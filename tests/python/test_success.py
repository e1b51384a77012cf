"""On the success path hangfree.Pool behaves like multiprocessing.Pool."""

from __future__ import annotations

import inspect
import multiprocessing
import multiprocessing.pool
import os
import threading

import pytest

import hangfree
import helpers
import tasks


@pytest.fixture
def pool():
    with hangfree.Pool(2) as p:
        yield p


@pytest.fixture(scope="module")
def mp_pool():
    # fork: spawn would start a resource tracker that outlives the module.
    with multiprocessing.get_context("fork").Pool(2) as p:
        yield p
        p.close()
        p.join()


# ----- API surface -------------------------------------------------------------------

PUBLIC_METHODS = ["apply", "apply_async", "map", "map_async", "imap", "imap_unordered", "starmap",
                  "starmap_async", "close", "terminate", "join", "__enter__", "__exit__"]


@pytest.mark.parametrize("name", PUBLIC_METHODS)
def test_method_signatures_match_multiprocessing(name):
    ours = inspect.signature(getattr(hangfree.Pool, name))
    theirs = inspect.signature(getattr(multiprocessing.pool.Pool, name))
    positional = [p for p in ours.parameters.values() if p.kind is not inspect.Parameter.KEYWORD_ONLY]
    theirs_params = list(theirs.parameters.values())
    assert [p.name for p in positional] == [p.name for p in theirs_params]
    for a, b in zip(positional, theirs_params):
        assert a.default == b.default, f"{name}({a.name}) default {a.default!r} != {b.default!r}"
    # Every extra parameter is keyword-only and off by default (task_timeout,
    # return_exceptions, progress), so a call written for multiprocessing means the same.
    for p in ours.parameters.values():
        if p.kind is inspect.Parameter.KEYWORD_ONLY:
            assert p.default in (None, False) or p.default is inspect.Parameter.empty or p.name in ("grace",), p


def test_constructor_signature_and_keyword_only_extras():
    ours = inspect.signature(hangfree.Pool.__init__).parameters
    theirs = inspect.signature(multiprocessing.pool.Pool.__init__).parameters
    positional = [n for n, p in ours.items() if p.kind is not inspect.Parameter.KEYWORD_ONLY]
    assert positional == list(theirs)
    for n in theirs:
        assert ours[n].default == theirs[n].default
    assert ours["task_timeout"].kind is inspect.Parameter.KEYWORD_ONLY
    assert ours["grace"].kind is inspect.Parameter.KEYWORD_ONLY


def test_per_call_task_timeout_is_keyword_only_everywhere():
    for name in ["apply", "apply_async", "map", "map_async", "imap", "imap_unordered", "starmap", "starmap_async"]:
        params = inspect.signature(getattr(hangfree.Pool, name)).parameters
        assert "task_timeout" in params, name
        assert params["task_timeout"].kind is inspect.Parameter.KEYWORD_ONLY, name


def test_module_level_names():
    assert hangfree.TimeoutError is multiprocessing.TimeoutError
    assert hangfree.cpu_count() >= 1
    assert hangfree.cpu_count() <= (os.cpu_count() or 1)
    assert callable(hangfree.Pool)
    for name in ["WorkerLostError", "TaskTimeoutError", "InitializerError"]:
        assert issubclass(getattr(hangfree, name), hangfree.HangfreeError)
    assert issubclass(hangfree.TaskTimeoutError, multiprocessing.TimeoutError)


def test_invalid_arguments_like_multiprocessing():
    with pytest.raises(ValueError):
        hangfree.Pool(0)
    with pytest.raises(TypeError):
        hangfree.Pool(1, initializer=3)
    with pytest.raises(ValueError):
        hangfree.Pool(1, maxtasksperchild=0)
    with hangfree.Pool(1) as p:
        with pytest.raises(ValueError):
            p.map(tasks.square, [1], chunksize=0)
        with pytest.raises(ValueError):
            p.join()  # still running


def test_pool_cannot_be_pickled(pool):
    import pickle

    with pytest.raises(NotImplementedError):
        pickle.dumps(pool)


# ----- results equal multiprocessing's ------------------------------------------------

@pytest.mark.parametrize("chunksize", [None, 1, 3, 100])
@pytest.mark.parametrize("n", [0, 1, 7, 50])
def test_map_like_multiprocessing(pool, mp_pool, n, chunksize):
    data = list(range(n))
    assert pool.map(tasks.square, data, chunksize) == mp_pool.map(tasks.square, data, chunksize)
    assert pool.map(tasks.square, iter(data), chunksize=chunksize) == [x * x for x in data]


@pytest.mark.parametrize("chunksize", [1, 4])
@pytest.mark.parametrize("n", [0, 1, 30])
def test_imap_like_multiprocessing(pool, mp_pool, n, chunksize):
    data = list(range(n))
    assert list(pool.imap(tasks.square, data, chunksize)) == list(mp_pool.imap(tasks.square, data, chunksize))
    got = sorted(pool.imap_unordered(tasks.square, (x for x in data), chunksize=chunksize))
    assert got == sorted(mp_pool.imap_unordered(tasks.square, data, chunksize))


@pytest.mark.parametrize("chunksize", [None, 1, 5])
@pytest.mark.parametrize("n", [0, 1, 20])
def test_starmap_like_multiprocessing(pool, mp_pool, n, chunksize):
    data = [(i, 10 * i) for i in range(n)]
    assert pool.starmap(tasks.add, data, chunksize) == mp_pool.starmap(tasks.add, data, chunksize)
    r = pool.starmap_async(tasks.add, data, chunksize)
    assert r.get(30) == [a + b for a, b in data]
    assert r.ready() and r.successful()


def test_apply_with_args_and_kwargs(pool, mp_pool):
    cases = [((1,), {}), ((1, 2), {}), ((1,), {"c": 5}), ((1, 2), {"c": 3, "z": 9}), ((), {"a": 4})]
    for args, kw in cases:
        assert pool.apply(tasks.with_kwargs, args, kw) == mp_pool.apply(tasks.with_kwargs, args, kw)
    assert pool.apply(tasks.getpid) != os.getpid()
    assert pool.apply(tasks.square, [7]) == 49  # any iterable works as args


def test_apply_async_callback(pool):
    got, errors, seen_thread = [], [], []
    done = threading.Event()

    def cb(v):
        got.append(v)
        seen_thread.append(threading.current_thread())
        done.set()

    r = pool.apply_async(tasks.square, (6,), callback=cb, error_callback=errors.append)
    assert r.get(timeout=30) == 36
    assert got == [36] and errors == []
    assert r.ready() and r.successful()
    assert seen_thread[0] is not threading.main_thread()


def test_error_callback_and_successful(pool, mp_pool):
    errors, got = [], []
    r = pool.apply_async(tasks.fail, (3,), callback=got.append, error_callback=errors.append)
    r.wait(30)
    assert r.ready() and not r.successful()
    with pytest.raises(ValueError, match="bad input 3"):
        r.get()
    assert got == [] and len(errors) == 1 and isinstance(errors[0], ValueError)

    theirs = []
    mr = mp_pool.apply_async(tasks.fail, (3,), error_callback=theirs.append)
    mr.wait(30)
    assert type(errors[0]) is type(theirs[0]) and str(errors[0]) == str(theirs[0])


def test_map_async_callbacks(pool):
    got, errors = [], []
    r = pool.map_async(tasks.square, range(10), callback=got.append, error_callback=errors.append)
    assert r.get(30) == [x * x for x in range(10)]
    assert got == [[x * x for x in range(10)]] and errors == []

    got, errors = [], []
    r = pool.map_async(tasks.fail_if_odd, range(10), callback=got.append, error_callback=errors.append)
    r.wait(30)
    assert not r.successful()
    assert got == [] and len(errors) == 1 and isinstance(errors[0], ValueError)
    with pytest.raises(ValueError, match="odd"):
        r.get()


def test_starmap_async_callback(pool):
    got = []
    assert pool.starmap_async(tasks.add, [(1, 2), (3, 4)], callback=got.append).get(30) == [3, 7]
    assert got == [[3, 7]]


def test_async_result_not_ready(pool):
    r = pool.apply_async(tasks.sleep_return, (1.0, "late"))
    assert not r.ready()
    with pytest.raises(ValueError):
        r.successful()
    t0 = __import__("time").monotonic()
    with pytest.raises(multiprocessing.TimeoutError):
        r.get(timeout=0.05)
    assert __import__("time").monotonic() - t0 < 0.9
    assert r.wait(0.01) is None
    assert r.get(30) == "late"


def test_imap_next_timeout(pool):
    it = pool.imap(tasks.sleep_return, [1.0])
    with pytest.raises(multiprocessing.TimeoutError):
        it.next(timeout=0.05)
    assert it.next(timeout=30) is None
    with pytest.raises(StopIteration):
        it.next()


def test_imap_error_does_not_stop_iteration(pool):
    it = pool.imap(tasks.fail_if_odd, range(4))
    assert next(it) == 0
    with pytest.raises(ValueError):
        next(it)
    assert next(it) == 2
    with pytest.raises(ValueError):
        next(it)
    with pytest.raises(StopIteration):
        next(it)


def test_close_join_runs_queued_tasks():
    p = hangfree.Pool(2)
    r = p.map_async(tasks.sleep_return, [0.2] * 4)
    p.close()
    with pytest.raises(ValueError):
        p.apply(tasks.square, (1,))
    p.join()
    assert r.ready() and r.get() == [None] * 4
    p.terminate()  # terminate after join is harmless


def test_context_manager_returns_pool_and_terminates():
    with hangfree.Pool(1) as p:
        assert isinstance(p, hangfree.Pool)
        assert p.apply(tasks.square, (3,)) == 9
    with pytest.raises(ValueError):
        p.apply(tasks.square, (3,))


def test_processes_default_and_context_accepted():
    with hangfree.Pool(context=multiprocessing.get_context("spawn")) as p:
        assert len(set(p.map(tasks.sleep_return, [(0.3)] * 2, chunksize=1))) == 1
        assert p._processes == hangfree.cpu_count()


def test_initializer_and_initargs():
    with hangfree.Pool(2, initializer=tasks.set_init_value, initargs=("ready",)) as p:
        assert p.map(tasks.get_init_value, range(4)) == ["ready"] * 4


def test_maxtasksperchild_recycles_workers():
    with hangfree.Pool(1, maxtasksperchild=2) as p:
        pids = [p.apply(tasks.getpid) for _ in range(6)]
    assert len(set(pids)) == 3


def test_workers_are_fresh_interpreters_with_our_path_and_cwd(pool):
    assert pool.apply(tasks.return_env, (helpers.TAG_VAR,)) == os.environ[helpers.TAG_VAR]
    assert pool.apply(tasks.return_cwd) == os.getcwd()
    # exec, not fork: the worker is not a copy of this process.
    assert pool.apply(tasks.return_env, ("HANGFREE_PARENT_PID",)) == str(os.getpid())


# ----- lambdas, closures, classes ------------------------------------------------------

def test_lambdas_and_closures(pool):
    k = 5
    assert pool.map(lambda x: x + k, range(5)) == [5, 6, 7, 8, 9]

    def make_adder(n):
        def adder(x):
            return x + n
        return adder

    assert pool.map(make_adder(100), [1, 2]) == [101, 102]
    assert list(pool.imap(lambda x: -x, range(3))) == [0, -1, -2]
    assert sorted(pool.imap_unordered(lambda x: x * 2, range(3))) == [0, 2, 4]
    assert pool.starmap(lambda a, b: a * b, [(2, 3), (4, 5)]) == [6, 20]
    assert pool.apply(lambda *a, **kw: (a, kw), (1, 2), {"x": 3}) == ((1, 2), {"x": 3})
    assert pool.apply_async(lambda: "lambda").get(30) == "lambda"


class LocalPoint:
    def __init__(self, x, y):
        self.x, self.y = x, y

    def norm2(self):
        return self.x ** 2 + self.y ** 2


def test_objects_of_test_module_classes(pool):
    pts = [LocalPoint(i, i + 1) for i in range(4)]
    assert pool.map(LocalPoint.norm2, pts) == [p.norm2() for p in pts]
    assert [p.x for p in pool.map(tasks.identity, pts)] == [0, 1, 2, 3]


MAIN_SCRIPT = """
    import hangfree as mp

    class Point:
        def __init__(self, x, y):
            self.x, self.y = x, y
        def norm2(self):
            return self.x ** 2 + self.y ** 2
        def __repr__(self):
            return f"Point({self.x}, {self.y})"

    def scale(p, k=2):
        return Point(p.x * k, p.y * k)

    offset = 10

    # No `if __name__ == "__main__":` guard: workers are exec'd, never re-run this file.
    with mp.Pool(2) as pool:
        pts = [Point(i, -i) for i in range(5)]
        print("norms", pool.map(Point.norm2, pts))
        print("scaled", pool.map(scale, pts, chunksize=2))
        print("starmap", pool.starmap(scale, [(p, 3) for p in pts[:2]]))
        print("lambda", pool.map(lambda x: x + offset, range(3)))
        print("imap", list(pool.imap(Point.norm2, pts)))
        print("apply", pool.apply(scale, (Point(1, 1),), {"k": 7}))
"""


def test_class_and_functions_of_main_travel_by_value(tmp_path):
    script = helpers.write_script(tmp_path, MAIN_SCRIPT)
    res, elapsed = helpers.run_python([str(script)], timeout=30)
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines() == [
        "norms [0, 2, 8, 18, 32]",
        "scaled [Point(0, 0), Point(2, -2), Point(4, -4), Point(6, -6), Point(8, -8)]",
        "starmap [Point(0, 0), Point(3, -3)]",
        "lambda [10, 11, 12]",
        "imap [0, 2, 8, 18, 32]",
        "apply Point(7, 7)",
    ]


def test_same_script_under_multiprocessing_gives_same_output(tmp_path):
    """The script above, run with multiprocessing (fork) instead, prints the same: the
    reference behaviour the drop-in must reproduce."""
    import textwrap

    code = textwrap.dedent(MAIN_SCRIPT).replace(
        "import hangfree as mp", "import multiprocessing as mp\nmp.set_start_method('fork')")
    # multiprocessing cannot pickle a lambda: leave that line out of its run.
    code = "\n".join(line for line in code.splitlines() if "lambda" not in line)
    ours = helpers.run_python([str(helpers.write_script(tmp_path, MAIN_SCRIPT, "a.py"))], timeout=30)[0]
    theirs = helpers.run_python([str(helpers.write_script(tmp_path, code, "b.py"))], timeout=30)[0]
    assert theirs.returncode == 0, theirs.stderr
    assert [l for l in ours.stdout.splitlines() if not l.startswith("lambda")] == theirs.stdout.splitlines()


def test_large_payloads(pool):
    blob = b"x" * (8 << 20)
    assert pool.apply(len, (blob,)) == len(blob)
    assert len(pool.apply(bytes, (4 << 20,))) == 4 << 20


def _digest(v):
    import hashlib

    return (type(v).__name__, len(v), not memoryview(v).readonly, hashlib.sha256(v).hexdigest())


@pytest.mark.parametrize("size", [10, 64 * 1024 - 1, 64 * 1024, 3 << 20])
def test_buffers_keep_their_type_content_and_mutability(pool, size):
    """Large buffers travel out of band: each arrives with its type, its bytes, and
    writable exactly when the sender's was; nested ones and keywords too."""
    data = os.urandom(size)
    ba = bytearray(os.urandom(size))
    got = pool.apply(tasks.describe_buffers, (data, ba, data), {"kw": data, "kwa": ba})
    assert got == ([_digest(data), _digest(ba), _digest(data)], {"kw": _digest(data), "kwa": _digest(ba)})
    # A bytearray comes back as a writable bytearray, and the worker changed only its copy.
    back = pool.apply(tasks.flip_bytearray, (ba,))
    assert type(back) is bytearray and back[0] == ba[0] ^ 0xFF and back[1:] == ba[1:]
    back[0] = 0
    assert pool.apply(tasks.identity, (data,)) == data
    nested = {"a": [data, (ba,)]}
    assert pool.apply(tasks.identity, (nested,)) == nested
    assert pool.map(tasks.identity, [data, ba, data], chunksize=2) == [data, ba, data]


def test_executor_echoes_large_buffers():
    data = os.urandom(2 << 20)
    with hangfree.ProcessPoolExecutor(2) as ex:
        futs = [ex.submit(tasks.identity, data) for _ in range(6)]
        assert all(f.result(timeout=30) == data for f in futs)
        assert list(ex.map(tasks.identity, [data, bytearray(data)])) == [data, bytearray(data)]


def test_short_task_does_not_wait_behind_a_long_one_while_a_worker_is_idle(tmp_path):
    """Right after start only one worker may be ready: the second task must go to the
    second worker when it is ready, not queue behind the first task in the first one."""
    import time

    with hangfree.Pool(2) as p:
        long = p.apply_async(tasks.sleep_return, (600,))
        t0 = time.monotonic()
        assert p.apply_async(tasks.square, (5,)).get(timeout=20) == 25
        assert time.monotonic() - t0 < 10
        assert not long.ready()


@pytest.mark.parametrize("n,chunksize,workers", [(1, 1, 2), (5, 2, 2), (100, 13, 2), (100, 13, 7), (100_000, 12_500, 2), (3, 100, 4)])
def test_map_chunks_cover_every_item_once_in_order(n, chunksize, workers):
    from hangfree._client import _spans

    spans = list(_spans(n, chunksize, workers))
    assert [i for s in spans for i in s] == list(range(n))
    assert all(0 < len(s) <= chunksize for s in spans)
    if chunksize >= 64 and n >= workers * chunksize:
        # Each worker's first chunk is a quarter: it starts after a short pickle.
        assert all(len(s) == chunksize // 4 for s in spans[:workers])


def test_default_chunks_give_the_same_results_as_multiprocessing(pool):
    items = list(range(10_007))
    assert pool.map(tasks.square, items) == [x * x for x in items]
    # A range travels as ranges (a chunk is a slice of it), with the same results.
    assert pool.map(tasks.square, range(10_007)) == [x * x for x in items]
    assert pool.map(tasks.square, range(5, 10_000, 7), chunksize=100) == [x * x for x in range(5, 10_000, 7)]
    assert list(pool.imap(tasks.square, range(300), chunksize=64)) == [x * x for x in range(300)]
    assert pool.starmap(tasks.add, [(i, i) for i in range(999)]) == [2 * i for i in range(999)]


def test_a_worker_starts_without_the_pool_machinery():
    """Workers start after every crash and every max_tasks_per_child calls: importing
    the worker must not pull in multiprocessing, cloudpickle, typing or the fronts."""
    import subprocess
    import sys

    code = (
        "import sys, hangfree._worker; "
        "heavy = [m for m in ('multiprocessing', 'cloudpickle', 'typing', 'hangfree.pool', "
        "'hangfree.executor', 'concurrent.futures') if m in sys.modules]; print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_the_package_names_load_on_first_use():
    import subprocess
    import sys

    code = (
        "import hangfree, multiprocessing; "
        "assert hangfree.TimeoutError is multiprocessing.TimeoutError; "
        "from hangfree import *; "
        "assert Pool.__module__ == 'hangfree.pool' and issubclass(WorkerLostError, HangfreeError); "
        "assert 'ProcessPoolExecutor' in dir(hangfree); "
        "print(sorted(set(hangfree.__all__) - set(dir(hangfree))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        hangfree.nope  # noqa: B018


def test_a_call_with_a_large_argument_is_named_briefly_and_quickly():
    """Errors name the call, e.g. ``add(b'...' (4194304 bytes), ...)``: a large bytes-like
    argument is cut before its repr is built (it took 6 ms per MiB)."""
    import time

    from hangfree._client import label

    blob = b"\x01" * (4 << 20)
    t0 = time.perf_counter()
    name = label(tasks.add, (blob, bytearray(blob)))
    assert time.perf_counter() - t0 < 0.05
    assert name.startswith("add(b'\\x01") and name.count(f"...' ({len(blob)} bytes)") == 2, name
    assert name.split(", ")[1].startswith("bytearray(b'") and len(name) < 500, name
    assert label(tasks.add, (b"ab", bytearray(b"c"))) == "add(b'ab', bytearray(b'c'))"


def test_imap_over_a_generator_yields_while_the_input_is_still_read(pool):
    """A feeder thread reads the input (as multiprocessing's task thread does): the
    first results come while the generator is still blocked, and imap() returns at once."""
    import time

    release = threading.Event()

    def items():
        yield from range(5)
        assert release.wait(30), "the test never let the generator go on"
        yield from range(5, 10)

    t0 = time.monotonic()
    it = pool.imap(tasks.square, items())
    assert time.monotonic() - t0 < 5
    assert [next(it) for _ in range(5)] == [0, 1, 4, 9, 16]
    release.set()
    assert list(it) == [x * x for x in range(5, 10)]
    got = sorted(pool.imap_unordered(tasks.square, (x for x in range(100)), chunksize=7))
    assert got == [x * x for x in range(100)]
    assert sorted(pool.imap_outcomes(tasks.square, iter(range(3)))) == [(0, 0), (1, 1), (2, 4)]


def test_an_input_that_raises_ends_the_results_there(pool):
    def items():
        yield from range(3)
        raise RuntimeError("the input broke")

    it = pool.imap(tasks.square, items())
    assert [next(it), next(it), next(it)] == [0, 1, 4]
    with pytest.raises(RuntimeError, match="the input broke"):
        next(it)
    with pytest.raises(StopIteration):
        next(it)
    out = list(pool.imap(tasks.square, items(), return_exceptions=True))
    assert out[:3] == [0, 1, 4] and isinstance(out[3], RuntimeError) and len(out) == 4


def test_close_and_join_wait_for_a_generator_being_read():
    """As with multiprocessing: close() right after imap() still runs every item."""
    p = hangfree.Pool(2)
    it = p.imap(tasks.square, (x for x in range(300)), chunksize=4)
    p.close()
    p.join()
    assert list(it) == [x * x for x in range(300)]


def test_terminate_while_a_generator_is_read_ends_its_results():
    release = threading.Event()

    def items():
        yield 1
        assert release.wait(30)
        yield from range(2, 50)

    p = hangfree.Pool(2)
    try:
        it = p.imap(tasks.square, items())
        assert next(it) == 1
        p.terminate()
        release.set()
        with pytest.raises((hangfree.HangfreeError, ValueError)):
            list(it)
    finally:
        release.set()
        p.terminate()
        p.join()


def test_close_then_join_while_chunks_are_still_out():
    """close() is deferred while packed chunks are out (their items may have to run
    again); join() right after it waits for them instead of refusing."""
    p = hangfree.Pool(2)
    r = p.map_async(tasks.square, range(200_000))
    p.close()
    p.join()
    assert r.get(timeout=0) == [x * x for x in range(200_000)]
