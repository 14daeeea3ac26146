"""The corrections store in the Fine-tune dock: where corrections are kept, what is in it, and
a case removed (after a confirmation) or opened back into napari.

With "add to the store" on, Fine-tune and Propagate add the corrected slices of the image as a
case of the store and train on all of it (``training.store_training``), from the base model
the dock shows (resolved once, when the run starts). The store is the one for the image's
kind (grey or RGB) under the store folder (``data.store.open_store_for``); the dock says
which. A new model becomes the store's latest (Segment's default) only if it passes the
promotion gate; the status says whether it did. ``StoreSection`` is the section the
Fine-tune dock holds (``FineTuneWidget.store``): it makes its fields when built and wires
them in ``connect``.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, Container, FileEdit, Label, PushButton
from napari.qt.threading import thread_worker
from napari.utils.notifications import show_error, show_info, show_warning

from ..data.keys import SOURCE as SOURCE_TAG
from ..data.keys import STORE_CASE as STORE_CASE_TAG
from ..data.store import CaseSource
from ..inference.progress import Cancel
from ._common import model_events, wrap
from ._settings import remember_store_folder, store_folder
from ._state import FineTuneState
from ._tooltips import tooltip


@dataclass(frozen=True)
class StoreCaseJob:
    """What a case needs from the layers (``StoreSection.store_job``): the image (finest
    level), its labels, the corrected slices and what the store records about them."""

    data: np.ndarray
    labels: np.ndarray
    slices: list
    about: CaseSource


@thread_worker(ignore_errors=True)  # errors go to the widget's own notification
def _store_fine_tune(start, store, job: StoreCaseJob, cfg, name, keep_on_cancel,
                     stop: Cancel, intensity: dict):
    """Worker: stage the corrected slices as a case, train on the whole store from ``start``
    (the base model resolved when the run was started, and shown); yields the training's
    ``Progress``, returns the run's Outcome; ``stop`` ends it after the current step. The
    case joins the store when the run ends (see ``store_training.train_on_store``)."""
    from ..inference.intensity import intensity_setting
    from ..model.checkpoint import load_model
    from ..model.normalization import default_normalization
    from ..model.registry import unique_model_path
    from ..training.requests import ModelOut, RunControl
    from ..training.store_training import StoreRun, stage, train_on_store

    net = load_model(start)
    setting = intensity_setting(default_normalization(net), **intensity)
    pending = stage(store, job.data, job.labels, job.slices, setting, job.about)
    slices = ", ".join(map(str, job.slices))
    out = ModelOut(unique_model_path(name), base=start,
                   training_data=f"napari layer '{job.about.name}', slice(s) {slices}",
                   extra={"layout": "napari layers", "encoder_init": None,
                          "intensity": setting.describe()})
    return (yield from train_on_store(
        net, store, cfg, setting, out,
        RunControl(cancel=stop, keep_on_cancel=keep_on_cancel), StoreRun(pending)))


class StoreSection:
    """The store's fields and actions in the Fine-tune dock, built against its
    ``FineTuneState``."""

    #: Its fields in the dock, top to bottom (the case row holds the case and its buttons).
    FIELDS = ("store_dir", "use_store", "store_row", "store_summary")

    def __init__(self, state: FineTuneState) -> None:
        self.state = state
        self.use_store = CheckBox(text="add corrections to the store, train on all of it",
                                  value=True, tooltip=tooltip("finetune", "use_store"))
        self.store_dir = FileEdit(label="store", mode="d", value=str(store_folder()),
                                  tooltip=tooltip("finetune", "store_dir"))
        self.store_summary = wrap(Label(value=""))
        # One row for the cases (the dock must fit a 1600 x 1000 screen); their tooltips are
        # the "store" section's.
        self.store_case = ComboBox(label="case", choices=self._case_choices, nullable=True,
                                   tooltip=tooltip("store", "store_case"))
        self.open_case_button = PushButton(text="Open",
                                           tooltip=tooltip("store", "open_case_button"))
        self.remove_case_button = PushButton(text="Remove...",
                                             tooltip=tooltip("store", "remove_case_button"))
        self.store_row = Container(layout="horizontal", label="case", labels=False,
                                   widgets=[self.store_case, self.open_case_button,
                                            self.remove_case_button])
        self.store_row.margins = (0, 0, 0, 0)
        self.store_start = None  # the model a store run starts from (``store_for_run``)

    def connect(self) -> None:
        """Its own fields' signals and the dock's image (grey and RGB images: two stores);
        then the summary and the case list are read."""
        self.store_dir.changed.connect(self.refresh_store)
        self.store_dir.changed.connect(remember_store_folder)
        self.use_store.changed.connect(self.refresh_store)
        self.state.image.changed.connect(self.refresh_store)
        self.open_case_button.changed.connect(self.open_case)
        self.remove_case_button.changed.connect(self.remove_case)
        self.refresh_store()

    # ---- what is in the store -----------------------------------------------------------

    def open_store(self):
        """The store for the chosen image's kind (grey or RGB) under the Store field's folder
        (a StoreError, a ValueError, says what is wrong); a case it dropped on opening
        because its files were gone is said in a notification."""
        from ..data.store import StoreWarning, open_store_for

        rgb = bool(getattr(self.state.image.value, "rgb", False))
        with warnings.catch_warnings():  # said once, below (napari would show it again)
            warnings.simplefilter("ignore", StoreWarning)
            store = open_store_for(str(self.store_dir.value), rgb=rgb)
        for line in store.repairs:
            show_warning(f"napari-fmbff: {line}")
        return store

    def _case_choices(self, _widget=None) -> list:
        try:
            return [(case.describe(), case.id) for case in self.open_store().cases()]
        except ValueError:
            return []

    def refresh_store(self, _=None) -> None:
        """The summary line and the case list, read again from the folder."""
        if self.state.closed():
            return
        enabled = bool(self.use_store.value)
        for field in (self.store_dir, self.store_case, self.open_case_button,
                      self.remove_case_button):
            field.enabled = enabled
        try:
            store = self.open_store()
            latest = store.latest_model
            self.store_summary.value = (
                f"Store: {store.summary()}" + (f"; latest model '{latest.stem}' (Segment's "
                                               "default)" if latest else
                                               "; no model trained on it yet")
                + f". In use: {store.describe()}")
        except ValueError as err:
            self.store_summary.value = f"Store: {err}"
        self.store_case.reset_choices()
        if self.store_case.value is None and len(self.store_case.choices) > 1:
            self.store_case.value = self.store_case.choices[-1]  # the newest case
        if not enabled:
            self.store_summary.value = "Store not used: fine-tuning on this image only."

    def open_case(self, _=None):
        """The chosen case's image and labels as layers (uncorrected slices shown as 0);
        returns the two layers, or None."""
        case_id = self.store_case.value
        if case_id is None:
            show_error("napari-fmbff: choose a case of the store to open")
            return None
        try:
            image, labels, entry = self.open_store().read_case(case_id)
        except ValueError as err:
            show_error(f"napari-fmbff: cannot open the case: {err}")
            return None
        from ..data.store import IGNORE

        rgb = image.ndim == labels.ndim + 1
        spacing = entry.spacing or [1.0] * 3
        scale = tuple(spacing[-labels.ndim:]) if len(spacing) >= labels.ndim else None
        source = {"source": entry.source, "series_uid": entry.series_uid,
                  "modality": entry.modality}
        name = f"{entry.name or case_id} ({case_id})"
        meta = {SOURCE_TAG: source, STORE_CASE_TAG: {"id": case_id, **entry.to_json()}}
        image_layer = self.state.viewer.add_image(image, name=name, rgb=rgb, scale=scale,
                                             metadata=meta)
        shown = np.where(labels == IGNORE, 0, labels).astype(np.uint8)
        labels_layer = self.state.viewer.add_labels(shown, name=f"{name} labels", scale=scale,
                                               metadata={STORE_CASE_TAG: {"id": case_id}})
        return image_layer, labels_layer

    def remove_case(self, _=None) -> bool:
        """Remove the chosen case after the user confirms; True when removed."""
        case_id = self.store_case.value
        if case_id is None:
            show_error("napari-fmbff: choose a case of the store to remove")
            return False
        try:
            store = self.open_store()
            case = store.case(case_id)
            last = len(store.cases()) == 1
            text = (f"Remove {case.describe()} from the store {store.path}? Its files are "
                    "deleted; the next fine-tune will not learn from it."
                    + (" It is the store's last case: the store will be empty and the next "
                       "fine-tune starts from the base model." if last else ""))
            if not self._confirm(text):
                return False
            store.remove_case(case_id)
        except ValueError as err:
            show_error(f"napari-fmbff: cannot remove the case: {err}")
            return False
        show_info(f"napari-fmbff: removed {case.describe()}; the store now holds "
                  f"{store.summary()}")
        self.refresh_store()
        return True

    def _confirm(self, text: str) -> bool:
        from qtpy.QtWidgets import QMessageBox

        answer = QMessageBox.question(self.state.dock(), "Remove a case from the store", text,
                                      QMessageBox.StandardButton.Yes
                                      | QMessageBox.StandardButton.Cancel,
                                      QMessageBox.StandardButton.Cancel)
        return answer == QMessageBox.StandardButton.Yes

    # ---- fine-tune and propagate with the store ---------------------------------------------

    def store_for_run(self):
        """The open store when "add to the store" is on, else None; it must be usable before
        any work starts (a ValueError says why not). The model the run starts from is
        resolved here, once (``store_start``): what the dock shows is what is used."""
        if not self.use_store.value:
            return None
        from ..training.store_training import start_model

        store = self.open_store()
        if store.read_only:
            store.check_writable()  # one line: we never write into another data set
        self.store_start = start_model(store, self.state.model.value)
        return store

    def store_job(self, data, labels_layer, planes) -> StoreCaseJob:
        """What a case needs from the layers: the image (finest level), its labels, the
        corrected slices, where it came from (the reader's record, a case opened from the
        store) and which model proposed the labels."""
        from ._segment import PROVENANCE_TAG

        image = self.state.image.value
        if image.multiscale:
            raise ValueError(f"'{image.name}' is a multiscale image: the store keeps images "
                             "that fit in memory; untick the store to fine-tune on it alone")
        data = np.asarray(data)
        spatial = data.ndim - (1 if image.rgb else 0)
        if spatial not in (2, 3):
            raise ValueError(f"'{image.name}' has {spatial} dimensions: the store keeps 2D "
                             "images and (Z, Y, X) stacks; untick the store for this image")
        source_meta = dict(image.metadata.get(SOURCE_TAG) or {})
        opened = image.metadata.get(STORE_CASE_TAG) or {}
        record = labels_layer.metadata.get(PROVENANCE_TAG)
        scale = [float(s) for s in image.scale[-spatial:]]
        about = CaseSource(
            rgb=bool(image.rgb), name=image.name, identity=opened.get("identity"),
            source=str(source_meta.get("source") or image.source.path or image.name),
            source_meta=source_meta or None, spacing=scale,
            model=record.get("model") if isinstance(record, dict) else None)
        return StoreCaseJob(data, np.asarray(labels_layer.data),
                            sorted({int(p[0]) if p else 0 for p in planes}), about)

    def store_status(self, store) -> str:
        """What a store run learns from, for the status line: the store in use (its folder and
        kind of image) and the model it starts from (``store_start``)."""
        from pathlib import Path

        return (f" and the store's {store.summary()} ({store.describe()}), from "
                f"'{Path(self.store_start).stem}'")

    def start_store_fine_tune(self, store, job, cfg, name, intensity):
        """The store's Fine-tune worker (not started), from the model ``store_for_run``
        resolved."""
        return _store_fine_tune(self.store_start, store, job, cfg, name,
                                self.state.keep_on_cancel.value, self.state.stop, intensity)


def announce_model(outcome) -> None:
    """A saved model, to the other docks (their model lists): Segment selects it when it
    is the store's latest now (promoted, or a run without the store); a model kept but
    not promoted is listed, and Segment selects the store's latest (its default)."""
    chosen = outcome.path
    if outcome.promoted is False:
        chosen = outcome.store_latest or chosen
    model_events.saved.emit(chosen.stem)
