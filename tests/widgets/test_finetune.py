"""The Fine-tune dock widget: corrected labels -> a new registered model that does better."""

import numpy as np
import pytest

pytest.importorskip("napari")

from conftest import disks  # noqa: E402
from napari_fmbff import load_model, save_model  # noqa: E402
from napari_fmbff._widgets import _finetune as finetune_module  # noqa: E402
from napari_fmbff._widgets._proposal import unproxied  # noqa: E402
from napari_fmbff.inference.segmenter import Segmenter  # noqa: E402
from napari_fmbff.training.metrics import scores  # noqa: E402

WAIT_MS = 240_000


@pytest.fixture
def base_model(tiny_net, models_dir):
    save_model(tiny_net, models_dir / "base.safetensors", metadata={"tile_size": 64})
    return "base"


@pytest.fixture
def errors(monkeypatch):
    seen = []
    monkeypatch.setattr(finetune_module, "show_error", lambda msg: seen.append(msg))
    return seen


def docked(viewer, name="Fine-tune"):
    """The plugin's dock opened from the Plugins menu, as a user opens it (napari hands it a
    proxy of the viewer)."""
    _dock, widget = viewer.window.add_plugin_dock_widget("napari-fmbff", name)
    return widget


def setup(viewer, n=12):
    pairs = disks(n, size=96, seed=5)
    stack = np.stack([p[0][..., 0] for p in pairs])
    labels = np.stack([p[1] for p in pairs]).astype(np.int32)
    viewer.add_image(stack, name="scans")
    viewer.add_labels(labels, name="corrected")
    return stack, labels


def make_widget(viewer, **values):
    widget = docked(viewer)
    widget.model.value = "base"
    widget.labels_layer.value = viewer.layers["corrected"]
    widget.image.value = viewer.layers["scans"]
    settings = dict(epochs=6, lr=3e-3, tile_size=64, batch_size=4, device="cpu",
                    slices="all slices with labels", new_name="my tuned")
    settings.update(values)
    for key, value in settings.items():
        getattr(widget, key).value = value
    return widget


def test_finetune_saves_registers_and_beats_the_base(make_napari_viewer, qtbot, base_model,
                                                     models_dir):
    viewer = make_napari_viewer()
    stack, labels = setup(viewer)
    seg_widget = docked(viewer, "Segment")
    widget = make_widget(viewer)
    worker = widget.run()
    assert worker is not None
    qtbot.waitUntil(lambda: widget._worker is None, timeout=WAIT_MS)
    saved = models_dir / "my_tuned.safetensors"
    assert saved.exists() and widget.last_saved == saved
    assert (models_dir / "my_tuned.log.csv").exists()
    # Listed and selected in the Segment widget at once.
    assert seg_widget.model.value == "my_tuned"
    assert len(widget.history) >= 1 and "->" in widget.status.value
    # Better than the base on the corrections themselves.
    def dice(model):
        seg = Segmenter(load_model(model), device="cpu", tile_size=64)
        return np.mean([scores(seg.predict_proba(s) >= 0.5, m)["dice"]
                        for s, m in zip(stack, labels)])
    assert dice("my_tuned") > dice("base") + 0.2
    # A second run never overwrites the first model.
    widget.run()
    qtbot.waitUntil(lambda: widget._worker is None, timeout=WAIT_MS)
    assert (models_dir / "my_tuned-2.safetensors").exists()


def cancel_after_first_step(widget, qtbot):
    widget.run()
    qtbot.waitUntil(lambda: widget.progress.value > 0, timeout=WAIT_MS)
    widget.cancel()
    qtbot.waitUntil(lambda: widget._worker is None, timeout=WAIT_MS)


def cancel_after_first_epoch(widget, qtbot):
    widget.run()
    qtbot.waitUntil(lambda: len(widget.history) >= 1, timeout=WAIT_MS)
    widget.cancel()
    qtbot.waitUntil(lambda: widget._worker is None, timeout=WAIT_MS)


def test_cancel_keeps_best_only_when_asked(make_napari_viewer, qtbot, base_model, models_dir):
    viewer = make_napari_viewer()
    setup(viewer)
    widget = make_widget(viewer, epochs=500, keep_on_cancel=False, new_name="never")
    cancel_after_first_step(widget, qtbot)
    assert not list(models_dir.glob("never*"))
    assert "no model saved" in widget.status.value
    widget.keep_on_cancel.value = True
    widget.new_name.value = "kept"
    widget.slices.value = "current slice"  # one image: nothing held out, every epoch counts
    cancel_after_first_epoch(widget, qtbot)
    outcome = widget.last_outcome
    assert outcome.result.cancelled and outcome.result.changed
    assert (models_dir / "kept.safetensors").exists()
    assert "best weights so far" in widget.status.value


def test_bad_training_input_notifies(make_napari_viewer, qtbot, base_model, errors):
    viewer = make_napari_viewer()
    setup(viewer)
    viewer.add_labels(np.zeros((3, 10, 10), np.int32), name="wrong")
    widget = make_widget(viewer)
    widget.labels_layer.value = viewer.layers["wrong"]
    assert widget.run() is None and "shape" in errors[-1]
    viewer.layers["corrected"].data[:] = 0
    widget.labels_layer.value = viewer.layers["corrected"]
    assert widget.run() is None and "no slice has any labels" in errors[-1]
    widget.slices.value = "all slices"
    worker = widget.run()
    qtbot.waitUntil(lambda: widget._worker is None, timeout=WAIT_MS)
    assert "no lesion pixels" in errors[-1]
    assert worker is not None and widget.run_button.enabled


def test_one_painted_image_with_the_widget_defaults_teaches_the_missed_lesion(
        make_napari_viewer, qtbot, models_dir):
    """The loop on one image: starter misses a lesion of a look it never saw (procedural CT);
    the user paints it; Fine-tune with the widget's defaults; the next Segment finds it."""
    from napari_fmbff.data.synthetic import make_sample

    image, truth = make_sample("ct", 256, seed=1, n_lesions=1)
    lesion = truth > 0
    viewer = make_napari_viewer()
    viewer.add_image(image, name="patient")
    seg_widget = docked(viewer, "Segment")
    seg_widget.model.value = "starter"
    seg_widget.device.value = "cpu"
    seg_widget.run()
    qtbot.waitUntil(lambda: seg_widget._worker is None, timeout=WAIT_MS)
    proposal = viewer.layers["patient fmbff"]
    assert (proposal.data[lesion] > 0).mean() < 0.2  # starter misses it
    # The user paints the lesion and erases whatever else was proposed (one undo step each).
    proposal.data_setitem(np.nonzero(lesion), 1)
    proposal.data_setitem(np.nonzero(~lesion & (proposal.data > 0)), 0)
    widget = docked(viewer)
    assert widget.labels_layer.value is proposal  # the layer the user corrected
    widget.device.value = "cpu"  # everything else: the widget's defaults
    widget.new_name.value = "patient-tuned"
    widget.run()
    qtbot.waitUntil(lambda: widget._worker is None, timeout=3 * WAIT_MS)  # the full recipe
    outcome = widget.last_outcome
    assert outcome is not None and outcome.saved, widget.status.value
    assert not outcome.result.validated and "no held-out score" in widget.status.value
    assert outcome.result.fit_after > outcome.result.fit_before
    assert seg_widget.model.value == "patient-tuned"
    seg_widget.new_layer.value = True  # a fresh proposal, not the protected corrections
    seg_widget.run()
    qtbot.waitUntil(lambda: seg_widget._worker is None, timeout=WAIT_MS)
    fresh = seg_widget._result["labels"]
    assert unproxied(fresh) is not proposal  # (the dock holds napari's proxy of its layer)
    assert (fresh.data[lesion] > 0).mean() > 0.5  # covers most of the painted lesion
