"""Small pieces the dock widgets share: model choices, layer geometry, notifications."""

from __future__ import annotations

from pathlib import Path

from napari.layers import Image
from napari.utils.notifications import show_error
from psygnal import Signal

from ..models import list_models

BROWSE = "Browse..."


class _ModelEvents:
    """Fired (in the main thread) when a model is saved, so every model list refreshes."""

    saved = Signal(str)


model_events = _ModelEvents()


def model_choices(extra_paths: dict[str, Path]) -> list[str]:
    try:
        names = list(list_models())
    except Exception as err:  # an unreadable models folder must not break the widget
        show_error(f"napari-fmbff: cannot list models ({err})")
        names = []
    return names + [n for n in extra_paths if n not in names] + [BROWSE]


def image_layers(viewer) -> list[tuple[str, Image]]:
    return [(layer.name, layer) for layer in viewer.layers if isinstance(layer, Image)]


def geometry_of(layer) -> dict:
    """The world placement of a layer, for output layers that must overlay it exactly."""
    geo = {
        "scale": layer.scale,
        "translate": layer.translate,
        "rotate": layer.rotate,
        "shear": layer.shear,
        "affine": layer.affine.affine_matrix,
    }
    for attr in ("units", "axis_labels"):  # napari >= 0.6
        if hasattr(layer, attr):
            geo[attr] = getattr(layer, attr)
    return geo


def displayed_plane(viewer, layer, spatial: tuple[int, ...]):
    """Leading indices of the slice the viewer shows for ``layer`` (() for a 2D image)."""
    import numpy as np

    lead = len(spatial) - 2
    if lead <= 0:
        return ()
    point = layer.world_to_data(viewer.dims.point)
    return tuple(int(np.clip(round(p), 0, n - 1)) for p, n in zip(point[:lead], spatial[:lead]))


def finest_level(layer):
    """The data to segment: the finest level of a multiscale layer, kept lazy."""
    return layer.data[0] if layer.multiscale else layer.data


def import_engine() -> None:
    """Import torch and timm in the main thread, at first use rather than at napari's start.

    Their first import inside a worker thread can crash the process (native extensions
    initialise on import), so widgets call this just before starting a worker.
    """
    _avoid_triton_llvm_clash()
    import timm  # noqa: F401
    import torch  # noqa: F401

    from .. import inference, models  # noqa: F401
    from ..model import network  # noqa: F401


def _avoid_triton_llvm_clash() -> None:
    """Keep triton out of a process whose OpenGL already loaded Mesa's libLLVM.

    With software OpenGL (Mesa llvmpipe: VMs, remote desktops, Xvfb) napari's canvas maps
    libLLVM; triton's own LLVM then segfaults on import (torch imports triton through
    torchvision/timm). Inference in napari never needs triton (it is only for
    torch.compile), so it is marked unavailable there; torch then runs without it.
    """
    import sys

    if "triton" in sys.modules or not sys.platform.startswith("linux"):
        return
    try:
        with open("/proc/self/maps") as maps:
            llvm_loaded = any("libLLVM" in line for line in maps)
    except OSError:
        return
    if llvm_loaded:
        sys.modules["triton"] = None  # "import triton" now raises ImportError
