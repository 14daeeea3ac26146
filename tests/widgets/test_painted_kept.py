"""Painted pixels are never changed by Segment, with the widget docked the way users dock it.

Through napari's Plugins menu (``add_plugin_dock_widget``) a widget gets a proxy of the viewer,
and each layer reached through it is a new proxy object. The record of the user's edits was
once keyed by such a proxy and vanished when the proxy was freed, so a second Segment run
overwrote every painted pixel. These tests dock the widget that way and edit with napari's own
brush (``paint``), bucket (``fill``) and polygon (``paint_polygon``), with a new label value and
with the proposal's own value, on a 2D image and on a stack, then re-threshold and re-run.
"""

import numpy as np
import pytest

pytest.importorskip("napari")

from test_corrections import WAIT_MS, blobs  # noqa: E402

EDITS = ("brush", "fill", "polygon")


def docked_segment(viewer, qtbot, stack: bool):
    """Segment docked from the Plugins menu; the tiny model at threshold 0: all one object."""
    _dock, widget = viewer.window.add_plugin_dock_widget("napari-fmbff", "Segment")
    widget.model.value = "tiny"
    widget.tile_size.value = 64
    widget.threshold.value = 0.0
    if stack:
        widget.scope.value = "whole stack"
    rerun(widget, qtbot)
    return widget


def rerun(widget, qtbot) -> None:
    assert widget.run() is not None
    qtbot.waitUntil(lambda: widget._worker is None, timeout=WAIT_MS)


def edit(labels, how: str, lead: tuple, value: int) -> np.ndarray:
    """The user's edit with napari's own tool on the displayed slice; the pixels it set."""
    before = labels.data.copy()
    if how == "brush":
        labels.brush_size = 9
        labels.paint(lead + (30, 30), value)
    elif how == "fill":  # the bucket: the whole (empty) slice, as contiguous background
        labels.fill(lead + (5, 5), value)
    else:
        square = [(20, 50), (20, 80), (45, 80), (45, 50)]
        labels.paint_polygon(np.array([lead + p for p in square], float), value)
    painted = labels.data != before
    assert painted.any()
    return painted


@pytest.mark.parametrize("stack", [False, True], ids=["2d", "stack"])
@pytest.mark.parametrize("value", [7, 1], ids=["new-label", "existing-label"])
@pytest.mark.parametrize("how", EDITS)
def test_painted_pixels_survive_rethreshold_and_rerun_from_the_plugin_dock(
        make_napari_viewer, qtbot, tiny_model, how, value, stack):
    viewer = make_napari_viewer()
    image = np.stack([blobs()] * 3) if stack else blobs()
    viewer.add_image(image, name="scan")
    widget = docked_segment(viewer, qtbot, stack)
    labels = viewer.layers["scan fmbff"]
    assert (labels.data == 1).all()  # threshold 0: the whole image (or stack) is object 1
    widget.threshold.value = 1.0  # nothing reaches it: an empty proposal
    assert not labels.data.any()
    lead = (1,) if stack else ()
    if stack:
        viewer.dims.set_current_step(0, 1)
    painted = edit(labels, how, lead, value)
    # The proposal's 1 and 0 both differ from what was painted at one of the two thresholds.
    for step in ("re-threshold", "re-run"):
        for threshold in (0.0, 1.0):
            widget.threshold.value = threshold
            if step == "re-run":
                rerun(widget, qtbot)
            assert (labels.data[painted] == value).all(), (step, threshold)
            untouched = labels.data[~painted]
            # at threshold 0 the proposal is one object touching the painted one: its id
            assert (untouched == (value if threshold == 0.0 else 0)).all() or not untouched.size, \
                (step, threshold)


def test_finetune_from_the_plugin_dock_sees_the_slice_you_corrected(make_napari_viewer, qtbot,
                                                                    tiny_model):
    viewer = make_napari_viewer()
    viewer.add_image(np.stack([blobs()] * 3), name="scan")
    docked_segment(viewer, qtbot, stack=True)
    _dock, finetune = viewer.window.add_plugin_dock_widget("napari-fmbff", "Fine-tune")
    labels = viewer.layers["scan fmbff"]
    viewer.dims.set_current_step(0, 2)
    labels.brush_size = 9
    labels.paint((2, 30, 30), 0)  # the user erases in slice 2 only
    images, masks = finetune._training_data()
    assert len(images) == 1 and not masks[0][30, 30] and masks[0][80, 80]


def test_a_lesion_keeps_the_id_the_user_painted_across_a_rerun(make_napari_viewer, qtbot,
                                                                tiny_model):
    """The user paints id 5 inside the proposal's one object: after a re-threshold the whole
    object (model pixels and painted ones) is id 5, not the painted pixels 5 and the rest 1."""
    viewer = make_napari_viewer()
    viewer.add_image(np.stack([blobs()] * 3), name="scan")
    widget = docked_segment(viewer, qtbot, stack=True)  # threshold 0: one object, id 1
    labels = viewer.layers["scan fmbff"]
    viewer.dims.set_current_step(0, 1)
    labels.brush_size = 5
    labels.paint((1, 40, 40), 5)
    widget.threshold.value = 0.0  # unchanged threshold: a re-threshold all the same
    widget._rethreshold()
    assert set(np.unique(labels.data)) == {5}
    rerun(widget, qtbot)
    assert set(np.unique(labels.data)) == {5}
