"""Terminal job control cannot stop a worker.

Each worker leads its own process group, so on the caller's terminal it is a background
job: with ``stty tostop`` the kernel would stop a task that prints (SIGTTOU), and one that
calls ``tcsetattr`` (as ``getpass`` does) even without. Under multiprocessing both run.
These tests run a pool in a new session whose controlling terminal is a pseudo-terminal
with ``tostop`` set, in a child interpreter (``child_main`` below), and read what it
writes there. Real processes, time-bounded.
"""

from __future__ import annotations

import getpass
import os
import pty
import select
import subprocess
import sys
import termios
import time

import pytest

import helpers

pytestmark = pytest.mark.timeout(120)

# ----- the tasks (imported by the workers from this module) ------------------------------


def print_task() -> str:
    print("task says hello", flush=True)
    return "printed"


def setattr_task() -> str:
    """Echo off and on again on the terminal, as getpass does."""
    fd = os.open("/dev/tty", os.O_RDWR | os.O_NOCTTY)
    try:
        old = termios.tcgetattr(fd)
        quiet = list(old)
        quiet[3] &= ~termios.ECHO
        termios.tcsetattr(fd, termios.TCSAFLUSH, quiet)
        termios.tcsetattr(fd, termios.TCSAFLUSH, old)
    finally:
        os.close(fd)
    return "set"


def subprocess_task() -> int:
    """A child of the worker prints: it inherits the worker's immunity across exec."""
    return subprocess.run([sys.executable, "-c", "print('child says hello', flush=True)"], timeout=20).returncode


def stopped_child_task() -> int:
    """Starts a child that restores SIGTTOU's default and prints, so it is stopped; the
    group kill must still end it. Returns its pid (never waited for, on purpose)."""
    code = "import os, signal; signal.signal(signal.SIGTTOU, signal.SIG_DFL); os.write(1, b'stoppable child\\n')"
    return subprocess.Popen([sys.executable, "-c", code]).pid


# ----- the program on the terminal ----------------------------------------------------------


def _say(line: str) -> None:
    os.write(1, f"hf: {line}\n".encode())


def _state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return "?"
    return data[data.rindex(b")") + 2 :].split()[0].decode()


def child_main(fork_server: bool) -> None:
    """Runs in a new session with the pty's slave on fds 0-2: takes it as the controlling
    terminal, then runs tasks in a Pool and a ProcessPoolExecutor and reports each
    outcome on a line starting with ``hf: ``."""
    import fcntl

    import hangfree

    fcntl.ioctl(0, termios.TIOCSCTTY, 0)
    fg = os.tcgetpgrp(0) == os.getpgrp()
    tostop = bool(termios.tcgetattr(0)[3] & termios.TOSTOP)
    _say(f"foreground={fg} tostop={tostop}")

    def outcome(call) -> str:
        try:
            return f"-> {call()!r}"
        except BaseException as e:
            return f"raised {type(e).__name__} {getattr(e, 'errno', None)}"

    # Each limit bounds a task whose worker would be stopped.
    pool = hangfree.Pool(2, task_timeout=5, grace=0.3, fork_server=fork_server)
    try:
        _say(f"print {outcome(lambda: pool.apply(print_task))}")
        _say(f"setattr {outcome(lambda: pool.apply(setattr_task))}")
        _say(f"getpass {outcome(lambda: pool.apply(getpass.getpass, ('password: ',)))}")
        _say(f"subprocess {outcome(lambda: pool.apply(subprocess_task))}")
        pid = pool.apply(stopped_child_task)
        deadline = time.monotonic() + 5
        while _state(pid) != "T" and time.monotonic() < deadline:
            time.sleep(0.005)
        _say(f"stopped {pid} {_state(pid)}")
    finally:
        pool.terminate()
        pool.join()
    _say("pool joined")
    with hangfree.ProcessPoolExecutor(1, task_timeout=5, fork_server=fork_server) as ex:
        _say(f"executor print {outcome(lambda: ex.submit(print_task).result(timeout=20))}")
        _say(f"executor setattr {outcome(lambda: ex.submit(setattr_task).result(timeout=20))}")
    _say("done")


# ----- the test ----------------------------------------------------------------------------


def _read_all(master: int, limit: float) -> "tuple[str, bool]":
    """What is written to the terminal until every holder of its slave has closed it (the
    master then reads EIO), or until ``limit`` seconds pass."""
    out = b""
    deadline = time.monotonic() + limit
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return out.decode(errors="replace"), False
        ready, _, _ = select.select([master], [], [], min(left, 0.1))
        if not ready:
            continue
        try:
            data = os.read(master, 4096)
        except OSError:
            data = b""
        if not data:
            return out.decode(errors="replace"), True
        out += data


@pytest.mark.parametrize("fork_server", [True, False], ids=["forked", "exec"])
def test_terminal_job_control_cannot_stop_workers(fork_server):
    master, slave = pty.openpty()
    attrs = termios.tcgetattr(slave)
    attrs[3] |= termios.TOSTOP
    termios.tcsetattr(slave, termios.TCSANOW, attrs)
    code = f"import test_job_control as t; t.child_main({fork_server})"
    try:
        proc = subprocess.Popen([sys.executable, "-c", code], stdin=slave, stdout=slave, stderr=slave,
                                start_new_session=True, env=helpers.script_env())
    finally:
        os.close(slave)
    try:
        text, ended = _read_all(master, 90)
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()  # its workers die with it (parent-death signal)
        proc.wait(10)
    lines = [line.rstrip("\r") for line in text.splitlines()]
    assert ended, f"the program on the terminal did not finish:\n{text}"
    assert "hf: foreground=True tostop=True" in lines, text
    # A task that prints: the write goes through, to the terminal.
    assert "task says hello" in lines, text
    assert "hf: print -> 'printed'" in lines, text
    # A task that changes the terminal's settings.
    assert "hf: setattr -> 'set'" in lines, text
    # getpass: the prompt and tcsetattr go through; the read from the terminal is an
    # error (EIO) at once instead of a stop.
    assert "password: hf: getpass raised OSError 5" in lines, text
    # The worker's own children are immune too.
    assert "child says hello" in lines, text
    assert "hf: subprocess -> 0" in lines, text
    # A child that restored SIGTTOU's default was stopped, and the group kill ended it.
    stopped = next((line for line in lines if line.startswith("hf: stopped ")), None)
    assert stopped is not None and stopped.split()[3] == "T", text
    assert "hf: pool joined" in lines, text
    assert not helpers.wait_gone([int(stopped.split()[2])], 10), "the stopped child outlived its worker's group"
    # The executor's workers too.
    assert "hf: executor print -> 'printed'" in lines, text
    assert "hf: executor setattr -> 'set'" in lines, text
    assert "hf: done" in lines, text
    assert proc.returncode == 0, text
