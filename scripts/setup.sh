#!/usr/bin/env bash
# Make .venv/ with napari-fmbff (editable), napari (PyQt6) and the test tools, plus the apt
# packages Qt and Xvfb need (when run as root on Debian/Ubuntu). Safe to run again: what is
# already there is kept.
#
# torch: on a machine without an NVIDIA GPU (no nvidia-smi, no /proc/driver/nvidia) on Linux,
# the CPU-only wheels from https://download.pytorch.org/whl/cpu are tried first (about 2 GB
# in all instead of about 6.4 GB with the CUDA libraries); when that index cannot be reached
# within a few seconds, torch comes from the ordinary package index instead.
# Environment: PYTHON (default python3), FMBFF_TORCH_INDEX (another wheel index for torch,
# or "default" to skip the CPU index).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
CPU_INDEX=${FMBFF_TORCH_INDEX:-https://download.pytorch.org/whl/cpu}
say() { printf '\n==> %s\n' "$*"; }

say "[1/4] system packages for Qt and Xvfb"
if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  need=""
  for pkg in xvfb libxcb-icccm4 libxcb-keysyms1 libxcb-xinerama0 libxkbcommon-x11-0 \
             libxcb-image0 libxcb-render-util0 libxcb-randr0 libxcb-shape0 libxcb-xfixes0 \
             libxcb-cursor0 libgl1 libegl1 libfontconfig1 libdbus-1-3; do
    dpkg -s "$pkg" >/dev/null 2>&1 || need="$need $pkg"
  done
  if [ -n "$need" ]; then
    echo "installing:$need"
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q $need
  else
    echo "all present"
  fi
else
  echo "skipped (needs root and apt-get; napari's tests need xvfb and Qt's xcb libraries)"
fi

say "[2/4] virtual environment .venv/"
if [ -x .venv/bin/python ]; then
  echo "exists: $(.venv/bin/python --version)"
else
  "$PYTHON" -m venv .venv
  echo "made with $(.venv/bin/python --version)"
fi
PIP=(.venv/bin/python -m pip --disable-pip-version-check)
"${PIP[@]}" install -q --upgrade pip

say "[3/4] PyTorch"
has_nvidia() {
  command -v nvidia-smi >/dev/null 2>&1 || [ -e /proc/driver/nvidia ]
}
if .venv/bin/python -c "import torch" >/dev/null 2>&1; then
  echo "already installed: torch $(.venv/bin/python -c 'import torch; print(torch.__version__)')"
elif [ "$(uname -s)" != Linux ]; then
  echo "macOS / Windows: the ordinary torch wheels (MPS on Apple silicon; CPU otherwise)"
elif has_nvidia; then
  echo "NVIDIA GPU found: torch with CUDA from the package index (about 6.4 GB with its libraries)"
elif [ "$CPU_INDEX" = default ]; then
  echo "no NVIDIA GPU; FMBFF_TORCH_INDEX=default: torch from the package index"
elif .venv/bin/python - "$CPU_INDEX" <<'EOF'
import sys, urllib.request
try:
    urllib.request.urlopen(sys.argv[1].rstrip("/") + "/torch/", timeout=5).close()
except Exception as err:
    print(f"cannot reach {sys.argv[1]} ({type(err).__name__})")
    sys.exit(1)
EOF
then
  echo "no NVIDIA GPU: CPU-only torch + torchvision from $CPU_INDEX (about 200 MB download)"
  if ! "${PIP[@]}" install --progress-bar on --timeout 30 --index-url "$CPU_INDEX" \
         torch torchvision; then
    echo "the CPU wheel index failed; torch will come from the package index instead"
  fi
else
  echo "no NVIDIA GPU, but the CPU wheel index is unreachable: torch comes from the package"
  echo "index (on Linux that is the CUDA build, about 6.4 GB with its libraries; it runs on CPU)"
fi

say "[4/4] napari-fmbff (editable) with napari, PyQt6 and the test tools"
echo "about 2 GB in all with CPU-only torch, about 6.4 GB with the CUDA build; pip lists each package"
"${PIP[@]}" install --progress-bar on -e ".[testing]"

say "done: $(du -sh .venv 2>/dev/null | cut -f1) in .venv/, torch $(.venv/bin/python -c 'import torch; print(torch.__version__)')"
echo "next:  .venv/bin/fmbff demo --headless --out demo-out --overwrite   (or .venv/bin/napari)"
