"""`fmbff segment` on CT / MR volumes: a DICOM series or a NIfTI file in, NIfTI labels out.

Each slice goes through the Segmenter; the slices' masks are joined into whole-volume objects
(3D connected components: one tumour over 12 slices is one id) unless per-slice labels are
asked for. Intensities: a CT window, one range for the whole volume, or what the model was
trained with. The labels carry the source's affine; a JSON sidecar records the provenance.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from .._files import refuse_existing
from ..data.medical import read_volume, series_name, write_labels_and_record
from ..inference.postprocess import DEFAULT_THRESHOLD, Postprocess
from .files import result_provenance


def output_paths(volume, out_dir) -> tuple[Path, Path]:
    stem = series_name(volume)
    return Path(out_dir) / f"{stem}.nii.gz", Path(out_dir) / f"{stem}.json"


def segment_volume(model, settings, path, out_dir, threshold: float = DEFAULT_THRESHOLD,
                   min_size: int = 0, fill_holes: bool = False, labels: bool = True, window=None,
                   normalize: str = "model", per_slice: bool = False, overwrite: bool = False,
                   provenance: dict | None = None):
    """Generator: yields (slice, slices) while segmenting; returns the NIfTI path written.
    Labels are 3D objects (``min_size`` in voxels) unless ``per_slice``; ``labels=False``
    writes the 0/1 mask of those same objects (so ``min_size`` still counts voxels)."""
    from ..inference.intensity import intensity_setting
    from ..inference.segmenter import Segmenter
    from ..inference.stacks import iter_segment_stack
    from ..model.normalization import default_normalization

    post = Postprocess(threshold, min_size, fill_holes, labels, per_slice)
    volume = read_volume(path)
    target, sidecar = output_paths(volume, out_dir)
    refuse_existing(target, overwrite)
    refuse_existing(sidecar, overwrite)
    chosen = intensity_setting(default_normalization(model), window, normalize)
    seg = Segmenter(model, settings, normalization=chosen.for_stack(volume.data))
    out = yield from iter_segment_stack(seg, volume.data, False, replace(post, labels=True))
    if not labels:
        out = (out > 0).astype(np.uint8)
    record = {**result_provenance(seg, post, volume.source),
              "format": volume.metadata.get("format"), "spacing_mm": list(volume.spacing),
              "labels": "3D objects" if not per_slice else "per slice",
              "window": window, "normalize": normalize, "intensity_setting": chosen.to_dict(),
              **(provenance or {})}
    return write_labels_and_record(target, sidecar, out, volume.ras_affine, record, overwrite)
