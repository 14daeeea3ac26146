"""The intensity choice: one home for --window / --normalize and the widgets' field."""

import numpy as np
import pytest

from napari_fmbff.inference.intensity import (
    INTENSITY_CHOICES,
    intensity_setting,
    widget_choice,
)
from napari_fmbff.model.normalization import Normalization

BASE = Normalization(mean=(0.4, 0.5, 0.6), std=(0.2, 0.3, 0.4))


def test_a_ct_window_is_a_fixed_range_in_hu_with_the_encoders_statistics():
    n = intensity_setting(BASE, "soft-tissue")
    assert (n.mode, n.low, n.high, n.scope) == ("fixed", -160.0, 240.0, "image")
    assert n.mean == BASE.mean and n.std == BASE.std
    assert intensity_setting(BASE, "-100,300").low == -100
    assert intensity_setting(BASE, (5, 9), normalize="volume").high == 9  # a window wins


def test_normalize_model_slice_and_volume():
    assert intensity_setting(BASE) is BASE
    assert intensity_setting(BASE, normalize="slice").scope == "image"
    vol = intensity_setting(BASE, normalize="volume")
    assert vol.scope == "volume" and vol.mode == "percentile"
    fixed_base = Normalization(mode="fixed", low=0, high=10)
    assert intensity_setting(fixed_base, normalize="slice").mode == "percentile"
    with pytest.raises(ValueError, match="--normalize"):
        intensity_setting(BASE, normalize="stack")
    with pytest.raises(ValueError, match="window"):
        intensity_setting(BASE, "liver")
    with pytest.raises(ValueError, match="LOW < HIGH"):
        intensity_setting(BASE, "300,100")


def test_volume_scope_is_one_range_for_the_whole_stack(rng):
    stack = rng.normal(0, 1, (6, 40, 40)).astype(np.float32)
    stack[3] += 100.0  # one bright slice: per-slice ranges would hide it
    vol = intensity_setting(BASE, normalize="volume").for_stack(stack)
    assert vol.mode == "fixed" and vol.scope == "image"
    low, high = vol.intensity_range(stack[0])
    assert high > 50  # the bright slice is inside the one range
    per_slice = intensity_setting(BASE, normalize="slice")
    assert per_slice.for_stack(stack) is per_slice
    assert per_slice.intensity_range(stack[0])[1] < 10


def test_scope_round_trips_and_old_records_still_load():
    vol = intensity_setting(BASE, normalize="volume")
    assert Normalization.from_dict(vol.to_dict()) == vol
    old = {k: v for k, v in BASE.to_dict().items() if k != "scope"}  # before scopes existed
    assert Normalization.from_dict(old).scope == "image"
    with pytest.raises(ValueError, match="scope"):
        Normalization(scope="patient")


def test_every_widget_choice_means_something():
    seen = set()
    for choice in INTENSITY_CHOICES:
        kwargs = widget_choice(choice, contrast_limits=(10, 50), low=-5, high=5)
        seen.add(intensity_setting(BASE, **kwargs).describe())
    assert len(seen) == len(INTENSITY_CHOICES)  # no two choices do the same thing
    assert widget_choice("the layer's contrast limits", contrast_limits=(10, 50)) == \
        {"window": (10.0, 50.0), "normalize": "model"}
    with pytest.raises(ValueError, match="low < high"):
        widget_choice("fixed range (low, high)", low=5, high=5)
    with pytest.raises(ValueError, match="intensity must be"):
        widget_choice("bright")
