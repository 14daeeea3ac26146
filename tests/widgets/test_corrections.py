"""Corrections are sacred: the Segment widget's writes are undoable and never undo the user's.

A real viewer (pytest-qt under Xvfb); the user's strokes are made with the Labels layer's own
paint / fill methods, which are what napari's brush and bucket call.
"""

import numpy as np
import pytest

pytest.importorskip("napari")

from napari_fmbff._widgets import _segment as segment_module  # noqa: E402
from napari_fmbff._widgets._proposal import proposal_of, unproxied  # noqa: E402

WAIT_MS = 120_000


def blobs(size=96):
    """A grey image with two bright discs (the tiny net's output does not matter here)."""
    yy, xx = np.mgrid[:size, :size]
    image = np.full((size, size), 40, np.uint8)
    image[(yy - 30) ** 2 + (xx - 30) ** 2 < 100] = 220
    image[(yy - 65) ** 2 + (xx - 65) ** 2 < 150] = 220
    return image


def docked(viewer, name="Segment"):
    """The plugin's dock opened from the Plugins menu, as a user opens it (napari hands it a
    proxy of the viewer)."""
    _dock, widget = viewer.window.add_plugin_dock_widget("napari-fmbff", name)
    return widget


def segmented(viewer, qtbot, threshold=0.0, **values):
    """Segment with a fake probability map (two discs) so the objects are known."""
    widget = docked(viewer)
    widget.model.value = "tiny"
    widget.tile_size.value = 64
    widget.threshold.value = threshold
    for key, value in values.items():
        getattr(widget, key).value = value
    worker = widget.run()
    assert worker is not None
    qtbot.waitUntil(lambda: widget._worker is None, timeout=WAIT_MS)
    return widget


def fake_probs(widget, probs):
    """Replace the network's probabilities of the last run and re-threshold (as a re-run)."""
    widget._result["probs"] = probs
    widget._rethreshold()


def two_discs(size=96):
    yy, xx = np.mgrid[:size, :size]
    prob = np.zeros((size, size), np.float32)
    prob[(yy - 30) ** 2 + (xx - 30) ** 2 < 100] = 0.9
    prob[(yy - 65) ** 2 + (xx - 65) ** 2 < 150] = 0.7
    return prob


def two_disc_proposal(make_napari_viewer, qtbot):
    """A viewer with "scan" segmented at threshold 0.5 into two known discs."""
    viewer = make_napari_viewer()
    viewer.add_image(blobs(), name="scan")
    widget = segmented(viewer, qtbot, threshold=0.5)
    fake_probs(widget, {(): two_discs()})
    return viewer, widget, viewer.layers["scan fmbff"]


def test_painted_pixels_survive_rethreshold_and_rerun_and_undo_restores(
        make_napari_viewer, qtbot, tiny_model):
    viewer, widget, labels = two_disc_proposal(make_napari_viewer, qtbot)
    assert labels.data[30, 30] > 0 and labels.data[65, 65] > 0
    # The user paints a new lesion and erases part of a proposed one.
    labels.brush_size = 6
    labels.paint((10, 80), 7)
    labels.paint((30, 30), 0)
    painted = labels.data.copy()
    assert painted[10, 80] == 7 and painted[30, 30] == 0
    edited = proposal_of(labels).edited
    assert edited[10, 80] and edited[30, 30] and not edited[65, 65]
    # Re-thresholds in both directions never touch the edited pixels.
    for t in (0.0, 0.8, 1.0, 0.5):
        widget.threshold.value = t
        np.testing.assert_array_equal(labels.data[edited], painted[edited])
    assert labels.data[65, 65] > 0 and labels.data[0, 0] == 0  # threshold 0.5 again
    # A real re-run of the network keeps them too.
    widget.run()
    qtbot.waitUntil(lambda: widget._worker is None, timeout=WAIT_MS)
    np.testing.assert_array_equal(labels.data[edited], painted[edited])
    # Ctrl-Z undoes the widget's writes one step at a time, back to the user's painting.
    fake_probs(widget, {(): two_discs()})
    before_run = labels.data.copy()
    widget.threshold.value = 0.95
    assert not np.array_equal(labels.data, before_run)
    labels.undo()
    np.testing.assert_array_equal(labels.data, before_run)


def test_first_run_is_undoable_to_an_empty_layer(make_napari_viewer, qtbot, tiny_model):
    viewer = make_napari_viewer()
    viewer.add_image(blobs(), name="scan")
    segmented(viewer, qtbot, threshold=0.0)
    labels = viewer.layers["scan fmbff"]
    assert (labels.data > 0).all()
    labels.undo()
    assert not labels.data.any()


def test_user_layers_of_the_same_name_are_never_written(make_napari_viewer, qtbot, tiny_model):
    viewer = make_napari_viewer()
    viewer.add_image(blobs(), name="scan")
    mine = viewer.add_image(np.full((96, 96), 3.0, np.float32), name="scan fmbff")
    theirs = viewer.add_labels(np.full((96, 96), 2, np.int32), name="scan fmbff labels")
    widget = segmented(viewer, qtbot)
    np.testing.assert_array_equal(mine.data, 3.0)
    np.testing.assert_array_equal(theirs.data, 2)
    out = widget._result["labels"]  # the dock holds napari's proxy of its layer
    assert unproxied(out) is not mine and out.metadata["napari_fmbff_output"] == "labels"
    provenance = out.metadata["napari_fmbff"]
    assert provenance["model"] == "tiny" and provenance["tile_size"] == 64
    assert "package_version" in provenance and "date" in provenance


def test_click_removes_an_object_for_good_and_keep_only(make_napari_viewer, qtbot, tiny_model):
    viewer, widget, labels = two_disc_proposal(make_napari_viewer, qtbot)
    widget.click_mode.value = "removes it"
    assert labels.mode == "pan_zoom"
    widget.click_object(labels, (30, 30))
    assert labels.data[30, 30] == 0 and labels.data[65, 65] > 0
    # Lower thresholds do not bring it back, not even its rim.
    widget.threshold.value = 0.1
    assert not labels.data[20:41, 20:41].any() and labels.data[65, 65] > 0
    labels.undo()  # the re-threshold changed nothing, so this undoes the removal
    assert labels.data[30, 30] > 0
    widget.threshold.value = 0.5  # an undone removal no longer applies
    assert labels.data[30, 30] > 0
    # Keep only the marked object: the other disappears in one step.
    fake_probs(widget, {(): two_discs()})
    widget.click_mode.value = "marks it to keep"
    widget.click_object(labels, (65, 65))
    assert "1 object(s) marked" in widget.edits.value
    widget.keep_marked()
    assert labels.data[65, 65] > 0 and labels.data[30, 30] == 0


def test_rectangles_restrict_the_proposal(make_napari_viewer, qtbot, tiny_model):
    viewer, widget, labels = two_disc_proposal(make_napari_viewer, qtbot)
    widget.restrict_to_rectangles()  # first click: a rectangles layer to draw in
    region = viewer.layers["scan fmbff region"]
    assert region.mode == "add_rectangle"
    region.add_rectangles(np.array([[50, 50], [85, 85]]))
    widget.restrict_to_rectangles()
    assert labels.data[65, 65] > 0 and labels.data[30, 30] == 0
    widget.threshold.value = 0.05  # the restriction holds for later proposals
    assert labels.data[30, 30] == 0


def test_stack_paint_in_one_slice_is_kept_in_that_slice_only(make_napari_viewer, qtbot,
                                                             tiny_model):
    viewer = make_napari_viewer()
    viewer.add_image(np.stack([blobs()] * 3), name="vol")
    widget = segmented(viewer, qtbot, threshold=1.0, scope="whole stack")
    labels = viewer.layers["vol fmbff"]
    assert not labels.data.any()
    viewer.dims.set_current_step(0, 1)
    labels.brush_size = 5
    labels.paint((1, 40, 40), 3)
    widget.threshold.value = 0.0
    assert labels.data[1, 40, 40] == 3
    # The stroke stays in slice 1; the proposal's 3D object that it touches takes its id
    # (one lesion, one id: issue 22), so slices 0 and 2 hold that object, not new strokes.
    edited = proposal_of(labels).edited
    assert edited[1].any() and not edited[0].any() and not edited[2].any()
    assert labels.data[0, 40, 40] == labels.data[2, 40, 40] == 3


def test_finetune_labels_default_to_the_segment_output(make_napari_viewer, qtbot, tiny_model):
    viewer = make_napari_viewer()
    viewer.add_labels(np.zeros((96, 96), np.int32), name="ground truth")  # first Labels layer
    viewer.add_image(blobs(), name="scan")
    finetune = docked(viewer, "Fine-tune")
    assert finetune.labels_layer.value is None  # nothing the user did not choose
    segmented(viewer, qtbot)
    assert finetune.image.value is viewer.layers["scan"]
    assert finetune.labels_layer.value is viewer.layers["scan fmbff"]


def test_model_card_starter_note_and_status_wrap(make_napari_viewer, qtbot, tiny_model,
                                                monkeypatch):
    notes = []
    monkeypatch.setattr(segment_module, "show_info", lambda msg: notes.append(msg))
    monkeypatch.setattr(segment_module, "_starter_warned", False)
    viewer = make_napari_viewer()
    viewer.add_image(blobs(), name="patient scan")
    widget = docked(viewer)
    widget.model.value = "starter"
    assert "never a patient" in widget.model_card.value
    assert "held-out Dice" in widget.model_card.value
    widget.tile_size.value = 64
    widget.run()
    qtbot.waitUntil(lambda: widget._worker is None, timeout=WAIT_MS)
    widget.run()
    qtbot.waitUntil(lambda: widget._worker is None, timeout=WAIT_MS)
    assert sum("never seen a patient" in n for n in notes) == 1
    width = widget.native.sizeHint().width()
    widget.status.value = "a very long status line " * 40
    assert widget.native.sizeHint().width() <= width + 5


def test_both_docks_from_the_plugins_menu_fit_a_1600_by_1000_screen(make_napari_viewer, qtbot):
    viewer = make_napari_viewer(show=True)
    window = viewer.window._qt_window
    window.resize(1600, 1000)
    viewer.add_image(blobs(), name="scan")
    segment_dock, segment = viewer.window.add_plugin_dock_widget("napari-fmbff", "Segment")
    tune_dock, tune = viewer.window.add_plugin_dock_widget("napari-fmbff", "Fine-tune")
    segment.status.value = "a long status line that must wrap, not widen the dock " * 10
    tune.status.value = segment.status.value
    qtbot.wait(300)
    assert window.width() <= 1600 and window.height() <= 1000
    assert tune_dock in window.tabifiedDockWidgets(segment_dock)  # tabs, not a tall stack
    canvas = viewer.window._qt_viewer.canvas.native
    assert canvas.width() >= 800, (canvas.width(), segment_dock.width(), tune_dock.width())


def test_finetune_learns_from_the_slices_you_corrected(make_napari_viewer, qtbot, tiny_model,
                                                       monkeypatch):
    errors = []
    from napari_fmbff._widgets import _finetune as finetune_module

    monkeypatch.setattr(finetune_module, "show_error", lambda msg: errors.append(msg))
    viewer = make_napari_viewer()
    viewer.add_image(np.stack([blobs()] * 4), name="vol")
    segmented(viewer, qtbot, threshold=0.0, scope="whole stack")  # every slice has labels
    labels = viewer.layers["vol fmbff"]
    finetune = docked(viewer, "Fine-tune")
    assert finetune.slices.value == "slices you corrected"
    assert finetune.run() is None and "not corrected" in errors[-1]
    labels.paint((2, 40, 40), 0)  # the user erases a little in slice 2 only
    images, masks = finetune._training_data()
    assert len(images) == 1 and not masks[0][40, 40] and masks[0][5, 5]
