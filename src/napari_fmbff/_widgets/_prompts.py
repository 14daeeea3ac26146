"""Segment's prompts: a box or a click on the displayed slice gives that object at once.

napari's and the peers' habits (micro-sam, nnInteractive): boxes are rectangles in a Shapes
layer ``<image> prompts``, clicks are points in a Points layer ``<image> clicks`` (positive,
green, by default; negative, red, with the widget's toggle or a Shift-click). Each new box or
click is answered as soon as it is drawn, into Segment's output labels layer (made if Segment
has not run yet), as one undo step: a box makes a new object (an id new in the whole stack),
a positive click grows the object under it or makes a new one, a negative click cuts its
region out of the object under it (``inference.prompting``). Other objects and the pixels the
user painted never change, and the pixels a prompt wrote count as the user's from then on
(``Proposal.write_as_user``): a re-threshold keeps them and Fine-tune trains on that slice
(later prompts may still change them).
Prompts already answered are remembered per layer and never answered again.
The box engine is the one ``inference.prompting.choose_engine`` picks for ``fmbff segment``
too: LiteMedSAM, else (it cannot be imported: one notification says why and what to install)
Otsu in the box. LiteMedSAM answers boxes in a worker thread, one box after another: its first
box loads the model for seconds, the first box on a slice encodes it (about 2 CPU s) and every
further box on that slice costs its decoder only (about 0.1 s), which must not freeze the
window.
"""

from __future__ import annotations

import weakref

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, Label, PushButton
from napari.layers import Points, Shapes
from napari.qt.threading import thread_worker
from napari.utils.notifications import show_error, show_warning

from ..inference import litemedsam
from ..inference.prompting import ENGINE_LABELS
from ..inference.stacks import plane_of, spatial_shape
from ._common import (
    IMAGE_TAG,
    OUTPUT_TAG,
    finest_level,
    geometry_of,
    import_engine,
    output_layer,
    wrap,
)
from ._proposal import proposal_of, unproxied
from ._state import SegmentState
from ._tooltips import tooltip

#: Holding this key while clicking flips the click (negative unless the toggle says negative).
NEGATIVE_MODIFIER = "Shift"
#: Colours of positive and negative clicks.
CLICK_COLOURS = {True: "lime", False: "red"}


def prompt_engines(model_ref) -> list[str]:
    """The box engines a model offers (their ``ENGINE_LABELS``), the default first, as
    ``fmbff segment --box-engine auto`` chooses (``inference.prompting.engine_order``):
    LiteMedSAM when it can be imported (boxes only; clicks then use Otsu), Otsu always, the
    network's prompt path when the model's config says ``prompts`` (read from the file's
    metadata, without torch)."""
    from ..inference.prompting import engine_order, has_prompt_path

    return [ENGINE_LABELS[e] for e in engine_order(has_prompt_path(model_ref))]


def engine_name(label: str) -> str:
    """``inference.prompting``'s name of an engine shown as ``label`` in the widget."""
    return {shown: name for name, shown in ENGINE_LABELS.items()}[label]


class PromptsSection:
    """The Prompts section of the Segment dock, built against its ``SegmentState``: the
    prompt layers' button, the box engine, the negative toggle, a status line and Replace;
    answers boxes and clicks into the dock's output labels layer."""

    #: Its fields in the dock, top to bottom.
    FIELDS = ("prompts_button", "box_engine", "negative", "prompt_status", "replace_button")

    def __init__(self, state: SegmentState) -> None:
        self.state = state
        self.prompts_button = PushButton(text="Add prompt layers (boxes, clicks)",
                                         tooltip=tooltip("segment", "prompts_button"))
        self.box_engine = ComboBox(label="box engine",
                                   choices=lambda _w: prompt_engines(self.state.model_ref()),
                                   tooltip=tooltip("segment", "box_engine"))
        self.negative = CheckBox(text="negative clicks (or Shift-click)", value=False,
                                 tooltip=tooltip("segment", "negative"))
        self.prompt_status = wrap(Label(value=""))
        self.replace_button = PushButton(text="Replace the object under the box", visible=False,
                                         tooltip=tooltip("segment", "replace_button"))
        # prompt layer -> how many of its prompts were answered (weak: a removed layer goes)
        self._prompt_seen: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._refused_box = None  # (image, shape, index, mask) of a box that added nothing
        self._box_queue: list = []  # boxes waiting for LiteMedSAM's worker
        self._box_worker = None
        self._box_ranges: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._fallback_said = False  # the Otsu fallback's notification: once per dock

    def connect(self) -> None:
        """Its own fields' signals, and the dock's model list (its engines)."""
        self.prompts_button.changed.connect(lambda _=None: self.add_prompt_layers())
        self.negative.changed.connect(self._on_negative)
        self.replace_button.changed.connect(self.replace_under_box)
        self.state.model.changed.connect(lambda _=None: self.box_engine.reset_choices())

    # ---- the prompt layers ---------------------------------------------------------------

    def add_prompt_layers(self, image=None):
        """The image's prompt layers (made on first use, on its geometry): (boxes, clicks).
        The boxes layer is selected, ready to draw rectangles."""
        image = self.state.image.value if image is None else image
        if image is None:
            show_error("napari-fmbff: no image layer to prompt. Open an image first.")
            return None
        ndim = len(spatial_shape(finest_level(image).shape, image.rgb))
        tags = {IMAGE_TAG: image.name}
        boxes = output_layer(self.state.viewer, image, "prompts", Shapes)
        if boxes is None:
            boxes = self.state.viewer.add_shapes(
                name=f"{image.name} prompts", ndim=ndim, edge_color="cyan", edge_width=2,
                face_color="transparent", metadata={OUTPUT_TAG: "prompts", **tags},
                **geometry_of(image))
            boxes.mode = "add_rectangle"
        clicks = output_layer(self.state.viewer, image, "clicks", Points)
        if clicks is None:
            clicks = self.state.viewer.add_points(
                name=f"{image.name} clicks", ndim=ndim, features={"positive": np.zeros(0, bool)},
                feature_defaults={"positive": not self.negative.value}, face_color="positive",
                face_color_cycle=CLICK_COLOURS, border_color="white", size=8,
                metadata={OUTPUT_TAG: "clicks", **tags}, **geometry_of(image))
            clicks.mode = "add"
        for layer in (boxes, clicks):
            self._watch_prompts(layer)
        self.state.viewer.layers.selection.active = boxes
        self.prompt_status.value = (f"Draw a box on '{boxes.name}' or click on '{clicks.name}': "
                                    "each is answered on the displayed slice at once.")
        return boxes, clicks

    def _watch_prompts(self, layer) -> None:
        """Answer what is added to a prompt layer from now on (once per layer and dock)."""
        layer = unproxied(layer)
        if layer in self._prompt_seen:
            return
        self._prompt_seen[layer] = len(layer.data)
        ref = weakref.ref(self)

        def on_data(event, layer_ref=weakref.ref(layer)):
            section, target = ref(), layer_ref()
            if section is not None and target is not None and not section.state.closed():
                section._on_prompt_data(target, event)

        layer.events.data.connect(on_data)
        if isinstance(layer, Points):
            def modifier(points, event):
                section = ref()
                if section is not None:
                    flip = NEGATIVE_MODIFIER in event.modifiers
                    points.feature_defaults = {"positive": section.negative.value == flip}

            layer.mouse_drag_callbacks.insert(0, modifier)

    def _on_negative(self, negative: bool) -> None:
        for layer in list(self._prompt_seen):
            if isinstance(layer, Points):
                layer.feature_defaults = {"positive": not negative}

    def _on_prompt_data(self, layer, event) -> None:
        """New boxes or points (added at the end of the layer's data) are answered in turn."""
        n, seen = len(layer.data), self._prompt_seen.get(layer, 0)
        if str(getattr(event, "action", "")) != "added":
            self._prompt_seen[layer] = min(seen, n)  # removed ones: nothing to answer
            return
        self._prompt_seen[layer] = n
        for i in range(min(seen, n), n):
            if isinstance(layer, Shapes):
                self.answer_box(layer, np.asarray(layer.data[i]))
            else:
                positive = bool(layer.features["positive"].iloc[i])
                self.answer_click(layer, np.asarray(layer.data[i]), positive)

    # ---- answers -------------------------------------------------------------------------

    def answer_box(self, layer, vertices) -> int:
        """A box (a shape's vertices, data coordinates of ``layer``) -> a new object on its
        slice. Returns the pixels written (0 when refused, with one notification; 0 with
        LiteMedSAM, whose worker writes the object when it answers)."""
        from ..model.prompts import box_pixels

        try:
            image, shape = self._prompt_image(layer)
            index = _slice_of(vertices, shape, "box")
            xs, ys = vertices[:, -1], vertices[:, -2]
            box = (float(xs.min()), float(ys.min()), float(xs.max()), float(ys.max()))
            plane = np.asarray(plane_of(finest_level(image), index))
            if engine_name(self.box_engine.value) == "litemedsam":
                box_pixels(box, shape[-2:])  # a bad box is refused now, not in the worker
                return self._queue_litemedsam(image, shape, index, plane, box)
            mask = self._prompt_mask(plane, box=box)
        except ValueError as err:
            show_error(f"napari-fmbff: {err}")
            return 0
        self._say_fallback()
        return self._write_box(image, shape, index, mask)

    def _say_fallback(self) -> None:
        """Once per dock: boxes are answered by Otsu because LiteMedSAM cannot be imported
        (why, and what to install)."""
        from ..inference.prompting import fallback_note

        note = fallback_note("auto", engine_name(self.box_engine.value))
        if note and not self._fallback_said:
            self._fallback_said = True
            show_warning(f"napari-fmbff: {note}")

    def _write_box(self, image, shape, index, mask) -> int:
        """A box's mask written as a new object on its slice (one undo step). The box states
        what its slice holds: the model's objects there that the user has not confirmed
        (painted, prompted or clicked) are cleared in the same step, so the slice is learned
        the same whether Segment ran before the box or not. A box that adds nothing (its area
        is the user's object already) says so in a notification and offers Replace."""
        from ..inference.prompting import add_object, confirmed_objects

        labels, proposal, current = self._prompt_target(image, shape, index)
        painted = proposal.painted(index)
        mine = confirmed_objects(current, proposal.edited[index])
        label = int(labels.data.max()) + 1
        plane = add_object(mine, mask, label, painted)
        self._refused_box = None
        if not (plane == label).any():
            return self._box_added_nothing(image, shape, index, mask)
        cleared = int(((current > 0) & (mine == 0)).sum())
        proposal.write_as_user(index, plane)
        n = int((np.asarray(labels.data[index]) == label).sum())
        self._said(f"Box on {_where(index)}: object {label} ({n} px)"
                   + (f"; {cleared} px of the model's objects you had not confirmed there "
                      "were cleared (the box says what this slice holds)." if cleared else "."))
        return n

    def _box_added_nothing(self, image, shape, index, mask) -> int:
        """The box lies on the user's own object: nothing written; a notification says so
        and 'Replace the object under the box' does what the user most likely meant."""
        self._refused_box = (image, shape, index, mask)
        self.replace_button.visible = True
        text = (f"Box on {_where(index)}: nothing new, its area is already your object or "
                "pixels you erased by hand. Press 'Replace the object under the box' to redraw "
                "it from the box.")
        self._said(text)
        show_warning(f"napari-fmbff: {text}")
        return 0

    def replace_under_box(self, _=None) -> int:
        """Redraw the object(s) under the last refused box from the box's answer (one undo
        step, the largest one's id kept). Returns the pixels of the new object."""
        if self._refused_box is None:
            return 0
        image, shape, index, mask = self._refused_box
        self._refused_box, self.replace_button.visible = None, False
        labels, proposal, current = self._prompt_target(image, shape, index)
        mask = np.asarray(mask, bool)
        ids, counts = np.unique(current[mask & (current > 0)], return_counts=True)
        label = int(ids[np.argmax(counts)]) if ids.size else int(labels.data.max()) + 1
        gone = np.isin(current, ids)  # the objects under the box (none: erased pixels only)
        plane = np.where(gone, 0, current)
        plane[mask] = label
        proposal.write_as_user(index, plane, free=gone | mask)
        n = int((np.asarray(labels.data[index]) == label).sum())
        self._said(f"Box on {_where(index)}: object {label} redrawn from the box ({n} px).")
        return n

    def _queue_litemedsam(self, image, shape, index, plane, box) -> int:
        """LiteMedSAM answers ``box`` in a worker, after the boxes already waiting; its mask
        is written when it comes (``_write_box``). Returns 0: nothing is written yet."""
        self._prompt_target(image, shape, index)  # the output layer shows up at once
        self._box_queue.append((image, shape, index, plane, box))
        self._next_litemedsam()
        return 0

    def _next_litemedsam(self) -> None:
        """Start the worker on the next waiting box (one at a time)."""
        if self._box_worker is not None or not self._box_queue or self.state.closed():
            return
        from ..inference.runtime import resolve_device

        image, shape, index, plane, box = self._box_queue.pop(0)
        import_engine(self.prompt_status)  # torch in the main thread, safely
        try:
            device = resolve_device(self.state.device.value)
        except ValueError as err:
            show_error(f"napari-fmbff: {err}")
            self._box_queue.clear()
            return
        self.prompt_status.value = (
            f"LiteMedSAM: answering the box on {_where(index)}..." if litemedsam.loaded(device)
            else "Loading LiteMedSAM (first box only, a few seconds)...")
        worker = _litemedsam_worker(plane, box, device, self._range_of(image))
        worker.returned.connect(lambda mask: None if self.state.closed()
                                else self._write_box(image, shape, index, mask))
        worker.errored.connect(self._on_litemedsam_error)
        worker.finished.connect(self._on_litemedsam_finished)
        self._box_worker = worker
        worker.start()

    def _range_of(self, image):
        """A callable giving LiteMedSAM's intensity range for ``image``'s planes (its
        ``SCOPE``: the volume's range, computed in the worker once per layer data and kept;
        or None, each plane its own). Only the data travels to the worker, not the layer."""
        if litemedsam.SCOPE != "volume":
            return lambda: None
        kept, key = self._box_ranges, unproxied(image)
        data, rgb = finest_level(key), bool(key.rgb)

        def range_of():
            known = kept.get(key)
            if known is None or known[0] is not data:
                known = (data, litemedsam.volume_range(data, rgb))
                kept[key] = known
            return known[1]

        return range_of

    def _on_litemedsam_error(self, err) -> None:
        if not self.state.closed():
            show_error(f"napari-fmbff: LiteMedSAM could not answer the box: {err}")
            self.prompt_status.value = f"LiteMedSAM failed: {err}"

    def _on_litemedsam_finished(self) -> None:
        self._box_worker = None
        self._next_litemedsam()

    def answer_click(self, layer, point, positive: bool = True) -> int:
        """A click (data coordinates of ``layer``) -> grows, makes or cuts an object on its
        slice. Returns the pixels written (0 when refused, with one notification)."""
        from ..inference.prompting import answer_click, confirmed_objects, label_under

        try:
            image, shape = self._prompt_image(layer)
            index = _slice_of(np.atleast_2d(point), shape, "click")
            x, y = float(point[-1]), float(point[-2])
            plane = np.asarray(plane_of(finest_level(image), index))
            mask = self._prompt_mask(plane, click=(x, y, positive))
        except ValueError as err:
            show_error(f"napari-fmbff: {err}")
            return 0
        labels, proposal, current = self._prompt_target(image, shape, index)
        under = label_under(current, x, y)
        confirm = proposal.edited[index] | ((current == under) if under else False)
        mine = confirmed_objects(current, confirm)  # the model's other objects: not the user's
        plane, label = answer_click(mine, mask, x, y, positive, int(labels.data.max()) + 1,
                                    proposal.painted(index))
        n = proposal.write_as_user(index, plane, confirm=plane > 0) if label else 0
        kind = "Positive" if positive else "Negative"
        self._said(f"{kind} click on {_where(index)}: object {label} ({n} px changed)." if label
                   else f"Negative click on {_where(index)}: no object under it; nothing changed.")
        return n

    def _prompt_image(self, layer):
        """(image, spatial shape) a prompt layer belongs to; a ValueError when it cannot be
        answered (no image, or napari shows 3D)."""
        if self.state.viewer.dims.ndisplay == 3:
            raise ValueError("switch to 2D: prompts are answered on the displayed slice")
        name = layer.metadata.get(IMAGE_TAG)
        image = next((lay for lay in self.state.viewer.layers if lay.name == name
                      and not lay.metadata.get(OUTPUT_TAG) and hasattr(lay, "rgb")), None)
        if image is None:
            raise ValueError(f"'{layer.name}' belongs to image '{name}', which is not open; "
                             "open it again or make prompt layers for another image")
        return image, spatial_shape(finest_level(image).shape, image.rgb)

    def _prompt_mask(self, plane, box=None, click=None) -> np.ndarray:
        """The object's mask on ``plane`` by the chosen box engine, answered here
        (``inference.prompting.prompt_mask``; LiteMedSAM's boxes go to its worker instead,
        a click with LiteMedSAM chosen is Otsu's)."""
        from ..inference.prompting import prompt_mask

        engine = engine_name(self.box_engine.value)
        if engine == "network":
            import_engine(self.prompt_status)  # torch in the main thread, safely
        return prompt_mask(engine, plane, box, click, self.state.model_ref())

    def _prompt_target(self, image, shape, index):
        """(labels layer, its Proposal, the slice's current labels); the layer is made as
        Segment makes it when there is none yet, keeping the prompt layer selected."""
        labels = output_layer(self.state.viewer, image, "labels", shape=shape)
        if labels is None:
            active = self.state.viewer.layers.selection.active
            labels = self.state.labels_layer_for(image, shape)
            self.state.viewer.layers.selection.active = active
        return labels, proposal_of(labels), np.array(plane_of(labels.data, index))

    def _said(self, text: str) -> None:
        self.prompt_status.value = text + " Ctrl-Z in the labels layer undoes it."
        self.state.labels_changed()


@thread_worker(ignore_errors=True)  # errors go to our own notification
def _litemedsam_worker(plane, box, device, range_of):
    """Worker: LiteMedSAM's mask of ``box`` on ``plane`` (the model loaded once, the plane
    encoded once: ``litemedsam.embeddings``); ``range_of()``: its intensity range."""
    from ..inference.prompting import prompt_mask

    return prompt_mask("litemedsam", plane, box, device=device, intensity_range=range_of())


def _slice_of(coords, shape, what: str) -> tuple:
    """The leading index (slice) of a prompt's points; refused outside the stack or across
    slices."""
    lead = coords[:, : len(shape) - 2]
    if lead.size and np.ptp(lead, axis=0).max() >= 0.5:
        raise ValueError(f"the {what} spans several slices; draw it in a 2D view of one slice")
    index = tuple(int(np.floor(v + 0.5)) for v in (lead[0] if lead.size else ()))
    for i, n in zip(index, shape[:-2]):
        if not 0 <= i < n:
            raise ValueError(f"the {what} lies outside the image (slice {i}; the stack has "
                             f"slices 0..{n - 1}); draw it on the image")
    return index


def _where(index: tuple) -> str:
    return "the image" if not index else "slice " + ",".join(str(i) for i in index)
