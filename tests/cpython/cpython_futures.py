"""CPython's test_concurrent_futures.py, as a module that hangfree's workers can import.

Nothing of CPython is copied here: on import this module finds the file on the machine
(``cpython_harness.locate_futures_tests``: this interpreter's own, Debian's
libpython3.X-testsuite, pyenv, or the harness's cache) and runs it as its own body. Its
functions (``mul``, ``_crash``, ...) then belong to this module, which workers import by
name (this folder is on the ``sys.path`` that the pool sends them), and tracebacks show
the real file's lines. ``LOCATED`` says which file it is and how it was found;
``SOURCE`` is None, and nothing is defined, when none was found.
"""

from cpython_harness import locate_futures_tests as _locate

SOURCE, LOCATED = _locate()
if SOURCE is not None:
    with open(SOURCE, encoding="utf-8") as _f:
        _code = compile(_f.read(), str(SOURCE), "exec")
    exec(_code, globals())
    del _f, _code
