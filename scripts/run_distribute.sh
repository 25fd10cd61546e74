#!/usr/bin/env bash
# Data parallel on DEVICE_NUM devices: every rank executes notebooks/02_train.ipynb with papermill.
# usage: bash scripts/run_distribute.sh TRAIN_DATA_DIR [DEVICE_NUM=8] [RANK_TABLE_FILE] [-p NAME VALUE ...]
#   without RANK_TABLE_FILE the job is launched with msrun; with it, one process per device as the seed does.
#   DEVICE_TARGET=CPU runs the same job as DEVICE_NUM CPU workers (how the tests exercise it).
#   output: $OUTPUT_DIR, else outputs/distribute: rank_<i>/ (notebook, metrics.json), ckpt/ (rank 0), msrun_logs/
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_python.sh"
if [ $# -lt 1 ]; then sed -n 3,7p "$0" >&2; exit 2; fi
ARGS=("$1"); shift
for _ in 1 2; do
    if [ $# -gt 0 ] && [ "$1" != "-p" ]; then ARGS+=("$1"); shift; fi
done
exec "$VENV_PY" -m edsr_lib.launch distribute "${ARGS[@]}" --output-dir "${OUTPUT_DIR:-outputs/distribute}" "$@"
