#!/usr/bin/env bash
# Runs every test: the Rust workspace (unit, property and real-process contract tests)
# and the Python suite. Installs what it needs first (scripts/setup.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh

echo "== Rust tests"
if cargo nextest --version >/dev/null 2>&1; then
    # Per-test time limits live in .config/nextest.toml.
    cargo nextest run --workspace --exclude hangfree-python --no-fail-fast
    echo "== Rust contract tests again, workers forked by a fork server"
    HF_TEST_FORK_SERVER=1 cargo nextest run -p hangfree-hostile --test contract --test beyond --no-fail-fast
else
    timeout 1200 cargo test --workspace --exclude hangfree-python --no-fail-fast
    HF_TEST_FORK_SERVER=1 timeout 1200 cargo test -p hangfree-hostile --test contract --test beyond --no-fail-fast
fi

echo "== Rust doctests (the crate's front page and README: a complete pool and worker)"
cargo test -q --doc --workspace --exclude hangfree-python

echo "== Rust docs (broken links fail)"
RUSTDOCFLAGS="-D warnings" cargo doc -q --no-deps --workspace --exclude hangfree-python

echo "== Docs site (mkdocs --strict: broken links fail)"
scripts/docs.sh

echo "== Python tests"
.venv/bin/python -m pytest -q tests/python "$@"
