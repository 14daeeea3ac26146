"""What the user did is what the model learns, with the docks opened from the Plugins menu.

napari hands a dock opened from its Plugins menu (``add_plugin_dock_widget``) a proxy of the
viewer; these tests dock Segment and Fine-tune that way and draw with napari's own tools (Shapes
rectangles, the brush, the bucket).

- A box states what its slice holds: Segment, then a box, leaves the same slice as the box
  alone (the model's objects there that the user did not confirm are cleared in the box's
  undo step), so Propagate learns the same lesion in both orders.
- A box that adds nothing says so in a notification and offers Replace.
- An erased slice is not learned as "no lesion" unless the user accepted it empty.
- The dock: Segment's day fits one 1000 px screen (expert settings collapsed), and Segment's
  tab is in front when both docks open.
"""

import numpy as np
import pytest

pytest.importorskip("napari")

from test_prompts_widget import disk, disk_stack, rect  # noqa: E402

from napari_fmbff._widgets._proposal import proposal_of  # noqa: E402

WAIT_MS = 120_000


def docked(viewer, name="Segment"):
    _dock, widget = viewer.window.add_plugin_dock_widget("napari-fmbff", name)
    return widget


def segment_all(widget, qtbot, threshold=0.0):
    """Segment the whole stack with the tiny model (threshold 0: every slice one object)."""
    widget.model.value = "tiny"
    widget.tile_size.value = 64
    widget.threshold.value = threshold
    widget.scope.value = "whole stack"
    assert widget.run() is not None
    qtbot.waitUntil(lambda: widget._worker is None, timeout=WAIT_MS)


def box_on_slice(viewer, widget, z):
    boxes, _clicks = widget.prompts.add_prompt_layers()
    viewer.dims.set_current_step(0, z)
    boxes.add_rectangles(rect(z, 16, 16, 48, 48))
    return viewer.layers["scan fmbff"]


def test_segment_then_box_leaves_the_slice_the_box_alone_leaves(make_napari_viewer, qtbot,
                                                                tiny_model):
    image = disk_stack(n=4)
    # Order A (the README's): Segment the whole stack, then one box on slice 1.
    viewer_a = make_napari_viewer()
    viewer_a.add_image(image, name="scan")
    seg_a = docked(viewer_a)
    segment_all(seg_a, qtbot)
    before = viewer_a.layers["scan fmbff"].data.copy()
    assert (before[1] > 0).all()  # threshold 0: the model marks the whole slice
    labels_a = box_on_slice(viewer_a, seg_a, 1)
    # Order B: the box alone.
    viewer_b = make_napari_viewer()
    viewer_b.add_image(image, name="scan")
    labels_b = box_on_slice(viewer_b, docked(viewer_b), 1)
    np.testing.assert_array_equal(labels_a.data[1] > 0, labels_b.data[1] > 0)
    assert 0.8 < (labels_a.data[1] > 0).sum() / disk(32, 32, 10).sum() < 1.25
    # The other slices keep Segment's answer; one Ctrl-Z brings the whole slice back.
    np.testing.assert_array_equal(labels_a.data[[0, 2, 3]], before[[0, 2, 3]])
    assert "cleared" in seg_a.prompts.prompt_status.value
    labels_a.undo()
    np.testing.assert_array_equal(labels_a.data, before)
    # What Propagate would learn is the slice as shown: the box's object only.
    tune = docked(viewer_a, "Fine-tune")
    labels_a.redo()
    job = tune._propagation_job()
    assert job.slices == [1]
    np.testing.assert_array_equal(job.labels[1] > 0, labels_b.data[1] > 0)


def test_a_click_confirms_the_object_under_it_and_clears_the_others(make_napari_viewer, qtbot,
                                                                    tiny_model):
    viewer = make_napari_viewer()
    viewer.add_image(disk_stack(n=3, disks=((20, 20, 9), (44, 44, 9))), name="scan")
    widget = docked(viewer)
    segment_all(widget, qtbot, threshold=0.5)
    labels = viewer.layers["scan fmbff"]
    labels.data = np.zeros_like(labels.data)  # a model answer of two objects on slice 1
    labels.data[1][disk(20, 20, 9)] = 1
    labels.data[1][disk(44, 44, 9)] = 2
    proposal = proposal_of(labels)
    _boxes, clicks = widget.prompts.add_prompt_layers()
    viewer.dims.set_current_step(0, 1)
    clicks.add([1, 20, 20])  # a positive click on object 1
    assert (labels.data[1][disk(20, 20, 9)] == 1).all()
    assert not (labels.data[1][disk(44, 44, 9)]).any()  # the unconfirmed model object is gone
    assert proposal.edited[1][disk(20, 20, 9)].all()  # confirmed: the user's from now on


def box_warnings(monkeypatch) -> list:
    """The Segment widget's warnings about boxes (the Otsu fallback's own notice, that
    LiteMedSAM cannot be imported, is tests/widgets/test_prompts_widget.py's)."""
    said = []
    monkeypatch.setattr("napari_fmbff._widgets._prompts.show_warning",
                        lambda text: None if "cannot be imported" in text else said.append(text))
    return said


def test_a_box_on_your_own_object_notifies_and_replace_redraws_it(make_napari_viewer, qtbot,
                                                                  monkeypatch):
    said = box_warnings(monkeypatch)
    viewer = make_napari_viewer()
    viewer.add_image(disk_stack(n=3), name="scan")
    widget = docked(viewer)
    labels = box_on_slice(viewer, widget, 1)
    viewer.dims.set_current_step(0, 1)
    labels.brush_size = 60  # the user paints a large object by hand over the lesion
    labels.paint((1, 32, 32), 5)
    painted = labels.data[1].copy()
    boxes = viewer.layers["scan prompts"]
    boxes.add_rectangles(rect(1, 16, 16, 48, 48))  # a box inside the painted object
    np.testing.assert_array_equal(labels.data[1], painted)  # nothing written...
    assert len(said) == 1 and "Replace" in said[0]  # ...and said where the user looks
    assert not widget.prompts.replace_button.native.isHidden()  # offered
    assert widget.prompts.replace_under_box() > 0
    redrawn = labels.data[1]
    assert set(np.unique(redrawn)) == {0, 5}  # the object keeps its id, redrawn from the box
    assert 0.8 < (redrawn == 5).sum() / disk(32, 32, 10).sum() < 1.25
    assert widget.prompts.replace_button.native.isHidden()


def test_a_box_on_an_erased_slice_notifies_and_replace_writes_it(make_napari_viewer, qtbot,
                                                                  tiny_model, monkeypatch):
    said = box_warnings(monkeypatch)
    viewer = make_napari_viewer()
    viewer.add_image(disk_stack(n=3), name="scan")
    widget = docked(viewer)
    segment_all(widget, qtbot)
    labels = viewer.layers["scan fmbff"]
    viewer.dims.set_current_step(0, 1)
    labels.fill((1, 5, 5), 0)  # the user erases slice 1 with the bucket
    box_on_slice(viewer, widget, 1)
    assert not labels.data[1].any() and len(said) == 1  # the erasure stands, and it is said
    assert widget.prompts.replace_under_box() > 0
    assert 0.8 < (labels.data[1] > 0).sum() / disk(32, 32, 10).sum() < 1.25
    labels.undo()  # Replace is one undo step
    assert not labels.data[1].any()


def test_an_erased_slice_is_refused_unless_accepted_as_lesion_free(make_napari_viewer, qtbot,
                                                                   tiny_model, monkeypatch):
    errors = []
    monkeypatch.setattr("napari_fmbff._widgets._finetune.show_error", errors.append)
    viewer = make_napari_viewer()
    viewer.add_image(disk_stack(n=4), name="scan")
    segment = docked(viewer)
    segment_all(segment, qtbot)
    tune = docked(viewer, "Fine-tune")
    labels = viewer.layers["scan fmbff"]
    viewer.dims.set_current_step(0, 2)
    labels.fill((2, 5, 5), 0)  # the bucket erases the whole slice
    assert not labels.data[2].any()
    assert tune.propagate() is None
    assert len(errors) == 1 and "slice 2" in errors[0] and "Accept slice" in errors[0]
    with pytest.raises(ValueError, match="slice 2"):
        tune._training_selection()  # Fine-tune on "slices you corrected" refuses it too
    # The user says slice 2 is lesion-free, and gives the lesion on slice 1 with a box.
    segment.review.accept_slice()
    box_on_slice(viewer, segment, 1)
    job = tune._propagation_job()
    assert job.slices == [1, 2] and not job.labels[2].any() and job.labels[1].any()


def test_the_day_fits_one_screen_and_segment_is_in_front(make_napari_viewer, qtbot):
    viewer = make_napari_viewer(show=True)
    viewer.window._qt_window.resize(1600, 1000)
    segment = docked(viewer)
    tune = docked(viewer, "Fine-tune")
    qtbot.wait(300)
    # Segment's tab is in front: its fields are on screen, Fine-tune's are behind its tab.
    assert not segment.native.visibleRegion().isEmpty() and tune.native.visibleRegion().isEmpty()
    assert not segment.advanced.isExpanded()
    assert segment.tile_size.native.visibleRegion().isEmpty()  # collapsed: not on screen
    viewport = segment.native.viewport()
    for button in (segment.run_button, segment.review.next_button, segment.review.accept_button):
        bottom = button.native.mapTo(viewport, button.native.rect().bottomLeft()).y()
        assert 0 < bottom <= viewport.height(), (button.text, bottom, viewport.height())


def test_accept_the_rest_makes_the_whole_reviewed_stack_training_data(make_napari_viewer, qtbot,
                                                                     tiny_model):
    viewer = make_napari_viewer()
    viewer.add_image(disk_stack(n=4), name="scan")
    segment = docked(viewer)
    segment_all(segment, qtbot, threshold=0.5)
    tune = docked(viewer, "Fine-tune")
    labels = box_on_slice(viewer, segment, 1)  # one slice corrected by a box
    assert [p for p in tune._training_selection()[2]] == [(1,)]
    segment.review.accept_rest_button.changed.emit(True)  # the button, as a click sends it
    assert "3 slice(s) accepted" in segment.review.uncertainty.value
    data, layer, planes = tune._training_selection()
    assert planes == [(0,), (1,), (2,), (3,)] and layer is not None
    job = tune.store.store_job(data, labels, planes)
    assert job.slices == [0, 1, 2, 3]  # the store's case holds the whole reviewed stack
