"""Widget settings kept across napari sessions, with "Restore defaults".

One JSON file, ``widgets.json`` in the user's config folder (platformdirs;
``FMBFF_CONFIG_DIR`` overrides it), with a section per widget: ``{"segment": {...},
"finetune": {...}, "models_folder": "..."}``. Each widget keeps its defaults in one dict;
only values that differ from that dict are saved, and a saved value that no longer fits (a
model that is gone, a value out of range) is skipped, so an old or hand-edited file never
breaks a widget.

napari >= 0.9 also shows the plugin's ``configurations`` (napari.yaml) in File > Preferences:
device, tile size, models folder and store folder. What a widget starts with, first that
applies: a value set in the widget itself (remembered here), napari's Preferences, the
built-in default. Folders: the environment variable (FMBFF_MODELS_DIR, FMBFF_STORE_DIR), a
folder chosen in a widget (remembered here), the Preferences, the user data folder. Without
plugin configurations (older napari) this file alone is used, as before.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from .._files import atomic_path
from ..inference.runtime import DEVICES
from ..model.registry import MODELS_DIR_ENV, use_models_dir

FILE_NAME = "widgets.json"
#: The models folder chosen in the Segment widget (section of the settings file).
MODELS_FOLDER_KEY = "models_folder"
#: The corrections store folder chosen in a widget (section of the settings file).
STORE_FOLDER_KEY = "store_folder"
#: Our plugin in napari and the key of our ``configurations`` entry in napari.yaml:
#: ``napari.settings.get_plugin_settings(PLUGIN_NAME).general.device``.
PLUGIN_NAME = "napari-fmbff"
PREFERENCES_KEY = "general"
#: Where a user finds them (said in every message about a bad value).
PREFERENCES_PLACE = "File > Preferences > FM-BFF-Net Lesion Segmentation"
#: Which widget fields start from which Preferences value (widget section -> field names).
PREFERRED_FIELDS = {"segment": ("device", "tile_size"), "finetune": ("device",)}
_said: set[str] = set()  # bad-value messages already shown this session


def settings_path() -> Path:
    folder = os.environ.get("FMBFF_CONFIG_DIR")
    if not folder:
        import platformdirs

        folder = platformdirs.user_config_dir("napari-fmbff", appauthor=False)
    return Path(folder) / FILE_NAME


def read_all() -> dict:
    try:
        data = json.loads(settings_path().read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def write_key(key: str, value) -> None:
    """Set one top-level key of the settings file (``None`` removes it); atomic."""
    data = read_all()
    if value is None:
        data.pop(key, None)
    else:
        data[key] = value
    try:
        with atomic_path(settings_path(), overwrite=True) as tmp:
            tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
    except OSError:  # a read-only home must not break the widget; settings are a comfort
        pass


def set_models_folder(folder) -> None:
    """Use ``folder`` for models from now on (this process: the engine reads
    FMBFF_MODELS_DIR) and remember it for the next session."""
    os.environ[MODELS_DIR_ENV] = str(folder)
    write_key(MODELS_FOLDER_KEY, str(folder))


def apply_saved_models_folder() -> None:
    """Where models are listed and saved: FMBFF_MODELS_DIR, else the folder chosen in the
    Segment widget in an earlier session, else the Preferences' models folder (passed to the
    engine with ``registry.use_models_dir``; it follows later changes there), else the
    default."""
    if not os.environ.get(MODELS_DIR_ENV):
        saved = read_all().get(MODELS_FOLDER_KEY)
        if isinstance(saved, str) and saved and Path(saved).expanduser().is_dir():
            os.environ[MODELS_DIR_ENV] = saved
    _use_preferred_models_folder()
    _follow_models_folder_preference()


def _preferences_section():
    """Our section of napari's Preferences (an evented model), or None where napari has no
    plugin configurations (napari < 0.9) or does not know this plugin."""
    try:
        from napari.settings import get_plugin_settings
    except ImportError:
        return None
    try:
        return getattr(get_plugin_settings(PLUGIN_NAME), PREFERENCES_KEY)
    except (KeyError, AttributeError):
        return None


def preferences() -> dict | None:
    """Our values in napari's Preferences (name -> value), or None without them."""
    section = _preferences_section()
    return None if section is None else section.model_dump()


def preferred_defaults(section: str, defaults: dict) -> dict:
    """``defaults`` with the fields of PREFERRED_FIELDS[section] taken from the Preferences;
    a bad value there is said in one notification and the built-in default kept."""
    prefs = preferences() or {}
    out = dict(defaults)
    for name in PREFERRED_FIELDS.get(section, ()):
        if name not in prefs or name not in defaults:
            continue
        problem = _preference_problem(name, prefs[name])
        if problem:
            _say(f"napari-fmbff Preferences: {problem}; using {defaults[name]!r} instead "
                 f"(change it in {PREFERENCES_PLACE})")
        else:
            out[name] = prefs[name]
    return out


def _preference_problem(name: str, value) -> str:
    if name == "device" and value not in DEVICES:
        return f"device {value!r} is not one of {', '.join(DEVICES)}"
    if name == "tile_size" and (not isinstance(value, int) or value < 32 or value % 32):
        return f"tile size {value!r} is not a positive multiple of 32"
    return ""


def preferred_folder(name: str) -> Path | None:
    """The folder ``name`` ("models_folder" or "store_folder") set in the Preferences; None
    when empty, without Preferences, or when a file is in the way (said in one line)."""
    value = (preferences() or {}).get(name) or ""
    if not isinstance(value, str) or not value.strip():
        return None
    folder = Path(value.strip()).expanduser()
    if folder.exists() and not folder.is_dir():
        label = name.replace("_", " ")
        _say(f"napari-fmbff Preferences: the {label} {folder} is a file, not a folder; using "
             f"the default folder instead (choose a folder in {PREFERENCES_PLACE})")
        return None
    return folder


def preferred_store_dir() -> Path | None:
    """The corrections store folder a user chose: in a widget (STORE_FOLDER_KEY of the
    settings file), else in the Preferences; None: the store's own default (which honours
    FMBFF_STORE_DIR, and should come first)."""
    saved = read_all().get(STORE_FOLDER_KEY)
    if isinstance(saved, str) and saved.strip():
        return Path(saved.strip()).expanduser()
    return preferred_folder("store_folder")


def store_folder() -> Path:
    """The store folder a widget starts with: $FMBFF_STORE_DIR (it wins, as FMBFF_MODELS_DIR
    does for models), else the one chosen in a widget or the Preferences
    (``preferred_store_dir``), else the user data folder's store (``data.store``)."""
    from ..data.store import STORE_DIR_ENV, default_store_dir

    if os.environ.get(STORE_DIR_ENV):
        return default_store_dir()
    return preferred_store_dir() or default_store_dir()


def remember_store_folder(folder) -> None:
    """A store folder chosen in a widget is the next widget's too (``STORE_FOLDER_KEY``)."""
    write_key(STORE_FOLDER_KEY, str(folder))


def _use_preferred_models_folder() -> None:
    use_models_dir(preferred_folder("models_folder"),
                   where=f"{PREFERENCES_PLACE} > Models folder")


def _follow_models_folder_preference() -> None:
    """A models folder changed in the Preferences is used at once: open model lists refresh."""
    section = _preferences_section()
    if section is not None:  # connecting the same callback twice is ignored
        section.events.models_folder.connect(_on_models_folder_preference)


def _on_models_folder_preference(_event=None) -> None:
    """Used at once when empty or an existing folder; anything else (a path being typed,
    key by key, or one not made yet) from the next widget docked, so no half-typed folder is
    created by the model lists' folder watch."""
    from ..model.registry import models_dir
    from ._common import model_events

    value = ((preferences() or {}).get("models_folder") or "").strip()
    if value and not Path(value).expanduser().is_dir():
        return
    _use_preferred_models_folder()
    model_events.folder_changed.emit(str(models_dir()))


def _say(message: str) -> None:
    """One notification per distinct message and session (two widgets docked say it once)."""
    if message in _said:
        return
    _said.add(message)
    from napari.utils.notifications import show_warning

    show_warning(message)


class PersistedSettings:
    """Save ``widgets`` (name -> magicgui value widget) under ``section`` on every change.

    ``defaults`` (name -> value) is the one place a widget's defaults live; ``skip(name,
    value)`` says which values are not worth remembering (e.g. a browsed file).
    """

    def __init__(self, section: str, widgets: dict, defaults: dict, skip=None) -> None:
        missing = set(defaults) - set(widgets)
        if missing:
            raise ValueError(f"defaults for unknown widgets: {sorted(missing)}")
        self.section, self.widgets, self.defaults = section, widgets, dict(defaults)
        self._skip = skip or (lambda _name, _value: False)
        self._loading = False

    def load(self) -> dict:
        """Apply the saved values (call before connecting the widget's own handlers)."""
        saved = read_all().get(self.section, {})
        applied = {}
        if not isinstance(saved, dict):
            return applied
        self._loading = True
        try:
            for name, value in saved.items():
                widget = self.widgets.get(name)
                if widget is None or name not in self.defaults or self._skip(name, value):
                    continue
                if hasattr(widget, "choices") and value not in _choice_values(widget):
                    continue
                try:
                    widget.value = value
                except (ValueError, TypeError):
                    continue
                applied[name] = value
        finally:
            self._loading = False
        return applied

    def connect(self) -> None:
        for widget in self.widgets.values():
            widget.changed.connect(self.save)

    def values(self) -> dict:
        """The fields set to something other than their default (what is worth saving: a
        field left at its default follows the default, e.g. a later change in Preferences)."""
        out = {}
        for name, default in self.defaults.items():
            value = self.widgets[name].value
            if value != default and not self._skip(name, value):
                out[name] = value
        return out

    def save(self, _=None) -> None:
        if not self._loading:
            write_key(self.section, self.values())

    def restore_defaults(self, _=None) -> None:
        """Every field back to its default; the saved section is removed."""
        self._loading = True
        try:
            for name, value in self.defaults.items():
                widget = self.widgets[name]
                if hasattr(widget, "choices") and value not in _choice_values(widget):
                    continue
                widget.value = value
        finally:
            self._loading = False
        write_key(self.section, None)


def remember_fields(widget, section: str, defaults: dict, skip=None) -> PersistedSettings:
    """The fields of ``widget`` named in ``defaults``, remembered under ``section``.

    The fields named in PREFERRED_FIELDS[section] start from napari's Preferences (also
    what Restore defaults goes back to), the default model is selected when it is listed, the
    saved values are applied (call this before connecting the widget's own handlers, so
    loading does not run them) and every change is saved from then on.
    """
    defaults = preferred_defaults(section, defaults)
    for name in PREFERRED_FIELDS.get(section, ()):
        field = getattr(widget, name, None)
        if field is not None and name in defaults and (
                not hasattr(field, "choices") or defaults[name] in _choice_values(field)):
            field.value = defaults[name]
    if defaults["model"] in widget.model.choices:
        widget.model.value = defaults["model"]
    settings = PersistedSettings(section, {name: getattr(widget, name) for name in defaults},
                                 defaults, skip)
    settings.load()
    settings.connect()
    return settings


def _choice_values(widget) -> list:
    return [c[1] if isinstance(c, tuple) else c for c in widget.choices]
