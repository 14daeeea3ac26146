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

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from .._files import check_folders
from ..data import keys
from ..data.keys import SOURCE as SOURCE_KEY

#: The Image layer metadata key of a scan's geometry (written by ``_reader.read_medical``).
from ..data.medical import record_ras_affine, write_labels_and_record


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


#: The keys of a layer's record that say which model run made its pixels: the model's name,
#: its file, the file's SHA-256 and the time of the run (``run_record``).
RUN_KEYS = ("model", "model_file", "model_sha256", "date")


def run_record(model, previous: dict | None = None, *, when=None, base=None,
               **settings) -> dict:
    """The record a labels layer carries after a model run wrote into it (Propagate; Segment
    builds the same keys from ``Segmenter.record``): ``model`` the model file that made the
    pixels (or a registered name, resolved to its file), named by its stem, with its SHA-256
    and ``when`` (a datetime or ISO text; default now, UTC) as the run's ``date``; ``base``
    the model it was fine-tuned from (name, file, SHA-256 as ``base_model*``); ``settings``
    what else the run records (``learned``, ``slices_labelled``...). ``previous``: the layer's
    record before this run; its other keys stay (threshold, image...) and its own run keys
    move under ``previous_run`` (the run that made the slices this one left as they were)."""
    from ..inference.provenance import model_file_record, provenance

    previous = dict(previous) if isinstance(previous, dict) else {}
    previous.pop("previous_run", None)
    based = {} if base is None else {
        f"base_{k}": v for k, v in model_file_record(base).items()}
    record = {**previous, **provenance(settings, based, model=model_file_record(model),
                                       when=when, version=False)}
    earlier = {k: previous[k] for k in RUN_KEYS if k in previous}
    if earlier:
        record["previous_run"] = earlier
    return record


def checked_run(made_by: dict) -> dict:
    """A layer's record as a saved file may repeat it: when its ``model_file`` is not the file
    of its ``model`` (a record whose model was changed without its file, hash and time, as
    Propagate did before it recorded its own run), the file, hash and time are not that
    model's; they are moved under ``unverified_run`` and a ``provenance_note`` says so."""
    made_by = dict(made_by)
    model, file = made_by.get("model"), made_by.get("model_file")
    if not file or model is None or Path(str(file)).stem == str(model):
        return made_by
    made_by["unverified_run"] = {k: made_by.get(k) for k in RUN_KEYS[1:]}
    made_by.update(model_file=None, model_sha256=None, date=None,
                   provenance_note=f"the layer's record names model {model!r} but the file, "
                   f"SHA-256 and time of another model ({Path(str(file)).name}); "
                   f"{model!r}'s own are unknown")
    return made_by


def provenance_of(record: dict, made_by: dict | None, layer: str = "") -> dict:
    """What a saved file records: how the labels were made (the Segment / Propagate record,
    when they were: ``checked_run``), the scan, this package's version and the time it was
    saved (``saved``: the record's own time, ``inference.provenance``; ``date`` stays the
    run's)."""
    from ..inference.provenance import provenance

    made_by = checked_run(made_by) if isinstance(made_by, dict) else {}
    return provenance(made_by, {
        "kind": "labels", "format": record.get("format"),
        "spacing_mm": record.get("spacing_mm"), "series_uid": record.get("series_uid"),
        "layer": layer, "saved_by": "napari-fmbff"},
        source=record.get("source", made_by.get("source", "")), stamp="saved")


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
    JSON sidecar beside it (both atomic), with the scan's record under ``SOURCE_KEY`` so the
    labels reopen on that scan (``nifti_labels``)."""
    path = Path(path)
    target = write_labels_and_record(path, nifti_sidecar(path), labels, record_ras_affine(record),
                                     {**provenance, SOURCE_KEY: record}, overwrite)
    return [target, nifti_sidecar(path)]


# ---- a saved NIfTI opened again: labels or an image? ------------------------------------------

#: At most this many ids in an integer mask beside its scan (more: an image).
MASK_MAX_IDS = 1024


def nifti_labels(path, volume) -> tuple[str, dict | None] | None:
    """Whether the NIfTI at ``path`` (read as ``volume``) holds labels, and why: (the reason,
    our sidecar's record or None), else None (an image). Labels, with whole-number voxels:
    (1) beside it is the JSON sidecar napari-fmbff writes (``mask.nii.gz`` -> ``mask.json``,
    ``our_sidecar``), or (2) its header's intent is NIFTI_INTENT_LABEL (as napari-fmbff
    writes labels), or (3) it is an integer mask beside its scan: integer voxels >= 0, at
    most ``MASK_MAX_IDS`` distinct values, more than half the voxels 0, and another NIfTI in the
    same folder on the same grid (shape and affine) is not such a mask."""
    data = volume.data
    sidecar = our_sidecar(path)
    if sidecar is not None and _whole(data):
        return f"the napari-fmbff record {nifti_sidecar(path).name} is beside it", sidecar
    if _intent_is_label(path) and _whole(data):
        return "its NIfTI intent is label", None
    if _mask_like(data):
        scan = _scan_beside(Path(path))
        if scan is not None:
            return f"an integer mask on the grid of {scan.name} beside it", None
    return None


def our_sidecar(path) -> dict | None:
    """The JSON record napari-fmbff wrote beside a NIfTI of labels (this writer: ``kind``
    labels; ``fmbff segment`` / ``propagate``: a ``model`` and a ``package_version``)."""
    import json

    try:
        record = json.loads(nifti_sidecar(path).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict):
        return None
    ours = record.get("kind") == "labels" or ("model" in record and "package_version" in record)
    return record if ours else None


def labels_record(sidecar: dict | None, volume) -> dict:
    """The scan record of labels opened from a NIfTI: the scan's own (our sidecar's, so they
    overlay and save on the scan they were drawn on) when it agrees with the file's grid,
    else the file's (``source_record``)."""
    from ..data.medical import source_record

    scan = (sidecar or {}).get(SOURCE_KEY)
    try:
        if isinstance(scan, dict) and scan.get("n_slices", volume.data.shape[0]) == \
                volume.data.shape[0] and np.allclose(record_ras_affine(scan), volume.affine,
                                                     atol=1e-2):
            return scan
    except (KeyError, TypeError, ValueError):
        pass
    return source_record(volume)


def _whole(data) -> bool:
    data = np.asarray(data)
    return data.dtype.kind in "iub" or (data.dtype.kind == "f" and bool(np.all(np.mod(data, 1) == 0)))


def _intent_is_label(path) -> bool:
    import nibabel as nib

    try:
        return nib.load(str(path)).header.get_intent()[0] == "label"
    except Exception:  # noqa: BLE001 - a header we cannot read says nothing
        return False


def _mask_like(data) -> bool:
    """Integer voxels >= 0, at most ``MASK_MAX_IDS`` distinct values, more than half the voxels 0."""
    data = np.asarray(data)
    if data.dtype.kind not in "iub" or not data.size or data.min() < 0 or data.max() >= 1 << 24:
        return False
    counts = np.bincount(data.ravel().astype(np.int64))
    return np.count_nonzero(counts) <= MASK_MAX_IDS and counts[0] * 2 > data.size


def _scan_beside(path: Path):
    """Another NIfTI in ``path``'s folder on the same grid that is not a mask, else None."""
    import nibabel as nib

    try:
        mine = nib.load(str(path))
        others = sorted(p for p in path.parent.iterdir() if p != path and p.is_file()
                        and p.name.lower().endswith((".nii", ".nii.gz")))
    except Exception:  # noqa: BLE001 - no grid to compare
        return None
    for other in others:
        try:
            img = nib.load(str(other))
            if img.shape[:3] != mine.shape[:3] or not np.allclose(img.affine, mine.affine,
                                                                  atol=1e-3):
                continue
            if img.get_data_dtype().kind == "f" or not _mask_like(np.asanyarray(img.dataobj)):
                return other
        except Exception:  # noqa: BLE001 - a file we cannot read is no scan
            continue
    return None


def save_dicom_seg(path, labels: np.ndarray, record: dict, provenance: dict,
                   overwrite: bool = False, classes: dict | str | None = None) -> list[Path]:
    """The labels as a DICOM SEG referencing the scan's series, one segment per class
    (``dicom_seg.write_dicom_seg``'s ``classes``)."""
    from ..data.dicom_seg import write_dicom_seg

    return [write_dicom_seg(path, labels, record, provenance, overwrite, classes)]


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
                                              keys.PROVENANCE: {**provenance, "kind": "labels"}})
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
        return attrs.get(keys.PROVENANCE, {}).get("kind") in ("labels", "mask")
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
