"""Mask files as the public data sets ship them."""

import numpy as np

from napari_fmbff.data.datasets import load_mask
from napari_fmbff.data.image_io import write_image


def test_jpeg_masks_are_cut_at_128_and_0_1_masks_keep_every_pixel(tmp_path):
    yy, xx = np.mgrid[:64, :64]
    disc = (yy - 32) ** 2 + (xx - 32) ** 2 < 200
    write_image(tmp_path / "m.jpg", (disc * 255).astype(np.uint8))  # lossy: a grey fringe
    from imageio.v3 import imread

    raw = imread(tmp_path / "m.jpg")
    assert ((raw > 0) & ~disc).sum() > 20  # the fringe "any non-zero" would count as lesion
    mask = load_mask([tmp_path / "m.jpg"])
    assert (mask.astype(bool) != disc).sum() <= 0.02 * disc.sum()
    write_image(tmp_path / "one.png", disc.astype(np.uint8))  # 0/1 masks
    np.testing.assert_array_equal(load_mask([tmp_path / "one.png"]), disc)
    write_image(tmp_path / "w.tif", (disc * 7).astype(np.uint16))  # other dtypes: non-zero
    np.testing.assert_array_equal(load_mask([tmp_path / "w.tif"]), disc)
