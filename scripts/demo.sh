#!/usr/bin/env bash
# The demo: the article's hanging programs under multiprocessing and under hangfree,
# side by side, then the Rust engine's own demo. Installs what it needs first, and only
# that (scripts/setup.sh --demo).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --demo
echo
.venv/bin/python demo/compare_seeds.py
if [ -f crates/hangfree/examples/demo.rs ]; then
    echo
    echo "== The Rust engine on its own (crates/hangfree/examples/demo.rs)"
    cargo run -q --release -p hangfree --example demo
fi
