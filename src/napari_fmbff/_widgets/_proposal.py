"""The Segment widget's output Labels layer as a proposal the user owns once they touch it.

One ``Proposal`` per output layer keeps:

- ``edited``: every pixel the user painted, filled or erased (napari's ``paint`` event, which
  the brush, the fill bucket, the eraser and polygons all emit). Re-thresholding and
  re-running never change these pixels.
- ``suppressed``: pixels of objects the user removed with a click (or with "keep only"). A
  later proposal drops every object that touches them, so a removed object stays removed
  at any threshold.
- ``region``: where the user restricted the proposal with rectangles (per slice; None: no
  restriction). Outside it, a slice with a rectangle gets no proposed pixels.
- ``accepted``: slices the user accepted as they are (Segment's review): later proposals
  leave them whole, and with the slices holding edited pixels they are the "slices you
  corrected" (``corrected``).

A prompt's answer (a box or a click) is written with ``write_as_user``: its pixels then count
as the user's own (``edited``: re-thresholds and re-runs keep them, Fine-tune trains on them)
and are also recorded in ``prompted``, so that a later prompt may still change them (a
negative click cuts a box's object) while pixels painted by hand (``painted``) stay as painted.

Ctrl-Z of a removal or a restriction is seen in the layer at the next proposal, which then
no longer applies it. Ctrl-Z of a brush stroke leaves those pixels protected (at the values
the undo restored): protecting too much is the safe side.

Every write goes through ``Labels.data_setitem`` inside ``block_history``: one Ctrl-Z undoes
one run, one re-threshold, one click.
"""

from __future__ import annotations

import weakref

import numpy as np

_PROPOSALS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def proposal_of(layer) -> Proposal:
    """The one Proposal of an output layer (made on first use; shared by every widget)."""
    layer = unproxied(layer)
    found = _PROPOSALS.get(layer)
    if found is None or found.edited.shape != tuple(layer.data.shape):
        found = _PROPOSALS[layer] = Proposal(layer)
    return found


def unproxied(layer):
    """The layer itself, not napari's proxy of it.

    A widget docked through napari's plugin menu gets a proxy of the viewer, and every layer
    reached through it is a new proxy object each time (equal and of equal hash to the layer).
    Records keyed by, or weakly referring to, such a proxy vanish as soon as that proxy is
    freed: the user's painted pixels were forgotten between two Segment runs that way.
    """
    while hasattr(layer, "__wrapped__"):
        layer = layer.__wrapped__
    return layer


def protect(proposed: np.ndarray, suppressed: np.ndarray, region: np.ndarray | None) -> np.ndarray:
    """A proposed labels plane without removed objects and without what lies outside ``region``."""
    out = np.array(proposed, copy=True)
    if region is not None and region.any():
        out[~region] = 0
    if suppressed.any() and out.any():
        hit = np.unique(out[suppressed & (out > 0)])
        if hit.size:
            if out.max() == 1 or len(np.unique(out)) <= 2:
                # Not split into objects: drop the connected parts that touch a removed one.
                from scipy import ndimage as ndi

                parts, _ = ndi.label(out > 0)
                hit_parts = np.unique(parts[suppressed & (parts > 0)])
                out[np.isin(parts, hit_parts)] = 0
            else:
                out[np.isin(out, hit)] = 0
    return out


class Proposal:
    """Edits, removals and region of one output Labels layer; undoable writes into it."""

    def __init__(self, layer) -> None:
        self._layer = weakref.ref(layer)
        shape = tuple(layer.data.shape)
        self.edited = np.zeros(shape, bool)
        self.suppressed = np.zeros(shape, bool)
        self.region: np.ndarray | None = None
        self.prompted = np.zeros(shape, bool)
        self.accepted: set[tuple] = set()
        # Propagate's probabilities ({leading index: plane}) when it answered after Segment's
        # last run (emptied by a new run), so a re-threshold and review follow the newest.
        self.probs: dict = {}
        self.propagation = None  # that propagation's PropagateResult (Fine-tune's last_propagation)
        self._writing = False
        layer.events.paint.connect(self._on_paint)

    @property
    def layer(self):
        return self._layer()

    # ---- what the user did ----------------------------------------------------------------

    def _on_paint(self, event) -> None:
        if self._writing:
            return
        for atom in event.value:
            where = atom_index(atom)
            self.edited[where] = True
            self.prompted[where] = False

    @property
    def n_edited(self) -> int:
        return int(self.edited.sum())

    # ---- writing ---------------------------------------------------------------------------

    def show(self, proposals: dict) -> int:
        """Write proposed planes ({leading index: labels plane}) as one undo step.

        The user's edited pixels keep their values; removed objects stay removed; a region
        restricts the proposal; accepted slices are not written. Returns the number of
        pixels changed.
        """
        planes = {}
        for index, proposed in proposals.items():
            if tuple(index) in self.accepted:  # accepted as it was: kept whole
                continue
            self._forget_undone(index)
            region = None if self.region is None else self.region[index]
            planes[index] = protect(proposed, self.suppressed[index], region)
        return self.write(planes, keep_edits=True)

    def _forget_undone(self, index) -> None:
        """A removal or restriction the user took back with Ctrl-Z no longer applies.

        Undo restores the layer, not this record, so the record follows the layer: a removed
        pixel that holds a label again is no longer removed, and a slice with proposed
        pixels outside its region is no longer restricted.
        """
        current = np.asarray(self.layer.data[index])
        self.suppressed[index] &= current == 0
        if self.region is not None and self.region[index].any():
            outside = (current > 0) & ~self.region[index] & ~self.edited[index]
            if outside.any():
                self.region[index] = False

    def write(self, planes: dict, keep_edits: bool = True) -> int:
        """Set planes ({leading index: values}) through napari's undo history, in one step."""
        layer = self.layer
        changed_total = 0
        self._writing = True  # our own writes are not the user's edits
        try:
            with layer.block_history():
                for index, values in planes.items():
                    current = np.asarray(layer.data[index])
                    target = np.asarray(values, dtype=current.dtype)
                    if keep_edits:
                        target = np.where(self.edited[index], current, target)
                    where = np.nonzero(target != current)
                    if not where[0].size:
                        continue
                    lead = tuple(np.full(where[0].size, i, np.intp) for i in index)
                    layer.data_setitem(lead + where, target[where], refresh=False)
                    changed_total += int(where[0].size)
        finally:
            self._writing = False
        layer.refresh()
        return changed_total

    def painted(self, index: tuple) -> np.ndarray:
        """bool plane: the pixels of a slice the user painted, filled or erased by hand."""
        return self.edited[index] & ~self.prompted[index]

    def write_as_user(self, index: tuple, plane, confirm=None, free=None) -> int:
        """Write one plane as the user's own edit (a prompt's answer), as one undo step: the
        pixels painted by hand keep their values (but for ``free`` ones: the erased pixels a
        box claims, the object a Replace takes); the pixels it changes, and the ``confirm``
        ones (the model's object a click confirmed), then count as edited (kept by
        re-thresholds and re-runs, learned by Fine-tune and Propagate) and as ``prompted``."""
        before = np.array(self.layer.data[index], copy=True)
        hold = self.painted(index)
        if free is not None:
            hold &= ~np.asarray(free, bool)
        target = np.where(hold, before, np.asarray(plane, before.dtype))
        n = self.write({index: target}, keep_edits=False)
        mark = np.asarray(self.layer.data[index]) != before
        if confirm is not None:
            mark |= np.asarray(confirm, bool)
        self.edited[index] |= mark
        self.prompted[index] |= mark
        return n

    def accept(self, index: tuple) -> None:
        """Mark a slice (leading index) as accepted as it is."""
        self.accepted.add(tuple(int(i) for i in index))

    def corrected(self, index: tuple) -> bool:
        """Whether the user corrected (any edited pixel) or accepted this slice."""
        return tuple(index) in self.accepted or bool(self.edited[tuple(index)].any())

    # ---- object-level corrections -----------------------------------------------------------

    def object_at(self, point) -> tuple[tuple, np.ndarray] | None:
        """(leading index, mask of the plane) of the object under a data point, or None."""
        layer = self.layer
        point = tuple(int(round(p)) for p in point)
        shape = layer.data.shape
        if len(point) != len(shape) or any(not 0 <= p < n for p, n in zip(point, shape)):
            return None
        index, (y, x) = point[:-2], point[-2:]
        plane = np.asarray(layer.data[index])
        label = plane[y, x]
        if label == 0:
            return None
        from scipy import ndimage as ndi

        parts, _ = ndi.label(plane == label)
        return index, parts == parts[y, x]

    def remove(self, index: tuple, mask: np.ndarray) -> int:
        """Remove an object (one undo step); it stays removed in later proposals."""
        plane = np.array(self.layer.data[index], copy=True)
        plane[mask] = 0
        self.suppressed[index] |= mask
        return self.write({index: plane}, keep_edits=False)

    def keep_only(self, index: tuple, keep: np.ndarray) -> int:
        """Remove every object of a plane that does not touch ``keep`` (one undo step)."""
        from scipy import ndimage as ndi

        plane = np.array(self.layer.data[index], copy=True)
        parts, _ = ndi.label(plane > 0)
        kept = np.unique(parts[keep & (parts > 0)])
        drop = (parts > 0) & ~np.isin(parts, kept)
        plane[drop] = 0
        self.suppressed[index] |= drop
        return self.write({index: plane}, keep_edits=False)

    def restrict(self, region: np.ndarray) -> int:
        """Keep proposals only inside ``region`` in the slices it touches (one undo step)."""
        lead = region.ndim - 2
        self.region = region.copy() if self.region is None else (self.region | region)
        planes = {}
        for index in np.ndindex(*region.shape[:lead]):
            if not region[index].any():
                continue
            plane = np.array(self.layer.data[index], copy=True)
            plane[~self.region[index] & ~self.edited[index]] = 0
            planes[index] = plane
        return self.write(planes, keep_edits=True)


def atom_index(atom):
    """The pixels one napari history atom touched, as an index into the layer's data."""
    slice_key = getattr(atom, "slice_key", None)
    if slice_key is not None:  # a mask-based edit: brush, fill, polygon
        mask = atom.mask
        if mask is None:
            return slice_key
        starts = [s.start or 0 for s in slice_key]
        where = np.nonzero(mask)
        return tuple(w + s for w, s in zip(where, starts))
    indices = atom[0]  # data_setitem's (indices, old values, new values)
    return tuple(indices)
