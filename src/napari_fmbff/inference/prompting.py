"""Prompts, for the Segment widget and the command line alike: which engine answers them
(``engine_order``, ``choose_engine``), its mask for one box or click (``prompt_mask``; the
engines it loads are kept by ``inference.prompt_service``), and that mask merged into a labels
plane: a new object, a refined one, or a cut.

What a mask does to the labels already there is decided here, numpy only, so the widget and
the command line agree: a box makes a new object; a positive click grows the object under it
(or makes a new one on the background); a negative click cuts its region out of the object
under it. A prompt never changes another object's pixels nor the ``protected`` ones (the
user's own).
"""

from __future__ import annotations

import numpy as np


def confirmed_objects(labels, confirmed) -> np.ndarray:
    """A copy of a labels plane holding only the objects the user confirmed: the connected
    objects that hold at least one ``confirmed`` pixel (painted, prompted or clicked by the
    user). A prompt or a stroke on a slice is the user's statement of what that slice holds,
    so the model's other objects there are neither kept by a prompt nor learned as lesion."""
    from scipy import ndimage as ndi

    out = np.array(labels, copy=True)
    parts, n = ndi.label(out > 0)
    if not n:
        return out
    kept = np.unique(parts[np.asarray(confirmed, bool) & (parts > 0)])
    out[~np.isin(parts, kept)] = 0
    return out


def add_object(labels, mask, label: int, protected=None) -> np.ndarray:
    """A copy of the labels plane with ``label`` written where ``mask`` lies on the background
    (pixels of other objects and ``protected`` pixels keep their values)."""
    out = np.array(labels, copy=True)
    where = np.asarray(mask, bool) & (out == 0)
    if protected is not None:
        where &= ~np.asarray(protected, bool)
    out[where] = label
    return out


def label_under(labels, x: float, y: float) -> int:
    """The label at a click (x, y) on a labels plane: the pixel it rounds to (clamped to the
    plane, for a click on its last half pixel)."""
    plane = np.asarray(labels)
    row = min(int(np.floor(y + 0.5)), plane.shape[0] - 1)
    col = min(int(np.floor(x + 0.5)), plane.shape[1] - 1)
    return int(plane[row, col])


def answer_click(labels, mask, x: float, y: float, positive: bool, new_label: int,
                 protected=None) -> tuple[np.ndarray, int]:
    """(new labels plane, the object's label) for a click at (x, y) whose region is ``mask``.

    Positive: on an object, that object grows by the region; on the background, the region
    becomes object ``new_label``. Negative: the region is cut out of the object under the
    click (label 0 returned when there is none: nothing changes).
    """
    plane = np.asarray(labels)
    under = label_under(plane, x, y)
    if positive:
        label = under or int(new_label)
        return add_object(plane, mask, label, protected), label
    out = np.array(plane, copy=True)
    if not under:
        return out, 0
    cut = np.asarray(mask, bool) & (out == under)
    if protected is not None:
        cut &= ~np.asarray(protected, bool)
    out[cut] = 0
    return out, under


#: How a prompt is answered: "auto" is ``choose_engine``'s default; the others by name.
ENGINES = ("auto", "otsu", "network", "litemedsam")
#: The engines' names where they are shown: the Segment widget's list, a result's record.
ENGINE_LABELS = {"litemedsam": "LiteMedSAM", "otsu": "Otsu in box (no network)",
                 "network": "network prompt path"}


def engine_order(has_prompt_path: bool) -> list[str]:
    """The box engines on offer, the default first, for the Segment widget and
    ``fmbff segment`` alike: LiteMedSAM when it can be imported (pooled Dice 0.93 on real
    lesion slices, docs/models.md), Otsu in the box always (0.80; the fallback), the network
    when the model has a trained prompt path (offered, never the default: a prompt path
    trained on procedural images measured about 0.1, below the filled box)."""
    from . import litemedsam

    engines = ["litemedsam"] if litemedsam.available() else []
    return engines + ["otsu"] + (["network"] if has_prompt_path else [])


def choose_engine(engine: str, model) -> str:
    """The engine that answers: "auto" is ``engine_order``'s first; a named one is checked
    ("litemedsam" when it cannot be imported, "network" without a prompt path: one line).
    ``model``: a network, a model name or path (its file's metadata is read, no torch), or
    None."""
    from . import litemedsam

    if engine not in ENGINES:
        raise ValueError(f"box engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    if engine == "litemedsam" and not litemedsam.available():
        raise ValueError(litemedsam.MISSING)
    if engine == "network" and not has_prompt_path(model):
        raise ValueError("this model has no prompt path; use --box-engine otsu (or auto)")
    return engine_order(False)[0] if engine == "auto" else engine


def fallback_note(asked: str, chosen: str) -> str | None:
    """The one line that says boxes are answered by Otsu in the box because LiteMedSAM cannot
    be imported (why, and what to install); None when Otsu was asked for by name or another
    engine answers."""
    from . import litemedsam

    if asked == "otsu" or chosen != "otsu" or litemedsam.available():
        return None
    return litemedsam.FALLBACK


def needs_model(engine: str) -> bool:
    """Whether answering with ``engine`` needs the FM-BFF-Net model ("auto" never picks the
    network, so only "network" does)."""
    return engine == "network"


def has_prompt_path(model) -> bool:
    """Whether ``model`` (a network, a model name or path, or None) has a trained prompt
    path; a file is judged by its metadata (unreadable files: no)."""
    if model is None:
        return False
    if hasattr(model, "config"):
        return bool(getattr(model.config, "prompts", False))
    try:
        from ..model.checkpoint import read_metadata
        from ..model.registry import resolve_model_path

        return bool(read_metadata(resolve_model_path(model))["config"].get("prompts"))
    except Exception:  # imported weights, unreadable files: no prompt path
        return False


def prompt_network(model):
    """The network of a model name or path, loaded once per file version (its size and
    modification time) and kept in ``prompt_service.engines``: each further box or click
    costs only a forward pass (on CPU). A network is returned as it is."""
    if hasattr(model, "forward"):
        return model
    from ..model.checkpoint import load_model
    from ..model.registry import resolve_model_path
    from . import prompt_service

    path, version = prompt_service.file_version(resolve_model_path(model))
    return prompt_service.engines.get("network", path, "cpu",
                                      lambda: load_model(path).eval(), version)


def prompt_mask(engine: str, plane, box=None, click=None, model=None, device="cpu",
                intensity_range=None) -> np.ndarray:
    """bool (H, W): ``engine``'s answer (a name of ``ENGINES`` but "auto", as
    ``choose_engine`` gives it) to one ``box`` (x0, y0, x1, y1) or ``click`` (x, y, positive)
    on ``plane``, for the Segment widget and ``fmbff segment`` alike. LiteMedSAM answers boxes
    (on ``device``, scaled by ``intensity_range``: ``litemedsam.litemedsam_box``); a click
    with LiteMedSAM chosen is Otsu's, as is every prompt with "otsu"; "network" is
    ``model``'s prompt path (``network_mask``)."""
    if engine == "network":
        return network_mask(model, plane, box=box, click=click)
    if engine == "litemedsam" and box is not None:
        from .litemedsam import litemedsam_box

        return litemedsam_box(plane, box, device, intensity_range)
    from .box import otsu_at_click, otsu_in_box

    if box is not None:
        return otsu_in_box(plane, box)
    return otsu_at_click(plane, click[0], click[1])


#: Pixels of context the network sees around a box or a click (each side).
NETWORK_MARGIN = 64


def network_mask(model, plane, box=None, click=None, threshold: float = 0.5) -> np.ndarray:
    """bool (H, W): a promptable network's answer to one ``box`` (x0, y0, x1, y1) or ``click``
    (x, y, positive) on ``plane``: one forward pass, on CPU, over the prompt's surroundings
    (``NETWORK_MARGIN`` px around it, padded to the network's multiple), the object under the
    prompt's centre kept. ``model``: a network with ``config.prompts`` or a model name/path."""
    import torch
    from scipy import ndimage as ndi

    from ..model.normalization import as_three_channels, default_normalization, torch_ready
    from ..model.prompts import box_pixels, check_click, prompt_maps

    model = prompt_network(model)
    if not getattr(model.config, "prompts", False):
        raise ValueError("this model has no trained prompt path; choose the box engine "
                         f"'{ENGINE_LABELS['otsu']}'")
    raw = np.asarray(plane)
    h, w = raw.shape[:2]
    if box is not None:
        rows, cols = box_pixels(box, (h, w))
        centre = ((rows.start + rows.stop - 1) / 2, (cols.start + cols.stop - 1) / 2)
        boxes, points = [box], []
    else:
        x, y, positive = check_click(click, (h, w))
        rows, cols, centre = slice(int(y), int(y) + 1), slice(int(x), int(x) + 1), (y, x)
        boxes, points = [], [(x, y, positive)]
    r0, r1 = max(rows.start - NETWORK_MARGIN, 0), min(rows.stop + NETWORK_MARGIN, h)
    c0, c1 = max(cols.start - NETWORK_MARGIN, 0), min(cols.stop + NETWORK_MARGIN, w)
    maps = prompt_maps((h, w), boxes, points)[:, r0:r1, c0:c1]
    crop = torch_ready(as_three_channels(raw[r0:r1, c0:c1]))[None]
    ph, pw = (-(r1 - r0)) % 32, (-(c1 - c0)) % 32
    norm = default_normalization(model)
    with torch.inference_mode():
        x = norm.apply(torch.from_numpy(np.pad(crop, ((0, 0), (0, ph), (0, pw), (0, 0)),
                                               mode="edge")), norm.intensity_range(raw))
        p = torch.from_numpy(np.pad(maps, ((0, 0), (0, ph), (0, pw))))[None]
        prob = torch.sigmoid(model.eval()(x, p).float())[0, 0, : r1 - r0, : c1 - c0].numpy()
    parts, n = ndi.label(prob > threshold)
    out = np.zeros((h, w), bool)
    if n:
        cy, cx = int(round(centre[0])) - r0, int(round(centre[1])) - c0
        label = parts[cy, cx] or np.bincount(parts.ravel())[1:].argmax() + 1
        out[r0:r1, c0:c1] = parts == label
    return out
