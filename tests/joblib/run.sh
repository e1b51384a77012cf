#!/usr/bin/env bash
# Runs joblib's own tests of Parallel (joblib/test/test_parallel.py, shipped inside the
# installed joblib) with hangfree as joblib's default backend; see joblib_suite.py and
# DESELECTED.md. Extra arguments go to pytest; --hangfree-subset runs only the tests
# that run on hangfree (what CI runs). Each test is limited to 120 s, the whole run to
# 30 minutes; afterwards no process the run started may be left.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
py="${PYTHON:-$repo/.venv/bin/python}"

# Every process of the run inherits this marker; the check below finds survivors by it.
tag="joblib-suite-$$-$RANDOM"
# site/ holds the sitecustomize that makes hangfree the default in child interpreters too.
export PYTHONPATH="$here:$here/site${PYTHONPATH:+:$PYTHONPATH}"

cd "$here"
status=0
# -c /dev/null: the project's pyproject.toml (testpaths, its 60 s limit) is not this run's.
HANGFREE_TEST_TAG="$tag" timeout -k 30 1800 "$py" -m pytest -c /dev/null --rootdir "$here" -p joblib_suite -p no:cacheprovider \
    --timeout 120 -q -rfEs --pyargs joblib.test.test_parallel "$@" || status=$?

"$py" - "$tag" <<'PY' || status=1
import sys
sys.path.insert(0, "../python")
import helpers

left = helpers.wait_gone(helpers.marked_pids(helpers.TAG_VAR, sys.argv[1]), 10.0)
if left:
    for pid in sorted(left):
        try:
            cmd = open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            cmd = "?"
        print(f"left behind: pid {pid}: {cmd}", file=sys.stderr)
    helpers.kill_pids(left)
    sys.exit(1)
print("no process of the run left")
PY
exit $status
