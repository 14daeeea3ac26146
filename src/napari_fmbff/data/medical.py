"""CT and MR volumes as clinics have them: DICOM series and NIfTI files, with their geometry.

A ``Volume`` is a (Z, Y, X) array in the scanner's units (CT in Hounsfield units: each DICOM
slice's RescaleSlope / RescaleIntercept applied), its voxel spacing in mm as (z, y, x), and a
4 x 4 affine from voxel indices (z, y, x, 1) to the source's patient coordinates in mm (DICOM:
LPS; NIfTI: the file's own sform / qform, RAS). Labels written back as NIfTI carry the
source's affine, so every viewer overlays them on the scan. pydicom and nibabel, the field's
own libraries, are imported on use.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .._files import atomic_path

#: Radiologists' windows, (centre, width) in Hounsfield units.
CT_WINDOWS = {
    "lung": (-600.0, 1500.0),
    "soft-tissue": (40.0, 400.0),
    "bone": (400.0, 1800.0),
    "brain": (40.0, 80.0),
}


@dataclass
class Volume:
    data: np.ndarray                      # (Z, Y, X)
    spacing: tuple[float, float, float]   # mm, (z, y, x)
    affine: np.ndarray                    # 4 x 4, (z, y, x, 1) -> patient mm
    source: str = ""
    metadata: dict = field(default_factory=dict)

    @property
    def origin(self) -> tuple[float, float, float]:
        return tuple(float(v) for v in self.affine[:3, 3])

    @property
    def ras_affine(self) -> np.ndarray:
        """The affine in NIfTI's RAS+ world (DICOM's LPS: x and y turned round), for labels
        written as NIfTI so that viewers place them on the scan."""
        if self.metadata.get("format") == "dicom":
            return LPS_TO_RAS @ self.affine
        return self.affine


def source_record(volume: Volume) -> dict:
    """A volume's geometry and facts as one plain record: what the reader puts in an Image
    layer's ``napari_fmbff_source`` metadata (and labels drawn on it carry), what the writers
    place labels by and what the corrections store identifies a scan by."""
    return {**volume.metadata, "source": volume.source, "spacing_mm": list(volume.spacing),
            "affine": np.asarray(volume.affine).tolist()}


def record_ras_affine(record: dict) -> np.ndarray:
    """The RAS+ affine of a ``source_record`` (what ``Volume.ras_affine`` gives the volume)."""
    affine = np.asarray(record["affine"], float)
    return LPS_TO_RAS @ affine if record.get("format") == "dicom" else affine


def window_range(window) -> tuple[float, float]:
    """A window name (``CT_WINDOWS``) or "LOW,HIGH" (or a pair) -> (low, high) intensities."""
    if isinstance(window, str) and window in CT_WINDOWS:
        centre, width = CT_WINDOWS[window]
        return centre - width / 2, centre + width / 2
    try:
        low, high = (float(v) for v in (window.split(",") if isinstance(window, str) else window))
    except (TypeError, ValueError):
        raise ValueError(f"window must be one of {', '.join(CT_WINDOWS)} or LOW,HIGH, "
                         f"got {window!r}") from None
    if not low < high:
        raise ValueError(f"window needs LOW < HIGH, got {low}, {high}")
    return low, high


def is_nifti(path) -> bool:
    name = Path(path).name.lower()
    return name.endswith(".nii") or name.endswith(".nii.gz")


def is_dicom(path) -> bool:
    """A .dcm file, or a file with the DICOM preamble ("DICM" at byte 128)."""
    path = Path(path)
    if not path.is_file():
        return False
    if path.suffix.lower() == ".dcm":
        return True
    try:
        with open(path, "rb") as fh:
            fh.seek(128)
            return fh.read(4) == b"DICM"
    except OSError:
        return False


def is_medical(path) -> bool:
    """A NIfTI file, a DICOM file, or a folder holding a DICOM series."""
    path = Path(path)
    if path.is_dir():
        return any(is_dicom(p) for p in sorted(path.iterdir())[:50])
    return is_nifti(path) or is_dicom(path)


def read_volume(path) -> Volume:
    """A NIfTI file or a DICOM series (a folder, or any one file of it) as a ``Volume``."""
    return read_nifti(path) if is_nifti(path) else read_dicom_series(path)


def read_nifti(path) -> Volume:
    import nibabel as nib

    path = Path(path)
    try:
        img = nib.load(str(path))
        data = np.asanyarray(img.dataobj)
    except Exception as err:
        raise ValueError(f"{path}: cannot read it as NIfTI ({type(err).__name__}: {err})") from err
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim == 2:
        data = data[:, :, None]
    if data.ndim != 3:
        raise ValueError(f"{path}: a {data.ndim}D NIfTI (shape {data.shape}); a 3D volume is "
                         "needed (for a 4D series, save one time point)")
    # nibabel indexes (i, j, k) = (x, y, z); we use (z, y, x) like every other stack here.
    volume = np.ascontiguousarray(np.transpose(data, (2, 1, 0)))
    affine = np.asarray(img.affine, float) @ _SWAP_ZYX
    zooms = tuple(float(z) for z in img.header.get_zooms()[:3])
    return Volume(volume, (zooms[2], zooms[1], zooms[0]), affine, str(path),
                  {"format": "nifti", "description": _nifti_description(img)})


def write_nifti(path, zyx: np.ndarray, affine: np.ndarray, overwrite: bool = False,
                description: str = "", intent: str | None = None) -> Path:
    """A (Z, Y, X) array as a NIfTI file (``.nii`` or ``.nii.gz`` by the name), its dtype
    kept, on ``affine`` ((z, y, x, 1) -> RAS+ mm); atomic, never over a file unless
    ``overwrite``. The one home of our NIfTI writes (labels, the corrections store)."""
    import nibabel as nib

    img = nib.Nifti1Image(np.ascontiguousarray(np.transpose(zyx, (2, 1, 0))),
                          np.asarray(affine, float) @ _SWAP_ZYX)
    img.header.set_xyzt_units("mm")
    img.header.set_data_dtype(zyx.dtype)
    img.header["descrip"] = description.encode()[:79]
    if intent:
        img.header.set_intent(intent)
    path = Path(path)
    suffix = ".nii.gz" if path.name.lower().endswith(".gz") else ".nii"
    with atomic_path(path, overwrite) as tmp:
        target = tmp.with_name(tmp.name + suffix)  # nibabel picks compression by the name
        try:
            nib.save(img, str(target))
            target.replace(tmp)
        finally:
            target.unlink(missing_ok=True)
    return path


def write_nifti_labels(path, labels: np.ndarray, affine: np.ndarray, overwrite: bool = False,
                       description: str = "") -> Path:
    """(Z, Y, X) labels as a NIfTI file with the source's affine in RAS+ (``Volume.ras_affine``;
    atomic, never over a file), in the smallest unsigned type that holds their ids."""
    labels = np.asarray(labels)
    if labels.ndim == 2:
        labels = labels[None]
    dtype = np.uint8 if labels.max(initial=0) < 256 else np.uint16 if labels.max() < 65536 \
        else np.uint32
    return write_nifti(path, labels.astype(dtype), affine, overwrite, description, "label")


def write_labels_and_record(target, sidecar, labels: np.ndarray, affine: np.ndarray,
                            record: dict, overwrite: bool = False) -> Path:
    """NIfTI labels on the scan's grid and their JSON provenance beside them (both atomic;
    nothing replaced unless ``overwrite``)."""
    import json

    write_nifti_labels(target, labels, affine, overwrite,
                       description=f"fmbff {record.get('model', '')}"[:79])
    with atomic_path(sidecar, overwrite) as tmp:
        tmp.write_text(json.dumps(record, indent=1, default=str))
    return Path(target)


def read_dicom_series(path) -> Volume:
    """Every slice of the series in a folder (or of the series a given file belongs to),
    sorted along the slice normal by ImagePositionPatient, in Hounsfield units for CT."""
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    found, uid = series_headers_of(path)
    series = sorted_series(found)
    slices, normal, positions, heights = (series.slices, series.normal, series.positions,
                                          series.heights)
    first = slices[0][1]
    rows, cols = _orientation(first)
    data = _series_pixels([p for p, _ in slices], folder)
    spacing = _series_spacing(first, heights)
    affine = np.eye(4)
    affine[:3, 0] = normal * spacing[0]   # z index along the slice normal
    affine[:3, 1] = cols * spacing[1]     # y index (rows of the image) along the column direction
    affine[:3, 2] = rows * spacing[2]     # x index along the row direction
    affine[:3, 3] = positions[0]
    modality = str(first.get("Modality", ""))
    meta = {"format": "dicom", "modality": modality,
            "series_description": str(first.get("SeriesDescription", "")),
            "series_uid": str(uid), "n_slices": len(slices), "slice_positions_mm": heights,
            "sop_instance_uids": [str(ds.get("SOPInstanceUID", "")) for _, ds in slices],
            "units": "HU" if modality == "CT" else ""}
    return Volume(data, spacing, affine, str(folder), meta)


@dataclass
class SortedSeries:
    """A DICOM series' slices in the volume's Z order (``sorted_series``)."""

    slices: list            # (file, header) pairs, along the slice normal
    normal: np.ndarray      # the slice normal (row direction x column direction)
    positions: list         # each slice's ImagePositionPatient (mm), in that order
    heights: list           # each slice's position along the normal (mm), ascending


def sorted_series(slices: list) -> SortedSeries:
    """The one Z order of a DICOM series (the volume ``read_dicom_series`` reads, the SEG
    ``dicom_seg`` writes on it): ``slices`` ((file, header) pairs) sorted along the first
    slice's normal by ImagePositionPatient; slices at the same height keep their order."""
    rows, cols = _orientation(slices[0][1])
    normal = np.cross(rows, cols)
    positions = [np.asarray(ds.get("ImagePositionPatient", (0, 0, 0)), float) for _, ds in slices]
    heights = [float(pos @ normal) for pos in positions]
    order = np.argsort(heights, kind="stable")
    return SortedSeries([slices[i] for i in order], normal, [positions[i] for i in order],
                        [heights[i] for i in order])


def series_headers_of(path: Path, uid: str | None = None) -> tuple[list, str]:
    """(file, header) of every image slice of the wanted series, and its Series UID: the
    series ``uid``, else the series of the given file, or the only series of the given
    folder. Headers only (no pixels), in file-name order."""
    import pydicom

    folder, wanted = (path, None) if path.is_dir() else (path.parent, path)
    slices = []
    for p in sorted(folder.iterdir()):
        if not is_dicom(p):
            continue
        try:
            ds = pydicom.dcmread(str(p), stop_before_pixels=True)
        except Exception:  # noqa: BLE001 - not a DICOM file after all; the series decides
            continue
        if "ImagePositionPatient" in ds or p == wanted:
            slices.append((p, ds))
    if not slices:
        raise ValueError(f"{path}: no DICOM image slices found")
    if uid is None and wanted is not None:
        uid = next(ds.get("SeriesInstanceUID") for p, ds in slices if p == wanted)
    elif uid is None:
        uids = {ds.get("SeriesInstanceUID") for _, ds in slices}
        if len(uids) > 1:
            raise ValueError(f"{folder}: holds {len(uids)} DICOM series; open one file of the "
                             "series you want, or give each series its own folder")
        uid = uids.pop()
    return [(p, ds) for p, ds in slices if ds.get("SeriesInstanceUID") == uid], uid


def _series_pixels(files: list, folder) -> np.ndarray:
    """The slices' pixels stacked in the given order, rescaled (HU for CT); whole numbers in
    the int16 range are stored as int16."""
    import pydicom

    planes = []
    for p in files:
        ds = pydicom.dcmread(str(p))
        try:
            pixels = ds.pixel_array
        except Exception as err:
            raise ValueError(f"{p}: cannot decode its pixels ({type(err).__name__}: {err})") from err
        slope, intercept = float(ds.get("RescaleSlope", 1)), float(ds.get("RescaleIntercept", 0))
        if slope != 1 or intercept != 0:
            pixels = pixels * np.float32(slope) + np.float32(intercept)
        planes.append(pixels)
    shapes = {pl.shape for pl in planes}
    if len(shapes) > 1:
        raise ValueError(f"{folder}: slices of different sizes {sorted(shapes)} in one series")
    data = np.stack(planes)
    if data.dtype.kind == "f" and np.all(np.mod(data, 1) == 0) and \
            data.min() >= -32768 and data.max() <= 32767:
        data = data.astype(np.int16)  # Hounsfield units are whole numbers
    return data


def _series_spacing(first, heights: list[float]) -> tuple[float, float, float]:
    """(dz, dy, dx) in mm: dz from the sorted slice positions along the normal (the slice
    thickness when they are not strictly increasing, or for a single slice)."""
    dy, dx = (float(v) for v in first.get("PixelSpacing", (1.0, 1.0)))
    if len(heights) > 1:
        steps = np.diff(heights)
        dz = float(np.median(steps)) if np.all(steps > 0) else float(first.get("SliceThickness", 1))
    else:
        dz = float(first.get("SliceThickness", 1.0) or 1.0)
    return dz, dy, dx


def series_name(volume: Volume) -> str:
    """A file-name stem for a volume's outputs: the NIfTI stem, or the series folder name."""
    source = Path(volume.source)
    name = source.name
    for suffix in (".nii.gz", ".nii"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def _orientation(ds) -> tuple[np.ndarray, np.ndarray]:
    iop = [float(v) for v in ds.get("ImageOrientationPatient", (1, 0, 0, 0, 1, 0))]
    return np.asarray(iop[:3]), np.asarray(iop[3:])


def _nifti_description(img) -> str:
    try:
        return img.header["descrip"].item().decode(errors="replace").strip("\x00 ")
    except Exception:  # noqa: BLE001 - a description is optional
        return ""


#: DICOM's patient coordinates (LPS+) to NIfTI's (RAS+): x and y point the other way.
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
# (z, y, x, 1) -> (x, y, z, 1): NIfTI's (i, j, k) index order is the reverse of ours.
_SWAP_ZYX = np.array([[0, 0, 1, 0], [0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1]], float)
