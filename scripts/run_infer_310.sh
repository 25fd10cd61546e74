#!/usr/bin/env bash
# The MindSpore ModelZoo EDSR's run_infer_310.sh: PSNR/SSIM of an exported MINDIR with the papers' protocol.
# usage: bash scripts/run_infer_310.sh MINDIR_PATH DATA_PATH DATASET_TYPE SCALE [DEVICE_ID]
#   MINDIR_PATH: from `edsr export --format MINDIR` (its .json record beside it gives the architecture)
#   DATA_PATH: dataset root (holding benchmark/ or DIV2K/); DATASET_TYPE: Set5, Set14, B100, Urban100, DIV2K, sample
#   SCALE: checked against the model's; DEVICE_ID: the Ascend device (default 0)
#   The MINDIR runs on MindSpore Lite where it is installed (Ascend 310/310P hosts), else on MindSpore.
#   output: $OUTPUT_DIR, else outputs/infer_310: metrics.json (per image) and acc.log (the table)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_python.sh"
if [ $# -lt 4 ] || [ $# -gt 5 ]; then sed -n 3,8p "$0" >&2; exit 2; fi
export DEVICE_ID="${5:-${DEVICE_ID:-0}}"
OUT="${OUTPUT_DIR:-outputs/infer_310}"
mkdir -p "$OUT"
set +e
"$VENV_PY" -m edsr_lib.cli eval --model "$1" --dir_data "$2" --data_test "$3" --scale "$4" --json "$OUT/metrics.json" \
    | tee "$OUT/acc.log.tmp"
status=${PIPESTATUS[0]}
set -e
if [ "$status" -eq 0 ]; then mv "$OUT/acc.log.tmp" "$OUT/acc.log"; else rm -f "$OUT/acc.log.tmp"; fi
exit "$status"
