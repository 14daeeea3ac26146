"""Images larger than memory: split into chunks, each computed with its halo of tiles.

A chunk's probabilities come from every tile of the whole-image grid that touches it
(``Segmenter.predict_region``), so chunks computed apart (in any order, on any worker) give
exactly the whole-image result, and each chunk is written once, as whole zarr chunks.
Memory on the host and the device is bounded by the chunk, not by the image.
"""

from __future__ import annotations

import numpy as np

from .postprocess import DEFAULT_THRESHOLD
from .progress import Progress
from .regions import Chunk

#: Work unit edge in px: big enough that the recomputed halo tiles cost little (about 10 %
#: more tiles at tile 512 / overlap 0.25), small enough for a few hundred MB per worker.
DEFAULT_CHUNK = 4096
#: Chunk edge of the zarr arrays written: what napari and dask read back comfortably.
STORE_CHUNK = 1024


def store_chunk(chunk: int) -> int:
    """The zarr chunk edge for a work unit: STORE_CHUNK when it divides the unit, else the unit
    itself, so no two work units ever write into the same zarr chunk."""
    return STORE_CHUNK if chunk % STORE_CHUNK == 0 else chunk


def plan_chunks(height: int, width: int, chunk: int = DEFAULT_CHUNK) -> list[Chunk]:
    if chunk < 32 or chunk % 32:
        raise ValueError(f"chunk must be a positive multiple of 32 px, got {chunk}")
    return [Chunk((y, min(y + chunk, height)), (x, min(x + chunk, width)))
            for y in range(0, height, chunk) for x in range(0, width, chunk)]


def spatial_shape_of(image) -> tuple[int, ...]:
    """(stack axes..., Y, X) of a 2D numpy image or an ``image_io.AxesView`` (maybe a stack)."""
    from .stacks import spatial_shape

    axes = getattr(image, "axes", None)
    channels = ("c" in axes) if axes is not None else image.ndim == 3
    return tuple(int(n) for n in spatial_shape(image.shape, channels))


def plan_stack(shape: tuple[int, ...], chunk: int = DEFAULT_CHUNK) -> list[Chunk]:
    """Chunks of every plane of a (stack axes..., Y, X) output, plane after plane."""
    import itertools

    flat = plan_chunks(shape[-2], shape[-1], chunk)
    return [Chunk(c.rows, c.cols, plane)
            for plane in itertools.product(*(range(n) for n in shape[:-2])) for c in flat]


class PlaneOf:
    """One plane of a stored stack, read and written lazily with 2D keys."""

    def __init__(self, array, plane: tuple[int, ...]) -> None:
        self.array, self.plane = array, tuple(plane)

    def __getitem__(self, key):
        return self.array[self.plane + (key if isinstance(key, tuple) else (key,))]

    def __setitem__(self, key, value):
        self.array[self.plane + (key if isinstance(key, tuple) else (key,))] = value


def segment_chunk(segmenter, image, chunk: Chunk, intensity_range, threshold: float,
                  mask_out=None, prob_out=None) -> int:
    """Compute one chunk and write it; returns its foreground pixel count.

    mask_out gets 0/1 uint8 (label 1 = lesion, what a napari Labels layer shows);
    prob_out gets float32 probabilities.
    """
    plane = image[chunk.plane] if chunk.plane else image
    prob = segmenter.predict_region(plane, chunk.rows, chunk.cols, intensity_range)
    mask = (prob >= threshold).astype(np.uint8)
    if mask_out is not None:
        mask_out[chunk.region] = mask
    if prob_out is not None:
        prob_out[chunk.region] = prob
    return int(mask.sum())


def plane_range(normalization, image, plane: tuple[int, ...]):
    """The intensity range of one plane (each plane of a stack normalised on its own, as the
    napari widget does for "image" scope)."""
    return normalization.intensity_range(image[plane] if plane else image)


def stack_range(normalization, image):
    """One intensity range for a whole lazy stack ("volume" scope): the percentiles of up to
    ``STACK_SAMPLE_PLANES`` evenly spaced planes (the planes ``Normalization.for_stack`` takes
    from an in-memory stack), pooled. At most ``PERCENTILE_SAMPLE_PIXELS`` pixels are read in
    all, in blocks for planes too large to read whole, so memory stays bounded. A stack small
    enough to read whole gets exactly ``for_stack``'s range."""
    import itertools
    import math

    from ..model.normalization import PERCENTILE_SAMPLE_PIXELS, STACK_SAMPLE_PLANES, subsample

    stack = spatial_shape_of(image)[:-2]
    if not stack:
        return normalization.intensity_range(image)
    planes = list(itertools.product(*(range(n) for n in stack)))
    picks = planes[::max(1, math.ceil(len(planes) / STACK_SAMPLE_PLANES))]
    budget = max(1, PERCENTILE_SAMPLE_PIXELS // len(picks))
    samples = [subsample(image[p], budget) for p in picks]
    # (pixels, 1[, channels]): one 2D "image" of every sampled pixel, channels kept together.
    pooled = np.concatenate([s.reshape(-1, 1, *s.shape[2:]) for s in samples])
    return normalization.intensity_range(pooled)


def intensity_ranges(normalization, image):
    """``range_of(plane)``: the intensity range to segment a plane of ``image`` with, computed
    once and kept: each plane's own ("image" scope) or one range for the whole stack
    ("volume" scope, ``stack_range``)."""
    whole = normalization.scope == "volume"
    kept: dict = {}

    def range_of(plane: tuple[int, ...]):
        key = () if whole else tuple(plane)
        if key not in kept:
            kept[key] = stack_range(normalization, image) if whole \
                else plane_range(normalization, image, key)
        return kept[key]

    return range_of


def iter_segment_chunked(segmenter, image, mask_out=None, prob_out=None,
                         chunk: int = DEFAULT_CHUNK, threshold: float = DEFAULT_THRESHOLD,
                         skip=None, after=None):
    """Generator: yields ``Progress`` of its chunks; returns the foreground pixel count of the
    chunks it ran. ``image`` may be a stack (an AxesView): every plane is done, each with its
    own intensity range or, for a "volume" normalisation scope, one range for the stack.
    ``skip(chunk)``: true for chunks already done (a resumed run); ``after(chunk)``: called
    once a chunk is written."""
    chunks = plan_stack(spatial_shape_of(image), chunk)
    todo = [c for c in chunks if skip is None or not skip(c)]
    range_of = intensity_ranges(segmenter.normalization, image)
    done = len(chunks) - len(todo)
    yield Progress("chunks", done, len(chunks))
    foreground = 0
    for c in todo:
        foreground += segment_chunk(segmenter, image, c, range_of(c.plane), threshold,
                                    mask_out, prob_out)
        if after is not None:
            after(c)
        done += 1
        yield Progress("chunks", done, len(chunks))
    return foreground
