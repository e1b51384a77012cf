"""The three programs of examples/, with `import hangfree as mp`, finish with a clear
error instead of hanging."""

from __future__ import annotations

import pytest

import helpers

SEED_GRACE = 1.0  # hangfree.Pool's default grace period
SLACK = 3.0


@pytest.mark.parametrize("name", ["seed1_sys_exit.py", "seed2_map_async_timeout.py"])
def test_sys_exit_seeds_fail_at_once_naming_exit_code_and_task(name):
    res, elapsed = helpers.run_python([str(helpers.EXAMPLES / name)], cwd=helpers.EXAMPLES, timeout=30)
    assert elapsed < SLACK, f"{name} took {elapsed:.2f} s"
    assert res.returncode == 1
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("hangfree.WorkerLostError: task "), res.stderr
    assert "exit code 1" in last
    # The task is named: the function and its argument (the programs pass (rank,) tuples).
    assert "run((0,))" in last or "run((1,))" in last, last
    assert "Timed out" not in res.stdout


def test_sigterm_ignoring_seed_finishes_within_grace_after_its_wait():
    name = "seed3_ignore_sigterm.py"
    res, elapsed = helpers.run_python([str(helpers.EXAMPLES / name)], cwd=helpers.EXAMPLES, timeout=40)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip().splitlines() == ["Timed out, but process might still be stuck."]
    assert 5.0 <= elapsed < 5.0 + SEED_GRACE + SLACK, f"{name} took {elapsed:.2f} s"
