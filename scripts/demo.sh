#!/usr/bin/env bash
# The kit in one command, on CPU, on the built-in sample photos (no download), in about 10 minutes:
# trains EDSR-baseline x2 briefly, evaluates it on the 3 held-out photos against MATLAB bicubic, and draws the
# visual comparison. Creates .venv and installs the kit first if needed.
# Results: outputs/demo/ (executed notebooks, figures, checkpoints, metrics.json). Extra -p NAME VALUE pairs are
# passed to the notebooks (e.g. -p epochs 4 for a quicker look).
source "$(dirname "${BASH_SOURCE[0]}")/_venv.sh"
# The demo is the laptop path: CPU even on an Ascend host (set DEVICE_TARGET to override).
export DEVICE_TARGET="${DEVICE_TARGET:-CPU}"
rm -rf outputs/demo
"$VENV_PY" -m edsr_lib.launch standalone sample --output-dir outputs/demo "$@"
# The comparison to share: a report that opens from disk in any browser, and the paper-style figure of one photo.
"$VENV_PY" -m edsr_lib.cli compare --data_test sample --method EDSR=outputs/demo/ckpt/best.ckpt --method bicubic \
  --out outputs/demo/report --figure chelsea --crop 110,200,64
echo "comparison report: outputs/demo/report/index.html (paper figure: outputs/demo/report/figure_chelsea.pdf)"
