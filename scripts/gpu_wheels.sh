#!/usr/bin/env bash
# Wheels the GPU machine lacks (it has torch, timm, numpy, tifffile, pyyaml, scipy...), for
# benchmarks/gpu_check.sh. Run here, in the repo root; .whl is git-ignored and has to be
# copied to the GPU machine beside the working tree.
set -euo pipefail
if ! git check-ignore -q .whl/x.whl 2>/dev/null; then
  mkdir -p .git/info && echo /.whl/ >> .git/info/exclude
fi
mkdir -p .whl
platforms=(--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64
           --platform manylinux2014_x86_64 --platform any)
python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp "${platforms[@]}" -d .whl \
  segmentation-models-pytorch==0.6.0 monai==1.6.1 zarr==3.1.6 numcodecs donfig \
  google-crc32c platformdirs
du -sh .whl
