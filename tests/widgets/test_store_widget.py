"""The corrections store in the Fine-tune dock: paint, Fine-tune, the store grows; open a case;
remove one after a confirmation."""

import os

import numpy as np
import pytest

pytest.importorskip("napari")

from conftest import disks  # noqa: E402
from napari_fmbff._widgets import _store as store_module  # noqa: E402
from napari_fmbff.data.store import open_store_for as open_store  # noqa: E402
from napari_fmbff.model.checkpoint import read_metadata  # noqa: E402

WAIT_MS = 240_000


def docked(viewer):
    """Fine-tune docked from the Plugins menu, as a user opens it (napari hands the dock a
    proxy of the viewer)."""
    _dock, widget = viewer.window.add_plugin_dock_widget("napari-fmbff", "Fine-tune")
    return widget


def add_patient(viewer, name, seed, painted_slice):
    pairs = disks(3, size=64, seed=seed)
    stack = np.stack([p[0][..., 0] for p in pairs])
    viewer.add_image(stack, name=name)
    labels = viewer.add_labels(np.zeros(stack.shape, np.int32), name=f"{name} corrections")
    labels.brush_size = 20
    labels.selected_label = 1
    labels.paint((painted_slice, 32, 32), 1)  # the user's correction, with napari's brush
    return stack, labels


def fine_tune(widget, viewer, name, qtbot):
    widget.image.value = viewer.layers[name]
    widget.labels_layer.value = viewer.layers[f"{name} corrections"]
    widget.run_button.native.click()
    qtbot.waitUntil(lambda: widget._worker is None, timeout=WAIT_MS)
    assert widget.last_outcome is not None and widget.last_outcome.saved, widget.status.value


@pytest.fixture
def questions(monkeypatch):
    """The confirmation dialog, answered by the test (the answers in order); what it asked."""
    from qtpy.QtWidgets import QMessageBox

    asked, answers = [], []

    def question(_parent, _title, text, *_args):
        asked.append(text)
        return answers.pop(0)

    monkeypatch.setattr(QMessageBox, "question", question)
    return asked, answers


def test_fine_tune_grows_the_store_and_a_case_opens_and_is_removed(
        make_napari_viewer, qtbot, tiny_model, models_dir, questions):
    from qtpy.QtWidgets import QMessageBox

    viewer = make_napari_viewer()
    stack1, _ = add_patient(viewer, "p1", seed=1, painted_slice=1)
    add_patient(viewer, "p2", seed=2, painted_slice=2)
    widget = docked(viewer)
    assert widget.store.use_store.value and str(widget.store.store_dir.value) == os.environ["FMBFF_STORE_DIR"]
    for key, value in dict(model=tiny_model, epochs=1, tile_size=64, batch_size=2,
                           device="cpu", slices="all slices with labels").items():
        getattr(widget, key).value = value
    fine_tune(widget, viewer, "p1", qtbot)
    store = open_store(widget.store.store_dir.value)
    (first,) = store.cases()
    assert first.slices == [1] and first.name == "p1"
    assert "1 case, 1 corrected slice" in widget.store.store_summary.value
    assert store.latest_model == widget.last_saved.resolve()
    # The next patient: its fine-tune starts from the base model the dock shows and learns
    # both cases.
    fine_tune(widget, viewer, "p2", qtbot)
    store = open_store(widget.store.store_dir.value)
    assert [c.name for c in store.cases()] == ["p1", "p2"]
    prov = read_metadata(widget.last_saved)["provenance"]
    assert prov["finetuned_from"] == widget.model.value == "tiny"
    assert prov["store"]["n_cases"] == 2 and set(prov["store"]["replay"]["repeats"].values()) == {1}
    assert "2 cases, 2 corrected slices" in widget.store.store_summary.value
    # Open the first case back into napari.
    widget.store.store_case.value = first.id
    widget.store.open_case_button.native.click()
    image, labels = viewer.layers[-2], viewer.layers[-1]
    np.testing.assert_array_equal(image.data, stack1)
    assert labels.data[1].any() and not labels.data[[0, 2]].any()
    # Remove it: Cancel keeps it, Yes removes it.
    asked, answers = questions
    answers += [QMessageBox.StandardButton.Cancel, QMessageBox.StandardButton.Yes]
    widget.store.remove_case_button.native.click()
    assert len(open_store(widget.store.store_dir.value).cases()) == 2
    widget.store.remove_case_button.native.click()
    assert [c.name for c in open_store(widget.store.store_dir.value).cases()] == ["p2"]
    assert first.id not in widget.store.store_case.choices
    assert "1 case" in widget.store.store_summary.value and "last case" not in asked[-1]
    # The last case: the dialog says the store will be empty.
    widget.store.store_case.value = next(c for c in widget.store.store_case.choices if c)
    answers.append(QMessageBox.StandardButton.Yes)
    widget.store.remove_case_button.native.click()
    assert "last case" in asked[-1] and open_store(widget.store.store_dir.value).cases() == []


def test_store_off_trains_on_this_image_only(make_napari_viewer, qtbot, tiny_model, models_dir):
    viewer = make_napari_viewer()
    add_patient(viewer, "p1", seed=1, painted_slice=1)
    widget = docked(viewer)
    for key, value in dict(model=tiny_model, epochs=1, tile_size=64, batch_size=2,
                           device="cpu", slices="all slices with labels").items():
        getattr(widget, key).value = value
    widget.store.use_store.value = False
    assert not widget.store.store_dir.enabled and "not used" in widget.store.store_summary.value
    fine_tune(widget, viewer, "p1", qtbot)
    assert open_store(widget.store.store_dir.value).cases() == []
    assert "store" not in read_metadata(widget.last_saved)["provenance"]


def test_a_store_folder_that_is_a_file_is_one_line(make_napari_viewer, tiny_model, tmp_path,
                                                   monkeypatch):
    errors = []
    from napari_fmbff._widgets import _finetune

    monkeypatch.setattr(_finetune, "show_error", errors.append)
    viewer = make_napari_viewer()
    add_patient(viewer, "p1", seed=1, painted_slice=1)
    widget = docked(viewer)
    widget.model.value = tiny_model
    widget.image.value = viewer.layers["p1"]
    widget.labels_layer.value = viewer.layers["p1 corrections"]
    widget.slices.value = "all slices with labels"
    (tmp_path / "file").write_text("x")
    widget.store.store_dir.value = str(tmp_path / "file")
    assert "a file is in the way" in widget.store.store_summary.value
    assert widget.run() is None and "a file is in the way" in errors[-1]
    assert store_module.STORE_CASE_TAG  # the tag a re-opened case carries


def test_the_store_rows_tooltips_come_from_the_tooltips_module(make_napari_viewer, models_dir):
    from napari_fmbff._widgets._tooltips import TOOLTIPS, tooltip

    widget = docked(make_napari_viewer())
    nested = {id(field) for field in widget.store.store_row}
    for name in TOOLTIPS["store"]:
        field = getattr(widget.store, name)
        assert id(field) in nested and field.tooltip == tooltip("store", name)


def test_a_multiscale_image_is_refused_by_the_store_in_one_line(make_napari_viewer, tiny_model,
                                                                monkeypatch):
    from napari_fmbff._widgets import _finetune

    errors = []
    monkeypatch.setattr(_finetune, "show_error", errors.append)
    viewer = make_napari_viewer()
    base = np.random.default_rng(0).integers(0, 255, (128, 128), dtype=np.uint8)
    viewer.add_image([base, base[::2, ::2]], multiscale=True, name="slide")
    labels = viewer.add_labels(np.zeros((128, 128), np.int32), name="slide corrections")
    labels.data[40:60, 40:60] = 1
    widget = docked(viewer)
    widget.model.value = tiny_model
    widget.image.value = viewer.layers["slide"]
    widget.labels_layer.value = labels
    widget.slices.value = "all slices with labels"
    assert widget.run() is None and "multiscale" in errors[-1] and "untick" in errors[-1]
    assert open_store(widget.store.store_dir.value).cases() == []


def test_propagate_adds_the_corrected_slice_and_a_cancel_adds_nothing(
        make_napari_viewer, qtbot, tiny_model, models_dir):
    from test_propagate_widget import corrected_viewer, propagate_widget

    viewer, _seg, _labels = corrected_viewer(make_napari_viewer, qtbot)
    widget = propagate_widget(viewer, epochs=500)
    widget.propagate_button.native.click()
    qtbot.waitUntil(lambda: widget.progress.value > 0, timeout=WAIT_MS)
    widget.cancel_button.native.click()
    qtbot.waitUntil(lambda: widget._worker is None, timeout=WAIT_MS)
    assert open_store(widget.store.store_dir.value).cases() == []  # as it was
    widget.epochs.value = 1
    widget.propagate_button.native.click()
    qtbot.waitUntil(lambda: widget._worker is None, timeout=WAIT_MS)
    (case,) = open_store(widget.store.store_dir.value).cases()
    assert case.slices == [1] and case.name == "scan" and case.entry.model == "tiny"
    assert "1 case, 1 corrected slice" in widget.store.store_summary.value
    assert read_metadata(widget.last_saved)["provenance"]["store"]["cases"] == [case.id]
