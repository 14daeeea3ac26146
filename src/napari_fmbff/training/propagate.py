"""Propagate through a volume: learn from the slices the user corrected or accepted, then
segment every other slice; what the user labelled is never changed.

One run = the one train-and-save (``train_and_save``, the fine-tuning recipe) on the labelled
slices, then the fine-tuned model on the other slices. When training did not change the
model, nothing is saved and the base model segments the other slices: the result says so, and
no model claims to have learned. A lesion keeps one id across the pixels the user painted and
the ones the model adds (the model's voxels take the id of the user's object they touch in
3D; objects touching none get new ids above the user's). ``fmbff propagate`` and the Segment
widget's Propagate both run ``iter_propagate``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .requests import ModelOut, RunControl

#: What a propagation keeps of the model's voxels on the other slices: only the 3D objects that
#: touch an object the user labelled (``connected_to_user``), i.e. the corrected lesion
#: carried through the volume. Chosen by benchmarks/interactive.py on real CT / MR: one
#: corrected slice gives a model that also marks lesion-free slices far from the tumour, and
#: keeping only what is connected to the correction raised the 3D Dice of the other slices
#: (docs/models.md, "Propagation keeps the corrected lesion (connected in 3D)"). ``fmbff propagate
#: --all-objects`` keeps everything the model found.
KEEP_CONNECTED = True


@dataclass
class PropagateResult:
    labels: np.ndarray          # (Z, Y, X) int32: labelled slices verbatim, the rest from the model
    probs: np.ndarray           # float32 (Z, Y, X): the model's; the labelled slices' own 0 / 1
    slices: list                # the slices trained on (verbatim in ``labels``)
    outcome: object             # training.run.Outcome: the saved model, or why none was
    uncertainty: np.ndarray = field(default=None)  # per slice (inference.review); 0 when labelled
    connected: bool = KEEP_CONNECTED  # only the objects connected to the user's were kept

    @property
    def learned(self) -> bool:
        return self.outcome.saved


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
        cfg: the fine-tuning recipe (default ``finetune_config()``).
        base: the model it starts from, as its record names it.
        image_name: the volume's name in the model's lineage and messages.
        threshold: probability -> lesion (default ``postprocess.DEFAULT_THRESHOLD``).
        min_size: the model's objects smaller than this (voxels) touching no user object
            are dropped.
        overwrite: replace an existing model of that name.
        extra: more provenance keys for the model's record.
        connected: keep only the model's objects touching the user's (``KEEP_CONNECTED``).
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

    def lineage(self, zs) -> dict:
        """The ``propagated`` record of the model: its base, the slices and the image."""
        return {"base": str(self.base) if self.base else None, "slices": zs,
                "image": self.image_name}

    def describe(self, zs) -> str:
        """What the model learned from, in words."""
        return f"{self.image_name or 'a volume'}, slice(s) {', '.join(map(str, zs))}"


def iter_propagate(net, request: PropagateRequest, control: RunControl | None = None):
    """Generator: yields ("train", TrainEvent) while fine-tuning, then ("segment", done,
    total); returns a ``PropagateResult``.

    ``request`` (``PropagateRequest``): the volume, the user's labels, the slices to learn
    from, the recipe and the model's file; the model is saved with its lineage (base model,
    slices and image). ``control`` (``RunControl``; default: a cancel keeps nothing): stop
    and keep on cancel.
    """
    from ..inference.runtime import relay
    from ..model.normalization import default_normalization
    from .loop import finetune_config, make_items
    from .run import train_and_save

    volume, labels, name = request.volume, request.labels, request.image_name
    zs = labelled_slices(labels, len(volume), request.slices)
    setting = request.normalization or default_normalization(net)
    resolved = setting.for_stack(volume)
    items = make_items([np.asarray(volume[z]) for z in zs],
                       [np.asarray(labels[z]) > 0 for z in zs], resolved,
                       [f"{name or 'volume'} slice {z}" for z in zs],
                       group=name or "volume", require_lesion=False)
    if not any(item.mask.any() for item in items):
        raise ValueError("the labelled slices hold no lesion: paint the lesion on at least "
                         "one slice before propagating")
    out = ModelOut(request.out_model, request.describe(zs), request.base, request.overwrite,
                   extra={"propagated": request.lineage(zs), **request.extra})
    outcome = yield from relay(train_and_save(
        net, items, request.cfg or finetune_config(), setting, out,
        control or RunControl(keep_on_cancel=False)), lambda event: ("train", event))
    return (yield from finish_propagation(net, outcome, request, zs, resolved))


def finish_propagation(net, outcome, request: PropagateRequest, zs, normalization):
    """Generator: after the training of a propagation (``outcome``), the trained model (or
    ``net`` when nothing was saved) segments the slices of ``request.volume`` not in ``zs``
    with ``normalization`` (resolved for the volume); returns the ``PropagateResult``
    (shared by ``iter_propagate`` and the store's propagation)."""
    from ..inference.postprocess import DEFAULT_THRESHOLD
    from ..inference.review import slice_uncertainty

    model = outcome.result.net if outcome.saved else net
    volume, labels = request.volume, request.labels
    probs = yield from _segment_others(model, volume, labels, zs, normalization)
    threshold = DEFAULT_THRESHOLD if request.threshold is None else request.threshold
    merged = merge_ids(labels, zs, probs >= threshold, request.min_size, request.connected)
    uncertainty = slice_uncertainty(probs)
    uncertainty[zs] = 0.0
    return PropagateResult(merged, probs, zs, outcome, uncertainty, request.connected)


def _segment_others(model, volume, labels, zs, normalization):
    """Generator: the model's probabilities on every slice not in ``zs`` (yields progress);
    the labelled slices get their own labels as 0 / 1."""
    from ..inference.segmenter import Segmenter

    seg = Segmenter(model, normalization=normalization)
    probs = np.zeros(np.shape(labels), np.float32)
    others = [z for z in range(len(volume)) if z not in set(zs)]
    for k, z in enumerate(others):
        probs[z] = seg.predict_proba(np.asarray(volume[z]))
        yield ("segment", k + 1, len(others))
    for z in zs:
        probs[z] = np.asarray(labels[z]) > 0
    return probs


def connected_to_user(mask, labels, zs) -> np.ndarray:
    """bool: the voxels of ``mask`` (outside the slices ``zs``) in a 3D object (26-connected,
    with the user's labelled voxels) that touches an object the user labelled on ``zs``: the
    lesion carried through the volume, without the model's false alarms elsewhere."""
    from scipy import ndimage

    labels = np.asarray(labels)
    user = np.zeros(labels.shape, bool)
    user[zs] = True
    mask = np.asarray(mask, bool) & ~user
    seeds = user & (labels > 0)
    parts, n = ndimage.label(mask | seeds, structure=np.ones((3, 3, 3), bool))
    if not n:
        return mask
    keep = np.unique(parts[seeds])
    return mask & np.isin(parts, keep[keep > 0])


def merge_ids(labels, zs, mask, min_size: int = 0, connected: bool = False) -> np.ndarray:
    """int32 labels: the slices ``zs`` of ``labels`` verbatim; elsewhere ``mask``'s voxels,
    each 3D object taking the id the user gave the object it touches
    (``postprocess.join_user_ids``), new ids otherwise. The model's objects under
    ``min_size`` voxels that touch no user object are dropped first; with ``connected`` every
    object that touches none is dropped (``connected_to_user``)."""
    from ..inference.postprocess import join_user_ids, label_volume

    labels = np.asarray(labels)
    user = np.zeros(labels.shape, bool)
    user[zs] = True
    mask = np.asarray(mask, bool) & ~user
    if connected:
        mask = connected_to_user(mask, labels, zs)
    if min_size > 1:  # small objects of the model's own, unless they touch the user's
        touching = label_volume(mask | (user & (labels > 0))) if mask.any() else None
        small = label_volume(mask, min_size) == 0
        if touching is not None:
            keep = np.unique(touching[user & (labels > 0)])
            small &= ~np.isin(touching, keep[keep > 0])
        mask &= ~small
    return join_user_ids(labels, user, mask)


@dataclass
class VolumeFiles:
    """A volume and its partial labels as read from files, and where the results go."""

    data: np.ndarray            # (Z, Y, X) image
    labels: np.ndarray          # (Z, Y, X) integer labels on the image's grid
    stem: str                   # the input's name without its suffixes
    volume: object = None       # data.medical.Volume of a NIfTI / DICOM input (None: TIFF)

    def targets(self, out_dir) -> tuple:
        """(labels file, its JSON record or None, model file) in ``out_dir``: the input's
        name and format (NIfTI for NIfTI / DICOM, TIFF for a TIFF stack)."""
        from pathlib import Path

        out = Path(out_dir)
        model = out / f"{self.stem}_propagated.safetensors"
        if self.volume is None:
            return out / f"{self.stem}.tif", None, model
        return out / f"{self.stem}.nii.gz", out / f"{self.stem}.json", model


def read_volume_files(volume_path, labels_path) -> VolumeFiles:
    """A NIfTI / DICOM volume with NIfTI (or DICOM) labels turned onto its grid, or a TIFF
    stack with TIFF labels of the same shape. One line for what does not fit."""
    from pathlib import Path

    from ..data.medical import is_medical, read_volume, series_name

    volume_path, labels_path = Path(volume_path), Path(labels_path)
    if is_medical(volume_path):
        if not is_medical(labels_path):
            raise ValueError(f"{labels_path}: the labels of a NIfTI / DICOM volume must be a "
                             "NIfTI file (.nii, .nii.gz) on the same scan")
        from ..data.datasets import on_image_grid

        volume = read_volume(volume_path)
        labels = on_image_grid(read_volume(labels_path), volume, labels_path, volume_path)
        return VolumeFiles(volume.data, _label_ids(labels, labels_path),
                           series_name(volume), volume)
    import tifffile

    data, labels = tifffile.imread(volume_path), tifffile.imread(labels_path)
    if data.ndim != 3:
        raise ValueError(f"{volume_path}: a stack of grey slices (Z, Y, X) is needed, got "
                         f"shape {data.shape}")
    if labels.shape != data.shape:
        raise ValueError(f"{labels_path}: labels of shape {labels.shape} do not fit the image's "
                         f"{data.shape}; give the labels of this stack")
    from ..data.image_io import output_stem

    return VolumeFiles(data, _label_ids(labels, labels_path), output_stem(volume_path))


def _label_ids(labels, path) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.dtype.kind == "f":
        if not np.all(np.isfinite(labels)) or np.any(np.mod(labels, 1)):
            raise ValueError(f"{path}: labels must be whole numbers (label ids), got fractions "
                             "or NaN; give a labels image")
        labels = labels.astype(np.int64)
    if labels.dtype.kind not in "iub":
        raise ValueError(f"{path}: labels must be whole numbers (label ids), got {labels.dtype}")
    if labels.size and labels.min() < 0:
        raise ValueError(f"{path}: labels must be 0 (background) or positive ids")
    return labels.astype(np.int32)


def write_propagated(files: VolumeFiles, result: PropagateResult, out_dir, record: dict,
                     overwrite: bool = False):
    """The whole labels volume in the input's format (NIfTI with the scan's affine and a JSON
    record, or a TIFF with the record inside); returns the labels file."""
    from ..data.image_io import write_image
    from ..data.medical import write_labels_and_record

    target, sidecar, _ = files.targets(out_dir)
    if files.volume is None:
        return write_image(target, result.labels, overwrite, provenance=record)
    return write_labels_and_record(target, sidecar, result.labels, files.volume.ras_affine,
                                   record, overwrite)
