"""The training recipe and what a training run takes and gives: ``TrainConfig`` (with the
fine-tuning defaults, ``FINETUNE_DEFAULTS``), ``Item``, ``TrainEvent`` and ``TrainResult``.

Types only, below the loop (``loop``), the trainer (``trainer``) and the samples (``samples``),
so that none of them imports another for its types.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np


@dataclass
class TrainConfig:
    epochs: int = 100
    batch_size: int = 8
    lr: float = 1e-3
    weight_decay: float = 0.0
    tile_size: int = 352        # largest crop; smaller images get crops of their own size
    val_fraction: float = 0.2   # 0: never hold out (see split_items for the small-data rule)
    patience: int = 15          # epochs without a better validation Dice before stopping
    lr_patience: int = 5        # epochs without improvement before the lr halves
    bce_weight: float = 1.0
    dice_weight: float = 1.0
    freeze_encoder: bool = False   # encoder frozen for the whole run
    freeze_encoder_epochs: int = 0  # encoder frozen for the first N epochs, then trained too
    lr_schedule: str = "plateau"   # "plateau" (halve on a validation plateau; constant without
    #                                validation), "cosine" (to lr/20 at the last epoch), "constant"
    augment: bool = True
    resize: bool = False        # resize whole images to the tile instead of random crops
    steps_per_epoch: int | None = None   # default: enough batches to see each image once
    min_steps_per_epoch: int = 1         # ... but at least this many (few images: a budget)
    lesion_crop_fraction: float = 0.5    # crops centred on a lesion pixel, for small lesions
    fit_tiles: int = 32         # tiles of the training images scored for fit_before / fit_after
    seed: int = 0
    device: str = "auto"
    amp: bool = True
    num_workers: int = 0        # DataLoader processes preparing crops
    # Prompts simulated from the masks (boxes, clicks; model/prompts.simulate_prompts) train
    # the prompt input (a network without one gains it); ``no_prompt_fraction`` of the crops
    # get none, so automatic segmentation stays trained; half the prompted batches get one
    # more click in the network's own error (a simulated user's correction).
    prompts: bool = False
    no_prompt_fraction: float = 0.3

    def __post_init__(self):
        if self.tile_size % 32 or self.tile_size < 32:
            raise ValueError(f"tile size must be a multiple of 32, got {self.tile_size}")
        if not 0 <= self.val_fraction < 1:
            raise ValueError(f"validation fraction must be in [0, 1), got {self.val_fraction}")
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError("epochs and batch size must be at least 1")
        if self.freeze_encoder_epochs < 0:
            raise ValueError("freeze_encoder_epochs must be 0 or more")
        if not 0 <= self.no_prompt_fraction <= 1:
            raise ValueError(f"no_prompt_fraction must be in [0, 1], got {self.no_prompt_fraction}")
        if self.lr_schedule not in ("plateau", "cosine", "constant"):
            raise ValueError(f"lr_schedule must be plateau, cosine or constant, "
                             f"got {self.lr_schedule!r}")

    def encoder_frozen(self, epoch: int) -> bool:
        """Whether the encoder is frozen during ``epoch`` (1-based)."""
        return self.freeze_encoder or epoch <= self.freeze_encoder_epochs


# The one home of the fine-tuning recipe (the Fine-tune widget and `fmbff train --init`).
# Chosen from benchmarks/few_shot.py on real CT / MR lesions (docs/models.md has the table):
# lr 1e-3 reproduces the corrections (lr 3e-4 and 1e-4 under-fit them in this budget); the
# encoder frozen for the first 5 epochs generalised best to another patient; batches of 4
# crops keep a 2-core CPU under 2 GB; at least 3 steps per epoch give 1-3 slices a budget.
FINETUNE_DEFAULTS: dict = {
    "epochs": 20,
    "lr": 1e-3,
    "batch_size": 4,
    "tile_size": 256,
    "freeze_encoder": False,
    "freeze_encoder_epochs": 5,
    "val_fraction": 0.2,
    "patience": 20,
    "lr_schedule": "cosine",
    "lesion_crop_fraction": 0.5,
    "augment": True,
    "min_steps_per_epoch": 3,
}


def finetune_config(**overrides) -> TrainConfig:
    """The fine-tuning recipe (``FINETUNE_DEFAULTS``) with ``overrides`` (TrainConfig fields)."""
    return TrainConfig(**{**FINETUNE_DEFAULTS, **overrides})


#: Propagate's training crops are at most this size (px). A propagation learns from one or a
#: few slices; on 192 px crops it learned better than on 256 and a third faster, on the real
#: CT / MR volumes with 4 seeds (benchmarks/interactive.py --levers; docs/models.md, "Issue
#: 30's levers"). Fine-tune and `fmbff train --init` keep ``FINETUNE_DEFAULTS``' 256.
PROPAGATE_CROP = 192

#: What Propagate's model learns on (``propagate.PropagateRequest.encoder``): "model", the
#: chosen model fine-tuned (``starter`` by default); "litemedsam", new FM-BFF-Net layers on
#: LiteMedSAM's frozen, medical-pretrained encoder (``training.medical``, issue 30's lever 1).
ENCODERS = ("model", "litemedsam")
#: What it learns on when nothing says (``propagate_encoder``). Chosen by
#: benchmarks/interactive.py --levers and benchmarks/propagate_speed.py (docs/models.md,
#: "Propagate's default"): better on the 5 real volumes (0.64 against 0.52-0.61), the same answer from
#: seed to seed and box to box, and within the 60 s goal on 2 CPU cores once LiteMedSAM's
#: encoder runs in bfloat16.
PROPAGATE_ENCODER = "litemedsam"
#: The base a propagation on LiteMedSAM's encoder names in its lineage and record.
MEDICAL_BASE = "new layers on LiteMedSAM's encoder"


def propagate_encoder(encoder: str | None = None, *, self_label: bool = False,
                      model_chosen: bool = False) -> str:
    """What a propagation learns on: ``encoder`` when one is asked for (checked by
    ``PropagateRequest``); else ``PROPAGATE_ENCODER``, but "model" where a model is to be
    fine-tuned (self-labelling, a model the user named: ``model_chosen``) and where
    LiteMedSAM cannot be imported. The corrections store does not change it: with the store,
    LiteMedSAM's encoder answers this volume and the store's model learns the case beside it
    (``propagate.iter_propagate``)."""
    if encoder is not None:
        return encoder
    if self_label or model_chosen or PROPAGATE_ENCODER == "model":
        return "model"
    from ..inference.litemedsam import available

    return PROPAGATE_ENCODER if available() else "model"


def propagate_config(cfg: TrainConfig | None = None, **overrides) -> TrainConfig:
    """Propagate's recipe: ``cfg`` (default: ``finetune_config(**overrides)``), its training
    crops at most ``PROPAGATE_CROP`` (a smaller tile size, for a small GPU say, is kept)."""
    cfg = cfg or finetune_config(**overrides)
    return replace(cfg, tile_size=min(cfg.tile_size, PROPAGATE_CROP))


@dataclass
class Item:
    """One training image in memory: raw pixels, 0/1 mask, its intensity range, and its
    group: the slices of one volume share one, so ``split_items`` never puts a patient on
    both sides of the split (default: the item's own name, a group of its own)."""

    image: np.ndarray
    mask: np.ndarray
    name: str = ""
    intensity_range: tuple[float, float] = (0.0, 255.0)
    group: str | None = None

    def __post_init__(self):
        if self.group is None:
            self.group = self.name


@dataclass
class TrainEvent:
    """One moment of a training run, the ``detail`` of its "train" ``Progress``."""

    kind: str                  # "start", "step" or "epoch"
    epoch: int
    step: int = 0
    steps: int = 0
    loss: float = float("nan")
    val_dice: float = float("nan")   # NaN when nothing is held out
    best_dice: float = float("nan")
    lr: float = float("nan")
    fit: float = float("nan")        # "start": Dice on the training items' own pixels


@dataclass
class TrainResult:
    net: object
    history: list = field(default_factory=list)
    initial_dice: float = float("nan")   # held-out Dice before training (NaN: not validated)
    best_dice: float = float("nan")
    best_epoch: int = 0
    epochs_run: int = 0
    stopped_early: bool = False
    seconds: float = 0.0
    cancelled: bool = False
    validated: bool = True     # False: nothing held out; fixed budget, final weights kept
    fit_before: float = float("nan")  # pooled Dice at 0.5 on the training items, before ...
    fit_after: float = float("nan")   # ... and after training (how well it reproduces them)
    # torch's CPU threads during the run (None off the CPU). Another thread count sums in
    # another order, and a few-shot fine-tune can end far from where it ended before:
    # FMBFF_THREADS=N repeats a run bit for bit (docs/models.md, the regression that was not).
    cpu_threads: int | None = None

    @property
    def changed(self) -> bool:
        """True when the returned weights differ from the initial ones."""
        return self.best_epoch > 0 if self.validated else self.epochs_run > 0
