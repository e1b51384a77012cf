"""The drop-in promise, mechanism by mechanism: the multiprocessing namespace, workers
that start as spawned children (authkey, the script imported as ``__mp_main__``,
interpreter flags), objects passed by inheritance through ``initargs``, functions by
reference or by value, and what a worker may not do at import. Each program runs in a
child interpreter, as a user's script does (its ``__main__`` is a file)."""

from __future__ import annotations

import multiprocessing
import multiprocessing.managers
import multiprocessing.pool
import multiprocessing.shared_memory
import sys

import pytest

import hangfree
import helpers

pytestmark = pytest.mark.timeout(90)


def run(tmp_path, code, *args, flags=(), timeout=60, name="prog.py"):
    script = helpers.write_script(tmp_path, code, name)
    res, _ = helpers.run_python([*flags, str(script), *args], timeout=timeout, cwd=tmp_path)
    return res


def test_the_whole_multiprocessing_namespace_is_there_and_is_the_stdlibs():
    missing = [n for n in multiprocessing.__all__ if not hasattr(hangfree, n)]
    assert missing == []
    for name in ("Process", "ProcessError", "AuthenticationError", "current_process", "active_children",
                 "parent_process"):
        assert getattr(hangfree, name) is getattr(multiprocessing, name), name
    assert hangfree.TimeoutError is multiprocessing.TimeoutError
    assert hangfree.get_context("spawn").Pool is not None
    assert set(multiprocessing.__all__) <= set(hangfree.__all__)
    import importlib

    from hangfree import connection
    from hangfree.context import BaseContext
    from hangfree.pool import RemoteTraceback, ThreadPool

    assert importlib.import_module("hangfree.managers") is multiprocessing.managers
    assert multiprocessing.managers.__spec__.name == "multiprocessing.managers"  # left as it was
    assert importlib.import_module("hangfree.shared_memory").SharedMemory is multiprocessing.shared_memory.SharedMemory
    assert connection is multiprocessing.connection
    assert ThreadPool is multiprocessing.pool.ThreadPool and RemoteTraceback is multiprocessing.pool.RemoteTraceback
    assert BaseContext is multiprocessing.context.BaseContext
    import concurrent.futures

    cf = importlib.import_module("hangfree.futures")
    assert cf.ProcessPoolExecutor is hangfree.ProcessPoolExecutor
    assert cf.as_completed is concurrent.futures.as_completed and hangfree.wait is concurrent.futures.wait
    with pytest.raises(AttributeError):
        hangfree.no_such_name  # noqa: B018


CONTEXTS = """
    import multiprocessing, sys
    import hangfree as mp

    def square(x):
        return x * x

    if __name__ == "__main__":
        mp.set_start_method("spawn")
        mp.freeze_support()
        print("method", mp.get_start_method(), multiprocessing.get_start_method())
        for ctx in (mp.get_context(), mp.get_context("spawn"), mp.get_context("fork"), mp.get_context("forkserver")):
            with ctx.Pool(2) as p:
                print(type(p).__module__, p.map(square, range(4)))
        with mp.Pool(2, context=multiprocessing.get_context("fork")) as p:
            print("context=", p.apply(square, (5,)))
        with mp.ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as ex:
            print("mp_context=", ex.submit(square, 6).result())
        with mp.get_context("spawn").ProcessPoolExecutor(1) as ex:
            print("ctx executor", type(ex).__module__, ex.submit(square, 7).result())
        q = mp.get_context("spawn").Queue()
        proc = mp.get_context("spawn").Process(target=square, args=(3,))
        proc.start(); proc.join()
        print("process", proc.exitcode, type(proc).__module__)
"""


def test_contexts_and_start_methods(tmp_path):
    res = run(tmp_path, CONTEXTS)
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines() == [
        "method spawn spawn",
        *["hangfree.pool [0, 1, 4, 9]"] * 4,
        "context= 25",
        "mp_context= 36",
        "ctx executor hangfree.executor 49",
        "process 0 multiprocessing.context",
    ]


INHERIT = """
    import os, sys
    import hangfree as mp

    def init(lock, counter, array, queue, event, manager_dict, proxy_queue, rlock, sem):
        global LOCK, COUNTER, ARRAY, QUEUE, EVENT, MDICT, MQUEUE
        LOCK, COUNTER, ARRAY, QUEUE, EVENT, MDICT, MQUEUE = lock, counter, array, queue, event, manager_dict, proxy_queue
        with rlock, sem:
            pass

    def bump(i):
        with LOCK:
            COUNTER.value += 1
        ARRAY[i % len(ARRAY)] = i
        QUEUE.put(i)
        MDICT[i] = os.getpid()
        MQUEUE.put(-i)
        return EVENT.is_set()

    if __name__ == "__main__":
        fork_server = sys.argv[1] == "fork-server"
        lock, counter, array = mp.Lock(), mp.Value("i", 0), mp.Array("i", 4)
        queue, event = mp.Queue(), mp.Event()
        event.set()
        with mp.Manager() as m:
            d, mq = m.dict(), m.Queue()
            # One task per worker: every call starts a fresh worker, which must get
            # working handles of its own.
            with mp.Pool(2, initializer=init, maxtasksperchild=1, fork_server=fork_server,
                         initargs=(lock, counter, array, queue, event, d, mq, mp.RLock(), mp.Semaphore(2))) as p:
                flags = p.map(bump, range(40), chunksize=1)
                got = sorted(queue.get(timeout=10) for _ in range(40))
                proxied = sorted(mq.get(timeout=10) for _ in range(40))
            print("counter", counter.value, "all set", all(flags))
            print("queue", got == list(range(40)), "manager", len(d), proxied == sorted(-i for i in range(40)))
            print("workers", len(set(d.values())) >= 10)
"""


@pytest.mark.parametrize("mode", ["fork-server", "exec"])
def test_objects_shared_by_inheritance_reach_every_worker(tmp_path, mode):
    """Locks, Values, Arrays, queues, events and Manager proxies through initargs, as a
    spawned child may inherit them; respawned workers get working handles too."""
    res = run(tmp_path, INHERIT, mode)
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines() == ["counter 40 all set True", "queue True manager 40 True", "workers True"]


FORK_LOCK = """
    import multiprocessing
    import hangfree as mp

    def init(lock):
        pass

    if __name__ == "__main__":
        try:
            mp.Pool(1, initializer=init, initargs=(multiprocessing.get_context("fork").Lock(),))
        except ValueError as e:
            print("ValueError", "fork start method" in str(e))
        with mp.Pool(1, initializer=init, initargs=(mp.Lock(),)) as p:
            print(p.apply(abs, (-3,)))
"""


def test_a_lock_only_forked_children_can_share_is_refused_clearly(tmp_path):
    res = run(tmp_path, FORK_LOCK)
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines() == ["ValueError True", "3"]


AUTHKEY = """
    import os
    import hangfree as mp

    def me():
        from multiprocessing import current_process
        with open(f"/proc/{os.getpid()}/cmdline", "rb") as f:
            cmdline = f.read()
        with open(f"/proc/{os.getpid()}/environ", "rb") as f:
            environ = f.read()
        key = bytes(current_process().authkey)
        return key, key.hex().encode() in cmdline + environ or key in cmdline + environ, __name__

    if __name__ == "__main__":
        key = bytes(mp.current_process().authkey)
        with mp.Pool(1) as p, mp.ProcessPoolExecutor(1) as ex:
            for theirs, leaked, name in (p.apply(me), ex.submit(me).result()):
                print(theirs == key, leaked, name)
"""


def test_workers_carry_the_callers_authkey_but_not_in_argv_or_environment(tmp_path):
    res = run(tmp_path, AUTHKEY)
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines() == ["True False __mp_main__"] * 2


FLAGS = """
    import sys, warnings
    import hangfree as mp

    def flags():
        return (sys.flags.optimize, sys.flags.dev_mode, bool(sys.flags.dont_write_bytecode),
                any(f[0] == "error" and f[2] is UserWarning for f in warnings.filters))

    if __name__ == "__main__":
        with mp.Pool(1) as p:
            print(p.apply(flags) == flags(), p.apply(flags))
"""


def test_interpreter_flags_reach_the_workers(tmp_path):
    res = run(tmp_path, FLAGS, flags=["-O", "-X", "dev", "-B", "-W", "error::UserWarning"])
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "True (1, True, True, True)"


SCRIPT = """
    import sys
    import hangfree as mp

    CONN = None
    SETTING = "as imported"

    def connect(name):
        global CONN
        CONN = f"connection to {name}"

    def query(x):
        return CONN, x

    def setting(_):
        return SETTING

    def fails(x):
        raise ValueError(f"bad {x}")

    class Point:
        def __init__(self, x):
            self.x = x

    def moved(p):
        return Point(p.x + 1)

    if __name__ == "__main__":
        def defined_in_the_guard(x):
            return ("guard", x, SETTING)

        with mp.Pool(2, initializer=connect, initargs=("db",)) as p:
            print(p.map(query, [1, 2]))
            print(p.apply(moved, (Point(1),)).x, type(p.apply(moved, (Point(1),))).__module__)
            print(p.apply(defined_in_the_guard, (3,)))
            try:
                p.apply(fails, (7,))
            except ValueError as e:
                tb = str(e.__cause__)
                print("traceback names the script:", sys.argv[0] in tb, "raise ValueError" in tb)
        for SETTING in ("first", "second"):
            FRESH = SETTING
            with mp.Pool(1) as p:
                # A name the script binds on import is the worker's (as under spawn),
                # whether the function came by reference or by value; a name only the
                # main block binds comes with a by-value function, as it is now.
                print(p.apply(setting, (0,)), p.apply(defined_in_the_guard, (0,))[2], p.apply(lambda: SETTING),
                      p.apply(lambda: FRESH))
"""


def test_the_script_is_imported_and_its_functions_travel_by_reference(tmp_path):
    res = run(tmp_path, SCRIPT)
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines() == [
        "[('connection to db', 1), ('connection to db', 2)]",
        "2 __main__",
        "('guard', 3, 'as imported')",
        "traceback names the script: True True",
        "as imported as imported as imported first",
        "as imported as imported as imported second",
    ]


UNGUARDED = """
    import hangfree as mp

    def square(x):
        return x * x

    # No `if __name__ == "__main__":` guard: fine under fork, so fine here.
    with mp.Pool(2) as p:
        print(p.map(square, range(4)), p.map(lambda x: -x, range(3)))
"""


def test_a_script_without_a_guard_works_as_under_fork(tmp_path):
    res = run(tmp_path, UNGUARDED)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "[0, 1, 4, 9] [0, -1, -2]"


GUARD_FORMS = """
    import json, sys
    import hangfree as mp

    MARK = 1

    def imported_main():
        m = sys.modules.get("__mp_main__")
        return m is not None and hasattr(m, "MARK")

    def ask(where):
        with mp.Pool(1) as p:
            print(where, p.apply(imported_main))

    if __name__ == "__main__":
        ask("guard")
        for _ in range(1):
            ask("guard-loop")
        try:
            ask("guard-try")
        finally:
            pass
    if "__main__" == __name__:
        ask("reversed")
    ask("ternary") if __name__ == "__main__" else None
    # Not a main guard: from here on the script is one that works under fork.
    if __name__ != "__mp_main__":
        ask("other-test")
    if __name__ == "__main__":
        ask("guard-after-unguarded")
"""


def test_workers_import_the_script_exactly_when_the_pool_is_made_under_a_main_guard(tmp_path):
    # Read from the running module's bytecode, not its source: the forms a guard takes.
    res = run(tmp_path, GUARD_FORMS)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split("\n")[:-1] == [
        "guard True", "guard-loop True", "guard-try True", "reversed True", "ternary True",
        "other-test False", "guard-after-unguarded False"]


def test_a_workers_preparation_reaches_it_whatever_its_strings_hold(tmp_path):
    # The worker's command line carries its preparation as JSON written without the json
    # module: argv and paths with quotes, backslashes, controls, non-ASCII, surrogates.
    import json

    from hangfree._client import _json

    for value in ["", 'q"uote\\', "tab\tnl\n\x00\x7f\x80", "é€𝄞\udcff", ["a", {"k": [None, True, 3]}]]:
        assert json.loads(_json(value)) == value
    res = run(tmp_path, """
        import sys
        import hangfree as mp

        def argv():
            return sys.argv

        if __name__ == "__main__":
            with mp.Pool(1) as p:
                print(p.apply(argv) == sys.argv)
    """, 'a "quoted" \\ arg', "tab\there", "\u00e9\u20ac\U0001d11e")
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "True"


POOL_ON_IMPORT = """
    import hangfree as mp

    def square(x):
        return x * x

    if __name__ != "__main__":
        # Runs when a worker imports this script: a pool made while it starts.
        mp.Pool(1)

    if __name__ == "__main__":
        try:
            with mp.Pool(1) as p:
                p.apply(square, (2,))
        except mp.InitializerError as e:
            print("InitializerError", "importing the main script" in str(e), "bootstrapping phase" in str(e))
"""


def test_a_worker_that_would_make_a_pool_while_importing_the_script_gets_the_stdlib_error(tmp_path):
    res = run(tmp_path, POOL_ON_IMPORT)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "InitializerError True True"


THREADS_ON_IMPORT = """
    import logging, os, threading, time
    import hangfree as mp

    # A library that starts a thread when imported (as OpenBLAS does under numpy).
    threading.Thread(target=time.sleep, args=(600,), daemon=True).start()

    def threads(_):
        return len(os.listdir("/proc/self/task")) >= 2

    if __name__ == "__main__":
        records = []
        handler = logging.Handler()
        handler.emit = records.append
        logging.getLogger("hangfree").addHandler(handler)
        logging.getLogger("hangfree").setLevel(logging.DEBUG)
        with mp.Pool(2, maxtasksperchild=1) as p:
            print(p.map(threads, range(6), chunksize=1))
        print("server failed", any("fork server failed" in r.getMessage() for r in records))
        print("workers", sum("started worker" in r.getMessage() for r in records) >= 6)
"""


def test_a_script_that_starts_threads_on_import_is_imported_after_each_fork(tmp_path):
    """A fork copies one thread: a fork server whose script started threads starts over
    without the script, and each forked worker imports it (its threads its own)."""
    res = run(tmp_path, THREADS_ON_IMPORT)
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines() == ["[True, True, True, True, True, True]", "server failed False", "workers True"]


NATIVE_THREAD_IN_CALLER = """
    import _thread, logging, os, re, sys, time
    import hangfree as mp

    # A thread Python's threading module does not know, as a native library's would be.
    _thread.start_new_thread(time.sleep, (600,))
    with open(os.environ["IMPORT_LOG"], "a") as f:
        f.write(f"{os.getpid()}\\n")

    def pid(_):
        return os.getpid()

    if __name__ == "__main__":
        records = []
        handler = logging.Handler()
        handler.emit = records.append
        logging.getLogger("hangfree").addHandler(handler)
        logging.getLogger("hangfree").setLevel(logging.DEBUG)
        with mp.Pool(2) as p:
            workers = set(p.map(pid, range(8), chunksize=1))
        server = [int(m.group(1)) for r in records for m in [re.search(r"started the fork server (\\d+)", r.getMessage())] if m]
        with open(os.environ["IMPORT_LOG"]) as f:
            imported = {int(line) for line in f}
        print("server imported the script:", bool(set(server) & imported))
        print("every worker imported it:", workers <= imported)
"""


def test_a_caller_running_library_threads_has_each_worker_import_the_script(tmp_path):
    """The caller's own threads tell that the script's imports start some: the fork
    server does not import it (it could not fork after), each forked worker does."""
    script = helpers.write_script(tmp_path, NATIVE_THREAD_IN_CALLER)
    env = helpers.script_env(IMPORT_LOG=str(tmp_path / "imports"))
    res, _ = helpers.run_python([str(script)], timeout=60, cwd=tmp_path, env=env)
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines() == ["server imported the script: False", "every worker imported it: True"]


READS_STDIN = """
    import sys
    import hangfree as mp

    DATA = sys.stdin.read()  # on import, outside the guard: a worker reads /dev/null

    def f(x):
        return x, len(DATA)

    if __name__ == "__main__":
        with mp.Pool(2) as p:
            print(p.map(f, [1, 2]), len(DATA))
"""


def test_a_script_that_reads_stdin_on_import_cannot_eat_the_fork_servers_requests(tmp_path):
    import subprocess
    import time

    script = helpers.write_script(tmp_path, READS_STDIN)
    t0 = time.monotonic()
    res = subprocess.run([sys.executable, str(script)], input="hello\n", capture_output=True, text=True,
                         timeout=60, env=helpers.script_env(), cwd=tmp_path)
    elapsed = time.monotonic() - t0
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "[(1, 0), (2, 0)] 6"
    # Not the fork server's 10 s first-answer limit, then workers by exec.
    assert elapsed < 8, elapsed


IDENTITY = """
    import os, time
    import hangfree as mp

    def who(_):
        time.sleep(0.05)
        me = mp.current_process()
        return me._identity, me.name

    def die():
        os._exit(1)

    if __name__ == "__main__":
        with mp.Pool(2) as p:
            print(sorted(set(p.map(who, range(4), chunksize=1))))
            try:
                p.apply(die)
            except mp.WorkerLostError:
                pass
            print(len(set(p.map(who, range(6), chunksize=1)) - {((1,), "HangfreePoolWorker-1"),
                                                                ((2,), "HangfreePoolWorker-2")}))
"""


def test_workers_are_numbered_as_a_stdlib_pools_are(tmp_path):
    res = run(tmp_path, IDENTITY)
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines() == [
        "[((1,), 'HangfreePoolWorker-1'), ((2,), 'HangfreePoolWorker-2')]",
        "1",  # the replacement: number 3
    ]


EXECUTOR_EXCEPTIONS = """
    import sys, threading
    import hangfree as mp

    def leave(code):
        sys.exit(code)

    def unpicklable_result():
        return threading.Lock()

    if __name__ == "__main__":
        with mp.ProcessPoolExecutor(1) as ex:
            e = ex.submit(leave, 4).exception(timeout=30)
            print(type(e).__name__, e.code)
            e = ex.submit(unpicklable_result).exception(timeout=30)
            print(type(e).__name__, "_thread.lock" in str(e))
            print(ex.submit(abs, -2).result(timeout=30))
        with mp.Pool(1) as p:
            try:
                p.apply(unpicklable_result)
            except Exception as e:
                print(type(e).__name__)
"""


def test_executor_exceptions_are_the_stdlibs(tmp_path):
    res = run(tmp_path, EXECUTOR_EXCEPTIONS)
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines() == ["SystemExit 4", "TypeError True", "2", "MaybeEncodingError"]


LEFT_OPEN = """
    import sys, time
    from hangfree import ProcessPoolExecutor

    def write(path, delay):
        time.sleep(delay)
        with open(path, "w") as f:
            f.write("written")

    if __name__ == "__main__":
        ex = ProcessPoolExecutor(1)
        ex.submit(write, sys.argv[1] + ".open", 0.5)
        other = ProcessPoolExecutor(1)
        other.submit(write, sys.argv[1] + ".nowait", 0.5)
        other.shutdown(wait=False)
        print("main returns", flush=True)
"""


def test_an_executors_submitted_calls_run_before_the_interpreter_exits(tmp_path):
    base = tmp_path / "out"
    res = run(tmp_path, LEFT_OPEN, str(base))
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "out.open").read_text() == "written"
    assert (tmp_path / "out.nowait").read_text() == "written"


STUCK_AT_EXIT = """
    import sys, time
    from hangfree import ProcessPoolExecutor

    if __name__ == "__main__":
        ex = ProcessPoolExecutor(1, grace=0.5)
        ex.submit(time.sleep, 600)
        print("main returns", flush=True)
"""


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT"])
def test_a_signal_while_calls_finish_at_exit_stops_them_and_says_so(tmp_path, sig):
    import signal
    import subprocess
    import time

    script = helpers.write_script(tmp_path, STUCK_AT_EXIT)
    env = helpers.script_env()
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        assert proc.stdout.readline().strip() == "main returns"
        time.sleep(0.5)  # into the exit handler's wait
        t0 = time.monotonic()
        proc.send_signal(getattr(signal, sig))
        _, err = proc.communicate(timeout=20)
        elapsed = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            helpers.kill_tree(proc, env)
    assert proc.returncode == -getattr(signal, sig), err
    assert "at interpreter exit: stopping the calls still running" in err
    assert elapsed < 0.5 + 3.0, elapsed
