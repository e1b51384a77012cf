#!/usr/bin/env bash
# Takes CPython's test_concurrent_futures.py out of Debian's libpython3.X-testsuite package
# (downloaded with apt-get, extracted with dpkg-deb, never installed) into
# tests/cpython/.cache/python3.X/test/, where tests/python/test_cpython_executor.py looks
# for it when this interpreter has no copy of its own (pyenv builds here ship
# _test_multiprocessing.py but not test_concurrent_futures.py).
#
# usage: tests/cpython/fetch_cpython_tests.sh [3.X]     (default: python3's version)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
ver="${1:-$(python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')}"
pkg="libpython${ver}-testsuite"
dest="$here/.cache/python${ver}/test"
if [ -f "$dest/test_concurrent_futures.py" ]; then
    echo "already there: $dest/test_concurrent_futures.py"
    exit 0
fi
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
cd "$tmp"
# apt-get download works as any user, but needs the package lists: update them once if
# the package is unknown and we may (root), as a fresh machine has none.
if ! timeout 120 apt-get download "$pkg" >"$tmp/log" 2>&1; then
    if [ "$(id -u)" = 0 ]; then
        timeout 120 apt-get update -qq >>"$tmp/log" 2>&1 || true
        timeout 120 apt-get download "$pkg" >>"$tmp/log" 2>&1 || { cat "$tmp/log" >&2; exit 1; }
    else
        cat "$tmp/log" >&2
        exit 1
    fi
fi
deb="$(ls "$tmp"/"$pkg"_*.deb | head -n 1)"
dpkg-deb -x "$deb" "$tmp/x"
src="$tmp/x/usr/lib/python${ver}/test/test_concurrent_futures.py"
if [ ! -f "$src" ]; then
    echo "$deb has no usr/lib/python${ver}/test/test_concurrent_futures.py" >&2
    exit 1
fi
mkdir -p "$dest"
cp "$src" "$dest/test_concurrent_futures.py.tmp"
mv "$dest/test_concurrent_futures.py.tmp" "$dest/test_concurrent_futures.py"
echo "$(basename "$deb") -> $dest/test_concurrent_futures.py"
