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
from ..inference.postprocess import Postprocess
from .files import SegmenterSpec, result_provenance

#: What ``segment_volume`` writes by default: labelled 3D objects at the default threshold.
LABELS_3D = Postprocess(labels=True)


def output_paths(volume, out_dir) -> tuple[Path, Path]:
    stem = series_name(volume)
    return Path(out_dir) / f"{stem}.nii.gz", Path(out_dir) / f"{stem}.json"


def segment_volume(model, spec: SegmenterSpec, path, out_dir, post: Postprocess = LABELS_3D,
                   *, overwrite: bool = False, provenance: dict | None = None):
    """Generator: yields ``Progress`` of the slices; returns the NIfTI path written.
    ``model``: the network (loaded once for all volumes); ``spec``: its ``settings`` and
    the intensity choice (``window`` / ``normalize``, resolved for the whole volume).
    ``post`` (``Postprocess``): labels are 3D objects (``min_size`` in voxels) unless
    ``per_slice``; ``labels=False`` writes the 0/1 mask of those same objects (so
    ``min_size`` still counts voxels)."""
    from ..inference.segmenter import Segmenter
    from ..inference.stacks import iter_segment_stack

    volume = read_volume(path)
    target, sidecar = output_paths(volume, out_dir)
    refuse_existing(target, overwrite)
    refuse_existing(sidecar, overwrite)
    chosen = spec.intensity(model)
    seg = Segmenter(model, spec.settings, normalization=chosen.for_stack(volume.data))
    out = yield from iter_segment_stack(seg, volume.data, False, replace(post, labels=True))
    if not post.labels:
        out = (out > 0).astype(np.uint8)
    record = {**result_provenance(seg, post, volume.source),
              "format": volume.metadata.get("format"), "spacing_mm": list(volume.spacing),
              "labels": "3D objects" if not post.per_slice else "per slice",
              "window": spec.window, "normalize": spec.normalize, "intensity_setting": chosen.to_dict(),
              **(provenance or {})}
    return write_labels_and_record(target, sidecar, out, volume.ras_affine, record, overwrite)
