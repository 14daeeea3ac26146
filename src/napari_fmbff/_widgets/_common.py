"""Small pieces the dock widgets share: model choices, layer geometry, notifications."""

from __future__ import annotations

from pathlib import Path

from napari.layers import Image, Labels
from napari.utils.notifications import show_error
from psygnal import Signal

from .._sample_data import SAMPLE_TAG  # noqa: F401  (re-exported for the widgets)
from ..data.keys import IMAGE as IMAGE_TAG
from ..data.keys import OUTPUT as OUTPUT_TAG
from ..inference.intensity import FIXED_RANGE, INTENSITY_CHOICES, MODEL_DEFAULT, widget_choice
from ..model.registry import list_models

BROWSE = "Browse..."


class _ModelEvents:
    """Fired (in the main thread) when a model is saved or the models folder changes, so
    every model list refreshes."""

    saved = Signal(str)
    folder_changed = Signal(str)


model_events = _ModelEvents()


#: The intensity fields' defaults (both widgets remember them under these names).
INTENSITY_DEFAULTS = {"intensity": MODEL_DEFAULT, "intensity_low": 0.0, "intensity_high": 255.0}


def add_intensity_fields(widget, defaults: dict, tooltip: str) -> None:
    """``widget.intensity`` (the choice) and ``widget.intensity_low`` / ``_high`` (shown only
    for a fixed range): the same field in Segment and Fine-tune."""
    from magicgui.widgets import ComboBox, FloatSpinBox

    widget.intensity = ComboBox(label="intensity", choices=list(INTENSITY_CHOICES),
                                value=defaults["intensity"], tooltip=tooltip)
    widget.intensity_low = FloatSpinBox(label="range low", min=-1e9, max=1e9, step=10,
                                        value=defaults["intensity_low"])
    widget.intensity_high = FloatSpinBox(label="range high", min=-1e9, max=1e9, step=10,
                                         value=defaults["intensity_high"])

    def show_range(_=None) -> None:
        fixed = widget.intensity.value == FIXED_RANGE
        widget.intensity_low.visible = widget.intensity_high.visible = fixed

    widget.intensity.changed.connect(show_range)
    show_range()


def intensity_choice(widget, layer) -> dict:
    """A widget's intensity fields as ``inference.intensity.intensity_setting`` keywords
    (``layer``'s contrast limits for that choice); a ValueError says what is wrong."""
    return widget_choice(widget.intensity.value,
                         contrast_limits=getattr(layer, "contrast_limits", None),
                         low=widget.intensity_low.value, high=widget.intensity_high.value)


def model_choices(extra_paths: dict[str, Path]) -> list[str]:
    try:
        names = list(list_models())
    except Exception as err:  # an unreadable models folder must not break the widget
        show_error(f"napari-fmbff: cannot list models ({err})")
        names = []
    return names + [n for n in extra_paths if n not in names] + [BROWSE]


def image_layers(viewer) -> list[tuple[str, Image]]:
    return [(layer.name, layer) for layer in viewer.layers if isinstance(layer, Image)]


def output_layer(viewer, image, kind: str = "labels", layer_type=Labels, shape=None):
    """The newest layer our widgets made of ``kind`` for ``image`` (never a user's layer)."""
    if image is None:
        return None
    for layer in reversed(list(viewer.layers)):
        meta = layer.metadata
        if (isinstance(layer, layer_type) and meta.get(OUTPUT_TAG) == kind
                and meta.get(IMAGE_TAG) == image.name
                and (shape is None or tuple(layer.data.shape) == tuple(shape))):
            return layer
    return None


def on_layers_changed(viewer, callback) -> None:
    """Call ``callback`` when a layer is added to, removed from or moved in ``viewer``."""
    layers = viewer.layers
    for event in (layers.events.inserted, layers.events.removed, layers.events.reordered):
        event.connect(callback)


def wrap(label):
    """Let a status Label wrap its text instead of widening the dock; returns ``label``."""
    from qtpy.QtWidgets import QSizePolicy

    label.native.setWordWrap(True)
    label.native.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
    label.native.setMinimumWidth(0)
    return label


def say_now(label, text: str) -> None:
    """Show ``text`` at once (before a blocking step in the main thread)."""
    from qtpy.QtWidgets import QApplication

    label.value = text
    QApplication.processEvents()


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


def import_engine(status=None) -> None:
    """Import torch and timm in the main thread, at first use rather than at napari's start.

    Their first import inside a worker thread can crash the process (native extensions
    initialise on import), so widgets call this just before starting a worker. The first
    time, ``status`` (a Label) says so before the UI waits for the import.
    """
    import sys

    if status is not None and "torch" not in sys.modules:
        say_now(status, "Loading PyTorch (first run only, a few seconds)...")
    _avoid_triton_llvm_clash()
    import timm  # noqa: F401
    import torch  # noqa: F401

    from ..inference import segmenter  # noqa: F401
    from ..model import checkpoint, network  # noqa: F401


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


#: The Qt property that marks our docks ("segment" or "other"), to tab them together.
DOCK_MARK = "napari_fmbff_dock"


def tab_with_our_other_dock(widget) -> None:
    """Once napari has docked ``widget``: put it in a tab beside our other dock, if shown.

    Segment and Fine-tune opened one after the other from the Plugins menu would otherwise
    stack vertically and grow the window past a 1000 px screen.
    """
    from qtpy.QtCore import QTimer
    from qtpy.QtWidgets import QDockWidget

    def tab() -> None:
        dock = widget.native.parent()
        while dock is not None and not isinstance(dock, QDockWidget):
            dock = dock.parent()
        if dock is None:  # not docked (scripts, tests)
            return
        window = dock.parent()
        front = "segment" if type(widget).__name__ == "SegmentWidget" else "other"
        for other in window.findChildren(QDockWidget):
            if (other is not dock and other.property(DOCK_MARK) and other.isVisible()
                    and window.dockWidgetArea(other) == window.dockWidgetArea(dock)):
                window.tabifyDockWidget(other, dock)
                # Segment, where the day starts, stays in front whichever dock came second.
                shown = dock if front == "segment" else other
                if shown.property(DOCK_MARK) != "segment" and shown is other:
                    shown = dock
                shown.show()
                shown.raise_()
                break
        dock.setProperty(DOCK_MARK, front)

    QTimer.singleShot(0, tab)
