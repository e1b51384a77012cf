"""CPython's own tests of ``multiprocessing.Pool``, run against ``hangfree.Pool``.

The tests are those of ``Lib/test/_test_multiprocessing.py`` as installed with this
interpreter (``test._test_multiprocessing``; nothing of it is copied here). Its
``install_tests_in_module_dict`` builds the "processes" classes as CPython's own
test_multiprocessing_spawn does; each is subclassed with ``Pool = hangfree.Pool`` (the
mixins' ``self.Pool``), and while these tests run the test module's global
``multiprocessing`` is a stand-in whose ``Pool`` is hangfree's (the tests that call
``multiprocessing.Pool(...)``); a test whose child interpreter runs
``from multiprocessing import Pool`` gets ``from hangfree import Pool`` instead. Then the
spawn tests of ``test_multiprocessing_main_handling`` (scripts run as a file, directory,
zip file, package, ...), with the scripts they write importing hangfree's Pool.

Tests that cannot pass are listed below: ``DIFFERENT`` (skipped: deliberate differences
and stdlib internals) and ``BUGS`` (strict xfail: to be fixed, then taken off the list).
"""

from __future__ import annotations

import inspect
import multiprocessing
import sys
import unittest
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "cpython"))

import hangfree  # noqa: E402
import cpython_harness as H  # noqa: E402

try:
    import test._test_multiprocessing as M
    import test.support.script_helper as script_helper
    import test.test_multiprocessing_main_handling as MH
except (ImportError, unittest.SkipTest) as e:  # pragma: no cover - depends on the machine
    M = None
    _IMPORT_ERROR = f"{type(e).__name__}: {e}"

# Every test bounded (the suite's default is 60 s); the slowest here takes ~2 s.
pytestmark = pytest.mark.timeout(30)

# CPython's classes that exercise Pool, by name; None: all their tests, else those listed.
POOL_CLASSES = {
    "_TestPool": None,
    "_TestPoolWorkerErrors": None,
    "_TestPoolWorkerLifetime": None,
    "TestInitializers": ["test_pool_initializer"],
    "TestStdinBadfiledescriptor": ["test_pool_in_process"],
    "TestPoolNotLeakOnFailure": None,
}

# (a) Deliberate differences and stdlib internals: skipped.
DIFFERENT = {
    "_TestPool.test_make_pool":
        "reads Pool._pool, the stdlib's list of worker Process objects (hangfree's workers are the engine's)",
    "_TestPoolWorkerLifetime.test_pool_worker_lifetime":
        "reads Pool._pool and calls Pool._repopulate_pool(), stdlib internals",
    "_TestPoolWorkerErrors.test_unpickleable_result":
        "a lambda result travels by value (cloudpickle) instead of failing with MaybeEncodingError; "
        "a result that cannot be pickled at all does give MaybeEncodingError",
    "TestPoolNotLeakOnFailure.test_release_unused_processes":
        "tests the stdlib class multiprocessing.pool.Pool itself with a fake context.Process (hangfree takes "
        "no Process class from a context; run as it is, the test passes without touching hangfree)",
}

# (b) hangfree bugs of public behaviour: strict xfail, to be fixed.
BUGS: dict = {}


def _set_up_class_then_wait(cls) -> None:
    """CPython's setUpClass (_TestPool makes the pool its tests share), then a wait until
    that pool's workers are all up: they start in the background, and the suite's leak
    check would count those started during the first test as left behind by it."""
    super(cls, cls).setUpClass()
    pool = getattr(cls, "pool", None)
    if pool is not None:
        H.wait_workers_started(pool)


def _build() -> dict:
    ns = {"__name__": __name__}
    try:
        M.install_tests_in_module_dict(ns, "spawn", only_type="processes")
    except TypeError:  # CPython < 3.11: no only_type; the classes for threads and managers go unused
        M.install_tests_in_module_dict(ns, "spawn")
    classes = {}
    hangfree_pool = staticmethod(hangfree.Pool)
    for base_name, only in POOL_CLASSES.items():
        base = getattr(M, base_name)
        if issubclass(base, M.BaseTestCase):
            # WithProcessesTestPool & co: (base, ProcessesMixin, unittest.TestCase).
            made = ns["WithProcesses" + base_name[1:]]
            name = "Hangfree" + base_name[1:]
            attrs = {"Pool": hangfree_pool, "__module__": __name__, "__qualname__": name}
            if "setUpClass" in base.__dict__:
                attrs["setUpClass"] = classmethod(_set_up_class_then_wait)
            cls = type(name, (made,), attrs)
        else:
            name = "Hangfree" + base_name[len("Test"):]
            cls = type(name, (base,), {"__module__": __name__, "__qualname__": name})
        if only is not None:
            for attr in dir(cls):
                if attr.startswith("test") and attr not in only:
                    setattr(cls, attr, None)  # not collected: not a test of Pool
        H.apply_expectations(cls, base_name, DIFFERENT, BUGS)
        classes[base_name] = cls
    return classes


if M is not None:
    _CLASSES = _build()
    globals().update({cls.__name__: cls for cls in _CLASSES.values()})

    # The test module's `multiprocessing`, while these tests run: Pool is hangfree's.
    _MP = H.module_with(multiprocessing, Pool=hangfree.Pool)

    @pytest.fixture(autouse=True, scope="module")
    def _multiprocessing_pool_is_hangfree():
        with H.patched(M, "multiprocessing", _MP):
            yield

    # A child interpreter that runs `from multiprocessing import Pool` gets hangfree's.
    def _test_worker_finalization_via_atexit_handler_of_multiprocessing(self):
        run = H.rewriting_script_runner(
            script_helper.assert_python_ok,
            [("from multiprocessing import Pool", "from hangfree import Pool", True)])
        with H.patched(script_helper, "assert_python_ok", run):
            M._TestPoolWorkerLifetime.test_worker_finalization_via_atexit_handler_of_multiprocessing(self)

    H.replace_test(_CLASSES["_TestPoolWorkerLifetime"],
                   "test_worker_finalization_via_atexit_handler_of_multiprocessing",
                   _test_worker_finalization_via_atexit_handler_of_multiprocessing)

    # test_multiprocessing_main_handling: scripts run as a file, without suffix, compiled,
    # as a directory, zip file, package or module in a package, each making a Pool(5) and
    # mapping a function of its __main__. Its spawn class, as hangfree's workers are
    # spawned children; the scripts it writes import hangfree's Pool.
    _SCRIPT_IMPORT = "from multiprocessing import Pool, set_start_method"
    _rewrites = [0]

    def _rewriting(make):
        sig = inspect.signature(make)

        def wrapper(*args, **kwargs):
            bound = sig.bind(*args, **kwargs)
            source = bound.arguments["source"]
            if _SCRIPT_IMPORT in source:
                _rewrites[0] += 1
                bound.arguments["source"] = source.replace(
                    _SCRIPT_IMPORT, "from hangfree import Pool\nfrom multiprocessing import set_start_method")
            return make(*bound.args, **bound.kwargs)

        return wrapper

    class HangfreeMainHandlingSpawnCmdLine(MH.SpawnCmdLineTest):
        def setUp(self):
            super().setUp()
            self._rewrites_before = _rewrites[0]

        def _check_script(self, script_name, *switches):
            assert _rewrites[0] > self._rewrites_before, (
                "hangfree harness: no script of this test imports Pool as expected "
                f"({_SCRIPT_IMPORT!r}): it would test the stdlib")
            super()._check_script(script_name, *switches)

    HangfreeMainHandlingSpawnCmdLine.__qualname__ = HangfreeMainHandlingSpawnCmdLine.__name__
    H.apply_expectations(HangfreeMainHandlingSpawnCmdLine, "SpawnCmdLineTest", DIFFERENT, BUGS)
    _CLASSES["SpawnCmdLineTest"] = HangfreeMainHandlingSpawnCmdLine

    @pytest.fixture(autouse=True, scope="module")
    def _main_handling_scripts_use_hangfree():
        with H.patched(MH, "make_script", _rewriting(MH.make_script)), \
                H.patched(MH, "make_zip_pkg", _rewriting(MH.make_zip_pkg)):
            yield

    def test_expectation_lists_name_real_tests():
        """Every entry of DIFFERENT and BUGS names a test of the installed CPython."""
        base = {n: getattr(M, n) for n in POOL_CLASSES}
        base["SpawnCmdLineTest"] = MH.SpawnCmdLineTest
        assert H.check_lists_name_real_tests(base, DIFFERENT, BUGS) == []

else:  # pragma: no cover - depends on the machine

    def test_cpython_multiprocessing_tests_are_installed():
        pytest.fail(
            "CPython's Lib/test/_test_multiprocessing.py cannot be imported as "
            f"test._test_multiprocessing ({_IMPORT_ERROR}): this interpreter was installed "
            "without its test suite, so hangfree.Pool was not run against CPython's Pool tests. "
            "Use a CPython with Lib/test (pyenv and python.org builds have it; on Debian "
            "the libpython3.X-testsuite package).")
