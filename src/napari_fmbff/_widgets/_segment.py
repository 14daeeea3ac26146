"""The Segment dock widget: pick an image, click Segment, get a Labels layer."""

from __future__ import annotations

import weakref
from pathlib import Path

import numpy as np
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FileEdit,
    FloatSlider,
    FloatSpinBox,
    Label,
    ProgressBar,
    PushButton,
    SpinBox,
)
from napari.layers import Image, Shapes
from napari.qt.threading import thread_worker
from napari.utils.notifications import show_error, show_info, show_warning

from ..data.keys import PROVENANCE as PROVENANCE_TAG
from ..inference.postprocess import DEFAULT_THRESHOLD, Postprocess, labels_from_planes
from ..inference.progress import Cancel
from ..inference.runtime import DEVICES
from ..inference.segmenter import DEFAULT_TILE_SIZE, SegmentSettings
from ..inference.stacks import plane_indices, spatial_shape, write_planes
from ..model.checkpoint import model_card
from ..model.registry import models_dir
from ._common import (
    BROWSE,
    IMAGE_TAG,
    INTENSITY_DEFAULTS,
    OUTPUT_TAG,
    SAMPLE_TAG,
    add_intensity_fields,
    displayed_plane,
    finest_level,
    geometry_of,
    image_layers,
    import_engine,
    intensity_choice,
    model_choices,
    model_events,
    on_layers_changed,
    output_layer,
    tab_with_our_other_dock,
    wrap,
)
from ._prompts import PromptsSection
from ._proposal import proposal_of
from ._review import ReviewSection
from ._settings import apply_saved_models_folder, remember_fields, set_models_folder
from ._state import SegmentState, dock_fields
from ._tooltips import STARTER_NOTE, tooltip
from ._writers import carry_scan

SCOPES = ("current slice", "whole stack")
#: What a click on an object of the output layer does (in napari's pan/zoom mode).
CLICK_MODES = ("nothing (paint as usual)", "removes it", "marks it to keep")
#: Layer metadata key of the settings and model a result came from.

#: Keyboard shortcut for Segment (napari key syntax), active while the canvas has focus.
SEGMENT_SHORTCUT = "Shift-S"
#: Every remembered field of the widget and its default ("Restore defaults" goes back here).
#: How the network runs comes from the engine's one SegmentSettings (as the CLI's flags).
_RUN = SegmentSettings.defaults()
SEGMENT_DEFAULTS = {
    "model": "starter",
    **INTENSITY_DEFAULTS,
    "device": _RUN["device"],
    "threshold": DEFAULT_THRESHOLD,
    "tile_size": _RUN["tile_size"] or DEFAULT_TILE_SIZE,
    "overlap": _RUN["overlap"],
    "batch_size": _RUN["batch_size"],
    "min_size": 0,
    "fill_holes": False,
    "split": True,
    "objects_3d": True,
    "add_probability": False,
    "tta": _RUN["tta"],
    "new_layer": False,
    "scope": SCOPES[0],
}
_starter_warned = False  # the "starter has never seen a patient" note, once per session


@thread_worker(ignore_errors=True)  # errors go to our own notification
def _segment_planes(model_ref, data, rgb, planes, options, intensity, cancel: Cancel):
    """Worker: load the model, then yield its ``Progress`` ("model": the device's name and
    the run's record) and the slices' ("slices"); returns the probabilities, or None once
    ``cancel`` is set (the run closed before its next batch). ``intensity``:
    ``intensity_setting`` keywords."""
    from ..inference.intensity import intensity_setting
    from ..inference.progress import Progress, until_cancelled
    from ..inference.segmenter import Segmenter
    from ..inference.stacks import iter_predict_planes
    from ..model.checkpoint import load_model
    from ..model.normalization import default_normalization

    net = load_model(model_ref)
    setting = intensity_setting(default_normalization(net), **intensity)
    stack = len(spatial_shape(data.shape, rgb)) > 2
    seg = Segmenter(net, normalization=setting.for_stack(data) if stack else setting, **options)
    yield Progress("model", 1, 1, {"device": seg.device_label, "record": {
        **seg.record(), "intensity_setting": setting.to_dict(),
        "intensity_choice": setting.describe()}})
    return (yield from until_cancelled(iter_predict_planes(seg, data, rgb, planes), cancel))


#: The fields of the dock, top to bottom (each is made in one of the ``_create_*`` sections,
#: or by the prompts and review sections, which declare theirs).
SEGMENT_LAYOUT = (
    "image", "model", "model_card", "intensity", "intensity_low", "intensity_high", "scope",
    "run_button", "cancel_button", "progress", "status",
    *PromptsSection.FIELDS, *ReviewSection.FIELDS,
    "click_mode", "keep_button", "region_button", "edits",
)
#: The expert settings, in the collapsed "Advanced settings" section below the day's controls
#: (as cellpose and micro-sam keep theirs), so what a clinician uses fits on one screen.
SEGMENT_ADVANCED = (
    "device", "device_used", "threshold", "min_size", "fill_holes", "split", "objects_3d",
    "tile_size", "overlap", "batch_size", "tta", "add_probability", "new_layer",
    "models_folder", "restore_button",
)


class SegmentWidget(Container):
    """Segment the selected image with an FM-BFF-Net model into a Labels layer; its sections
    answer box and click prompts (``prompts``, ``_prompts.PromptsSection``) and point to the
    slice to check next (``review``, ``_review.ReviewSection``)."""

    def __init__(self, napari_viewer) -> None:
        self._viewer = napari_viewer
        self._browsed: dict[str, Path] = {}
        apply_saved_models_folder()  # before the model list is read
        self._worker = None
        self._cancel = Cancel()  # the running worker's; set by Cancel
        self._closed = False
        self._result = None  # the last run: labels layer, probabilities, prob layer
        self._redraw_worker = None  # a re-threshold's LiteMedSAM redraw (_redraw_then_show)
        self._redraw_again = False  # the settings changed while it ran
        self._job = None  # the run in progress: its layer, settings and provenance
        self._marked: dict = {}  # plane index -> mask of objects marked to keep
        self._click_callback = _weak_callback(self, "_on_click")  # layers must not keep us
        d = SEGMENT_DEFAULTS
        self._create_model_section()
        add_intensity_fields(self, d, tooltip("segment", "intensity"))
        self._create_running_section(d)
        self._create_postprocessing_section(d)
        self._create_outputs_section(d)
        self._create_run_controls_section()
        self._create_corrections_section()
        state = SegmentState(
            viewer=napari_viewer, image=self.image, model=self.model, device=self.device,
            model_ref=self._model_ref, result=lambda: self._result,
            labels_layer_for=self._labels_layer_for, labels_changed=self._refresh_review,
            closed=lambda: self._closed)
        self.prompts = PromptsSection(state)
        self.review = ReviewSection(state)
        self._create_settings_section()
        # Scrollable: with prompts and review the fields are taller than a 1000 px screen.
        super().__init__(widgets=dock_fields(self, SEGMENT_LAYOUT, (self.prompts, self.review)),
                         scrollable=True)
        self.advanced = self._add_advanced_section()
        self.settings = remember_fields(
            self, "segment", d,
            skip=lambda name, value: name == "model" and (value == BROWSE or value in self._browsed))
        self._connect()
        self._show_card()
        self._watch_models_folder()
        self._bind_shortcut()
        tab_with_our_other_dock(self)
        self._follow_active()

    def _add_advanced_section(self):
        """The expert settings in a collapsed section at the end of the dock (superqt's
        QCollapsible, napari's own widget library); returns the section's Qt widget."""
        from superqt import QCollapsible

        inner = Container(widgets=[getattr(self, name) for name in SEGMENT_ADVANCED])
        inner.margins = (0, 0, 0, 0)
        section = QCollapsible("Advanced settings")
        section.addWidget(inner.native)
        section.collapse(animate=False)
        self._advanced_fields = inner  # keeps the magicgui container alive with its widgets
        self._widget._layout.addWidget(section)
        return section

    @property
    def native(self):
        """The scroll area around the fields: napari docks ``native``, which for a scrollable
        magicgui container is the inner widget, so the dock would lose its scroll bar."""
        return self.root_native_widget

    def _refresh_review(self) -> None:
        """The review section's sparkline and line again (the labels changed)."""
        self.review.refresh()

    # ---- sections of the dock ------------------------------------------------------------

    def _create_model_section(self) -> None:
        """The image to segment, the model and what the model was trained on."""
        self.image = ComboBox(label="image", choices=lambda _w: image_layers(self._viewer),
                              tooltip=tooltip("segment", "image"))
        self.model = ComboBox(label="model", choices=lambda _w: model_choices(self._browsed),
                              tooltip=tooltip("segment", "model", models_dir=models_dir()))
        self.model_card = wrap(Label(label="trained on", value=""))

    def _create_running_section(self, d: dict) -> None:
        """How the network runs: device, tiles, batches, test-time augmentation, scope."""
        self.device = ComboBox(label="device", choices=list(DEVICES), value=d["device"])
        self.device_used = wrap(Label(label="device in use", value="(not run yet)"))
        self.tile_size = SpinBox(label="tile size", min=64, max=4096, step=32, value=d["tile_size"])
        self.overlap = FloatSpinBox(label="overlap", min=0.0, max=0.5, step=0.05,
                                    value=d["overlap"])
        self.batch_size = SpinBox(label="batch size", min=1, max=256, value=d["batch_size"])
        self.tta = CheckBox(text="test-time augmentation (flips, 4x slower)", value=d["tta"])
        self.scope = ComboBox(label="scope", choices=list(SCOPES), value=d["scope"],
                              tooltip=tooltip("segment", "scope"))

    def _create_postprocessing_section(self, d: dict) -> None:
        """Probabilities to labels; each of these re-thresholds the last result at once."""
        self.threshold = FloatSlider(label="threshold", min=0.0, max=1.0, step=0.01,
                                     value=d["threshold"], tooltip=tooltip("segment", "threshold"))
        self.min_size = SpinBox(label="min object size (px)", min=0, max=10**8,
                                value=d["min_size"])
        self.fill_holes = CheckBox(text="fill holes", value=d["fill_holes"])
        self.split = CheckBox(text="split into separate objects", value=d["split"])
        self.objects_3d = CheckBox(text="objects across slices (3D ids)", value=d["objects_3d"],
                                   tooltip=tooltip("segment", "objects_3d"))

    def _create_outputs_section(self, d: dict) -> None:
        """Which layers a run writes."""
        self.add_probability = CheckBox(text="also add the probability map",
                                        value=d["add_probability"])
        self.new_layer = CheckBox(text="new labels layer for each run", value=d["new_layer"])

    def _create_run_controls_section(self) -> None:
        """Segment, Cancel, the progress bar and the status line."""
        self.run_button = PushButton(text="Segment", tooltip=tooltip(
            "segment", "run_button", shortcut=SEGMENT_SHORTCUT.replace("-", "+")))
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.progress = ProgressBar(label="progress", min=0, max=1000, value=0)
        self.status = wrap(Label(value=""))

    def _create_corrections_section(self) -> None:
        """Quick corrections of the output layer: click to remove or keep, rectangles."""
        self.click_mode = ComboBox(label="click on an object", choices=list(CLICK_MODES),
                                   value=CLICK_MODES[0], tooltip=tooltip("segment", "click_mode"))
        self.keep_button = PushButton(text="Keep only marked objects")
        self.region_button = PushButton(text="Keep only inside rectangles")
        self.edits = wrap(Label(value=""))

    def _create_settings_section(self) -> None:
        """The models folder and Restore defaults."""
        self.models_folder = FileEdit(label="models folder", mode="d", value=models_dir(),
                                      tooltip=tooltip("segment", "models_folder"))
        self.restore_button = PushButton(text="Restore defaults",
                                         tooltip=tooltip("segment", "restore_button"))

    def _connect(self) -> None:
        """Every signal the widget listens to: its own fields, the viewer's layers, the
        models (saved or a new folder, from any widget) and the dock closing."""
        self.restore_button.changed.connect(self.restore_defaults)
        self.models_folder.changed.connect(self._on_models_folder)
        self.models_folder.line_edit.native.editingFinished.connect(
            lambda: self._on_models_folder(self.models_folder.value, typed=True))
        self.model.changed.connect(self._on_model_changed)
        self.run_button.changed.connect(self.run)
        self.cancel_button.changed.connect(self.cancel)
        self.click_mode.changed.connect(self._on_click_mode)
        self.keep_button.changed.connect(self.keep_marked)
        self.region_button.changed.connect(self.restrict_to_rectangles)
        for w in (self.threshold, self.min_size, self.fill_holes, self.split, self.objects_3d):
            w.changed.connect(self._rethreshold)
        on_layers_changed(self._viewer, self._refresh_layers)
        self._viewer.layers.selection.events.active.connect(self._follow_active)
        model_events.saved.connect(self._on_model_saved)
        model_events.folder_changed.connect(self._on_folder_changed)
        self.native.destroyed.connect(self._on_destroyed)
        self.prompts.connect()
        self.review.connect(self.native.destroyed)

    # ---- settings ------------------------------------------------------------------------

    def restore_defaults(self, _=None) -> None:
        """Every remembered field back to SEGMENT_DEFAULTS (the models folder stays)."""
        self.settings.restore_defaults()
        self._show_card()
        self._rethreshold()

    def _on_models_folder(self, value, typed: bool = False) -> None:
        """A folder chosen in the widget: remembered, and used by the engine from now on.

        Typed paths count once editing ends (Enter or leaving the field), not per key.
        """
        if not typed and self.models_folder.line_edit.native.hasFocus():
            return
        folder = Path(value).expanduser()
        if not str(value) or folder == models_dir():
            return
        if not folder.is_dir():
            self.edits.value = f"Models folder {folder} does not exist; choose an existing folder."
            return
        set_models_folder(folder)
        model_events.folder_changed.emit(str(folder))
        self.edits.value = f"Models folder: {folder} (fine-tuned models are saved here)."

    def _on_folder_changed(self, folder: str) -> None:
        """Any Segment widget changed the models folder: list and watch the new one."""
        if self._closed:
            return
        if Path(self.models_folder.value) != Path(folder):
            self.models_folder.value = folder
        self._watch_models_folder()
        self.refresh_models()

    def _bind_shortcut(self) -> None:
        """SEGMENT_SHORTCUT on this viewer runs Segment while this widget lives."""
        ref = weakref.ref(self)

        def segment_shortcut(_viewer):
            widget = ref()
            if widget is not None and not widget._closed:
                widget.run()

        self._viewer.bind_key(SEGMENT_SHORTCUT, segment_shortcut, overwrite=True)
        self._shortcut = segment_shortcut

    # ---- choices -------------------------------------------------------------------------

    def _refresh_layers(self, _event=None) -> None:
        self.image.reset_choices()

    def _follow_active(self, _event=None) -> None:
        active = self._viewer.layers.selection.active
        # Our own probability maps are Images too, but never what the user wants to segment.
        if isinstance(active, Image) and not active.metadata.get(OUTPUT_TAG):
            self._refresh_layers()
            self.image.value = active

    def refresh_models(self, select: str | None = None) -> None:
        current = self.model.value
        self.model.reset_choices()
        target = select if select in self.model.choices else current
        if target in self.model.choices:
            self.model.value = target

    def _watch_models_folder(self) -> None:
        """Models copied into the folder by other programs show up without a restart."""
        from qtpy.QtCore import QFileSystemWatcher

        try:
            folder = models_dir(create=True)
        except OSError:
            return
        old = getattr(self, "_watcher", None)
        if old is not None:
            old.deleteLater()
        self._watcher = QFileSystemWatcher([str(folder)], self.native)
        self._watcher.directoryChanged.connect(lambda _path: self.refresh_models())

    def _on_model_saved(self, name: str) -> None:
        if not self._closed:
            self.refresh_models(select=name)

    def _show_card(self) -> None:
        ref = self._model_ref()
        self.model_card.value = "" if ref is None else model_card(ref)

    def _on_model_changed(self, value) -> None:
        if value != BROWSE:
            self._show_card()
            return
        from qtpy.QtWidgets import QFileDialog

        path, _ = QFileDialog.getOpenFileName(self.native, "Choose an FM-BFF-Net model",
                                              str(models_dir()), "Models (*.safetensors *.pt *.pth)")
        if path:
            self.add_model_file(path)
        else:
            self.refresh_models()

    def add_model_file(self, path) -> str:
        """Add a model file to the list (what Browse... does) and select it."""
        path = Path(path)
        name = f"{path.stem} (file)"
        self._browsed[name] = path
        self.refresh_models(select=name)
        return name

    def _model_ref(self):
        value = self.model.value
        if value in (None, BROWSE):
            return None
        return self._browsed.get(value, value)

    # ---- running -------------------------------------------------------------------------

    def run(self, _=None):
        """Start segmenting in a worker thread; returns the worker (None if nothing started)."""
        if self._worker is not None:
            return None
        layer = self.image.value
        if layer is None:
            show_error("napari-fmbff: no image layer to segment. Open an image, or a sample "
                       "from File > Open Sample > napari-fmbff.")
            return None
        model_ref = self._model_ref()
        if model_ref is None:
            show_error("napari-fmbff: no model chosen. Pick one in 'model', or Browse... for a "
                       ".safetensors file, or fine-tune one in the Fine-tune widget.")
            return None
        data = finest_level(layer)
        try:
            planes = plane_indices(data.shape, layer.rgb, self._current_index(layer, data))
        except ValueError as err:
            show_error(f"napari-fmbff: {err}")
            return None
        if layer.multiscale:
            show_info("napari-fmbff: multiscale image; segmenting its finest level.")
        options = dict(device=self.device.value, tile_size=self.tile_size.value,
                       overlap=self.overlap.value, batch_size=self.batch_size.value,
                       tta=self.tta.value)
        try:
            intensity = intensity_choice(self, layer)
        except ValueError as err:
            show_error(f"napari-fmbff: intensity: {err}")
            return None
        import_engine(self.status)
        self._note_starter(model_ref, layer)
        self._cancel = Cancel()
        worker = _segment_planes(model_ref, data, layer.rgb, planes, options, intensity,
                                 self._cancel)
        job = {"layer": layer, "shape": spatial_shape(data.shape, layer.rgb),
               "model": str(model_ref), "options": options, "record": {}}
        self._job = job
        worker.yielded.connect(self._on_yielded)
        worker.returned.connect(lambda probs: self._on_returned(job, probs))
        worker.errored.connect(self._on_errored)
        worker.finished.connect(self._on_finished)
        self._worker = worker
        self.run_button.enabled, self.cancel_button.enabled = False, True
        self.progress.value = 0
        self._set_status(f"Segmenting {len(planes)} slice(s) of '{layer.name}'...")
        worker.start()
        return worker

    def _note_starter(self, model_ref, layer) -> None:
        """Once per session: the bundled starter on a real image is only a first draft."""
        global _starter_warned
        if _starter_warned or str(model_ref) != "starter" or layer.metadata.get(SAMPLE_TAG):
            return
        _starter_warned = True
        show_info(STARTER_NOTE)

    def _current_index(self, layer, data):
        """The displayed slice of a stack (None for 'whole stack' and 2D images)."""
        shape = spatial_shape(data.shape, layer.rgb)
        if len(shape) == 2 or self.scope.value == SCOPES[1]:
            return None
        return displayed_plane(self._viewer, layer, shape)

    def _on_destroyed(self, _=None) -> None:
        """The dock (or the viewer) closed: stop the worker and ignore what it still sends."""
        self._closed = True
        self.cancel()
        try:  # give the key back, unless a newer Segment widget took it
            from napari.utils.key_bindings import coerce_keybinding

            if self._viewer.keymap.get(coerce_keybinding(SEGMENT_SHORTCUT)) is self._shortcut:
                self._viewer.bind_key(SEGMENT_SHORTCUT, None)
        except Exception:  # the viewer may already be gone
            pass

    def cancel(self, _=None) -> None:
        if self._worker is not None:
            self._cancel.set()
            self._set_status("Cancelling after the current batch...")

    def _on_yielded(self, item) -> None:
        if self._closed:
            return
        if item.stage == "model":
            self.device_used.value = item.detail["device"]
            if self._job is not None:
                self._job["record"] = item.detail["record"]
            return
        self.progress.value = int(1000 * item.fraction)
        self.progress.label = f"slice {item.done + 1}/{item.total}"

    def _on_errored(self, err) -> None:
        if self._closed:
            return
        show_error(f"napari-fmbff: segmentation failed: {err}")
        self._set_status(f"Failed: {err}")

    def _on_finished(self) -> None:
        self._worker = None
        if not self._closed:
            self.run_button.enabled, self.cancel_button.enabled = True, False

    def _set_status(self, text: str) -> None:
        if not self._closed:
            self.status.value = text

    # ---- results -------------------------------------------------------------------------

    def _on_returned(self, job, probs: dict | None) -> None:
        if self._closed:
            return
        if probs is None:  # cancelled
            self._set_status("Cancelled; no layer was changed.")
            return
        layer = job["layer"]
        if layer not in self._viewer.layers:
            show_warning("napari-fmbff: the image layer was removed while segmenting; "
                         "the result was dropped.")
            return
        labels_layer = self._labels_layer_for(layer, job["shape"])
        labels_layer.metadata[PROVENANCE_TAG] = self._provenance(job)
        prob_layer = None
        if self.add_probability.value:
            prob_layer = self._probability_layer_for(layer, job["shape"])
            write_planes(prob_layer.data, probs)
            prob_layer.metadata[PROVENANCE_TAG] = {
                k: v for k, v in self._provenance(job).items()
                if k not in ("threshold", "min_size", "fill_holes", "split", "objects")}
            prob_layer.refresh()
        self._result = {"labels": labels_layer, "probs": probs, "prob_layer": prob_layer}
        proposal = proposal_of(labels_layer)
        proposal.probs, proposal.propagation = {}, None  # a new run replaces a propagation
        self._rethreshold()
        self.progress.value = 1000
        n = sum(int(labels_layer.data[i].max() > 0) for i in probs)
        kept = proposal_of(labels_layer).n_edited
        intensity = job["record"].get("intensity_choice")
        self._set_status(f"Done: '{labels_layer.name}' ({n}/{len(probs)} slice(s) with objects"
                         + (f"; intensity: {intensity}" if intensity else "") + ")."
                         + (f" {kept} pixel(s) you edited were kept as you left them."
                            if kept else ""))

    def _provenance(self, job) -> dict:
        """What the result records: the model (name, file, SHA-256), how it ran, the intensity
        setting, the post-processing, the image, the package version and the date (the same
        keys as the files ``fmbff segment`` writes, plus the widget's own;
        ``inference.provenance``)."""
        from ..inference.provenance import provenance

        return provenance({"model": job["model"], **job["options"], **job["record"]}, {
            "threshold": self.threshold.value, "min_size": self.min_size.value,
            "fill_holes": self.fill_holes.value, "split": self.split.value,
            "objects": self._objects_label(job["shape"]), "image": job["layer"].name},
            source=job["layer"].name)

    def _objects_label(self, shape) -> str:
        if not self.split.value:
            return "mask"
        return "3D objects" if self._joins_slices(shape) else "per slice"

    def _joins_slices(self, shape) -> bool:
        """Whether labels join across the slices of a (Z, Y, X) stack (3D ids)."""
        return self.split.value and self.objects_3d.value and len(shape) == 3

    def _labels_layer_for(self, image, shape):
        layer = output_layer(self._viewer, image, "labels", shape=shape)
        if layer is None or self.new_layer.value:
            layer = self._viewer.add_labels(
                np.zeros(shape, np.int32), name=f"{image.name} fmbff",
                metadata={OUTPUT_TAG: "labels", IMAGE_TAG: image.name}, **geometry_of(image))
        carry_scan(image, layer)  # the scan's geometry, so the labels save on its grid
        if self._click_callback not in layer.mouse_drag_callbacks:  # a layer of an earlier dock
            layer.mouse_drag_callbacks.append(self._click_callback)
        return layer

    def _probability_layer_for(self, image, shape):
        existing = output_layer(self._viewer, image, "probability", Image, shape)
        if existing is not None:
            return existing
        return self._viewer.add_image(
            np.zeros(shape, np.float32), name=f"{image.name} fmbff probability",
            colormap="magma", blending="additive", contrast_limits=(0.0, 1.0), opacity=0.6,
            metadata={OUTPUT_TAG: "probability", IMAGE_TAG: image.name}, **geometry_of(image))

    def _rethreshold(self, _=None) -> None:
        """Labels from the kept probabilities, with no new network call (one undo step).

        Pixels the user painted, filled or erased keep their values; removed objects stay
        removed; rectangles keep restricting (see ``_proposal``). After a propagation (when
        Propagate answered after Segment's last run) the labels follow Propagate's own rule
        on its probabilities (``_propagated``): at the threshold, min size and hole filling
        Propagate ran with (Segment's threshold, min size 0, no hole filling) this gives
        exactly the labels Propagate wrote.
        """
        result = self._result
        if not result or result["labels"] not in self._viewer.layers:
            return
        post = Postprocess(self.threshold.value, self.min_size.value, self.fill_holes.value,
                           labels=self.split.value, per_slice=not self.objects_3d.value)
        proposal = proposal_of(result["labels"])
        if proposal.propagation is not None and proposal.probs:
            proposals = _propagated(proposal, result["labels"], post)
            drew = proposal.propagation.redrawn or proposal.propagation.ends
            if drew and self.image.value is not None:
                self._redraw_then_show(proposal, proposals, result["labels"])
                return
        else:
            proposals = labels_from_planes(result["probs"], post)
            if post.labels and proposal.n_edited:
                proposals = _with_user_ids(proposals, proposal, result["labels"],
                                           joined=post.joins(len(result["labels"].data.shape) - 2))
        self._show_rethresholded(proposal, proposals, result["labels"])

    def _show_rethresholded(self, proposal, proposals, layer) -> None:
        """Write a re-threshold's planes (one undo step) and say how they were made."""
        proposal.show(proposals)
        record = layer.metadata.get(PROVENANCE_TAG)
        if isinstance(record, dict):  # the layer says how its current labels were made
            record.update(threshold=self.threshold.value, min_size=self.min_size.value,
                          fill_holes=self.fill_holes.value, split=self.split.value,
                          objects=self._objects_label(layer.data.shape))
        self._refresh_review()

    def _redraw_then_show(self, proposal, proposals, layer) -> None:
        """After a redrawn propagation, a re-threshold's planes are redrawn by LiteMedSAM as
        Propagate's were, in a worker thread (a slice LiteMedSAM has not encoded lately costs
        seconds), then written. One redraw runs at a time: a change made meanwhile runs the
        re-threshold again once it is done, so the layer ends at the last settings."""
        if self._redraw_worker is not None:
            self._redraw_again = True
            return
        order = sorted(proposals)
        zs = _propagated_slices(proposal, order)
        data = finest_level(self.image.value)
        worker = _redraw_planes(np.stack([np.asarray(data[i]) for i in order]),
                                np.stack([proposals[i] for i in order]), zs,
                                proposal.propagation.ends)

        def returned(volume) -> None:
            if self._closed or layer not in self._viewer.layers or self._redraw_again:
                return
            self._show_rethresholded(proposal, {i: volume[k] for k, i in enumerate(order)},
                                     layer)
            self.edits.value = "Re-thresholded; LiteMedSAM redrew the propagated slices."

        def finished() -> None:
            self._redraw_worker = None
            if self._redraw_again and not self._closed:
                self._redraw_again = False
                self._rethreshold()

        worker.returned.connect(returned)
        worker.errored.connect(self._on_errored)
        worker.finished.connect(finished)
        self._redraw_worker, self._redraw_again = worker, False
        self.edits.value = "Redrawing the propagated slices with LiteMedSAM..."
        worker.start()

    # ---- quick corrections ---------------------------------------------------------------

    def _current_labels(self):
        """The output labels layer of the chosen image (None if it has none)."""
        return output_layer(self._viewer, self.image.value, "labels")

    def _on_click_mode(self, mode) -> None:
        labels = self._current_labels()
        if labels is not None and mode != CLICK_MODES[0]:
            labels.mode = "pan_zoom"  # painting keeps its own mode; clicks need pan/zoom
            self._viewer.layers.selection.active = labels
        self._marked = {}

    def _on_click(self, layer, event):
        """Mouse callback of our output layers: a click (not a drag) on an object."""
        if self._closed or self.click_mode.value == CLICK_MODES[0] or layer.mode != "pan_zoom":
            return
        start = layer.world_to_data(event.position)
        dragged = False
        yield
        while event.type == "mouse_move":
            dragged = True
            yield
        if not dragged:
            self.click_object(layer, start)

    def click_object(self, layer, point) -> None:
        """What a click at data ``point`` of an output layer does, by ``click_mode``."""
        proposal = proposal_of(layer)
        found = proposal.object_at(point)
        if found is None:
            return
        index, mask = found
        if self.click_mode.value == CLICK_MODES[1]:
            n = proposal.remove(index, mask)
            self.edits.value = f"Removed an object ({n} px); Ctrl-Z brings it back."
        elif self.click_mode.value == CLICK_MODES[2]:
            self._marked[index] = self._marked.get(index, np.zeros_like(mask)) | mask
            n = sum(int(_count_objects(m)) for m in self._marked.values())
            self.edits.value = f"{n} object(s) marked; 'Keep only marked objects' removes the rest."

    def keep_marked(self, _=None) -> None:
        labels = self._current_labels()
        if labels is None or not self._marked:
            show_info("napari-fmbff: choose 'click on an object: marks it to keep', click the "
                      "objects to keep, then this button.")
            return
        proposal = proposal_of(labels)
        removed = sum(proposal.keep_only(index, mask) for index, mask in self._marked.items())
        self._marked = {}
        self.edits.value = f"Kept the marked objects; removed {removed} px (one Ctrl-Z each slice)."

    def restrict_to_rectangles(self, _=None) -> None:
        """First click: a rectangles layer to draw in. Next: keep proposals inside them."""
        image, labels = self.image.value, self._current_labels()
        if labels is None:
            show_info("napari-fmbff: segment first; then draw rectangles to keep.")
            return
        shapes = output_layer(self._viewer, image, "region", Shapes)
        if shapes is None or not len(shapes.data):
            if shapes is None:
                shapes = self._viewer.add_shapes(
                    name=f"{image.name} fmbff region", ndim=labels.ndim, edge_color="yellow",
                    face_color="transparent", edge_width=2,
                    metadata={OUTPUT_TAG: "region", IMAGE_TAG: image.name}, **geometry_of(labels))
            shapes.mode = "add_rectangle"
            self._viewer.layers.selection.active = shapes
            self.edits.value = (f"Draw rectangles on '{shapes.name}', then click "
                                "'Keep only inside rectangles' again.")
            return
        region = shapes.to_masks(labels.data.shape).any(axis=0)
        n = proposal_of(labels).restrict(region)
        shapes.data = []
        self._viewer.layers.selection.active = labels
        self.edits.value = f"Kept the proposal inside the rectangles ({n} px removed; Ctrl-Z undoes)."


def _propagated(proposal, layer, post: Postprocess) -> dict:
    """The planes after a propagation (``proposal.propagation``), re-thresholded as Propagate
    makes them (``postprocess.propagated_labels``: the same rule, so the same labels at the
    same settings): from Propagate's probabilities (``proposal.probs``) under ``post``, the
    slices it learned from as the layer holds them, the model's objects joined to the user's
    ids (only those connected to them when Propagate kept only those). When Propagate redrew
    its slices with LiteMedSAM, the widget redraws these too (``_redraw_planes``). Objects
    are 3D, as Propagate's; unticking "split" gives their 0/1 mask."""
    from ..inference.postprocess import propagated_labels

    order = sorted(proposal.probs)
    volume = propagated_labels(np.stack([proposal.probs[i] for i in order]),
                               np.stack([np.asarray(layer.data[i]) for i in order]),
                               _propagated_slices(proposal, order), post,
                               proposal.propagation.connected)
    return {index: volume[k] for k, index in enumerate(order)}


def _propagated_slices(proposal, order) -> list[int]:
    """The positions in ``order`` (the proposal's plane indices) of the slices Propagate
    learned from."""
    at = {index: k for k, index in enumerate(order)}
    return [at[(z,)] for z in proposal.propagation.slices if (z,) in at]


@thread_worker(ignore_errors=True)  # errors go to our own notification
def _redraw_planes(volume, labels, zs, ends: bool):
    """Worker: ``propagate.redraw_labels`` (LiteMedSAM from each object's box, and with
    ``ends`` the lesions carried past their ends, as Propagate did; embeddings cached per
    slice) on re-thresholded labels; returns the labels."""
    from ..training.propagate import redraw_labels

    labels, *_ = yield from redraw_labels(volume, labels, zs, ends=ends)
    return labels


def _with_user_ids(proposals: dict, proposal, layer, joined: bool) -> dict:
    """The proposed planes with every object that touches pixels the user painted taking the
    id the user gave them (``postprocess.join_user_ids``): one lesion, one id, whether the
    model or the brush drew a pixel. Whole-stack 3D ids are joined over the stack, else plane
    by plane."""
    from ..inference.postprocess import join_user_ids

    order = sorted(proposals)
    if joined and len(order) > 1:
        current = np.stack([np.asarray(layer.data[i]) for i in order])
        user = np.stack([proposal.edited[i] for i in order])
        volume = join_user_ids(current, user, np.stack([proposals[i] for i in order]) > 0)
        return {index: volume[k] for k, index in enumerate(order)}
    return {i: join_user_ids(np.asarray(layer.data[i]), proposal.edited[i], proposals[i] > 0)
            for i in order}


def _weak_callback(widget, method: str):
    """A layer mouse callback that calls ``widget.method`` while the widget lives."""
    ref = weakref.ref(widget)

    def callback(layer, event):
        target = ref()
        if target is not None:
            yield from getattr(target, method)(layer, event)

    return callback


def _count_objects(mask) -> int:
    from scipy import ndimage as ndi

    return ndi.label(mask)[1]
