"""Hostile environments: the host ignores SIGCHLD or SIGINT, has many threads and open
files, has no stdout or a stderr nobody reads; a task closes its stdout, floods stderr,
starts a setsid daemon; 200 pools in a loop; two pools shared by 8 threads.

Each test is time-limited. Where the host's process state must change (signal
dispositions, descriptors, threads, rlimits), the host is a child interpreter running a
small script, which prints one JSON line with what it saw.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading

import pytest

import hangfree
import helpers
import hostile_env_tasks as T

# What "a small constant" on top of the grace period may be on a loaded 2-core machine.
SLACK = 2.5


def run_script(tmp_path, code: str, timeout: float = 60.0, args=()) -> dict:
    """Runs ``code`` in a child interpreter; returns the JSON of its last stdout line."""
    script = helpers.write_script(tmp_path, code)
    proc, elapsed = helpers.run_python([str(script), *args], timeout=timeout, cwd=tmp_path)
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr[-4000:]}"
    lines = [l for l in proc.stdout.splitlines() if l.startswith("{")]
    assert lines, f"no JSON line\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr[-4000:]}"
    out = json.loads(lines[-1])
    out["_elapsed"] = elapsed
    return out


# Shared by the scripts: /proc counts of this process.
PROC_HELPERS = r"""
import os, threading
def fds():
    out = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target != f"/proc/{os.getpid()}/fd":  # the listing's own descriptor
            out.append(f"{fd}->{target}")
    return sorted(out)
def nthreads():
    return len(os.listdir("/proc/self/task"))
def children():
    me = os.getpid()
    out = []
    for p in os.listdir("/proc"):
        if not p.isdigit():
            continue
        try:
            with open(f"/proc/{p}/stat", "rb") as f:
                d = f.read()
        except OSError:
            continue
        rest = d[d.rindex(b")") + 2:].split()
        if int(rest[1]) == me:
            out.append((int(p), rest[0].decode()))
    return out
"""


# ----- signal dispositions of the host --------------------------------------------------

@pytest.mark.timeout(90)
def test_host_ignores_sigchld(tmp_path):
    """With SIGCHLD ignored the kernel reaps workers itself (no exit status to read): a
    death must still be an outcome, and nothing may hang or be left."""
    out = run_script(tmp_path, PROC_HELPERS + r"""
import json, signal, time
import hangfree, hostile_env_tasks as T
signal.signal(signal.SIGCHLD, signal.SIG_IGN)
res = {}
with hangfree.Pool(2, grace=0.3) as p:
    res["map"] = p.map(T.square, range(50)) == [x * x for x in range(50)]
    try:
        p.apply(T.exit_, (3,))
        res["exit"] = "no error"
    except hangfree.WorkerLostError as e:
        res["exit"] = "WorkerLostError"
        res["exit_msg"] = str(e)
    try:
        p.apply(T.sleep, (30,), task_timeout=0.3)
        res["timeout"] = "no error"
    except hangfree.TaskTimeoutError:
        res["timeout"] = "TaskTimeoutError"
    res["after"] = p.map(T.square, range(20)) == [x * x for x in range(20)]
    t0 = time.monotonic()
    p.apply_async(T.sleep, (30,))
    time.sleep(0.3)
p.join()
res["terminate_s"] = time.monotonic() - t0
with hangfree.ProcessPoolExecutor(2) as ex:
    f = ex.submit(T.exit_, 4)
    res["ex_exit"] = type(f.exception(30)).__name__
    res["ex_after"] = ex.submit(T.square, 7).result(30)
res["sigchld_still_ignored"] = signal.getsignal(signal.SIGCHLD) == signal.SIG_IGN
# The fork server kept for a later pool is the process's; stopped here, it must go too.
res["released"] = hangfree.release_fork_servers()
res["children"] = children()
print(json.dumps(res))
""")
    assert out["map"] and out["after"], out
    assert out["exit"] == "WorkerLostError", out
    assert out["timeout"] == "TaskTimeoutError", out
    assert out["terminate_s"] < 0.3 + SLACK, out
    assert out["ex_exit"] == "WorkerLostError" and out["ex_after"] == 49, out
    assert out["sigchld_still_ignored"], out
    assert out["children"] == [], out


@pytest.mark.timeout(90)
def test_host_ignores_sigint(tmp_path):
    """SIGINT set to ignored by the host: hangfree must not install its own handler or
    turn a SIGINT into KeyboardInterrupt; the pool keeps working through one."""
    out = run_script(tmp_path, PROC_HELPERS + r"""
import json, os, signal, time
import hangfree, hostile_env_tasks as T
signal.signal(signal.SIGINT, signal.SIG_IGN)
res = {}
with hangfree.Pool(2, grace=0.3) as p:
    r = p.map_async(T.sleep, [0.5, 0.5, 0.5, 0.5])
    time.sleep(0.2)
    os.kill(os.getpid(), signal.SIGINT)
    try:
        res["map"] = r.get(30)
    except BaseException as e:
        res["map"] = f"{type(e).__name__}: {e}"
    try:
        p.apply(T.exit_, (2,))
    except hangfree.WorkerLostError:
        res["exit"] = "WorkerLostError"
    res["after"] = p.apply(T.square, (9,))
with hangfree.ProcessPoolExecutor(2) as ex:
    f = ex.submit(T.sleep, 0.5)
    os.kill(os.getpid(), signal.SIGINT)
    res["ex"] = f.result(30)
res["sigint_still_ignored"] = signal.getsignal(signal.SIGINT) == signal.SIG_IGN
# The fork server kept for a later pool is the process's; stopped here, it must go too.
res["released"] = hangfree.release_fork_servers()
res["children"] = children()
print(json.dumps(res))
""")
    assert out["map"] == [0.5, 0.5, 0.5, 0.5], out
    assert out["exit"] == "WorkerLostError", out
    assert out["after"] == 81 and out["ex"] == 0.5, out
    assert out["sigint_still_ignored"], out
    assert out["children"] == [], out


# ----- a crowded host --------------------------------------------------------------------

@pytest.mark.timeout(120)
def test_host_with_many_threads_and_open_files(tmp_path):
    """200 threads and ~3000 open descriptors (numbers past 1024, some inheritable) in
    the host: the pool works, faults are handled, and afterwards the counts are back."""
    out = run_script(tmp_path, PROC_HELPERS + r"""
import json, os, resource, threading, time
import hangfree, hostile_env_tasks as T
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
want = 4096 if hard == resource.RLIM_INFINITY else min(4096, hard)
if soft < want:
    resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
files = [os.open("/dev/null", os.O_RDONLY) for _ in range(min(3000, want - 200))]
for fd in files[:50]:
    os.set_inheritable(fd, True)
stop = threading.Event()
threads = [threading.Thread(target=stop.wait, daemon=True) for _ in range(200)]
for t in threads:
    t.start()
res = {"open": len(files), "max_fd": max(files)}
base_fds, base_threads = fds(), nthreads()
# A first pool warms up imports and the extension.
with hangfree.Pool(2) as p:
    p.map(T.square, range(10))
base_fds, base_threads = fds(), nthreads()
t0 = time.monotonic()
with hangfree.Pool(2, grace=0.3) as p:
    res["map"] = p.map(T.square, range(500), chunksize=5) == [x * x for x in range(500)]
    try:
        p.apply(T.exit_, (3,))
    except hangfree.WorkerLostError:
        res["exit"] = "WorkerLostError"
    try:
        p.apply(T.sleep, (30,), task_timeout=0.3)
    except hangfree.TaskTimeoutError:
        res["timeout"] = "TaskTimeoutError"
    res["after"] = p.map(T.square, range(100)) == [x * x for x in range(100)]
    p.close()
    p.join()
with hangfree.ProcessPoolExecutor(2) as ex:
    res["ex"] = list(ex.map(T.square, range(100))) == [x * x for x in range(100)]
res["elapsed"] = time.monotonic() - t0
# A terminated pool object still holds its engine's eventfd until it is dropped.
del p, ex
deadline = time.monotonic() + 3
while (fds() != base_fds or nthreads() != base_threads) and time.monotonic() < deadline:
    time.sleep(0.05)
res["fds_before_gc"] = sorted(set(fds()) - set(base_fds))
import gc
gc.collect()
res["fds_leaked"] = sorted(set(fds()) - set(base_fds))
res["threads_leaked"] = nthreads() - base_threads
# The fork server kept for a later pool is the process's; stopped here, it must go too.
res["released"] = hangfree.release_fork_servers()
res["children"] = children()
stop.set()
print(json.dumps(res))
""")
    assert out["open"] >= 900, out
    assert out["map"] and out["after"] and out["ex"], out
    assert out["exit"] == "WorkerLostError" and out["timeout"] == "TaskTimeoutError", out
    assert out["fds_leaked"] == [] and out["threads_leaked"] <= 0, out
    assert out["children"] == [], out


# ----- stdout and stderr -------------------------------------------------------------------

@pytest.mark.timeout(60)
def test_task_closes_its_workers_stdout():
    with hangfree.Pool(2, grace=0.3) as p:
        first = p.map(T.close_stdout_and_print, range(8), chunksize=1)
        assert sorted(x for x, _ in first) == list(range(8))
        assert all(msg in ("printed", "OSError 9") for _, msg in first), first
        # The workers go on with stdout closed.
        assert p.map(T.square, range(50)) == [x * x for x in range(50)]
        with pytest.raises(hangfree.WorkerLostError):
            p.apply(T.exit_, (3,))
        assert p.map(T.print_and_square, range(20), return_exceptions=True) is not None
        assert p.apply(T.square, (5,)) == 25


@pytest.mark.timeout(90)
def test_host_with_stdout_closed(tmp_path):
    """The host runs with fd 1 closed, so the first descriptor it opens becomes fd 1: the
    workers' channels must never end up as their (inherited) stdout."""
    result = tmp_path / "result.json"
    out_code = PROC_HELPERS + r"""
import json, os, sys, time
os.close(1)
import hangfree, hostile_env_tasks as T
res = {}
with hangfree.Pool(2, grace=0.3) as p:
    res["map"] = p.map(T.print_and_square, range(100), chunksize=3) == [x * x for x in range(100)]
    try:
        p.apply(T.exit_, (3,))
    except hangfree.WorkerLostError:
        res["exit"] = "WorkerLostError"
    res["after"] = p.map(T.print_and_square, range(30)) == [x * x for x in range(30)]
with hangfree.ProcessPoolExecutor(2) as ex:
    res["ex"] = [ex.submit(T.print_and_square, x).result(30) for x in range(10)] == [x * x for x in range(10)]
# The fork server kept for a later pool is the process's; stopped here, it must go too.
res["released"] = hangfree.release_fork_servers()
res["children"] = children()
with open(sys.argv[1], "w") as f:
    json.dump(res, f)
"""
    script = helpers.write_script(tmp_path, out_code)
    proc, _ = helpers.run_python([str(script), str(result)], timeout=60, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = json.loads(result.read_text())
    assert out["map"] and out["after"] and out["ex"], (out, proc.stderr[-3000:])
    assert out["exit"] == "WorkerLostError", out
    assert out["children"] == [], out


@pytest.mark.timeout(90)
def test_task_floods_stderr(tmp_path):
    """Tasks writing megabytes to stderr: no hang, no stall of the other tasks, and the
    tail kept for a lost worker's error stays small and ends with the last line."""
    out = run_script(tmp_path, PROC_HELPERS + r"""
import json, time
import hangfree, hostile_env_tasks as T
res = {}
t0 = time.monotonic()
with hangfree.Pool(2, grace=0.3) as p:
    floods = [p.apply_async(T.flood_stderr, (16,)) for _ in range(2)]
    res["map"] = p.map(T.square, range(200)) == [x * x for x in range(200)]
    res["floods"] = [r.get(60) for r in floods]
    try:
        p.apply(T.flood_stderr_and_die, (8,))
    except hangfree.WorkerLostError as e:
        res["tail_len"] = len(e.stderr_tail)
        res["tail_end"] = e.stderr_tail.rstrip().splitlines()[-1]
        res["msg_len"] = len(str(e))
    res["after"] = p.map(T.square, range(50)) == [x * x for x in range(50)]
res["elapsed"] = time.monotonic() - t0
# The fork server kept for a later pool is the process's; stopped here, it must go too.
res["released"] = hangfree.release_fork_servers()
res["children"] = children()
print(json.dumps(res))
""")
    assert out["map"] and out["after"] and out["floods"] == [16, 16], out
    assert out["tail_end"] == "THE LAST LINE BEFORE DYING", out
    assert out["tail_len"] <= 64 * 1024 and out["msg_len"] <= 80 * 1024, out
    assert out["elapsed"] < 40, out
    assert out["children"] == [], out


def test_host_stderr_is_a_pipe_nobody_reads(tmp_path):
    """The host's stderr is a pipe whose reader never reads (a supervisor that only
    collects stdout, say). Workers' stderr is forwarded there; once that pipe is full the
    pool must still deliver outcomes, time out tasks and shut down."""
    result = tmp_path / "result.json"
    script = helpers.write_script(tmp_path, PROC_HELPERS + r"""
import json, sys, time
import hangfree, hostile_env_tasks as T
res = {}
t0 = time.monotonic()
p = hangfree.Pool(2, grace=0.3)
try:
    res["flood"] = p.apply_async(T.flood_stderr, (2,)).get(5)
    res["map"] = p.map_async(T.stderr_line, range(100)).get(5) == list(range(100))
except BaseException as e:
    res["error"] = f"{type(e).__name__}: {e}"
res["elapsed"] = time.monotonic() - t0
with open(sys.argv[1], "w") as f:
    json.dump(res, f)
t1 = time.monotonic()
p.terminate()
p.join()
res["terminate_s"] = time.monotonic() - t1
# The fork server kept for a later pool is the process's; stopped here, it must go too.
res["released"] = hangfree.release_fork_servers()
res["children"] = children()
with open(sys.argv[1], "w") as f:
    json.dump(res, f)
""")
    env = helpers.script_env()
    proc = subprocess.Popen([sys.executable, str(script), str(result)], cwd=tmp_path, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            pass
        out = json.loads(result.read_text()) if result.exists() else {}
        stuck = proc.poll() is None
    finally:
        helpers.kill_tree(proc, env)
        proc.stderr.close()
    assert not stuck, f"the host hung with its stderr pipe full; it got as far as: {out}"
    assert out.get("flood") == 2 and out.get("map"), out
    assert out["terminate_s"] < 0.3 + SLACK and out["children"] == [], out


# ----- process groups ---------------------------------------------------------------------

@pytest.mark.timeout(60)
def test_setsid_daemon_escapes_the_group_sweep():
    """Known limit (README): a descendant that calls setsid leaves its worker's process
    group, so the group sweep cannot reach it. This test pins the behaviour down: the
    plain grandchild dies with the pool, the setsid daemon survives it (and is then
    killed here by pid)."""
    daemon = grandchild = None
    try:
        with hangfree.Pool(1, grace=0.3) as p:
            worker = p.apply(T.pid)
            grandchild = p.apply(T.start_grandchild)
            daemon = p.apply(T.start_daemon)
            assert os.getpgid(grandchild) == worker
            assert os.getsid(daemon) == daemon and os.getpgid(daemon) == daemon
        assert not helpers.wait_gone({worker, grandchild}, 3.0)
        assert helpers.alive(daemon), "the setsid daemon was reached after all: update README's Known limits"
    finally:
        for pid in (daemon, grandchild):
            if pid is not None and helpers.alive(pid):
                os.kill(pid, signal.SIGKILL)  # ours: started by our task, pid reported to us
        if daemon is not None:
            helpers.wait_gone({daemon}, 3.0)


def test_cgroup_mode_kills_a_setsid_daemon_with_its_worker():
    """With cgroup=True every worker has a cgroup of its own, killed whole: the daemon
    that escaped the process group above dies with the pool here."""
    try:
        p = hangfree.Pool(1, grace=0.3, cgroup=True)
    except RuntimeError as e:
        pytest.skip(f"cgroup mode unavailable here: {e}")
    daemon = None
    try:
        with p:
            daemon = p.apply(T.start_daemon)
            assert os.getsid(daemon) == daemon
            assert helpers.alive(daemon)
        assert not helpers.wait_gone({daemon}, 3.0), "the daemon outlived its worker's cgroup"
    finally:
        if daemon is not None and helpers.alive(daemon):
            os.kill(daemon, signal.SIGKILL)  # ours: started by our task, pid reported to us


# ----- many pools, many threads -------------------------------------------------------------

@pytest.mark.timeout(240)
def test_200_pools_in_a_loop_leak_nothing(tmp_path):
    out = run_script(tmp_path, PROC_HELPERS + r"""
import gc, json, time
import hangfree, hostile_env_tasks as T
def one(i):
    if i % 2:
        with hangfree.Pool(1, grace=0.3) as p:
            assert p.apply(T.square, (i,)) == i * i
            if i % 20 == 1:
                try:
                    p.apply(T.exit_, (3,))
                except hangfree.WorkerLostError:
                    pass
    else:
        with hangfree.ProcessPoolExecutor(1) as ex:
            assert ex.submit(T.square, i).result(30) == i * i
one(1); one(2)
gc.collect()
base_fds, base_threads = fds(), nthreads()
t0 = time.monotonic()
for i in range(200):
    one(i)
res = {"elapsed": time.monotonic() - t0}
gc.collect()
deadline = time.monotonic() + 3
while (fds() != base_fds or nthreads() != base_threads) and time.monotonic() < deadline:
    time.sleep(0.05)
res["fds_leaked"] = sorted(set(fds()) - set(base_fds))
res["threads"] = [base_threads, nthreads()]
res["py_threads"] = [t.name for t in threading.enumerate()]
# The fork server kept for a later pool is the process's; stopped here, it must go too.
res["released"] = hangfree.release_fork_servers()
res["children"] = children()
print(json.dumps(res))
""", timeout=200)
    assert out["fds_leaked"] == [], out
    assert out["threads"][1] <= out["threads"][0], out
    assert out["children"] == [], out


@pytest.mark.timeout(120)
def test_two_pools_used_from_eight_threads():
    errors = []
    pools = [hangfree.Pool(2, grace=0.3), hangfree.Pool(2, grace=0.3)]

    def worker(t: int) -> None:
        try:
            for rnd in range(6):
                p = pools[(t + rnd) % 2]
                base = t * 1000 + rnd * 100
                xs = list(range(base, base + 40))
                assert p.map(T.square, xs, chunksize=3) == [x * x for x in xs]
                assert sorted(p.imap_unordered(T.square, xs[:10])) == sorted(x * x for x in xs[:10])
                assert p.apply(T.square, (t,)) == t * t
                rs = [p.apply_async(T.square, (x,)) for x in xs[:10]]
                assert [r.get(30) for r in rs] == [x * x for x in xs[:10]]
                if (t + rnd) % 4 == 0:
                    with pytest.raises(hangfree.WorkerLostError):
                        p.apply(T.exit_, (3,))
                if (t + rnd) % 5 == 0:
                    with pytest.raises(hangfree.TaskTimeoutError):
                        p.apply(T.sleep, (30,), task_timeout=0.2)
        except BaseException as e:  # noqa: BLE001 - reported by the main thread
            errors.append(f"thread {t}: {type(e).__name__}: {e}")

    threads = [threading.Thread(target=worker, args=(t,), name=f"user-{t}") for t in range(8)]
    try:
        for th in threads:
            th.start()
        for th in threads:
            th.join(90)
        assert not any(th.is_alive() for th in threads), "a thread is stuck in a pool call"
        assert not errors, errors
        # (stats count engine tasks: a map chunk is one)
        assert all(p.stats()["values"] > 0 for p in pools)
    finally:
        for p in pools:
            p.terminate()
            p.join()
