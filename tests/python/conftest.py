"""Leak checks for the whole suite.

At session start a unique marker goes into ``os.environ``, so every process the tests
start (pools, their workers, grandchildren, scripts) inherits it. After each test, and
again after the session, no process carrying it may be left (zombies count as gone;
pytest itself is excluded). Survivors are SIGKILLed by pid — they are ours, found by the
marker — and the test fails.
"""

from __future__ import annotations

import os
import sys
import uuid

import pytest

import helpers

os.environ.setdefault(helpers.TAG_VAR, uuid.uuid4().hex)

# How long processes get to disappear after a test before they count as leaked.
LEAK_GRACE = 2.0


def _leak_report(new: set) -> str:
    lines = []
    for pid in sorted(new):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            cmd = "?"
        lines.append(f"  pid {pid}: {cmd}")
    return "\n".join(lines)


def _resource_trackers() -> set:
    """The stdlib's resource tracker of this test process, when a test started it: a
    helper the interpreter keeps until it exits (whichever test came first starts it),
    not a process a test left behind."""
    found = set()
    for pid in helpers.children(os.getpid()):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if b"multiprocessing.resource_tracker" in f.read():
                    found.add(pid)
        except OSError:
            pass
    return found


def _release_kept_fork_servers() -> None:
    """The fork servers this test's pools kept for later pools (the process's, not a
    pool's: see ``hangfree.release_fork_servers``) are stopped before the count."""
    client = sys.modules.get("hangfree._client")
    if client is not None:
        client.release_fork_servers()


@pytest.fixture(autouse=True)
def no_process_left_by_test():
    before = helpers.marked_pids()
    yield
    _release_kept_fork_servers()
    new = helpers.marked_pids() - before - _resource_trackers()
    left = helpers.wait_gone(new, LEAK_GRACE)
    if left:
        report = _leak_report(left)
        helpers.kill_pids(left)
        pytest.fail(f"processes left behind by this test:\n{report}", pytrace=False)


@pytest.fixture(autouse=True, scope="session")
def no_process_left_by_session():
    yield
    _release_kept_fork_servers()
    left = helpers.wait_gone(helpers.marked_pids() - _resource_trackers(), LEAK_GRACE)
    zombies = helpers.zombie_children(os.getpid())
    problems = []
    if left:
        problems.append(f"processes left behind by the suite:\n{_leak_report(left)}")
        helpers.kill_pids(left)
    if zombies:
        problems.append(f"unreaped children of the test process: {sorted(zombies)}")
    if problems:
        pytest.fail("\n".join(problems), pytrace=False)


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: takes several seconds")
