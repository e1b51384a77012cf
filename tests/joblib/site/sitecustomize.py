"""Makes hangfree joblib's default backend in every interpreter run.sh starts, not only in
pytest's: joblib's tests send their own module's functions to loky and multiprocessing
workers, which import that module (which does not import hangfree.joblib) and then
start a Parallel call with backend="hangfree" (test_nested_loop). A user's module does
this with ``import hangfree.joblib``.

Registration waits until joblib.parallel is imported, so an interpreter that never uses
joblib (a hangfree worker running other tasks, a test's script) does not import it."""

import importlib.abc
import importlib.machinery
import sys


class _RegisterWithJoblib(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name != "joblib.parallel":
            return None
        sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module

        def exec_then_register(module):
            exec_module(module)
            # As joblib's own conftest does with JOBLIB_TESTS_DEFAULT_PARALLEL_BACKEND.
            module.DEFAULT_BACKEND = "hangfree"
            # When hangfree.joblib's import is what imports joblib (a worker unpickling
            # a joblib batch), it registers the backend itself once it is done.
            if "hangfree.joblib" not in sys.modules:
                import hangfree.joblib  # noqa: F401

        spec.loader.exec_module = exec_then_register
        return spec


sys.meta_path.insert(0, _RegisterWithJoblib())
