"""Segment's review: which slice of a segmented stack to check next, and "accept slice".

The slices are ranked by ``inference.review.review_scores`` of the last whole-stack run's (or
propagation's) probabilities and the labels shown (the expected number of wrong pixels near
the lesion shown); "next slice to check" moves napari's slider to the highest-ranked slice the
user has not corrected (any edited pixel, prompts' answers included) nor accepted. The ranking
is computed again at each press of the button (the labels may have changed) and kept for the
sparkline between presses. Accepted slices are kept in the output layer's Proposal, so
Fine-tune's "slices you corrected" trains on them too. A one-line sparkline shows the ranking
along the stack, with the displayed and the next slice marked.
"""

from __future__ import annotations

import weakref

import numpy as np
from magicgui.widgets import Label, PushButton
from napari.utils.notifications import show_error, show_info

from ..inference.stacks import plane_indices, spatial_shape
from ._common import displayed_plane, finest_level, output_layer, wrap
from ._proposal import proposal_of, unproxied
from ._state import SegmentState
from ._tooltips import tooltip

BARS = "▁▂▃▄▅▆▇█"
#: At most this many characters in the sparkline (slices are grouped, the group's maximum).
SPARK_WIDTH = 48
NEEDS_STACK_RUN = ("run Segment on the whole stack first (scope: whole stack): the slice to "
                   "check is ranked by the probabilities of every slice")


def sparkline(scores, current: int | None = None, upcoming: int | None = None,
              done=(), width: int = SPARK_WIDTH) -> str:
    """Rich text: one bar per slice (or group of slices) by ``scores``; slices ``done`` grey,
    the ``current`` one underlined, the ``upcoming`` one (next to check) in orange."""
    s = np.nan_to_num(np.asarray(scores, dtype=np.float64))
    groups = np.array_split(np.arange(len(s)), min(len(s), width))
    top = s.max() if s.size and s.max() > 0 else 1.0
    done = set(done)
    chars = []
    for group in groups:
        level = int(round((len(BARS) - 1) * s[group].max() / top))
        char = BARS[level]
        if upcoming in group:
            char = f'<b style="color:#ff8c00">{char}</b>'
        elif all(int(k) in done for k in group):
            char = f'<span style="color:#808080">{char}</span>'
        if current in group:
            char = f"<u>{char}</u>"
        chars.append(char)
    return "".join(chars)


class ReviewSection:
    """The Review section of the Segment dock, built against its ``SegmentState`` (the last
    run's labels layer and probabilities come from ``result()``): "Next slice to check",
    "Accept slice", "Accept the rest" and the sparkline."""

    #: Its fields in the dock, top to bottom.
    FIELDS = ("next_button", "accept_button", "accept_rest_button", "uncertainty")

    def __init__(self, state: SegmentState) -> None:
        self.state = state
        self.next_button = PushButton(text="Next slice to check",
                                      tooltip=tooltip("segment", "next_button"))
        self.accept_button = PushButton(text="Accept slice",
                                        tooltip=tooltip("segment", "accept_button"))
        self.accept_rest_button = PushButton(text="Accept the rest",
                                             tooltip=tooltip("segment", "accept_rest_button"))
        self.uncertainty = wrap(Label(label="uncertainty", value=""))
        # (probabilities, score per plane) of the last ranking, kept for the sparkline
        # between presses; None until a whole-stack run is ranked.
        self._ranked: tuple | None = None

    def connect(self, destroyed) -> None:
        """Its buttons, napari's slider and the dock's image; ``destroyed``: the dock's
        signal, on which it lets go of the slider."""
        self.next_button.changed.connect(lambda _=None: self.next_slice_to_check())
        self.accept_button.changed.connect(lambda _=None: self.accept_slice())
        self.accept_rest_button.changed.connect(lambda _=None: self.accept_the_rest())
        ref = weakref.ref(self)

        def on_step(_event=None):
            section = ref()
            if section is not None and not section.state.closed():
                section.refresh()

        step_event = self.state.viewer.dims.events.current_step
        step_event.connect(on_step)
        destroyed.connect(lambda _=None: step_event.disconnect(on_step))
        self.state.image.changed.connect(lambda _=None: self.refresh())
        self.refresh()

    def _review_target(self):
        """(image, spatial shape, output labels layer or None); a ValueError for a 2D image."""
        image = self.state.image.value
        if image is None:
            raise ValueError("no image layer to review; open a stack and Segment it")
        shape = spatial_shape(finest_level(image).shape, image.rgb)
        if len(shape) < 3:
            raise ValueError(f"'{image.name}' is a 2D image: review ranks the slices of a stack")
        return image, shape, output_layer(self.state.viewer, image, "labels", shape=shape)

    def _ranking(self, shape, labels, fresh: bool = False):
        """(plane indices, score per plane) of the last whole-stack run into ``labels``;
        computed once per set of probabilities, and again when ``fresh``."""
        result, planes = self.state.result(), plane_indices(shape, False)
        probs = proposal_of(labels).probs if labels is not None else {}
        # Not ``is``: docked from the Plugins menu, each lookup of a layer is a new proxy.
        if not probs and result and unproxied(result["labels"]) is unproxied(labels):
            probs = result["probs"]
        if not probs or any(i not in probs for i in planes):
            raise ValueError(NEEDS_STACK_RUN)
        if fresh or self._ranked is None or self._ranked[0] is not probs:
            self._ranked = (probs, _scores(probs, planes, labels))
        return planes, self._ranked[1]

    def next_slice_to_check(self):
        """Move the slider to the most uncertain slice not yet corrected nor accepted;
        returns its index (None when refused or when every slice is done)."""
        try:
            image, shape, labels = self._review_target()
            planes, scores = self._ranking(shape, labels, fresh=True)
        except ValueError as err:
            show_error(f"napari-fmbff: {err}")
            return None
        proposal = proposal_of(labels)
        done = [k for k, i in enumerate(planes) if proposal.corrected(i)]
        k = _upcoming(planes, scores, done, proposal)
        if k is None:
            show_info("napari-fmbff: every slice is corrected or accepted; nothing left to check.")
            return None
        self._show_plane(image, planes[k])
        self.refresh()
        return planes[k]

    def _acceptance_target(self):
        """(image, spatial shape, output labels layer) to accept slices in, or None when
        there is nothing to accept (one notification says why)."""
        try:
            image, shape, labels = self._review_target()
            if labels is None:
                raise ValueError(f"'{image.name}' has no result to accept yet; Segment it (or "
                                 "answer a prompt) first")
        except ValueError as err:
            show_error(f"napari-fmbff: {err}")
            return None
        return image, shape, labels

    def accept_slice(self):
        """Mark the displayed slice as accepted as it is; returns its index (None if refused)."""
        target = self._acceptance_target()
        if target is None:
            return None
        image, shape, labels = target
        index = displayed_plane(self.state.viewer, image, shape)
        proposal_of(labels).accept(index)
        self.refresh()
        return index

    def accept_the_rest(self) -> list | None:
        """Once the user is satisfied with a reviewed stack: every slice not yet corrected or
        accepted is accepted as it is (an empty one as lesion-free), so Fine-tune and the
        corrections store learn the whole reviewed lesion, not only the corrected slices.
        Returns the slices accepted now (None if refused)."""
        from ..inference.stacks import plane_indices

        target = self._acceptance_target()
        if target is None:
            return None
        _image, shape, labels = target
        proposal = proposal_of(labels)
        rest = [i for i in plane_indices(shape, False) if not proposal.corrected(i)]
        for index in rest:
            proposal.accept(index)
        self.refresh()
        self.uncertainty.value = (f"{len(rest)} slice(s) accepted as they are; every slice is "
                                  "now reviewed: Fine-tune learns them all")
        return rest

    def _show_plane(self, image, index: tuple) -> None:
        """Move napari's sliders so that ``image`` shows the plane at leading ``index``."""
        data_point = np.zeros(image.ndim)
        data_point[: len(index)] = index
        world = np.asarray(image.data_to_world(data_point))
        offset = self.state.viewer.dims.ndim - image.ndim
        for axis, value in enumerate(world[: len(index)]):
            self.state.viewer.dims.set_point(offset + axis, float(value))

    def refresh(self) -> None:
        """The sparkline and one line under it (never raises: it runs on slider moves)."""
        try:
            image, shape, labels = self._review_target()
        except ValueError:
            self.uncertainty.value = "(stacks only)"
            return
        try:
            planes, scores = self._ranking(shape, labels)
        except ValueError:
            self.uncertainty.value = "Segment the whole stack to rank its slices."
            return
        proposal = proposal_of(labels)
        done = [k for k, i in enumerate(planes) if proposal.corrected(i)]
        upcoming = _upcoming(planes, scores, done, proposal)
        shown = displayed_plane(self.state.viewer, image, shape)
        current = planes.index(shown) if shown in planes else None
        line = sparkline(scores, current, upcoming, done)
        said = (f"slice {_name(shown)} shown; next to check: "
                + (_name(planes[upcoming]) if upcoming is not None else "none left")
                + f"; {len(done)}/{len(planes)} corrected or accepted")
        self.uncertainty.value = f"{line}<br>{said}"


def _upcoming(planes: list, scores, done: list, proposal) -> int | None:
    """The position in ``planes`` of the next slice to check: first the slices a propagation
    carried the lesion to past the model's own end (LiteMedSAM alone drew them; the model's
    probabilities there say nothing, so ``review_scores`` would never rank them), then those
    it emptied where LiteMedSAM found nothing to outline, then the highest score; never one
    of ``done`` (the positions corrected or accepted). None when every slice is done."""
    from ..inference.review import next_slice

    at = {index: k for k, index in enumerate(planes)}
    propagation = proposal.propagation
    for z in [*(getattr(propagation, "carried", None) or []),
              *(getattr(propagation, "dropped", None) or [])]:
        k = at.get((z,))
        if k is not None and k not in done:
            return k
    return next_slice(scores, done)


def _scores(probs: dict, planes: list, labels) -> np.ndarray:
    """``review_scores`` of a (Z, Y, X) stack and its shown labels; other stacks (time and
    depth): ``slice_uncertainty`` of each plane."""
    from ..inference.review import review_scores, slice_uncertainty

    if planes and len(planes[0]) == 1:
        stack = np.stack([np.asarray(probs[i], np.float32) for i in planes])
        return review_scores(stack, np.asarray(labels.data) > 0)
    return np.array([slice_uncertainty(np.asarray(probs[i])[None])[0] for i in planes])


def _name(index: tuple) -> str:
    return ",".join(str(i) for i in index)
