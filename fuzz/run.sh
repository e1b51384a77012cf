#!/bin/sh
# Fuzzes the wire decoders for a bounded time.
#
#   fuzz/run.sh [SECONDS]        (default 60)
#
# Needs a nightly toolchain and cargo-fuzz:
#   rustup toolchain install nightly
#   cargo install cargo-fuzz
# Without them it still checks that the target compiles on the default toolchain.
# New interesting inputs go to fuzz/work/ (ignored by git); the seeds in
# fuzz/corpus/decoder/ are read, never written. A crash leaves its input in
# fuzz/artifacts/decoder/ and makes this script fail.
set -eu
secs="${1:-60}"
here="$(cd "$(dirname "$0")" && pwd)"
cd "$here"

if cargo +nightly --version >/dev/null 2>&1 && cargo fuzz --version >/dev/null 2>&1; then
    mkdir -p work/decoder
    exec cargo +nightly fuzz run decoder work/decoder corpus/decoder -- \
        -max_total_time="$secs" -max_len=65536 -timeout=10 -rss_limit_mb=2048
fi

echo "run.sh: nightly and/or cargo-fuzz missing; only compile-checking the target" >&2
# libfuzzer-sys builds without the sanitizer flags too; this checks the target compiles.
cargo check --bins
exit 0
