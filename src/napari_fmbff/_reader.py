"""napari readers: the OME-Zarr results of `fmbff segment` opened through their ``zarr.json``
(the group itself is left to napari's zarr readers), and CT / MR volumes (a DICOM file opens
its whole series; NIfTI files) at their voxel spacing in mm. A DICOM RTSTRUCT opens as Labels
on the grid of the series it references (one id per ROI, names in the layer's features); a
DICOM SEG as Labels on its series' grid, or on its own grid when the series is not beside it;
a NIfTI of labels (napari-fmbff's sidecar beside it, a label intent, or an integer mask beside
its scan: ``jobs.saved_labels.nifti_labels``) as Labels.

No reader here accepts folders. napari offers every reader that accepts folders for every
folder dropped on it, whatever its filename patterns, so a zarr-folder reader of ours would
make napari ask which reader to use for every zarr. A zarr folder therefore opens with
napari's own reader (or napari-ome-zarr, if installed: our outputs are OME-Zarr images, so it
opens the mask or labels as a Labels layer at the source's pixel size); this module claims
only a result's ``zarr.json`` file (``napari masks/slide.zarr/zarr.json``): a lazy Labels layer
(or a probability Image layer) at the pixel size and offset of the OME-Zarr metadata.
"""

from __future__ import annotations

from pathlib import Path

from .data import keys
from .data.medical import source_record

#: The unit of medical layers' scale (voxel spacing): napari shows it on the scale bar and in
#: the status bar instead of "pixel".
MM = "mm"


def _result(path):
    """(array, ome metadata, our provenance) of a result folder of ``fmbff segment``, else None."""
    folder = Path(path)
    if not (folder / "zarr.json").is_file():
        return None
    try:
        import zarr

        group = zarr.open_group(str(folder), mode="r")
        attrs = dict(group.attrs)
        ome, info = attrs.get("ome"), attrs.get(keys.PROVENANCE)
        if not (isinstance(ome, dict) and isinstance(info, dict) and "kind" in info):
            return None
        multiscale = ome["multiscales"][0]
        return group[multiscale["datasets"][0]["path"]], ome, info
    except Exception:  # not a result of ours: let another reader try
        return None


def get_reader(path):
    """A result's ``zarr.json`` (the file, not the folder: see the module's docstring)."""
    if not isinstance(path, str) or Path(path).name != "zarr.json":
        return None
    return read_result if _result(Path(path).parent) is not None else None


def read_result(path):
    """A result of ``fmbff segment`` (its folder or its ``zarr.json``) as napari layer data:
    Labels for the mask / labels, an Image for probabilities, at the OME-Zarr pixel size."""
    folder = Path(path).parent if Path(path).name == "zarr.json" else Path(path)
    array, ome, info = _result(folder)
    multiscale = ome["multiscales"][0]
    names = [a.get("name") for a in multiscale.get("axes", [])]
    scale, translate = [1.0] * array.ndim, [0.0] * array.ndim
    for t in multiscale["datasets"][0].get("coordinateTransformations", []):
        if t.get("type") == "scale" and len(t["scale"]) == array.ndim:
            scale = [float(v) for v in t["scale"]]
        if t.get("type") == "translation" and len(t["translation"]) == array.ndim:
            translate = [float(v) for v in t["translation"]]
    meta = {"name": folder.name[: -len(".zarr")] if folder.name.endswith(".zarr") else folder.name,
            "scale": tuple(scale), "translate": tuple(translate),
            "metadata": {keys.PROVENANCE: info}}
    if len(names) == array.ndim and all(isinstance(n, str) for n in names):
        meta["axis_labels"] = tuple(names)
    units = [a.get("unit") for a in multiscale.get("axes", [])]
    if len(units) == array.ndim and all(isinstance(u, str) and u for u in units):
        meta["units"] = tuple(units)
    if "image-label" not in ome:
        return [(array, {**meta, "colormap": "magma", "contrast_limits": (0.0, 1.0),
                         "blending": "additive"}, "image")]
    return [(array, {**meta, "opacity": 0.5}, "labels")]


# ---- CT / MR volumes: DICOM series and NIfTI --------------------------------------------------

MEDICAL_PATTERNS = (".dcm", ".nii", ".nii.gz")


def get_medical_reader(path):
    """A DICOM file (its whole series is gathered from its folder) or a NIfTI file."""
    if not isinstance(path, str) or not path.lower().endswith(MEDICAL_PATTERNS):
        return None
    return read_medical if Path(path).is_file() else None


def read_medical(path):
    """One Image layer in the scanner's units (CT in HU) at the voxel spacing in mm; the
    affine and the series' facts ride along in the layer metadata (labels written back as
    NIfTI use them). An RTSTRUCT opens as Labels on its series' grid (``read_rtstruct``)."""
    from .data.dicom_seg import is_dicom_seg
    from .data.medical import read_volume, series_name, window_range
    from .data.rtstruct import is_rtstruct

    if str(path).lower().endswith(".dcm") and is_rtstruct(path):  # a few header tags
        return read_rtstruct(path)
    if str(path).lower().endswith(".dcm") and is_dicom_seg(path):
        return read_seg(path)
    volume = read_volume(path)
    if volume.metadata.get("format") == "nifti":
        labels = read_nifti_labels(path, volume)
        if labels is not None:
            return labels
    data, scale = volume.data, volume.spacing
    if data.shape[0] == 1:  # one slice: a 2D image
        data, scale = data[0], scale[1:]
    meta = {"name": series_name(volume), "scale": scale, "units": MM,
            "metadata": {keys.SOURCE: source_record(volume)}}
    if volume.metadata.get("units") == "HU":
        meta["contrast_limits"] = window_range("soft-tissue")
    return [(data, meta, "image")]


def read_nifti_labels(path, volume):
    """A NIfTI of labels (``saved_labels.nifti_labels`` says which: our sidecar beside it, a
    label intent, or an integer mask beside its scan) as one Labels layer on the scan's grid,
    with how it was made (our sidecar's record) in ``metadata[keys.PROVENANCE]``; None for an
    image."""
    import numpy as np

    from .data.medical import series_name
    from .jobs.saved_labels import labels_record, nifti_labels

    found = nifti_labels(path, volume)
    if found is None:
        return None
    reason, sidecar = found
    data, scale = volume.data, volume.spacing
    if data.dtype.kind not in "iu":
        data = data.astype(np.int32)
    if data.shape[0] == 1:
        data, scale = data[0], scale[1:]
    metadata = {keys.SOURCE: labels_record(sidecar, volume),
                keys.OPENED_AS_LABELS: reason}
    if sidecar is not None:
        metadata[keys.PROVENANCE] = {k: v for k, v in sidecar.items()
                                    if k != keys.SOURCE}
    return [(data, {"name": series_name(volume), "scale": scale, "units": MM, "opacity": 0.5,
                    "metadata": metadata}, "labels")]


def read_seg(path):
    """A DICOM SEG (ours or another tool's) as one Labels layer, like ``read_rtstruct``:
    each segment keeps the napari value its label records. On its referenced series' grid
    when the series is beside it; else on the SEG's own grid, with a warning that says so
    (napari shows it as a notification)."""
    import warnings

    from .data.dicom_seg import read_dicom_seg

    labels, volume, names = read_dicom_seg(path)
    data, scale = labels, volume.spacing
    if data.shape[0] == 1:
        data, scale = data[0], scale[1:]
    meta = {"name": Path(path).stem, "scale": scale, "units": MM, "opacity": 0.5,
            "metadata": {keys.SOURCE: source_record(volume),
                         keys.SEGMENTS: names, keys.SEG_FILE: str(path)}}
    note = volume.metadata.get("grid_note")
    if note:
        warnings.warn(f"napari-fmbff: {note}", UserWarning, stacklevel=2)
    return [(data, meta, "labels")]


def read_rtstruct(path):
    """A DICOM RTSTRUCT as one Labels layer on its referenced series' grid (same shape, scale
    and ``napari_fmbff_source`` entry as the series' Image layer, so the two overlay and a
    writer can save the labels on that grid): one id per ROI, the ROI names in the layer's
    ``features`` (shown on hover) and in ``metadata[keys.ROIS]``."""
    from .data.rtstruct import read_rtstruct as read_structures

    structures = read_structures(path)
    volume = structures.series
    data, scale = structures.labels, volume.spacing
    if data.shape[0] == 1:  # a one-slice series opens as a 2D image: so do its labels
        data, scale = data[0], scale[1:]
    ids = list(range(1, len(structures.names) + 1))
    name = structures.label or Path(path).stem
    meta = {"name": name, "scale": scale, "units": MM, "opacity": 0.5,
            "features": {"index": ids, "roi": list(structures.names)},
            "metadata": {keys.SOURCE: source_record(volume),
                         keys.ROIS: dict(zip(ids, structures.names)),
                         keys.RTSTRUCT_FILE: str(path)}}
    return [(data, meta, "labels")]
