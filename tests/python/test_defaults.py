"""Every default lives in the engine: the fronts pass "not given" (None) through, and what
their docstrings and the ``_core`` stub say is what the engine does."""

from __future__ import annotations

import ast
import inspect
import os
import signal

import pytest

import hangfree
from hangfree import _core

# The settings both fronts take and leave to the engine when not given.
ENGINE_SETTINGS = ["task_timeout", "grace", "max_memory", "retries", "cgroup", "fork_server", "startup_timeout",
                   "max_startup_failures"]


def _stated(value: object) -> str:
    """A default as the docstrings state it: seconds with their unit."""
    return f"{value} s" if isinstance(value, float) else str(value)


@pytest.mark.parametrize("front", [hangfree.Pool, hangfree.ProcessPoolExecutor])
def test_front_signatures_pass_every_engine_setting_as_none(front):
    params = inspect.signature(front).parameters
    for name in ENGINE_SETTINGS:
        assert params[name].default is None, name


@pytest.mark.parametrize("front", [hangfree.Pool, hangfree.ProcessPoolExecutor])
def test_front_docstrings_state_the_engine_defaults(front):
    doc = " ".join(front.__doc__.split())
    d = _core.defaults()
    for name in ["grace", "startup_timeout", "max_startup_failures", "retries", "fork_server", "cgroup"]:
        assert f"``{name}`` {_stated(d[name])}" in doc, (name, d[name])
    assert d["task_timeout"] is None and d["max_memory"] is None
    assert "no ``task_timeout``, ``max_memory``" in doc
    assert f"with {signal.Signals(d['stack_dump_signal']).name}, and given {_stated(d['stack_dump_wait'])}" in doc


def test_core_stub_leaves_every_engine_setting_to_the_engine():
    stub = os.path.join(os.path.dirname(_core.__file__), "_core.pyi")
    with open(stub) as f:
        tree = ast.parse(f.read())
    (engine,) = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Engine"]
    (init,) = [n for n in engine.body if isinstance(n, ast.FunctionDef) and n.name == "__init__"]
    names = [a.arg for a in init.args.kwonlyargs]
    defaults = dict(zip(names, init.args.kw_defaults))
    # What the Python package itself supplies, rather than a setting with an engine default.
    own = {"init_payload", "env", "events"}
    for name in set(names) - own:
        assert isinstance(defaults[name], ast.Constant) and defaults[name].value is None, name
    assert set(names) - own <= set(_core.defaults()), set(names) - own - set(_core.defaults())


def test_a_pool_left_to_the_defaults_has_the_engine_default_workers():
    with hangfree.Pool() as p:
        assert p._processes == _core.defaults()["workers"]
        assert p.apply(abs, (-3,)) == 3
