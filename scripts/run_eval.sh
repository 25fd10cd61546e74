#!/usr/bin/env bash
# Evaluate a checkpoint by executing notebooks/03_evaluate.ipynb (the MindSpore ModelZoo EDSR's run_eval).
# usage: bash scripts/run_eval.sh TEST_DATA_DIR CHECKPOINT_PATH DATASET_TYPE [-p NAME VALUE ...]
#   DATASET_TYPE: Set5, Set14, B100, Urban100, DIV2K (under TEST_DATA_DIR), sample, or a folder of HR images
#   output: $OUTPUT_DIR, else outputs/eval: the executed notebook, figures and metrics.json
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_python.sh"
if [ $# -lt 3 ]; then sed -n 3,6p "$0" >&2; exit 2; fi
exec "$VENV_PY" -m edsr_lib.launch eval "$1" "$2" "$3" --output-dir "${OUTPUT_DIR:-outputs/eval}" "${@:4}"
