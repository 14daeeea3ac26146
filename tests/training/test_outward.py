"""Propagate segments outward from the labelled slices and stops where the lesion ends
(``propagate.outward_slices``): the labels are those of segmenting every slice, at the
threshold the walk stopped at and at any higher one, and the slices past the ends are never
segmented."""

import numpy as np
import pytest

from napari_fmbff.inference.postprocess import Postprocess, propagated_labels
from napari_fmbff.training.propagate import outward_slices


def model_answer(n=24, size=40, seed=0):
    """A model's probabilities on every slice: a lesion on slices 8-15 that fades at its ends,
    a false alarm far from it (slices 19-21), speckle everywhere else below 0.2."""
    rng = np.random.default_rng(seed)
    probs = rng.uniform(0, 0.2, (n, size, size)).astype(np.float32)
    yy, xx = np.mgrid[:size, :size]
    for z, p in zip(range(7, 17), (0.3, 0.6, 0.8, 0.9, 0.95, 0.9, 0.85, 0.7, 0.4, 0.28)):
        r = 8 - abs(z - 11)
        probs[z][(yy - 20) ** 2 + (xx - 18) ** 2 < r * r] = p
    probs[19:22, 4:9, 30:36] = 0.9
    return probs


@pytest.mark.parametrize("zs, lesion_free", [([11], []), ([10, 12], []), ([11, 13], [13])])
def test_outward_gives_the_labels_of_every_slice_and_skips_the_rest(zs, lesion_free):
    full = model_answer()
    yy, xx = np.mgrid[:40, :40]
    labels = np.zeros(full.shape, np.int32)
    for z in zs:
        if z not in lesion_free:
            labels[z][(yy - 20) ** 2 + (xx - 18) ** 2 < 36] = 2
    probs = np.zeros_like(full)
    for z in zs:
        probs[z] = labels[z] > 0
    seen = []
    for z in outward_slices(probs, labels, zs, 0.25):
        seen.append(z)
        probs[z] = full[z]  # what the model answers, written before the next is asked for
    expected = full.copy()
    for z in zs:
        expected[z] = labels[z] > 0
    for threshold in (0.5, 0.3, 0.25):
        post = Postprocess(threshold, 0, labels=True)
        np.testing.assert_array_equal(propagated_labels(probs, labels, zs, post, True),
                                      propagated_labels(expected, labels, zs, post, True))
    assert len(seen) == len(set(seen)) and not set(seen) & set(zs)
    assert set(range(19, 22)).isdisjoint(seen)  # the far false alarm is never segmented
    assert len(seen) < len(full) - len(zs) - 10
    if lesion_free:  # an accepted lesion-free slice above: one slice past it, no further
        assert max(seen) == 14


def test_a_re_threshold_below_the_walk_s_is_not_promised():
    full = model_answer()
    labels = np.zeros(full.shape, np.int32)
    labels[11, 14:26, 12:24] = 1
    probs = np.zeros_like(full)
    probs[11] = labels[11] > 0
    for z in outward_slices(probs, labels, [11], 0.5):
        probs[z] = full[z]
    # at 0.5 the walk stops at slices 7 and 15 (0.3 and 0.4): slice 16's 0.28 is not seen
    assert not probs[16].any() and probs[15].any()
