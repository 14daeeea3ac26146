"""Tile grids, the blending window, and a row-band accumulator that stitches tiles."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


def round_up(n: int, multiple: int) -> int:
    return int(math.ceil(n / multiple) * multiple)


def tile_starts(length: int, tile: int, stride: int) -> list[int]:
    """Start offsets covering [0, length) with windows of ``tile``; the last one ends flush."""
    if length <= tile:
        return [0]
    n = int(math.ceil((length - tile) / stride)) + 1
    return sorted({int(round(v)) for v in np.linspace(0, length - tile, n)})


@dataclass(frozen=True)
class TileGrid:
    """Where the tiles of one 2D image go. Tiles are (tile_h, tile_w), multiples of 32."""

    height: int
    width: int
    tile_h: int
    tile_w: int
    ys: tuple[int, ...]
    xs: tuple[int, ...]
    overlap_px: int
    blend: str = "cosine"

    @classmethod
    def plan(cls, height: int, width: int, tile_size: int, overlap: float,
             multiple: int = 32, blend: str = "cosine") -> "TileGrid":
        if tile_size < multiple or tile_size % multiple:
            raise ValueError(f"tile size must be a positive multiple of {multiple}, got {tile_size}")
        if not 0 <= overlap < 1:
            raise ValueError(f"overlap is a fraction of the tile in [0, 1), got {overlap}")
        check_blend(blend)
        # Images smaller than a tile get one tile, padded up to the network's multiple.
        tile_h = min(tile_size, round_up(height, multiple))
        tile_w = min(tile_size, round_up(width, multiple))
        overlap_px = int(round(overlap * min(tile_h, tile_w)))
        ys = tile_starts(height, tile_h, max(tile_h - overlap_px, 1))
        xs = tile_starts(width, tile_w, max(tile_w - overlap_px, 1))
        return cls(height, width, tile_h, tile_w, tuple(ys), tuple(xs), overlap_px, blend)

    def __len__(self) -> int:
        return len(self.ys) * len(self.xs)

    def __iter__(self):
        """(y0, x0) in row-major order: the accumulator relies on rows arriving in order."""
        for y0 in self.ys:
            for x0 in self.xs:
                yield y0, x0

    def touching(self, rows: tuple[int, int], cols: tuple[int, int]) -> list[tuple[int, int]]:
        """The tiles (row-major) that cover any pixel of the region [rows) x [cols): exactly
        the tiles a whole-image run blends there, so a region alone gives the same values."""
        ys = [y for y in self.ys if y < rows[1] and y + self.tile_h > rows[0]]
        xs = [x for x in self.xs if x < cols[1] and x + self.tile_w > cols[0]]
        return [(y, x) for y in ys for x in xs]

    def read(self, image, y0: int, x0: int) -> np.ndarray:
        """The tile at (y0, x0) as numpy, reflect-padded where the image ends."""
        tile = np.asarray(image[y0:y0 + self.tile_h, x0:x0 + self.tile_w])
        pad_y, pad_x = self.tile_h - tile.shape[0], self.tile_w - tile.shape[1]
        if pad_y or pad_x:
            pads = [(0, pad_y), (0, pad_x)] + [(0, 0)] * (tile.ndim - 2)
            mode = "reflect" if min(tile.shape[:2]) > 1 else "edge"
            tile = np.pad(tile, pads, mode=mode)
        return tile

    def window(self) -> np.ndarray:
        """Blending weights, never exactly 0. "cosine": flat centre, a raised-cosine taper over
        the overlap only. "gaussian": centre-weighted over the whole tile (sigma = 1/8 of the
        tile, as nnU-Net and MONAI use), for comparing with those tools."""
        if self.blend == "gaussian":
            return np.maximum(np.outer(_gaussian(self.tile_h), _gaussian(self.tile_w)), 1e-3)
        return np.outer(_taper(self.tile_h, self.overlap_px), _taper(self.tile_w, self.overlap_px))


BLENDS = ("cosine", "gaussian")


def check_blend(blend: str) -> None:
    if blend not in BLENDS:
        raise ValueError(f"blend must be one of {BLENDS}, got {blend!r}")


def _gaussian(n: int, sigma_fraction: float = 0.125) -> np.ndarray:
    d = np.arange(n) - (n - 1) / 2
    return np.exp(-0.5 * (d / (sigma_fraction * n)) ** 2).astype(np.float32)


def _taper(n: int, ramp: int) -> np.ndarray:
    if ramp <= 0:
        return np.ones(n, np.float32)
    d = np.minimum(np.arange(n), np.arange(n)[::-1]) + 0.5
    w = 0.5 - 0.5 * np.cos(np.pi * np.clip(d / ramp, 0.0, 1.0))
    # A floor keeps the image border (covered by one tile only) well defined.
    return np.maximum(w, 1e-3).astype(np.float32)


class RowBandAccumulator:
    """Weighted average of overlapping tiles, written out band by band.

    Tiles must arrive in row-major order. Only one tile-row band (tile_h x width) of sums and
    weights is held, on ``device`` (blending runs on the GPU when there is one); rows above the
    current band are final and go to ``out`` (numpy, zarr, or anything with 2D slice
    assignment), so the output is never held twice.

    ``staging`` (a ``staging.HostStaging``): finished rows come down through reused host
    buffers on its copy stream and are written to ``out`` later, once their copy has finished
    (at most ``max_pending`` in flight), so the host does not wait for the GPU at every row.
    Without it each row is copied and written at once. ``finish`` writes everything.
    """

    def __init__(self, grid: TileGrid, out, device="cpu", staging=None, max_pending: int = 2) -> None:
        import collections

        import torch

        self.grid = grid
        self.out = out
        self.window = torch.from_numpy(grid.window()).to(device)
        self.top = 0
        self.sums = torch.zeros((grid.tile_h, grid.width), dtype=torch.float32, device=device)
        self.weights = torch.zeros_like(self.sums)
        self.staging = staging
        self.max_pending = max(1, int(max_pending))
        self.pending = collections.deque()  # (top, rows, host buffer, host view), oldest first
        self.spare = []  # host buffers of written rows, reused for the next downloads

    def add(self, y0: int, x0: int, tile) -> None:
        """Add one (tile_h, tile_w) float tensor whose top-left corner is (y0, x0)."""
        if y0 < self.top:
            raise ValueError("tiles must be added in row-major order")
        if y0 > self.top:
            self._flush(y0 - self.top)
        h = min(self.grid.tile_h, self.grid.height - y0)
        w = min(self.grid.tile_w, self.grid.width - x0)
        win = self.window[:h, :w]
        self.sums[:h, x0:x0 + w] += tile[:h, :w] * win
        self.weights[:h, x0:x0 + w] += win

    def _flush(self, n: int) -> None:
        import torch

        n = min(n, self.grid.height - self.top)
        if n <= 0:
            return
        band = self.sums[:n] / self.weights[:n]
        if self.staging is None:
            self.out[self.top:self.top + n] = band.cpu().numpy()
        else:
            self._write(wait=False)
            while len(self.pending) >= self.max_pending:
                self._write_oldest()
            buf = self.spare.pop() if self.spare else self.staging.take(
                self.grid.tile_h * self.grid.width * 4)
            self.pending.append((self.top, n, buf, self.staging.download(buf, band)))
        # Shift the band up; the freed rows start empty.
        self.sums = torch.roll(self.sums, -n, dims=0)
        self.weights = torch.roll(self.weights, -n, dims=0)
        self.sums[-n:] = 0
        self.weights[-n:] = 0
        self.top += n

    def _write_oldest(self) -> None:
        top, n, buf, host = self.pending.popleft()
        buf.sync()
        self.out[top:top + n] = host.numpy()
        self.spare.append(buf)

    def _write(self, wait: bool) -> None:
        """Write the downloaded rows to ``out``, oldest first: all of them (``wait``), or
        those whose copy has already finished."""
        while self.pending and (wait or self.staging.ready(self.pending[0][2])):
            self._write_oldest()

    def finish(self):
        self._flush(self.grid.height - self.top)
        if self.staging is not None:
            self._write(wait=True)
        return self.out

    def close(self) -> None:
        """Give the host buffers back to the staging (rows not written are dropped)."""
        if self.staging is None:
            return
        for buf in [p[2] for p in self.pending] + self.spare:
            self.staging.give(buf)
        self.pending.clear()
        self.spare.clear()


class RegionAccumulator:
    """Weighted average of the tiles over one region [rows) x [cols) of the image.

    Fed every tile ``TileGrid.touching`` the region, it holds exactly the whole-image result
    there, so chunks of a huge image can be computed apart (on different workers) and still
    agree where they meet. Holds only the region, on ``device``.
    """

    def __init__(self, grid: TileGrid, rows: tuple[int, int], cols: tuple[int, int],
                 device="cpu") -> None:
        import torch

        self.grid, self.rows, self.cols = grid, rows, cols
        self.window = torch.from_numpy(grid.window()).to(device)
        shape = (rows[1] - rows[0], cols[1] - cols[0])
        self.sums = torch.zeros(shape, dtype=torch.float32, device=device)
        self.weights = torch.zeros_like(self.sums)

    def add(self, y0: int, x0: int, tile) -> None:
        # The part of the tile inside both the image and the region, in tile coordinates.
        ty0, tx0 = max(self.rows[0] - y0, 0), max(self.cols[0] - x0, 0)
        ty1 = min(self.grid.tile_h, self.grid.height - y0, self.rows[1] - y0)
        tx1 = min(self.grid.tile_w, self.grid.width - x0, self.cols[1] - x0)
        if ty1 <= ty0 or tx1 <= tx0:
            return
        ry, rx = y0 + ty0 - self.rows[0], x0 + tx0 - self.cols[0]
        win = self.window[ty0:ty1, tx0:tx1]
        self.sums[ry:ry + ty1 - ty0, rx:rx + tx1 - tx0] += tile[ty0:ty1, tx0:tx1] * win
        self.weights[ry:ry + ty1 - ty0, rx:rx + tx1 - tx0] += win

    def result(self):
        """The blended region as a float32 tensor on the accumulator's device."""
        if not bool((self.weights > 0).all()):
            raise ValueError("some pixels of the region were covered by no tile")
        return self.sums / self.weights
