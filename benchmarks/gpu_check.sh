#!/usr/bin/env bash
# Every GPU check in one run (for a lent GPU machine): CUDA tests, then the benchmarks.
# Logs go to $OUT (or ./gpu-logs). Uses the machine's own torch/timm; the repo via PYTHONPATH.
# Packages that machine lacks travel as wheels in .whl (scripts/gpu_wheels.sh makes them).
set -uo pipefail
OUT=${OUT:-gpu-logs}; mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD/src:$PWD/tests${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
export FMBFF_MODELS_DIR=/tmp/fmbff-models HF_HUB_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, timm, numpy; print('torch', torch.__version__, 'timm', timm.__version__, 'numpy', numpy.__version__)" | tee -a "$OUT/gpu.txt"
# 1. CUDA tests (eager and compiled), then the tiler and the chunked path (CPU-side, fast).
python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_inference.py 2>&1 | tail -n 15 \
  | tee "$OUT/pytest.log"
python3 -m pytest -q -p no:cacheprovider tests/test_chunked.py tests/test_components.py 2>&1 \
  | tail -n 5 | tee -a "$OUT/pytest.log"
# 2. Peers: network vs smp.Unet and the bare encoder; 16k tiled vs MONAI (+ compile row).
python3 benchmarks/peers.py --device cuda --compile --seconds "${SECONDS_PER:-3}" 2>&1 \
  | tee "$OUT/peers.log"
# 3. Memory against image size (1k, 4k, 16k), default encoder.
python3 benchmarks/memory.py --device cuda --encoder tf_efficientnetv2_s --batch 32 2>&1 \
  | tee "$OUT/memory.log"
# 4. A folder of small images: one by one vs threaded file I/O.
python3 benchmarks/folder.py --device cuda -n 200 2>&1 | tee "$OUT/folder.log"
