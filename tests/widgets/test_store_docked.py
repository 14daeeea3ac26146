"""The corrections store in the Fine-tune dock, docked from the Plugins menu (issue 28): one
store per kind of image, a lost case dropped with one warning, the base model the dock shows
is the one used, and a model worse than the store's latest is kept but not promoted."""

import numpy as np
import pytest

pytest.importorskip("napari")

from conftest import disks  # noqa: E402
from napari_fmbff._widgets import _store as store_module  # noqa: E402
from napari_fmbff.data.store import open_store_for  # noqa: E402
from napari_fmbff.model.checkpoint import read_metadata  # noqa: E402

WAIT_MS = 240_000


def grey_patient(viewer, name, seed):
    """A grey (3, 64, 64) stack and a Labels layer with the lesion brushed on slice 1."""
    stack = np.stack([p[0][..., 0] for p in disks(3, size=64, seed=seed)])
    viewer.add_image(stack, name=name)
    return brush(viewer.add_labels(np.zeros(stack.shape, np.int32), name=f"{name} labels"),
                 (1, 32, 32))


def rgb_photo(viewer, name, seed):
    """A (64, 64, 3) colour image and its Labels layer with a brushed lesion."""
    image, _ = disks(1, size=64, seed=seed)[0]
    viewer.add_image(image, name=name, rgb=True)
    return brush(viewer.add_labels(np.zeros(image.shape[:2], np.int32), name=f"{name} labels"),
                 (32, 32))


def brush(labels, where):
    labels.brush_size, labels.selected_label = 20, 1
    labels.paint(where, 1)  # napari's own brush, as a user paints
    return labels


def docked_fine_tune(viewer, model):
    _, tune = viewer.window.add_plugin_dock_widget("napari-fmbff", "Fine-tune")
    for key, value in dict(model=model, epochs=1, tile_size=64, batch_size=2, device="cpu",
                           slices="all slices with labels").items():
        getattr(tune, key).value = value
    return tune


def fine_tune(tune, viewer, name, qtbot) -> str:
    """Fine-tune ``name`` with its labels; returns the status the run started with."""
    tune.image.value = viewer.layers[name]
    tune.labels_layer.value = viewer.layers[f"{name} labels"]
    tune.run_button.native.click()
    started = tune.status.value
    qtbot.waitUntil(lambda: tune._worker is None, timeout=WAIT_MS)
    assert tune.last_outcome is not None and tune.last_outcome.saved, tune.status.value
    return started


def constant_model(tiny_net, path, logit):
    from napari_fmbff import save_model

    tiny_net.head.weight.data.zero_()
    tiny_net.head.bias.data.fill_(logit)
    save_model(tiny_net, path, metadata={"tile_size": 64})
    return path


def test_grey_then_rgb_each_fine_tune_lands_in_its_own_store(make_napari_viewer, qtbot,
                                                             tiny_model, models_dir):
    viewer = make_napari_viewer()
    grey_patient(viewer, "ct", seed=1)
    rgb_photo(viewer, "polyp", seed=2)
    tune = docked_fine_tune(viewer, tiny_model)
    folder = tune.store.store_dir.value
    assert tune.store.use_store.value  # the default
    started = fine_tune(tune, viewer, "ct", qtbot)
    assert f"{folder}/grey (grey images)" in started
    assert f"In use: {folder}/grey (grey images)" in tune.store.store_summary.value
    started = fine_tune(tune, viewer, "polyp", qtbot)  # the default settings again
    assert f"{folder}/rgb (rgb images)" in started
    assert f"In use: {folder}/rgb (rgb images)" in tune.store.store_summary.value
    grey, rgb = open_store_for(folder), open_store_for(folder, rgb=True)
    assert [c.name for c in grey.cases()] == ["ct"] and [c.name for c in rgb.cases()] == ["polyp"]
    assert grey.kind == "grey" and rgb.kind == "rgb"
    assert rgb.latest_model == tune.last_saved.resolve()
    tune.image.value = viewer.layers["ct"]  # the dock follows the image's kind
    assert f"In use: {folder}/grey (grey images)" in tune.store.store_summary.value


def test_a_case_whose_files_are_gone_is_dropped_with_one_warning(make_napari_viewer, qtbot,
                                                                 tiny_model, models_dir,
                                                                 monkeypatch):
    import os

    from conftest import disk_volume

    store = open_store_for(os.environ["FMBFF_STORE_DIR"])
    volume, disk = disk_volume(3, 64, 0)
    labels = np.zeros(volume.shape, np.uint8)
    labels[1][disk] = 1
    lost = store.add_case(volume, labels, [1], name="lost scan")
    store.add_case(volume + 1, labels, [1], name="kept scan")
    (store.path / "labelsTr" / f"{lost}.nii.gz").unlink()
    warned = []
    monkeypatch.setattr(store_module, "show_warning", warned.append)
    viewer = make_napari_viewer()
    grey_patient(viewer, "ct", seed=1)
    tune = docked_fine_tune(viewer, tiny_model)
    (line,) = warned
    assert lost in line and "lost scan" in line and "dropped" in line
    assert "1 case, 1 corrected slice" in tune.store.store_summary.value
    fine_tune(tune, viewer, "ct", qtbot)  # no dead end
    assert [c.name for c in open_store_for(tune.store.store_dir.value).cases()] == ["kept scan", "ct"]
    assert len(warned) == 1


def test_the_store_run_uses_the_base_model_the_dock_shows(make_napari_viewer, qtbot, tiny_net,
                                                          tiny_model, models_dir, monkeypatch):
    """The store's latest model, and a newer one another process promotes during the run,
    are not what the run starts from: the base model field's is."""
    from napari_fmbff.training import store_training

    viewer = make_napari_viewer()
    grey_patient(viewer, "ct", seed=1)
    tune = docked_fine_tune(viewer, tiny_model)
    store = open_store_for(tune.store.store_dir.value)
    store.add_case(*disk_case(), [1], name="earlier")
    store.record_model(constant_model(tiny_net, models_dir / "other.safetensors", 50.0))
    newer = models_dir / "newer.safetensors"
    newer.write_bytes((models_dir / "other.safetensors").read_bytes())
    staging = store_training.stage

    def another_process_promotes_meanwhile(*args, **kwargs):
        open_store_for(tune.store.store_dir.value).record_model(newer)
        return staging(*args, **kwargs)

    monkeypatch.setattr(store_training, "stage", another_process_promotes_meanwhile)
    tune.store.refresh_store()
    assert "latest model 'other'" in tune.store.store_summary.value and tune.model.value == "tiny"
    started = fine_tune(tune, viewer, "ct", qtbot)
    assert "from 'tiny'" in started
    assert read_metadata(tune.last_saved)["provenance"]["finetuned_from"] == "tiny"
    assert open_store_for(tune.store.store_dir.value).record.models[-1].base == "tiny"


def test_a_model_worse_than_the_latest_is_not_promoted_and_the_dock_says_so(
        make_napari_viewer, qtbot, tiny_net, models_dir):
    viewer = make_napari_viewer()
    grey_patient(viewer, "ct", seed=1)
    everything = constant_model(tiny_net, models_dir / "everything.safetensors", 50.0)
    constant_model(tiny_net, models_dir / "nothing.safetensors", -50.0)
    _, seg = viewer.window.add_plugin_dock_widget("napari-fmbff", "Segment")
    tune = docked_fine_tune(viewer, "nothing")
    store = open_store_for(tune.store.store_dir.value)
    store.add_case(*disk_case(), [1], name="earlier")
    store.record_model(everything)
    seg.model.value = "nothing"
    fine_tune(tune, viewer, "ct", qtbot)
    assert "not promoted" in tune.status.value and "'everything'" in tune.status.value
    store = open_store_for(tune.store.store_dir.value)
    assert store.latest_model == everything.resolve()  # still the store's latest
    assert store.record.models[-1].promoted is False
    assert store.record.models[-1].path == str(tune.last_saved.resolve())  # registered
    assert seg.model.value == "everything"  # Segment offers the store's latest
    assert tune.last_saved.stem in seg.model.choices  # the new model is listed all the same


def disk_case():
    from conftest import disk_volume

    volume, disk = disk_volume(3, 64, 7)
    labels = np.zeros(volume.shape, np.uint8)
    labels[1][disk] = 1
    return volume, labels


def test_the_next_patient_is_segmented_while_the_store_retrains(make_napari_viewer, qtbot,
                                                                tiny_model, monkeypatch):
    """Issue 31: the store's retrain runs in the background. Held on purpose until the next
    patient is open and segmented from the Segment dock, the run then ends as it would have,
    with the first patient (not the image now shown) as its case."""
    import threading

    from napari_fmbff.training import store_training

    gate, train = threading.Event(), store_training.train_on_store

    def held_until_the_next_patient_is_done(*args, **kwargs):
        assert gate.wait(WAIT_MS / 1000), "the next patient was never segmented"
        return (yield from train(*args, **kwargs))

    monkeypatch.setattr(store_training, "train_on_store", held_until_the_next_patient_is_done)
    viewer = make_napari_viewer()
    grey_patient(viewer, "first", seed=1)
    tune = docked_fine_tune(viewer, tiny_model)
    tune.image.value = viewer.layers["first"]
    tune.labels_layer.value = viewer.layers["first labels"]
    tune.run_button.native.click()
    assert tune._worker is not None  # the store run is under way
    # The next patient: opened and segmented while the store run goes on.
    viewer.add_image(np.stack([p[0][..., 0] for p in disks(3, size=64, seed=7)]), name="next")
    _, seg = viewer.window.add_plugin_dock_widget("napari-fmbff", "Segment")
    seg.model.value, seg.tile_size.value, seg.device.value = tiny_model, 64, "cpu"
    seg.image.value = viewer.layers["next"]
    seg.run_button.native.click()
    qtbot.waitUntil(lambda: seg._worker is None, timeout=WAIT_MS)
    assert "next fmbff" in viewer.layers and viewer.layers["next fmbff"].data.shape == (3, 64, 64)
    assert tune._worker is not None  # still training: Segment did not wait for it
    gate.set()
    qtbot.waitUntil(lambda: tune._worker is None, timeout=WAIT_MS)
    assert tune.last_outcome is not None and tune.last_outcome.saved, tune.status.value
    cases = open_store_for(tune.store.store_dir.value).cases()
    assert [c.name for c in cases] == ["first"]
