"""The user's intensity choice, one home for every front end: ``fmbff segment / train /
evaluate --window --normalize`` and the Segment and Fine-tune widgets' "intensity" field.

A choice is a ``Normalization`` to *record* (in a fine-tuned model, in a result's provenance);
``Normalization.for_stack`` turns it into what to *apply* to one stack or volume (a "volume"
scope becomes that stack's own fixed range). So a model fine-tuned through the CT soft-tissue
window stores that window, and Segment with "model default" uses it again on the next patient.
"""

from __future__ import annotations

from dataclasses import replace

from ..data.medical import CT_WINDOWS, window_range
from ..model.normalization import Normalization

#: --normalize: the model's own setting, each slice's percentiles, or one range per volume.
NORMALIZE = ("model", "slice", "volume")

#: The widgets' "intensity" choices, in the order shown; the first is the default.
MODEL_DEFAULT = "model default"
CONTRAST_LIMITS = "the layer's contrast limits"
FIXED_RANGE = "fixed range (low, high)"
WHOLE_STACK = "whole stack (percentiles)"
EACH_SLICE = "each slice (percentiles)"
WINDOW_PREFIX = "CT window: "
INTENSITY_CHOICES = ((MODEL_DEFAULT, CONTRAST_LIMITS)
                     + tuple(f"{WINDOW_PREFIX}{name}" for name in CT_WINDOWS)
                     + (WHOLE_STACK, EACH_SLICE, FIXED_RANGE))


def _percentiles(base: Normalization) -> dict:
    """Percentiles (also for 8-bit images), the base's own where it has them."""
    if base.mode in ("auto", "percentile"):
        return {"mode": "percentile", "low": base.low, "high": base.high}
    return {"mode": "percentile", "low": 1.0, "high": 99.8}


def intensity_setting(base: Normalization, window=None, normalize: str = "model") -> Normalization:
    """The Normalization a choice stands for, with the encoder's mean / std of ``base`` (the
    model's own setting).

    window: a CT window name (``CT_WINDOWS``), "LOW,HIGH" or a (low, high) pair: a fixed range,
    which wins over ``normalize``. normalize: "model" (``base`` as it is), "slice" (each
    slice's percentiles) or "volume" (one percentile range for the whole stack / volume).
    """
    if normalize not in NORMALIZE:
        raise ValueError(f"--normalize must be one of {', '.join(NORMALIZE)}, got {normalize!r}")
    if window is not None:
        low, high = window_range(window)
        return replace(base, mode="fixed", low=float(low), high=float(high), scope="image")
    if normalize == "slice":
        return replace(base, **_percentiles(base), scope="image")
    if normalize == "volume":
        return replace(base, **_percentiles(base), scope="volume")
    return base


def widget_choice(choice: str, *, contrast_limits=None, low: float | None = None,
                  high: float | None = None) -> dict:
    """A widget's "intensity" field as ``intensity_setting`` keywords (window / normalize)."""
    if choice == MODEL_DEFAULT:
        return {"window": None, "normalize": "model"}
    if choice == CONTRAST_LIMITS:
        if contrast_limits is None:
            raise ValueError("the layer has no contrast limits")
        return {"window": tuple(float(v) for v in contrast_limits), "normalize": "model"}
    if choice.startswith(WINDOW_PREFIX):
        return {"window": choice[len(WINDOW_PREFIX):], "normalize": "model"}
    if choice == WHOLE_STACK:
        return {"window": None, "normalize": "volume"}
    if choice == EACH_SLICE:
        return {"window": None, "normalize": "slice"}
    if choice == FIXED_RANGE:
        if low is None or high is None or not low < high:
            raise ValueError(f"a fixed range needs low < high, got {low}, {high}")
        return {"window": (float(low), float(high)), "normalize": "model"}
    raise ValueError(f"intensity must be one of {', '.join(INTENSITY_CHOICES)}, got {choice!r}")
