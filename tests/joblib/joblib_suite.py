"""pytest plugin (``-p joblib_suite``, see run.sh) for running joblib's own tests of
``Parallel`` with hangfree as joblib's default backend.

- Registers the backend as the default before joblib's test module is imported: the
  module computes its parametrizations from joblib's BACKENDS at import, so "hangfree"
  joins every test parametrized over BACKENDS, and every test that uses the default
  backend (``backend=None``, no backend named) runs on hangfree.
- Deselects the tests DESELECTED.md lists as checking loky's internals, and marks those
  it lists as hangfree's bugs strict xfail (each with its reason).
- ``--hangfree-subset``: keeps only the tests that run on hangfree (see
  ``runs_on_hangfree``), the run CI can afford (~2 minutes on this busy 2-core machine); the full
  module takes 12-15 minutes there, most of it in loky's and multiprocessing's tests.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import hangfree.joblib

hangfree.joblib.register(make_default=True)

DESELECTED = Path(__file__).resolve().parent / "DESELECTED.md"
DESELECT, FAILING = "Deselected", "Failing: hangfree's bugs"

# The parameters through which joblib's tests name the backend they run on.
BACKEND_PARAMS = ("backend", "parent_backend", "child_backend", "outer_backend", "inner_backend")

# Tests that name no backend parameter but choose loky themselves (backend="loky" or
# loky's context): left out of the subset, still in the full run.
LOKY_ONLY = {
    "test_nested_loop_with_exception_with_loky",
    "test_parallel_with_interactively_defined_functions_loky",
    "test_parallel_with_interactively_defined_bound_method_loky",
    "test_threadpool_limitation_in_child_loky",
    "test_threadpool_limitation_in_child_context",
    "test_loky_reuse_workers",
    "test_initializer_reused",
    "test_initializer_not_reused",
    "test_memmap_with_big_offset",
}


def listed() -> "dict[str, dict[str, str]]":
    """DESELECTED.md's entries by section ("Deselected", "Failing: hangfree's bugs"):
    ``- `name`: reason``, name being a test function (all its parametrizations) or one
    parametrization, as pytest names it."""
    sections: "dict[str, dict[str, str]]" = {DESELECT: {}, FAILING: {}}
    section = None
    for line in DESELECTED.read_text().splitlines():
        if line.startswith("## "):
            section = line[3:].strip()
            continue
        m = re.match(r"- `([^`]+)`: (.+)", line)
        if m and section in sections:
            sections[section][m.group(1)] = m.group(2)
    return sections


def _entry(item: pytest.Item, entries: "dict[str, str]") -> "str | None":
    return entries.get(item.name, entries.get(item.originalname))


def runs_on_hangfree(item: pytest.Item) -> bool:
    params = getattr(getattr(item, "callspec", None), "params", {})
    backends = [params[p] for p in BACKEND_PARAMS if p in params]
    if not backends:
        return item.originalname not in LOKY_ONLY
    return any(b is None or b == "hangfree" or isinstance(b, hangfree.joblib.HangfreeBackend) for b in backends)


def pytest_addoption(parser):
    parser.addoption("--hangfree-subset", action="store_true",
                     help="run only the tests that run on the hangfree backend")


def pytest_configure(config):
    # Markers of joblib's own test setup (pytest-run-parallel's, and coverage's).
    config.addinivalue_line("markers", "thread_unsafe: not safe to run in threads")
    config.addinivalue_line("markers", "no_cover: not measured by coverage")


def pytest_collection_modifyitems(config, items):
    sections = listed()
    subset = config.getoption("--hangfree-subset")
    keep, drop = [], []
    for item in items:
        if _entry(item, sections[DESELECT]) is not None or (subset and not runs_on_hangfree(item)):
            drop.append(item)
            continue
        bug = _entry(item, sections[FAILING])
        if bug is not None:
            item.add_marker(pytest.mark.xfail(reason=bug, strict=True))
        keep.append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep
