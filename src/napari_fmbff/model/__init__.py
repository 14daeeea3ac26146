"""The network and what makes a model file: config, blocks, network, prompt maps (prompts),
the input contract (normalisation), checkpoints (safetensors), the registry (models folder),
a summary.

Names load on first use, so importing the registry (napari's start) does not import torch.
"""

from __future__ import annotations

import importlib

_LAZY = {
    "ModelConfig": ".config",
    "FMBFFNet": ".network",
    "INPUT_MULTIPLE": ".network",
    "EncoderWeightsUnavailable": ".network",
    "with_prompts": ".network",
    "PROMPT_CHANNELS": ".prompts",
    "prompt_maps": ".prompts",
    "simulate_prompts": ".prompts",
    "PromptSampling": ".prompts",
    "SimulatedPrompts": ".prompts",
}

__all__ = list(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
