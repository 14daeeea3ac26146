#!/usr/bin/env bash
# Make the README's pictures from real napari windows under Xvfb (needs scripts/setup.sh first).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
mkdir -p docs/images
xvfb-run -a -s "-screen 0 1600x1000x24" "$PY" -m napari_fmbff.cli demo --look endoscopy \
  --screenshot docs/images/segment_widget.png
xvfb-run -a -s "-screen 0 1600x1000x24" "$PY" scripts/finetune_screenshot.py docs/images/finetune_widget.png
