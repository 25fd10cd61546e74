#!/usr/bin/env bash
# Create .venv if missing, install the kit with its test extras, run the test suite.
# Extra arguments go to pytest (e.g. bash scripts/test.sh -k weights).
source "$(dirname "${BASH_SOURCE[0]}")/_venv.sh" test
set +e
"$VENV_PY" -m pytest "$@"
status=$?
set -e
if [ "$status" -eq 5 ]; then
    echo "pytest collected no tests: treating as failure" >&2
    exit 1
fi
exit "$status"
