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
from napari.layers import Image, Labels
from napari.qt.threading import thread_worker
from napari.utils.notifications import show_error, show_info

from ..stacks import TRAIN_SLICES, plane_of, spatial_shape, training_planes
from ._common import (
    BROWSE,
    displayed_plane,
    finest_level,
    image_layers,
    import_engine,
    model_choices,
    model_events,
)


@thread_worker(ignore_errors=True)  # errors go to our own notification
def _fine_tune(base_ref, images, masks, cfg, name, keep_on_cancel, stop: threading.Event):
    """Worker: yields TrainEvents; returns {"path", "result"} (path None if nothing saved)."""
    from ..cli import write_history
    from ..inference import default_normalization
    from ..models import load_model, save_model, unique_model_path
    from ..training import iter_train, make_items, recipe, split_items

    net = load_model(base_ref)
    norm = default_normalization(net)
    train, val = split_items(make_items(images, masks, norm), cfg.val_fraction, cfg.seed)
    result = yield from iter_train(net, train, val, cfg, norm, should_stop=stop.is_set)
    if result.cancelled and not keep_on_cancel:
        return {"path": None, "result": result}
    path = unique_model_path(name)
    save_model(result.net, path, metadata={
        "finetuned_from": str(base_ref), "training_data": "napari layers (user corrections)",
        "n_train": len(train), "n_val": len(val), "recipe": recipe(cfg),
        "initial_val_dice": result.initial_dice, "best_val_dice": result.best_dice,
        "best_epoch": result.best_epoch, "epochs_run": result.epochs_run,
        "cancelled": result.cancelled})
    write_history(result.history, path)
    return {"path": path, "result": result}


class FineTuneWidget(Container):
    """Fine-tune a model on an image and its corrected Labels layer."""

    def __init__(self, napari_viewer) -> None:
        self._viewer = napari_viewer
        self._worker = None
        self._stop = threading.Event()
        self._closed = False
        self.history: list[dict] = []
        self.image = ComboBox(label="image", choices=lambda _w: image_layers(self._viewer))
        self.labels_layer = ComboBox(label="labels (corrected)", choices=lambda _w: [
            (layer.name, layer) for layer in self._viewer.layers if isinstance(layer, Labels)])
        self.model = ComboBox(label="base model",
                              choices=lambda _w: [c for c in model_choices({}) if c != BROWSE])
        self.slices = ComboBox(label="slices", choices=list(TRAIN_SLICES), value=TRAIN_SLICES[1])
        self.epochs = SpinBox(label="epochs", min=1, max=1000, value=20)
        self.lr = FloatSpinBox(label="learning rate", min=1e-6, max=1e-1, step=1e-5, value=1e-4)
        self.lr.native.setDecimals(6)
        self.freeze_encoder = CheckBox(text="freeze encoder")
        self.val_fraction = FloatSpinBox(label="validation fraction", min=0.05, max=0.5,
                                         step=0.05, value=0.2)
        self.tile_size = SpinBox(label="tile size", min=64, max=1024, step=32, value=256)
        self.batch_size = SpinBox(label="batch size", min=1, max=64, value=4)
        self.device = ComboBox(label="device", choices=["auto", "cuda", "mps", "cpu"], value="auto")
        self.new_name = LineEdit(label="new model name", value="finetuned")
        self.keep_on_cancel = CheckBox(text="on Cancel, keep the best model so far", value=True)
        self.run_button = PushButton(text="Fine-tune")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.progress = ProgressBar(label="progress", min=0, max=1000, value=0)
        self.status = Label(value="")
        super().__init__(widgets=[
            self.image, self.labels_layer, self.model, self.slices, self.epochs, self.lr,
            self.freeze_encoder, self.val_fraction, self.tile_size, self.batch_size, self.device,
            self.new_name, self.keep_on_cancel, self.run_button, self.cancel_button, self.progress,
            self.status,
        ])
        self._canvas, self._axes = self._make_plot()
        if self._canvas is not None:
            self.native.layout().addWidget(self._canvas)
        if "starter" in self.model.choices:
            self.model.value = "starter"
        self.run_button.changed.connect(self.run)
        self.cancel_button.changed.connect(self.cancel)
        layers = self._viewer.layers
        for event in (layers.events.inserted, layers.events.removed, layers.events.reordered):
            event.connect(lambda _e: (self.image.reset_choices(), self.labels_layer.reset_choices()))
        model_events.saved.connect(lambda _n: self.model.reset_choices())
        self.native.destroyed.connect(self._on_destroyed)

    def _make_plot(self):
        """A live loss / validation-Dice plot (matplotlib's Qt canvas)."""
        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure

        fig = Figure(figsize=(4, 2.6), dpi=90, tight_layout=True)
        canvas = FigureCanvasQTAgg(fig)
        canvas.setMinimumHeight(200)
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
        planes = training_planes(data.shape, image.rgb, labels.data, self.slices.value, current)
        images = [np.asarray(plane_of(data, i)) for i in planes]
        masks = [np.asarray(plane_of(labels.data, i)) > 0 for i in planes]
        return images, masks

    def run(self, _=None):
        if self._worker is not None:
            return None
        import_engine()
        from ..training import TrainConfig

        try:
            images, masks = self._training_data()
            if self.model.value is None:
                raise ValueError("no base model; add one to the models folder or Browse... in Segment")
            cfg = TrainConfig(epochs=self.epochs.value, batch_size=self.batch_size.value,
                              lr=self.lr.value, tile_size=self.tile_size.value,
                              val_fraction=self.val_fraction.value,
                              freeze_encoder=self.freeze_encoder.value, device=self.device.value,
                              patience=max(self.epochs.value, 1))
        except ValueError as err:
            show_error(f"napari-fmbff: cannot fine-tune: {err}")
            return None
        from ..models import sanitize_name

        try:
            name = sanitize_name(self.new_name.value or "finetuned")
        except ValueError as err:
            show_error(f"napari-fmbff: {err}")
            return None
        self._stop.clear()
        self.history = []
        worker = _fine_tune(self.model.value, images, masks, cfg, name,
                            self.keep_on_cancel.value, self._stop)
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
            self.status.value = f"Held-out Dice before: {event.val_dice:.3f}"
        elif event.kind == "step":
            self.progress.value = int(1000 * ((event.epoch - 1) + event.step / event.steps) / total)
        elif event.kind == "epoch":
            self.history.append({"epoch": event.epoch, "train_loss": event.loss,
                                 "val_dice": event.val_dice})
            self.status.value = (f"epoch {event.epoch}/{total}: loss {event.loss:.3f}, "
                                 f"held-out Dice {event.val_dice:.3f}")
            from ..plots import draw_training_curve

            draw_training_curve(self._axes, self.history)
            self._canvas.draw_idle()

    def _on_returned(self, outcome) -> None:
        if self._closed:
            return
        result, path = outcome["result"], outcome["path"]
        self.progress.value = 1000
        before, after = result.initial_dice, result.best_dice
        if path is None:
            self.status.value = "Cancelled; no model saved."
            return
        self.status.value = (f"Saved '{path.stem}'. Held-out Dice {before:.3f} -> {after:.3f}"
                             + (" (no epoch beat the base model: its weights were kept)"
                                if result.best_epoch == 0 else ""))
        self.last_saved = path
        show_info(f"napari-fmbff: saved model '{path.stem}' ({path}); held-out Dice "
                  f"{before:.3f} -> {after:.3f}")
        model_events.saved.emit(path.stem)

    def _on_errored(self, err) -> None:
        if not self._closed:
            show_error(f"napari-fmbff: fine-tuning failed: {err}")
            self.status.value = f"Failed: {err}"

    def _on_finished(self) -> None:
        self._worker = None
        if not self._closed:
            self.run_button.enabled, self.cancel_button.enabled = True, False
