"""The fork server the Python front starts its workers from: workers are forked children
of this process (not of the server), a crash or abort in one never touches the server,
and a server that dies is replaced by exec with a warning. Real processes, time-bounded."""

from __future__ import annotations

import logging
import os
import signal
import time

import pytest

import fork_tasks as ft
import hangfree
import helpers

SERVER_NAME = "hf-fork-server"


def comm(pid):
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return None


def fork_servers():
    """Our live children that are fork servers."""
    return {p for p in helpers.children(os.getpid()) if comm(p) == SERVER_NAME}


def was_forked(pid):
    """A forked worker keeps the server's original environment block, which holds the
    variable the server was started with; an exec'd worker never has it."""
    with open(f"/proc/{pid}/environ", "rb") as f:
        return b"HANGFREE_FORK_SERVER=1\0" in f.read()


def wait_for(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout} s")
        time.sleep(0.01)


def test_workers_are_forked_children_of_ours_and_the_server_is_kept_until_released():
    with hangfree.Pool(2) as p:
        results = p.map(ft.origin, range(8), chunksize=1)
        # (A worker forked a moment ago carries the server's name until it takes its own.)
        wait_for(lambda: len(fork_servers()) == 1, 5.0, "one fork server")
        servers = fork_servers()
        for pid, ppid, seen in results:
            assert ppid == os.getpid(), "a forked worker is a child of the pool's process"
            assert was_forked(pid)
            assert not seen, "the fork server's variable must not reach tasks"
            assert os.getpgid(pid) == pid, "each worker leads its own process group"
        (server,) = servers
        assert os.getpgid(server) == server
        p.close()
        p.join()
    # Kept, idle, for the next pool of this process; released, it is stopped and reaped.
    assert fork_servers() == {server}
    assert hangfree.release_fork_servers() == 1
    assert not helpers.alive(server) and not helpers.zombie(server)
    assert not fork_servers()


def test_replacements_after_crashes_are_forked_by_the_same_server():
    with hangfree.Pool(2) as p:
        before = {r[0] for r in p.map(ft.origin, range(4), chunksize=1)}
        (server,) = fork_servers()
        for f, how in ((ft.crash, "exit code 3"), (ft.abort, "SIGABRT")):
            crashes = [p.apply_async(f) for _ in range(2)]
            for c in crashes:
                with pytest.raises(hangfree.WorkerLostError, match=how):
                    c.get(timeout=30)
        pid, ppid, _ = p.apply(ft.origin)
        assert pid not in before and ppid == os.getpid() and was_forked(pid)
        # abort() signals the calling thread by the C library's cached id: had the fork
        # left it stale, SIGABRT would have hit the server. (A worker forked a moment
        # ago still carries the server's name until it takes its own back: wait for that.)
        wait_for(lambda: fork_servers() == {server}, 5.0, "the one fork server, unharmed")


def test_executor_workers_are_forked_too():
    with hangfree.ProcessPoolExecutor(2) as ex:
        pid, ppid, seen = ex.submit(ft.origin).result(timeout=30)
        assert was_forked(pid) and ppid == os.getpid() and not seen
        wait_for(lambda: len(fork_servers()) == 1, 5.0, "one fork server")


def test_a_killed_fork_server_is_reported_and_workers_start_by_exec(caplog):
    caplog.set_level(logging.WARNING, logger="hangfree")
    with hangfree.Pool(1) as p:
        first = p.apply(ft.origin)[0]
        (server,) = fork_servers()
        os.kill(server, signal.SIGKILL)
        with pytest.raises(hangfree.WorkerLostError):
            p.apply(ft.crash)
        pid, ppid, _ = p.apply(ft.origin)
        assert pid != first and ppid == os.getpid()
        assert not was_forked(pid), "with its server dead, the new worker was exec'd"
        assert p.map(abs, [-1, -2]) == [1, 2]
        wait_for(lambda: any("fork server failed" in r.getMessage() for r in caplog.records), 10,
                 "a warning about the fork server")
        wait_for(lambda: not helpers.zombie(server), 5, "the dead server to be reaped")


def test_fork_server_false_starts_every_worker_by_exec():
    with hangfree.Pool(2, fork_server=False) as p:
        results = p.map(ft.origin, range(4), chunksize=1)
        assert not fork_servers()
        for pid, ppid, _ in results:
            assert ppid == os.getpid() and not was_forked(pid)
    with hangfree.ProcessPoolExecutor(1, fork_server=False) as ex:
        pid, ppid, _ = ex.submit(ft.origin).result(timeout=30)
        assert ppid == os.getpid() and not was_forked(pid)
        assert not fork_servers()


NUMPY_SCRIPT = """
    import os
    import numpy
    import hangfree

    IMPORTED_BY = os.getpid()

    def where(_):
        threads = len(os.listdir("/proc/self/task"))
        return IMPORTED_BY != os.getpid(), threads, os.environ.get("OPENBLAS_NUM_THREADS")

    if __name__ == "__main__":
        with hangfree.Pool(2) as pool:
            print(pool.map(where, range(4), chunksize=1))
        print("caller", os.environ.get("OPENBLAS_NUM_THREADS"))
"""


def test_workers_inherit_a_script_that_imports_numpy(tmp_path):
    """The fork server loads numpy's OpenBLAS without threads, so it can keep the script's
    imports: workers are forked with them (the script was imported once, in the server,
    not in each worker), run one thread, and see the caller's environment unchanged."""
    pytest.importorskip("numpy")
    script = helpers.write_script(tmp_path, NUMPY_SCRIPT)
    env = helpers.script_env()
    env.pop("OPENBLAS_NUM_THREADS", None)
    env.pop("GOTO_NUM_THREADS", None)
    proc, _ = helpers.run_python([str(script)], timeout=60, env=env)
    assert proc.returncode == 0, proc.stderr
    workers, caller = proc.stdout.splitlines()
    assert workers == repr([(True, 1, None)] * 4)
    assert caller == "caller None"


def imported_elsewhere(_):
    import preload_probe

    return preload_probe.IMPORTED_BY != os.getpid()


@pytest.mark.parametrize("front", ["Pool", "ProcessPoolExecutor"])
def test_preload_imports_modules_once_in_the_fork_server(front):
    """``preload`` modules are imported by the fork server before it forks: every worker
    has them already (imported by another process, the server), none imports them."""
    if front == "Pool":
        with hangfree.Pool(2, preload=["preload_probe"]) as pool:
            got = pool.map(imported_elsewhere, range(4), chunksize=1)
    else:
        with hangfree.ProcessPoolExecutor(2, preload=["preload_probe"]) as ex:
            got = list(ex.map(imported_elsewhere, range(4)))
    assert got == [True] * 4


def test_a_preload_module_that_cannot_be_imported_is_an_initializer_error_naming_it():
    with hangfree.Pool(1, preload=["no_such_module_here"]) as pool:
        with pytest.raises(hangfree.InitializerError, match=r"importing no_such_module_here \(preload\)"):
            pool.apply(abs, (-1,))


def test_preload_takes_module_names():
    with pytest.raises(TypeError, match="preload"):
        hangfree.Pool(1, preload="numpy")
