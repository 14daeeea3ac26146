"""Redraw a propagation's slices with LiteMedSAM, from the boxes of FM-BFF-Net's own masks.

FM-BFF-Net, fine-tuned on one or a few slices, finds the lesion on the neighbouring slices
but tends to draw it too tight there; LiteMedSAM, given a box, draws a lesion's outline well
(0.93 pooled Dice from a box on every lesion slice of the pyradiomics volumes). So after a
propagation every object the model added on a slice is redrawn by LiteMedSAM from that
object's bounding box grown by ``GROW`` px: FM-BFF-Net says where the lesion is, LiteMedSAM
how far it reaches. The user's slices are never touched, an object keeps its id, another
object's pixels are never taken, and an object LiteMedSAM draws nothing for stays as it was.
Chosen by benchmarks/interactive.py --levers (docs/models.md, "Issue 30's levers"). Each slice costs one LiteMedSAM encoding (about 1 CPU s in bfloat16, 2.3 in float32), each
object one decoding (about 0.1 s); a slice seen before costs the decoding only. An object
LiteMedSAM rates below ``UNSURE`` (its own predicted IoU for the redraw) is taken off its
slice: the model marked something there that LiteMedSAM finds no object in.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Pixels added on each side of an object's bounding box (as a box prompt is grown).
GROW = 5

#: An object whose redraw LiteMedSAM rates below this predicted IoU (its decoder's own IoU
#: head, ``litemedsam.decode``) is taken off that slice: LiteMedSAM finds nothing in the box
#: it can outline. Over 191 cached propagations of the levers table (every recipe, 841
#: marked slices), below 0.5 fell 17 of 137 slices the model marked without a lesion and 1
#: of 704 lesion slices (its mask held 42 of the lesion's 1,751 px); 0.6 takes 4 lesion
#: slices. None: never (docs/models.md, "LiteMedSAM's own doubt").
UNSURE = 0.5


def object_box(mask, grow: int = GROW) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1): ``mask``'s bounding box grown by ``grow`` px, inside the plane."""
    ys, xs = np.nonzero(mask)
    h, w = mask.shape
    return (max(int(xs.min()) - grow, 0), max(int(ys.min()) - grow, 0),
            min(int(xs.max()) + grow, w - 1), min(int(ys.max()) + grow, h - 1))


def iter_redraw(volume, labels, zs, device: str = "cpu", intensity_range=None,
                unsure: float | None = UNSURE):
    """Generator: yields ``Progress`` ("slices", detail "redrawing") per slice; returns
    (labels with every object on the slices not in ``zs`` redrawn, the slices redrawn, the
    slices an object was taken off).

    ``labels`` (Z, Y, X) int: a propagation's labels (the user's slices ``zs`` verbatim);
    ``intensity_range``: LiteMedSAM's range for the volume (default ``volume_range``).
    Objects smaller than 2 x 2 px are left as they are (no box to give). An object whose
    redraw LiteMedSAM rates below ``unsure`` predicted IoU is taken off its slice (``UNSURE``;
    None: never)."""
    from . import litemedsam
    from .progress import Progress

    out = np.array(labels, copy=True)
    if intensity_range is None:
        intensity_range = litemedsam.volume_range(volume)
    user = set(zs)
    todo = [z for z in range(len(out)) if z not in user and out[z].any()]
    done, dropped = [], []
    for k, z in enumerate(todo):
        plane = np.asarray(volume[z])
        before = out[z].copy()
        for obj in (int(v) for v in np.unique(before) if v):
            mine = before == obj
            x0, y0, x1, y1 = object_box(mine)
            if x1 - x0 < 2 or y1 - y0 < 2:
                continue
            drawn, iou = litemedsam.litemedsam_box(plane, (x0, y0, x1, y1), device,
                                                   intensity_range, scored=True)
            if unsure is not None and iou < unsure:  # nothing here LiteMedSAM can outline
                out[z][mine] = 0
                dropped.append(z)
                continue
            if not drawn.any():  # nothing to redraw with: the model's object stays
                continue
            free = (out[z] == 0) | (out[z] == obj)
            out[z][mine] = 0
            out[z][drawn & free] = obj
        if out[z].any():
            done.append(z)
        yield Progress("slices", k + 1, len(todo), "redrawing")
    return out, done, sorted(set(dropped))


@dataclass(frozen=True)
class EndRule:
    """When a lesion is carried one slice past its end (``iter_extend_ends``): LiteMedSAM's
    mask on the next slice, from the end slice's box, is taken only when it is the same lesion
    by its own signals: its area ``ratio`` (low, high) of the end slice's, at least ``inside``
    of it within the end slice's mask (the lesion does not jump), and its median intensity
    within ``shift`` interquartile ranges of the end slice's lesion (LiteMedSAM fills any box;
    past a lesion's end it fills it with what is there, which looks otherwise). ``steps``:
    slices carried at most on each side."""

    ratio: tuple = (0.3, 1.2)
    inside: float = 0.5
    shift: float = 0.5
    steps: int = 2

    def same_lesion(self, end_plane, end_mask, plane, drawn) -> bool:
        if not drawn.any():
            return False
        ratio = drawn.sum() / end_mask.sum()
        inside = (drawn & end_mask).sum() / drawn.sum()
        before = np.asarray(end_plane, np.float64)[end_mask]
        q1, q3 = np.percentile(before, [25, 75])
        shift = abs(float(np.median(np.asarray(plane, np.float64)[drawn])) - np.median(before))
        return bool(self.ratio[0] <= ratio <= self.ratio[1] and inside >= self.inside
                    and shift <= self.shift * max(q3 - q1, 1e-6))


def iter_extend_ends(volume, labels, zs, device: str = "cpu", intensity_range=None,
                     rule: EndRule | None = None):
    """Generator: yields ``Progress`` ("slices", detail "lesion ends") per slice tried;
    returns (labels with objects carried past their ends, the slices written).

    For every object (id) of ``labels``: from its first and its last slice outward, LiteMedSAM
    draws the next slice from the end slice's box (``object_box``), and the mask is taken
    where ``rule`` (``EndRule``) says it is the same lesion, up to ``rule.steps`` slices on each
    side. The user's slices ``zs`` are never written nor passed; another object's pixels are
    never taken."""
    from . import litemedsam
    from .progress import Progress

    rule = rule or EndRule()
    out = np.array(labels, copy=True)
    if intensity_range is None:
        intensity_range = litemedsam.volume_range(volume)
    user, written, tried = set(zs), [], 0
    for obj in (int(v) for v in np.unique(out) if v):
        present = [z for z in range(len(out)) if (out[z] == obj).any()]
        for end, step in ((present[0], -1), (present[-1], 1)):
            for _ in range(rule.steps):
                nxt = end + step
                if not 0 <= nxt < len(out) or nxt in user or (out[nxt] == obj).any():
                    break
                mask = out[end] == obj
                x0, y0, x1, y1 = object_box(mask)
                if x1 - x0 < 2 or y1 - y0 < 2:
                    break
                plane = np.asarray(volume[nxt])
                drawn = litemedsam.litemedsam_box(plane, (x0, y0, x1, y1), device,
                                                  intensity_range) & (out[nxt] == 0)
                tried += 1
                yield Progress("slices", tried, tried, "lesion ends")
                if not rule.same_lesion(np.asarray(volume[end]), mask, plane, drawn):
                    break
                out[nxt][drawn] = obj
                written.append(nxt)
                end = nxt
    return out, sorted(set(written))
