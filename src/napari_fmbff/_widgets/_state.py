"""What a dock hands its sections: the declared, typed part of the dock a section may use.

A section (``_prompts.PromptsSection``, ``_review.ReviewSection``, ``_store.StoreSection``)
is a plain class the dock holds as an attribute, built from one of these: it makes its own
fields and keeps its own state, and reaches the dock only through what is named here (the
viewer, the dock's fields it reads, and callables for what only the dock knows).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from magicgui.widgets import CheckBox, ComboBox


@dataclass(frozen=True)
class SegmentState:
    """What Segment's prompts and review sections use of the Segment dock.

    ``image``, ``model``, ``device``: the dock's fields (the image to prompt and review, the
    model whose engines are offered, the device LiteMedSAM runs on); ``model_ref()``: the
    chosen model's name or file (None when none); ``result()``: the last run (its labels
    layer, probabilities and probability layer) or None; ``labels_layer_for(image, shape)``:
    the output labels layer, made as Segment makes it; ``labels_changed()``: called after a
    section changed the labels (the review follows); ``closed()``: whether the dock closed."""

    viewer: Any
    image: ComboBox
    model: ComboBox
    device: ComboBox
    model_ref: Callable[[], Any]
    result: Callable[[], dict | None]
    labels_layer_for: Callable[[Any, tuple], Any]
    labels_changed: Callable[[], None]
    closed: Callable[[], bool]


@dataclass(frozen=True)
class FineTuneState:
    """What the store section uses of the Fine-tune dock.

    ``image``, ``model``, ``keep_on_cancel``: the dock's fields (the image whose kind picks
    the store, the base model, what Cancel keeps); ``stop``: the dock's stop event for its
    workers; ``dock()``: the dock's Qt widget (a dialog's parent); ``closed()``: whether the
    dock closed."""

    viewer: Any
    image: ComboBox
    model: ComboBox
    keep_on_cancel: CheckBox
    stop: threading.Event
    dock: Callable[[], Any]
    closed: Callable[[], bool]


def dock_fields(dock, layout: tuple, sections: tuple) -> list:
    """The fields named in ``layout``, in its order: a section's where the section declares
    the name (its ``FIELDS``), else the dock's own attribute."""
    owner = {name: section for section in sections for name in section.FIELDS}
    return [getattr(owner.get(name, dock), name) for name in layout]
