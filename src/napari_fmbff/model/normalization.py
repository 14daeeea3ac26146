"""Intensity normalisation: any dtype in, float32 in [0, 1]-ish out, then the encoder's mean/std.

The settings a model was trained with travel in its checkpoint (``Normalization.to_dict``),
so training and segmenting always agree.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

import numpy as np

#: Percentiles are computed on at most this many pixels (a strided subsample), so a
#: 40k x 40k image is never read whole just to find its intensity range.
PERCENTILE_SAMPLE_PIXELS = 4_000_000
#: A "volume" range is taken from at most this many evenly spaced slices of the stack.
STACK_SAMPLE_PLANES = 32


@dataclass(frozen=True)
class Normalization:
    """How raw intensities become network input.

    mode: "auto" (uint8 / bool scale by 1/255 and 1, everything else by percentiles),
    "percentile", "minmax", "fixed" (``low``/``high`` are intensities) or "none" (already 0-1).
    low/high: percentiles for "percentile" / "auto"; values for "fixed".
    Percentiles are joint over channels so colours keep their balance.
    mean/std: the encoder's (timm pretrained_cfg), applied after scaling to [0, 1].
    scope: "image" (percentiles of each 2D image or slice) or "volume" (one range for a whole
    stack or volume: the caller resolves it with ``for_stack`` before segmenting, so the same
    tissue gets the same value on every slice). Fixed ranges are the same everywhere anyway.
    """

    mode: str = "auto"
    low: float = 1.0
    high: float = 99.8
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    scope: str = "image"

    MODES = ("auto", "percentile", "minmax", "fixed", "none")
    SCOPES = ("image", "volume")

    def __post_init__(self) -> None:
        if self.mode not in self.MODES:
            raise ValueError(f"normalisation mode must be one of {self.MODES}, got {self.mode!r}")
        if self.scope not in self.SCOPES:
            raise ValueError(f"normalisation scope must be one of {self.SCOPES}, "
                             f"got {self.scope!r}")
        if self.mode in ("auto", "percentile") and not 0 <= self.low < self.high <= 100:
            raise ValueError(
                f"percentiles need 0 <= low < high <= 100, got low={self.low}, high={self.high}"
            )
        if self.mode == "fixed" and not self.low < self.high:
            raise ValueError(f"fixed range needs low < high, got {self.low}, {self.high}")
        for name in ("low", "high"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) \
                    or not np.isfinite(value):
                raise ValueError(f"normalisation {name} must be a finite number, got {value!r}")
        for name in ("mean", "std"):
            values = getattr(self, name)
            if len(values) != 3 or not all(isinstance(v, (int, float)) and np.isfinite(v)
                                           for v in values):
                raise ValueError(f"normalisation {name} needs 3 finite numbers, got {values!r}")
        if min(self.std) <= 0:
            raise ValueError(f"normalisation std must be > 0 (it divides), got {self.std}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Normalization":
        d = dict(d)
        d["mean"], d["std"] = tuple(d.get("mean", cls.mean)), tuple(d.get("std", cls.std))
        return cls(**d)

    def for_stack(self, data) -> "Normalization":
        """What to segment a stack (Z, Y, X[, C]) or volume with: a "volume" scope becomes the
        fixed range of this whole stack (percentiles over up to ``STACK_SAMPLE_PLANES``
        evenly spaced slices); anything else is returned as it is."""
        if self.scope != "volume" or self.mode in ("fixed", "none"):
            return self
        n = int(data.shape[0]) if getattr(data, "ndim", 0) >= 3 else 1
        step = max(1, math.ceil(n / STACK_SAMPLE_PLANES))
        sample = np.asarray(data[::step]) if n > 1 else np.asarray(data)
        low, high = self.intensity_range(sample)
        return replace(self, mode="fixed", low=float(low), high=float(high), scope="image")

    def describe(self) -> str:
        """A few words for a status line or a model card."""
        if self.mode == "fixed":
            return f"fixed range {self.low:g} to {self.high:g}"
        if self.mode == "auto":
            what = "8-bit by 1/255, others by percentiles"
        elif self.mode == "percentile":
            what = f"percentiles {self.low:g}-{self.high:g}"
        else:
            what = {"minmax": "min to max", "none": "as given (0-1)"}[self.mode]
        return what + (" of the whole volume" if self.scope == "volume" else "")

    def intensity_range(self, image) -> tuple[float, float]:
        """The (low, high) intensities that map to 0 and 1, for a whole image.

        ``image`` may be numpy, dask or zarr: only a subsample is read (strided for
        numpy, random 256 px blocks for lazy images, so only their chunks are decoded).
        """
        dtype = np.dtype(image.dtype)
        if self.mode == "none":
            return 0.0, 1.0
        if self.mode == "fixed":
            return float(self.low), float(self.high)
        if self.mode == "auto" and dtype == np.uint8:
            return 0.0, 255.0
        if dtype == bool:
            return 0.0, 1.0
        sample = np.asarray(subsample(image), dtype=np.float64)
        finite = sample[np.isfinite(sample)]
        if finite.size == 0:
            raise ValueError("the image has no finite values (all NaN or inf)")
        if self.mode == "minmax":
            lo, hi = float(finite.min()), float(finite.max())
        else:
            lo, hi = (float(v) for v in np.percentile(finite, [self.low, self.high]))
        if hi <= lo:  # a flat image: keep it flat instead of dividing by zero
            hi = lo + 1.0
        return lo, hi

    def apply(self, tiles, intensity_range: tuple[float, float]):
        """(B, H, W, 3) raw tiles (a torch tensor, any dtype, on any device) -> (B, 3, H, W)
        float32 network input. Runs where the tensor is, so on a GPU the host only ships
        raw pixels (a quarter of the bytes for uint8)."""
        return self.standardize(self.to_unit(tiles, intensity_range).permute(0, 3, 1, 2))

    def to_unit(self, x, intensity_range: tuple[float, float]):
        """Raw intensities -> float32, ``low`` -> 0 and ``high`` -> 1 (not clipped)."""
        import torch

        lo, hi = intensity_range
        x = (x.to(torch.float32) - lo) * (1.0 / (hi - lo))
        return torch.nan_to_num(x, nan=0.0, posinf=1.0, neginf=0.0)

    def standardize(self, x):
        """(..., 3, H, W) unit-range tensor -> the encoder's mean/std."""
        import torch

        mean = torch.tensor(self.mean, dtype=torch.float32, device=x.device)[:, None, None]
        std = torch.tensor(self.std, dtype=torch.float32, device=x.device)[:, None, None]
        return (x - mean) / std


#: Pixel types torch can take as they are; others become float32 on the host.
TORCH_NATIVE = {np.dtype(t) for t in (np.uint8, np.int8, np.int16, np.int32, np.int64,
                                      np.float16, np.float32, np.float64, np.bool_)}


def torch_ready(array: np.ndarray) -> np.ndarray:
    """The array in a dtype ``torch.from_numpy`` accepts, copying only when it must."""
    return array if array.dtype in TORCH_NATIVE else array.astype(np.float32)


#: Lazy images (zarr, dask, ...) are sampled in blocks of this edge, so only the chunks under
#: the blocks are read: a strided sample would decode every chunk of the image.
SAMPLE_BLOCK = 256


def subsample(image, pixels: int | None = None) -> np.ndarray:
    """About ``pixels`` (default ``PERCENTILE_SAMPLE_PIXELS``) pixels of a 2D image (Y, X[, C]) to take percentiles from: a strided
    grid (all of it when it is small), or, for a large lazy image (zarr, dask), seeded random
    blocks of up to ``SAMPLE_BLOCK`` px, so only the chunks under them are decoded. Blocks come
    back as one (N, 1[, C]) image."""
    pixels = PERCENTILE_SAMPLE_PIXELS if pixels is None else pixels
    h, w = image.shape[:2]
    edge = max(1, min(SAMPLE_BLOCK, math.isqrt(pixels)))
    if isinstance(image, np.ndarray) or h * w <= 4 * pixels or min(h, w) < edge:
        step = max(1, math.ceil(math.sqrt(h * w / pixels)))
        return np.asarray(image[::step, ::step])
    # Seeded, so every process (a CLI run, each dask worker) computes the same range.
    rng = np.random.default_rng(0)
    rows, cols = h // edge, w // edge
    n = max(1, min(rows * cols, pixels // edge**2))
    picks = rng.choice(rows * cols, size=n, replace=False)
    blocks = [np.asarray(image[r * edge:(r + 1) * edge, c * edge:(c + 1) * edge])
              for r, c in (divmod(int(k), cols) for k in sorted(picks))]
    return np.concatenate([b.reshape(-1, 1, *b.shape[2:]) for b in blocks])


def as_three_channels(tile: np.ndarray) -> np.ndarray:
    """(H, W), (H, W, 1), (H, W, 3) or (H, W, 4) -> (H, W, 3): grey repeated, alpha dropped."""
    if tile.ndim == 2:
        tile = tile[..., None]
    c = tile.shape[-1]
    if c == 1:
        return np.repeat(tile, 3, axis=-1)
    if c in (3, 4):
        return tile[..., :3]
    raise ValueError(f"expected 1, 3 or 4 channels, got {c}")


def default_normalization(model) -> Normalization:
    """What the checkpoint recorded, else "auto" with the encoder's own mean and std."""
    meta = getattr(model, "metadata", {}) or {}
    if meta.get("normalization"):
        return Normalization.from_dict(meta["normalization"])
    cfg = getattr(model, "pretrained_cfg", None) or {}
    return Normalization(mean=tuple(cfg.get("mean", (0.5,) * 3)), std=tuple(cfg.get("std", (0.5,) * 3)))
