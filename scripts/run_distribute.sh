#!/usr/bin/env bash
# Data parallel: every rank executes notebooks/02_train.ipynb with papermill, on one server or several.
# usage: bash scripts/run_distribute.sh TRAIN_DATA_DIR DEVICE_NUM [RANK_TABLE_FILE] [--nodes N] [--node-rank R]
#            [--master-addr ADDR] [--master-port PORT] [--one-host] [-p NAME VALUE ...]
#   DEVICE_NUM: devices on this server; the job has N x DEVICE_NUM ranks. Run the same command on every server,
#   each with its own --node-rank (server 0 at --master-addr starts the scheduler). Without RANK_TABLE_FILE the job
#   is launched with msrun; with it, one process per device of this server (SERVER_ID, --node-rank or a local
#   address picks the server). Flags in any order, --flag value or --flag=value.
#   DEVICE_TARGET=CPU runs the same job as CPU workers; --one-host emulates the --nodes servers on this machine with
#   --master-addr 127.0.0.1 (how the tests exercise both).
#   output: $OUTPUT_DIR, else outputs/distribute: rank_<i>/ (notebook, metrics.json), ckpt/ (rank 0), msrun_logs/
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_python.sh"
if [ $# -lt 1 ]; then sed -n 3,11p "$0" >&2; exit 2; fi
exec "$VENV_PY" -m edsr_lib.launch distribute --output-dir "${OUTPUT_DIR:-outputs/distribute}" "$@"
