#!/usr/bin/env bash
# Every GPU check in one run (for a lent GPU machine): the CUDA tests, then the benchmarks,
# most important first, each given what is left of one time budget; ends with a summary table.
#   bash benchmarks/gpu_check.sh                 # GPU_CHECK_SECONDS=500 in all by default
#   DEVICE=cpu QUICK=1 bash benchmarks/gpu_check.sh   # the script's logic, tiny sizes, on a CPU
# Logs go to $OUT (or ./gpu-logs): 8 files, so keep the console output elsewhere. Uses the
# machine's own torch/timm and the repo via PYTHONPATH; packages that machine lacks travel as
# wheels in .whl (scripts/gpu_wheels.sh makes them). Pinned copies are measured on and off in
# the same run.
set -uo pipefail
T0=$SECONDS
BUDGET=${GPU_CHECK_SECONDS:-500}
DEVICE=${DEVICE:-cuda}
OUT=${OUT:-gpu-logs}; mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
PY=${PY:-python3}
export PYTHONPATH=$PWD/src:$PWD/tests:$PWD/benchmarks${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
export FMBFF_MODELS_DIR=/tmp/fmbff-models HF_HUB_OFFLINE=1
if [ -n "${QUICK:-}" ]; then  # CPU check of this script: tiny sizes, light encoder
  ENC="--encoder tf_efficientnetv2_b0 --batch 2"; K=0; KC=0; EDGE=512; SIZES=512,1024; N=3; SEC=0.2
  MEM_ENC=test_efficientnet
else
  ENC=""; K=42; KC=10; EDGE=4096; SIZES=1024,4096,16384; N=60; SEC=2; MEM_ENC=tf_efficientnetv2_s
fi

# step NAME LOG CAP_SECONDS CMD...: runs CMD with at most CAP seconds, and never past the budget.
step() {
  local name=$1 log=$2 cap=$3; shift 3
  local left=$(( BUDGET - (SECONDS - T0) ))
  (( cap > left )) && cap=$left
  if (( cap < 20 )); then
    echo "== $name: skipped, ${left}s of the budget left" | tee -a "$OUT/$log"; return
  fi
  echo "== $name (at most ${cap}s; $(( SECONDS - T0 ))s into the run)" | tee -a "$OUT/$log"
  local t=$SECONDS
  timeout -k 5 "$cap" "$@" 2>&1 | tee -a "$OUT/$log"
  local rc=${PIPESTATUS[0]}
  echo "== $name: exit $rc after $(( SECONDS - t ))s" | tee -a "$OUT/$log"
}

{
  echo "# GPU check $(date -u +%Y-%m-%dT%H:%MZ)"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null \
    || echo "no nvidia-smi"
  $PY -c "import torch, timm, numpy; print('torch', torch.__version__, '| CUDA', torch.version.cuda, '| timm', timm.__version__, '| numpy', numpy.__version__)"
} | tee "$OUT/summary.md"

# 1. Correctness on the GPU first: the CUDA tests (pinned and plain copies, a lagging GPU,
#    compiled CUDA graphs). The CPU tests run on every CI machine, not here.
step "GPU tests" pytest.log 150 $PY -m pytest -q -p no:cacheprovider -m gpu tests/test_inference.py
# 2. Tiled 16k through Segmenter: pinned copies vs pageable (before) vs MONAI, same process.
step "16k tiled: pinned vs pageable vs MONAI" tiled.log 150 $PY benchmarks/peers.py \
  --device "$DEVICE" $ENC --parts 3 --tiled-k $K --variants ours,pageable,monai --repeats 2 \
  --seconds $SEC
# 3. The 4k image of the earlier tables (0.64 of the raw rate), pinned on and off.
step "4k tiled: pinned vs pageable" throughput.log 60 $PY benchmarks/throughput.py \
  --device "$DEVICE" $ENC --only-tiled --tiled-size $EDGE --compare-pinned --repeats 2 \
  --seconds $SEC
# 4. Network: FM-BFF-Net vs smp.Unet vs the bare encoder at 512 px; one 1024 px image.
step "network vs smp.Unet" peers.log 90 $PY benchmarks/peers.py --device "$DEVICE" $ENC \
  --parts 1,2 --sizes 512 --seconds $SEC
# 5. Memory against image size (1k, 4k, 16k), default encoder, in memory and chunked.
step "memory vs image size" memory.log 150 $PY benchmarks/memory.py --device "$DEVICE" \
  --encoder $MEM_ENC --batch 32 --sizes $SIZES
# 6. A folder of small images: one by one vs threaded file I/O.
step "folder" folder.log 60 $PY benchmarks/folder.py --device "$DEVICE" -n $N
# 7. torch.compile (inductor + CUDA graphs on GPU), 4352 px image: last, it compiles longest.
step "tiled: compile" compile.log 300 $PY benchmarks/peers.py --device "$DEVICE" $ENC \
  --parts 3 --tiled-k $KC --variants ours,compile --seconds $SEC

{
  echo
  echo "| figure | value | target |"
  echo "|---|---|---|"
  grep -h -E '(passed|failed|error)' "$OUT/pytest.log" | grep -v '^==' | tail -n 1 \
    | sed 's/^/| GPU tests | /; s/$/ | all pass |/'
  for log in tiled throughput peers memory folder compile; do
    [ -f "$OUT/$log.log" ] && grep -h '^SUMMARY' "$OUT/$log.log" | sed 's/^SUMMARY //'
  done
  echo
  echo "total $(( SECONDS - T0 ))s"
} | tee -a "$OUT/summary.md"
