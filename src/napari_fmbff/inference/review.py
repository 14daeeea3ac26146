"""Which slice of a segmented stack to check next, and how trustworthy its probabilities are.

numpy (and scipy, lazily): the Segment widget's "next slice to check" and
benchmarks/interactive.py call the same functions on the (Z, Y, X) foreground probabilities of
a stack and the mask the user is shown.
"""

from __future__ import annotations

import numpy as np


def slice_uncertainty(probs) -> np.ndarray:
    """One score per slice of a (Z, Y, X) probability stack: the expected number of pixels the
    0.5-threshold mask gets wrong, ``sum(min(p, 1 - p))`` over the slice.

    Why this one: if the probabilities are calibrated it is exactly the number of pixels a
    correction would change, so a slice with a large doubtful rim or a doubtful false alarm
    ranks above one with a thin doubtful edge; it needs no threshold or "near the mask"
    distance, and a confident slice (all p near 0 or 1, lesion or not) scores about 0.
    (A mean entropy over pixels near the mask would miss doubtful false alarms far from it.)
    """
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 3:
        raise ValueError(f"probabilities must be a (Z, Y, X) stack, got shape {p.shape}")
    return np.minimum(p, 1.0 - p).sum(axis=(1, 2))


#: The lesion's footprint (every slice's shown mask, seen from above) grows by this many pixels:
#: doubt this close to it may be a missed or a spilled part of the lesion.
REVIEW_GROW = 10
#: A slice further than one slice beyond the shown lesion's first or last slice counts
#: ``REVIEW_DECAY ** (distance - 1)`` of its doubt.
REVIEW_DECAY = 0.5


def review_scores(probs, shown, grow: int = REVIEW_GROW, decay: float = REVIEW_DECAY):
    """One score per slice of a (Z, Y, X) probability stack: the expected number of wrong
    pixels (``slice_uncertainty``'s ``min(p, 1 - p)``) near the lesion the user is
    ``shown``; "next slice to check" takes the highest.

    ``shown``: the (Z, Y, X) mask on screen (after threshold, connected rule, corrections).
    Only pixels inside the lesion's footprint count: the shown mask of every slice, seen from
    above, grown by ``grow`` pixels. A slice more than one slice beyond the shown lesion's
    first or last slice counts ``decay ** (distance - 1)`` of its doubt.

    Why: after a propagation the model's doubt lies mostly on false alarms far from the
    lesion, which the connected rule already keeps off the screen, so the slice with the most
    doubt over the whole slice was often one whose shown mask had no error at all
    (benchmarks/interactive.py, docs/performance.md). With nothing shown, every pixel and
    slice counts, as in ``slice_uncertainty``.
    """
    p = np.asarray(probs, dtype=np.float32)
    mask = np.asarray(shown) > 0
    if p.ndim != 3 or mask.shape != p.shape:
        raise ValueError(f"probabilities {p.shape} and shown mask {mask.shape} must be one "
                         "(Z, Y, X) stack")
    footprint = mask.any(axis=0)
    if not footprint.any():
        return slice_uncertainty(p)
    if grow > 0:
        from scipy import ndimage

        footprint = ndimage.distance_transform_edt(~footprint) <= grow
    near = p[:, footprint]
    doubt = np.minimum(near, 1.0 - near).sum(axis=1, dtype=np.float64)
    lesion = np.flatnonzero(mask.any(axis=(1, 2)))
    z = np.arange(p.shape[0])
    beyond = np.maximum(0, np.maximum(lesion[0] - z, z - lesion[-1]))
    return doubt * np.where(beyond <= 1, 1.0, float(decay) ** np.maximum(beyond - 1, 0))


def next_slice(scores, done=()) -> int | None:
    """The index of the highest score not in ``done`` (ties: the lowest index; NaN ranks
    last); None when every slice is done."""
    s = np.asarray(scores, dtype=np.float64).copy()
    open_ = np.ones(s.shape[0], bool)
    open_[[int(k) for k in done if 0 <= int(k) < s.shape[0]]] = False
    if not open_.any():
        return None
    s[np.isnan(s)] = -np.inf
    s[~open_] = -np.inf
    candidates = np.flatnonzero(open_)
    return int(candidates[np.argmax(s[candidates])])


def expected_calibration_error(prob, truth, bins: int = 15) -> float:
    """Expected calibration error of foreground probabilities against a 0/1 truth: pixels in
    ``bins`` equal-width bins of p; the pixel-weighted mean over bins of
    |mean p - fraction of truth pixels| (0: calibrated; p = 1 falls in the last bin)."""
    p = np.clip(np.asarray(prob, dtype=np.float64).ravel(), 0.0, 1.0)
    t = (np.asarray(truth) > 0).ravel().astype(np.float64)
    if p.shape != t.shape:
        raise ValueError(f"probabilities {np.shape(prob)} and truth {np.shape(truth)} differ")
    if p.size == 0:
        return float("nan")
    which = np.minimum((p * bins).astype(np.int64), bins - 1)
    count = np.bincount(which, minlength=bins)
    gap = np.abs(np.bincount(which, p, bins) - np.bincount(which, t, bins))
    return float(gap.sum() / count.sum())
