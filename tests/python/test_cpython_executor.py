"""CPython's own tests of ``ProcessPoolExecutor``, run against
``hangfree.ProcessPoolExecutor``.

The tests are those of CPython's ``Lib/test/test_concurrent_futures.py``, found on the
machine and never copied here (tests/cpython/cpython_futures.py says where from: this
interpreter's own copy, else the same version's in Debian's libpython3.X-testsuite,
which tests/cpython/fetch_cpython_tests.sh takes out of the package into a cache when no
copy is on the machine; only when that fails too, an older version's). When none can be
found, one test here fails and says so.

CPython builds each process-pool test class three times, one per start method
(``create_executor_tests``); hangfree takes no start method (its workers start alike
whatever the ``mp_context``), so only the "spawn" classes are taken, and each is
subclassed with ``executor_type = hangfree.ProcessPoolExecutor``. While these tests run,
the test module's global ``futures`` is a stand-in whose ``ProcessPoolExecutor`` is
hangfree's (the tests that call ``futures.ProcessPoolExecutor(...)``), and a test whose
child interpreter imports ``ProcessPoolExecutor`` from ``concurrent.futures`` gets
hangfree's.

Tests that cannot pass are listed below: ``DIFFERENT`` (skipped: deliberate differences
and stdlib internals) and ``BUGS`` (strict xfail: to be fixed, then taken off the list).
"""

from __future__ import annotations

import concurrent.futures
import sys
import unittest
from pathlib import Path

import pytest

CPYTHON_DIR = Path(__file__).resolve().parent.parent / "cpython"
sys.path.insert(0, str(CPYTHON_DIR))

import hangfree  # noqa: E402
import cpython_harness as H  # noqa: E402

try:
    import cpython_futures as F
except (ImportError, unittest.SkipTest) as e:  # pragma: no cover - depends on the machine
    F = None
    _IMPORT_ERROR = f"{type(e).__name__}: {e}"
else:
    _IMPORT_ERROR = F.LOCATED if F.SOURCE is None else ""

# Every test bounded (the suite's default is 60 s); the slowest here take ~6 s.
pytestmark = pytest.mark.timeout(30)

# (a) Deliberate differences and stdlib internals: skipped.
DIFFERENT = {
    # The stdlib breaks the whole executor; hangfree fails the one call.
    "ExecutorDeadlockTest.test_error_at_task_unpickle":
        "a call its worker cannot unpickle breaks the stdlib executor (BrokenProcessPool); hangfree fails "
        "that call alone (HangfreeError: cannot unpickle the task's function or arguments)",
    "ExecutorDeadlockTest.test_exit_at_task_unpickle":
        "a call whose unpickling exits the worker breaks the stdlib executor (BrokenProcessPool); hangfree "
        "fails that call alone (HangfreeError: ... SystemExit: 1)",
    "ExecutorDeadlockTest.test_error_during_result_unpickle_in_result_handler":
        "a result the parent cannot unpickle breaks the stdlib executor (BrokenProcessPool); hangfree fails "
        "that future alone (HangfreeError: the result cannot be unpickled here)",
    "ExecutorDeadlockTest.test_exit_during_result_unpickle_in_result_handler":
        "a result whose unpickling in the parent raises SystemExit breaks the stdlib executor "
        "(BrokenProcessPool); hangfree fails that future alone (HangfreeError: the result cannot be "
        "unpickled here: SystemExit: 1)",
    "ProcessPoolShutdownTest.test_cancel_futures":
        "expects some of 50 calls submitted just before shutdown(cancel_futures=True) to run: the stdlib "
        "moves the first max_workers + 1 calls into its call queue at once, which counts as started; "
        "hangfree cancels every call no worker has started, which is all of them when the shutdown comes "
        "before the workers are up (the executor does not wait for them)",
    "ProcessPoolExecutorTest.test_killed_child":
        "reads executor._processes, and expects a killed worker to break the executor: hangfree fails that "
        "call with WorkerLostError and goes on",
    # Stdlib internals.
    "ExecutorDeadlockTest.test_shutdown_deadlock_pickle":
        "reads executor._executor_manager_thread (it would then also fail as test_error_at_task_pickle)",
    "FailingInitializerMixin.test_initializer":
        "reads executor._broken (what it checks before, in public, passes: futures fail with "
        "BrokenExecutor, the error is logged through the Queue in initargs, later submits raise)",
    "ProcessPoolExecutorTest.test_idle_process_reuse_one": "reads executor._processes (on-demand spawning)",
    "ProcessPoolExecutorTest.test_idle_process_reuse_multiple": "reads executor._processes (on-demand spawning)",
    "ProcessPoolExecutorTest.test_saturation": "reads executor._processes",
    "ProcessPoolExecutorTest.test_max_tasks_per_child":
        "reads executor._processes (the worker pids it checks through os.getpid are right)",
    "ProcessPoolExecutorTest.test_max_tasks_per_child_defaults_to_spawn_context": "reads executor._mp_context",
    "ProcessPoolShutdownTest.test_processes_terminate": "reads executor._processes",
    "ProcessPoolShutdownTest.test_context_manager_shutdown": "reads executor._processes",
    "ProcessPoolShutdownTest.test_del_shutdown":
        "reads executor._executor_manager_thread, _processes and _call_queue",
    "ProcessPoolShutdownTest.test_shutdown_no_wait":
        "reads executor._processes, _call_queue and _executor_manager_thread",
}

# (b) hangfree bugs of public behaviour: strict xfail, to be fixed.
BUGS: dict = {}

_PREFIX = "ProcessPoolSpawn"


def _build() -> dict:
    """Hangfree<Mixin>Test for each of CPython's ProcessPoolSpawn<Mixin>Test classes, by
    the name of the CPython mixin it was made from (ExecutorDeadlockTest, WaitTests, ...)."""
    classes = {}
    for name, made in sorted(vars(F).items()):
        if not (isinstance(made, type) and name.startswith(_PREFIX)
                and issubclass(made, F.ProcessPoolSpawnMixin) and issubclass(made, unittest.TestCase)):
            continue
        mixin = made.__bases__[0]
        new_name = "Hangfree" + name[len(_PREFIX):]
        attrs = {"executor_type": hangfree.ProcessPoolExecutor, "__module__": __name__, "__qualname__": new_name}
        if "TIMEOUT" in vars(mixin):
            # ExecutorDeadlockTest's time to recover before it calls a deadlock (30 s):
            # within this file's time limit, so that its report is the one seen.
            attrs["TIMEOUT"] = 10
        cls = type(new_name, (made,), attrs)
        H.apply_expectations(cls, mixin.__name__, DIFFERENT, BUGS)
        classes[mixin.__name__] = cls
    return classes


if F is not None and F.SOURCE is not None:
    _CLASSES = _build()
    globals().update({cls.__name__: cls for cls in _CLASSES.values()})

    # The test module's `futures`, while these tests run: ProcessPoolExecutor is hangfree's.
    _FUTURES = H.module_with(concurrent.futures, ProcessPoolExecutor=hangfree.ProcessPoolExecutor)
    # Child interpreters: hangfree's executor, and this folder's copy of the test module.
    _RUN = H.rewriting_script_runner(
        F.assert_python_ok,
        [("from concurrent.futures import ProcessPoolExecutor", "from hangfree import ProcessPoolExecutor", True),
         ("from test.test_concurrent_futures import", "from cpython_futures import", False)],
        env={"PYTHONPATH": str(CPYTHON_DIR)})

    @pytest.fixture(autouse=True, scope="module")
    def _futures_executor_is_hangfree():
        with H.patched(F, "futures", _FUTURES), H.patched(F, "assert_python_ok", _RUN), \
                H.stdlib_resource_tracker():
            yield

    def test_which_cpython_tests():
        """Which copy of test_concurrent_futures.py runs (printed; shown with -rA); skipped,
        to be seen, when it is an older CPython's."""
        print(f"{F.SOURCE} ({F.LOCATED})")
        version = H._version_of(F.SOURCE)
        if version is not None and version != sys.version_info[:2]:
            pytest.skip(f"an older CPython's tests run here: {F.SOURCE}: {F.LOCATED}")

    def test_expectation_lists_name_real_tests():
        """Every entry of DIFFERENT and BUGS names a test of the CPython tests that run
        (checked against this interpreter's version only: an older copy lacks some; so does
        the copy of a CPython before 3.11, for which the lists were not written)."""
        if sys.version_info[:2] != H._version_of(F.SOURCE):
            pytest.skip("an older CPython's tests run here")
        if sys.version_info < (3, 11):
            pytest.skip("the lists name CPython 3.11's tests; some are not in this version's copy")
        bases = {name: cls.__bases__[0].__bases__[0] for name, cls in _CLASSES.items()}
        assert H.check_lists_name_real_tests(bases, DIFFERENT, BUGS) == []

else:  # pragma: no cover - depends on the machine

    def test_cpython_futures_tests_are_found():
        pytest.fail(
            "CPython's test_concurrent_futures.py was not found, so hangfree.ProcessPoolExecutor "
            f"was not run against CPython's executor tests: {_IMPORT_ERROR}\n"
            f"Run {H.FETCH_SCRIPT} (it needs apt-get and Debian's package lists), install "
            "Debian's libpython3.X-testsuite, or point HANGFREE_CPYTHON_FUTURES_TESTS at a copy.")
