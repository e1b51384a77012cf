"""Process bookkeeping for the tests: find our processes by the marker the session puts
in the environment, wait for them to be gone, run scripts in a child interpreter."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Set

TAG_VAR = "HANGFREE_TEST_TAG"
SUBTAG_VAR = "HANGFREE_TEST_SUBTAG"
TESTS_DIR = Path(__file__).resolve().parent
REPO = TESTS_DIR.parent.parent
EXAMPLES = REPO / "examples"


def _state(pid: int) -> Optional[str]:
    """The process state letter, or None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    return data[data.rindex(b")") + 2 : data.rindex(b")") + 3].decode()


def _ppid(pid: int) -> Optional[int]:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    return int(data[data.rindex(b")") + 2 :].split()[1])


def alive(pid: int) -> bool:
    """Running, sleeping or stopped: anything but gone or a zombie."""
    st = _state(pid)
    return st is not None and st not in ("Z", "X")


def zombie(pid: int) -> bool:
    return _state(pid) == "Z"


def _all_pids() -> List[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def marked_pids(var: str = TAG_VAR, value: Optional[str] = None) -> Set[int]:
    """Live processes whose environment holds ``var=value`` (this one excluded)."""
    value = os.environ.get(var) if value is None else value
    if not value:
        return set()
    needle = f"{var}={value}".encode() + b"\0"
    me = os.getpid()
    found = set()
    for pid in _all_pids():
        if pid == me:
            continue
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                env = f.read() + b"\0"
        except OSError:
            continue
        if needle in env and alive(pid):
            found.add(pid)
    return found


def children(pid: int) -> Set[int]:
    """Live (non-zombie) children of ``pid``."""
    return {p for p in _all_pids() if _ppid(p) == pid and alive(p)}


def zombie_children(pid: int) -> Set[int]:
    return {p for p in _all_pids() if _ppid(p) == pid and zombie(p)}


def wait_gone(pids: Iterable[int], timeout: float) -> Set[int]:
    """Waits until none of ``pids`` is alive; returns those still alive after ``timeout``."""
    pids = set(pids)
    deadline = time.monotonic() + timeout
    while True:
        left = {p for p in pids if alive(p)}
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(0.01)


def kill_pids(pids: Iterable[int]) -> None:
    """SIGKILL each of ``pids`` (processes our tests created, found by their marker)."""
    for p in pids:
        try:
            os.kill(p, signal.SIGKILL)
        except OSError:
            pass


def wait_files(directory: Path, n: int, timeout: float) -> List[Path]:
    """Waits until ``directory`` holds at least ``n`` files (tasks announce their pids so)."""
    deadline = time.monotonic() + timeout
    while True:
        files = sorted(p for p in directory.iterdir() if not p.name.startswith("."))
        if len(files) >= n:
            return files
        if time.monotonic() >= deadline:
            raise AssertionError(f"only {len(files)} of {n} files appeared in {directory} within {timeout} s")
        time.sleep(0.01)


def pids_in(directory: Path) -> Set[int]:
    """The pids announced in ``directory`` (one file per pid, named by it)."""
    out = set()
    for p in directory.iterdir():
        if p.name.startswith("."):
            continue
        for part in p.name.split("-"):
            out.add(int(part))
    return out


def script_env(**extra: str) -> Dict[str, str]:
    """The environment for a child interpreter: ours, plus a fresh sub-marker and the
    tests directory on PYTHONPATH so scripts and their workers can import ``tasks``."""
    env = dict(os.environ)
    env[SUBTAG_VAR] = uuid.uuid4().hex
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS_DIR)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def write_script(tmp_path: Path, code: str, name: str = "prog.py") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(code))
    return path


def run_python(args: List[str], *, timeout: float, cwd: Optional[Path] = None,
               env: Optional[Dict[str, str]] = None) -> "tuple[subprocess.CompletedProcess, float]":
    """Runs ``python args...``; returns the completed process and its wall time. A run
    past ``timeout`` is killed (with its process group) and fails the test."""
    env = env or script_env()
    t0 = time.monotonic()
    proc = subprocess.Popen([sys.executable, *args], cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_tree(proc, env)
        out, err = proc.communicate()
        raise AssertionError(f"python {args} did not finish within {timeout} s\nstdout:\n{out}\nstderr:\n{err}")
    elapsed = time.monotonic() - t0
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err), elapsed


def kill_tree(proc: subprocess.Popen, env: Dict[str, str]) -> None:
    """Kills a script we started and everything carrying its sub-marker."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except OSError:
        pass
    kill_pids(marked_pids(SUBTAG_VAR, env[SUBTAG_VAR]))
    proc.wait(5)
