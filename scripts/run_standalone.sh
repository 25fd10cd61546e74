#!/usr/bin/env bash
# One device: execute notebooks 02_train, 03_evaluate and 04_visual_comparison with papermill.
# usage: bash scripts/run_standalone.sh TRAIN_DATA_DIR [OUTPUT_DIR] [-p NAME VALUE ...]
#   TRAIN_DATA_DIR: a DIV2K root, a folder of HR images, or "sample" (built-in photos)
#   OUTPUT_DIR: default $OUTPUT_DIR, else outputs/standalone
# Writes the executed notebooks, figures, checkpoints and metrics.json (psnr, psnr_bicubic) to OUTPUT_DIR.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_python.sh"
if [ $# -lt 1 ]; then sed -n 3,6p "$0" >&2; exit 2; fi
TRAIN_DATA_DIR="$1"; shift
OUT="${OUTPUT_DIR:-outputs/standalone}"
if [ $# -gt 0 ] && [ "$1" != "-p" ]; then OUT="$1"; shift; fi
exec "$VENV_PY" -m edsr_lib.launch standalone "$TRAIN_DATA_DIR" --output-dir "$OUT" "$@"
