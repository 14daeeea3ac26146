"""napari-fmbff: FM-BFF-Net lesion segmentation for napari, the command line and Python.

Heavy imports (torch, timm) happen on first use of a name, so ``import napari_fmbff`` and
napari's start stay fast.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_LAZY = {
    "ModelConfig": "napari_fmbff.model.config",
    "FMBFFNet": "napari_fmbff.model.network",
    "load_model": "napari_fmbff.model.checkpoint",
    "save_model": "napari_fmbff.model.checkpoint",
    "list_models": "napari_fmbff.model.registry",
    "models_dir": "napari_fmbff.model.registry",
    "ModelLoadError": "napari_fmbff.model.registry",
    "Segmenter": "napari_fmbff.inference.segmenter",
    "labels_from_proba": "napari_fmbff.inference.postprocess",
    "Normalization": "napari_fmbff.model.normalization",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'napari_fmbff' has no attribute {name!r}")


def __dir__():
    return sorted(__all__)
