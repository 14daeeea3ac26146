"""The widgets' intensity field, whole-volume ids and provenance in a real napari viewer."""

import numpy as np
import pytest

pytest.importorskip("napari")

from conftest import disks  # noqa: E402
from napari_fmbff import save_model  # noqa: E402
from napari_fmbff.model.checkpoint import file_sha256, model_card, read_metadata  # noqa: E402

WAIT_MS = 240_000


def run_and_wait(widget, qtbot):
    assert widget.run() is not None
    qtbot.waitUntil(lambda: widget._worker is None, timeout=WAIT_MS)


def shown(widget) -> bool:
    """Shown when the dock is (the dock itself is not shown in these tests)."""
    return not widget.native.isHidden()


def segment_widget(viewer, model="tiny", **values):
    """Segment docked from the Plugins menu, as a user opens it."""
    _dock, widget = viewer.window.add_plugin_dock_widget("napari-fmbff", "Segment")
    widget.model.value = model
    widget.tile_size.value = 64
    widget.device.value = "cpu"
    for key, value in values.items():
        getattr(widget, key).value = value
    return widget


def test_ct_window_and_provenance_in_the_layer(make_napari_viewer, qtbot, tiny_model,
                                               models_dir, rng):
    viewer = make_napari_viewer()
    viewer.add_image(rng.integers(-1000, 1000, (3, 64, 64)).astype(np.int16), name="ct")
    widget = segment_widget(viewer, intensity="CT window: soft-tissue", scope="whole stack")
    assert not shown(widget.intensity_low)  # the range fields only for a fixed range
    run_and_wait(widget, qtbot)
    record = viewer.layers["ct fmbff"].metadata["napari_fmbff"]
    assert record["intensity"]["mode"] == "fixed" and record["intensity"]["low"] == -160
    assert record["model_sha256"] == file_sha256(models_dir / "tiny.safetensors")
    assert record["tile_size"] == 64 and record["source"] == "ct" and record["date"]
    assert "intensity: fixed range -160 to 240" in widget.status.value
    # A re-threshold updates what the layer says about itself.
    widget.threshold.value = 0.3
    assert record["threshold"] == 0.3
    # The whole stack's own range, resolved from every slice.
    widget.intensity.value = "whole stack (percentiles)"
    run_and_wait(widget, qtbot)
    record = viewer.layers["ct fmbff"].metadata["napari_fmbff"]
    assert record["intensity_setting"]["scope"] == "volume"
    assert record["intensity"]["mode"] == "fixed"  # the range actually applied
    widget.intensity.value = "fixed range (low, high)"
    assert shown(widget.intensity_low)
    widget.intensity_low.value, widget.intensity_high.value = 10, 10
    assert widget.run() is None  # low == high: said, nothing started


def test_objects_join_across_slices(make_napari_viewer, qtbot, tiny_model, rng):
    viewer = make_napari_viewer()
    viewer.add_image(rng.integers(0, 255, (3, 40, 40), dtype=np.uint8), name="vol")
    widget = segment_widget(viewer, scope="whole stack")
    run_and_wait(widget, qtbot)
    labels = viewer.layers["vol fmbff"]
    probs = {(z,): np.zeros((40, 40), np.float32) for z in range(3)}
    probs[(0,)][5:15, 5:15] = probs[(1,)][5:15, 5:15] = 1  # one lesion over two slices
    probs[(2,)][25:35, 25:35] = 1                           # another in the third
    widget._result["probs"] = probs
    widget._rethreshold()
    assert labels.data[0, 10, 10] == labels.data[1, 10, 10] != labels.data[2, 30, 30] > 0
    assert labels.metadata["napari_fmbff"]["objects"] == "3D objects"
    widget.objects_3d.value = False  # numbered slice by slice, one undo step
    assert labels.data[0, 10, 10] == labels.data[2, 30, 30] == 1
    assert labels.metadata["napari_fmbff"]["objects"] == "per slice"


def test_finetune_stores_its_intensity_and_segment_reuses_it(make_napari_viewer, qtbot,
                                                            tiny_net, models_dir):
    save_model(tiny_net, models_dir / "base.safetensors", metadata={"tile_size": 64})
    viewer = make_napari_viewer()
    pairs = disks(2, size=96, seed=5)
    viewer.add_image(np.stack([p[0][..., 0] for p in pairs]), name="scans")
    viewer.add_labels(np.stack([p[1] for p in pairs]).astype(np.int32), name="corrected")
    _dock, widget = viewer.window.add_plugin_dock_widget("napari-fmbff", "Fine-tune")
    for key, value in dict(model="base", image=viewer.layers["scans"],
                           labels_layer=viewer.layers["corrected"], epochs=1, tile_size=64,
                           batch_size=2, device="cpu", slices="current slice",
                           new_name="windowed", intensity="fixed range (low, high)",
                           intensity_low=20.0, intensity_high=220.0).items():
        getattr(widget, key).value = value
    run_and_wait(widget, qtbot)
    saved = models_dir / "windowed.safetensors"
    assert saved.exists(), widget.status.value
    norm = read_metadata(saved)["normalization"]
    assert (norm["mode"], norm["low"], norm["high"]) == ("fixed", 20.0, 220.0)
    assert "input: fixed range 20 to 220" in model_card(saved)
    # Segment with the model's default applies the stored range.
    seg = segment_widget(viewer, model="windowed", image=viewer.layers["scans"])
    assert "input: fixed range 20 to 220" in seg.model_card.value
    run_and_wait(seg, qtbot)
    record = viewer.layers["scans fmbff"].metadata["napari_fmbff"]
    assert (record["intensity"]["low"], record["intensity"]["high"]) == (20.0, 220.0)
