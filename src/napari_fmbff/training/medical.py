"""Fine-tuning FM-BFF-Net on LiteMedSAM's frozen encoder (``model.medical_encoder``, issue 30's
lever 1) from one or a few corrected slices, and segmenting a volume with it.

The encoder is frozen, so each slice's features are computed once (``SliceFeatures``) and only
FM-BFF-Net's own layers train on them: the 75 GFLOP of the TinyViT never run per step. The
augmentation is the 8 flips and quarter turns of each training slice, each encoded for what
it is (the TinyViT is not flip-invariant, so its features are not flipped maps of each other).
Slices are seen as LiteMedSAM sees them (``inference.litemedsam.prepare``: one intensity range
for the volume, the longest side resized to 256, padded); the model answers on that 256 grid
and its probabilities are resized back to the slice.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

#: The fine-tune's recipe (measured in docs/models.md, "Lever 1").
STEPS = 150
BATCH = 4
LR = 1e-3
#: FM-BFF-Net's layers on the frozen encoder: a lighter decoder than the starter's (its step
#: on 4 slices of 256 px, 2 CPU threads: 0.53 s against 0.98 with the starter's decoder).
MODEL = {"decoder_channels": (128, 64, 32, 16), "refine_convs": 1}


@dataclass
class SliceFeatures:
    """One slice's frozen features and where the slice lies in the 256 x 256 input."""
    s2: object            # torch (1, 128, 128, 128)
    s4: object            # torch (1, 256, 64, 64)
    shape: tuple          # the slice's (H, W)
    resized: tuple        # its (H, W) inside the 256 x 256 input


def medical_model(pretrained: bool = True, seed: int = 0, **overrides):
    """A fresh FM-BFF-Net on LiteMedSAM's frozen TinyViT (its trainable layers from ``seed``)."""
    import torch

    from ..model import FMBFFNet, ModelConfig
    from ..model.medical_encoder import NAME, WEIGHTS

    torch.manual_seed(seed)
    return FMBFFNet(ModelConfig(encoder=NAME, encoder_weights=WEIGHTS if pretrained else None,
                                **{**MODEL, **overrides}))


def _dihedral(x, k: int):
    """The k-th of the 8 flips and quarter turns of the last two axes (k = 0: unchanged)."""
    import torch

    x = torch.rot90(x, k % 4, dims=(-2, -1))
    return torch.flip(x, dims=(-1,)) if k >= 4 else x


def _undo_dihedral(x, k: int):
    import torch

    if k >= 4:
        x = torch.flip(x, dims=(-1,))
    return torch.rot90(x, -(k % 4), dims=(-2, -1))


def encode(net, plane, intensity_range, k: int = 0) -> SliceFeatures:
    """The frozen features of ``plane`` (flipped / turned by ``k``, see ``_dihedral``)."""
    from ..inference.litemedsam import prepare

    x, (shape, resized, _) = prepare(plane, intensity_range)
    s2, s4 = net.encoder.frozen_features(_dihedral(x, k))
    return SliceFeatures(s2, s4, shape, resized)


def _target(mask, resized):
    """The mask on the 256 grid, as LiteMedSAM's input holds its slice (bilinear, then > 0.5)."""
    import torch
    import torch.nn.functional as F

    from ..model.medical_encoder import SIZE

    m = torch.from_numpy(np.asarray(mask, np.float32))[None, None]
    m = F.interpolate(m, resized, mode="bilinear", align_corners=False)
    m = F.pad(m, (0, SIZE - resized[1], 0, SIZE - resized[0]))
    return (m > 0.5).float()


def fine_tune(net, planes, masks, intensity_range, steps: int = STEPS, lr: float = LR,
              seed: int = 0, batch: int = BATCH, log=None) -> dict:
    """Train ``net``'s trainable layers on the (plane, mask) pairs, each seen in its 8 flips and
    turns: ``steps`` steps of ``batch``, AdamW, BCE + soft Dice. Returns what it cost."""
    import torch
    import torch.nn.functional as F

    from .metrics import soft_dice

    start = time.process_time()
    feats, targets = [], []
    for plane, mask in zip(planes, masks):
        for k in range(8):
            f = encode(net, plane, intensity_range, k)
            feats.append((f.s2, f.s4))
            targets.append(_dihedral(_target(mask, f.resized), k))
    encode_s = time.process_time() - start
    params = [p for p in net.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    rng = np.random.default_rng(seed)
    net.train()
    losses = []
    for step in range(steps):
        pick = rng.choice(len(feats), size=min(batch, len(feats)), replace=False)
        s2 = torch.cat([feats[i][0] for i in pick])
        s4 = torch.cat([feats[i][1] for i in pick])
        y = torch.cat([targets[i] for i in pick])
        logits = net.forward_features(net.encoder.from_frozen(s2, s4))
        loss = F.binary_cross_entropy_with_logits(logits, y) + (1 - soft_dice(torch.sigmoid(logits), y))
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss))
        if log and (step + 1) % 50 == 0:
            log(f"step {step + 1}: loss {np.mean(losses[-50:]):.4f}")
    net.eval()
    return {"encode_cpu_s": encode_s, "train_cpu_s": time.process_time() - start - encode_s,
            "losses": losses}


def predict_plane(net, feats: SliceFeatures) -> np.ndarray:
    """float32 (H, W) probabilities for one encoded slice (k = 0)."""
    import torch
    import torch.nn.functional as F

    with torch.no_grad():
        logits = net.forward_features(net.encoder.from_frozen(feats.s2, feats.s4))
        nh, nw = feats.resized
        logits = F.interpolate(logits[..., :nh, :nw], feats.shape, mode="bilinear",
                               align_corners=False)
    return torch.sigmoid(logits)[0, 0].numpy()
