#!/usr/bin/env bash
# Builds the documentation site (mkdocs.yml, docs/) into target/site with
# `mkdocs build --strict`: a broken link, a missing page or an unresolved API reference
# fails the build.
#
# The tools (docs/requirements.txt) live in a virtual environment of their own,
# .venv-docs, not in the project's .venv: the site needs neither the extension module
# nor the test tools (the API reference is read from the sources, nothing is imported),
# so this works from a fresh clone without scripts/setup.sh, and the docs' packages
# never mix with the tests'. pip runs only when docs/requirements.txt has changed since
# the last install; its output goes to target/docs.log, shown on failure.
#
#   scripts/docs.sh                # build into target/site
#   PYTHON=python3.12 scripts/docs.sh
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=.venv-docs
LOG=target/docs.log
STAMP=$VENV/.requirements-installed
mkdir -p target
: >"$LOG"

# Runs one step with its output in the log; on failure, shows the log's tail and stops.
quiet() {
    echo "+ $*" >>"$LOG"
    if ! "$@" >>"$LOG" 2>&1; then
        echo "docs: failed: $*" >&2
        echo "---- last lines of $LOG" >&2
        tail -n 40 "$LOG" >&2
        exit 1
    fi
}

SECONDS=0
if [ ! -x "$VENV/bin/python" ]; then
    echo "docs: creating $VENV"
    quiet "$PYTHON" -m venv "$VENV"
fi
if ! cmp -s docs/requirements.txt "$STAMP"; then
    echo "docs: installing docs/requirements.txt into $VENV"
    quiet "$VENV/bin/python" -m pip install --disable-pip-version-check -r docs/requirements.txt
    cp docs/requirements.txt "$STAMP"
fi

echo "docs: mkdocs build --strict -d target/site"
# NO_MKDOCS_2_WARNING: mkdocs-material's banner about MkDocs 2.0, printed on every build.
export NO_MKDOCS_2_WARNING=1
quiet "$VENV/bin/mkdocs" build --strict -d target/site
echo "docs: target/site/index.html, built in ${SECONDS}s"
