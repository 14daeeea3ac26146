"""``fmbff propagate``'s files: a volume and its partial labels read in, the whole labels
volume written out in the input's format. The propagation itself is the engine's
(``training.propagate.iter_propagate``); the command line joins the two.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


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


def write_propagated(files: VolumeFiles, labels, out_dir, record: dict,
                     overwrite: bool = False):
    """The whole ``labels`` volume (a propagation's) in the input's format (NIfTI with the
    scan's affine and a JSON record, or a TIFF with the record inside) at
    ``files.targets(out_dir)``; returns the labels file."""
    from ..data.image_io import write_image
    from ..data.medical import write_labels_and_record

    target, sidecar, _ = files.targets(out_dir)
    if files.volume is None:
        return write_image(target, labels, overwrite, provenance=record)
    return write_labels_and_record(target, sidecar, labels, files.volume.ras_affine,
                                   record, overwrite)
