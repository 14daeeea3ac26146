"""Propagate through a volume: learn from the slices the user corrected or accepted, then
segment every other slice; what the user labelled is never changed.

One run = the one train-and-save (``train_and_save``, the fine-tuning recipe) on the labelled
slices, then the fine-tuned model on the other slices. When training did not change the
model, nothing is saved and the base model segments the other slices: the result says so, and
no model claims to have learned. A lesion keeps one id across the pixels the user painted and
the ones the model adds (the model's voxels take the id of the user's object they touch in
3D; objects touching none get new ids above the user's: ``postprocess.propagated_labels``,
the rule the Segment widget's re-threshold follows after a propagation too). With the
corrections store (``PropagateRequest.store``) the labelled slices join the store as a case
and the store's model trains on all of it; on LiteMedSAM's encoder (the default) new layers
learn the slices and answer this volume beside it. ``fmbff propagate`` and the Segment widget's Propagate
both run ``iter_propagate``; reading and writing the files is ``jobs.propagated``'s.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..inference.postprocess import DEFAULT_THRESHOLD, Postprocess, propagated_labels
from .config import ENCODERS, propagate_encoder
from .requests import ModelOut, RunControl
from .self_label import SelfLabel, iter_self_labelled
from .store_training import StoreCase, StoreRun, settle, stage, train_on_store

#: What a propagation keeps of the model's voxels on the other slices: only the 3D objects that
#: touch an object the user labelled (``postprocess.connected_to_user``), i.e. the corrected lesion
#: carried through the volume. Chosen by benchmarks/interactive.py on real CT / MR: one
#: corrected slice gives a model that also marks lesion-free slices far from the tumour, and
#: keeping only what is connected to the correction raised the 3D Dice of the other slices
#: (docs/models.md, "Propagation keeps the corrected lesion (connected in 3D)"). ``fmbff propagate
#: --all-objects`` keeps everything the model found.
KEEP_CONNECTED = True

#: With ``KEEP_CONNECTED``, Propagate segments the other slices outward from the labelled ones
#: and stops, each way, at the first slice where nothing at the threshold is connected in 3D
#: to the user's objects (``outward_slices``): nothing past it can be, so the labels are those
#: of segmenting every slice. The slices past the stop are not segmented (probability 0):
#: a re-threshold below the propagation's threshold cannot reach them, and "Next slice to
#: check" does not point at them. On the real volumes it segments 4-10 slices of 20-60
#: (docs/models.md, "Propagate's default").
OUTWARD = True

#: Whether a propagation's slices are redrawn by LiteMedSAM from the boxes of the model's
#: objects (``inference.redraw``), when LiteMedSAM can be imported. Chosen by
#: benchmarks/interactive.py --levers (docs/models.md, "Issue 30's levers").
REDRAW = True

#: Whether a redrawn propagation also carries each lesion past its first and last slice, by
#: LiteMedSAM from the end slice's box, while the new mask is the same lesion by its own
#: signals (``inference.redraw.iter_extend_ends``, ``EndRule``: at most 2 slices each side).
#: Chosen by benchmarks/interactive.py --levers (docs/models.md, "Issue 30's levers").
CARRY_ENDS = True


@dataclass
class PropagateResult:
    labels: np.ndarray          # (Z, Y, X) int32: labelled slices verbatim, the rest from the model
    probs: np.ndarray           # float32 (Z, Y, X): the model's; the labelled slices' own 0 / 1
    slices: list                # the slices trained on (verbatim in ``labels``)
    outcome: object             # training.run.Outcome: the saved model, or why none was
    uncertainty: np.ndarray = field(default=None)  # per slice (inference.review); 0 when labelled
    connected: bool = KEEP_CONNECTED  # only the objects connected to the user's were kept
    redrawn: list = field(default_factory=list)  # the slices LiteMedSAM redrew (inference.redraw)
    carried: list = field(default_factory=list)  # slices the lesion was carried to past its ends
    dropped: list = field(default_factory=list)  # slices emptied: LiteMedSAM found no object
    ends: bool = False          # whether the ends were carried (a re-threshold carries them again)
    notes: list = field(default_factory=list)    # what the user should know, in words
    store_outcome: object = None  # with the store on LiteMedSAM's encoder: the store's training

    @property
    def learned(self) -> bool:
        return self.outcome.saved


def store_model_beside(out_model) -> Path:
    """The store's model's file beside the answer's ``out_model``: its name with "-store"."""
    out = Path(out_model)
    return out.with_name(f"{out.stem}-store{out.suffix}")


def labelled_slices(labels, n_image_slices: int, slices=None) -> list[int]:
    """The slices to learn from: ``slices`` when given (an accepted slice may hold no lesion),
    else every slice of ``labels`` with a label. One line for what cannot be propagated."""
    labels = np.asarray(labels) if not hasattr(labels, "dtype") else labels
    if labels.ndim != 3:
        raise ValueError(f"labels must be a (Z, Y, X) volume, got shape {tuple(labels.shape)}")
    if not np.issubdtype(labels.dtype, np.integer) and labels.dtype != bool:
        raise ValueError(f"labels must hold whole numbers (label ids), got {labels.dtype}; "
                         "give a labels image")
    if labels.shape[0] != n_image_slices:
        raise ValueError(f"labels have {labels.shape[0]} slices but the image has "
                         f"{n_image_slices}; give the labels of this image")
    if labels.shape[0] < 2:
        raise ValueError("a volume with one slice has nothing to propagate to; use Segment "
                         "or fmbff segment for a single image")
    n = labels.shape[0]
    if slices is None:
        slices = [z for z in range(n) if np.asarray(labels[z]).any()]
        if not slices:
            raise ValueError("no slice holds a label: correct or accept at least one slice "
                             "first (paint the lesion on one slice)")
    else:
        slices = sorted({int(z) for z in slices})
        bad = [z for z in slices if not 0 <= z < n]
        if bad:
            raise ValueError(f"slice {bad[0]} is outside the volume (0..{n - 1})")
    if len(slices) == n:
        raise ValueError(f"every one of the {n} slices is labelled: nothing to propagate to")
    return slices


@dataclass(frozen=True)
class PropagateRequest:
    """What a propagation learns from, what it runs on and where its model goes.

    Args:
        volume: (Z, Y, X) grey slices (napari layer data or an array).
        labels: the user's labels, the same shape (any lesion id counts).
        out_model: the fine-tuned model's file (nothing is replaced unless ``overwrite``).
        slices: the slices to learn from (default: every slice with a label;
            ``labelled_slices``).
        normalization: the intensity setting (default: the model's own), resolved for this
            volume.
        cfg: the fine-tuning recipe, as given (default ``loop.propagate_config()``:
            the fine-tuning recipe on crops of at most ``PROPAGATE_CROP`` px).
        base: the model it starts from, as its record names it.
        image_name: the volume's name in the model's lineage and messages.
        threshold: probability -> lesion (default ``postprocess.DEFAULT_THRESHOLD``).
        min_size: the model's objects smaller than this (voxels) touching no user object
            are dropped.
        overwrite: replace an existing model of that name.
        extra: more provenance keys for the model's record.
        connected: keep only the model's objects touching the user's (``KEEP_CONNECTED``).
        store: the corrections store the labelled slices join as a case, trained on whole
            (``store_training.StoreCase``); None: the labelled slices alone. With
            ``encoder`` "litemedsam" the store's model (from the model given to
            ``iter_propagate``, ``base``) learns the store beside the new layers, which
            answer this volume: ``PropagateResult.store_outcome``.
        redraw: redraw the model's objects on the other slices with LiteMedSAM from their
            boxes (``inference.redraw``; default ``REDRAW``); skipped, with a note, when
            LiteMedSAM cannot be imported.
        ends: with ``redraw``, carry each lesion past its ends with LiteMedSAM while it is
            the same lesion (``inference.redraw.iter_extend_ends``; default ``CARRY_ENDS``).
        self_label: label the neighbouring slices outward and learn from them too
            (``self_label.SelfLabel``; None: learn from the labelled slices only). Not with
            ``store``: a store run learns the reviewed cases only.
        encoder: what the model learns on (``ENCODERS``; None: ``config.propagate_encoder``'s
            choice, "litemedsam" but "model" with ``self_label``): "model" fine-tunes the
            model given to ``iter_propagate``; "litemedsam" trains new FM-BFF-Net layers on
            LiteMedSAM's frozen encoder (``training.medical``; its own recipe: ``cfg`` gives
            only the device, the seed and, with ``store``, the store's recipe). Not with
            ``self_label``.
        store_model: with ``store`` on "litemedsam", the store's model's file (default:
            ``out_model``'s name with "-store"; nothing is replaced unless ``overwrite``).
    """

    volume: Any
    labels: Any
    out_model: Any
    slices: Sequence[int] | None = None
    normalization: Any = None
    cfg: Any = None
    base: Any = None
    image_name: str = ""
    threshold: float | None = None
    min_size: int = 0
    overwrite: bool = False
    extra: Mapping = field(default_factory=dict)
    connected: bool = KEEP_CONNECTED
    store: StoreCase | None = None
    self_label: SelfLabel | None = None
    redraw: bool = REDRAW
    ends: bool = CARRY_ENDS
    encoder: str | None = None
    store_model: Any = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "encoder", propagate_encoder(  # resolved once, frozen after
            self.encoder, self_label=self.self_label is not None))
        if self.encoder not in ENCODERS:
            raise ValueError(f"encoder must be one of {', '.join(ENCODERS)}, got "
                             f"{self.encoder!r}")
        if self.encoder == "litemedsam" and self.self_label is not None:
            raise ValueError("Propagate on LiteMedSAM's encoder learns the labelled slices "
                             "alone: not with self-labelling")

    @property
    def trains_both(self) -> bool:
        """Whether LiteMedSAM's encoder answers this volume while the store's model learns
        the case (the corrections store on the "litemedsam" encoder)."""
        return self.store is not None and self.encoder == "litemedsam"

    def store_model_path(self) -> Path:
        """Where the store's model goes when ``trains_both``: ``store_model``, or
        ``store_model_beside(out_model)``."""
        if self.store_model is not None:
            return Path(self.store_model)
        return store_model_beside(self.out_model)

    def postprocess(self) -> Postprocess:
        """The threshold and min size as ``postprocess.propagated_labels`` takes them."""
        threshold = DEFAULT_THRESHOLD if self.threshold is None else self.threshold
        return Postprocess(threshold, self.min_size, labels=True)

    def lineage(self, zs) -> dict:
        """The ``propagated`` record of the model: its base, the slices and the image."""
        return {"base": str(self.base) if self.base else None, "slices": zs,
                "image": self.image_name}

    def describe(self, zs) -> str:
        """What the model learned from, in words."""
        return f"{self.image_name or 'a volume'}, slice(s) {', '.join(map(str, zs))}"


def iter_propagate(net, request: PropagateRequest, control: RunControl | None = None):
    """Generator: yields ``Progress``, "train" while fine-tuning, then "slices" while
    segmenting the other slices; returns a ``PropagateResult``.

    ``request`` (``PropagateRequest``): the volume, the user's labels, the slices to learn
    from, the recipe and the model's file; the model is saved with its lineage (base model,
    slices and image). With ``request.store`` the slices become a case of the corrections
    store (its source defaulting to the image name, its proposing model to the base) and the
    model trains on the whole store (``store_training.train_on_store``); the case joins the
    store and the model is registered (``settle``) once the volume is segmented; closed or
    failed before that, the store is as it was. With the store on LiteMedSAM's encoder
    (``request.trains_both``) new layers on LiteMedSAM's encoder learn the labelled slices
    and answer the other slices, yielded as ``Progress("answer", 1, 1, result)``; then the
    store's model trains (``_answer_then_store``; ``PropagateResult.store_outcome``). ``control``
    (``RunControl``; default: a cancel keeps nothing): stop and keep on cancel.
    """
    from ..model.normalization import default_normalization
    from .loop import propagate_config

    volume, labels, case = request.volume, request.labels, request.store
    zs = labelled_slices(labels, len(volume), request.slices)
    setting = request.normalization or default_normalization(net)
    cfg = request.cfg or propagate_config()
    out = ModelOut(request.out_model, request.describe(zs), request.base, request.overwrite,
                   extra={"propagated": request.lineage(zs), **request.extra})
    control = control or RunControl(keep_on_cancel=False)
    pending = None if case is None else stage(
        case.store, np.asarray(volume), np.asarray(labels), zs, setting,
        case.case_source(request.image_name, request.base))
    try:
        if request.trains_both:
            return (yield from _answer_then_store(net, request, zs, setting, cfg, out, control,
                                                  pending))
        if case is not None:
            training = train_on_store(net, case.store, cfg, setting, out, control,
                                      StoreRun(pending, commit=False))
        elif request.self_label is not None:
            training = iter_self_labelled(net, request, zs, setting, cfg, out, control)
        elif request.encoder == "litemedsam":
            training = _learn_on_litemedsam(request, zs, cfg, out, control)
        else:
            training = _train_on_slices(net, request, zs, setting, cfg, out, control)
        outcome = yield from training
        result = yield from _segment_the_others(net, outcome, request, zs,
                                                setting.for_stack(volume))
        if case is not None:
            settle(case.store, outcome, pending, base=request.base, cfg=cfg)
    except BaseException:
        if pending is not None:
            pending.discard()
        raise
    return result


def _answer_then_store(net, request: PropagateRequest, zs, setting, cfg, out: ModelOut,
                       control, pending):
    """Generator: the corrections store on LiteMedSAM's encoder. New layers learn the
    labelled slices and answer the other slices (``net``, the store's start model, answers if
    they learn nothing); the answer is yielded (``Progress("answer", 1, 1, result)``) before
    the store's model trains on the whole store, the case included (saved to
    ``request.store_model_path()``); the case then joins the store (``settle``). Returns the
    result, its ``store_outcome`` the store's training."""
    from ..inference.progress import Progress
    from .run import check_output

    store_out = replace(out, path=request.store_model_path())
    check_output(store_out.path, request.overwrite)  # before anything is trained
    outcome = yield from _learn_on_litemedsam(request, zs, cfg, out, control)
    result = yield from _segment_the_others(net, outcome, request, zs,
                                            setting.for_stack(request.volume))
    yield Progress("answer", 1, 1, result)
    store = request.store.store
    store_outcome = yield from train_on_store(net, store, cfg, setting, store_out, control,
                                              StoreRun(pending, commit=False))
    settle(store, store_outcome, pending, base=request.base, cfg=cfg)
    result.store_outcome = store_outcome
    result.notes.append(  # never say a model learned when it did not
        f"The corrections store's model trained on this case: {store_outcome.message}"
        if store_outcome.saved else
        f"This case joined the corrections store; its model did not change: "
        f"{store_outcome.message}")
    return result


def _learn_on_litemedsam(request: PropagateRequest, zs, cfg, out: ModelOut, control):
    """Generator: ``medical.iter_learn_slices`` on the slices ``zs`` (new layers on
    LiteMedSAM's encoder), their record naming them as what they started from."""
    from .config import MEDICAL_BASE
    from .medical import iter_learn_slices

    if request.trains_both:  # ``out`` names the store's start model: these layers are new
        out = replace(out, base=MEDICAL_BASE, extra={
            **out.extra, "propagated": {**request.lineage(zs), "base": MEDICAL_BASE},
            "store_model": str(request.store_model_path())})
    return (yield from iter_learn_slices(request.volume, request.labels, zs, out, cfg,
                                         control))


def _train_on_slices(net, request: PropagateRequest, zs, setting, cfg, out: ModelOut,
                     control: RunControl):
    """Generator: ``run.train_and_save`` on the slices ``zs`` of the request's volume alone
    (yields its ``Progress``; returns the Outcome); a ValueError when they hold no lesion."""
    from .loop import slice_items
    from .run import train_and_save

    items = slice_items(request.volume, request.labels, zs, setting, request.image_name)
    return (yield from train_and_save(net, items, cfg, setting, out, control))


def _segment_the_others(net, outcome, request: PropagateRequest, zs, normalization):
    """Generator: after the training of a propagation (``outcome``), the trained model (or
    ``net`` when nothing was saved) segments the slices of ``request.volume`` not in ``zs``
    with ``normalization`` (resolved for the volume); returns the ``PropagateResult``, its
    labels ``postprocess.propagated_labels``'s."""
    from ..inference.review import slice_uncertainty

    model = outcome.result.net if outcome.saved else net
    volume, labels = request.volume, request.labels
    outward = OUTWARD and request.connected
    reach = request.postprocess().threshold if outward else None
    probs = yield from _segment_others(model, volume, labels, zs, normalization, reach)
    merged = propagated_labels(probs, labels, zs, request.postprocess(), request.connected)
    uncertainty = slice_uncertainty(probs)
    uncertainty[zs] = 0.0
    redrawn, carried, dropped, notes, ends = [], [], [], [], False
    if request.redraw:
        from ..inference import litemedsam

        merged, redrawn, carried, dropped, notes = yield from redraw_labels(
            volume, merged, zs, request.cfg, request.ends)
        ends = request.ends and litemedsam.available()
    if carried:
        notes.append("LiteMedSAM carried the lesion past its ends to slice(s) "
                     f"{', '.join(map(str, carried))}: check them")
    return PropagateResult(merged, probs, zs, outcome, uncertainty, request.connected,
                           redrawn=redrawn, notes=notes, carried=carried, dropped=dropped,
                           ends=ends)


def redraw_labels(volume, labels, zs, cfg=None, ends: bool = False):
    """Generator: ``inference.redraw.iter_redraw`` on a propagation's labels, on the recipe's
    device, then with ``ends`` ``iter_extend_ends`` (each lesion carried past its ends);
    returns (labels, slices redrawn, slices carried to, slices left empty because LiteMedSAM
    found nothing to outline there (``redraw.UNSURE``), notes): unchanged, with a note, when
    LiteMedSAM cannot be imported. The Segment widget's re-threshold after a propagation calls
    it too."""
    from ..inference import litemedsam
    from ..inference.redraw import UNSURE, iter_extend_ends, iter_redraw
    from ..inference.runtime import resolve_device

    if not litemedsam.available():
        return labels, [], [], [], ["the propagated slices were not redrawn: "
                                    + litemedsam.MISSING]
    device = resolve_device(str(getattr(cfg, "device", None) or "auto")).type
    intensity = litemedsam.volume_range(volume)  # one range for both, read once
    labels, done, dropped = yield from iter_redraw(volume, labels, zs, device, intensity,
                                                   UNSURE)
    carried = []
    if ends:
        labels, carried = yield from iter_extend_ends(volume, labels, zs, device, intensity)
    dropped = [z for z in dropped if not np.asarray(labels[z]).any()]  # none carried back
    notes = [f"LiteMedSAM found no lesion it could outline where the model marked slice(s) "
             f"{', '.join(map(str, dropped))} (its predicted IoU below {UNSURE:g}), so they "
             "were left empty: check them"] if dropped else []
    return labels, done, carried, dropped, notes


def _segment_others(model, volume, labels, zs, normalization, reach=None):
    """Generator: the model's probabilities on the slices not in ``zs`` (yields their
    ``Progress``, "slices"); the labelled slices get their own labels as 0 / 1. ``reach``:
    segment outward and stop where the lesion ends at that probability (``outward_slices``;
    the slices past it stay 0); None: every slice."""
    from ..inference import medical
    from ..inference.progress import Progress
    from ..inference.segmenter import Segmenter

    probs = np.zeros(np.shape(labels), np.float32)
    for z in zs:
        probs[z] = np.asarray(labels[z]) > 0
    others = [z for z in range(len(volume)) if z not in set(zs)]
    order = others if reach is None else outward_slices(probs, labels, zs, reach)
    if medical.is_medical(model):  # whole slices, their embeddings handed to the redraw
        from ..inference.litemedsam import volume_range

        done = len((yield from medical.iter_predict_slices(
            model, volume, order, volume_range(volume), out=probs, total=len(others))))
    else:
        seg = Segmenter(model, normalization=normalization)
        done = 0
        for z in order:
            probs[z] = seg.predict_proba(np.asarray(volume[z]))
            done += 1
            yield Progress("slices", done, len(others))
    if done < len(others):  # the walk stopped at the lesion's ends: the rest is done too
        yield Progress("slices", len(others), len(others))
    return probs


def outward_slices(probs, labels, zs, reach: float):
    """The slices not in ``zs`` in the order a propagation segments them, ``probs`` (Z, Y, X)
    filled by the caller before it asks for the next: those between the labelled slices, then
    outward from the first and from the last, each way up to the first slice where no voxel
    of ``probs`` >= ``reach`` is connected in 3D to an object of ``labels`` on ``zs``
    (``postprocess.connected_to_user``). Past that slice nothing can be: a path from the
    user's objects would have to cross it, and one crossing the labelled slice crosses a
    user's voxel. So ``propagated_labels`` with ``connected`` gives the same labels as
    segmenting every slice, at any threshold >= ``reach``."""
    from ..inference.postprocess import connected_to_user

    user = set(zs)
    lo, hi = min(user), max(user)
    yield from (z for z in range(lo + 1, hi) if z not in user)
    for step, first, stop in ((1, hi + 1, len(probs)), (-1, lo - 1, -1)):
        for z in range(first, stop, step):
            yield z
            span = slice(hi, z + 1) if step > 0 else slice(z, lo + 1)
            mine = [hi - span.start] if step > 0 else [lo - span.start]
            kept = connected_to_user(probs[span] >= reach, np.asarray(labels[span]), mine)
            if not kept[z - span.start].any():
                break
