#!/usr/bin/env bash
# Create .venv if missing, install the kit with its test extras, run the test suite.
# Extra arguments go to pytest (e.g. bash scripts/test.sh -k weights; -m "not slow" is the quick tier).
source "$(dirname "${BASH_SOURCE[0]}")/_venv.sh" test
# Lint and format first: a style slip fails in seconds, not after the suite (configuration in pyproject.toml).
"$ROOT/.venv/bin/ruff" check . || { echo "ruff check failed: see above (ruff check --fix fixes most)" >&2; exit 1; }
"$ROOT/.venv/bin/ruff" format --check . || { echo "run: .venv/bin/ruff format ." >&2; exit 1; }
# Types: the public API's annotations against the code (configuration in pyproject.toml, [tool.mypy]).
"$ROOT/.venv/bin/mypy" || { echo "mypy found type errors: see above" >&2; exit 1; }
set +e
"$VENV_PY" -m pytest "$@"
status=$?
set -e
if [ "$status" -eq 5 ]; then
    echo "pytest collected no tests: treating as failure" >&2
    exit 1
fi
exit "$status"
