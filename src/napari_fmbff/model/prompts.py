"""Prompts as the network sees them: boxes and clicks drawn as three maps at the image's size.

Channels (``PROMPT_CHANNELS``): 1 inside each box; a disk of ``radius`` px at each positive
click; the same for each negative click; all in [0, 1]. Coordinates are napari's for the
displayed plane: x the column, y the row, pixel centres at whole numbers, so a pixel lies in a
box when its centre does (``(10, 20, 30, 40)`` covers columns 10..30 and rows 20..40).
``simulate_prompts`` makes them from a training mask. numpy only (scipy inside one function).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

#: The prompt maps' channels, in order.
PROMPT_CHANNELS = ("box", "positive", "negative")
#: Radius of a click's disk in pixels (RITM's disk encoding of clicks uses 5).
CLICK_RADIUS = 5.0


def prompt_maps(shape, boxes=(), points=(), radius: float = CLICK_RADIUS) -> np.ndarray:
    """float32 (3, H, W) maps of ``boxes`` [(x0, y0, x1, y1)] and ``points`` [(x, y, positive)]
    on a plane of ``shape`` (H, W); a point without its third value is positive."""
    h, w = _plane_shape(shape)
    if isinstance(radius, bool) or not isinstance(radius, (int, float)) or not radius > 0:
        raise ValueError(f"click radius must be a positive number of pixels, got {radius!r}")
    maps = np.zeros((len(PROMPT_CHANNELS), h, w), np.float32)
    for box in boxes:
        rows, cols = box_pixels(box, (h, w))
        maps[0, rows, cols] = 1.0
    for point in points:
        x, y, positive = check_click(point, (h, w))
        _draw_disk(maps[1 if positive else 2], x, y, float(radius))
    return maps


def box_pixels(box, shape) -> tuple[slice, slice]:
    """The rows and columns whose pixel centres lie in ``box`` (x0, y0, x1, y1; either corner
    first), clipped to the (H, W) plane; a box of zero area or outside the plane is refused."""
    h, w = _plane_shape(shape)
    values = _numbers(box, 4, "box", "x0, y0, x1, y1")
    x0, x1 = sorted(values[0::2])
    y0, y1 = sorted(values[1::2])
    if x0 == x1 or y0 == y1:
        raise ValueError(f"box {tuple(box)} has zero area; give two opposite corners "
                         "x0, y0, x1, y1 that differ in both x and y")
    c0, c1 = max(math.ceil(x0), 0), min(math.floor(x1), w - 1)
    r0, r1 = max(math.ceil(y0), 0), min(math.floor(y1), h - 1)
    if c0 > c1 or r0 > r1:
        inside = x1 >= -0.5 and x0 <= w - 0.5 and y1 >= -0.5 and y0 <= h - 0.5
        raise ValueError(
            f"box {tuple(box)} " + ("covers no pixel centre; draw it larger" if inside else
                                    f"lies outside the {w} x {h} image (x 0..{w - 1}, "
                                    f"y 0..{h - 1}); draw it on the image"))
    return slice(r0, r1 + 1), slice(c0, c1 + 1)


def _plane_shape(shape) -> tuple[int, int]:
    if len(shape) != 2 or any(int(s) != s or s < 1 for s in shape):
        raise ValueError(f"prompt maps need a plane's shape (height, width), got {tuple(shape)}")
    return int(shape[0]), int(shape[1])


def _numbers(values, n: int, what: str, names: str) -> list[float]:
    try:
        out = [float(v) for v in values]
    except (TypeError, ValueError):
        out = []
    if len(out) != n or not all(math.isfinite(v) for v in out):
        raise ValueError(f"a {what} is {n} finite numbers ({names}), got {values!r}")
    return out


def check_click(point, shape) -> tuple[float, float, bool]:
    """(x, y, positive) of a click, refused where its pixel lies outside the plane."""
    h, w = shape
    point = tuple(point) if isinstance(point, (tuple, list, np.ndarray)) else (point,)
    if len(point) not in (2, 3):
        raise ValueError(f"a click is x, y[, positive], got {point!r}")
    positive = point[2] if len(point) == 3 else True
    if not isinstance(positive, (bool, np.bool_)):
        raise ValueError(f"click {point!r}: its third value says positive (True) or negative "
                         f"(False), got {positive!r}")
    x, y = _numbers(point[:2], 2, "click", "x, y[, positive]")
    if not (0 <= math.floor(x + 0.5) < w and 0 <= math.floor(y + 0.5) < h):
        raise ValueError(f"click at x={x:g}, y={y:g} lies outside the {w} x {h} image "
                         f"(x 0..{w - 1}, y 0..{h - 1}); click on the image")
    return x, y, bool(positive)


def _draw_disk(plane: np.ndarray, x: float, y: float, radius: float) -> None:
    """Set to 1 the pixels whose centres lie within ``radius`` of (x, y)."""
    h, w = plane.shape
    r0, r1 = max(math.ceil(y - radius), 0), min(math.floor(y + radius), h - 1)
    c0, c1 = max(math.ceil(x - radius), 0), min(math.floor(x + radius), w - 1)
    rows = np.arange(r0, r1 + 1)[:, None]
    cols = np.arange(c0, c1 + 1)[None, :]
    disk = (rows - y) ** 2 + (cols - x) ** 2 <= radius ** 2
    plane[r0:r1 + 1, c0:c1 + 1][disk] = 1.0


class SimulatedPrompts(NamedTuple):
    """A training sample's prompts: the maps, the mask the network should give for them (the
    prompted lesion alone; the whole mask when there is no prompt), and the prompts drawn."""

    maps: np.ndarray
    target: np.ndarray
    boxes: list
    points: list


@dataclass(frozen=True)
class PromptSampling:
    """How ``simulate_prompts`` draws a training sample's prompts.

    Args:
        p_none: share of samples with no prompt (automatic segmentation stays trained).
        p_box: share of prompted samples with a box.
        max_clicks: at most this many clicks.
        jitter: each box side moves by up to this share of the lesion's size either way.
        pad: ... plus up to this many pixels outward (a user's loose box).
        radius: a click's disk radius in pixels.
    """

    p_none: float = 0.3
    p_box: float = 0.7
    max_clicks: int = 3
    jitter: float = 0.05
    pad: float = 5.0
    radius: float = CLICK_RADIUS


def simulate_prompts(mask, rng: np.random.Generator, sampling: PromptSampling | None = None,
                     prediction=None) -> SimulatedPrompts:
    """Prompts a user could give for one lesion of a 2D ``mask``, for training, drawn as
    ``sampling`` (``PromptSampling``) says.

    No prompt ``p_none`` of the time (and for an empty mask), so automatic segmentation stays
    trained. Otherwise one lesion (an 8-connected component) gets, ``p_box`` of the time, its
    bounding box with each side moved by up to ``jitter`` of the lesion's size either way plus
    up to ``pad`` px outward (a user's loose box), and clicks: with a box none half the time,
    else 1..``max_clicks``; the first click without a box is positive. Positive clicks fall
    inside the lesion, negative ones outside the mask near it; given the network's current
    ``prediction`` (bool, same shape), in its misses and false alarms there, as interactive
    training does.
    """
    how = sampling or PromptSampling()
    p_none, p_box, max_clicks, jitter, pad, radius = (how.p_none, how.p_box, how.max_clicks,
                                                      how.jitter, how.pad, how.radius)
    m = np.asarray(mask) != 0
    if m.ndim != 2:
        raise ValueError(f"simulate_prompts needs a 2D mask, got shape {m.shape}")
    if not m.any() or rng.random() < p_none:
        return SimulatedPrompts(np.zeros((len(PROMPT_CHANNELS), *m.shape), np.float32), m, [], [])
    lesion = _pick_lesion(m, rng)
    boxes = [_jittered_box(lesion, rng, jitter, pad)] if rng.random() < p_box else []
    n_clicks = 0 if boxes and rng.random() < 0.5 else int(rng.integers(1, max_clicks + 1))
    pos_area, neg_area = _click_areas(lesion, m, pad, prediction)
    points = []
    for i in range(n_clicks):
        positive = (i == 0 and not boxes) or rng.random() < 0.5 or not neg_area.any()
        area = pos_area if positive else neg_area
        rows, cols = np.nonzero(area)
        k = int(rng.integers(len(rows)))
        points.append((float(cols[k]), float(rows[k]), bool(positive)))
    return SimulatedPrompts(prompt_maps(m.shape, boxes, points, radius), lesion, boxes, points)


def corrective_click(target, prediction, rng: np.random.Generator | None = None):
    """The click a user would give next, ``(x, y, positive)``, or None when ``prediction``
    (bool, as ``target``) has no error: in the larger of the misses (positive) and the false
    alarms (negative), at the error pixel farthest from the error's edge (RITM's and
    nnInteractive's simulated user; ties broken by ``rng``)."""
    from scipy import ndimage

    target, pred = np.asarray(target) != 0, np.asarray(prediction) != 0
    missed, false_alarm = target & ~pred, pred & ~target
    if not (missed.any() or false_alarm.any()):
        return None
    positive = int(missed.sum()) >= int(false_alarm.sum())
    error = missed if positive else false_alarm
    depth = ndimage.distance_transform_edt(np.pad(error, 1))[1:-1, 1:-1]
    rows, cols = np.nonzero(depth == depth.max())
    k = int(rng.integers(len(rows))) if rng is not None else 0
    return float(cols[k]), float(rows[k]), positive


def add_click(maps: np.ndarray, click, radius: float = CLICK_RADIUS) -> np.ndarray:
    """``maps`` (3, H, W) with one more click ``(x, y, positive)`` drawn in place."""
    x, y, positive = check_click(click, maps.shape[1:])
    _draw_disk(maps[1 if positive else 2], x, y, float(radius))
    return maps


def _pick_lesion(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One 8-connected component of ``mask``, each equally likely."""
    from scipy import ndimage

    labels, n = ndimage.label(mask, structure=np.ones((3, 3), bool))
    return labels == int(rng.integers(1, n + 1))


def _bounds(region: np.ndarray) -> tuple[int, int, int, int]:
    rows, cols = np.nonzero(region)
    return int(rows.min()), int(rows.max()), int(cols.min()), int(cols.max())


def _jittered_box(lesion: np.ndarray, rng: np.random.Generator, jitter: float, pad: float):
    """The lesion's bounding box (pixel edges), each side moved by up to ``jitter`` of the
    lesion's size either way plus up to ``pad`` px outward, clipped to the plane."""
    h, w = lesion.shape
    r0, r1, c0, c1 = _bounds(lesion)
    height, width = r1 - r0 + 1, c1 - c0 + 1

    def out(size: float) -> float:
        return float(rng.uniform(-jitter, jitter) * size + rng.uniform(0, pad))

    x0 = max(c0 - 0.5 - out(width), -0.5)
    x1 = min(c1 + 0.5 + out(width), w - 0.5)
    y0 = max(r0 - 0.5 - out(height), -0.5)
    y1 = min(r1 + 0.5 + out(height), h - 0.5)
    return (x0, y0, x1, y1)


def _click_areas(lesion: np.ndarray, mask: np.ndarray, pad: float, prediction):
    """Where positive and negative clicks may fall: the lesion, and the background within its
    bounding box grown by a quarter of its size (at least ``pad`` px); narrowed to the
    prediction's misses and false alarms where it has any there."""
    h, w = mask.shape
    r0, r1, c0, c1 = _bounds(lesion)
    grow_r = max(pad, 0.25 * (r1 - r0 + 1))
    grow_c = max(pad, 0.25 * (c1 - c0 + 1))
    near = np.zeros_like(mask)
    near[max(int(r0 - grow_r), 0):min(int(r1 + grow_r), h - 1) + 1,
         max(int(c0 - grow_c), 0):min(int(c1 + grow_c), w - 1) + 1] = True
    pos, neg = lesion, near & ~mask
    if prediction is not None:
        pred = np.asarray(prediction) != 0
        if pred.shape != mask.shape:
            raise ValueError(f"prediction of shape {pred.shape} does not match the mask's "
                             f"{mask.shape}")
        missed, false_alarm = pos & ~pred, neg & pred
        pos = missed if missed.any() else pos
        neg = false_alarm if false_alarm.any() else neg
    return pos, neg
