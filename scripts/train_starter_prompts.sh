#!/usr/bin/env bash
# The starter's prompt stage: the bundled starter (scripts/train_starter.sh) trained further on
# the same kind of procedural data with prompts simulated from the masks (`fmbff train --prompts`:
# jittered boxes, clicks, a corrective click in the network's own error half the time, no prompt
# for 30 % of the crops so automatic Segment stays trained). Fixed budget, no held-out stop
# (held-out Dice scores automatic segmentation only, which this stage must keep, not improve);
# the automatic Dice before / after is checked on unseen images of each look below.
# Works on a CPU in the given minutes; on a GPU set DEVICE=cuda and a larger batch.
set -uo pipefail
OUT=${OUT:-build/starter-prompts}; mkdir -p "$OUT"
DEVICE=${DEVICE:-cpu}; WORKERS=${WORKERS:-0}; MINUTES=${MINUTES:-45}; N=${N:-150}
DATA=${DATA:-/tmp/fmbff-prompt-data}
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 FMBFF_MODELS_DIR=${FMBFF_MODELS_DIR:-/tmp/fmbff-models}
fmbff() { python3 -m napari_fmbff.cli "$@"; }
start=$(date +%s)
[ -d "$DATA/train" ] || fmbff make-data --look all -n "$N" --size 256-512 --seed 0 --out "$DATA/train"
for look in endoscopy dermoscopy ultrasound; do
  [ -d "$DATA/test-$look" ] || fmbff make-data --look "$look" -n 30 --size 256-512 --seed 100000 \
    --out "$DATA/test-$look"
done
echo "data ready in $(( $(date +%s) - start )) s"
fmbff train "$DATA/train" --init starter --out "$OUT/starter.safetensors" --prompts \
  --epochs 40 --batch-size 8 --tile-size 256 --lr 3e-4 --val-fraction 0 --steps-per-epoch 25 \
  --device "$DEVICE" --workers "$WORKERS" --time-limit "$MINUTES" --half --overwrite --seed 0 \
  2>&1 | tr '\r' '\n' | grep -v 'it/s]$' | tail -n 5 | tee "$OUT/train.log"
for model in starter "$OUT/starter.safetensors"; do
  for look in endoscopy dermoscopy ultrasound; do
    echo "== $model on $look (30 unseen images, seeds 100000-100029)"
    fmbff evaluate "$DATA/test-$look" --model "$model" --device "$DEVICE" | tail -n 4
  done
done 2>&1 | tee "$OUT/eval.log"
echo "total $(( $(date +%s) - start )) s"
