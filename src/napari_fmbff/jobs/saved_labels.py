"""Labels saved in the clinic's formats: NIfTI on the scan's grid, DICOM SEG, OME-Zarr labels.

What napari's File > Save Selected Layers runs (``_widgets/_writers.py`` finds the scan and
calls these; they never see napari). The scan's geometry is the ``napari_fmbff_source`` record
that ``_reader.read_medical`` puts in an Image layer's metadata (``source``, ``format``,
``spacing_mm``, ``affine``: (z, y, x, 1) -> patient mm, DICOM's LPS or NIfTI's RAS, and the
series' facts). The NIfTI is what ``fmbff segment`` writes for the same series
(``medical.write_labels_and_record``: the labels with ``Volume.ras_affine``, and a JSON sidecar
with the provenance); the OME-Zarr is a labels group as ``fmbff segment --zarr`` writes it
(``large_outputs.ngff_metadata``).
"""

from __future__ import annotations

import datetime
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from .._files import check_folders
from ..data.medical import record_ras_affine, write_labels_and_record

#: The Image layer metadata key of a scan's geometry (written by ``_reader.read_medical``).
SOURCE_KEY = "napari_fmbff_source"


def scan_labels(labels, record: dict, shape: tuple | None = None) -> np.ndarray:
    """``labels`` as a (Z, Y, X) array on the recorded scan: 2D labels of a one-slice scan
    get their slice axis back. ``shape``: the scan's (Z, Y, X) where known (the image layer);
    a ValueError when the labels do not fit the scan."""
    if not isinstance(record, dict) or "affine" not in record:
        raise ValueError("no scan geometry recorded")
    labels = np.asarray(labels)
    given = tuple(labels.shape)
    n_slices = record.get("n_slices")
    if shape is not None and len(shape) == 2:
        shape = (1, *shape)
    if labels.ndim == 2 and (shape is None or shape[0] == 1) and n_slices in (None, 1):
        labels = labels[None]
    expected = shape if shape is not None else (n_slices, *labels.shape[1:]) if n_slices \
        else None
    if labels.ndim != 3 or (expected is not None and tuple(labels.shape) != tuple(expected)):
        wanted = tuple(expected) if expected is not None else "(slices, rows, columns)"
        raise ValueError(f"the labels have shape {given} but the scan "
                         f"{record.get('source', '')} has {wanted}; draw them on the scan "
                         "(same shape), or save them as .tif")
    return labels


def provenance_of(record: dict, made_by: dict | None, layer: str = "") -> dict:
    """What a saved file records: how the labels were made (the Segment / Propagate record,
    when they were), the scan, this package's version and the date."""
    from .. import __version__

    made_by = dict(made_by) if isinstance(made_by, dict) else {}
    return {**made_by, "source": str(record.get("source", made_by.get("source", ""))),
            "format": record.get("format"), "spacing_mm": record.get("spacing_mm"),
            "series_uid": record.get("series_uid"), "layer": layer,
            "saved_by": "napari-fmbff", "package_version": __version__,
            "saved": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def nifti_sidecar(path) -> Path:
    """``labels.nii.gz`` -> ``labels.json`` (as ``fmbff segment`` names its sidecar)."""
    path = Path(path)
    name = path.name
    for suffix in (".nii.gz", ".nii"):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    return path.with_name(f"{name}.json")


def save_nifti(path, labels: np.ndarray, record: dict, provenance: dict,
               overwrite: bool = False) -> list[Path]:
    """The labels on the scan's grid as NIfTI with its RAS affine, and the provenance as a
    JSON sidecar beside it (both atomic)."""
    path = Path(path)
    target = write_labels_and_record(path, nifti_sidecar(path), labels, record_ras_affine(record),
                                     provenance, overwrite)
    return [target, nifti_sidecar(path)]


def save_dicom_seg(path, labels: np.ndarray, record: dict, provenance: dict,
                   overwrite: bool = False) -> list[Path]:
    from ..data.dicom_seg import write_dicom_seg

    return [write_dicom_seg(path, labels, record, provenance, overwrite)]


def ome_geometry(ndim: int, scale, translate=None, units=None) -> dict:
    """``large_outputs.ngff_geometry``'s dict for a labels array of ``ndim`` axes (stack axes,
    y, x), its pixel size, offset and units (None or "" where unknown)."""
    from .large_outputs import AXIS_TYPES

    names = {2: ["y", "x"], 3: ["z", "y", "x"], 4: ["t", "z", "y", "x"]}.get(
        ndim, [f"dim_{k}" for k in range(ndim - 2)] + ["y", "x"])
    units = list(units) if units is not None and len(units) == ndim else [None] * ndim
    axes = []
    for name, unit in zip(names, units):
        axis = {"name": name, **({"type": AXIS_TYPES[name]} if name in AXIS_TYPES else {})}
        if unit:
            axis["unit"] = str(unit)
        axes.append(axis)
    translation = [float(v) for v in translate] if translate is not None else [0.0] * ndim
    return {"axes": axes, "scale": [float(v) for v in scale],
            "translation": translation if any(translation) else None, "source_is_image": False}


def save_ome_zarr(path, labels: np.ndarray, geometry: dict, provenance: dict,
                  overwrite: bool = False) -> list[Path]:
    """The labels as an OME-Zarr (NGFF 0.5) image-label group, as ``fmbff segment --zarr``
    writes its labels: array ``0`` (uint32, its dimension names), ``ome`` and the provenance
    under ``napari_fmbff`` (``kind: labels``, so our reader opens it as Labels). Built beside
    the target and renamed into place. An existing folder is replaced only with
    ``overwrite`` and only when it is such a labels group (never a folder of other files)."""
    import zarr

    from ..inference.chunked import STORE_CHUNK
    from .large_outputs import name_dimensions, ngff_metadata

    target = Path(path)
    check_folders(target)
    if target.exists() and not (overwrite and _is_our_labels(target)):
        raise FileExistsError(f"{target} exists; choose another name"
                              + ("" if overwrite else " or pass overwrite"))
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        built = work / target.name
        ome = ngff_metadata(geometry, target, "labels", None)
        group = zarr.create_group(store=str(built), zarr_format=3,
                                  attributes={"ome": ome,
                                              "napari_fmbff": {**provenance, "kind": "labels"}})
        layout = (1,) * (labels.ndim - 2) + tuple(min(STORE_CHUNK, n) for n in labels.shape[-2:])
        array = group.create_array("0", shape=labels.shape, dtype="uint32", chunks=layout,
                                   fill_value=0)
        array[...] = np.asarray(labels).astype(np.uint32)
        name_dimensions(built / "0", [axis["name"] for axis in geometry["axes"]])
        _replace_folder(built, target)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return [target]


def _is_our_labels(folder: Path) -> bool:
    """A labels group written by this package (``fmbff segment --zarr`` or this writer)."""
    import json

    try:
        attrs = json.loads((folder / "zarr.json").read_text()).get("attributes", {})
        return attrs.get("napari_fmbff", {}).get("kind") in ("labels", "mask")
    except (OSError, ValueError, AttributeError):
        return False


def _replace_folder(built: Path, target: Path) -> None:
    """Move ``built`` to ``target``; an old ``target`` is moved aside first and removed only
    once the new one is in place."""
    old = None
    if target.exists():
        old = built.parent / f"{target.name}.old"
        os.replace(target, old)
    try:
        os.replace(built, target)
    except OSError:
        if old is not None:
            os.replace(old, target)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
