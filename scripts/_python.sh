# Sourced by the run_*.sh launchers: the Python to use is $PYTHON if set, else the repo's .venv (created and
# installed if missing, as demo.sh does), so the launchers also work inside a conda env (PYTHON=python).
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ -n "${PYTHON:-}" ]; then
    VENV_PY="$PYTHON"
elif [ -x "$ROOT/.venv/bin/python" ]; then
    VENV_PY="$ROOT/.venv/bin/python"
else
    source "$ROOT/scripts/_venv.sh"
fi
cd "$ROOT"
