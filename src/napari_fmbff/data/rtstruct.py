"""DICOM RT Structure Sets (RTSTRUCT), the way radiotherapy delivers its contours, as labels on
the voxel grid of the series they were drawn on.

An RTSTRUCT holds no pixels: each ROI is a set of closed planar contours in patient
coordinates (mm, LPS), and the file names the image series it belongs to (its Series Instance
UID). We find that series beside the RTSTRUCT (its folder, that folder's subfolders and the
folders next to it, as clinic and TCIA exports lay them out), read it with
``medical.read_dicom_series`` and fill each contour on its slice (pixel centres inside the
polygon, ``skimage.draw.polygon``); contours on the same slice combine by even-odd (XOR), the
usual rule for holes. Ids follow the ROIs' order in the file (1, 2, ...); where ROIs overlap,
the smaller ROI's id is kept, so a tumour inside an organ stays visible.

Training picks ROIs by name (``--roi``, as rt-utils and plastimatch do): an RTSTRUCT with one
ROI needs no choice; with several, the user names the lesion's ROI(s), because structure sets
carry organs and the body outline too, and learning their union would be learning the body.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .medical import Volume, is_dicom, read_dicom_series

#: SOP Class UID of the RT Structure Set Storage.
RTSTRUCT_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.481.3"
_FACT_TAGS = ("SOPClassUID", "Modality", "SeriesInstanceUID")


@dataclass
class Structures:
    """An RTSTRUCT's ROIs on its series' grid: ``labels`` (Z, Y, X), id k is ``names[k - 1]``."""

    labels: np.ndarray
    names: list[str]
    series: Volume
    source: str
    label: str = ""           # the StructureSetLabel

    @property
    def ids(self) -> dict[str, int]:
        return {name: k for k, name in enumerate(self.names, 1)}


def _facts(path) -> dict | None:
    """A few header tags of a DICOM file (no pixels read), or None when it is not DICOM."""
    import pydicom

    try:
        ds = pydicom.dcmread(str(path), stop_before_pixels=True, specific_tags=list(_FACT_TAGS))
    except Exception:  # noqa: BLE001 - not DICOM: the caller says what it needed
        return None
    return {tag: str(ds.get(tag, "")) for tag in _FACT_TAGS}


def is_rtstruct(path) -> bool:
    """A DICOM file that is an RT Structure Set (by its SOP Class, else its Modality); reads a
    few header tags only, so it is cheap for a CT slice."""
    path = Path(path)
    if not is_dicom(path):
        return False
    facts = _facts(path)
    return bool(facts) and (facts["SOPClassUID"] == RTSTRUCT_SOP_CLASS
                            or facts["Modality"] == "RTSTRUCT")


def referenced_series_uid(ds, path) -> str:
    """The Series Instance UID of the images the RTSTRUCT was drawn on."""
    for frame in ds.get("ReferencedFrameOfReferenceSequence", []):
        for study in frame.get("RTReferencedStudySequence", []):
            for series in study.get("RTReferencedSeriesSequence", []):
                if series.get("SeriesInstanceUID"):
                    return str(series.SeriesInstanceUID)
    raise ValueError(f"{path}: the RTSTRUCT names no image series (no SeriesInstanceUID in "
                     "its ReferencedFrameOfReferenceSequence); export it again with its series")


def series_folders(path) -> list[Path]:
    """Where an RTSTRUCT's series is looked for, in order: its folder, that folder's
    subfolders, and the other subfolders of its parent."""
    folder = Path(path).parent
    subfolders = [p for p in sorted(folder.iterdir()) if p.is_dir()]
    beside = [p for p in sorted(folder.parent.iterdir()) if p.is_dir() and p != folder] \
        if folder.parent != folder else []
    return [folder, *subfolders, *beside]


def find_series(path, uid: str) -> Path:
    """One image file of the series ``uid`` near the RTSTRUCT at ``path`` (``series_folders``);
    a ValueError in one line, saying where we looked, when there is none."""
    folders = series_folders(path)
    for folder in folders:
        for file in sorted(folder.iterdir()):
            if file.is_file() and file != Path(path) and is_dicom(file):
                facts = _facts(file)
                if facts and facts["SeriesInstanceUID"] == uid and \
                        facts["SOPClassUID"] != RTSTRUCT_SOP_CLASS:
                    return file
    parent = Path(path).parent
    raise ValueError(f"{path}: its image series (SeriesInstanceUID {uid}) is not in "
                     f"{parent}, its subfolders or the folders beside it in {parent.parent}; "
                     "put the series' .dcm files beside it")


def read_rtstruct(path, rois=None, series: Volume | None = None,
                  require_choice: bool = False) -> Structures:
    """The RTSTRUCT at ``path`` as labels on its series' grid. ``rois``: ROI names or
    patterns (``GTV*``, case-insensitive) to keep; None keeps all. ``series``: the series
    when already read (it must be the one referenced). ``require_choice``: with several ROIs
    and no ``rois``, refuse in one line that lists them (training needs to know the lesion)."""
    import pydicom

    path = Path(path)
    try:
        ds = pydicom.dcmread(str(path))
    except Exception as err:
        raise ValueError(f"{path}: cannot read it as DICOM ({type(err).__name__}: {err})") from err
    if str(ds.get("SOPClassUID", "")) != RTSTRUCT_SOP_CLASS and ds.get("Modality") != "RTSTRUCT":
        raise ValueError(f"{path}: not an RTSTRUCT (Modality {ds.get('Modality', '?')})")
    uid = referenced_series_uid(ds, path)
    if series is None:
        series = read_dicom_series(find_series(path, uid))
    elif series.metadata.get("series_uid") != uid:
        raise ValueError(f"{path}: drawn on series {uid}, not on {series.source} "
                         f"({series.metadata.get('series_uid')}); pair it with its own series")
    table = [(int(r.ROINumber), str(r.get("ROIName", "")) or f"ROI {r.ROINumber}")
             for r in ds.get("StructureSetROISequence", [])]
    chosen = select_rois(table, rois, path, require_choice)
    contours = {int(c.ReferencedROINumber): c.get("ContourSequence", [])
                for c in ds.get("ROIContourSequence", [])}
    labels = rasterise([contours.get(number, []) for number, _ in chosen], series, path,
                       [name for _, name in chosen])
    return Structures(labels, [name for _, name in chosen], series, str(path),
                      str(ds.get("StructureSetLabel", "")))


def select_rois(table: list[tuple[int, str]], patterns, path, require_choice=False) -> list:
    """The (number, name) rows of ``table`` whose name matches one of ``patterns`` (fnmatch,
    case-insensitive); all rows when there are none (see ``read_rtstruct``)."""
    names = ", ".join(repr(name) for _, name in table) or "none"
    if not patterns:
        if require_choice and len(table) > 1:
            raise ValueError(f"{path}: {len(table)} ROIs ({names}); say which is the lesion "
                             "with --roi NAME (repeat it, or give a pattern such as 'GTV*', "
                             "to join several)")
        return list(table)
    patterns = [patterns] if isinstance(patterns, str) else list(patterns)
    chosen = [(number, name) for number, name in table
              if any(fnmatch.fnmatchcase(name.lower(), p.lower()) for p in patterns)]
    if not chosen:
        raise ValueError(f"{path}: no ROI matches --roi {' '.join(patterns)}; its ROIs are "
                         f"{names}")
    return chosen


def rasterise(contour_sets: list, series: Volume, path, names: list[str]) -> np.ndarray:
    """Ids 1..n for the n ROIs' contour sequences on the series' (Z, Y, X) grid (uint8, or
    uint16 past 255 ROIs); an overlap keeps the smaller ROI's id."""
    shape = series.data.shape
    labels = np.zeros(shape, np.uint8 if len(contour_sets) < 256 else np.uint16)
    sizes = [np.inf]                       # sizes[id]: voxels of that ROI; 0 = background
    for k, contours in enumerate(contour_sets, 1):
        planes = _roi_planes(contours, series, path, names[k - 1])
        size = sum(int(m.sum()) for m in planes.values())
        sizes.append(size)
        table = np.asarray(sizes)
        for z, mask in planes.items():
            plane = labels[z]
            plane[mask & (table[plane] > size)] = k
    return labels


def _roi_planes(contours, series: Volume, path, name: str) -> dict[int, np.ndarray]:
    """One ROI's filled slices {z: (Y, X) bool}: its closed planar contours, XOR per slice
    (pixel centres inside), their outlines added."""
    from skimage.draw import polygon

    shape = series.data.shape
    heights = np.asarray(series.metadata.get("slice_positions_mm")
                         or [float(series.affine[:3, 3] @ _normal(series))], float)
    normal, inverse = _normal(series), np.linalg.inv(series.affine)
    half = 0.5 * float(series.spacing[0]) + 1e-3
    planes: dict[int, np.ndarray] = {}
    edges: dict[int, list[np.ndarray]] = {}
    for contour in contours:
        if str(contour.get("ContourGeometricType", "CLOSED_PLANAR")) != "CLOSED_PLANAR":
            continue                       # points and open lines mark, they do not fill
        points = np.asarray(contour.get("ContourData", []), float).reshape(-1, 3)
        if len(points) < 3:
            continue
        height = points @ normal
        z = int(np.argmin(np.abs(heights - height.mean())))
        off = float(np.abs(height - heights[z]).max())
        if off > half:
            raise ValueError(
                f"{path}: ROI {name!r} has a contour {off:.1f} mm from the nearest slice of its "
                f"series {series.source} (slices every {series.spacing[0]:g} mm, at "
                f"{heights.min():.1f} to {heights.max():.1f} mm along the slice normal); it was "
                "drawn on another grid: export the RTSTRUCT against this series")
        index = (np.c_[points, np.ones(len(points))] @ inverse.T)[:, 1:3]
        rr, cc = polygon(index[:, 0], index[:, 1], shape[1:])
        plane = planes.setdefault(z, np.zeros(shape[1:], bool))
        filled = np.zeros(shape[1:], bool)
        filled[rr, cc] = True
        plane ^= filled
        edges.setdefault(z, []).append(index)
    for z, outlines in edges.items():  # after the XOR: an outline is inside its ROI
        for outline in outlines:
            planes[z][_on_outline(outline, shape[1:])] = True
    return planes


def _on_outline(outline: np.ndarray, shape) -> tuple[np.ndarray, np.ndarray]:
    """(rows, cols) of the pixel centres that lie on a closed polygon's edges (within 0.01
    px): contours written through pixel centres (rt-utils, OpenCV) keep their outline pixels,
    which the centre-inside rule would give to one side only."""
    from skimage.draw import line

    ends = np.round(outline).astype(int)
    rows, cols = [], []
    for k in range(len(outline)):
        r, c = line(*ends[k - 1], *ends[k])
        a, b = outline[k - 1], outline[k]
        step = b - a
        t = np.clip(((r - a[0]) * step[0] + (c - a[1]) * step[1]) / max(step @ step, 1e-12), 0, 1)
        near = np.hypot(r - a[0] - t * step[0], c - a[1] - t * step[1]) < 0.01
        rows.append(r[near])
        cols.append(c[near])
    r, c = np.concatenate(rows), np.concatenate(cols)
    inside = (r >= 0) & (r < shape[0]) & (c >= 0) & (c < shape[1])
    return r[inside], c[inside]


def _normal(series: Volume) -> np.ndarray:
    """The unit slice normal of the series (its affine's z column)."""
    column = np.asarray(series.affine[:3, 0], float)
    return column / (np.linalg.norm(column) or 1.0)


def find_rtstructs(root) -> list[Path]:
    """Every RTSTRUCT file under ``root`` (hidden files skipped), in path order."""
    return [p for p in sorted(Path(root).rglob("*")) if p.is_file()
            and not any(part.startswith(".") for part in p.relative_to(root).parts)
            and is_rtstruct(p)]


def rtstruct_series(path) -> Path:
    """One image file of the series the RTSTRUCT at ``path`` was drawn on (``find_series``)."""
    import pydicom

    ds = pydicom.dcmread(str(path), stop_before_pixels=True,
                         specific_tags=["ReferencedFrameOfReferenceSequence"])
    return find_series(path, referenced_series_uid(ds, path))


def case_names(root, rtstructs: list[Path]) -> dict[Path, str]:
    """A case name for each RTSTRUCT under ``root``: its top folder under ``root`` (one folder
    per patient, as exports come), or its file name when it lies in ``root``; the path under
    ``root`` where two would share a name."""
    root = Path(root)
    names = {}
    for rs in rtstructs:
        parts = rs.relative_to(root).parts
        names[rs] = parts[0] if len(parts) > 1 else rs.stem
    counts = {name: list(names.values()).count(name) for name in names.values()}
    return {rs: name if counts[name] == 1 else rs.relative_to(root).with_suffix("").as_posix()
            for rs, name in names.items()}
