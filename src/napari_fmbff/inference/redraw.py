"""Redraw a propagation's slices with LiteMedSAM, from the boxes of FM-BFF-Net's own masks.

FM-BFF-Net, fine-tuned on one or a few slices, finds the lesion on the neighbouring slices
but tends to draw it too tight there; LiteMedSAM, given a box, draws a lesion's outline well
(0.93 pooled Dice from a box on every lesion slice of the pyradiomics volumes). So after a
propagation every object the model added on a slice is redrawn by LiteMedSAM from that
object's bounding box grown by ``GROW`` px: FM-BFF-Net says where the lesion is, LiteMedSAM
how far it reaches. The user's slices are never touched, an object keeps its id, another
object's pixels are never taken, and an object LiteMedSAM draws nothing for stays as it was.
Chosen by benchmarks/interactive.py --levers (docs/models.md, "Issue 30's levers"). Each slice costs one LiteMedSAM encoding (about 2.3 CPU s), each
object one decoding (about 0.1 s); a slice seen before costs the decoding only.
"""

from __future__ import annotations

import numpy as np

#: Pixels added on each side of an object's bounding box (as a box prompt is grown).
GROW = 5


def object_box(mask, grow: int = GROW) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1): ``mask``'s bounding box grown by ``grow`` px, inside the plane."""
    ys, xs = np.nonzero(mask)
    h, w = mask.shape
    return (max(int(xs.min()) - grow, 0), max(int(ys.min()) - grow, 0),
            min(int(xs.max()) + grow, w - 1), min(int(ys.max()) + grow, h - 1))


def iter_redraw(volume, labels, zs, device: str = "cpu", intensity_range=None):
    """Generator: yields ``Progress`` ("slices", detail "redrawing") per slice; returns
    (labels with every object on the slices not in ``zs`` redrawn, the slices redrawn).

    ``labels`` (Z, Y, X) int: a propagation's labels (the user's slices ``zs`` verbatim);
    ``intensity_range``: LiteMedSAM's range for the volume (default ``volume_range``).
    Objects smaller than 2 x 2 px are left as they are (no box to give)."""
    from . import litemedsam
    from .progress import Progress

    out = np.array(labels, copy=True)
    if intensity_range is None:
        intensity_range = litemedsam.volume_range(volume)
    user = set(zs)
    todo = [z for z in range(len(out)) if z not in user and out[z].any()]
    done = []
    for k, z in enumerate(todo):
        plane = np.asarray(volume[z])
        before = out[z].copy()
        for obj in (int(v) for v in np.unique(before) if v):
            mine = before == obj
            x0, y0, x1, y1 = object_box(mine)
            if x1 - x0 < 2 or y1 - y0 < 2:
                continue
            drawn = litemedsam.litemedsam_box(plane, (x0, y0, x1, y1), device, intensity_range)
            if not drawn.any():  # nothing to redraw with: the model's object stays
                continue
            free = (out[z] == 0) | (out[z] == obj)
            out[z][mine] = 0
            out[z][drawn & free] = obj
        done.append(z)
        yield Progress("slices", k + 1, len(todo), "redrawing")
    return out, done
