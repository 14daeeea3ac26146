"""Slice uncertainty, the next slice to check and the calibration error on known inputs."""

import numpy as np
import pytest

from napari_fmbff.inference.review import (
    expected_calibration_error,
    next_slice,
    review_scores,
    slice_uncertainty,
)


def test_uncertainty_is_the_expected_number_of_wrong_pixels():
    probs = np.zeros((3, 4, 4))
    probs[0] = 1.0                      # confident lesion: 0
    probs[1, :2] = 0.5                  # 8 coin flips: 4 expected wrong
    probs[2, 0, 0], probs[2, 1, 1] = 0.9, 0.2   # 0.1 + 0.2
    np.testing.assert_allclose(slice_uncertainty(probs), [0.0, 4.0, 0.3])


def test_uncertainty_needs_a_stack():
    with pytest.raises(ValueError, match="Z, Y, X"):
        slice_uncertainty(np.zeros((4, 4)))


def test_next_slice_skips_done_and_ends_with_none():
    scores = [0.1, 5.0, np.nan, 5.0, 2.0]
    assert next_slice(scores) == 1              # tie: the lowest index
    assert next_slice(scores, done={1}) == 3
    assert next_slice(scores, done={1, 3}) == 4
    assert next_slice(scores, done={1, 3, 4, 0}) == 2   # NaN ranks last, but is still a slice
    assert next_slice(scores, done=range(5)) is None


def test_calibration_error_known_values():
    truth = np.array([1, 1, 0, 0])
    assert expected_calibration_error(truth.astype(float), truth) == 0.0
    # All pixels at p = 0.5 with half of them lesion: calibrated.
    assert expected_calibration_error(np.full(4, 0.5), truth) == 0.0
    # p = 0.9 everywhere, half lesion: |0.9 - 0.5| = 0.4.
    assert expected_calibration_error(np.full(4, 0.9), truth) == pytest.approx(0.4)
    # Two bins: p 0.8 on the lesion (gap 0.2), p 0.3 off it (gap 0.3), equal weights.
    prob = np.array([0.8, 0.8, 0.3, 0.3])
    assert expected_calibration_error(prob, truth, bins=2) == pytest.approx(0.25)
    # p = 1.0 lands in the last bin, not past it.
    assert expected_calibration_error(np.ones(2), np.array([1, 0])) == pytest.approx(0.5)


def _lesion_stack(n=7, size=64):
    """Probabilities and the shown mask: a confident square lesion on slices 2..4."""
    probs = np.zeros((n, size, size), np.float32)
    shown = np.zeros(probs.shape, bool)
    shown[2:5, 24:40, 24:40] = True
    probs[shown] = 0.99
    return probs, shown


def test_review_ranks_doubt_near_the_shown_lesion_above_far_false_alarms():
    probs, shown = _lesion_stack()
    probs[3, 0:20, 0:4] = 0.5           # a doubtful blob far from the lesion (hidden): 40
    probs[3, 0:2, 58:64] = 0.5
    probs[4, 40:43, 24:40] = 0.4        # a doubtful rim next to the lesion: 48 * 0.4
    assert next_slice(slice_uncertainty(probs)) == 3    # the old score: the far blob
    scores = review_scores(probs, shown)
    assert next_slice(scores) == 4
    assert scores[4] == pytest.approx(48 * 0.4 + 256 * 0.01, rel=1e-4)


def test_review_weighs_down_slices_beyond_the_lesion_ends():
    probs, shown = _lesion_stack()
    for z in (1, 6):                   # the same doubt just past the end and 2 slices further
        probs[z, 30:34, 30:34] = 0.5
    scores = review_scores(probs, shown)
    assert scores[1] == pytest.approx(8.0)
    assert scores[6] == pytest.approx(8.0 * 0.5)
    assert scores[0] == 0.0


def test_review_with_nothing_shown_is_the_whole_slice_doubt():
    probs = np.random.default_rng(0).random((3, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(review_scores(probs, np.zeros(probs.shape, bool)),
                               slice_uncertainty(probs), rtol=1e-5)
    with pytest.raises(ValueError, match="Z, Y, X"):
        review_scores(probs, np.zeros((3, 8, 7), bool))
