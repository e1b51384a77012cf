#!/usr/bin/env bash
# Installs the wheel into a fresh virtual environment of each given CPython and runs the
# Python test suite (tests/python) against the installed package, one interpreter after
# the other; then a line per interpreter with pytest's counts. Exits non-zero if any fails.
#
#   scripts/test-pythons.sh                   # the oldest and newest CPython 3.9-3.13 pyenv has
#   scripts/test-pythons.sh 3.10 3.12.1       # these pyenv versions (a prefix is enough)
#   scripts/test-pythons.sh /usr/bin/python3  # an interpreter by its path
#   scripts/test-pythons.sh all               # every CPython 3.9-3.13 pyenv has
#   scripts/test-pythons.sh 3.9 -- -k executor   # pytest arguments after --
#
# The wheel is $WHEEL, else the newest of this machine's architecture in target/wheels,
# else one scripts/wheel.sh builds. Each run happens in target/pythons/<version>/: a fresh
# venv with the wheel and the test requirements, and a copy of tests/, examples/ and
# pyproject.toml (pytest's settings) to run from. The copy is what makes the installed
# package the one tested: run from the source tree, the test of the drop-in corpus would
# start its programs with .venv/bin/python (the editable install of python/hangfree) when
# that exists, and `python -m pytest` puts the current directory on sys.path. The copy has
# neither python/ nor .venv, and the script checks that `import hangfree` finds the venv's.
#
# numpy, scikit-learn and dask are not installed: the tests that need them skip themselves.
# Each interpreter's run is bounded by $PYTEST_TIMEOUT seconds (default 1200); each test by
# pytest-timeout (60 s, pyproject.toml).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
RUNS=$ROOT/target/pythons
PYTEST_TIMEOUT=${PYTEST_TIMEOUT:-1200}
TEST_REQS=("pytest>=7" "pytest-timeout>=2" "tqdm" "joblib>=1.3")

wanted=()
pytest_args=()
while [ $# -gt 0 ]; do
    case $1 in
        --) shift; pytest_args=("$@"); break ;;
        *) wanted+=("$1"); shift ;;
    esac
done

# CPython 3.9-3.13 that pyenv has, oldest first, one path per line.
pyenv_pythons() {
    local root
    root=$(pyenv root 2>/dev/null || echo "$HOME/.pyenv")
    [ -d "$root/versions" ] || return 0
    ls "$root/versions" | grep -E '^3\.(9|1[0-3])\.[0-9]+$' | sort -t. -k1,1n -k2,2n -k3,3n |
        while read -r v; do
            [ -x "$root/versions/$v/bin/python3" ] && echo "$root/versions/$v/bin/python3"
        done
    return 0
}

interpreters=()
all=$(pyenv_pythons)
if [ ${#wanted[@]} -eq 0 ]; then
    [ -n "$all" ] || { echo "test-pythons: no CPython 3.9-3.13 under pyenv; name interpreters by path" >&2; exit 2; }
    interpreters+=("$(echo "$all" | head -n 1)")
    newest=$(echo "$all" | tail -n 1)
    [ "$newest" = "${interpreters[0]}" ] || interpreters+=("$newest")
else
    for w in "${wanted[@]}"; do
        if [ "$w" = all ]; then
            while read -r p; do interpreters+=("$p"); done <<<"$all"
        elif [ -x "$w" ]; then
            interpreters+=("$w")
        else
            # A pyenv version or prefix: 3.9 -> the newest 3.9.x; 3.9.18 -> itself.
            p=$(echo "$all" | grep -E "/versions/${w//./\\.}(\.[0-9]+)?/bin/" | tail -n 1 || true)
            [ -n "$p" ] || { echo "test-pythons: no pyenv CPython $w (pyenv has: $(echo "$all" | sed 's|.*/versions/||; s|/bin/python3||' | tr '\n' ' '))" >&2; exit 2; }
            interpreters+=("$p")
        fi
    done
fi

arch=$(uname -m)
if [ -z "${WHEEL:-}" ]; then
    WHEEL=$(ls -t "$ROOT"/target/wheels/hangfree-*-cp39-abi3-*"$arch".whl 2>/dev/null | head -n 1 || true)
    if [ -z "$WHEEL" ]; then
        scripts/wheel.sh "$arch"
        WHEEL=$(ls -t "$ROOT"/target/wheels/hangfree-*-cp39-abi3-*"$arch".whl | head -n 1)
    fi
fi
[ -f "$WHEEL" ] || { echo "test-pythons: no wheel at $WHEEL" >&2; exit 2; }
echo "test-pythons: ${WHEEL#"$ROOT"/}"

unset PYTHONPATH PYTHONHOME VIRTUAL_ENV
summary=()
status=0
for py in "${interpreters[@]}"; do
    ver=$("$py" -c 'import platform; print(platform.python_version())')
    run=$RUNS/$ver
    log=$run/log
    rm -rf "$run"
    mkdir -p "$run/src"
    : >"$log"
    echo "test-pythons: CPython $ver ($py): venv, wheel and test requirements in ${run#"$ROOT"/}"
    setup_failed() {
        echo "test-pythons: CPython $ver: $1 failed; last lines of $log:" >&2
        tail -n 30 "$log" >&2
        summary+=("$ver  setup failed: $1")
        status=1
    }
    if ! { "$py" -m venv "$run/venv" &&
            "$run/venv/bin/python" -m pip install --upgrade pip &&
            "$run/venv/bin/python" -m pip install "$WHEEL" "${TEST_REQS[@]}"; } >>"$log" 2>&1; then
        setup_failed "installing"; continue
    fi
    tar -C "$ROOT" --exclude=__pycache__ --exclude=.pytest_cache -cf - tests examples pyproject.toml |
        tar -C "$run/src" -xf -
    # The package imported must be the wheel's, from the venv.
    where=$(cd "$run/src" && "$run/venv/bin/python" -c 'import hangfree, hangfree._core; print(hangfree.__file__)' 2>>"$log") || {
        setup_failed "import hangfree"; continue; }
    case $where in
        "$run/venv/"*) ;;
        *) echo "test-pythons: CPython $ver imports hangfree from $where, not from the venv" >&2
           summary+=("$ver  setup failed: hangfree imported from $where"); status=1; continue ;;
    esac
    # CPython's executor tests, as scripts/setup.sh does: Debian's copy where this
    # interpreter has no single-file test_concurrent_futures.py (from 3.12 on it is a
    # package, which the harness does not load), into the run's tests/cpython/.cache;
    # fetched once here, not by each worker process that imports the harness.
    if ! "$run/venv/bin/python" -c 'import importlib.util as u, sys; s = u.find_spec("test.test_concurrent_futures"); sys.exit(not (s and s.origin and s.origin.endswith("test_concurrent_futures.py")))' >/dev/null 2>&1; then
        "$run/src/tests/cpython/fetch_cpython_tests.sh" "${ver%.*}" >>"$log" 2>&1 ||
            echo "test-pythons: CPython $ver: no test_concurrent_futures.py of its own; the harness takes an older version's"
    fi
    echo "test-pythons: CPython $ver: pytest tests/python (log: ${log#"$ROOT"/})"
    start=$SECONDS
    rc=0
    (cd "$run/src" && HANGFREE_CPYTHON_FETCH=0 timeout -k 10 "$PYTEST_TIMEOUT" "$run/venv/bin/python" -m pytest -q \
        -p no:cacheprovider tests/python ${pytest_args[@]+"${pytest_args[@]}"}) >>"$log" 2>&1 || rc=$?
    took=$((SECONDS - start))
    counts=$(grep -E '^=* ?[0-9]+ (passed|failed|error)|^=*.* in [0-9.]+s' "$log" | tail -n 1 | sed 's/=//g; s/^ *//; s/ *$//')
    if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then
        counts="timed out after ${PYTEST_TIMEOUT}s${counts:+ ($counts)}"
    fi
    if [ $rc -ne 0 ]; then
        status=1
        grep -E '^(FAILED|ERROR) ' "$log" | cut -c1-200 >&2 || true
    fi
    summary+=("$ver  $([ $rc -eq 0 ] && echo ok || echo FAIL)  ${counts:-no pytest summary (exit $rc)}  [${took}s]")
done

echo "test-pythons: results"
for line in "${summary[@]}"; do echo "  $line"; done
exit $status
