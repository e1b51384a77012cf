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
