"""Training and fine-tuning: samples, loss, and the loop (a generator, so GUIs can follow it).

The paper's recipe from scratch: Adam, lr 1e-3, ReduceLROnPlateau on validation Dice, early
stopping, keep the best epoch, 80:20 split. Fine-tuning: lr 1e-4 by default and optionally a
frozen encoder. AMP on CUDA. The best weights by validation Dice are what is kept, so a
fine-tune on a few images can never end worse on held-out data than it started.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass, field

import numpy as np

from .metrics import Counts, confusion, soft_dice
from .normalization import Normalization, as_three_channels
from .tiling import TileGrid


@dataclass
class TrainConfig:
    epochs: int = 100
    batch_size: int = 8
    lr: float = 1e-3
    weight_decay: float = 0.0
    tile_size: int = 352
    val_fraction: float = 0.2
    patience: int = 15          # epochs without a better validation Dice before stopping
    lr_patience: int = 5        # epochs without improvement before the lr halves
    bce_weight: float = 1.0
    dice_weight: float = 1.0
    freeze_encoder: bool = False
    augment: bool = True
    resize: bool = False        # resize whole images to the tile instead of random crops
    steps_per_epoch: int | None = None   # default: enough batches to see each image once
    lesion_crop_fraction: float = 0.5    # crops centred on a lesion pixel, for small lesions
    seed: int = 0
    device: str = "auto"
    amp: bool = True
    num_workers: int = 0        # DataLoader processes preparing crops

    def __post_init__(self):
        if self.tile_size % 32 or self.tile_size < 32:
            raise ValueError(f"tile size must be a multiple of 32, got {self.tile_size}")
        if not 0 < self.val_fraction < 1:
            raise ValueError(f"validation fraction must be in (0, 1), got {self.val_fraction}")
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError("epochs and batch size must be at least 1")


@dataclass
class Item:
    """One training image in memory: raw pixels, 0/1 mask, its intensity range."""

    image: np.ndarray
    mask: np.ndarray
    name: str = ""
    intensity_range: tuple[float, float] = (0.0, 255.0)


@dataclass
class TrainEvent:
    kind: str                  # "start", "step" or "epoch"
    epoch: int
    step: int = 0
    steps: int = 0
    loss: float = float("nan")
    val_dice: float = float("nan")
    best_dice: float = float("nan")
    lr: float = float("nan")


@dataclass
class TrainResult:
    net: object
    history: list = field(default_factory=list)
    initial_dice: float = float("nan")
    best_dice: float = float("nan")
    best_epoch: int = 0
    epochs_run: int = 0
    stopped_early: bool = False
    seconds: float = 0.0
    cancelled: bool = False


def make_items(images, masks, normalization: Normalization, names=None) -> list[Item]:
    """Check and wrap arrays (napari layers or files) as training items."""
    items = []
    for k, (image, mask) in enumerate(zip(images, masks)):
        image, mask = np.asarray(image), np.asarray(mask)
        name = names[k] if names else str(k)
        if image.shape[:2] != mask.shape[:2] or mask.ndim != 2:
            raise ValueError(f"{name}: labels shape {mask.shape} does not match image {image.shape}")
        if np.issubdtype(image.dtype, np.floating) and np.isnan(image).any():
            raise ValueError(f"{name}: the image contains NaN values; replace them first")
        items.append(Item(image, (mask > 0).astype(np.uint8), name,
                          normalization.intensity_range(image)))
    if not items:
        raise ValueError("no training images")
    if not any(item.mask.any() for item in items):
        raise ValueError("the masks contain no lesion pixels anywhere; paint some labels first")
    return items


def split_items(items: list[Item], val_fraction: float, seed: int = 0):
    """80:20 (by default) split by image; a single image is split by area instead."""
    if len(items) >= 2:
        order = np.random.default_rng(seed).permutation(len(items))
        n_val = min(max(1, round(val_fraction * len(items))), len(items) - 1)
        return [items[i] for i in order[n_val:]], [items[i] for i in order[:n_val]]
    item = items[0]
    axis = 0 if item.image.shape[0] >= item.image.shape[1] else 1
    cut = int(round(item.image.shape[axis] * (1 - val_fraction)))
    sl_train = (slice(None, cut),) if axis == 0 else (slice(None), slice(None, cut))
    sl_val = (slice(cut, None),) if axis == 0 else (slice(None), slice(cut, None))
    part = lambda sl, tag: Item(item.image[sl], item.mask[sl], f"{item.name}{tag}",  # noqa: E731
                                item.intensity_range)
    return [part(sl_train, "[train]")], [part(sl_val, "[held-out]")]


def _unit_tensor(item: Item, normalization: Normalization, image: np.ndarray):
    import torch

    from .normalization import torch_ready

    x = torch.from_numpy(np.ascontiguousarray(torch_ready(as_three_channels(image))))
    return normalization.to_unit(x, item.intensity_range).permute(2, 0, 1)


class CropDataset:
    """Random tiles (or resized whole images) with joint augmentation; a torch Dataset."""

    def __init__(self, items, cfg: TrainConfig, normalization: Normalization, length: int):
        from .augment import Augment

        self.items, self.cfg, self.norm, self.length = items, cfg, normalization, length
        self.augment = Augment() if cfg.augment else None

    def __len__(self):
        return self.length

    def __getitem__(self, index):
        import torch

        item = self.items[index % len(self.items)]
        image, mask = self._sample(item)
        x = _unit_tensor(item, self.norm, image)
        y = torch.from_numpy(mask[None].astype(np.float32))
        if self.augment is not None:
            x, y = self.augment(x, y)
        return self.norm.standardize(x), (y > 0.5).float()

    def _sample(self, item: Item):
        # torch's generator: seeded by manual_seed, and differently in each loader worker.
        import torch

        rng = np.random.default_rng(int(torch.randint(0, 2**31 - 1, ())))
        t = self.cfg.tile_size
        if self.cfg.resize:
            return resize_pair(item.image, item.mask, t)
        h, w = item.mask.shape
        grid = TileGrid(h, w, t, t, (0,), (0,), 0)
        lesion = np.flatnonzero(item.mask)
        if lesion.size and rng.random() < self.cfg.lesion_crop_fraction:
            cy, cx = np.unravel_index(lesion[rng.integers(lesion.size)], (h, w))
            y0 = int(np.clip(cy - t // 2 + rng.integers(-t // 4, t // 4 + 1), 0, max(h - t, 0)))
            x0 = int(np.clip(cx - t // 2 + rng.integers(-t // 4, t // 4 + 1), 0, max(w - t, 0)))
        else:
            y0 = int(rng.integers(0, max(h - t, 0) + 1))
            x0 = int(rng.integers(0, max(w - t, 0) + 1))
        return grid.read(item.image, y0, x0), grid.read(item.mask, y0, x0)


def resize_pair(image, mask, size: int):
    from skimage.transform import resize

    img = resize(image, (size, size) + image.shape[2:], preserve_range=True, anti_aliasing=True)
    msk = resize(mask.astype(np.float32), (size, size), order=0, preserve_range=True) > 0.5
    return img.astype(np.float32), msk.astype(np.uint8)


def validation_tiles(items, cfg: TrainConfig, normalization: Normalization, limit: int = 16):
    """Deterministic held-out tiles: every image covered by a grid (at most ``limit`` tiles)."""
    import torch

    xs, ys = [], []
    for item in items:
        if cfg.resize:
            pairs = [resize_pair(item.image, item.mask, cfg.tile_size)]
        else:
            grid = TileGrid.plan(*item.mask.shape, cfg.tile_size, 0.0)
            coords = list(grid)
            step = max(1, math.ceil(len(coords) / limit))
            pairs = [(grid.read(item.image, y0, x0), grid.read(item.mask, y0, x0))
                     for y0, x0 in coords[::step]]
            # Padding must not count: mark padded pixels -1 so they are ignored.
            h, w = item.mask.shape
            for k, (y0, x0) in enumerate(coords[::step]):
                valid = np.zeros(pairs[k][1].shape, bool)
                valid[: h - y0, : w - x0] = True
                pairs[k] = (pairs[k][0],
                            np.where(valid, pairs[k][1].astype(np.int8), np.int8(-1)))
        for image, mask in pairs:
            xs.append(normalization.standardize(_unit_tensor(item, normalization, image)))
            ys.append(torch.from_numpy(np.asarray(mask, np.int8)))
    return xs, ys


def _validation_counts(net, xs, ys, device, batch_size: int) -> Counts:
    """Pixel counts over the held-out tiles at threshold 0.5 (pooled Dice comes from these)."""
    import torch

    net.eval()
    total = Counts()
    with torch.inference_mode():
        for i in range(0, len(xs), batch_size):
            batch = _same_size_batches(xs[i:i + batch_size], ys[i:i + batch_size])
            for x, y in batch:
                pred = (net(x.to(device)) > 0).cpu().numpy()[:, 0]
                for p, t in zip(pred, y.numpy()):
                    valid = t >= 0
                    total = total + confusion(p[valid], t[valid])
    return total


def _same_size_batches(xs, ys):
    import torch

    groups: dict = {}
    for x, y in zip(xs, ys):
        groups.setdefault(tuple(x.shape), ([], []))
        groups[tuple(x.shape)][0].append(x)
        groups[tuple(x.shape)][1].append(y)
    return [(torch.stack(a), torch.stack(b)) for a, b in groups.values()]


def iter_train(net, train_items, val_items, cfg: TrainConfig, normalization: Normalization,
               resume_state: dict | None = None, checkpoint_fn=None, should_stop=None,
               ddp=None):
    """Generator: yields ``TrainEvent`` (start, every step, every epoch); returns TrainResult.

    ``should_stop()`` is asked after every step: when true, training ends there and the result
    (best weights so far, ``cancelled=True``) is returned as usual. ``checkpoint_fn(state)`` is called after each epoch with a
    resumable state (tensors and plain values only: loadable with weights_only=True).
    ``ddp`` (``ddp.Ddp``, under torchrun): this process trains on its share of the crops
    and validation tiles; gradients, validation counts and stop decisions are shared, and
    only rank 0 calls ``checkpoint_fn``.
    """
    import torch

    from .inference import _amp_dtype, resolve_device

    started = time.time()
    from . import ddp as _ddp

    torch.manual_seed(cfg.seed)
    device = resolve_device(_ddp.device_for(ddp, cfg.device))
    net = net.to(device)
    if cfg.freeze_encoder:
        for p in net.encoder.parameters():
            p.requires_grad_(False)
    model = net  # what the steps run: net itself, or its DDP wrapper
    if ddp is not None:
        from torch.nn.parallel import DistributedDataParallel

        model = DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda"
                                        else None)  # starts from rank 0's weights
        torch.manual_seed(cfg.seed + ddp.rank)  # each process draws its own crops
    params = [p for p in net.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="max", factor=0.5,
                                                       patience=cfg.lr_patience)
    amp_dtype = _amp_dtype(device, "auto") if cfg.amp else None
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    steps = cfg.steps_per_epoch or max(1, math.ceil(len(train_items) / cfg.batch_size))
    dataset = CropDataset(train_items, cfg, normalization, steps * cfg.batch_size)
    sampler = None
    if ddp is not None:
        sampler = torch.utils.data.distributed.DistributedSampler(
            dataset, ddp.world_size, ddp.rank, shuffle=True, seed=cfg.seed)
    loader = torch.utils.data.DataLoader(dataset, batch_size=cfg.batch_size,
                                         shuffle=sampler is None, sampler=sampler,
                                         drop_last=False, num_workers=cfg.num_workers,
                                         persistent_workers=cfg.num_workers > 0,
                                         pin_memory=device.type == "cuda")
    steps = len(loader)  # this process's share of the epoch under DDP
    val_x, val_y = validation_tiles(val_items, cfg, normalization)
    if ddp is not None:
        val_x, val_y = val_x[ddp.rank::ddp.world_size], val_y[ddp.rank::ddp.world_size]
    bce = torch.nn.BCEWithLogitsLoss()

    def validate():
        counts = _validation_counts(net, val_x, val_y, device, cfg.batch_size)
        if ddp is not None:
            counts = Counts(*(int(v) for v in _ddp.all_sum(
                [counts.tp, counts.fp, counts.fn, counts.tn], device)))
        return counts.scores()["dice"]

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
    else:
        history = []
        initial = best_dice = validate()
        best_state, best_epoch, first_epoch = copy.deepcopy(net.state_dict()), 0, 1
    yield TrainEvent("start", first_epoch - 1, val_dice=initial, best_dice=best_dice,
                     lr=opt.param_groups[0]["lr"])
    since_best = (first_epoch - 1) - best_epoch
    stopped_early = cancelled = False
    epoch = first_epoch - 1
    for epoch in range(first_epoch, cfg.epochs + 1):
        if sampler is not None:
            sampler.set_epoch(epoch)
        net.train()
        if cfg.freeze_encoder:
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
            yield TrainEvent("step", epoch, step, steps, loss=losses[-1], best_dice=best_dice,
                             lr=opt.param_groups[0]["lr"])
            cancelled = stop_requested()
            if cancelled:
                break
        if cancelled and len(losses) < steps:
            epoch -= 1  # this epoch did not finish: it is not validated or counted
            break
        val = validate()
        sched.step(val)
        if val > best_dice:
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
                           "best_model": best_state, "best_dice": best_dice,
                           "best_epoch": best_epoch, "initial_dice": initial, "epoch": epoch})
        if cancelled:
            break
        if since_best >= cfg.patience:
            stopped_early = True
            break
    if ddp is not None:
        _ddp.check_replicas_agree(net, device)
    net.load_state_dict(best_state)
    if cfg.freeze_encoder:
        for p in net.encoder.parameters():
            p.requires_grad_(True)
    return TrainResult(net.eval(), history, initial, best_dice, best_epoch, epoch,
                       stopped_early, time.time() - started, cancelled)


def run_training(*args, **kwargs) -> TrainResult:
    """``iter_train`` run to the end (scripts and tests)."""
    from .inference import drain

    return drain(iter_train(*args, **kwargs))


def recipe(cfg: TrainConfig) -> dict:
    return asdict(cfg)
