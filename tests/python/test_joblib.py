"""The joblib backend (``hangfree.joblib``): Parallel calls in hangfree workers, a crash
or a time limit failing the call with hangfree's error while the workers stay for the
next call, and scikit-learn giving the same scores as with loky. Real workers."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

joblib = pytest.importorskip("joblib")

import hangfree  # noqa: E402
import hangfree.joblib  # noqa: E402,F401  (registers the backend)
import joblib_tasks as jt  # noqa: E402

Parallel, delayed = joblib.Parallel, joblib.delayed


@pytest.fixture(autouse=True)
def no_kept_executor():
    """The backend keeps its executor between Parallel calls; each test ends with it
    shut down, so the suite's leak check sees no process of ours left."""
    yield
    hangfree.joblib.shutdown()

LOKY_SCORES = """
import joblib
from sklearn.datasets import make_classification
from sklearn.model_selection import GridSearchCV, cross_val_score
from sklearn.tree import DecisionTreeClassifier

X, y = make_classification(n_samples=300, n_features=8, random_state=0)
model = DecisionTreeClassifier(random_state=0)
with joblib.parallel_config(backend="loky"):
    scores = cross_val_score(model, X, y, cv=5, n_jobs=2)
    search = GridSearchCV(model, {"max_depth": [2, 4, 8]}, cv=3, n_jobs=2).fit(X, y)
print(repr((list(map(float, scores)), search.best_params_, float(search.best_score_))))
"""


def test_importing_hangfree_does_not_import_joblib():
    code = "import sys, hangfree; hangfree.Pool; print('joblib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "False", out.stderr


def test_parallel_runs_in_hangfree_workers_and_reuses_them():
    with joblib.parallel_config(backend="hangfree", n_jobs=2):
        assert Parallel()(delayed(jt.square)(i) for i in range(20)) == [i * i for i in range(20)]
        first = set(Parallel()(delayed(jt.pid)(i) for i in range(8)))
        second = set(Parallel()(delayed(jt.pid)(i) for i in range(8)))
    assert first == second and len(first) <= 2
    assert all(p != __import__("os").getpid() for p in first)


def test_a_segfault_fails_the_call_with_worker_lost_and_the_next_call_works():
    with joblib.parallel_config(backend="hangfree", n_jobs=2):
        with pytest.raises(hangfree.WorkerLostError) as info:
            Parallel()(delayed(jt.segfault_at)(i, 3) for i in range(8))
        assert info.value.signal_name == "SIGSEGV"
        assert "segfault_at(3" in str(info.value)
        assert Parallel()(delayed(jt.square)(i) for i in range(4)) == [0, 1, 4, 9]


def test_task_timeout_fails_only_the_late_task_and_stops_the_call():
    with joblib.parallel_config(backend="hangfree", n_jobs=2, task_timeout=1.0):
        t0 = time.monotonic()
        with pytest.raises(hangfree.TaskTimeoutError) as info:
            Parallel(batch_size=1)(delayed(jt.sleep_for)(s) for s in (0.05, 30, 0.05, 0.05))
        assert time.monotonic() - t0 < 15
        assert "sleep_for(30)" in str(info.value)
        assert Parallel()(delayed(jt.square)(i) for i in range(3)) == [0, 1, 4]


def test_generator_unordered_and_nested_calls():
    with joblib.parallel_config(backend="hangfree", n_jobs=2):
        got = Parallel(return_as="generator_unordered")(delayed(jt.square)(i) for i in range(10))
        assert sorted(got) == [i * i for i in range(10)]
        # Inside a task a nested Parallel runs in turn (the workers fill the CPUs).
        assert Parallel()(delayed(jt.nested)(3) for _ in range(2)) == [[0, 1, 4]] * 2


def test_options_are_checked():
    with pytest.raises(TypeError, match="no option speed"):
        hangfree.joblib.HangfreeBackend(speed=3)


def test_scikit_learn_scores_match_loky():
    pytest.importorskip("sklearn")
    from sklearn.datasets import make_classification
    from sklearn.model_selection import GridSearchCV, cross_val_score
    from sklearn.tree import DecisionTreeClassifier

    # loky's own processes (its reusable executor, its resource tracker) outlive a
    # Parallel call: its scores come from a script of their own.
    out = subprocess.run([sys.executable, "-c", LOKY_SCORES], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    loky_scores, loky_params, loky_best = eval(out.stdout)

    X, y = make_classification(n_samples=300, n_features=8, random_state=0)
    model = DecisionTreeClassifier(random_state=0)
    with joblib.parallel_config(backend="hangfree"):
        scores = cross_val_score(model, X, y, cv=5, n_jobs=2)
        search = GridSearchCV(model, {"max_depth": [2, 4, 8]}, cv=3, n_jobs=2).fit(X, y)
    assert list(map(float, scores)) == loky_scores
    assert search.best_params_ == loky_params
    assert float(search.best_score_) == loky_best
