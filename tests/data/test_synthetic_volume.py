"""The procedural CT patient (``data.synthetic.ct_volume``): a lesion that grows and shrinks."""

import numpy as np
import pytest

from napari_fmbff.data.synthetic import ct_volume


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_the_lesion_grows_then_shrinks_and_most_slices_hold_none(seed):
    volume, mask = ct_volume(seed, n_slices=24, size=96)
    assert volume.shape == mask.shape == (24, 96, 96)
    assert volume.dtype == np.int16 and mask.dtype == np.uint8
    area = mask.sum(axis=(1, 2))
    held = np.nonzero(area)[0]
    assert 3 <= held.size < 24 / 2 + 2, area  # a lesion, and lesion-free slices around it
    assert np.all(np.diff(held) == 1), area  # one run of slices
    top = int(np.argmax(area))
    # small sections at both ends, the widest inside: the ends are where propagation misses
    assert area[held[0]] < area[top] / 2 and area[held[-1]] < area[top] / 2, area
    assert held[0] < top < held[-1], area
    # hypodense: the lesion is darker than the tissue right around it
    ring = np.zeros_like(mask, bool)
    from scipy import ndimage as ndi

    ring[top] = ndi.binary_dilation(mask[top], iterations=3) & ~mask[top].astype(bool)
    assert volume[top][mask[top] > 0].mean() < volume[ring].mean() - 10


def test_a_seed_is_a_patient():
    a, b = ct_volume(4, n_slices=12, size=64), ct_volume(4, n_slices=12, size=64)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    other = ct_volume(5, n_slices=12, size=64)
    assert not np.array_equal(a[1], other[1])


def test_too_few_slices_are_refused():
    with pytest.raises(ValueError, match="at least 8 slices"):
        ct_volume(0, n_slices=4)
