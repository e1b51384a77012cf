#!/usr/bin/env bash
# Prepares a fresh clone: a virtual environment with the build and test tools, the Python
# extension built and installed into it, and the Rust test workers built. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q -r requirements-dev.txt
# maturin develop installs the package in editable mode: python/hangfree is used in place.
VIRTUAL_ENV="$PWD/.venv" .venv/bin/maturin develop --release -q
cargo build -q --release -p hangfree-hostile
cargo build -q -p hangfree-hostile
# CPython's ProcessPoolExecutor tests, run against hangfree by the Python suite: this
# interpreter's own copy where it has one, else Debian's libpython3.X-testsuite (fetched,
# not installed). tests/python/test_cpython_executor.py says what is missing if this fails.
PYVER=$(.venv/bin/python -c 'import sys; print("%d.%d" % sys.version_info[:2])')
if ! .venv/bin/python -c 'import test.test_concurrent_futures' >/dev/null 2>&1; then
    tests/cpython/fetch_cpython_tests.sh "$PYVER" >/dev/null || echo "setup: CPython's test_concurrent_futures.py could not be fetched" >&2
fi
