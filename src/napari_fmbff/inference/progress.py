"""Long jobs as generators: the one progress event they yield, the one way they are cancelled,
and the drivers that run them.

Every long job here (segmenting an image, a stack or a large image in chunks, a cluster run,
a training run, a propagation) is a generator that yields ``Progress`` and returns its result,
so the CLI's bars and the docks' progress bars read one shape. A job is cancelled by one
``Cancel`` token: a dock's Cancel button (or a time limit) sets it; a training run polls it
after every step and ends with what ``RunControl.keep_on_cancel`` says to keep;
``until_cancelled`` closes any other job at its next step. ``drain`` runs a job to its end
and ``relay`` passes one's items on, changed, without a hand-written ``next()`` /
``StopIteration`` loop.
"""

from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import dataclass
from typing import Any

#: The stages a job reports and what ``done`` / ``total`` count in each: the tiles of one
#: image, the slices (planes) of a stack, the chunks of a large image, the images of a run,
#: a cluster's tasks, the optimiser steps of a training run (``detail``: its ``TrainEvent``),
#: a loaded model (``detail``: what the run records of it), and the answer of a job that goes
#: on after it (``detail``: the answer, e.g. a propagation's result while the corrections
#: store's model learns the case).
STAGES = ("tiles", "slices", "chunks", "images", "tasks", "train", "model", "answer")


@dataclass(frozen=True)
class Progress:
    """``done`` of ``total`` steps of ``stage`` (one of ``STAGES``); ``detail`` is what the
    stage tells besides: the tiles of the slice under way (a ``Progress``), a training
    step's ``TrainEvent``."""

    stage: str
    done: int
    total: int
    detail: Any = None

    @property
    def fraction(self) -> float:
        """How far, 0 to 1: the steps done plus the part of the next one that ``detail``
        reports when it is a ``Progress`` itself."""
        if not self.total:
            return 1.0
        part = self.detail.fraction if isinstance(self.detail, Progress) else 0.0
        return (self.done + part) / self.total


class Cancel:
    """A request to stop a job early: set from any thread (a dock's Cancel button), or set by
    itself at a deadline (``Cancel.after``); the job polls it between its steps."""

    def __init__(self, deadline: float | None = None) -> None:
        self._event = threading.Event()
        self._deadline = deadline  # on time.monotonic's clock

    @classmethod
    def after(cls, seconds: float) -> Cancel:
        """A token that is set once ``seconds`` have passed (a time limit)."""
        return cls(time.monotonic() + seconds)

    def set(self) -> None:
        self._event.set()

    def clear(self) -> None:
        self._event.clear()

    def is_set(self) -> bool:
        return self._event.is_set() or (self._deadline is not None
                                        and time.monotonic() >= self._deadline)


def _returning(gen, outcome: list):
    """``gen``'s items, unchanged; its return value is appended to ``outcome`` at the end."""
    outcome.append((yield from gen))


def drain(gen, on_item=None):
    """Run a progress-yielding generator to its end and return what it returns; each yielded
    item goes to ``on_item`` (a progress bar, say) when one is given."""
    outcome: list = []
    for item in _returning(gen, outcome):
        if on_item is not None:
            on_item(item)
    return outcome[0]


def relay(gen, fn):
    """Generator: yields ``fn(item)`` for every item of ``gen`` and returns what ``gen``
    returns (``result = yield from relay(gen, fn)``). Closing it closes ``gen``."""
    outcome: list = []
    with contextlib.closing(_returning(gen, outcome)) as items:
        for item in items:
            yield fn(item)
    return outcome[0]


def until_cancelled(gen, cancel: Cancel):
    """Generator: passes ``gen``'s items on until ``gen`` ends (returns what it returns) or
    ``cancel`` is set: then ``gen`` is closed where it stands (before its next step, its
    last item not passed on) and None is returned."""
    try:
        while not cancel.is_set():
            try:
                item = next(gen)
            except StopIteration as done:
                return done.value
            if not cancel.is_set():
                yield item
        return None
    finally:
        gen.close()
