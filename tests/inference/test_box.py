"""The network-free answer to a box or a click: Otsu inside the box, the part at its centre."""

import numpy as np
import pytest

from napari_fmbff.inference.box import otsu_at_click, otsu_in_box


def lesion_image(bright=True, seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:128, :128]
    lesion = (yy - 60) ** 2 / 20 ** 2 + (xx - 70) ** 2 / 14 ** 2 < 1
    other = (yy - 20) ** 2 + (xx - 20) ** 2 < 100  # a second object outside the box
    base = rng.normal(100, 8, (128, 128))
    base[lesion | other] += 60 if bright else -60
    return base.clip(0, 255).astype(np.uint8), lesion


def dice(a, b):
    return 2 * (a & b).sum() / (a.sum() + b.sum())


@pytest.mark.parametrize("bright", [True, False])
def test_box_gives_the_lesion_at_its_centre_bright_or_dark(bright):
    image, lesion = lesion_image(bright)
    mask = otsu_in_box(image, (50, 34, 90, 86))  # x0, y0, x1, y1 around the lesion
    assert dice(mask, lesion) > 0.9
    assert not mask[:40, :40].any()  # nothing of the object outside the box


def test_colour_plane_and_click():
    image, lesion = lesion_image()
    rgb = np.stack([image] * 3, -1)
    assert dice(otsu_in_box(rgb, (50, 34, 90, 86)), lesion) > 0.9
    assert dice(otsu_at_click(image, 70, 60, window=30), lesion) > 0.9


def test_flat_box_is_the_box_and_bad_prompts_are_one_line():
    flat = np.zeros((32, 32), np.uint8)
    assert otsu_in_box(flat, (4, 4, 10, 12)).sum() == 7 * 9
    with pytest.raises(ValueError, match="outside the 32 x 32 image"):
        otsu_in_box(flat, (40, 40, 50, 50))
    with pytest.raises(ValueError, match="zero area"):
        otsu_in_box(flat, (4, 4, 4, 12))
    with pytest.raises(ValueError, match="outside the 32 x 32 image"):
        otsu_at_click(flat, 50, 3)
