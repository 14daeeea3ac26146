"""A box or a click on one plane -> that object's mask, without the network.

The answer to a prompt on the displayed slice must come at once and be usable as the first
corrected slice, which the model then learns from (propagation). Until a model's prompt path
is trained, the network's own answer to a box is its automatic one (Dice ~0.02 on real CT for
the bundled starter), so the default engine here is the measured floor of the field: Otsu's
threshold inside the box, keeping the part under the box's centre (pooled Dice 0.79-0.81 on
real CT / MR lesions, docs/models.md). Clicks use the same rule in a window around the click.
LiteMedSAM (``inference.litemedsam``, 0.929, in the default install) is the default box
engine; this one is its fallback when it cannot be imported, and answers the clicks.

Coordinates are napari's for the displayed plane (x the column, y the row); boxes and clicks
are checked by ``model.prompts`` (one line for a box outside the image or of zero area).
"""

from __future__ import annotations

import numpy as np

#: Half the edge of the window a click is answered in, in pixels.
CLICK_WINDOW = 24


def grey(plane) -> np.ndarray:
    """float32 (H, W) of a grey or colour (H, W, C) plane (channels averaged, alpha dropped)."""
    data = np.asarray(plane)
    if data.ndim == 3:
        data = data[..., :3].mean(axis=-1) if data.shape[-1] in (3, 4) else data.mean(axis=-1)
    if data.ndim != 2:
        raise ValueError(f"a prompt is answered on one plane (Y, X) or (Y, X, C), got shape "
                         f"{np.shape(plane)}")
    return data.astype(np.float32, copy=False)


def otsu_in_box(plane, box) -> np.ndarray:
    """bool (H, W): Otsu's threshold inside ``box`` (x0, y0, x1, y1), the class of the box's
    centre taken as the object, its part under (or nearest to) the centre, holes filled."""
    from ..model.prompts import box_pixels

    image = grey(plane)
    rows, cols = box_pixels(box, image.shape)
    out = np.zeros(image.shape, bool)
    out[rows, cols] = _central_object(image[rows, cols])
    return out


def otsu_at_click(plane, x: float, y: float, window: int = CLICK_WINDOW) -> np.ndarray:
    """bool (H, W): the object under a click, found as ``otsu_in_box`` in a window around it."""
    from ..model.prompts import check_click

    h, w = grey(plane).shape
    x, y, _ = check_click((x, y), (h, w))
    box = (max(x - window, 0), max(y - window, 0), min(x + window, w - 1), min(y + window, h - 1))
    return otsu_in_box(plane, box)


def _central_object(crop: np.ndarray) -> np.ndarray:
    """The object of a crop whose centre lies on it (brighter or darker than its surround)."""
    from scipy import ndimage as ndi
    from skimage.filters import threshold_otsu

    h, w = crop.shape
    if h < 2 or w < 2 or float(crop.max()) == float(crop.min()):
        return np.ones(crop.shape, bool)  # nothing to split: the box itself
    # Lightly smoothed (Gaussian, sigma 1 px), the object on the side of the box's centre
    # pixel: pooled Dice 0.796 on the real lesion slices of benchmarks/interactive.py, against
    # 0.784 unsmoothed with the majority of the box's central third deciding the side.
    crop = ndi.gaussian_filter(crop, 1.0)
    fg = crop > threshold_otsu(crop)
    if not fg[h // 2, w // 2]:
        fg = ~fg  # the box's centre is on the darker class: the object is dark
    parts, n = ndi.label(fg)
    if n == 0:
        return np.ones(crop.shape, bool)
    cy, cx = (h - 1) / 2, (w - 1) / 2
    label = parts[int(round(cy)), int(round(cx))]
    if label == 0:  # the centre fell in a gap: the part nearest to it
        dist = ndi.distance_transform_edt(parts == 0, return_indices=True)[1]
        label = parts[tuple(dist[:, int(round(cy)), int(round(cx))])]
    return ndi.binary_fill_holes(parts == label)
