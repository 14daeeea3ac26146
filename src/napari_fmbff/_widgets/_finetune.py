"""The Fine-tune dock widget: learn from the user's corrected labels, save and register;
and Propagate: learn from the corrected / accepted slices of a stack, then segment the rest."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FloatSpinBox,
    Label,
    LineEdit,
    ProgressBar,
    PushButton,
    SpinBox,
)
from napari.layers import Labels
from napari.qt.threading import thread_worker
from napari.utils.notifications import show_error, show_info, show_warning

from ..data.store import CaseSource
from ..inference.progress import Cancel
from ..inference.runtime import DEVICES
from ..inference.stacks import (
    TRAIN_SLICES,
    plane_indices,
    plane_of,
    spatial_shape,
    training_planes,
)
from ..jobs.saved_labels import run_record
from ..training.config import MEDICAL_BASE, propagate_encoder
from ._common import (
    BROWSE,
    INTENSITY_DEFAULTS,
    OUTPUT_TAG,
    add_intensity_fields,
    displayed_plane,
    finest_level,
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
from ._proposal import proposal_of
from ._segment import PROVENANCE_TAG
from ._settings import apply_saved_models_folder, remember_fields
from ._state import FineTuneState, dock_fields
from ._store import StoreSection, announce_model
from ._tooltips import tooltip
from ._writers import carry_scan

#: Which slices Fine-tune learns from; the first is the default.
SLICE_CHOICES = ("slices you corrected",) + TRAIN_SLICES


def finetune_widget_defaults() -> dict:
    """Every remembered field of the widget and its default; the training values are
    napari_fmbff.training.FINETUNE_DEFAULTS (what `fmbff train --init` uses too)."""
    from ..training.loop import FINETUNE_DEFAULTS as d

    return {
        "model": "starter",
        **INTENSITY_DEFAULTS,
        "slices": SLICE_CHOICES[0],
        "epochs": d["epochs"],
        "lr": d["lr"],
        "freeze_encoder": d["freeze_encoder"],
        "val_fraction": d["val_fraction"],
        "tile_size": d["tile_size"],
        "batch_size": d["batch_size"],
        "device": "auto",
        "new_name": "finetuned",
        "keep_on_cancel": True,
    }


@dataclass(frozen=True)
class FineTuneJob:
    """What a Fine-tune run (without the store) takes from the dock, checked before it runs.

    ``intensity``: ``intensity_setting`` keywords; ``stack``: the whole stack the slices come
    from (a "volume" scope's range), or None."""

    base: object
    images: list
    masks: list
    cfg: object
    name: str
    keep_on_cancel: bool
    source: str
    intensity: dict
    stack: object = None


@dataclass(frozen=True)
class PropagateJob:
    """What Propagate takes from the dock (``FineTuneWidget._propagation_job``), checked
    before it runs: the image and Segment's output layer (``target``, of ``shape``), the
    slices learnt from, copies of the volume and labels, the store and the case's facts
    (``_store.StoreCaseJob``; None without the store), the base model, the recipe, the new
    model's name, the intensity choice and the threshold of Segment's run."""

    image: object
    target: object
    shape: tuple
    slices: list
    volume: np.ndarray
    labels: np.ndarray
    store: object
    case: object
    base: object
    cfg: object
    name: str
    intensity: dict
    threshold: float | None
    encoder: str = "model"

    @property
    def learner(self) -> str:
        """What learned, in words: the base model, or new layers on LiteMedSAM's encoder."""
        return LEARNERS[self.encoder] if self.encoder != "model" else str(self.base)


#: Propagate's choice of what learns (``PropagateRequest.encoder``), as the dock names it.
LEARNERS = {"model": "the model above, fine-tuned", "litemedsam": MEDICAL_BASE}


@thread_worker(ignore_errors=True)  # errors go to our own notification
def _fine_tune(job: FineTuneJob, stop: Cancel):
    """Worker: yields the training's ``Progress``; returns a train_run.Outcome (path None if
    nothing saved); ``stop`` (Cancel) ends it after the current step.

    The slices are normalised with ``job.intensity`` (a "volume" scope: the range of the
    whole ``job.stack`` they come from) and the new model stores the setting, so Segment's
    "model default" uses it again on the next image."""
    from ..inference.intensity import intensity_setting
    from ..model.checkpoint import load_model
    from ..model.normalization import default_normalization
    from ..model.registry import unique_model_path
    from ..training.loop import make_items
    from ..training.requests import ModelOut, RunControl
    from ..training.run import train_and_save

    net = load_model(job.base)
    setting = intensity_setting(default_normalization(net), **job.intensity)
    items = make_items(job.images, job.masks,
                       setting.for_stack(job.stack) if job.stack is not None else setting)
    out = ModelOut(unique_model_path(job.name), base=job.base,
                   training_data=f"napari layers {job.source} (user corrections)",
                   extra={"layout": "napari layers", "encoder_init": None,
                          "intensity": setting.describe()})
    return (yield from train_and_save(
        net, items, job.cfg, setting, out,
        RunControl(cancel=stop, keep_on_cancel=job.keep_on_cancel)))


@thread_worker(ignore_errors=True)  # errors go to our own notification
def _propagate(job: PropagateJob, stop: Cancel):
    """Worker: yields ``Progress`` ("train", then "slices"); returns the engine's
    ``PropagateResult``, or None when cancelled. On Cancel (``stop`` set) the engine is
    closed at its next step (``until_cancelled``), so nothing is trained further or saved;
    a model it had saved already is removed, so a cancelled propagation leaves the models
    folder as it was. With a
    ``job.store`` (and the ``job.case`` facts of ``StoreSection.store_job``) the slices join
    the store and the model trains on all of it; a cancel leaves the store as it was too."""
    from ..inference.intensity import intensity_setting
    from ..inference.progress import relay, until_cancelled
    from ..inference.runtime import cpus_kept_free
    from ..model.checkpoint import load_model
    from ..model.normalization import default_normalization
    from ..model.registry import unique_model_path
    from ..training.propagate import PropagateRequest, iter_propagate
    from ..training.requests import RunControl
    from ..training.store_training import StoreCase

    net = load_model(job.base)
    setting = intensity_setting(default_normalization(net), **job.intensity)
    out = unique_model_path(job.name)
    about = job.case.about if job.store is not None else None
    both = job.store is not None and job.encoder == "litemedsam"  # the store's model beside
    store_out = unique_model_path(f"{job.name}-store") if both else None
    request = PropagateRequest(
        job.volume, job.labels, out, slices=job.slices, normalization=setting, cfg=job.cfg,
        base=job.base if both else job.learner, image_name=job.image.name,
        threshold=job.threshold, encoder=job.encoder, store_model=store_out,
        extra={"layout": "napari layers", "encoder_init": None,
               "intensity": setting.describe()},
        store=None if job.store is None else StoreCase(job.store, CaseSource(
            source_meta=about.source_meta, spacing=about.spacing, model=about.model,
            identity=about.identity)))
    control = RunControl(cancel=stop, keep_on_cancel=False)
    answered = []  # the answer, written before the store's model learns the case

    def seen(step):
        if step.stage == "answer":
            answered.append(step.detail)
        return step

    # torch leaves a CPU to the window's own threads (it runs beside them in one process).
    with cpus_kept_free(1):
        result = yield from relay(until_cancelled(iter_propagate(net, request, control), stop),
                                  seen)
    if stop.is_set():  # an answer already written keeps the model that gave it
        for path in (store_out, *([] if answered else [out])):
            if path is not None:
                _forget_model(path)
        return None
    return result


def refuse_unsaid_empty(labels, planes) -> None:
    """A ValueError naming the first slice the user edited (not accepted) that holds no
    lesion: an erased slice, or a box that wrote nothing, must not teach "no lesion" unless
    the user said so (Accept slice on an empty slice is that statement)."""
    proposal = proposal_of(labels)
    for index in planes:
        index = tuple(int(i) for i in index)
        if index not in proposal.accepted and not np.asarray(plane_of(labels.data, index)).any():
            where = "the image" if not index else f"slice {index[0]}"
            raise ValueError(
                f"{where} of '{labels.name}' holds no lesion after your edits: draw a box or "
                "paint the lesion there, or, if it truly has none, press 'Accept slice' in "
                "Segment to teach it as lesion-free")


def _forget_model(path) -> None:
    """Remove a model this run saved (and its log and plot): the run was cancelled."""
    from ..model.registry import companions

    for file in (path, *companions(path)):
        file.unlink(missing_ok=True)


def last_propagation(layer):
    """The ``PropagateResult`` last written into ``layer`` (probabilities, per-slice
    uncertainty, the slices learnt from), or None."""
    return proposal_of(layer).propagation


#: The fields of the dock, top to bottom (each is made in one of the ``_create_*`` sections,
#: or by the store section, which declares its own); the live training plot comes below them.
FINETUNE_LAYOUT = (
    "image", "labels_layer", "model", "intensity", "intensity_low", "intensity_high",
    "slices", "epochs", "lr", "freeze_encoder", "val_fraction", "tile_size", "batch_size",
    "device", "new_name", "keep_on_cancel", *StoreSection.FIELDS, "propagate_encoder",
    "run_button", "propagate_button", "cancel_button",
    "progress",
    "status", "restore_button",
)


class FineTuneWidget(Container):
    """Fine-tune a model on an image and its corrected Labels layer; the corrections store's
    section (``store``, ``_store.StoreSection``) keeps them and trains on all of them."""

    def __init__(self, napari_viewer) -> None:
        d = finetune_widget_defaults()
        apply_saved_models_folder()  # where models are listed and saved (see Segment)
        self._viewer = napari_viewer
        self._worker = None
        self._stop = Cancel()  # the running worker's; set by Cancel
        self._answered = None  # the PropagateJob whose answer was written before its end
        self._said = ""  # the status line of the last propagation's answer
        self._closed = False
        self._labels_chosen = False  # the user picked the labels layer themselves
        self._following = False
        self.history: list[dict] = []
        self.last_outcome = None
        self._create_data_section()
        add_intensity_fields(self, d, tooltip("finetune", "intensity"))
        self._create_training_section(d)
        self._create_output_section(d)
        self._create_run_controls_section()
        self._create_settings_section()
        self.store = StoreSection(FineTuneState(
            viewer=napari_viewer, image=self.image, model=self.model,
            keep_on_cancel=self.keep_on_cancel, stop=self._stop, dock=lambda: self.native,
            closed=lambda: self._closed))
        super().__init__(widgets=dock_fields(self, FINETUNE_LAYOUT, (self.store,)))
        self._canvas, self._axes = self._make_plot()
        if self._canvas is not None:
            self.native.layout().addWidget(self._canvas)
        self.settings = remember_fields(self, "finetune", d)
        self._connect()
        tab_with_our_other_dock(self)
        self._follow_output()

    # ---- sections of the dock ------------------------------------------------------------

    def _create_data_section(self) -> None:
        """The image, its corrected labels and the model to start from."""
        self.image = ComboBox(label="image", choices=lambda _w: image_layers(self._viewer))
        self.labels_layer = ComboBox(
            label="labels (corrected)", nullable=True, value=None,
            choices=lambda _w: [(layer.name, layer) for layer in self._viewer.layers
                                if isinstance(layer, Labels)],
            tooltip=tooltip("finetune", "labels_layer"))
        self.model = ComboBox(label="base model",
                              choices=lambda _w: [c for c in model_choices({}) if c != BROWSE])

    def _create_training_section(self, d: dict) -> None:
        """Which slices are learnt from and how: epochs, learning rate, validation, device."""
        from ..training.config import PROPAGATE_CROP

        self.slices = ComboBox(label="slices", choices=list(SLICE_CHOICES), value=d["slices"],
                               tooltip=tooltip("finetune", "slices"))
        self.epochs = SpinBox(label="epochs", min=1, max=1000, value=d["epochs"])
        self.lr = FloatSpinBox(label="learning rate", min=1e-6, max=1e-1, step=1e-5,
                               value=d["lr"])
        self.lr.native.setDecimals(6)
        self.freeze_encoder = CheckBox(text="freeze encoder", value=d["freeze_encoder"])
        self.val_fraction = FloatSpinBox(
            label="validation fraction", min=0.05, max=0.5, step=0.05, value=d["val_fraction"],
            tooltip=tooltip("finetune", "val_fraction"))
        self.tile_size = SpinBox(label="tile size", min=64, max=1024, step=32,
                                 value=d["tile_size"], tooltip=tooltip(
                                     "finetune", "tile_size", propagate_crop=PROPAGATE_CROP))
        self.batch_size = SpinBox(label="batch size", min=1, max=64, value=d["batch_size"])
        self.device = ComboBox(label="device", choices=list(DEVICES), value=d["device"])

    def _create_output_section(self, d: dict) -> None:
        """The new model's name and what Cancel keeps."""
        self.new_name = LineEdit(label="new model name", value=d["new_name"])
        self.keep_on_cancel = CheckBox(text="on Cancel, keep the best model so far",
                                       value=d["keep_on_cancel"])

    def _create_run_controls_section(self) -> None:
        """Fine-tune, Propagate (and what it learns on), Cancel, the progress bar and the
        status line."""
        self.run_button = PushButton(text="Fine-tune")
        self.propagate_button = PushButton(text="Propagate through the volume",
                                           tooltip=tooltip("finetune", "propagate_button"))
        self.propagate_encoder = ComboBox(
            label="Propagate learns on", choices=[(v, k) for k, v in LEARNERS.items()],
            value=propagate_encoder(), tooltip=tooltip("finetune", "propagate_encoder"))
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.progress = ProgressBar(label="progress", min=0, max=1000, value=0)
        self.status = wrap(Label(value=""))

    def _create_settings_section(self) -> None:
        """Restore defaults."""
        self.restore_button = PushButton(text="Restore defaults",
                                         tooltip=tooltip("finetune", "restore_button"))

    def _connect(self) -> None:
        """Every signal the widget listens to: its own fields, the viewer's layers, the
        models (saved or a new folder, from any widget) and the dock closing."""
        self.restore_button.changed.connect(self.settings.restore_defaults)
        self.run_button.changed.connect(self.run)
        self.propagate_button.changed.connect(self.propagate)
        self.cancel_button.changed.connect(self.cancel)
        self.image.changed.connect(self._on_image_changed)
        self.labels_layer.changed.connect(self._on_labels_changed)
        on_layers_changed(self._viewer, self._refresh_layers)
        model_events.saved.connect(self._on_model_saved)
        model_events.folder_changed.connect(self._on_model_saved)
        self.native.destroyed.connect(self._on_destroyed)
        self.store.connect()

    # ---- the labels to learn from ----------------------------------------------------------

    def _refresh_layers(self, _event=None) -> None:
        if self._closed:
            return
        self._following = True
        try:
            self.image.reset_choices()
            self.labels_layer.reset_choices()
        finally:
            self._following = False
        self._follow_output()

    def _on_model_saved(self, _name: str) -> None:
        if not self._closed:
            self.model.reset_choices()

    def _on_image_changed(self, _value=None) -> None:
        self._labels_chosen = False  # a choice made for another image does not carry over
        self._follow_output()

    def _on_labels_changed(self, _value=None) -> None:
        if not self._following:
            self._labels_chosen = True

    def _follow_output(self) -> None:
        """Default the labels to Segment's output layer for the chosen image (else none)."""
        if self._labels_chosen and self.labels_layer.value in self._viewer.layers:
            return
        self._following = True
        try:
            self.labels_layer.value = output_layer(self._viewer, self.image.value, "labels")
        finally:
            self._following = False

    def _make_plot(self):
        """A live loss / validation-Dice plot (matplotlib's Qt canvas)."""
        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure

        fig = Figure(figsize=(3.6, 2.4), dpi=90, layout="constrained")
        canvas = FigureCanvasQTAgg(fig)
        canvas.setMinimumHeight(180)
        return canvas, fig.add_subplot(111)

    def _on_destroyed(self, _=None) -> None:
        self._closed = True
        self.cancel()

    # ---- running -------------------------------------------------------------------------

    def _training_data(self):
        data, labels, planes = self._training_selection()
        return ([np.asarray(plane_of(data, i)) for i in planes],
                [np.asarray(plane_of(labels.data, i)) > 0 for i in planes])

    def _training_selection(self):
        """(image data, labels layer, the planes to learn from), checked."""
        image, labels = self.image.value, self.labels_layer.value
        if image is None or labels is None:
            raise ValueError("choose an image layer and the Labels layer with your corrections")
        data = finest_level(image)
        shape = spatial_shape(data.shape, image.rgb)
        if tuple(labels.data.shape) != shape:
            raise ValueError(f"labels '{labels.name}' have shape {tuple(labels.data.shape)} but "
                             f"image '{image.name}' has {shape} (without colour)")
        current = displayed_plane(self._viewer, image, shape) if len(shape) > 2 else None
        mode = self.slices.value
        if mode == SLICE_CHOICES[0]:
            if labels.metadata.get(OUTPUT_TAG) != "labels":
                mode = TRAIN_SLICES[1]  # the user's own layer: every slice with labels
            else:
                return data, labels, self._corrected_planes(data, image.rgb, labels)
        return data, labels, training_planes(data.shape, image.rgb, labels.data, mode, current)

    def _corrected_planes(self, data, rgb, labels):
        """The slices of Segment's output layer that the user corrected (any edited pixel,
        a prompt's answer included) or accepted in Segment's review."""
        proposal = proposal_of(labels)
        planes = [i for i in plane_indices(data.shape, rgb) if proposal.corrected(i)]
        if not planes:
            raise ValueError(
                f"you have not corrected '{labels.name}' yet: paint, fill or erase in it, "
                "prompt it or accept a slice in Segment first (or choose 'all slices with "
                "labels' to train on it as it is)")
        refuse_unsaid_empty(labels, planes)
        return planes

    def run(self, _=None):
        if self._worker is not None:
            return None
        import_engine(self.status)
        try:
            data, labels, planes = self._training_selection()
            image = self.image.value
            intensity = intensity_choice(self, image)
            stack = data if len(spatial_shape(data.shape, image.rgb)) > 2 else None
            cfg = self._config()
            store = self.store.store_for_run()
            if store is not None:
                job = self.store.store_job(data, labels, planes)
            else:
                images = [np.asarray(plane_of(data, i)) for i in planes]
                masks = [np.asarray(plane_of(labels.data, i)) > 0 for i in planes]
        except ValueError as err:
            show_error(f"napari-fmbff: cannot fine-tune: {err}")
            return None
        try:
            name = self._model_name()
        except ValueError as err:
            show_error(f"napari-fmbff: {err}")
            return None
        source = f"'{self.image.value.name}' + '{self.labels_layer.value.name}'"
        worker = (self.store.start_store_fine_tune(store, job, cfg, name, intensity) if store else
                  _fine_tune(FineTuneJob(self.model.value, images, masks, cfg, name,
                                         self.keep_on_cancel.value, source, intensity, stack),
                             self._stop))
        worker.yielded.connect(self._on_event)
        worker.returned.connect(self._on_returned)
        return self._start(worker, "fine-tuning", f"Fine-tuning on {len(planes)} slice(s)"
                           + (self.store.store_status(store) if store else "") + "...")

    def _config(self):
        """The fine-tuning recipe from the widget's fields (a ValueError if no base model)."""
        from ..training.loop import finetune_config

        if self.model.value is None:
            raise ValueError("no base model; add one to the models folder or Browse... in Segment")
        return finetune_config(epochs=self.epochs.value, batch_size=self.batch_size.value,
                               lr=self.lr.value, tile_size=self.tile_size.value,
                               val_fraction=self.val_fraction.value,
                               freeze_encoder=self.freeze_encoder.value,
                               device=self.device.value)

    def _model_name(self) -> str:
        """The new model's name as a file name (a ValueError says what is wrong with it)."""
        from ..model.registry import sanitize_name

        return sanitize_name(self.new_name.value or "finetuned")

    def _start(self, worker, what: str, status: str):
        """Start a worker (Fine-tune or Propagate): the buttons, the progress and the status."""
        self._stop.clear()
        self.history = []
        worker.errored.connect(functools.partial(self._on_errored, what=what))
        worker.finished.connect(self._on_finished)
        self._worker = worker
        self._set_running(True)
        self.progress.value = 0
        self.status.value = status
        worker.start()
        return worker

    def _set_running(self, running: bool) -> None:
        self.run_button.enabled = self.propagate_button.enabled = not running
        self.cancel_button.enabled = running

    def cancel(self, _=None) -> None:
        """Stop after the current step (the worker then saves the best so far, if asked)."""
        if self._worker is not None:
            self._stop.set()

    def _on_event(self, progress) -> None:
        """A training ``Progress`` (its detail the ``TrainEvent``): the bar, the status and the
        plot."""
        if self._closed:
            return
        event, total = progress.detail, self.epochs.value
        if event.kind == "start":
            self.status.value = (f"Held-out Dice before: {event.val_dice:.3f}"
                                 if event.val_dice == event.val_dice else
                                 "Too few slices to hold any out: training on every "
                                 "correction for a fixed number of epochs.")
        elif event.kind == "step":
            self.progress.value = int(1000 * progress.fraction)
        elif event.kind == "epoch":
            self.history.append({"epoch": event.epoch, "train_loss": event.loss,
                                 "val_dice": event.val_dice})
            self.status.value = (f"epoch {event.epoch}/{total}: loss {event.loss:.3f}"
                                 + (f", held-out Dice {event.val_dice:.3f}"
                                    if event.val_dice == event.val_dice else ""))
            from ..training.plots import draw_training_curve

            draw_training_curve(self._axes, self.history)
            self._canvas.draw_idle()

    def _on_returned(self, outcome) -> None:
        if self._closed:
            return
        self.last_outcome = outcome
        self.progress.value = 1000
        self.status.value = outcome.message
        if outcome.path is None:
            if not outcome.result.cancelled:
                show_info(f"napari-fmbff: {outcome.message}")
            return
        self.last_saved = outcome.path
        show_info(f"napari-fmbff: {outcome.message} ({outcome.path})")
        announce_model(outcome)

    def _on_errored(self, err, what: str = "fine-tuning") -> None:
        if not self._closed:
            show_error(f"napari-fmbff: {what} failed: {err}")
            self.status.value = f"Failed: {err}"

    def _on_finished(self) -> None:
        self._worker = None
        if not self._closed:
            self._set_running(False)
            self.store.refresh_store()


    # ---- propagate through the volume -------------------------------------------------------

    def propagate(self, _=None):
        """Fine-tune the base model on the slices the user corrected or accepted, then segment
        every other slice of the stack into Segment's output layer (one undo step); returns
        the worker (None if nothing started: the reason is a notification)."""
        if self._worker is not None:
            return None
        try:
            job = self._propagation_job()
        except ValueError as err:
            show_error(f"napari-fmbff: cannot propagate: {err}")
            return None
        import_engine(self.status)
        worker = _propagate(job, self._stop)
        worker.yielded.connect(lambda step: self._on_propagate_step(step, job))
        worker.returned.connect(lambda result: self._on_propagated(job, result))
        slices = ", ".join(map(str, job.slices))
        doing = (f"fine-tuning '{job.base}'" if job.encoder == "model" else
                 f"training {job.learner}" + (f" (then the store's model, from '{job.base}', "
                                              "learns the case)" if job.store else ""))
        return self._start(worker, "propagation",
                           f"Propagating: {doing} on slice(s) {slices}...")

    def _propagation_job(self) -> PropagateJob:
        """What Propagate needs, checked before anything runs (a ValueError names what is
        wrong): a stack, Segment's output layer for it, the slices to learn from."""
        from ..training.loop import propagate_config
        from ..training.propagate import labelled_slices

        image = self.image.value
        if image is None:
            raise ValueError("choose the image layer (a stack of slices) to propagate through")
        data = finest_level(image)
        shape = spatial_shape(data.shape, image.rgb)
        if len(shape) != 3:
            raise ValueError(f"'{image.name}' is a single 2D image: Propagate needs a stack of "
                             "slices (use Segment, then Fine-tune, on one image)")
        target = output_layer(self._viewer, image, "labels")
        if target is None:
            raise ValueError(f"'{image.name}' has no Segment output layer: run Segment on the "
                             "whole stack, then correct or accept a slice")
        source = self.labels_layer.value or target
        for layer in {id(target): target, id(source): source}.values():
            if tuple(layer.data.shape) != shape:
                raise ValueError(f"labels '{layer.name}' have shape {tuple(layer.data.shape)} "
                                 f"but image '{image.name}' has {shape}; give this image's labels")
        own = source.metadata.get(OUTPUT_TAG) == "labels"
        chosen = self._checked_slices(source) if own else None
        slices = labelled_slices(source.data, shape[0], chosen)
        if own:
            refuse_unsaid_empty(source, [(z,) for z in slices])
        if not slices:
            raise ValueError(f"you have not corrected or accepted a slice of '{source.name}': "
                             "paint, fill or erase on one slice (or accept it) first")
        record = target.metadata.get(PROVENANCE_TAG)
        store, base = self.store.store_for_run(), self.model.value
        encoder = self.propagate_encoder.value
        case = self.store.store_job(data, source, [(z,) for z in slices]) if store else None
        if store is not None:
            from ..training.store_training import start_model

            base = start_model(store, base)
        return PropagateJob(
            image=image, target=target, shape=shape, slices=slices, volume=np.asarray(data),
            labels=np.array(source.data, copy=True), store=store, case=case, base=base,
            cfg=propagate_config(self._config()), name=self._model_name(),
            intensity=intensity_choice(self, image),
            threshold=record.get("threshold") if isinstance(record, dict) else None,
            encoder=encoder)

    @staticmethod
    def _checked_slices(labels) -> list[int]:
        """The slices of Segment's output layer the user corrected (any edited pixel) or
        accepted."""
        proposal = proposal_of(labels)
        return [z for z in range(proposal.edited.shape[0]) if proposal.corrected((z,))]

    def _on_propagate_step(self, progress, job=None) -> None:
        if self._closed:
            return
        if progress.stage == "answer":  # written now; the store's model learns the case next
            self._answered = job
            self._write_propagation(job, progress.detail)
            self.status.value += (" The store's model is learning this case now: check the "
                                  "slices meanwhile.")
            return
        if progress.stage == "train":
            self._on_event(progress)
            return
        self.progress.value = int(1000 * progress.fraction)
        doing = {"redrawing": "Redrawing with LiteMedSAM: slice",
                 "self-labelling": "Labelling the neighbouring slices: slice"}.get(
                     progress.detail if isinstance(progress.detail, str) else None,
                     "Segmenting slice")
        self.status.value = f"{doing} {progress.done}/{progress.total}..."

    def _on_propagated(self, job, result) -> None:
        """The propagation's end: its answer written (``_write_propagation``) unless it was
        written already, before the store's model learned the case; then the store's model
        announced (Segment offers the store's latest next) and the status says it all."""
        early, self._answered = self._answered is job, None
        if self._closed:
            return
        if result is None:
            self.status.value = (
                "Cancelled while the store's model learned this case: the propagated slices "
                "stay (Ctrl-Z takes them back) and the case did not join the store."
                if early else
                "Cancelled: no slice was changed and no model was saved.")
            return
        if not early:
            self._write_propagation(job, result)
        store_outcome = result.store_outcome
        if store_outcome is not None:
            if store_outcome.saved:
                announce_model(store_outcome)  # Segment offers the store's latest next
            self.status.value = f"{self._said} {result.notes[-1]}"
            show_info(f"napari-fmbff: {result.notes[-1]}")

    def _write_propagation(self, job, result) -> None:
        """Write the propagation into Segment's output layer as one undo step: the slices
        learnt from, corrected or accepted are left as they are, painted pixels too."""
        outcome, target = result.outcome, job.target
        if outcome.saved:
            self.last_saved = outcome.path
            announce_model(outcome)
        if target not in self._viewer.layers or tuple(target.data.shape) != job.shape:
            show_warning(f"napari-fmbff: '{target.name}' was removed or changed while "
                         "propagating; the slices were not written.")
            self.status.value = self._said = outcome.message
            return
        proposal = proposal_of(target)
        keep = set(result.slices) | set(self._checked_slices(target))
        planes = {(z,): result.labels[z] for z in range(job.shape[0]) if z not in keep}
        proposal.write(planes, keep_edits=True)
        # Segment's re-threshold and review follow the propagation's probabilities from now on.
        proposal.propagation = self.last_propagation = result
        proposal.probs = {(z,): result.probs[z] for z in range(job.shape[0])}
        model = outcome.path.stem if outcome.saved else str(job.base)
        target.metadata[PROVENANCE_TAG] = run_record(
            outcome.path if outcome.saved else job.base, target.metadata.get(PROVENANCE_TAG),
            base=job.learner, learned=result.learned, slices_labelled=list(result.slices),
            propagated=True, redrawn_by_litemedsam=list(result.redrawn),
            carried_past_ends_by_litemedsam=list(result.carried),
            emptied_by_litemedsam=list(result.dropped))
        carry_scan(job.image, target)  # Segment's layer has it; one made otherwise gets it
        self.progress.value = 1000
        self._say_propagated(job, result, len(planes), model)

    def _say_propagated(self, job, result, n_written: int, model: str) -> None:
        """The status line (and a notification) after a propagation, saying whether a model
        learned and which one answered the other slices."""
        slices = ", ".join(map(str, result.slices))
        if result.learned:
            how = (f"fine-tuned from '{job.base}'" if job.encoder == "model" else
                   f"{job.learner}, trained")
            text = (f"Propagated: '{model}' ({how} on slice(s) {slices}) segmented "
                    f"{n_written} other slice(s). {result.outcome.message}")
        else:
            text = (f"{result.outcome.message} The other {n_written} slice(s) got the base "
                    f"model '{model}''s answer.")
        if result.redrawn:
            text += f" LiteMedSAM redrew the lesion on {len(result.redrawn)} of them."
        text = " ".join([text, *result.notes])
        self.status.value = self._said = text
        show_info(f"napari-fmbff: {text}")
