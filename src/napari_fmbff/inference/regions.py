"""The work unit of a large job: one region of one plane of the output.

Its own module, below both the chunked runner (``chunked``) and the whole-object
post-processing that sweeps chunk by chunk (``postprocess``), so neither imports the other.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Chunk:
    """The region [rows) x [cols) of one plane of the output that one task computes and
    writes; ``plane`` indexes the stack axes (empty for a 2D image)."""

    rows: tuple[int, int]
    cols: tuple[int, int]
    plane: tuple[int, ...] = ()

    @property
    def region(self) -> tuple:
        """The chunk's index into the full (stack) output."""
        return self.plane + (slice(*self.rows), slice(*self.cols))

    @property
    def pixels(self) -> int:
        return (self.rows[1] - self.rows[0]) * (self.cols[1] - self.cols[0])
