"""Slice uncertainty, the next slice to check and the calibration error on known inputs."""

import numpy as np
import pytest

from napari_fmbff.inference.review import (
    expected_calibration_error,
    next_slice,
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
