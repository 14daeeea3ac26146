"""napari writers (npe2 ``writers``) for Labels layers: NIfTI on the scan's grid, DICOM SEG and
OME-Zarr labels, for File > Save Selected Layers and ``layer.save(path)``.

napari hands a writer the layer's data and its attributes (``meta``: name, metadata, scale,
translate, units...), not the layer. The scan's geometry comes from the labels' own metadata
(Segment's and Propagate's output layers carry the image's ``napari_fmbff_source`` record) or,
for a layer made with napari's "new labels" button, from the one Image layer opened with
napari-fmbff in the current viewer that has the labels' shape and scale. Labels with no such
scan are refused in one line rather than written in the wrong place.

Overwriting: napari's save dialog asks the user before it replaces an existing file and only
then calls the writer, and napari's own writers replace what scripts name; we follow that
convention (``overwrite=True``), always atomically (a temporary file renamed into place), so
an interrupted save leaves the old file whole. A NIfTI's JSON sidecar follows its NIfTI. An
existing ``.zarr`` folder (the dialog does not ask about folders) is replaced only when it is
a labels group this package wrote, never a folder of other files.

Errors are raised as ``NotSaved`` (an OSError: napari passes it on to its notification, while
a ValueError from a writer is swallowed by ``viewer.layers.save`` into "no writer found").
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..data import keys
from ..data.keys import PROVENANCE as MADE_BY_KEY

#: The Segment / Propagate record of how the labels were made (``_segment.PROVENANCE_TAG``).
from ..jobs.saved_labels import SOURCE_KEY
from ._common import IMAGE_TAG, OUTPUT_TAG

#: Follow napari's convention: its save dialog asked before calling us (module docstring).
OVERWRITE = True


class NotSaved(OSError):
    """The labels were not saved; the message says why and what to do, in one line."""


def write_nifti(path: str, data, meta: dict) -> list[str]:
    """Labels -> ``.nii`` / ``.nii.gz`` on the scan's grid with its RAS affine (+ ``.json``)."""
    from ..jobs.saved_labels import save_nifti

    return _save(save_nifti, path, data, meta)


def write_dicom_seg(path: str, data, meta: dict) -> list[str]:
    """Labels -> a DICOM SEG referencing the series the scan was opened from, one segment per
    class of object (``segment_classes``)."""
    from functools import partial

    from ..jobs.saved_labels import save_dicom_seg

    return _save(partial(save_dicom_seg, classes=segment_classes(meta)), path, data, meta)


def segment_classes(meta: dict):
    """The classes of a layer's labels, as ``dicom_seg.write_dicom_seg`` takes them: the names
    they came in with ({value: name}: an RTSTRUCT's ROIs, a DICOM SEG's segments), else
    "lesion" for a model's labels (Segment's and Propagate's output, or labels reopened with
    a model's record: every id is an object of that one class), else None (labels painted by
    hand: one segment per value)."""
    from ..data.dicom_seg import LESION

    metadata = meta.get("metadata") or {}
    for key in (keys.ROIS, keys.SEGMENTS):
        names = metadata.get(key)
        if isinstance(names, dict) and names:
            return {int(k): str(v) for k, v in names.items()}
    made_by = metadata.get(MADE_BY_KEY)
    if metadata.get(OUTPUT_TAG) == "labels" or (isinstance(made_by, dict)
                                                 and made_by.get("model")):
        return LESION
    return None


def write_ome_zarr(path: str, data, meta: dict) -> list[str]:
    """Labels -> an OME-Zarr image-label group (any labels: the layer's scale and offset; a
    scan's geometry and provenance ride along when there is one)."""
    from ..jobs.saved_labels import ome_geometry, provenance_of, save_ome_zarr

    name = meta.get("name", "labels")
    labels = _array(data, meta)
    record, _ = _scan_of(labels, meta, required=False)
    units = _units(meta, labels.ndim, record)
    geometry = ome_geometry(labels.ndim, meta.get("scale", [1.0] * labels.ndim),
                            meta.get("translate"), units)
    made_by = (meta.get("metadata") or {}).get(MADE_BY_KEY)
    provenance = provenance_of(record or {}, made_by, name)
    if record:
        provenance[SOURCE_KEY] = record
    try:
        return [str(p) for p in save_ome_zarr(path, labels, geometry, provenance, OVERWRITE)]
    except (ValueError, OSError) as err:
        raise NotSaved(f"napari-fmbff: labels '{name}' not saved as {Path(path).name}: "
                       f"{err}") from err


def _save(save, path: str, data, meta: dict) -> list[str]:
    """Find the scan, then let the engine write; every refusal is one line."""
    from ..jobs.saved_labels import provenance_of, scan_labels

    name = meta.get("name", "labels")
    labels = _array(data, meta)
    record, shape = _scan_of(labels, meta, required=True)
    try:
        volume = scan_labels(labels, record, shape)
        made_by = (meta.get("metadata") or {}).get(MADE_BY_KEY)
        written = save(path, volume, record, provenance_of(record, made_by, name), OVERWRITE)
    except (ValueError, OSError) as err:
        raise NotSaved(f"napari-fmbff: labels '{name}' not saved as {Path(path).name}: "
                       f"{err}") from err
    return [str(p) for p in written]


def _array(data, meta: dict) -> np.ndarray:
    """The full-resolution labels as a numpy array (level 0 of a multiscale layer)."""
    if meta.get("multiscale") or isinstance(data, list | tuple):
        data = data[0]
    return np.asarray(data)


def _scan_of(labels: np.ndarray, meta: dict, required: bool):
    """(the scan's geometry record, the scan's shape or None) for the labels: their own
    record, else the one scan in the viewer they fit. ``required``: a NotSaved saying why
    there is none, else (None, None)."""
    name = meta.get("name", "labels")
    own = (meta.get("metadata") or {}).get(SOURCE_KEY)
    scans = _scans()
    if isinstance(own, dict):
        image = next((im for im in scans if im.metadata.get(SOURCE_KEY) == own
                      and im.name == (meta.get("metadata") or {}).get(IMAGE_TAG)), None) \
            or next((im for im in scans if im.metadata.get(SOURCE_KEY) == own), None)
        return own, (_spatial_shape(image) if image is not None else None)
    fits = [im for im in scans if _spatial_shape(im) == labels.shape
            and np.allclose(im.scale, meta.get("scale", im.scale))]
    if len(fits) > 1:  # the image the labels were made on, by napari's naming
        named = [im for im in fits if name.startswith(f"{im.name} - ")
                 or im.name == (meta.get("metadata") or {}).get(IMAGE_TAG)]
        fits = named if len(named) == 1 else fits
    if len(fits) == 1:
        return fits[0].metadata[SOURCE_KEY], _spatial_shape(fits[0])
    if not required:
        return None, None
    if len(fits) > 1:
        raise NotSaved(f"napari-fmbff: labels '{name}' fit several scans "
                       f"({', '.join(repr(im.name) for im in fits)}); close the scans they "
                       "were not drawn on, then save again")
    if scans:
        found = ", ".join(f"'{im.name}' {_spatial_shape(im)}" for im in scans)
        raise NotSaved(f"napari-fmbff: labels '{name}' have shape {labels.shape}, which is no "
                       f"scan's shape and scale here ({found}); make them with napari's new "
                       "labels button on the scan")
    raise NotSaved(f"napari-fmbff: labels '{name}' have no scan geometry: they were not made "
                   "on a DICOM / NIfTI image opened with napari-fmbff; save as .tif, or open "
                   "the scan with napari-fmbff and make the labels on it")


def _scans() -> list:
    """The Image layers of the current viewer opened with napari-fmbff's medical reader."""
    import napari
    from napari.layers import Image

    viewer = napari.current_viewer()
    if viewer is None:
        return []
    return [layer for layer in viewer.layers if isinstance(layer, Image)
            and isinstance(layer.metadata.get(SOURCE_KEY), dict)]


def _spatial_shape(image) -> tuple[int, ...]:
    data = image.data[0] if image.multiscale else image.data
    shape = tuple(int(n) for n in data.shape)
    return shape[:-1] if image.rgb else shape


def _units(meta: dict, ndim: int, record: dict | None) -> list | None:
    """The axes' units: millimetres on a scan's spatial axes, else the layer's own (napari's
    default "pixel" means none)."""
    if record:
        return [None] * (ndim - min(ndim, 3)) + ["millimeter"] * min(ndim, 3)
    units = meta.get("units")
    if units is None or len(units) != ndim:
        return None
    return [None if str(u) in ("pixel", "px", "") else str(u) for u in units]


def carry_scan(image, layer) -> None:
    """Give an output ``layer`` made from ``image`` the scan's geometry record (so it saves on
    the scan's grid wherever it goes); nothing for images not opened as a scan."""
    record = image.metadata.get(SOURCE_KEY) if image is not None else None
    if isinstance(record, dict):
        layer.metadata[SOURCE_KEY] = dict(record)
