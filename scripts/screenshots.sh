#!/usr/bin/env bash
# The README's pictures from real napari windows at 1600 x 1000 under Xvfb (after
# scripts/setup.sh). Extra arguments go to scripts/screenshots.py (e.g. --only finetune,
# --volume scan.nii.gz --volume-model my-model).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
xvfb-run -a -s "-screen 0 1600x1000x24" "$PY" scripts/screenshots.py docs/images "$@"
