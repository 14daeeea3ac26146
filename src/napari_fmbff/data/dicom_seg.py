"""Labels as a DICOM SEG that references the CT / MR series they were drawn on (highdicom).

A clinic's PACS and viewers (OHIF, 3D Slicer, ...) take segmentations as DICOM SEG objects:
one segment per label value, each frame tied to the SOP Instance UID of the source slice it
lies on. The series' headers are read again from the folder the scan was opened from (the
``napari_fmbff_source`` record of ``_reader.read_medical``: ``source``, ``series_uid``,
``slice_positions_mm``) and put in the same order as the volume's Z axis (along the slice
normal, as ``medical.read_dicom_series`` sorts them); the recorded positions must agree, so a
series changed since it was opened is refused rather than referenced wrongly.

Segments are binary (the most widely read kind), one per class of object, numbered 1..N as
DICOM asks (``classes``): a model's labels are objects of one class, so all their ids make one
segment "lesion"; labels that came with names (an RTSTRUCT's ROIs, a SEG's segments) make one
segment per name; labels with no names (painted by hand) one segment per value, labelled with
the value it had in napari ("label 7"). Provenance: ContentCreatorName and Manufacturer say
napari-fmbff, SoftwareVersions its version, the algorithm identification the model, its file's
SHA-256 and the time of the run that made the labels (SEMIAUTOMATIC: a model's answer the user
could correct; MANUAL when no model made the labels).

Read back (``read_dicom_seg``), a SEG lies on its series' grid when the series is beside it,
else on the SEG's own grid from its own geometry (pixel spacing, orientation, the frames'
positions), from its first to its last frame.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .._files import atomic_path
from .medical import is_dicom, series_headers_of, sorted_series

#: Segment property codes: a morphologically abnormal structure, a lesion (SNOMED CT).
_CATEGORY = ("49755003", "SCT", "Morphologically Abnormal Structure")
_TYPE = ("52988006", "SCT", "Lesion")
#: Any other named segment (an RTSTRUCT's organ, a target volume): a tissue (SNOMED CT).
_OTHER = (("85756007", "SCT", "Tissue"), ("85756007", "SCT", "Tissue"))
#: The one class of object a model finds: a model's labels make one segment of this name.
LESION = "lesion"
#: ``napari_fmbff_source``'s ``grid`` of labels read on a SEG's own grid (no series beside it).
SEG_GRID = "dicom-seg"


def series_headers(record: dict) -> list:
    """The headers (no pixels) of the recorded DICOM series, in the volume's Z order; a
    ValueError when the series is gone or is no longer the one that was opened."""

    folder, uid = Path(str(record.get("source", ""))), record.get("series_uid")
    if not folder.is_dir():
        raise ValueError(f"the DICOM series folder {folder} is no longer there; open the scan "
                         "again from where it is now")
    try:
        found = series_headers_of(folder, uid)[0]
    except ValueError:  # no image slices left in the folder
        found = []
    if not found:
        raise ValueError(f"{folder}: the series {uid} is no longer there; open the scan again")
    series = sorted_series(found)  # the volume's own Z order
    headers, heights = [ds for _, ds in series.slices], series.heights
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
                    overwrite: bool = False, classes: dict | str | None = None) -> Path:
    """(Z, Y, X) labels on the recorded DICOM series as a DICOM SEG at ``path`` (atomic;
    nothing replaced unless ``overwrite``). ``classes``: a name (every object one segment of
    that class, e.g. ``LESION``), {value: name} (one segment per name; values it does not
    name keep "label N"), or None (one segment per value, "label N"). A ValueError says what
    is wrong in one line."""
    if record.get("grid") == SEG_GRID:
        raise ValueError(f"the labels lie on the grid of the DICOM SEG {record.get('source')} "
                         "(its series was not beside it), not on a series: put the series' "
                         ".dcm files beside the SEG and open it again, or save as .nii.gz")
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
    names = segment_names(values, classes)
    unique = list(dict.fromkeys(names))                 # segment number - 1 -> its name
    number_of = np.array([unique.index(n) + 1 for n in names])
    pixels = np.where(labels > 0, number_of[np.searchsorted(values, labels).clip(0, len(values) - 1)],
                      0).astype(np.uint16 if len(unique) > 255 else np.uint8)
    seg = _segmentation(headers, pixels, unique, provenance or {})
    with atomic_path(path, overwrite) as tmp:
        seg.save_as(str(tmp))
    return Path(path)


def segment_names(values, classes: dict | str | None) -> list[str]:
    """The segment name of each label value (``write_dicom_seg``'s ``classes``)."""
    if isinstance(classes, str) and classes:
        return [classes] * len(values)
    named = {int(k): str(v) for k, v in (classes or {}).items() if str(v).strip()}
    return [named.get(int(v), f"label {int(v)}")[:64] for v in values]


def _algorithm(provenance: dict):
    """The algorithm identification of a model's labels (None: no model made them): the
    model, its file's name and SHA-256, the time of its run and the threshold."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    model = str(provenance.get("model") or "")
    if not model:
        return None
    facts = {"model_file": Path(str(provenance["model_file"])).name
             if provenance.get("model_file") else None,
             "model_sha256": provenance.get("model_sha256"), "run": provenance.get("date"),
             "threshold": provenance.get("threshold")}
    # AlgorithmParameters is "key=value,key=value": no commas or equal signs in a value.
    parameters = {k: str(v).replace(",", ";").replace("=", "-")[:256]
                  for k, v in facts.items() if v is not None}
    return hd.AlgorithmIdentificationSequence(
        name="FM-BFF-Net", family=codes.cid7162.ArtificialIntelligence, version=model[:64],
        source="napari-fmbff", parameters=parameters or None)


def _segmentation(headers: list, pixels: np.ndarray, names: list, provenance: dict):
    import highdicom as hd
    from pydicom.sr.coding import Code

    from .. import __version__

    model = str(provenance.get("model") or "")
    software = f"napari-fmbff {provenance.get('package_version') or __version__}"
    algorithm = _algorithm(provenance)
    descriptions = [hd.seg.SegmentDescription(
        segment_number=number, segment_label=name,
        segmented_property_category=Code(*(_CATEGORY if _is_lesion(name) else _OTHER[0])),
        segmented_property_type=Code(*(_TYPE if _is_lesion(name) else _OTHER[1])),
        algorithm_type="SEMIAUTOMATIC" if model else "MANUAL",
        algorithm_identification=algorithm)
        for number, name in enumerate(names, start=1)]
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


def _is_lesion(name: str) -> bool:
    """A segment coded as a lesion: the model's class, and labels with no name of their own."""
    return name == LESION or name.startswith("label ")


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
    """(labels (Z, Y, X) int32, a ``Volume`` of their grid, {id: segment label}) of a DICOM
    SEG: each segment's voxels get the napari value its label records ("label 7", as
    ``write_dicom_seg`` names them), else its segment number. On its series' grid when the
    series is beside the SEG (looked for as for an RTSTRUCT); else on the SEG's own grid
    (``own_grid``), and the volume's metadata says so (``grid``: ``SEG_GRID``, ``grid_note``:
    one line for the user)."""
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
    try:
        volume = read_dicom_series(find_series(path, uid))
    except ValueError as missing:
        return own_grid(seg, path, uid, str(missing))
    uids = [str(h.SOPInstanceUID) for h in series_headers(
        {"source": volume.source, "series_uid": uid})]
    labels = np.zeros(volume.data.shape, np.int32)
    names = {}
    for number in seg.segment_numbers:
        value, text = _segment_value(seg, number)
        planes = seg.get_pixels_by_source_instance(
            source_sop_instance_uids=uids, segment_numbers=[number], combine_segments=True,
            assert_missing_frames_are_empty=True)
        labels[np.asarray(planes) > 0] = value
        names[value] = text
    return labels, volume, names


def _segment_value(seg, number: int) -> tuple[int, str]:
    """(the napari value, the label) of a segment: "label 7" -> 7, else its number."""
    text = str(seg.get_segment_description(number).SegmentLabel)
    words = text.split()
    value = int(words[-1]) if text.startswith("label ") and words[-1].isdigit() else int(number)
    return value, text


def own_grid(seg, path, uid: str, why: str = ""):
    """``read_dicom_seg``'s answer on the SEG's own grid, from its own geometry: the pixel
    spacing and orientation (shared or per frame), each frame's position along the slice
    normal; slices ``SpacingBetweenSlices`` apart (else the smallest step between frames,
    else the slice thickness), from the lowest frame to the highest."""
    from .medical import Volume

    frames = list(seg.get("PerFrameFunctionalGroupsSequence") or [])
    if not frames:
        raise ValueError(f"{path}: the DICOM SEG has no per-frame positions; put its series' "
                         ".dcm files beside it to open it on the series' grid")
    measures = _functional(seg, frames[0], "PixelMeasuresSequence", path)
    iop = [float(v) for v in _functional(seg, frames[0], "PlaneOrientationSequence",
                                         path).ImageOrientationPatient]
    rows, cols = np.asarray(iop[:3]), np.asarray(iop[3:])
    normal = np.cross(rows, cols)
    positions = np.array([[float(v) for v in _functional(
        seg, f, "PlanePositionSequence", path).ImagePositionPatient] for f in frames])
    heights = positions @ normal
    dy, dx = (float(v) for v in measures.PixelSpacing)
    dz = _slice_step(measures, heights)
    index = np.rint((heights - heights.min()) / dz).astype(int)
    origin = positions[int(np.argmin(heights))]
    offsets = (positions - origin) - np.outer(heights - heights.min(), normal)
    if np.abs(offsets).max(initial=0) > 0.5 * min(dx, dy):
        raise ValueError(f"{path}: the SEG's frames do not lie on one grid (their in-plane "
                         "positions differ); put its series' .dcm files beside it")
    labels, names = _frames_to_labels(seg, frames, index)
    affine = np.eye(4)
    affine[:3, 0], affine[:3, 1], affine[:3, 2] = normal * dz, cols * dy, rows * dx
    affine[:3, 3] = origin
    n = labels.shape[0]
    note = (f"{Path(path).name}: its series ({uid}) is not beside it, so it opened on the "
            f"SEG's own grid: {n} slice(s) {dz:g} mm apart from its frames' positions, "
            f"pixels {dy:g} x {dx:g} mm; put the series' .dcm files beside it to open it on "
            "the series' grid (and save it as DICOM SEG again)")
    meta = {"format": "dicom", "modality": "SEG", "grid": SEG_GRID, "grid_note": note,
            "series_uid": uid, "n_slices": n,
            "slice_positions_mm": [float(heights.min() + dz * k) for k in range(n)],
            "units": ""}
    return labels, Volume(labels, (dz, dy, dx), affine, str(path), meta), names


def _functional(seg, frame, name: str, path):
    """A functional group item of a frame: its own, else the shared one."""
    for groups in (frame, *(seg.get("SharedFunctionalGroupsSequence") or [])):
        items = groups.get(name)
        if items:
            return items[0]
    raise ValueError(f"{path}: the DICOM SEG has no {name}; put its series' .dcm files "
                     "beside it to open it on the series' grid")


def _slice_step(measures, heights: np.ndarray) -> float:
    """The distance between slices: the smallest step between the frames' heights, or
    SpacingBetweenSlices (else the slice thickness) where that step is a whole number of it
    (a SEG leaves out the frames of empty slices); one frame height: the header's, else 1."""
    given = [float(v) for v in (measures.get("SpacingBetweenSlices"),
                                measures.get("SliceThickness")) if v is not None and float(v) > 0]
    steps = np.diff(np.unique(np.round(heights, 3)))
    if not len(steps):
        return given[0] if given else 1.0
    step = float(steps.min())
    for spacing in given:  # a header's value that the frames contradict is not used
        if step >= 0.95 * spacing and abs(step / spacing - round(step / spacing)) < 0.05:
            return spacing
    return step


def _frames_to_labels(seg, frames: list, index: np.ndarray):
    """(Z, Y, X) labels from the SEG's frames (frame k on slice ``index[k]``) and the
    {value: label} of its segments."""
    pixels = np.asarray(seg.pixel_array).reshape(len(frames), int(seg.Rows), int(seg.Columns))
    if seg.get("SegmentationType") == "FRACTIONAL":
        pixels = pixels > float(seg.get("MaximumFractionalValue", 255)) / 2
    labels = np.zeros((int(index.max()) + 1, *pixels.shape[1:]), np.int32)
    names, values = {}, {}
    for k, frame in enumerate(frames):
        number = int(frame.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        if number not in values:
            values[number], text = _segment_value(seg, number)
            names[values[number]] = text
        labels[index[k]][pixels[k] > 0] = values[number]
    return labels, names
