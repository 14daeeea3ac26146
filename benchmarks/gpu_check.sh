#!/usr/bin/env bash
# Every GPU check in one run (for a lent GPU machine): CUDA tests, then the benchmarks.
# Logs go to $OUT (or ./gpu-logs). Uses the machine's own torch/timm; the repo via PYTHONPATH.
set -uo pipefail
OUT=${OUT:-gpu-logs}; mkdir -p "$OUT"
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1 FMBFF_MODELS_DIR=/tmp/fmbff-models HF_HUB_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, timm, numpy; print('torch', torch.__version__, 'timm', timm.__version__, 'numpy', numpy.__version__)" | tee -a "$OUT/gpu.txt"
python3 -m pytest -q -p no:cacheprovider tests/test_model.py \
  tests/test_inference.py -k "not dask" 2>&1 | tail -n 15 | tee "$OUT/pytest.log"
python3 benchmarks/throughput.py --device cuda --tiled-size "${TILED_SIZE:-4096}" \
  --seconds "${SECONDS_PER:-3}" 2>&1 | tee "$OUT/throughput.log"
