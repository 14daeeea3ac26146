"""The Fine-tune dock widget: learn from the user's corrected labels, save and register."""

from __future__ import annotations

import threading

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
from napari.utils.notifications import show_error, show_info

from ..inference.runtime import DEVICES
from ..inference.stacks import (
    TRAIN_SLICES,
    plane_indices,
    plane_of,
    spatial_shape,
    training_planes,
)
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
from ._settings import apply_saved_models_folder, remember_fields
from ._tooltips import tooltip

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


@thread_worker(ignore_errors=True)  # errors go to our own notification
def _fine_tune(base_ref, images, masks, cfg, name, keep_on_cancel, stop: threading.Event,
               source: str, intensity: dict, stack=None):
    """Worker: yields TrainEvents; returns a train_run.Outcome (path None if nothing saved).

    ``intensity``: ``intensity_setting`` keywords. The slices are normalised with it (a
    "volume" scope: the range of the whole ``stack`` they come from) and the new model stores
    the setting, so Segment's "model default" uses it again on the next image."""
    from ..inference.intensity import intensity_setting
    from ..model.checkpoint import load_model
    from ..model.normalization import default_normalization
    from ..model.registry import unique_model_path
    from ..training.loop import make_items
    from ..training.run import train_and_save

    net = load_model(base_ref)
    setting = intensity_setting(default_normalization(net), **intensity)
    items = make_items(images, masks, setting.for_stack(stack) if stack is not None else setting)
    return (yield from train_and_save(
        net, items, cfg, setting, unique_model_path(name), base=base_ref,
        training_data=f"napari layers {source} (user corrections)",
        keep_on_cancel=keep_on_cancel, should_stop=stop.is_set,
        extra={"layout": "napari layers", "encoder_init": None,
               "intensity": setting.describe()}))


#: The fields of the dock, top to bottom (each is made in one of the ``_create_*`` sections);
#: the live training plot comes below them.
FINETUNE_LAYOUT = (
    "image", "labels_layer", "model", "intensity", "intensity_low", "intensity_high",
    "slices", "epochs", "lr", "freeze_encoder", "val_fraction", "tile_size", "batch_size",
    "device", "new_name", "keep_on_cancel", "run_button", "cancel_button", "progress",
    "status", "restore_button",
)


class FineTuneWidget(Container):
    """Fine-tune a model on an image and its corrected Labels layer."""

    def __init__(self, napari_viewer) -> None:
        d = finetune_widget_defaults()
        apply_saved_models_folder()  # where models are listed and saved (see Segment)
        self._viewer = napari_viewer
        self._worker = None
        self._stop = threading.Event()
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
        super().__init__(widgets=[getattr(self, name) for name in FINETUNE_LAYOUT])
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
                                 value=d["tile_size"])
        self.batch_size = SpinBox(label="batch size", min=1, max=64, value=d["batch_size"])
        self.device = ComboBox(label="device", choices=list(DEVICES), value=d["device"])

    def _create_output_section(self, d: dict) -> None:
        """The new model's name and what Cancel keeps."""
        self.new_name = LineEdit(label="new model name", value=d["new_name"])
        self.keep_on_cancel = CheckBox(text="on Cancel, keep the best model so far",
                                       value=d["keep_on_cancel"])

    def _create_run_controls_section(self) -> None:
        """Fine-tune, Cancel, the progress bar and the status line."""
        self.run_button = PushButton(text="Fine-tune")
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
        self.cancel_button.changed.connect(self.cancel)
        self.image.changed.connect(self._on_image_changed)
        self.labels_layer.changed.connect(self._on_labels_changed)
        on_layers_changed(self._viewer, self._refresh_layers)
        model_events.saved.connect(self._on_model_saved)
        model_events.folder_changed.connect(self._on_model_saved)
        self.native.destroyed.connect(self._on_destroyed)

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
                return self._corrected_planes(data, image.rgb, labels)
        planes = training_planes(data.shape, image.rgb, labels.data, mode, current)
        images = [np.asarray(plane_of(data, i)) for i in planes]
        masks = [np.asarray(plane_of(labels.data, i)) > 0 for i in planes]
        return images, masks

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
        return ([np.asarray(plane_of(data, i)) for i in planes],
                [np.asarray(plane_of(labels.data, i)) > 0 for i in planes])

    def run(self, _=None):
        if self._worker is not None:
            return None
        import_engine(self.status)
        from ..training.loop import finetune_config

        try:
            images, masks = self._training_data()
            image = self.image.value
            intensity = intensity_choice(self, image)
            data = finest_level(image)
            stack = data if len(spatial_shape(data.shape, image.rgb)) > 2 else None
            if self.model.value is None:
                raise ValueError("no base model; add one to the models folder or Browse... in Segment")
            cfg = finetune_config(epochs=self.epochs.value, batch_size=self.batch_size.value,
                                  lr=self.lr.value, tile_size=self.tile_size.value,
                                  val_fraction=self.val_fraction.value,
                                  freeze_encoder=self.freeze_encoder.value,
                                  device=self.device.value)
        except ValueError as err:
            show_error(f"napari-fmbff: cannot fine-tune: {err}")
            return None
        from ..model.registry import sanitize_name

        try:
            name = sanitize_name(self.new_name.value or "finetuned")
        except ValueError as err:
            show_error(f"napari-fmbff: {err}")
            return None
        self._stop.clear()
        self.history = []
        source = f"'{self.image.value.name}' + '{self.labels_layer.value.name}'"
        worker = _fine_tune(self.model.value, images, masks, cfg, name,
                            self.keep_on_cancel.value, self._stop, source, intensity, stack)
        worker.yielded.connect(self._on_event)
        worker.returned.connect(self._on_returned)
        worker.errored.connect(self._on_errored)
        worker.finished.connect(self._on_finished)
        self._worker = worker
        self.run_button.enabled, self.cancel_button.enabled = False, True
        self.progress.value = 0
        self.status.value = f"Fine-tuning on {len(images)} slice(s)..."
        worker.start()
        return worker

    def cancel(self, _=None) -> None:
        """Stop after the current step (the worker then saves the best so far, if asked)."""
        if self._worker is not None:
            self._stop.set()

    def _on_event(self, event) -> None:
        if self._closed:
            return
        total = self.epochs.value
        if event.kind == "start":
            self.status.value = (f"Held-out Dice before: {event.val_dice:.3f}"
                                 if event.val_dice == event.val_dice else
                                 "Too few slices to hold any out: training on every "
                                 "correction for a fixed number of epochs.")
        elif event.kind == "step":
            self.progress.value = int(1000 * ((event.epoch - 1) + event.step / event.steps) / total)
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
        model_events.saved.emit(outcome.path.stem)

    def _on_errored(self, err) -> None:
        if not self._closed:
            show_error(f"napari-fmbff: fine-tuning failed: {err}")
            self.status.value = f"Failed: {err}"

    def _on_finished(self) -> None:
        self._worker = None
        if not self._closed:
            self.run_button.enabled, self.cancel_button.enabled = True, False
