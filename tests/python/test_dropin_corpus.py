"""The drop-in promise (issue 12), tested on a corpus of small real programs.

Each program of ``tests/dropin/programs/`` runs twice in a child interpreter: as written
(``import multiprocessing as mp`` or ``from concurrent.futures import ProcessPoolExecutor``,
the stdlib) and as a copy whose first line, and only it, is swapped for hangfree's. Both runs
must print the same stdout, exit with the same status and leave the same files in their
working directory. See ``tests/dropin/README.md`` for the conventions of the programs.
"""

from __future__ import annotations

import difflib
import fcntl
import importlib.util
import os
import subprocess
import sys
import termios
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List

import pytest

import helpers

PROGRAMS_DIR = helpers.REPO / "tests" / "dropin" / "programs"
# Programs; modules whose names start with "_" are helpers the programs import.
PROGRAMS = sorted(p.name for p in PROGRAMS_DIR.glob("*.py") if not p.name.startswith("_"))
HELPERS = sorted(p for p in PROGRAMS_DIR.glob("_*.py"))

# The first line of every program, and what the hangfree copy has there instead.
SWAPS = {
    "import multiprocessing as mp": "import hangfree as mp",
    "from concurrent.futures import ProcessPoolExecutor": "from hangfree import ProcessPoolExecutor",
}

# Bounds for one run of one program (each finishes in about a second when all goes well).
RUN_TIMEOUT = 30.0
TTY_TIMEOUT = 15.0

# Programs that need a module which may be absent: skipped without it.
NEEDS = {"numpy_arrays.py": "numpy"}

# Programs that differ under hangfree today (issue 12 is being worked on). strict=True: a
# program that starts to pass fails the suite, so that its mark is removed.
XFAIL: Dict[str, str] = {
}

_VENV_PYTHON = helpers.REPO / ".venv" / "bin" / "python"
PYTHON = str(_VENV_PYTHON) if _VENV_PYTHON.exists() else sys.executable


@dataclass
class Outcome:
    returncode: object  # int, or "timed out after N s"
    stdout: str
    stderr: str
    files: Dict[str, bytes]
    elapsed: float


def _flags(source: str) -> List[str]:
    """Interpreter flags from a ``# python-flags: ...`` line near the top of a program."""
    for line in source.splitlines()[:5]:
        if line.startswith("# python-flags:"):
            return line.split(":", 1)[1].split()
    return []


def _files(directory: Path) -> Dict[str, bytes]:
    out = {}
    for p in sorted(directory.rglob("*")):
        if p.is_file():
            out[str(p.relative_to(directory))] = p.read_bytes()
    return out


def _env() -> Dict[str, str]:
    env = dict(os.environ)
    env[helpers.SUBTAG_VAR] = uuid.uuid4().hex
    env["PYTHONUNBUFFERED"] = "1"
    env.pop("PYTHONPATH", None)  # the script's directory is all the path it needs
    return env


def _run_piped(cmd: List[str], cwd: Path, env: Dict[str, str], timeout: float):
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
        rc: object = proc.returncode
    except subprocess.TimeoutExpired:
        helpers.kill_tree(proc, env)
        out, err = proc.communicate()
        rc = f"timed out after {timeout:.0f} s"
    return rc, out.decode(errors="replace"), err.decode(errors="replace")


def _make_controlling_tty() -> None:
    # Runs in the child after setsid (start_new_session) and after stdin became the pty's
    # slave end: the pty becomes the session's controlling terminal, and the child's
    # process group its foreground group.
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


def _run_on_tty(cmd: List[str], cwd: Path, env: Dict[str, str], timeout: float):
    """Runs ``cmd`` as the leader of a new session whose controlling terminal is a fresh
    pseudo-terminal with TOSTOP set; stdin and stdout are the terminal, stderr a pipe."""
    master, slave = os.openpty()
    attrs = termios.tcgetattr(slave)
    attrs[3] |= termios.TOSTOP
    termios.tcsetattr(slave, termios.TCSANOW, attrs)
    chunks: List[bytes] = []

    def read_master() -> None:
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: every slave end is closed
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=read_master, daemon=True)
    try:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdin=slave, stdout=slave, stderr=subprocess.PIPE,
                                start_new_session=True, preexec_fn=_make_controlling_tty)
    finally:
        os.close(slave)
    reader.start()
    try:
        _, err = proc.communicate(timeout=timeout)
        rc: object = proc.returncode
    except subprocess.TimeoutExpired:
        helpers.kill_tree(proc, env)
        _, err = proc.communicate()
        rc = f"timed out after {timeout:.0f} s"
    reader.join(5)
    os.close(master)
    out = b"".join(chunks).decode(errors="replace").replace("\r\n", "\n")
    return rc, out, err.decode(errors="replace")


def run_program(script: Path, workdir: Path, source: str) -> Outcome:
    workdir.mkdir()
    tty = script.name.startswith("tty_")
    cmd = [PYTHON, *_flags(source), str(script)]
    t0 = time.monotonic()
    if tty:
        rc, out, err = _run_on_tty(cmd, workdir, _env(), TTY_TIMEOUT)
    else:
        rc, out, err = _run_piped(cmd, workdir, _env(), RUN_TIMEOUT)
    return Outcome(rc, out, err, _files(workdir), time.monotonic() - t0)


def hangfree_copy(source: str) -> str:
    first, sep, rest = source.partition("\n")
    return SWAPS[first] + sep + rest


def _tail(text: str, n: int = 25) -> str:
    lines = text.rstrip().splitlines()
    return "\n".join(("    " + line) for line in lines[-n:]) or "    (empty)"


def _report(std: Outcome, hf: Outcome) -> str:
    parts = []
    if std.returncode != hf.returncode:
        parts.append(f"exit status: multiprocessing {std.returncode}, hangfree {hf.returncode}")
    if std.stdout != hf.stdout:
        diff = difflib.unified_diff(std.stdout.splitlines(), hf.stdout.splitlines(), "multiprocessing",
                                    "hangfree", lineterm="", n=1)
        parts.append("stdout differs:\n" + "\n".join("    " + line for line in diff))
    if std.files != hf.files:
        parts.append(f"files left: multiprocessing {sorted(std.files.items())}\n"
                     f"            hangfree        {sorted(hf.files.items())}")
    parts.append(f"hangfree stderr ({hf.elapsed:.1f} s):\n{_tail(hf.stderr)}")
    parts.append(f"multiprocessing stderr ({std.elapsed:.1f} s):\n{_tail(std.stderr, 8)}")
    return "\n".join(parts)


def _params():
    for name in PROGRAMS:
        marks = [pytest.mark.timeout(2 * RUN_TIMEOUT + 20)]
        if name in XFAIL:
            marks.append(pytest.mark.xfail(strict=True, reason=XFAIL[name]))
        yield pytest.param(name, id=name[:-3], marks=marks)


def test_every_program_starts_with_a_swappable_import_line():
    assert PROGRAMS, f"no programs in {PROGRAMS_DIR}"
    for name in PROGRAMS:
        first = (PROGRAMS_DIR / name).read_text().partition("\n")[0]
        assert first in SWAPS, f"{name}: first line {first!r} is none of {sorted(SWAPS)}"
    assert not set(XFAIL) - set(PROGRAMS), "xfail marks for programs that do not exist"


@pytest.mark.parametrize("name", list(_params()))
def test_program_runs_the_same_under_hangfree(name, tmp_path):
    needed = NEEDS.get(name)
    if needed and importlib.util.find_spec(needed) is None:
        pytest.skip(f"{needed} is not installed")
    script = PROGRAMS_DIR / name
    source = script.read_text()
    std = run_program(script, tmp_path / "multiprocessing", source)
    assert std.returncode == 0, f"the program fails under the stdlib itself:\n{_tail(std.stderr)}"

    copy_dir = tmp_path / "hangfree_script"
    copy_dir.mkdir()
    for helper in HELPERS:
        (copy_dir / helper.name).write_bytes(helper.read_bytes())
    copy = copy_dir / name
    copy.write_text(hangfree_copy(source))
    hf = run_program(copy, tmp_path / "hangfree", source)

    same = (std.returncode, std.stdout, std.files) == (hf.returncode, hf.stdout, hf.files)
    assert same, f"{name} behaves differently under hangfree:\n{_report(std, hf)}"
