"""The Segment dock widget in a real napari viewer (pytest-qt under Xvfb)."""

import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("napari")

from napari_fmbff import save_model  # noqa: E402
from napari_fmbff._widgets import _segment as segment_module  # noqa: E402
from napari_fmbff._widgets._common import model_events  # noqa: E402

WAIT_MS = 120_000


@pytest.fixture
def errors(monkeypatch):
    seen = []
    monkeypatch.setattr(segment_module, "show_error", lambda msg: seen.append(msg))
    return seen


def make_widget(viewer, model="tiny", **values):
    """Segment docked from the Plugins menu, as a user opens it (napari hands the dock a
    proxy of the viewer)."""
    _dock, widget = viewer.window.add_plugin_dock_widget("napari-fmbff", "Segment")
    widget.model.value = model
    widget.tile_size.value = 64
    for key, value in values.items():
        getattr(widget, key).value = value
    return widget


def run_and_wait(widget, qtbot):
    worker = widget.run()
    assert worker is not None
    qtbot.waitUntil(lambda: widget._worker is None, timeout=WAIT_MS)
    return worker


def test_rgb_image_gives_2d_labels_with_its_geometry(make_napari_viewer, qtbot, tiny_model, rng):
    viewer = make_napari_viewer()
    image = rng.integers(0, 255, (70, 90, 3), dtype=np.uint8)
    layer = viewer.add_image(image, rgb=True, name="scan", scale=(0.5, 0.25), translate=(3, 4))
    widget = make_widget(viewer, add_probability=True)
    assert widget.image.value is layer
    run_and_wait(widget, qtbot)
    labels = viewer.layers["scan fmbff"]
    assert labels.data.shape == (70, 90)
    np.testing.assert_allclose(labels.scale, (0.5, 0.25))
    np.testing.assert_allclose(labels.translate, (3, 4))
    prob = viewer.layers["scan fmbff probability"]
    assert prob.data.shape == (70, 90) and 0 <= prob.data.min() and prob.data.max() <= 1
    assert prob.blending == "additive"
    np.testing.assert_array_equal(labels.data > 0, prob.data >= 0.5)
    assert widget.device_used.value == "cpu"
    # Running again updates the same layer instead of adding one.
    n_layers = len(viewer.layers)
    run_and_wait(widget, qtbot)
    assert len(viewer.layers) == n_layers


def test_zyx_stack_whole_and_current_slice(make_napari_viewer, qtbot, tiny_model, rng):
    viewer = make_napari_viewer()
    stack = rng.integers(0, 4000, (3, 64, 80), dtype=np.uint16)
    viewer.add_image(stack, name="vol")
    widget = make_widget(viewer, scope="whole stack", threshold=0.0)
    run_and_wait(widget, qtbot)
    labels = viewer.layers["vol fmbff"]
    assert labels.data.shape == (3, 64, 80)
    assert all(labels.data[z].max() > 0 for z in range(3))  # threshold 0: every slice segmented
    labels.data[:] = 0
    viewer.dims.set_current_step(0, 2)
    widget.scope.value = "current slice"
    run_and_wait(widget, qtbot)
    assert labels.data[2].max() > 0 and labels.data[0].max() == 0 and labels.data[1].max() == 0


def test_tyx_rgb_stack_and_dask_layer(make_napari_viewer, qtbot, tiny_model, rng):
    import dask.array as da

    viewer = make_napari_viewer()
    data = da.from_array(rng.integers(0, 255, (2, 64, 64, 3), dtype=np.uint8), chunks=(1, 32, 32, 3))
    viewer.add_image(data, rgb=True, name="movie")
    widget = make_widget(viewer, scope="whole stack")
    run_and_wait(widget, qtbot)
    assert viewer.layers["movie fmbff"].data.shape == (2, 64, 64)


def test_multiscale_uses_finest_level(make_napari_viewer, qtbot, tiny_model, rng):
    viewer = make_napari_viewer()
    base = rng.integers(0, 255, (128, 128), dtype=np.uint8)
    viewer.add_image([base, base[::2, ::2]], multiscale=True, name="pyr")
    widget = make_widget(viewer)
    run_and_wait(widget, qtbot)
    assert viewer.layers["pyr fmbff"].data.shape == (128, 128)


def test_rethreshold_without_running_the_network(make_napari_viewer, qtbot, tiny_model, rng,
                                                 monkeypatch):
    viewer = make_napari_viewer()
    viewer.add_image(rng.integers(0, 255, (64, 64), dtype=np.uint8), name="img")
    widget = make_widget(viewer)
    run_and_wait(widget, qtbot)
    from napari_fmbff.inference.segmenter import Segmenter

    calls = []
    original = Segmenter._forward
    monkeypatch.setattr(Segmenter, "_forward", lambda *a: calls.append(1) or original(*a))
    labels = viewer.layers["img fmbff"]
    widget.threshold.value = 0.0
    assert (labels.data > 0).all()
    widget.threshold.value = 1.0
    prob = widget._result["probs"][()]
    np.testing.assert_array_equal(labels.data > 0, prob >= 1.0)
    assert calls == [] and widget._worker is None


def test_cancel_stops_a_long_run_and_adds_no_layer(make_napari_viewer, qtbot, tiny_model, rng):
    viewer = make_napari_viewer()
    viewer.add_image(rng.integers(0, 255, (2048, 2048), dtype=np.uint8), name="big")
    widget = make_widget(viewer, batch_size=1)
    assert widget.run() is not None
    qtbot.waitUntil(lambda: widget.progress.value > 0, timeout=WAIT_MS)
    widget.cancel()
    qtbot.waitUntil(lambda: widget._worker is None, timeout=WAIT_MS)
    assert widget._cancel.is_set() and widget.status.value.startswith("Cancelled")
    assert "big fmbff" not in viewer.layers
    assert widget.progress.value < 1000
    assert widget.run_button.enabled


def test_bad_inputs_notify_and_widget_stays_usable(make_napari_viewer, qtbot, tiny_model,
                                                   errors, rng, tmp_path):
    viewer = make_napari_viewer()
    widget = make_widget(viewer)
    assert widget.run() is None
    assert "no image layer" in errors[-1]
    viewer.add_image(rng.integers(0, 255, (64, 64), dtype=np.uint8), name="img")
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"nonsense")
    widget.add_model_file(broken)
    run_and_wait(widget, qtbot)
    assert "broken.safetensors" in errors[-1]
    assert "img fmbff" not in viewer.layers
    widget.model.value = "tiny"
    run_and_wait(widget, qtbot)
    assert "img fmbff" in viewer.layers


def test_new_models_appear_in_the_list(make_napari_viewer, tiny_model, tiny_net, models_dir):
    viewer = make_napari_viewer()
    widget = make_widget(viewer)
    assert "fresh" not in widget.model.choices
    save_model(tiny_net, models_dir / "fresh.safetensors")
    model_events.saved.emit("fresh")
    assert "fresh" in widget.model.choices and widget.model.value == "fresh"


def test_closing_the_viewer_while_running_does_not_crash(make_napari_viewer, qtbot, tiny_model, rng):
    viewer = make_napari_viewer()
    viewer.add_image(rng.integers(0, 255, (1024, 1024), dtype=np.uint8), name="big")
    widget = make_widget(viewer, batch_size=1)
    viewer.window.add_dock_widget(widget)
    worker = widget.run()
    qtbot.waitUntil(lambda: widget.progress.value > 0, timeout=WAIT_MS)
    viewer.close()
    qtbot.waitUntil(lambda: not worker.is_running, timeout=WAIT_MS)


def test_plugin_import_does_not_load_torch():
    code = ("import sys, napari_fmbff, napari_fmbff._widgets, napari_fmbff._sample_data; "
            "assert 'torch' not in sys.modules and 'timm' not in sys.modules, 'heavy import'")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_manifest_is_valid_and_samples_load():
    from npe2 import PluginManifest

    manifest = PluginManifest.from_distribution("napari-fmbff")
    assert {w.display_name for w in manifest.contributions.widgets} >= {"Segment"}
    from napari_fmbff._sample_data import endoscopy_sample, ultrasound_sample

    (image, meta, kind), (mask, _, mask_kind) = endoscopy_sample()
    assert image.shape == (512, 512, 3) and meta["rgb"] and kind == "image"
    assert mask.shape == (512, 512) and mask_kind == "labels" and mask.max() == 1
    (us, us_meta, _), _ = ultrasound_sample()
    assert us.ndim == 2 and not us_meta["rgb"]


def test_models_copied_into_the_folder_appear(make_napari_viewer, qtbot, tiny_model, tiny_net,
                                              models_dir):
    viewer = make_napari_viewer()
    widget = make_widget(viewer)
    save_model(tiny_net, models_dir / "dropped-in.safetensors")
    qtbot.waitUntil(lambda: "dropped-in" in widget.model.choices, timeout=10_000)
    assert widget.model.value == "tiny"  # the selection is kept
