"""Segment's review ("Next slice to check", "Accept slice") with the widget docked the way users
dock it: from napari's Plugins menu, which hands the widget a proxy of the viewer.

Every layer reached through that proxy is a new proxy object, so an identity check between the
run's output layer and the layer found again later always failed: "Next slice to check"
refused after a whole-stack Segment ("run Segment on the whole stack first").
"""

import numpy as np
import pytest

pytest.importorskip("napari")

from test_corrections import WAIT_MS, blobs  # noqa: E402


def docked_whole_stack(viewer, qtbot, n=5):
    """A small stack segmented whole by Segment docked from the Plugins menu."""
    viewer.add_image(np.stack([blobs()] * n), name="scan")
    _dock, widget = viewer.window.add_plugin_dock_widget("napari-fmbff", "Segment")
    widget.model.value = "tiny"
    widget.tile_size.value = 64
    widget.scope.value = "whole stack"
    assert widget.run() is not None
    qtbot.waitUntil(lambda: widget._worker is None, timeout=WAIT_MS)
    assert "scan fmbff" in viewer.layers
    return widget


def test_next_slice_to_check_moves_the_slider_from_the_plugin_dock(make_napari_viewer, qtbot,
                                                                  tiny_model, monkeypatch):
    errors = []
    monkeypatch.setattr("napari_fmbff._widgets._review.show_error", errors.append)
    viewer = make_napari_viewer()
    widget = docked_whole_stack(viewer, qtbot)
    assert "Segment the whole stack" not in widget.review.uncertainty.value
    # one slice made clearly the most doubtful, so the slider has somewhere to go
    probs = widget._result["probs"]
    for index in probs:
        probs[index] = np.where(probs[index] >= 0.5, 0.99, 0.01).astype(np.float32)
    probs[(3,)][:40] = 0.5
    widget.review._ranked = None
    viewer.dims.set_current_step(0, 0)
    widget.review.next_button.native.click()  # the user's click on "Next slice to check"
    assert errors == []
    assert viewer.dims.current_step[0] == 3
    assert "next to check: 3" in widget.review.uncertainty.value


def test_accept_slice_from_the_plugin_dock_moves_review_on(make_napari_viewer, qtbot,
                                                           tiny_model):
    viewer = make_napari_viewer()
    widget = docked_whole_stack(viewer, qtbot, n=3)
    viewer.dims.set_current_step(0, 1)
    widget.review.accept_button.native.click()
    assert "1/3 corrected or accepted" in widget.review.uncertainty.value
    first = widget.review.next_slice_to_check()
    assert first is not None and first != (1,)
    assert viewer.dims.current_step[0] == first[0]
