"""The paper's modules, one small class each.

Every docstring gives the paper's description (arXiv 2510.20933) and the reading we took where
it is ambiguous; docs/architecture.md keeps the same list in one table.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def conv_bn_act(c_in: int, c_out: int, kernel=3, groups: int = 1) -> nn.Sequential:
    """Conv + BatchNorm + ReLU, 'same' padding for odd (or (kh, kw)) kernels."""
    k = (kernel, kernel) if isinstance(kernel, int) else tuple(kernel)
    pad = (k[0] // 2, k[1] // 2)
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, k, padding=pad, groups=groups, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class FMCAB(nn.Module):
    """Focal modulation context attention block, on a skip connection.

    Paper, Eq. 11: FM = gamma_p * [ sigmoid(conv1x1(Re((GAP(i2) - GMP(i2)) * alpha))) * i2 ].
    Our reading: "Re" reshapes the pooled (B, C) vector to (B, C, 1, 1) (a ReLU would zero the
    term, since GAP <= GMP always). i2 is a local-context projection of the input i1
    (depthwise 3x3 conv + BN + GELU). alpha is a learnable scalar (init 1), gamma_p a learnable
    per-channel scale (init ``gamma_init``, non-zero so every weight gets a gradient from step
    one). The block returns i1 + FM.
    """

    def __init__(self, channels: int, gamma_init: float = 0.1) -> None:
        super().__init__()
        self.local = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1, groups=channels, bias=False),
            nn.BatchNorm2d(channels),
            nn.GELU(),
        )
        self.alpha = nn.Parameter(torch.ones(()))
        self.gate = nn.Conv2d(channels, channels, 1)
        self.gamma = nn.Parameter(torch.full((1, channels, 1, 1), float(gamma_init)))

    def forward(self, i1: torch.Tensor) -> torch.Tensor:
        i2 = self.local(i1)
        contrast = i2.mean(dim=(2, 3), keepdim=True) - i2.amax(dim=(2, 3), keepdim=True)
        modulator = torch.sigmoid(self.gate(contrast * self.alpha))
        return i1 + self.gamma * (modulator * i2)


class SkipAggregator(nn.Module):
    """Aggregated skip connection: skip n also receives skip n-1, downsampled.

    Paper: skips are "aggregated". Our reading: s_n = conv1x1(concat(avgpool2(s_{n-1}), b_n))
    + BN + ReLU, so the channel count stays that of b_n.
    """

    def __init__(self, c_prev: int, c_here: int) -> None:
        super().__init__()
        self.fuse = conv_bn_act(c_prev + c_here, c_here, kernel=1)

    def forward(self, prev: torch.Tensor, here: torch.Tensor) -> torch.Tensor:
        prev = F.adaptive_avg_pool2d(prev, here.shape[-2:])
        return self.fuse(torch.cat([prev, here], dim=1))


def sincos_position_encoding(h: int, w: int, dim: int, device, dtype) -> torch.Tensor:
    """2D sine-cosine position encoding, (h*w, dim); works at any tile size."""
    if dim % 4:
        raise ValueError(f"transformer_dim must be a multiple of 4 for 2D sin-cos, got {dim}")
    quarter = dim // 4
    omega = 1.0 / (10000 ** (torch.arange(quarter, device=device, dtype=torch.float32) / quarter))
    ys = torch.arange(h, device=device, dtype=torch.float32)[:, None] * omega[None]
    xs = torch.arange(w, device=device, dtype=torch.float32)[:, None] * omega[None]
    ys = torch.cat([ys.sin(), ys.cos()], dim=1)  # (h, dim/2)
    xs = torch.cat([xs.sin(), xs.cos()], dim=1)  # (w, dim/2)
    pe = torch.cat(
        [ys[:, None, :].expand(h, w, -1), xs[None, :, :].expand(h, w, -1)], dim=2
    )
    return pe.reshape(h * w, dim).to(dtype)


class TokenSelfAttention(nn.Module):
    """TSA: pre-norm multi-head self-attention + MLP over the stride-32 tokens.

    Paper: "token self-attention". Our reading: a standard pre-norm transformer block, using
    PyTorch's fused scaled_dot_product_attention (flash / memory-efficient kernels on CUDA).
    """

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0, dropout: float = 0.0):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(
            nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, dim)
        )
        self.dropout = dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        qkv = self.qkv(self.norm1(x)).reshape(b, n, 3, self.heads, d // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        attn = F.scaled_dot_product_attention(
            q, k, v, dropout_p=self.dropout if self.training else 0.0
        )
        x = x + self.proj(attn.transpose(1, 2).reshape(b, n, d))
        return x + self.mlp(self.norm2(x))


class GlobalSpatialAttention(nn.Module):
    """GSA: a spatial gate over the whole feature map, with a residual.

    Paper: "global spatial attention". Our reading: channel mean and channel max -> 7x7 conv
    -> sigmoid gives a (B, 1, H, W) gate; the block returns x + x * gate.
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 1, 7, padding=3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        return x + x * torch.sigmoid(self.conv(pooled))


class ViTM(nn.Module):
    """Vision transformer module at the bottleneck: TSA blocks, then GSA.

    Paper: ViTM = token self-attention + global spatial attention. Our reading: a 1x1 conv
    projects the stride-32 encoder feature to ``dim``; tokens get a 2D sin-cos position
    encoding (any tile size); ``depth`` TSA blocks; tokens back to a map; GSA.
    """

    def __init__(self, c_in: int, dim: int, depth: int, heads: int, mlp_ratio: float,
                 dropout: float) -> None:
        super().__init__()
        self.dim = dim
        self.proj_in = conv_bn_act(c_in, dim, kernel=1)
        self.blocks = nn.ModuleList(
            TokenSelfAttention(dim, heads, mlp_ratio, dropout) for _ in range(depth)
        )
        self.norm = nn.LayerNorm(dim)
        self.gsa = GlobalSpatialAttention()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj_in(x)
        b, d, h, w = x.shape
        tokens = x.flatten(2).transpose(1, 2)
        tokens = tokens + sincos_position_encoding(h, w, d, x.device, tokens.dtype)
        for block in self.blocks:
            tokens = block(tokens)
        x = self.norm(tokens).transpose(1, 2).reshape(b, d, h, w)
        return self.gsa(x)


class FRM(nn.Module):
    """Feature refinement module; one kind upsamples x2, the other does not.

    Paper: each decoder stage has FRMs, "one that upsamples x2 and one that does not". Our
    reading: [bilinear x2] -> conv3x3-BN-ReLU -> conv3x3-BN-ReLU, with a 1x1-projected
    residual so the block refines rather than replaces.
    """

    def __init__(self, c_in: int, c_out: int, upsample: bool, convs: int = 2) -> None:
        super().__init__()
        self.upsample = upsample
        self.body = nn.Sequential(conv_bn_act(c_in, c_out),
                                  *(conv_bn_act(c_out, c_out) for _ in range(convs - 1)))
        self.shortcut = (
            nn.Identity() if c_in == c_out else nn.Conv2d(c_in, c_out, 1, bias=False)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.upsample:
            x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
        return self.shortcut(x) + self.body(x)


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    b, c, h, w = x.shape
    return x.reshape(b, groups, c // groups, h, w).transpose(1, 2).reshape(b, c, h, w)


class BiFFM(nn.Module):
    """Bidirectional feature fusion of the decoder feature and the aggregated skip.

    Paper, Eq. 15: f_fuse = [i1 * x1 * x2] concat [i2 * x1 * x2], with GAP on both inputs,
    parallel 1x3 / 3x1 conv paths and channel shuffle. Our reading: i1 (decoder) and i2
    (skip) are projected to ``c_out``; x1 = sigmoid(W1 GAP(i1)) and x2 = sigmoid(W2 GAP(i2))
    are channel gates, so each branch is gated by both directions and every product stays
    bounded (the raw triple product explodes); each branch then goes through parallel
    depthwise 1x3 and 3x1 convs (summed); the two are concatenated, channel-shuffled
    (2 groups) and fused by conv1x1-BN-ReLU.
    """

    def __init__(self, c_dec: int, c_skip: int, c_out: int) -> None:
        super().__init__()
        self.proj_dec = conv_bn_act(c_dec, c_out, kernel=1)
        self.proj_skip = conv_bn_act(c_skip, c_out, kernel=1)
        hidden = max(c_out // 4, 8)
        self.gate_dec = nn.Sequential(
            nn.Conv2d(c_out, hidden, 1), nn.ReLU(inplace=True), nn.Conv2d(hidden, c_out, 1)
        )
        self.gate_skip = nn.Sequential(
            nn.Conv2d(c_out, hidden, 1), nn.ReLU(inplace=True), nn.Conv2d(hidden, c_out, 1)
        )
        two = 2 * c_out
        self.path_1x3 = nn.Conv2d(two, two, (1, 3), padding=(0, 1), groups=two, bias=False)
        self.path_3x1 = nn.Conv2d(two, two, (3, 1), padding=(1, 0), groups=two, bias=False)
        self.fuse = conv_bn_act(two, c_out, kernel=1)
        # Shuffling channels right before a 1x1 conv equals permuting that conv's input
        # weights: the (small) weight is permuted instead of the (large) activation.
        order = channel_shuffle(torch.arange(two).view(1, two, 1, 1), 2).flatten()
        self.register_buffer("unshuffle", torch.argsort(order), persistent=False)

    def _gated(self, dec: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        """[i1 * x1 * x2] concat [i2 * x1 * x2]."""
        i1 = self.proj_dec(dec)
        i2 = self.proj_skip(skip)
        x1 = torch.sigmoid(self.gate_dec(F.adaptive_avg_pool2d(i1, 1)))
        x2 = torch.sigmoid(self.gate_skip(F.adaptive_avg_pool2d(i2, 1)))
        gates = x1 * x2
        return torch.cat([i1 * gates, i2 * gates], dim=1)

    def forward(self, dec: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        both = self._gated(dec, skip)
        # both + 1x3(both) + 3x1(both) as one depthwise 3x3 conv: identical result, one pass
        # over the activation instead of four.
        kernel = F.pad(self.path_1x3.weight, (0, 0, 1, 1)) + F.pad(self.path_3x1.weight,
                                                                   (1, 1, 0, 0))
        kernel = kernel + F.pad(torch.ones_like(kernel[..., :1, :1]), (1, 1, 1, 1))
        both = F.conv2d(both, kernel.to(both.dtype), padding=1, groups=both.shape[1])
        conv = self.fuse[0]
        weight = conv.weight[:, self.unshuffle].to(both.dtype)
        return self.fuse[2](self.fuse[1](F.conv2d(both, weight)))

    def reference_forward(self, dec: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        """Eq. 15 as written (separate paths, explicit shuffle): what ``forward`` computes."""
        both = self._gated(dec, skip)
        both = both + self.path_1x3(both) + self.path_3x1(both)
        return self.fuse(channel_shuffle(both, 2))


class ConcatFusion(nn.Module):
    """The plain U-Net fusion used when BiFFM is switched off: concat + conv1x1-BN-ReLU."""

    def __init__(self, c_dec: int, c_skip: int, c_out: int) -> None:
        super().__init__()
        self.fuse = conv_bn_act(c_dec + c_skip, c_out, kernel=1)

    def forward(self, dec: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.fuse(torch.cat([dec, skip], dim=1))
