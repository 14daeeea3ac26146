"""Training and fine-tuning: samples, loss, and the loop (a generator, so GUIs can follow it).

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

import copy
import math
import time
from dataclasses import asdict, dataclass, field

import numpy as np

from ..inference.tiling import TileGrid, round_up
from ..model.normalization import Normalization, as_three_channels
from .metrics import Counts, confusion, soft_dice


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

    def __post_init__(self):
        if self.tile_size % 32 or self.tile_size < 32:
            raise ValueError(f"tile size must be a multiple of 32, got {self.tile_size}")
        if not 0 <= self.val_fraction < 1:
            raise ValueError(f"validation fraction must be in [0, 1), got {self.val_fraction}")
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError("epochs and batch size must be at least 1")
        if self.freeze_encoder_epochs < 0:
            raise ValueError("freeze_encoder_epochs must be 0 or more")
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


def crop_shape(shape, tile_size: int) -> tuple[int, int]:
    """The training crop for an image of ``shape``: the tile, or the image's own size rounded
    up to a multiple of 32 where that is smaller (small images are never padded into big crops)."""
    h, w = shape[:2]
    return min(tile_size, round_up(h, 32)), min(tile_size, round_up(w, 32))


def _unit_tensor(item: Item, normalization: Normalization, image: np.ndarray):
    import torch

    from ..model.normalization import torch_ready

    x = torch.from_numpy(np.ascontiguousarray(torch_ready(as_three_channels(image))))
    return normalization.to_unit(x, item.intensity_range).permute(2, 0, 1)


class CropDataset:
    """Random crops (or resized whole images) with joint augmentation; a torch Dataset.

    Index ``i`` draws a crop of image ``i % len(items)``, of that image's ``crop_shape``.
    """

    def __init__(self, items, cfg: TrainConfig, normalization: Normalization, length: int):
        from .augment import Augment

        self.items, self.cfg, self.norm, self.length = items, cfg, normalization, length
        self.augment = Augment() if cfg.augment else None
        self.shapes = [(cfg.tile_size, cfg.tile_size) if cfg.resize
                       else crop_shape(it.mask.shape, cfg.tile_size) for it in items]

    def __len__(self):
        return self.length

    def shape_of(self, index) -> tuple[int, int]:
        return self.shapes[index % len(self.items)]

    def __getitem__(self, index):
        import torch

        item = self.items[index % len(self.items)]
        image, mask = self._sample(item, self.shape_of(index))
        x = _unit_tensor(item, self.norm, image)
        y = torch.from_numpy(mask[None].astype(np.float32))
        if self.augment is not None:
            x, y = self.augment(x, y)
        return self.norm.standardize(x), (y > 0.5).float()

    def _sample(self, item: Item, shape):
        # torch's generator: seeded by manual_seed, and differently in each loader worker.
        import torch

        rng = np.random.default_rng(int(torch.randint(0, 2**31 - 1, ())))
        th, tw = shape
        if self.cfg.resize:
            return resize_pair(item.image, item.mask, th)
        h, w = item.mask.shape
        grid = TileGrid(h, w, th, tw, (0,), (0,), 0)
        lesion = np.flatnonzero(item.mask)
        if lesion.size and rng.random() < self.cfg.lesion_crop_fraction:
            cy, cx = np.unravel_index(lesion[rng.integers(lesion.size)], (h, w))
            y0 = int(np.clip(cy - th // 2 + rng.integers(-th // 4, th // 4 + 1), 0, max(h - th, 0)))
            x0 = int(np.clip(cx - tw // 2 + rng.integers(-tw // 4, tw // 4 + 1), 0, max(w - tw, 0)))
        else:
            y0 = int(rng.integers(0, max(h - th, 0) + 1))
            x0 = int(rng.integers(0, max(w - tw, 0) + 1))
        return grid.read(item.image, y0, x0), grid.read(item.mask, y0, x0)


class ShapeBatchSampler:
    """Batches of dataset indices whose crops share one shape (a torch batch sampler).

    Each epoch: a seeded permutation of the indices, grouped by crop shape (order kept),
    cut into batches of ``batch_size`` per group, batches shuffled. Under DDP the batch list
    is padded (repeating batches) to a multiple of ``world_size`` and dealt out by rank, so
    every process runs the same number of steps.
    """

    def __init__(self, dataset: CropDataset, batch_size: int, seed: int = 0, rank: int = 0,
                 world_size: int = 1):
        self.dataset, self.batch_size, self.seed = dataset, batch_size, seed
        self.rank, self.world_size, self.epoch = rank, world_size, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _batches(self):
        rng = np.random.default_rng((self.seed, self.epoch))
        groups: dict = {}
        for i in rng.permutation(len(self.dataset)):
            groups.setdefault(self.dataset.shape_of(int(i)), []).append(int(i))
        batches = [g[k:k + self.batch_size] for g in groups.values()
                   for k in range(0, len(g), self.batch_size)]
        batches = [batches[i] for i in rng.permutation(len(batches))]
        short = -len(batches) % self.world_size
        return (batches + batches[:short])[self.rank::self.world_size]

    def __iter__(self):
        return iter(self._batches())

    def __len__(self):
        return len(self._batches())


def resize_pair(image, mask, size: int):
    from skimage.transform import resize

    img = resize(image, (size, size) + image.shape[2:], preserve_range=True, anti_aliasing=True)
    msk = resize(mask.astype(np.float32), (size, size), order=0, preserve_range=True) > 0.5
    return img.astype(np.float32), msk.astype(np.uint8)


def _grid_tiles(items, cfg: TrainConfig, limit_per_image: int = 16, total: int | None = None):
    """Deterministic (item, image tile, mask tile) over a grid of each image; padded mask
    pixels are -1 (not counted). At most ``limit_per_image`` tiles per image and, with
    ``total``, that many in all (evenly spread). Lazy: nothing is kept in memory."""
    plan = []
    for k, item in enumerate(items):
        if cfg.resize:
            plan.append((k, None, None))
            continue
        grid = TileGrid.plan(*item.mask.shape, cfg.tile_size, 0.0)
        coords = list(grid)
        step = max(1, math.ceil(len(coords) / limit_per_image))
        plan += [(k, grid, yx) for yx in coords[::step]]
    if total is not None and len(plan) > total:
        plan = [plan[i] for i in np.linspace(0, len(plan) - 1, total).round().astype(int)]
    for k, grid, yx in plan:
        item = items[k]
        if grid is None:
            image, mask = resize_pair(item.image, item.mask, cfg.tile_size)
            yield item, image, mask.astype(np.int8)
            continue
        y0, x0 = yx
        image, mask = grid.read(item.image, y0, x0), grid.read(item.mask, y0, x0)
        h, w = item.mask.shape
        valid = np.zeros(mask.shape, bool)
        valid[: h - y0, : w - x0] = True
        yield item, image, np.where(valid, mask.astype(np.int8), np.int8(-1))


def validation_tiles(items, cfg: TrainConfig, normalization: Normalization, limit: int = 16):
    """Held-out tiles as tensors: every image covered by a grid (at most ``limit`` tiles)."""
    import torch

    xs, ys = [], []
    for item, image, mask in _grid_tiles(items, cfg, limit):
        xs.append(normalization.standardize(_unit_tensor(item, normalization, image)))
        ys.append(torch.from_numpy(mask))
    return xs, ys


def _grid_counts(net, items, cfg: TrainConfig, normalization: Normalization, device,
                 limit_per_image: int = 16, total: int | None = None, share=(0, 1)) -> Counts:
    """Pixel counts at threshold 0.5 over ``_grid_tiles`` (this process's ``share``: rank,
    world size), tiles built a batch at a time so that none stay in memory."""
    import torch

    rank, world = share
    net.eval()
    counts = Counts()
    pending: dict = {}

    def flush(key):
        nonlocal counts
        xs, ys = pending.pop(key)
        with torch.inference_mode():
            pred = (net(torch.stack(xs).to(device)) > 0).cpu().numpy()[:, 0]
        for p, t in zip(pred, ys):
            valid = t >= 0
            counts = counts + confusion(p[valid], t[valid])

    tiles = _grid_tiles(items, cfg, limit_per_image, total)
    for n, (item, image, mask) in enumerate(tiles):
        if n % world != rank:
            continue
        x = normalization.standardize(_unit_tensor(item, normalization, image))
        xs, ys = pending.setdefault(tuple(x.shape), ([], []))
        xs.append(x)
        ys.append(mask)
        if len(xs) == cfg.batch_size:
            flush(tuple(x.shape))
    for key in list(pending):
        flush(key)
    return counts


def _set_encoder_frozen(net, frozen: bool) -> None:
    for p in net.encoder.parameters():
        p.requires_grad_(not frozen)


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
    (tensors and plain values only: loadable with weights_only=True).
    ``ddp`` (``ddp.Ddp``, under torchrun): this process trains on its share of the crops
    and validation tiles; gradients, validation counts and stop decisions are shared, and
    only rank 0 calls ``checkpoint_fn``.
    """
    import torch

    from ..inference.runtime import amp_dtype as autocast_dtype
    from ..inference.runtime import resolve_device

    started = time.time()
    from . import ddp as _ddp

    if not train_items:
        raise ValueError("no training images")
    validated = bool(val_items)
    torch.manual_seed(cfg.seed)
    device = resolve_device(_ddp.device_for(ddp, cfg.device))
    net = net.to(device)
    share = (ddp.rank, ddp.world_size) if ddp is not None else (0, 1)

    def wrap():
        """What the steps run: net itself, or its DDP wrapper (rebuilt when the set of
        trained parameters changes, since DDP fixes it at construction)."""
        if ddp is None:
            return net
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda"
                                       else None)  # starts from rank 0's weights

    frozen = cfg.encoder_frozen(1)
    _set_encoder_frozen(net, frozen)
    model = wrap()
    if ddp is not None:
        torch.manual_seed(cfg.seed + ddp.rank)  # each process draws its own crops
    # Every parameter is in the optimizer; frozen ones have no gradient, so Adam skips them.
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.lr_schedule == "cosine":
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs,
                                                           eta_min=cfg.lr / 20)
    elif cfg.lr_schedule == "plateau" and validated:
        sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="max", factor=0.5,
                                                           patience=cfg.lr_patience)
    else:
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _e: 1.0)
    amp_dtype = autocast_dtype(device, "auto") if cfg.amp else None
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    steps = cfg.steps_per_epoch or max(cfg.min_steps_per_epoch,
                                       math.ceil(len(train_items) / cfg.batch_size))
    dataset = CropDataset(train_items, cfg, normalization, steps * cfg.batch_size)
    sampler = ShapeBatchSampler(dataset, cfg.batch_size, cfg.seed, *share)
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler,
                                         num_workers=cfg.num_workers,
                                         persistent_workers=cfg.num_workers > 0,
                                         pin_memory=device.type == "cuda")
    steps = len(loader)  # this process's share of the epoch under DDP
    bce = torch.nn.BCEWithLogitsLoss()

    def pooled_dice(items, limit, total=None):
        counts = _grid_counts(net, items, cfg, normalization, device, limit, total, share)
        if ddp is not None:
            counts = Counts(*(int(v) for v in _ddp.all_sum(
                [counts.tp, counts.fp, counts.fn, counts.tn], device)))
        return counts.scores()["dice"]

    def validate():
        return pooled_dice(val_items, 16) if validated else float("nan")

    def fit():
        return pooled_dice(train_items, cfg.fit_tiles, cfg.fit_tiles)

    def stop_requested():
        if should_stop is None:
            return False
        # Under DDP every process must stop at the same step, or the others wait forever.
        return _ddp.any_process(should_stop(), device) if ddp is not None else should_stop()

    is_main = ddp is None or ddp.is_main

    if resume_state:
        net.load_state_dict(resume_state["model"])
        opt.load_state_dict(resume_state["optimizer"])
        sched.load_state_dict(resume_state["scheduler"])
        history = list(resume_state["history"])
        best_state = resume_state["best_model"]
        best_dice, best_epoch = resume_state["best_dice"], resume_state["best_epoch"]
        initial, first_epoch = resume_state["initial_dice"], resume_state["epoch"] + 1
        fit_before = resume_state.get("fit_before", float("nan"))
        if resume_state.get("validated", True) != validated:
            raise ValueError("the resume state was written with a different validation split")
    else:
        history = []
        fit_before = fit()
        initial = best_dice = validate()
        best_state, best_epoch, first_epoch = copy.deepcopy(net.state_dict()), 0, 1
    yield TrainEvent("start", first_epoch - 1, val_dice=initial, best_dice=best_dice,
                     lr=opt.param_groups[0]["lr"], fit=fit_before)
    since_best = (first_epoch - 1) - best_epoch
    stopped_early = cancelled = False
    epoch = first_epoch - 1
    for epoch in range(first_epoch, cfg.epochs + 1):
        sampler.set_epoch(epoch)
        if cfg.encoder_frozen(epoch) != frozen:
            frozen = cfg.encoder_frozen(epoch)
            _set_encoder_frozen(net, frozen)
            model = wrap()
        net.train()
        if frozen:
            net.encoder.eval()  # frozen BatchNorm statistics too
        losses = []
        cancelled = False
        for step, (x, y) in enumerate(loader, 1):
            x, y = x.to(device), y.to(device)
            opt.zero_grad(set_to_none=True)
            ctx = (torch.autocast(device.type, dtype=amp_dtype) if amp_dtype is not None
                   else torch.autocast(device.type, enabled=False))
            with ctx:
                logits = model(x)
            logits = logits.float()
            loss = (cfg.bce_weight * bce(logits, y)
                    + cfg.dice_weight * (1 - soft_dice(torch.sigmoid(logits), y)))
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            losses.append(loss.item())
            del x, y, logits, loss  # the graph goes before the next batch is built
            yield TrainEvent("step", epoch, step, steps, loss=losses[-1], best_dice=best_dice,
                             lr=opt.param_groups[0]["lr"])
            cancelled = stop_requested()
            if cancelled:
                break
        if cancelled and len(losses) < steps:
            epoch -= 1  # this epoch did not finish: it is not validated or counted
            break
        val = validate()
        if isinstance(sched, torch.optim.lr_scheduler.ReduceLROnPlateau):
            sched.step(val)
        else:
            sched.step()
        if not validated:  # nothing to choose by: the last finished epoch is the result
            best_epoch, best_state = epoch, copy.deepcopy(net.state_dict())
        elif val > best_dice:
            best_dice, best_epoch, since_best = val, epoch, 0
            best_state = copy.deepcopy(net.state_dict())
        else:
            since_best += 1
        loss_sum, loss_n = float(np.sum(losses)), float(len(losses))
        if ddp is not None:
            loss_sum, loss_n = _ddp.all_sum([loss_sum, loss_n], device)
        row = {"epoch": epoch, "train_loss": loss_sum / loss_n, "val_dice": val,
               "lr": opt.param_groups[0]["lr"], "seconds": round(time.time() - started, 1)}
        history.append(row)
        yield TrainEvent("epoch", epoch, steps, steps, loss=row["train_loss"], val_dice=val,
                         best_dice=best_dice, lr=row["lr"])
        if checkpoint_fn is not None and is_main:
            checkpoint_fn({"model": net.state_dict(), "optimizer": opt.state_dict(),
                           "scheduler": sched.state_dict(), "history": history,
                           "best_model": best_state,
                           "best_dice": best_dice, "best_epoch": best_epoch,
                           "initial_dice": initial, "epoch": epoch, "validated": validated,
                           "fit_before": fit_before})
        if cancelled:
            break
        if validated and since_best >= cfg.patience:
            stopped_early = True
            break
    if ddp is not None:
        _ddp.check_replicas_agree(net, device)
    net.load_state_dict(best_state)  # the best epoch, or the last finished one
    _set_encoder_frozen(net, False)
    result = TrainResult(net.eval(), history, initial, best_dice, best_epoch, epoch,
                         stopped_early, 0.0, cancelled, validated, fit_before, fit_before)
    if result.changed:
        result.fit_after = fit()
    result.seconds = time.time() - started
    return result


def run_training(*args, **kwargs) -> TrainResult:
    """``iter_train`` run to the end (scripts and tests)."""
    from ..inference.runtime import drain

    return drain(iter_train(*args, **kwargs))


def recipe(cfg: TrainConfig) -> dict:
    return asdict(cfg)
