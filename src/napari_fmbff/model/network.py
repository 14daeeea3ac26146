"""FM-BFF-Net assembled: timm encoder -> FMCAB (aggregated) skips -> ViTM -> 4 decoder stages."""

from __future__ import annotations

import copy
import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import FMCAB, FRM, BiFFM, ConcatFusion, SkipAggregator, ViTM
from .config import ModelConfig
from .prompts import PROMPT_CHANNELS

#: The strides the network needs from its encoder: 4 skips, then the bottleneck.
SKIP_STRIDES = (2, 4, 8, 16)
BOTTLENECK_STRIDE = 32
#: Input height and width must be a multiple of this; the engine pads.
INPUT_MULTIPLE = 32


class EncoderWeightsUnavailable(RuntimeError):
    """ImageNet weights for the encoder could not be had (offline, no cache)."""


def build_encoder(cfg: ModelConfig) -> tuple[nn.Module, list[int], list[int]]:
    """A timm ``features_only`` encoder (or LiteMedSAM's, ``medical_encoder``) and the feature
    indices for strides 2..32."""
    import timm

    from . import medical_encoder

    if cfg.encoder == medical_encoder.NAME:
        encoder = medical_encoder.LiteMedSAMEncoder(
            pretrained=cfg.encoder_weights == medical_encoder.WEIGHTS)
        return encoder, list(range(5)), list(medical_encoder.CHANNELS)

    pretrained = cfg.encoder_weights == "imagenet"
    try:
        encoder = timm.create_model(cfg.encoder, features_only=True, pretrained=pretrained)
    except RuntimeError as err:
        if "Unknown model" in str(err) or "Unknown" in str(err):
            raise ValueError(
                f"timm has no encoder named {cfg.encoder!r}; list candidates with "
                "timm.list_models() (it must support features_only=True)"
            ) from err
        if pretrained:
            raise EncoderWeightsUnavailable(_weights_help(cfg.encoder, err)) from err
        raise
    except Exception as err:  # network / hub errors come in many types
        if pretrained:
            raise EncoderWeightsUnavailable(_weights_help(cfg.encoder, err)) from err
        raise
    reductions = list(encoder.feature_info.reduction())
    channels = list(encoder.feature_info.channels())
    wanted = SKIP_STRIDES + (BOTTLENECK_STRIDE,)
    indices = []
    for stride in wanted:
        # The deepest feature at a stride carries the most context.
        matches = [i for i, r in enumerate(reductions) if r == stride]
        if not matches:
            raise ValueError(
                f"encoder {cfg.encoder!r} gives features at strides {reductions}; FM-BFF-Net "
                f"needs one at each of {list(wanted)}"
            )
        indices.append(matches[-1])
    return encoder, indices, [channels[i] for i in indices]


def find_stem(encoder: nn.Module) -> nn.Conv2d:
    """The encoder's first convolution on the 3 image channels: where the prompts join."""
    for module in encoder.modules():
        if isinstance(module, nn.Conv2d) and module.in_channels == 3:
            return module
    raise ValueError(f"encoder {type(encoder).__name__} has no convolution on the 3 image "
                     "channels for the prompts to join; choose a convolutional timm encoder")


def zero_prompt_conv(stem: nn.Conv2d) -> nn.Conv2d:
    """A bias-free copy of the stem conv for the prompt maps, all weights zero.

    A copy keeps the stem's kernel, stride and padding rule (timm's TF "same" convs pad
    unevenly), so its output lines up with the stem's pixel for pixel.
    """
    if stem.in_channels != len(PROMPT_CHANNELS) or stem.groups != 1:
        raise ValueError(f"the prompt conv copies the encoder's stem, which takes "
                         f"{stem.in_channels} channels in {stem.groups} group(s); it needs "
                         f"{len(PROMPT_CHANNELS)} in one group")
    conv = copy.deepcopy(stem)
    conv._forward_hooks.clear()
    conv._forward_pre_hooks.clear()
    with torch.no_grad():
        conv.weight.zero_()
    conv.register_parameter("bias", None)
    return conv


def _weights_help(name: str, err: Exception) -> str:
    return (
        f"could not get ImageNet weights for encoder {name!r} ({type(err).__name__}: {err}). "
        "This machine may be offline and the weights are not in timm's cache. Either copy "
        "them into the Hugging Face cache (HF_HOME) on a machine with internet, or build the "
        "model with encoder_weights=None (random init) and load a trained checkpoint."
    )


class Decoder(nn.Module):
    """4 stages from stride 32 back to stride 2: FRM(x2 up) -> fusion with skip -> FRM."""

    def __init__(self, c_bottleneck: int, skip_channels: list[int], cfg: ModelConfig):
        super().__init__()
        fusion = BiFFM if cfg.biffm else ConcatFusion
        self.up = nn.ModuleList()
        self.fusion = nn.ModuleList()
        self.refine = nn.ModuleList()
        c_in = c_bottleneck
        # Deepest skip (stride 16) first.
        for c_out, c_skip in zip(cfg.decoder_channels, reversed(skip_channels)):
            self.up.append(FRM(c_in, c_out, upsample=True))
            self.fusion.append(fusion(c_out, c_skip, c_out))
            self.refine.append(FRM(c_out, c_out, upsample=False, convs=cfg.refine_convs))
            c_in = c_out
        self.out_channels = c_in

    def forward(self, x: torch.Tensor, skips: list[torch.Tensor]) -> torch.Tensor:
        for up, fuse, refine, skip in zip(self.up, self.fusion, self.refine, reversed(skips)):
            x = up(x)
            x = refine(fuse(x, skip))
        return x


class FMBFFNet(nn.Module):
    """FM-BFF-Net: (B, 3, H, W) float -> (B, 1, H, W) logits; H, W multiples of 32."""

    def __init__(self, cfg: ModelConfig | None = None) -> None:
        super().__init__()
        self.config = cfg = cfg or ModelConfig()
        self.encoder, self.feature_indices, enc_channels = build_encoder(cfg)
        skip_channels, c_deep = enc_channels[:4], enc_channels[4]

        self.fmcab = (
            nn.ModuleList(FMCAB(c, cfg.fm_gamma_init) for c in skip_channels)
            if cfg.fmcab else None
        )
        self.aggregate = (
            nn.ModuleList(
                SkipAggregator(c_prev, c_here)
                for c_prev, c_here in zip(skip_channels[:-1], skip_channels[1:])
            )
            if cfg.aggregate_skips else None
        )
        if cfg.vitm:
            self.vitm = ViTM(c_deep, cfg.transformer_dim, cfg.transformer_depth,
                             cfg.transformer_heads, cfg.mlp_ratio, cfg.dropout)
            c_bottleneck = cfg.transformer_dim
        else:
            self.vitm = None
            c_bottleneck = c_deep
        self.decoder = Decoder(c_bottleneck, skip_channels, cfg)
        self.dropout = nn.Dropout2d(cfg.dropout) if cfg.dropout > 0 else nn.Identity()
        self.head = nn.Conv2d(self.decoder.out_channels, 1, 1)
        # Extra state the checkpoint carries (normalisation, provenance); see models.py.
        self.metadata: dict = {}
        self.prompt_conv: nn.Conv2d | None = None
        self._prompt_feature: torch.Tensor | None = None
        if cfg.prompts:
            self._add_prompt_path()

    def _add_prompt_path(self) -> None:
        """A zero-weight conv of the prompt maps, added to the stem conv's output (RITM's
        "Conv1S"): the same as 3 more input channels of the stem, without touching its
        weights, so files without prompts load unchanged."""
        stem = find_stem(self.encoder)
        self.prompt_conv = zero_prompt_conv(stem)
        stem.register_forward_hook(self._join_prompts)

    def _join_prompts(self, module: nn.Module, inputs, output: torch.Tensor):
        """Forward hook on the stem: adds the pending prompt feature once."""
        extra, self._prompt_feature = self._prompt_feature, None
        if extra is None:
            return None
        if extra.shape != output.shape:
            raise ValueError(f"prompt feature {tuple(extra.shape)} does not match the stem's "
                             f"output {tuple(output.shape)} of encoder {self.config.encoder!r}")
        return output + extra

    def add_prompts(self) -> "FMBFFNet":
        """Give this network the prompt input (zero weights: outputs unchanged until trained),
        in place; a network that has it is returned as it is."""
        if self.prompt_conv is None:
            self.config = dataclasses.replace(self.config, prompts=True)
            self._add_prompt_path()
        return self

    @property
    def pretrained_cfg(self) -> dict:
        """timm's description of the encoder (mean, std, ...)."""
        return dict(getattr(self.encoder, "pretrained_cfg", {}) or {})

    def skip_features(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        skips = [self.fmcab[i](f) for i, f in enumerate(feats)] if self.fmcab else list(feats)
        if self.aggregate is not None:
            for n in range(1, len(skips)):
                skips[n] = self.aggregate[n - 1](skips[n - 1], skips[n])
        return skips

    def _prompt_input(self, x: torch.Tensor, prompts: torch.Tensor) -> torch.Tensor:
        """The prompt maps through the prompt conv, after checking they fit ``x``."""
        if self.prompt_conv is None:
            raise ValueError("this model takes no prompts; add the prompt input with "
                             "with_prompts(net) and fine-tune it")
        want = (x.shape[0], len(PROMPT_CHANNELS), *x.shape[-2:])
        if tuple(prompts.shape) != want:
            raise ValueError(f"prompt maps must have shape {want} (batch, "
                             f"{'/'.join(PROMPT_CHANNELS)}, height, width), got "
                             f"{tuple(prompts.shape)}")
        return self.prompt_conv(prompts.to(dtype=x.dtype))

    def forward(self, x: torch.Tensor, prompts: torch.Tensor | None = None) -> torch.Tensor:
        """Logits for ``x``; ``prompts`` (B, 3, H, W) are the maps of model/prompts.py, None
        meaning no prompt (all-zero maps add exactly nothing: the prompt conv has no bias).
        With prompts, one forward at a time per network (the stem's hook holds them)."""
        h, w = x.shape[-2:]
        if h % INPUT_MULTIPLE or w % INPUT_MULTIPLE:
            raise ValueError(
                f"input height and width must be multiples of {INPUT_MULTIPLE}, got {h}x{w}; "
                "use napari_fmbff.Segmenter, which pads"
            )
        if prompts is not None:
            self._prompt_feature = self._prompt_input(x, prompts)
        try:
            all_feats = self.encoder(x)
        finally:
            unused, self._prompt_feature = self._prompt_feature, None
        if unused is not None:
            raise RuntimeError(f"encoder {self.config.encoder!r} never ran the stem conv the "
                               "prompts join; this encoder cannot take prompts")
        return self.forward_features([all_feats[i] for i in self.feature_indices])

    def forward_features(self, feats: list[torch.Tensor]) -> torch.Tensor:
        """Logits from the encoder's 5 features (strides 2..32): all of FM-BFF-Net after its
        encoder. A frozen encoder's features can be computed once and trained on here."""
        skips = self.skip_features(feats[:4])
        deep = self.vitm(feats[4]) if self.vitm is not None else feats[4]
        y = self.decoder(deep, skips)
        # The 1x1 head commutes with bilinear upsampling (both linear, weights sum to 1), so it
        # runs at stride 2 and only its one output channel is upsampled: the same logits,
        # without a full-resolution decoder-wide tensor.
        logits = self.head(self.dropout(y))
        return F.interpolate(logits, scale_factor=2.0, mode="bilinear", align_corners=False)


def with_prompts(net: FMBFFNet) -> FMBFFNet:
    """``net`` with the prompt input added (zero weights, so its outputs are unchanged until it
    is trained with prompts): how a fine-tune from a model without prompts gains them."""
    return net.add_prompts()
