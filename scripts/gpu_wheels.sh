#!/usr/bin/env bash
# Wheels the GPU machine lacks (it has torch, timm, numpy, tifffile, pyyaml...), for
# benchmarks/gpu_check.sh: its package list is in /work/.library/device/KINDS.md.
# Run here, in the repo root; .whl is git-ignored and travels with `carry: [".whl"]`.
set -euo pipefail
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo /.whl/ >> .git/info/exclude
mkdir -p .whl
platforms=(--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64
           --platform manylinux2014_x86_64 --platform any)
python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp "${platforms[@]}" -d .whl \
  segmentation-models-pytorch==0.6.0 monai==1.6.1 zarr==3.1.6 numcodecs donfig \
  google-crc32c platformdirs
du -sh .whl
