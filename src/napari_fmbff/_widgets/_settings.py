"""Widget settings kept across napari sessions, with "Restore defaults".

One JSON file, ``widgets.json`` in the user's config folder (platformdirs;
``FMBFF_CONFIG_DIR`` overrides it), with a section per widget: ``{"segment": {...},
"finetune": {...}, "models_folder": "..."}``. Each widget keeps its defaults in one dict;
only the keys of that dict are saved, and a saved value that no longer fits (a model that is
gone, a value out of range) is skipped, so an old or hand-edited file never breaks a widget.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from .._files import atomic_path
from ..model.registry import MODELS_DIR_ENV

FILE_NAME = "widgets.json"
#: The models folder chosen in the Segment widget (section of the settings file).
MODELS_FOLDER_KEY = "models_folder"


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
    """The folder chosen in an earlier session, unless the environment already names one."""
    if os.environ.get(MODELS_DIR_ENV):
        return
    saved = read_all().get(MODELS_FOLDER_KEY)
    if isinstance(saved, str) and saved and Path(saved).expanduser().is_dir():
        os.environ[MODELS_DIR_ENV] = saved


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
        out = {}
        for name in self.defaults:
            value = self.widgets[name].value
            if not self._skip(name, value):
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

    The default model is selected when it is listed, the saved values are applied (call this
    before connecting the widget's own handlers, so loading does not run them) and every
    change is saved from then on.
    """
    if defaults["model"] in widget.model.choices:
        widget.model.value = defaults["model"]
    settings = PersistedSettings(section, {name: getattr(widget, name) for name in defaults},
                                 defaults, skip)
    settings.load()
    settings.connect()
    return settings


def _choice_values(widget) -> list:
    return [c[1] if isinstance(c, tuple) else c for c in widget.choices]
