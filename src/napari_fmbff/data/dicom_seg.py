"""Labels as a DICOM SEG that references the CT / MR series they were drawn on (highdicom).

A clinic's PACS and viewers (OHIF, 3D Slicer, ...) take segmentations as DICOM SEG objects:
one segment per label value, each frame tied to the SOP Instance UID of the source slice it
lies on. The series' headers are read again from the folder the scan was opened from (the
``napari_fmbff_source`` record of ``_reader.read_medical``: ``source``, ``series_uid``,
``slice_positions_mm``) and put in the same order as the volume's Z axis (along the slice
normal, as ``medical.read_dicom_series`` sorts them); the recorded positions must agree, so a
series changed since it was opened is refused rather than referenced wrongly.

Segments are binary (the most widely read kind); label values are renumbered 1..N as DICOM
asks, and each segment's label says the value it had in napari ("label 7"). Provenance:
ContentCreatorName and Manufacturer say napari-fmbff, SoftwareVersions its version, the
algorithm identification the model (SEMIAUTOMATIC: a model's answer the user could correct;
MANUAL when no model made the labels).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .._files import atomic_path
from .medical import is_dicom, series_headers_of

#: Segment property codes: a morphologically abnormal structure, a lesion (SNOMED CT).
_CATEGORY = ("49755003", "SCT", "Morphologically Abnormal Structure")
_TYPE = ("52988006", "SCT", "Lesion")


def series_headers(record: dict) -> list:
    """The headers (no pixels) of the recorded DICOM series, in the volume's Z order; a
    ValueError when the series is gone or is no longer the one that was opened."""

    folder, uid = Path(str(record.get("source", ""))), record.get("series_uid")
    if not folder.is_dir():
        raise ValueError(f"the DICOM series folder {folder} is no longer there; open the scan "
                         "again from where it is now")
    try:
        headers = [ds for _, ds in series_headers_of(folder, uid)[0]]
    except ValueError:  # no image slices left in the folder
        headers = []
    if not headers:
        raise ValueError(f"{folder}: the series {uid} is no longer there; open the scan again")
    iop = [float(v) for v in headers[0].get("ImageOrientationPatient", (1, 0, 0, 0, 1, 0))]
    normal = np.cross(iop[:3], iop[3:])
    heights = [float(np.asarray(ds.ImagePositionPatient, float) @ normal) for ds in headers]
    order = np.argsort(heights, kind="stable")
    headers, heights = [headers[i] for i in order], [heights[i] for i in order]
    recorded = record.get("slice_positions_mm")
    if recorded is not None and (len(recorded) != len(heights)
                                 or not np.allclose(recorded, heights, atol=1e-3)):
        raise ValueError(f"{folder}: the series has changed since it was opened "
                         f"({len(heights)} slices now, {len(recorded)} then); open it again")
    uids = {str(ds.SOPInstanceUID) for ds in headers}
    if len(uids) != len(headers):
        raise ValueError(f"{folder}: {len(headers)} slices share {len(uids)} SOP Instance "
                         "UID(s); a DICOM SEG cannot tell them apart (fix the series' UIDs)")
    return headers


def write_dicom_seg(path, labels: np.ndarray, record: dict, provenance: dict | None = None,
                    overwrite: bool = False) -> Path:
    """(Z, Y, X) labels on the recorded DICOM series as a DICOM SEG at ``path`` (atomic;
    nothing replaced unless ``overwrite``). A ValueError says what is wrong in one line."""
    if record.get("format") != "dicom":
        fmt = {"nifti": "a NIfTI file"}.get(record.get("format"), "not from DICOM")
        raise ValueError(f"the scan {record.get('source', '')} is {fmt}, not a DICOM series: a "
                         "DICOM SEG must reference DICOM slices; save as .nii.gz instead")
    headers = series_headers(record)
    first = headers[0]
    shape = (len(headers), int(first.Rows), int(first.Columns))
    if labels.ndim == 2 and shape[0] == 1:
        labels = labels[None]
    if tuple(labels.shape) != shape:
        raise ValueError(f"the labels have shape {tuple(labels.shape)} but the series "
                         f"{record.get('source')} has {shape} (slices, rows, columns)")
    values = np.unique(labels)
    values = values[values > 0]
    if not len(values):
        raise ValueError("the labels are empty: a DICOM SEG needs at least one segment "
                         "(save an empty mask as .nii.gz)")
    numbers = np.searchsorted(values, labels) + 1      # value -> segment number 1..N
    pixels = np.where(labels > 0, numbers, 0).astype(np.uint16 if len(values) > 255 else np.uint8)
    seg = _segmentation(headers, pixels, values, provenance or {})
    with atomic_path(path, overwrite) as tmp:
        seg.save_as(str(tmp))
    return Path(path)


def _segmentation(headers: list, pixels: np.ndarray, values: np.ndarray, provenance: dict):
    import highdicom as hd
    from pydicom.sr.codedict import codes
    from pydicom.sr.coding import Code

    from .. import __version__

    model = str(provenance.get("model") or "")
    software = f"napari-fmbff {provenance.get('package_version') or __version__}"
    algorithm = None
    if model:
        algorithm = hd.AlgorithmIdentificationSequence(
            name="FM-BFF-Net", family=codes.cid7162.ArtificialIntelligence,
            version=model[:64], source="napari-fmbff",
            parameters={k: str(provenance[k])[:64] for k in ("threshold", "model_sha256")
                        if provenance.get(k) is not None} or None)
    descriptions = [hd.seg.SegmentDescription(
        segment_number=number, segment_label=f"label {int(value)}"[:64],
        segmented_property_category=Code(*_CATEGORY), segmented_property_type=Code(*_TYPE),
        algorithm_type="SEMIAUTOMATIC" if model else "MANUAL",
        algorithm_identification=algorithm)
        for number, value in enumerate(values, start=1)]
    about = f"napari-fmbff labels{f', model {model}' if model else ''}"
    try:
        seg = hd.seg.Segmentation(
            source_images=headers, pixel_array=pixels, segmentation_type="BINARY",
            segment_descriptions=descriptions, series_instance_uid=hd.UID(), series_number=1,
            sop_instance_uid=hd.UID(), instance_number=1, manufacturer="napari-fmbff",
            manufacturer_model_name="FM-BFF-Net", software_versions=software,
            device_serial_number="none", content_description=about[:64],
            content_creator_name="napari-fmbff^",  # one component (caret: not a mistake)
            content_label="FMBFF")
    except (ValueError, TypeError, AttributeError, KeyError) as err:
        raise ValueError(f"the series' headers do not make a DICOM SEG ({type(err).__name__}: "
                         f"{err})") from err
    seg.SeriesDescription = about[:64]
    return seg


#: The SOP Class of a DICOM Segmentation Storage object.
SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"


def is_dicom_seg(path) -> bool:
    """A DICOM file that is a Segmentation (by SOP Class or Modality); a few tags only."""
    import pydicom

    if not is_dicom(path):
        return False
    try:
        ds = pydicom.dcmread(str(path), stop_before_pixels=True,
                             specific_tags=["SOPClassUID", "Modality"])
    except Exception:  # noqa: BLE001 - not DICOM after all
        return False
    return str(ds.get("SOPClassUID", "")) == SEG_SOP_CLASS or ds.get("Modality") == "SEG"


def read_dicom_seg(path):
    """(labels (Z, Y, X) int32, the referenced series' ``Volume``, {id: segment label}) of a
    DICOM SEG, on its series' grid: each segment's voxels get the napari value its label
    records ("label 7", as ``write_dicom_seg`` names them), else its segment number. The
    series is looked for beside the SEG as for an RTSTRUCT; one line when it is missing."""
    import highdicom as hd

    from .medical import read_dicom_series
    from .rtstruct import find_series

    try:
        seg = hd.seg.segread(str(path))
    except Exception as err:  # noqa: BLE001 - the user's file: say what it is
        raise ValueError(f"{path}: cannot read it as a DICOM SEG ({type(err).__name__}: "
                         f"{str(err).splitlines()[0] if str(err) else ''})") from err
    refs = seg.get("ReferencedSeriesSequence") or []
    if not refs:
        raise ValueError(f"{path}: the DICOM SEG names no source series "
                         "(ReferencedSeriesSequence); export it again with its series")
    uid = str(refs[0].SeriesInstanceUID)
    volume = read_dicom_series(find_series(path, uid))
    uids = [str(h.SOPInstanceUID) for h in series_headers(
        {"source": volume.source, "series_uid": uid})]
    labels = np.zeros(volume.data.shape, np.int32)
    names = {}
    for number in seg.segment_numbers:
        text = str(seg.get_segment_description(number).SegmentLabel)
        value = int(text.split()[-1]) if text.startswith("label ") and \
            text.split()[-1].isdigit() else int(number)
        planes = seg.get_pixels_by_source_instance(
            source_sop_instance_uids=uids, segment_numbers=[number], combine_segments=True,
            assert_missing_frames_are_empty=True)
        labels[np.asarray(planes) > 0] = value
        names[value] = text
    return labels, volume, names
