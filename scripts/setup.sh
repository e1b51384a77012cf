#!/usr/bin/env bash
# Prepares a fresh clone: a virtual environment in .venv with the Python packages, the
# extension built and installed into it, and the Rust programs the tests or the demo run.
# Idempotent, and quick when nothing changed.
#
#   scripts/setup.sh          for the tests and the benchmarks (requirements-dev.txt), the
#                             Rust tests and test workers, and CPython's executor tests
#   scripts/setup.sh --demo   only what scripts/demo.sh needs (requirements-demo.txt)
#
# It prints a line per step; what pip, maturin and cargo print goes to target/setup.log,
# whose last lines are shown when a step fails (the exit status is the step's). pip runs
# only when the requirement files changed since it last succeeded (a stamp in .venv holds
# their hash; remove .venv/.setup-* to run it anyway).
set -euo pipefail
cd "$(dirname "$0")/.."

WHAT=dev
case ${1-} in
    "") ;;
    --demo) WHAT=demo ;;
    *) echo "usage: scripts/setup.sh [--demo]" >&2; exit 2 ;;
esac

PYTHON=${PYTHON:-python3}
mkdir -p target
LOG=target/setup.log
: >"$LOG"
SECONDS=0

# Runs one command with its output in the log; on failure, shows the log's tail and
# exits with the command's status.
quiet() {
    echo "+ $*" >>"$LOG"
    local rc=0
    "$@" >>"$LOG" 2>&1 || rc=$?
    if [ $rc -ne 0 ]; then
        echo "setup: failed (exit $rc): $*" >&2
        echo "---- last lines of $LOG" >&2
        tail -n 40 "$LOG" >&2
        exit $rc
    fi
}

# A requirement file and those it includes (-r, relative to the including file).
req_files() {
    echo "$1"
    local inc
    sed -n 's/^-r[[:space:]]*//p' "$1" | while read -r inc; do
        req_files "$(dirname "$1")/$inc"
    done
}

# The hash of a set's requirement files; the stamp .venv/.setup-SET holds it once pip
# has installed that set.
req_hash() {
    req_files "requirements-$1.txt" | xargs sha256sum | sha256sum | cut -d' ' -f1
}

if [ ! -x .venv/bin/python ]; then
    echo "setup: venv in .venv ($("$PYTHON" --version 2>&1))"
    quiet "$PYTHON" -m venv .venv
fi

# The dev set includes the demo's, so its stamp serves the demo too.
want=$(req_hash "$WHAT")
if [ "$(cat ".venv/.setup-$WHAT" 2>/dev/null)" = "$want" ] ||
    { [ "$WHAT" = demo ] && [ "$(cat .venv/.setup-dev 2>/dev/null)" = "$(req_hash dev)" ]; }; then
    echo "setup: Python packages up to date (requirements-$WHAT.txt)"
else
    echo "setup: Python packages (requirements-$WHAT.txt; log: $LOG)"
    quiet .venv/bin/python -m pip install --upgrade pip
    quiet .venv/bin/python -m pip install -r "requirements-$WHAT.txt"
    echo "$want" >".venv/.setup-$WHAT"
fi

# maturin develop installs the package in editable mode: python/hangfree is used in place.
if .venv/bin/python -c 'import hangfree._core' >/dev/null 2>&1; then
    echo "setup: building the extension (maturin develop --release)"
else
    echo "setup: building the extension (maturin develop --release; a few minutes the first time)"
fi
VIRTUAL_ENV="$PWD/.venv" quiet .venv/bin/maturin develop --release

if [ "$WHAT" = demo ]; then
    # The demo's Rust part: crates/hangfree/examples/demo.rs and the worker it runs.
    first=""
    [ -x "${CARGO_TARGET_DIR:-target}/release/examples/demo" ] || first="; a minute or two the first time"
    echo "setup: building the Rust demo and its worker (cargo build --release$first)"
    quiet cargo build --release -p hangfree-hostile
    quiet cargo build --release -p hangfree --example demo
    echo "setup: done in ${SECONDS} s"
    exit 0
fi

echo "setup: building the Rust test workers (cargo build -p hangfree-hostile, release and debug)"
quiet cargo build --release -p hangfree-hostile
quiet cargo build -p hangfree-hostile
# The Rust tests too, so that scripts/test.sh's cargo nextest (or cargo test) finds them
# built instead of printing a compile log of its own.
echo "setup: building the Rust tests (cargo test --no-run)"
quiet cargo test --no-run --workspace --exclude hangfree-python

# CPython's ProcessPoolExecutor tests, run against hangfree by the Python suite: this
# interpreter's own copy where it has one, else Debian's libpython3.X-testsuite (fetched,
# not installed). tests/python/test_cpython_executor.py says what is missing if this fails.
PYVER=$(.venv/bin/python -c 'import sys; print("%d.%d" % sys.version_info[:2])')
if ! .venv/bin/python -c 'import test.test_concurrent_futures' >/dev/null 2>&1 &&
    [ ! -f "tests/cpython/.cache/python$PYVER/test/test_concurrent_futures.py" ]; then
    echo "setup: CPython's test_concurrent_futures.py (from Debian's libpython$PYVER-testsuite)"
    if ! tests/cpython/fetch_cpython_tests.sh "$PYVER" >>"$LOG" 2>&1; then
        echo "setup: CPython's test_concurrent_futures.py could not be fetched (see $LOG)" >&2
    fi
fi
echo "setup: done in ${SECONDS} s"
