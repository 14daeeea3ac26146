"""Shared fixtures: tiny networks (timm's test encoders) so the suite runs on CPU in minutes."""

from __future__ import annotations

import numpy as np
import pytest


def pytest_configure(config):
    """torch and timm (which loads triton) before any napari canvas: with software OpenGL,
    Mesa's libLLVM loaded first makes triton's LLVM crash on import, whatever the test order
    (the widgets avoid it at run time: _widgets/_common._avoid_triton_llvm_clash)."""
    import timm  # noqa: F401


def tiny_config(**overrides):
    from napari_fmbff import ModelConfig

    base = dict(encoder="test_efficientnet", decoder_channels=(32, 16, 16, 8),
                transformer_dim=32, transformer_heads=4, transformer_depth=1)
    base.update(overrides)
    return ModelConfig(**base)


@pytest.fixture
def tiny_net():
    import torch

    from napari_fmbff import FMBFFNet

    torch.manual_seed(0)
    return FMBFFNet(tiny_config()).eval()


@pytest.fixture
def models_dir(tmp_path, monkeypatch):
    """An empty, private models folder (FMBFF_MODELS_DIR)."""
    folder = tmp_path / "models"
    folder.mkdir()
    monkeypatch.setenv("FMBFF_MODELS_DIR", str(folder))
    return folder


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def write_ome_zarr(path, data, axes="tczyx", scale=None):
    """A minimal single-level OME-Zarr (0.4) image: group + array "0" + multiscales."""
    import zarr

    root = zarr.open_group(str(path), mode="w")
    root.create_array("0", data=data, chunks=tuple(1 if a in "tcz" else 32 for a in axes))
    level = {"path": "0"}
    if scale is not None:
        level["coordinateTransformations"] = [{"type": "scale", "scale": list(scale)}]
    root.attrs["multiscales"] = [{"version": "0.4", "datasets": [level],
                                  "axes": [{"name": a} for a in axes]}]
    return path
