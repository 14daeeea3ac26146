"""DICOM test files made with the field's own libraries: a CT series from pydicom's real
``CT_small.dcm`` slice (as tests/data/test_medical.py builds one), and RTSTRUCTs written by
rt-utils (``RTStructBuilder``), the library radiotherapy users convert masks with."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def ct_series(folder, n: int = 6, step: float = 2.5) -> Path:
    """``n`` slices of CT_small.dcm, ``step`` mm apart, one series (own Series / SOP UIDs),
    written with file names against the anatomy order. Returns the folder."""
    import pydicom
    from pydicom.data import get_testdata_file
    from pydicom.uid import generate_uid

    src = Path(get_testdata_file("CT_small.dcm"))
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    series, z0 = generate_uid(), float(pydicom.dcmread(src).ImagePositionPatient[2])
    for k in range(n):
        s = pydicom.dcmread(src)
        s.ImagePositionPatient = [*[float(v) for v in s.ImagePositionPatient[:2]], z0 + step * k]
        s.SeriesInstanceUID, s.SOPInstanceUID, s.InstanceNumber = series, generate_uid(), k + 1
        s.save_as(folder / f"ct{n - 1 - k:03d}.dcm")
    return folder


def write_rtstruct(series_folder, path, rois: dict[str, np.ndarray]) -> Path:
    """An RTSTRUCT drawn on the series in ``series_folder``: one ROI per (name, (Z, Y, X) mask),
    slices in the series' order along its normal (as ``read_dicom_series`` gives them)."""
    import os
    import warnings

    before = dict(os.environ)
    from rt_utils import RTStructBuilder  # imports cv2, which points Qt at its own plugins

    os.environ.clear()                    # napari's Qt in this process keeps its own
    os.environ.update(before)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():  # rt-utils sets pydicom 3's deprecated encoding flags
        warnings.simplefilter("ignore", DeprecationWarning)
        rt = RTStructBuilder.create_new(dicom_series_path=str(series_folder))
        for name, mask in rois.items():
            rt.add_roi(mask=np.transpose(np.asarray(mask, bool), (1, 2, 0)), name=name)
        rt.save(str(path))
    return Path(path)
