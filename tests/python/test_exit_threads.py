"""No thread of hangfree's runs Python code once the interpreter finalizes.

On CPython before 3.14 a thread that takes the GIL back during finalization is ended
with pthread_exit; inside a call of the extension that unwinds through Rust frames and
crashes the process at exit (a CI run on 3.9 segfaulted after Ctrl-C landed in a pool's
constructor). The exit handler stops every result thread, and the extension's gate parks
any other thread that comes back from an engine wait (see ``_client._stop_threads_for_exit``).
"""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time

import helpers

# Registered before hangfree is imported, so it runs after hangfree's exit handler (atexit
# runs handlers last-registered first): the state the interpreter finalizes with.
PROBE = """
    import atexit, threading

    def probe():
        from hangfree import _core
        parked = set(_core.parked_threads()) if hasattr(_core, "parked_threads") else set()
        running = [t.name for t in threading.enumerate()
                   if t.name.startswith("hangfree-") and t.is_alive() and t.native_id not in parked]
        print("running at finalization:", running, flush=True)

    # Not in the workers, which import this script too (their stdout is ours).
    if __name__ == "__main__":
        atexit.register(probe)
"""

HALF_MADE = PROBE + """
    import sys, threading
    import hangfree

    # Ctrl-C landing just after the pool's result thread started, before the constructor
    # returned (the exception is kept: it holds the half-made pool, whose thread goes on).
    _start = threading.Thread.start
    def start(self):
        _start(self)
        if self.name.endswith("-results"):
            raise KeyboardInterrupt
    threading.Thread.start = start

    if __name__ == "__main__":
        try:
            if sys.argv[1] == "pool":
                hangfree.Pool(2, grace=0.5)
            else:
                hangfree.ProcessPoolExecutor(2, grace=0.5)
        except KeyboardInterrupt as e:
            kept = e
        threading.Thread.start = _start
        print("half-made", [t.name for t in threading.enumerate() if t.name.endswith("-results")], flush=True)
"""


def _run_and_check(tmp_path, code, args, timeout=60):
    env = helpers.script_env(PYTHONFAULTHANDLER="1")
    script = helpers.write_script(tmp_path, code)
    res, _ = helpers.run_python([str(script), *args], timeout=timeout, env=env)
    left = helpers.wait_gone(helpers.marked_pids(helpers.SUBTAG_VAR, env[helpers.SUBTAG_VAR]), 10)
    helpers.kill_pids(left)
    return res, left


def test_the_result_thread_of_a_pool_half_made_by_ctrl_c_is_stopped_before_finalization(tmp_path):
    for kind in ("pool", "executor"):
        res, left = _run_and_check(tmp_path, HALF_MADE, [kind])
        assert res.returncode == 0, res.stdout + res.stderr
        assert "half-made ['hangfree-" in res.stdout, res.stdout + res.stderr
        assert "running at finalization: []" in res.stdout, res.stdout + res.stderr
        assert not left


GATE = PROBE + """
    import threading, time
    import hangfree
    from hangfree import _core

    if __name__ == "__main__":
        p = hangfree.Pool(1, grace=0.5)
        r = p.apply_async(time.sleep, (30,))
        waiter = threading.Thread(target=r.wait, daemon=True)
        waiter.start()
        time.sleep(0.2)
        _core.close_gate()
        deadline = time.monotonic() + 5
        while waiter.native_id not in _core.parked_threads() and time.monotonic() < deadline:
            time.sleep(0.01)
        print("parked", waiter.native_id in _core.parked_threads(), flush=True)
        # The thread that closed the gate goes on using pools.
        p.terminate()
        p.join()
        print("terminated", flush=True)
"""


def test_a_thread_coming_back_from_an_engine_wait_parks_once_the_gate_is_closed(tmp_path):
    res, left = _run_and_check(tmp_path, GATE, [])
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.split("\n")[:2] == ["parked True", "terminated"], res.stdout + res.stderr
    assert "running at finalization: []" in res.stdout, res.stdout + res.stderr
    assert not left


# Makes pools (and maps) until Ctrl-C, which nothing catches: the interpreter exits from
# wherever it lands. The window between a result thread's start and the constructor's
# return is widened (a few bytecodes otherwise).
CTRL_C_ANYWHERE = PROBE + """
    import sys, threading, time
    import hangfree

    _start = threading.Thread.start
    def start(self):
        _start(self)
        if self.name.endswith("-results"):
            time.sleep(0.02)
    threading.Thread.start = start

    def square(x):
        return x * x

    if __name__ == "__main__":
        kind = sys.argv[1]
        kept = []
        print("ready", flush=True)
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            if kind == "pool":
                with hangfree.Pool(2, grace=0.5) as p:
                    p.map(square, range(4))
            elif kind == "executor":
                with hangfree.ProcessPoolExecutor(2, grace=0.5) as ex:
                    list(ex.map(square, range(4)))
            else:  # left running for the exit handler
                kept.append(hangfree.Pool(2, grace=0.5))
                kept[-1].map_async(square, range(4))
"""


def test_ctrl_c_anywhere_in_making_pools_exits_cleanly(tmp_path):
    """Real SIGINT at random moments of Pool()/ProcessPoolExecutor() and their first map:
    the process ends by the signal (or normally, if the interrupt landed where it is
    swallowed), never by a crash, with no thread of hangfree's running at finalization
    and no process left."""
    script = helpers.write_script(tmp_path, CTRL_C_ANYWHERE)
    rng = random.Random(1)
    outcomes = []
    t0 = time.monotonic()
    runs = 0
    while runs < 40 and time.monotonic() - t0 < 14:
        kind = ("pool", "executor", "kept")[runs % 3]
        env = helpers.script_env(PYTHONFAULTHANDLER="1")
        proc = subprocess.Popen([sys.executable, str(script), kind], env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, start_new_session=True)
        try:
            assert proc.stdout.readline() == "ready\n"
            time.sleep(rng.uniform(0, 0.3))
            proc.send_signal(signal.SIGINT)
            out, err = proc.communicate(timeout=30)
        except BaseException:
            helpers.kill_tree(proc, env)
            raise
        left = helpers.wait_gone(helpers.marked_pids(helpers.SUBTAG_VAR, env[helpers.SUBTAG_VAR]), 10)
        helpers.kill_pids(left)
        outcomes.append(proc.returncode)
        assert proc.returncode in (-signal.SIGINT, 0), (kind, proc.returncode, out, err[-3000:])
        assert "Fatal Python error" not in err, (kind, err[-3000:])
        assert "running at finalization: []" in out, (kind, out, err[-3000:])
        assert not left, (kind, left)
        runs += 1
    assert runs >= 10, outcomes


# The crash itself: a collection in the result thread of a pool half-made by Ctrl-C runs a
# finalizer from inside an engine call (while the call builds its outcomes) and is still in
# it when the program ends. Unless the exit handler waits for that thread, the interpreter
# finalizes meanwhile and the thread, taking the GIL back, is ended by pthread_exit through
# the extension's Rust frames: abort or segfault.
FINALIZER_IN_ENGINE_CALL = """
    import gc, linecache, sys, threading, time
    import hangfree

    def square(x):
        return x * x

    if __name__ == "__main__":
        inside = threading.Event()

        def collecting(phase, info):
            f = sys._getframe(0).f_back
            if (phase == "start" and not inside.is_set() and threading.current_thread().name.endswith("-results")
                    and f is not None and "engine." in linecache.getline(f.f_code.co_filename, f.f_lineno)):
                inside.set()
                end = time.monotonic() + 0.5
                while time.monotonic() < end:
                    time.sleep(0.0005)

        _start = threading.Thread.start
        def start(self):
            _start(self)
            if self.name.endswith("-results"):
                raise KeyboardInterrupt
        threading.Thread.start = start
        try:
            hangfree.Pool(1, grace=0.5)
        except KeyboardInterrupt as e:
            kept = e
        threading.Thread.start = _start
        # The half-made pool's client, from the constructor's frame, is given a stream of
        # calls: its result thread then spends its time building outcomes.
        tb = kept.__traceback__
        while tb.tb_frame.f_code.co_name != "__init__" or "engine" not in tb.tb_frame.f_locals["self"].__dict__:
            tb = tb.tb_next
        client = tb.tb_frame.f_locals["self"]
        gc.callbacks.append(collecting)
        gc.set_threshold(20)
        deadline = time.monotonic() + 20
        while not inside.is_set() and time.monotonic() < deadline:
            client.submit(square, list(range(5000)), None, lambda i, ok, value: None, star=False)
            inside.wait(0.05)
        print("in a finalizer inside an engine call:", inside.is_set(), flush=True)
"""


def test_a_finalizer_running_inside_an_engine_call_at_exit_does_not_crash(tmp_path):
    # Three runs: without the wait, each crashes about two times in three (3.9 and 3.11).
    for _ in range(3):
        res, left = _run_and_check(tmp_path, FINALIZER_IN_ENGINE_CALL, [])
        assert res.returncode == 0, (res.returncode, res.stdout, res.stderr[-3000:])
        assert res.stdout == "in a finalizer inside an engine call: True\n", res.stdout + res.stderr
        assert "Fatal Python error" not in res.stderr, res.stderr
        assert not left
