"""`fmbff segment` on CT / MR volumes: a DICOM series or a NIfTI file in, NIfTI labels out.

Each slice goes through the Segmenter; the slices' masks are joined into whole-volume objects
(3D connected components: one tumour over 12 slices is one id) unless per-slice labels are
asked for. Intensities: a CT window, one range for the whole volume, or what the model was
trained with. The labels carry the source's affine; a JSON sidecar records the provenance.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .._files import atomic_path, refuse_existing
from ..data.medical import read_volume, series_name, write_nifti_labels
from .files import Postprocess, result_provenance


def output_paths(volume, out_dir) -> tuple[Path, Path]:
    stem = series_name(volume)
    return Path(out_dir) / f"{stem}.nii.gz", Path(out_dir) / f"{stem}.json"


def segment_volume(model, settings, path, out_dir, threshold: float = 0.5, min_size: int = 0,
                   fill_holes: bool = False, labels: bool = True, window=None,
                   normalize: str = "model", per_slice: bool = False, overwrite: bool = False,
                   provenance: dict | None = None):
    """Generator: yields (slice, slices) while segmenting; returns the NIfTI path written."""
    from ..inference.intensity import intensity_setting
    from ..inference.postprocess import label_volume, labels_from_proba
    from ..inference.segmenter import Segmenter
    from ..model.normalization import default_normalization

    volume = read_volume(path)
    target, sidecar = output_paths(volume, out_dir)
    refuse_existing(target, overwrite)
    refuse_existing(sidecar, overwrite)
    chosen = intensity_setting(default_normalization(model), window, normalize)
    seg = Segmenter(model, settings, normalization=chosen.for_stack(volume.data))
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
        out = label_volume(mask, min_size, split=labels)
    post = Postprocess(threshold, min_size, fill_holes, labels, per_slice)
    record = {**result_provenance(seg, post, volume.source),
              "format": volume.metadata.get("format"), "spacing_mm": list(volume.spacing),
              "labels": "3D objects" if not per_slice else "per slice",
              "window": window, "normalize": normalize, "intensity_setting": chosen.to_dict(),
              **(provenance or {})}
    write_nifti_labels(target, out, volume.ras_affine, overwrite,
                       description=f"fmbff {record.get('model', '')}"[:79])
    with atomic_path(sidecar, overwrite) as tmp:
        tmp.write_text(json.dumps(record, indent=1, default=str))
    return target
