"""What the two CPython-suite harnesses share (tests/python/test_cpython_pool.py and
tests/python/test_cpython_executor.py).

CPython's own tests of ``multiprocessing.Pool`` and ``ProcessPoolExecutor`` are imported
from where the interpreter (or the machine) has them, never copied into this repository;
their test classes are subclassed with hangfree's pool put in the stdlib's place. Each
test that cannot pass is listed in the harness, in one of two groups:

- ``DIFFERENT``: a deliberate difference (the stdlib hangs or breaks where hangfree fails
  one task; the test reads stdlib internals such as ``_pool`` or ``_processes``). Skipped,
  with the reason (``HANGFREE_CPYTHON_RUN_DIFFERENT=1`` runs them as non-strict xfail, to
  see which of them pass now).
- ``BUG``: public behaviour hangfree gets wrong. ``xfail(strict=True)`` with the reason,
  so the test turns into a failure once the bug is fixed and must then leave the list.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import time
import traceback
import os
import re
import shutil
import subprocess
import sys
import types
import unittest
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Tuple
from unittest import mock

HERE = Path(__file__).resolve().parent
# Where tests/cpython/fetch_cpython_tests.sh puts what it takes out of Debian's
# libpython3.X-testsuite package (ignored by git).
CACHE = HERE / ".cache"


def module_with(real: types.ModuleType, **replaced: object) -> types.ModuleType:
    """A stand-in for the module ``real``: ``replaced`` names are ours, every other name
    is looked up on ``real`` (submodules included, as ``multiprocessing.pool``)."""

    class _Module(types.ModuleType):
        def __getattr__(self, name: str) -> object:
            return getattr(real, name)

    m = _Module(real.__name__, real.__doc__)
    for k, v in replaced.items():
        setattr(m, k, v)
    return m


def rewriting_script_runner(run: Callable[..., object], replacements: List[Tuple[str, str, bool]],
                            env: Optional[Dict[str, str]] = None) -> Callable[..., object]:
    """Wraps ``test.support.script_helper.assert_python_ok`` (or a sibling) so that the
    ``-c`` script a CPython test runs in a child interpreter uses hangfree instead of the
    stdlib: each ``(old, new, required)`` is replaced in the script, and a required one
    must occur (a CPython whose script changed fails here loudly instead of silently
    testing the stdlib). ``env`` is added to the child's environment."""

    @functools.wraps(run)
    def wrapper(*args: str, **env_vars: str) -> object:
        args_l = list(args)
        i = args_l.index("-c") + 1
        script = args_l[i]
        for old, new, required in replacements:
            if required and old not in script:
                raise AssertionError(
                    f"hangfree harness: expected {old!r} in the script this CPython test runs, "
                    f"to put hangfree in its place; the script is:\n{script}")
            script = script.replace(old, new)
        args_l[i] = script
        if env:
            env_vars = {**env, **env_vars}
            env_vars.setdefault("__isolated", False)
        return run(*args_l, **env_vars)

    return wrapper


# ----- expectations ---------------------------------------------------------------------

DIFFERENT = "different"
BUG = "bug"


def _copy(fn: Callable) -> Callable:
    @functools.wraps(fn)
    def test(self, *args, **kwargs):
        try:
            return fn(self, *args, **kwargs)
        except BaseException as e:
            # A failing CPython test leaves its pool open, in a local of a frame that the
            # report keeps: the suite's leak check would then kill its workers, the pool
            # would start new ones during the next test, and that test would be blamed.
            traceback.clear_frames(e.__traceback__)
            terminate_leftover_pools(keep=getattr(type(self), "pool", None))
            raise

    # wraps() copied the function's __dict__, marks included: start from none of ours.
    test.__dict__.pop("pytestmark", None)
    return test


def terminate_leftover_pools(keep: object = None) -> None:
    """Terminates every hangfree Pool and ProcessPoolExecutor still reachable (but
    ``keep``, a pool a test class shares between its tests)."""
    import hangfree

    gc.collect()
    types_ = (hangfree.Pool, hangfree.ProcessPoolExecutor)
    for obj in gc.get_objects():
        if isinstance(obj, types_) and obj is not keep:
            try:
                obj.terminate()
                if isinstance(obj, hangfree.Pool):
                    obj.join()
            except Exception:
                pass


def apply_expectations(cls: type, base_name: str, different: Dict[str, str], bugs: Dict[str, str]) -> None:
    """Marks the tests of ``cls`` (built from CPython's class ``base_name``) listed as
    ``"base_name.test_x"`` in ``different`` (skipped) or ``bugs`` (strict xfail). An
    entry naming a test this CPython lacks is passed over here (another version may have
    it); ``check_lists_name_real_tests`` reports those. Every test of ``cls`` is wrapped
    (see ``_copy``) so that a failing one does not also leave its pool's workers behind."""
    for tname in dir(cls):
        fn = getattr(cls, tname)
        if tname.startswith("test") and callable(fn):
            setattr(cls, tname, _copy(fn))
    import pytest  # here: hangfree's workers import this module (through cpython_futures)

    run_them = os.environ.get("HANGFREE_CPYTHON_RUN_DIFFERENT") == "1"
    for key, reason in different.items():
        cname, _, tname = key.partition(".")
        fn = getattr(cls, tname, None) if cname == base_name else None
        if fn is None:
            continue
        if run_them:
            # To see how they fare now: run, and expected to fail (not strictly).
            mark = pytest.mark.xfail(strict=False, reason=f"hangfree differs on purpose: {reason}")
            setattr(cls, tname, mark(_copy(fn)))
        else:
            setattr(cls, tname, unittest.skip(f"hangfree differs on purpose: {reason}")(_copy(fn)))
    for key, reason in bugs.items():
        cname, _, tname = key.partition(".")
        fn = getattr(cls, tname, None) if cname == base_name else None
        if fn is not None:
            setattr(cls, tname, pytest.mark.xfail(strict=True, reason=f"hangfree bug: {reason}")(_copy(fn)))


def replace_test(cls: type, name: str, test: Callable) -> None:
    """Puts ``test`` in place of ``cls.name``, keeping its mark or skip, if any."""
    old = getattr(cls, name)
    new = _copy(test)
    new.__name__ = new.__qualname__ = name
    for attr in ("pytestmark", "__unittest_skip__", "__unittest_skip_why__"):
        if hasattr(old, attr):
            setattr(new, attr, getattr(old, attr))
    setattr(cls, name, new)


def wait_workers_started(pool: object, timeout: float = 10.0) -> None:
    """Waits (bounded) until a hangfree pool's first workers have all been started."""
    want = getattr(pool, "_processes", None)
    stats = getattr(pool, "stats", None)
    if not isinstance(want, int) or stats is None:
        return
    deadline = time.monotonic() + timeout
    while stats().get("workers_spawned", want) < want and time.monotonic() < deadline:
        time.sleep(0.01)


@contextlib.contextmanager
def stdlib_resource_tracker() -> Iterator[None]:
    """The CPython tests make multiprocessing semaphores and queues (for their own
    bookkeeping, not hangfree's), which start the stdlib's resource tracker process, a
    child that lives until the interpreter exits. Started here before the tests and
    stopped after them, it is counted as left behind by neither a test nor the suite."""
    from multiprocessing import resource_tracker

    tracker = resource_tracker._resource_tracker
    started = getattr(tracker, "_pid", None) is None
    resource_tracker.ensure_running()
    pid = getattr(tracker, "_pid", None)
    if started and pid is not None:
        # It is started with vfork: its parent goes on during the exec, before the new
        # image's environment is in place, and the leak check, which finds our
        # processes by their environment, would not see it as there before the test.
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline:
            try:
                with open(f"/proc/{pid}/environ", "rb") as f:
                    if f.read():
                        break
            except OSError:
                break
            time.sleep(0.001)
    try:
        yield
    finally:
        stop = getattr(tracker, "_stop", None)
        if started and stop is not None:
            # Semaphores still reachable would be unlinked by the tracker, and then again
            # by their own finalizers (a FileNotFoundError warning): collect them first.
            gc.collect()
            try:
                stop()
            except ChildProcessError:
                # Reaped already: CPython's tests call support.reap_children(), a
                # waitpid(-1) loop.
                tracker._fd = tracker._pid = None


def check_lists_name_real_tests(classes: Dict[str, type], *lists: Dict[str, str]) -> List[str]:
    """The entries of the lists that name no test of the classes (by CPython base name)."""
    unknown = []
    for lst in lists:
        for key in lst:
            cname, _, tname = key.partition(".")
            cls = classes.get(cname)
            if cls is None or not hasattr(cls, tname):
                unknown.append(key)
    return unknown


@contextlib.contextmanager
def patched(obj: object, name: str, value: object) -> Iterator[None]:
    with mock.patch.object(obj, name, value):
        yield


# ----- finding CPython's test_concurrent_futures -----------------------------------------

FUTURES_ENV = "HANGFREE_CPYTHON_FUTURES_TESTS"
FETCH_SCRIPT = HERE / "fetch_cpython_tests.sh"


def _version_of(path: Path) -> Optional[Tuple[int, int]]:
    m = re.search(r"python(\d+)\.(\d+)", str(path))
    return (int(m.group(1)), int(m.group(2))) if m else None


def futures_candidates() -> List[Path]:
    """Every single-file ``test_concurrent_futures.py`` on this machine that this
    interpreter may run, best first: this interpreter's own, then the same minor version
    elsewhere (Debian's libpython3.X-testsuite in /usr/lib, pyenv, this harness's cache),
    then older versions, newest first. (From 3.12 on CPython ships it as a package of
    several modules, which this harness does not load.)"""
    here = sys.version_info[:2]
    found: List[Path] = []
    try:
        import importlib.util

        spec = importlib.util.find_spec("test.test_concurrent_futures")
    except Exception:
        spec = None
    if spec is not None and spec.origin and spec.origin.endswith("test_concurrent_futures.py"):
        found.append(Path(spec.origin))
    roots = [Path("/usr/lib"), Path("/usr/local/lib"), CACHE]
    pyenv = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    if pyenv.is_dir():
        roots += sorted(p / "lib" for p in pyenv.iterdir())
    for root in roots:
        found += sorted(root.glob("python3.*/test/test_concurrent_futures.py"))
    usable = []
    for p in found:
        v = _version_of(p) or here
        if v <= here and p.is_file() and p not in usable:
            usable.append(p)
    # The same minor version first, then the newest older one; stable within a version.
    usable.sort(key=lambda p: (0 if (_version_of(p) or here) == here else 1, tuple(-x for x in (_version_of(p) or here))))
    return usable


def fetch_futures_tests() -> str:
    """Runs tests/cpython/fetch_cpython_tests.sh (bounded): it takes
    test_concurrent_futures.py out of Debian's libpython3.X-testsuite into the cache.
    Returns what it printed."""
    if not shutil.which("apt-get") or not shutil.which("dpkg-deb"):
        return "no apt-get/dpkg-deb on this machine"
    try:
        r = subprocess.run(["bash", str(FETCH_SCRIPT), f"{sys.version_info[0]}.{sys.version_info[1]}"],
                           capture_output=True, text=True, timeout=180)
    except subprocess.TimeoutExpired:
        return "fetch_cpython_tests.sh took over 180 s"
    return (r.stdout + r.stderr).strip()


def locate_futures_tests() -> Tuple[Optional[Path], str]:
    """The file to run and how it was found, or None and why none was.

    ``HANGFREE_CPYTHON_FUTURES_TESTS`` names a file to use. Otherwise a copy of this
    interpreter's minor version; when there is none, the fetch script is run once
    (``HANGFREE_CPYTHON_FETCH=0`` forbids that) for Debian's copy of it; only when that
    fails too, the newest copy of an older version (its tests differ a little)."""
    env = os.environ.get(FUTURES_ENV)
    if env:
        p = Path(env)
        return (p, f"{FUTURES_ENV}={env}") if p.is_file() else (None, f"{FUTURES_ENV}={env} is no file")
    here = sys.version_info[:2]

    def same() -> List[Path]:
        return [p for p in futures_candidates() if (_version_of(p) or here) == here]

    c = same()
    if c:
        return c[0], "found on this machine"
    if os.environ.get("HANGFREE_CPYTHON_FETCH", "1") == "0":
        why = "HANGFREE_CPYTHON_FETCH=0 forbids fetching one"
    else:
        log = fetch_futures_tests()
        c = same()
        if c:
            return c[0], f"fetched by {FETCH_SCRIPT.name}: {log}"
        why = f"{FETCH_SCRIPT.name} failed:\n{log}"
    older = futures_candidates()
    if older:
        return older[0], f"no copy for Python {here[0]}.{here[1]} ({why}); an older version's"
    return None, f"no copy on this machine; {why}"
