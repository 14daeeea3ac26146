"""`fmbff segment` on CT / MR volumes: a DICOM series or a NIfTI file in, NIfTI labels out.

Each slice goes through the Segmenter; the slices' masks are joined into whole-volume objects
(3D connected components: one tumour over 12 slices is one id) unless per-slice labels are
asked for. Intensities: a CT window, one range for the whole volume, or what the model was
trained with. The labels carry the source's affine; a JSON sidecar records the provenance.
"""

from __future__ import annotations

import datetime as _dt
import json
from pathlib import Path

import numpy as np

from .._files import atomic_path, refuse_existing
from ..data.medical import read_volume, series_name, window_range, write_nifti_labels

NORMALIZE = ("model", "slice", "volume")


def volume_normalization(base, volume_data, window=None, normalize: str = "model"):
    """The Normalization to segment a volume with (None: the model's own, slice by slice)."""
    from ..model.normalization import Normalization

    if normalize not in NORMALIZE:
        raise ValueError(f"--normalize must be one of {', '.join(NORMALIZE)}, got {normalize!r}")
    if window is not None:
        low, high = window_range(window)
    elif normalize == "volume":
        low, high = base.intensity_range(volume_data)
    elif normalize == "slice":  # each slice by its own percentiles
        return Normalization(mode="percentile", mean=base.mean, std=base.std)
    else:
        return None
    return Normalization(mode="fixed", low=float(low), high=float(high), mean=base.mean,
                         std=base.std)


def output_paths(volume, out_dir) -> tuple[Path, Path]:
    stem = series_name(volume)
    return Path(out_dir) / f"{stem}.nii.gz", Path(out_dir) / f"{stem}.json"


def labels_3d(mask: np.ndarray, min_size: int = 0, split: bool = True) -> np.ndarray:
    """Whole-volume objects: 3D connected components (26-connected), ids unique in the volume."""
    from scipy import ndimage as ndi

    labels, n = ndi.label(mask, structure=np.ones((3, 3, 3), bool))
    if min_size > 0 and n:
        sizes = np.bincount(labels.ravel())
        small = sizes < min_size
        small[0] = False
        labels[small[labels]] = 0
        labels, n = ndi.label(labels > 0, structure=np.ones((3, 3, 3), bool))
    return labels.astype(np.uint32) if split else (labels > 0).astype(np.uint8)


def segment_volume(model, settings, path, out_dir, threshold: float = 0.5, min_size: int = 0,
                   fill_holes: bool = False, labels: bool = True, window=None,
                   normalize: str = "model", per_slice: bool = False, overwrite: bool = False,
                   provenance: dict | None = None):
    """Generator: yields (slice, slices) while segmenting; returns the NIfTI path written."""
    from ..inference.postprocess import labels_from_proba
    from ..inference.segmenter import Segmenter
    from ..model.normalization import default_normalization

    volume = read_volume(path)
    target, sidecar = output_paths(volume, out_dir)
    refuse_existing(target, overwrite)
    refuse_existing(sidecar, overwrite)
    norm = volume_normalization(default_normalization(model), volume.data, window, normalize)
    seg = Segmenter(model, settings, normalization=norm)
    n = volume.data.shape[0]
    mask = np.zeros(volume.data.shape, bool)
    per = np.zeros(volume.data.shape, np.uint32) if per_slice else None
    for z in range(n):
        prob = seg.predict_proba(volume.data[z])
        plane = labels_from_proba(prob, threshold, 0 if not per_slice else min_size, fill_holes)
        mask[z] = plane > 0
        if per is not None:
            per[z] = plane
        yield z + 1, n
    if per is not None:
        out = per if labels else (per > 0).astype(np.uint8)
    else:
        out = labels_3d(mask, min_size, split=labels)
    used = seg.normalization
    record = {"source": str(volume.source), "format": volume.metadata.get("format"),
              "spacing_mm": list(volume.spacing), "threshold": threshold, "min_size": min_size,
              "fill_holes": fill_holes, "labels": "3D objects" if not per_slice else "per slice",
              "window": window, "normalize": normalize,
              "intensity": used.to_dict() if hasattr(used, "to_dict") else None,
              "tile_size": seg.tile_size, "overlap": seg.overlap, "tta": seg.tta,
              "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
              **(provenance or {})}
    write_nifti_labels(target, out, volume.affine, overwrite,
                       description=f"fmbff {record.get('model', '')}"[:79])
    with atomic_path(sidecar, overwrite) as tmp:
        tmp.write_text(json.dumps(record, indent=1, default=str))
    return target
