"""The one train-and-save run that ``fmbff train`` and the Fine-tune widget both use.

``train_and_save`` splits the items (``training.split_items``: with too little data nothing
is held out and every corrected pixel is trained on), runs ``training.iter_train`` (its
events pass through, so a CLI bar or a GUI curve can follow), and saves the model with one
set of provenance keys, its log CSV and loss curve. It saves nothing when training did not
change the model (no epoch beat the base on held-out data), when it was cancelled and the
caller did not ask to keep the best so far, or on DDP ranks other than 0. The returned
``Outcome`` says which, in words a user can read.

``check_output`` is its one check of the model path (callers that load data first call it
before that too, so a bad path is said before any work); ``build_network`` makes the network
to train from ``fmbff train``'s choices.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass, field
from pathlib import Path

from .requests import ModelOut, RunControl


@dataclass
class Outcome:
    result: object                 # training.TrainResult
    path: Path | None              # the saved model, or None
    message: str                   # what happened, one or two sentences
    n_train: int = 0
    n_val: int = 0
    notes: list = field(default_factory=list)
    # A run on the corrections store (``store_training.train_on_store`` / ``settle``):
    store_items: object = None         # store_training.StoreItems: what it trained on
    promoted: bool | None = None       # the new model became the store's latest (None: no gate)
    store_latest: Path | None = None   # the store's latest model once the run settled

    @property
    def saved(self) -> bool:
        return self.path is not None


def device_name(device) -> str:
    """``cuda`` -> the card's name; otherwise the device type."""
    from ..inference.runtime import resolve_device

    dev = resolve_device(str(device))
    if dev.type == "cuda":
        import torch

        return torch.cuda.get_device_name(dev)
    return dev.type


#: Why a run has no held-out score, unless its caller says otherwise (``score_summary``).
TOO_FEW_TO_HOLD_OUT = "too few corrected images to hold any out"


def score_summary(result, why_none_held_out: str = TOO_FEW_TO_HOLD_OUT) -> str:
    """Before -> after, on held-out data when there was any, else on the training pixels
    (``why_none_held_out`` says why there was none)."""
    if result.validated:
        return f"held-out Dice {result.initial_dice:.3f} -> {result.best_dice:.3f}"
    return (f"no held-out score ({why_none_held_out}; every corrected "
            f"pixel was trained on); Dice on your corrections {result.fit_before:.3f} -> "
            f"{result.fit_after:.3f}")


def check_output(out, overwrite: bool = False, resuming: bool = False) -> Path:
    """``out`` as a Path, or refused: not a .safetensors name, an existing model (unless
    ``overwrite``), or a log / loss plot it would replace (unless ``overwrite``, or
    ``resuming``: a resumed run's files are its own). Nothing is written."""
    from .._files import refuse_existing
    from .reports import check_history_free

    out = Path(out)
    if out.suffix != ".safetensors":
        raise ValueError(f"--out must end in .safetensors, got {out.name}")
    refuse_existing(out, overwrite, "choose another name or pass --overwrite")
    check_history_free(out, overwrite or resuming)
    return out


def build_network(*, init=None, config=None, encoder: str = "tf_efficientnetv2_s",
                  imagenet: bool = False, ablate=(), encoder_init=None, seed: int = 0):
    """The network ``fmbff train`` trains, and notes for the user: the model ``init``
    (fine-tuning), else a new FM-BFF-Net from ``config`` (a JSON file of ModelConfig fields;
    default: ``encoder``), its encoder from ImageNet (``imagenet``) or a timm state dict
    (``encoder_init``), the modules named in ``ablate`` switched off (the paper's ablation).
    ``seed`` fixes the new weights. A bad config is a ValueError naming the file."""
    import torch

    from ..model import FMBFFNet, ModelConfig
    from ..model.checkpoint import load_encoder_weights, load_model

    if init:
        return load_model(init), []
    fields = _config_fields(config) if config else {"encoder": encoder}
    fields.update(encoder_weights="imagenet" if imagenet else None)
    fields.update({flag: False for flag in ablate})
    torch.manual_seed(seed)  # the seed fixes the initial weights too
    try:
        net = FMBFFNet(ModelConfig.from_dict(fields))
    except (TypeError, ValueError) as err:
        raise ValueError(f"--config {config}: {_first_line(err)}" if config
                         else _first_line(err)) from None
    if not encoder_init:
        return net, []
    n = load_encoder_weights(net, encoder_init)
    return net, [f"encoder initialised from {encoder_init} ({n} tensors)"]


def _config_fields(path) -> dict:
    """The ModelConfig fields in the JSON file ``path``, or a one-line ValueError naming it."""
    import json

    try:
        fields = json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:
        why = err.strerror if isinstance(err, OSError) and err.strerror else _first_line(err)
        raise ValueError(f"--config {path}: {why}; give a JSON file of ModelConfig "
                         "fields") from None
    if not isinstance(fields, dict):
        raise ValueError(f"--config {path}: a JSON object of ModelConfig fields "
                         f"({{\"encoder\": ...}}) is needed, got a {type(fields).__name__}")
    return fields


def _first_line(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[0] if lines else type(err).__name__


def train_and_save(net, items, cfg, normalization, out: ModelOut,
                   control: RunControl | None = None,
                   why_none_held_out: str = TOO_FEW_TO_HOLD_OUT):
    """Generator: yields the training's ``Progress``; returns an ``Outcome``.

    ``normalization``: the intensity setting the items were made with; the model stores it,
    so segmenting with the model's default applies it again (a "volume" scope stays a scope:
    each new volume gets its own range). The items carry their own resolved ranges.
    ``out`` (``ModelOut``): the model path, checked with its log / plot before training
    starts, so a run never ends in a refusal to write (nothing is replaced unless
    ``out.overwrite``); ``out.training_data`` says what the model learned from (a folder, or
    the napari layers), ``out.base`` the model it started from (None: new weights),
    ``out.extra`` adds provenance keys. ``control`` (``RunControl``): stop, keep on cancel,
    resume, checkpoints, DDP. ``why_none_held_out``: the reason the messages give when
    nothing was held out (``score_summary``).
    """
    from .loop import iter_train, split_items

    control = control or RunControl()
    resuming = control.resume_state is not None
    path = check_output(out.path, out.overwrite, resuming=resuming)
    train, val = split_items(items, cfg.val_fraction, cfg.seed)
    result = yield from iter_train(net, train, val, cfg, normalization, control)
    counts = dict(n_train=len(train), n_val=len(val))
    scores = score_summary(result, why_none_held_out)
    if not control.is_main:
        return Outcome(result, None, "not the main process; rank 0 saves", **counts)
    if result.cancelled and not control.keep_on_cancel:
        return Outcome(result, None, "Cancelled; no model saved.", **counts)
    if not result.changed:
        return Outcome(result, None, (
            f"Training did not change the model: no epoch beat the base on held-out data "
            f"({scores}). Nothing was saved; try more corrected slices, more epochs or "
            "another learning rate."), **counts)
    return _save(result, path, cfg, normalization, out, control, counts, scores)


def _save(result, path: Path, cfg, normalization, out: ModelOut, control: RunControl,
          counts: dict, scores: str) -> Outcome:
    """Save a run's model with its record, log and loss curve."""
    from ..model.checkpoint import save_model
    from .loop import recipe
    from .reports import write_history

    ddp = control.ddp
    metadata = {
        "training_data": out.training_data,
        "finetuned_from": str(out.base) if out.base else None,
        **counts, "recipe": recipe(cfg), "validated": result.validated,
        "initial_val_dice": result.initial_dice if result.validated else None,
        "best_val_dice": result.best_dice if result.validated else None,
        "best_epoch": result.best_epoch, "epochs_run": result.epochs_run,
        "fit_before": result.fit_before, "fit_after": result.fit_after,
        "stopped_early": result.stopped_early, "cancelled": result.cancelled,
        "train_seconds": round(result.seconds, 1), "device": str(cfg.device),
        "device_name": device_name(cfg.device), "processes": ddp.world_size if ddp else 1,
        "cpu_threads": result.cpu_threads,
        "trained": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        **out.extra,
        "normalization": normalization.to_dict(),
    }
    # The base model's own record (its data, its scores) describes the base, not this model.
    inherited = dict(getattr(result.net, "metadata", None) or {})
    base_record = inherited.pop("provenance", {}) or {}
    result.net.metadata = inherited
    if base_record.get("training_data"):
        metadata["base_training_data"] = base_record["training_data"]
    save_model(result.net, path, metadata=metadata, overwrite=out.overwrite, half=out.half)
    notes = write_history(result.history, path,
                          overwrite=out.overwrite or control.resume_state is not None)
    kept = (" (cancelled: the best weights so far were kept)" if result.cancelled else "")
    return Outcome(result, path, f"Saved '{path.stem}'{kept}: {scores}.", notes=notes, **counts)
