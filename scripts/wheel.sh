#!/usr/bin/env bash
# Builds what a user installs: an abi3 wheel (one file for every CPython >= 3.9) per Linux
# architecture, tagged manylinux2014 (glibc >= 2.17) and stripped, and the source
# distribution; then checks each wheel with `auditwheel show` and fails if it needs a newer
# glibc than 2.17.
#
#   scripts/wheel.sh                  # x86_64 wheel and the sdist
#   scripts/wheel.sh x86_64 aarch64   # a wheel for each architecture, and the sdist
#
# The host's own linker would tie the extension to the host's glibc (2.36 here, a
# manylinux_2_34 wheel); zig links it against glibc 2.17's symbols instead, on any host and
# for any architecture. maturin, zig (the `ziglang` package) and auditwheel come from PyPI
# into a virtual environment of their own; a missing Rust target is added with rustup.
#
# Output: $WHEEL_DIR (default target/wheels), with the log of every step in wheel.log there
# (shown on failure). Cargo builds in $CARGO_TARGET_DIR (default target/wheel-build, not
# target/: a zig-linked build and the normal one would otherwise rebuild each other).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

OUT=${WHEEL_DIR:-$ROOT/target/wheels}
TOOLS=${WHEEL_TOOLS_VENV:-$ROOT/target/wheel-tools}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target/wheel-build}
PYTHON=${PYTHON:-python3}
ARCHS=("$@")
[ ${#ARCHS[@]} -gt 0 ] || ARCHS=(x86_64)
# The versions this script was checked with (a new zig release has broken maturin before).
TOOL_REQS=("maturin==1.16.0" "ziglang==0.17.1" "auditwheel==6.8.2")
# auditwheel's verdict may be no newer than this glibc (manylinux2014 = manylinux_2_17).
MAX_GLIBC_MINOR=17

mkdir -p "$OUT"
LOG=$OUT/wheel.log
: >"$LOG"

# Runs one step with its output in the log; on failure, shows the log's tail and stops.
quiet() {
    echo "+ $*" >>"$LOG"
    if ! "$@" >>"$LOG" 2>&1; then
        echo "wheel: failed: $*" >&2
        echo "---- last lines of $LOG" >&2
        tail -n 40 "$LOG" >&2
        exit 1
    fi
}

if [ ! -x "$TOOLS/bin/python" ]; then
    quiet "$PYTHON" -m venv "$TOOLS"
fi
quiet "$TOOLS/bin/python" -m pip install --upgrade "${TOOL_REQS[@]}"
# maturin finds zig through the venv's `python -m ziglang`.
export PATH="$TOOLS/bin:$PATH" VIRTUAL_ENV="$TOOLS"

if [ -n "$(git status --porcelain -- python crates pyproject.toml Cargo.toml Cargo.lock 2>/dev/null)" ]; then
    echo "wheel: note: python/, crates/ or the manifests have uncommitted changes, which go into the wheel"
fi
VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)
rm -f "$OUT"/hangfree-"$VERSION"-*.whl "$OUT"/hangfree-"$VERSION".tar.gz
SECONDS=0

for arch in "${ARCHS[@]}"; do
    triple=$arch-unknown-linux-gnu
    if command -v rustup >/dev/null && ! rustup target list --installed | grep -qx "$triple"; then
        echo "wheel: adding the Rust target $triple (rustup)"
        quiet rustup target add "$triple"
    fi
    echo "wheel: building hangfree $VERSION for $arch, manylinux2014, abi3 (CPython >= 3.9), into ${OUT#"$ROOT"/}"
    quiet maturin build --release --strip --zig --compatibility manylinux2014 \
        --target "$triple" --out "$OUT"
    wheel=$(ls -t "$OUT"/hangfree-"$VERSION"-cp39-abi3-*"$arch".whl | head -n 1)
    report=$(auditwheel show "$wheel" 2>&1) || { echo "$report" >&2; exit 1; }
    echo "$report" >>"$LOG"
    # auditwheel show: '... is consistent with the following platform tag: "manylinux_2_17_x86_64"'.
    tag=$(echo "$report" | tr -d '\n' | sed -n 's/.*following platform tag: *"\([^"]*\)".*/\1/p')
    minor=$(echo "$tag" | sed -n 's/^manylinux_2_\([0-9]*\)_.*/\1/p')
    if [ -z "$minor" ] || [ "$minor" -gt "$MAX_GLIBC_MINOR" ]; then
        echo "wheel: auditwheel says ${tag:-no manylinux tag} for $wheel, not manylinux_2_$MAX_GLIBC_MINOR or older:" >&2
        echo "$report" >&2
        exit 1
    fi
    echo "wheel: ${wheel#"$ROOT"/} ($(du -k "$wheel" | cut -f1) KiB); auditwheel: $tag"
done

echo "wheel: building the source distribution"
quiet maturin sdist --out "$OUT"
sdist=$OUT/hangfree-$VERSION.tar.gz
echo "wheel: ${sdist#"$ROOT"/} ($(du -k "$sdist" | cut -f1) KiB); done in ${SECONDS}s"
