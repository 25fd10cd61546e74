# Sourced by test.sh and demo.sh: create .venv at the repo root if missing and install the kit into it.
# Usage: source scripts/_venv.sh [EXTRAS]   (e.g. "test")
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
if [ ! -x .venv/bin/python ]; then
    PYTHON_BIN="${PYTHON:-}"
    if [ -z "$PYTHON_BIN" ]; then
        for candidate in python3.11 python3.12 python3.10 python3; do
            if command -v "$candidate" >/dev/null 2>&1; then PYTHON_BIN="$candidate"; break; fi
        done
    fi
    echo "creating .venv with $PYTHON_BIN"
    "$PYTHON_BIN" -m venv .venv
fi
VENV_PY="$ROOT/.venv/bin/python"
SPEC="."
[ -n "${1:-}" ] && SPEC=".[$1]"
# The MindSpore wheel is ~1 GB on first install; the full pip log is kept in .venv/pip-install.log.
echo "installing edsr_lib ($SPEC) into .venv"
if ! "$VENV_PY" -m pip install --disable-pip-version-check -e "$SPEC" > .venv/pip-install.log 2>&1; then
    tail -n 30 .venv/pip-install.log >&2
    echo "pip install failed (full log: .venv/pip-install.log)" >&2
    exit 1
fi
"$VENV_PY" -c "import edsr_lib" || { echo "edsr_lib failed to import after install" >&2; exit 1; }
# The kit's CPU convolution, compiled once per machine (importing the kit never builds: edsr_lib/kernels/build.py); if it
# cannot be built the reason is printed and the kit runs MindSpore's Conv2d instead.
"$VENV_PY" -m edsr_lib.kernels build || true
# JupyterLab's "Save Widget State Automatically", in this venv only: a saved notebook keeps its widgets' state, so
# reopened without a kernel it shows the explorer's controls as they were instead of "model not found".
mkdir -p .venv/share/jupyter/lab/settings
cp scripts/jupyterlab-overrides.json .venv/share/jupyter/lab/settings/overrides.json
