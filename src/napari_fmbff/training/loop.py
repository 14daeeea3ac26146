"""Training and fine-tuning: the recipe, the items, and ``iter_train`` (a generator, so GUIs
can follow it), which drives ``trainer.Trainer`` (the hooks) on ``samples``' crops and tiles.

The paper's recipe from scratch: Adam, lr 1e-3, ReduceLROnPlateau on validation Dice, early
stopping, keep the best epoch, 80:20 split. AMP on CUDA.

Fine-tuning on a user's corrections: ``finetune_config()`` (the defaults live in
``FINETUNE_DEFAULTS`` only, chosen from benchmarks/few_shot.py; docs/models.md has the table).
With too little data to hold any out (``split_items``), there is no validation: a fixed budget
is trained on every corrected pixel and the final weights are kept. With validation, the best
epoch by held-out Dice is kept. Either way the result says how well the model reproduces the
training corrections before and after (``fit_before``, ``fit_after``) and whether the weights
changed at all (``changed``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from ..model.normalization import Normalization


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


def make_items(images, masks, normalization: Normalization, names=None, *,
               group: str | None = None, require_lesion: bool = True) -> list[Item]:
    """Check and wrap arrays (napari layers or files) as training items.

    ``normalization`` gives each image its intensity range; for the slices of one volume pass
    the setting resolved for that volume (``Normalization.for_stack``). ``group``: one group
    for all these items (the slices of one volume); default: each item its own.
    ``require_lesion=False`` accepts items without any lesion pixel (one lesion-free volume of
    many: the caller checks the whole set).
    """
    items = []
    for k, (image, mask) in enumerate(zip(images, masks)):
        image, mask = np.asarray(image), np.asarray(mask)
        name = names[k] if names else str(k)
        if image.shape[:2] != mask.shape[:2] or mask.ndim != 2:
            raise ValueError(f"{name}: labels shape {mask.shape} does not match image {image.shape}")
        if np.issubdtype(image.dtype, np.floating) and np.isnan(image).any():
            raise ValueError(f"{name}: the image contains NaN values; replace them first")
        items.append(Item(image, (mask > 0).astype(np.uint8), name,
                          normalization.intensity_range(image), group))
    if require_lesion and not items:
        raise ValueError("no training images")
    if require_lesion and not any(item.mask.any() for item in items):
        raise ValueError("the masks contain no lesion pixels anywhere; paint some labels first")
    return items


MIN_ITEMS_TO_VALIDATE = 5


def split_items(items: list[Item], val_fraction: float, seed: int = 0,
                min_items: int = MIN_ITEMS_TO_VALIDATE):
    """Split by image, or by group where items share one, into (train, validation); images
    are never cut by area, and a group (the slices of one volume) is never split.

    Groups are counted in the order they first appear (an item's group defaults to its
    name). ``round(val_fraction * n)`` groups (at least 1, at most n - 1) are drawn for
    validation with ``seed``. Nothing is held out, and ``(all items, [])`` comes back, when:
    - ``val_fraction`` is 0, or there are fewer than ``min_items`` (5) images (groups);
    - the drawn validation images hold no lesion pixel (a held-out Dice would say nothing),
      or the training images left would hold none (the user's only corrections).
    Then training runs a fixed budget on every corrected pixel (see ``iter_train``).
    """
    items = list(items)
    groups: dict = {}
    for k, item in enumerate(items):
        # Items with neither a group nor a name are each a group of their own.
        groups.setdefault(item.group or ("item", k), []).append(item)
    members = list(groups.values())
    n = len(members)
    if val_fraction <= 0 or n < max(2, min_items):
        return items, []
    order = np.random.default_rng(seed).permutation(n)
    n_val = min(max(1, round(val_fraction * n)), n - 1)
    held = {int(i) for i in order[:n_val]}
    val = [it for i in order[:n_val] for it in members[i]]
    train = [it for i in order[n_val:] for it in members[i]]
    if len(items) != n:  # groups: keep each side in the items' own order
        train = [it for i, group in enumerate(members) if i not in held for it in group]
        val = [it for i, group in enumerate(members) if i in held for it in group]
    if not any(it.mask.any() for it in val) or not any(it.mask.any() for it in train):
        return items, []
    return train, val


def iter_train(net, train_items, val_items, cfg: TrainConfig, normalization: Normalization,
               resume_state: dict | None = None, checkpoint_fn=None, should_stop=None,
               ddp=None):
    """Generator: yields ``TrainEvent`` (start, every step, every epoch); returns TrainResult.

    With ``val_items``: Dice on them after every epoch drives the lr plateau schedule and
    early stopping, and the best epoch's weights are returned. With no ``val_items``: no
    validation, ``cfg.epochs`` (or until ``should_stop``) and the final weights are returned;
    events carry ``val_dice`` NaN. Either way ``fit_before`` / ``fit_after`` score the model
    on the training items' own pixels (at most ``cfg.fit_tiles`` tiles).

    ``should_stop()`` is asked after every step: when true, training ends there and the result
    (best weights so far, or the last ones without validation; ``cancelled=True``) is returned
    as usual. ``checkpoint_fn(state)`` is called after each epoch with a resumable state
    (tensors and plain values only: loadable with weights_only=True); ``resume_state``
    continues from one. ``ddp`` (``ddp.Ddp``, under torchrun): this process trains on its
    share of the crops and validation tiles; gradients, validation counts and stop decisions
    are shared, and only rank 0 calls ``checkpoint_fn``. The work is ``trainer.Trainer``'s.
    """
    from .trainer import Trainer

    trainer = Trainer(net, train_items, val_items, cfg, normalization, should_stop=should_stop,
                      checkpoint_fn=checkpoint_fn, ddp=ddp)
    return (yield from trainer.run_training(resume_state))


def run_training(*args, **kwargs) -> TrainResult:
    """``iter_train`` run to the end (scripts and tests)."""
    from ..inference.runtime import drain

    return drain(iter_train(*args, **kwargs))


def recipe(cfg: TrainConfig) -> dict:
    return asdict(cfg)
