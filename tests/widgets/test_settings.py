"""napari conventions: settings remembered across sessions, Restore defaults, the models
folder in the widget, the Segment shortcut, the Layers > Segment menu entries."""

import json
import os

import pytest

pytest.importorskip("napari")
# torch / timm (and triton) before any viewer's OpenGL: see _common._avoid_triton_llvm_clash.
import timm  # noqa: F401,E402

from napari_fmbff import save_model  # noqa: E402
from napari_fmbff._widgets import SegmentWidget  # noqa: E402
from napari_fmbff._widgets._finetune import finetune_widget_defaults  # noqa: E402
from napari_fmbff._widgets._segment import SEGMENT_DEFAULTS, SEGMENT_SHORTCUT  # noqa: E402
from napari_fmbff._widgets._settings import settings_path  # noqa: E402


def docked(viewer, name="Segment"):
    """The plugin's dock opened from the Plugins menu, as a user opens it (napari hands it a
    proxy of the viewer). napari docks one of each a window: a new dock needs a new viewer."""
    _dock, widget = viewer.window.add_plugin_dock_widget("napari-fmbff", name)
    return widget


def test_each_test_has_private_settings(tmp_path_factory):
    assert str(settings_path()).startswith(str(tmp_path_factory.getbasetemp()))


def test_segment_settings_survive_a_new_widget_and_restore_defaults(make_napari_viewer,
                                                                    models_dir):
    viewer = make_napari_viewer()
    first = docked(viewer)
    first.threshold.value = 0.3
    first.tile_size.value = 256
    first.fill_holes.value = True
    first.scope.value = "whole stack"
    saved = json.loads(settings_path().read_text())["segment"]
    assert saved["threshold"] == 0.3 and saved["tile_size"] == 256 and saved["fill_holes"]

    second = docked(make_napari_viewer())  # what the next napari session builds
    assert second.threshold.value == 0.3 and second.tile_size.value == 256
    assert second.fill_holes.value and second.scope.value == "whole stack"
    assert second.model.value == "starter"

    second.restore_defaults()
    for name, value in SEGMENT_DEFAULTS.items():
        assert getattr(second, name).value == value, name
    assert "segment" not in json.loads(settings_path().read_text())
    assert docked(make_napari_viewer()).threshold.value == SEGMENT_DEFAULTS["threshold"]


def test_a_saved_model_that_is_gone_falls_back_and_a_bad_file_is_ignored(make_napari_viewer,
                                                                         models_dir, tiny_net):
    save_model(tiny_net, models_dir / "mine.safetensors")
    viewer = make_napari_viewer()
    widget = docked(viewer)
    widget.model.value = "mine"
    assert docked(make_napari_viewer()).model.value == "mine"
    (models_dir / "mine.safetensors").unlink()
    assert docked(make_napari_viewer()).model.value == "starter"
    settings_path().write_text("{not json")
    assert docked(make_napari_viewer()).threshold.value == SEGMENT_DEFAULTS["threshold"]


def test_finetune_settings_persist_and_default_to_finetune_defaults(make_napari_viewer,
                                                                   models_dir):
    from napari_fmbff.training.loop import FINETUNE_DEFAULTS

    defaults = finetune_widget_defaults()
    assert defaults["epochs"] == FINETUNE_DEFAULTS["epochs"]
    assert defaults["lr"] == FINETUNE_DEFAULTS["lr"]
    viewer = make_napari_viewer()
    first = docked(viewer, "Fine-tune")
    assert first.epochs.value == FINETUNE_DEFAULTS["epochs"]
    first.epochs.value = 7
    first.new_name.value = "liver"
    second = docked(make_napari_viewer(), "Fine-tune")
    assert second.epochs.value == 7 and second.new_name.value == "liver"
    second.restore_button.clicked.emit()
    for name, value in defaults.items():
        assert getattr(second, name).value == value, name
    assert docked(make_napari_viewer(), "Fine-tune").epochs.value == FINETUNE_DEFAULTS["epochs"]


def test_models_folder_is_shown_changed_and_remembered(make_napari_viewer, qtbot, models_dir,
                                                       tmp_path, tiny_net, monkeypatch):
    viewer = make_napari_viewer()
    widget = docked(viewer)
    finetune = docked(viewer, "Fine-tune")
    assert str(widget.models_folder.value) == str(models_dir)
    other = tmp_path / "other-models"
    other.mkdir()
    save_model(tiny_net, other / "elsewhere.safetensors")
    widget.models_folder.value = other  # what Browse... does
    assert os.environ["FMBFF_MODELS_DIR"] == str(other)  # the engine saves / loads there now
    assert "elsewhere" in widget.model.choices and "elsewhere" in finetune.model.choices
    assert json.loads(settings_path().read_text())["models_folder"] == str(other)
    widget.models_folder.value = tmp_path / "missing"  # no such folder: nothing changes
    assert os.environ["FMBFF_MODELS_DIR"] == str(other)

    # Next session, without the environment variable: the remembered folder is used, also
    # when Fine-tune is opened first (it saves its models there).
    monkeypatch.delenv("FMBFF_MODELS_DIR")
    alone = docked(make_napari_viewer(), "Fine-tune")
    assert os.environ["FMBFF_MODELS_DIR"] == str(other) and "elsewhere" in alone.model.choices
    again = docked(make_napari_viewer())
    assert str(again.models_folder.value) == str(other)
    assert "elsewhere" in again.model.choices


def test_shortcut_runs_segment(make_napari_viewer, models_dir, monkeypatch):
    from napari.utils.key_bindings import coerce_keybinding

    viewer = make_napari_viewer()
    widget = docked(viewer)
    runs = []
    monkeypatch.setattr(SegmentWidget, "run", lambda self, *_: runs.append(self))
    viewer.keymap[coerce_keybinding(SEGMENT_SHORTCUT)](viewer)
    assert runs == [widget]


def test_widgets_are_in_the_layers_segment_menu(make_napari_viewer):
    from napari._app_model import get_app_model
    from npe2 import PluginManifest

    manifest = PluginManifest.from_distribution("napari-fmbff")
    items = {item.command for item in manifest.contributions.menus["napari/layers/segment"]}
    assert items == {"napari-fmbff.segment_widget", "napari-fmbff.finetune_widget"}
    make_napari_viewer()
    shown = {item.command.id for item in get_app_model().menus.get_menu("napari/layers/segment")
             if hasattr(item, "command")}
    assert items <= shown  # napari really lists them under Layers > Segment
