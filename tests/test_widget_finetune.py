"""The Fine-tune dock widget: corrected labels -> a new registered model that does better."""

import numpy as np
import pytest

pytest.importorskip("napari")

from napari_fmbff import load_model, save_model  # noqa: E402
from napari_fmbff._widgets import FineTuneWidget, SegmentWidget  # noqa: E402
from napari_fmbff._widgets import _finetune as finetune_module  # noqa: E402
from napari_fmbff.inference import Segmenter  # noqa: E402
from napari_fmbff.metrics import scores  # noqa: E402
from test_training import disks  # noqa: E402

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


def setup(viewer, n=12):
    pairs = disks(n, size=96, seed=5)
    stack = np.stack([p[0][..., 0] for p in pairs])
    labels = np.stack([p[1] for p in pairs]).astype(np.int32)
    viewer.add_image(stack, name="scans")
    viewer.add_labels(labels, name="corrected")
    return stack, labels


def make_widget(viewer, **values):
    widget = FineTuneWidget(viewer)
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
    seg_widget = SegmentWidget(viewer)
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
    widget.epochs.value = 1
    widget.run()
    qtbot.waitUntil(lambda: widget._worker is None, timeout=WAIT_MS)
    assert (models_dir / "my_tuned-2.safetensors").exists()


def cancel_after_first_step(widget, qtbot):
    widget.run()
    qtbot.waitUntil(lambda: widget.progress.value > 0, timeout=WAIT_MS)
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
    cancel_after_first_step(widget, qtbot)
    assert (models_dir / "kept.safetensors").exists()


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
