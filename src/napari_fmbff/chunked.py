"""Images larger than memory: split into chunks, each computed with its halo of tiles.

A chunk's probabilities come from every tile of the whole-image grid that touches it
(``Segmenter.predict_region``), so chunks computed apart (in any order, on any worker) give
exactly the whole-image result, and each chunk is written once, as whole zarr chunks.
Memory on the host and the device is bounded by the chunk, not by the image.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .inference import Progress

#: Work unit edge in px: big enough that the recomputed halo tiles cost little (about 10 %
#: more tiles at tile 512 / overlap 0.25), small enough for a few hundred MB per worker.
DEFAULT_CHUNK = 4096
#: Chunk edge of the zarr arrays written: what napari and dask read back comfortably.
STORE_CHUNK = 1024


@dataclass(frozen=True)
class Chunk:
    """The region [rows) x [cols) of the output one task computes and writes."""

    rows: tuple[int, int]
    cols: tuple[int, int]

    @property
    def pixels(self) -> int:
        return (self.rows[1] - self.rows[0]) * (self.cols[1] - self.cols[0])


def store_chunk(chunk: int) -> int:
    """The zarr chunk edge for a work unit: STORE_CHUNK when it divides the unit, else the unit
    itself, so no two work units ever write into the same zarr chunk."""
    return STORE_CHUNK if chunk % STORE_CHUNK == 0 else chunk


def plan_chunks(height: int, width: int, chunk: int = DEFAULT_CHUNK) -> list[Chunk]:
    if chunk < 32 or chunk % 32:
        raise ValueError(f"chunk must be a positive multiple of 32 px, got {chunk}")
    return [Chunk((y, min(y + chunk, height)), (x, min(x + chunk, width)))
            for y in range(0, height, chunk) for x in range(0, width, chunk)]


def segment_chunk(segmenter, image, chunk: Chunk, intensity_range, threshold: float,
                  mask_out=None, prob_out=None) -> int:
    """Compute one chunk and write it; returns its foreground pixel count.

    mask_out gets 0/1 uint8 (label 1 = lesion, what a napari Labels layer shows);
    prob_out gets float32 probabilities.
    """
    prob = segmenter.predict_region(image, chunk.rows, chunk.cols, intensity_range)
    region = (slice(*chunk.rows), slice(*chunk.cols))
    mask = (prob >= threshold).astype(np.uint8)
    if mask_out is not None:
        mask_out[region] = mask
    if prob_out is not None:
        prob_out[region] = prob
    return int(mask.sum())


def iter_segment_chunked(segmenter, image, mask_out=None, prob_out=None,
                         chunk: int = DEFAULT_CHUNK, threshold: float = 0.5,
                         skip=None, after=None):
    """Generator: yields ``Progress`` in chunks; returns the foreground pixel count of the
    chunks it ran. ``skip(chunk)``: true for chunks already done (a resumed run);
    ``after(chunk)``: called once a chunk is written."""
    height, width = int(image.shape[0]), int(image.shape[1])
    chunks = plan_chunks(height, width, chunk)
    todo = [c for c in chunks if skip is None or not skip(c)]
    intensity_range = segmenter.normalization.intensity_range(image)
    done = len(chunks) - len(todo)
    yield Progress(done, len(chunks))
    foreground = 0
    for c in todo:
        foreground += segment_chunk(segmenter, image, c, intensity_range, threshold,
                                    mask_out, prob_out)
        if after is not None:
            after(c)
        done += 1
        yield Progress(done, len(chunks))
    return foreground
