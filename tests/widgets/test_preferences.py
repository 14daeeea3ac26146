"""napari's Preferences (napari >= 0.9, the manifest's ``configurations``): device, tile size,
models folder and store folder; the widgets start from them, and without them (older napari)
the widgets' own settings file is used as before."""

import json
from pathlib import Path

import pytest

pytest.importorskip("napari")
# torch / timm (and triton) before any viewer's OpenGL: see _common._avoid_triton_llvm_clash.
import timm  # noqa: F401,E402

import napari_fmbff  # noqa: E402
from napari_fmbff import save_model  # noqa: E402
from napari_fmbff._widgets import _settings  # noqa: E402
from napari_fmbff._widgets._finetune import finetune_widget_defaults  # noqa: E402
from napari_fmbff._widgets._segment import SEGMENT_DEFAULTS  # noqa: E402
from napari_fmbff.inference.runtime import DEVICES  # noqa: E402
from napari_fmbff.model import registry  # noqa: E402

MANIFEST = Path(napari_fmbff.__file__).parent / "napari.yaml"


def docked(viewer, name="Segment"):
    """The plugin's dock opened from the Plugins menu, as a user opens it (napari hands it a
    proxy of the viewer). napari docks one of each a window: a new dock needs a new viewer."""
    _dock, widget = viewer.window.add_plugin_dock_widget("napari-fmbff", name)
    return widget


@pytest.fixture(autouse=True)
def _fresh(monkeypatch):
    """No folder told to the engine and no message said yet, before and after each test."""
    monkeypatch.setattr(registry, "_chosen", None)
    monkeypatch.setattr(_settings, "_said", set())


@pytest.fixture
def prefs():
    """Our section of napari's Preferences (a private file per test: tests/conftest.py)."""
    from napari.settings import get_plugin_settings

    return get_plugin_settings(_settings.PLUGIN_NAME).general


@pytest.fixture
def said(monkeypatch):
    seen = []
    monkeypatch.setattr("napari.utils.notifications.show_warning", seen.append)
    return seen


def test_manifest_declares_the_preferences():
    from npe2 import PluginManifest

    manifest = PluginManifest.from_file(MANIFEST)  # npe2 validates it
    section = manifest.contributions.configurations[_settings.PREFERENCES_KEY]
    props = section.properties
    assert set(props) == {"device", "tile_size", "models_folder", "store_folder"}
    assert props["device"].enum == list(DEVICES)
    assert props["device"].default == SEGMENT_DEFAULTS["device"]
    assert props["tile_size"].default == SEGMENT_DEFAULTS["tile_size"]
    assert props["models_folder"].default == props["store_folder"].default == ""
    assert _settings.PREFERRED_FIELDS["segment"] == ("device", "tile_size")


def test_napari_preferences_show_them(make_napari_viewer, qtbot, prefs):
    from napari._qt.dialogs.preferences_dialog import PreferencesDialog
    from pydantic import ValidationError

    assert (prefs.device, prefs.tile_size, prefs.models_folder, prefs.store_folder) == (
        "auto", 512, "", "")
    with pytest.raises(ValidationError):
        prefs.device = "tpu"
    make_napari_viewer()
    dialog = PreferencesDialog()
    qtbot.addWidget(dialog)
    pages = [dialog._list.item(i).text() for i in range(dialog._list.count())]
    assert "FM-BFF-Net Lesion Segmentation" in pages  # our page in File > Preferences
    assert _settings.PREFERENCES_PLACE.endswith(pages[-1])


def test_preferences_give_a_new_segment_widget_its_defaults(make_napari_viewer, models_dir,
                                                           prefs):
    prefs.device = "cpu"
    prefs.tile_size = 256
    viewer = make_napari_viewer()
    widget = docked(viewer)
    assert widget.device.value == "cpu" and widget.tile_size.value == 256
    finetune = docked(viewer, "Fine-tune")
    assert finetune.device.value == "cpu"
    assert finetune.tile_size.value == finetune_widget_defaults()["tile_size"]  # its crops

    widget.tile_size.value = 1024  # set in the widget: remembered, and it wins
    prefs.tile_size = 128
    prefs.device = "auto"
    again = docked(make_napari_viewer())
    assert again.tile_size.value == 1024
    assert again.device.value == "auto"  # never set in the widget: follows the Preferences
    again.restore_button.clicked.emit()
    assert again.tile_size.value == 128  # Restore defaults goes back to the Preferences
    assert "segment" not in json.loads(_settings.settings_path().read_text())


def test_models_folder_preference_lists_its_models(make_napari_viewer, tmp_path, tiny_net,
                                                   monkeypatch, prefs):
    monkeypatch.delenv("FMBFF_MODELS_DIR", raising=False)
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    save_model(tiny_net, first / "from-prefs.safetensors")
    save_model(tiny_net, second / "moved.safetensors")
    prefs.models_folder = str(first)
    widget = docked(make_napari_viewer())
    assert "from-prefs" in widget.model.choices
    assert registry.models_dir() == first and Path(widget.models_folder.value) == first

    for typed in (str(tmp_path / "s"), str(tmp_path / "sec")):  # typed key by key in the
        prefs.models_folder = typed  # Preferences: nothing made, nothing changed meanwhile
        assert not Path(typed).exists() and registry.models_dir() == first
    prefs.models_folder = str(second)  # an existing folder while the widget is open: used
    assert registry.models_dir() == second
    assert "moved" in widget.model.choices and "from-prefs" not in widget.model.choices
    monkeypatch.setenv("FMBFF_MODELS_DIR", str(first))  # the environment comes first
    assert registry.models_dir() == first


def test_bad_preferences_are_one_line_each(make_napari_viewer, models_dir, tmp_path, prefs,
                                           said):
    prefs.tile_size = 500
    viewer = make_napari_viewer()
    widget = docked(viewer)
    docked(make_napari_viewer())  # a second dock does not say it again
    assert widget.tile_size.value == SEGMENT_DEFAULTS["tile_size"]
    assert len(said) == 1 and "tile size 500 is not a positive multiple of 32" in said[0]
    assert "\n" not in said[0] and "Preferences" in said[0]

    a_file = tmp_path / "models.txt"
    a_file.write_text("not a folder")
    prefs.models_folder = str(a_file)
    prefs.store_folder = str(a_file)
    docked(make_napari_viewer())
    assert registry.models_dir() == models_dir  # FMBFF_MODELS_DIR (the fixture) first
    assert registry._chosen is None  # the file is never told to the engine
    assert _settings.preferred_store_dir() is None
    assert [s for s in said if str(a_file) in s and "is a file, not a folder" in s] == said[1:]
    assert len(said) == 3  # models folder, store folder


def test_store_folder_reader(prefs, tmp_path):
    assert _settings.preferred_store_dir() is None  # empty: the store's own default
    prefs.store_folder = str(tmp_path / "store")
    assert _settings.preferred_store_dir() == tmp_path / "store"
    _settings.write_key(_settings.STORE_FOLDER_KEY, str(tmp_path / "chosen"))
    assert _settings.preferred_store_dir() == tmp_path / "chosen"  # chosen in a widget wins


def test_without_plugin_preferences_the_settings_file_is_used(make_napari_viewer, models_dir,
                                                             tmp_path, tiny_net, monkeypatch,
                                                             prefs):
    import napari.settings

    prefs.device = "cpu"  # ignored below: this napari "has no" plugin configurations
    prefs.models_folder = str(tmp_path)
    monkeypatch.delattr(napari.settings, "get_plugin_settings")
    assert _settings.preferences() is None
    viewer = make_napari_viewer()
    widget = docked(viewer)
    assert widget.device.value == SEGMENT_DEFAULTS["device"]
    assert widget.tile_size.value == SEGMENT_DEFAULTS["tile_size"]
    assert registry.models_dir() == models_dir
    widget.tile_size.value = 256
    widget.device.value = "cpu"
    other = tmp_path / "other"
    other.mkdir()
    save_model(tiny_net, other / "kept.safetensors")
    widget.models_folder.value = other
    monkeypatch.delenv("FMBFF_MODELS_DIR")  # the next session
    again = docked(make_napari_viewer())
    assert again.tile_size.value == 256 and again.device.value == "cpu"
    assert "kept" in again.model.choices
    assert _settings.preferred_store_dir() is None


def test_the_store_folder_comes_from_the_preferences_and_a_widget_choice_is_kept(
        make_napari_viewer, tmp_path, monkeypatch):
    from napari.settings import get_plugin_settings

    monkeypatch.delenv("FMBFF_STORE_DIR")
    chosen = tmp_path / "ward-store"
    chosen.mkdir()
    get_plugin_settings("napari-fmbff").general.store_folder = str(chosen)
    viewer = make_napari_viewer()
    widget = docked(viewer, "Fine-tune")
    assert Path(str(widget.store.store_dir.value)) == chosen
    mine = tmp_path / "my-store"
    mine.mkdir()
    widget.store.store_dir.value = str(mine)  # the user picks another folder in the dock
    assert Path(str(docked(make_napari_viewer(), "Fine-tune").store.store_dir.value)) == mine
    monkeypatch.setenv("FMBFF_STORE_DIR", str(tmp_path / "env-store"))  # the variable wins
    env_store = docked(make_napari_viewer(), "Fine-tune").store.store_dir.value
    assert Path(str(env_store)) == tmp_path / "env-store"
