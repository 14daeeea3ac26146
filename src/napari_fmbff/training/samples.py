"""What the trainer feeds the network: random training crops in batches of one shape, and
the deterministic grid of tiles that validation and the fit scores count pixels on."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from ..inference.tiling import TileGrid, round_up
from ..model.normalization import Normalization, as_three_channels
from .metrics import Counts, confusion

if TYPE_CHECKING:
    from .config import Item, TrainConfig


def crop_shape(shape, tile_size: int) -> tuple[int, int]:
    """The training crop for an image of ``shape``: the tile, or the image's own size rounded
    up to a multiple of 32 where that is smaller (small images are never padded into big crops)."""
    h, w = shape[:2]
    return min(tile_size, round_up(h, 32)), min(tile_size, round_up(w, 32))


def unit_tensor(item: Item, normalization: Normalization, image: np.ndarray):
    """An image (or crop) of ``item`` as a (3, H, W) float tensor in unit range."""
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
        x = unit_tensor(item, self.norm, image)
        y = torch.from_numpy(mask[None].astype(np.float32))
        if self.augment is not None:
            x, y = self.augment(x, y)
        y = (y > 0.5).float()
        if not self.cfg.prompts:
            return self.norm.standardize(x), y
        maps, target = self._prompts(y[0].numpy())
        return self.norm.standardize(x), torch.from_numpy(target[None]), torch.from_numpy(maps)

    def _prompts(self, mask: np.ndarray):
        """Prompt maps simulated on the (augmented) crop's mask, and the mask they ask for."""
        import torch

        from ..model.prompts import PromptSampling, simulate_prompts

        rng = np.random.default_rng(int(torch.randint(0, 2**31 - 1, ())))
        sim = simulate_prompts(mask, rng, PromptSampling(p_none=self.cfg.no_prompt_fraction))
        return sim.maps, sim.target.astype(np.float32)

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


def grid_tiles(items, cfg: TrainConfig, limit_per_image: int = 16, total: int | None = None):
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


def grid_counts(net, items, cfg: TrainConfig, normalization: Normalization, device,
                limit_per_image: int = 16, total: int | None = None, share=(0, 1)) -> Counts:
    """Pixel counts at threshold 0.5 over ``grid_tiles`` (this process's ``share``: rank,
    world size), tiles built a batch at a time so that none stay in memory."""
    rank, world = share
    net.eval()
    counts = Counts()
    pending: dict = {}  # tile shape -> (tiles, masks) waiting for a full batch
    tiles = grid_tiles(items, cfg, limit_per_image, total)
    for n, (item, image, mask) in enumerate(tiles):
        if n % world != rank:
            continue
        x = normalization.standardize(unit_tensor(item, normalization, image))
        xs, ys = pending.setdefault(tuple(x.shape), ([], []))
        xs.append(x)
        ys.append(mask)
        if len(xs) == cfg.batch_size:
            counts = counts + _batch_counts(net, *pending.pop(tuple(x.shape)), device)
    for xs, ys in pending.values():
        counts = counts + _batch_counts(net, xs, ys, device)
    return counts


def _batch_counts(net, xs, ys, device) -> Counts:
    """Counts of one batch of same-shaped tiles; mask pixels of -1 (padding) are not counted."""
    import torch

    with torch.inference_mode():
        pred = (net(torch.stack(xs).to(device)) > 0).cpu().numpy()[:, 0]
    counts = Counts()
    for p, t in zip(pred, ys):
        valid = t >= 0
        counts = counts + confusion(p[valid], t[valid])
    return counts
