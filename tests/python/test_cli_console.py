"""The ``hangfree`` command that pip installs (``hangfree._cli``): the Rust command line
of crates/hangfree-cli run by the extension module, its workers Python processes running
the same module. Real jobs; the crate's own tests cover every flag."""

from __future__ import annotations

import shutil
import sys
import time

import helpers

CLI = [sys.executable, "-m", "hangfree._cli"]


def test_the_installed_command_is_the_python_entry_point():
    path = shutil.which("hangfree", path=str(helpers.Path(sys.executable).parent))
    assert path is not None, "pip put no hangfree command next to the interpreter"
    assert "hangfree._cli" in open(path).read()


def test_run_keeps_order_tags_and_quotes_arguments_as_data(tmp_path):
    marker = tmp_path / "pwned"
    proc, _ = helpers.run_python(["-m", "hangfree._cli", "run", "-k", "--tag", "echo {}", ":::", "a b",
                                  f"$(touch {marker})"], timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"a b\ta b\n$(touch {marker})\t$(touch {marker})\n"
    assert not marker.exists()


def test_a_job_past_its_time_limit_is_stopped_and_counted_as_failed():
    t0 = time.monotonic()
    proc, _ = helpers.run_python(["-m", "hangfree._cli", "run", "--timeout", "0.5", "-k",
                                  "trap '' TERM; sleep {}; echo done {}", ":::", "0", "30"], timeout=60)
    assert time.monotonic() - t0 < 20
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    assert proc.stdout == "done 0\n"
    assert "timed out" in proc.stderr


def test_bad_input_is_a_clear_error_and_runs_nothing():
    proc, _ = helpers.run_python(["-m", "hangfree._cli", "run", "--timeout", "soon", "echo", ":::", "a"], timeout=60)
    assert proc.returncode == 255
    assert "timeout" in proc.stderr and proc.stdout == ""
