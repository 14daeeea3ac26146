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

from dataclasses import asdict

import numpy as np

from ..model.normalization import Normalization
from .config import (  # noqa: F401  (the recipe's types, imported from here by callers)
    FINETUNE_DEFAULTS,
    PROPAGATE_CROP,
    Item,
    TrainConfig,
    TrainEvent,
    TrainResult,
    finetune_config,
    propagate_config,
)
from .requests import RunControl


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


def slice_items(volume, labels, zs, normalization: Normalization, name: str = "") -> list[Item]:
    """The training items of the slices ``zs`` of ``volume`` (a propagation's labelled slices:
    any label id is lesion), one group for the volume, with ``normalization`` resolved for the
    whole stack; a ValueError when none of them holds a lesion."""
    items = make_items([np.asarray(volume[z]) for z in zs],
                       [np.asarray(labels[z]) > 0 for z in zs], normalization.for_stack(volume),
                       [f"{name or 'volume'} slice {z}" for z in zs],
                       group=name or "volume", require_lesion=False)
    if not any(item.mask.any() for item in items):
        raise ValueError("the labelled slices hold no lesion: paint the lesion on at least "
                         "one slice before propagating")
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
               control: RunControl | None = None):
    """Generator: yields ``Progress`` (stage "train"; its detail the ``TrainEvent``: start,
    every step, every epoch); returns TrainResult.

    With ``val_items``: Dice on them after every epoch drives the lr plateau schedule and
    early stopping, and the best epoch's weights are returned. With no ``val_items``: no
    validation, ``cfg.epochs`` (or until ``control.cancel`` is set) and the final weights are
    returned; events carry ``val_dice`` NaN. Either way ``fit_before`` / ``fit_after`` score
    the model on the training items' own pixels (at most ``cfg.fit_tiles`` tiles).

    ``control`` (``RunControl``): its ``cancel`` token is polled after every step: once set,
    training ends there and the result (best weights so far, or the last ones without
    validation; ``cancelled=True``) is returned as usual. ``checkpoint_fn(state)`` is called
    after each epoch with a resumable state (tensors and plain values only: loadable with
    weights_only=True); ``resume_state`` continues from one. ``ddp`` (``ddp.Ddp``, under
    torchrun): this process trains on its share of the crops and validation tiles;
    gradients, validation counts and stop decisions are shared, and only rank 0 calls
    ``checkpoint_fn``. The work is ``trainer.Trainer``'s.
    """
    from .trainer import Trainer

    control = control or RunControl()
    trainer = Trainer(net, train_items, val_items, cfg, normalization,
                      cancel=control.cancel, checkpoint_fn=control.checkpoint_fn,
                      ddp=control.ddp)
    return (yield from trainer.run_training(control.resume_state))


def run_training(*args, **kwargs) -> TrainResult:
    """``iter_train`` run to the end (scripts and tests)."""
    from ..inference.progress import drain

    return drain(iter_train(*args, **kwargs))


def recipe(cfg: TrainConfig) -> dict:
    return asdict(cfg)
