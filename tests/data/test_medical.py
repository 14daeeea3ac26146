"""DICOM series and NIfTI volumes from real files nobody here made (pydicom's and nibabel's own
test data, read from the installed packages, never copied into the repository)."""

from pathlib import Path

import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom")
nib = pytest.importorskip("nibabel")

from napari_fmbff.data.medical import (
    is_medical,
    read_dicom_series,
    read_nifti,
    read_volume,
    window_range,
    write_nifti_labels,
)
from napari_fmbff.inference.progress import Progress, drain

NIB_DATA = Path(nib.__file__).parent / "tests" / "data"


def ct_slice():
    from pydicom.data import get_testdata_file

    return Path(get_testdata_file("CT_small.dcm"))


def test_ct_slice_in_hounsfield_units_with_its_spacing():
    ds = pydicom.dcmread(ct_slice())
    vol = read_volume(ct_slice())
    raw = ds.pixel_array.astype(np.float64)
    expected = raw * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    assert vol.data.shape == (1, 128, 128)
    np.testing.assert_array_equal(vol.data[0], expected)
    assert vol.data.min() < -500  # air in HU, not the stored 0..4095
    assert vol.spacing[1:] == pytest.approx((0.661468, 0.661468))
    assert vol.metadata["modality"] == "CT" and vol.metadata["units"] == "HU"
    np.testing.assert_allclose(vol.origin, [float(v) for v in ds.ImagePositionPatient])


def test_series_written_in_shuffled_order_is_sorted_by_position(tmp_path):
    """A 5-slice series made from a real slice: files named against the anatomy order."""
    ds = pydicom.dcmread(ct_slice())
    base = np.asarray(ds.ImagePositionPatient, float)
    folder = tmp_path / "series"
    folder.mkdir()
    for k, name in zip(range(5), ["e.dcm", "b.dcm", "d.dcm", "a.dcm", "c.dcm"]):
        s = pydicom.dcmread(ct_slice())
        s.ImagePositionPatient = [base[0], base[1], base[2] + 2.5 * k]
        s.InstanceNumber = 5 - k
        arr = s.pixel_array.copy()
        arr[0, 0] = 1000 + k  # mark the slice
        s.PixelData = arr.tobytes()
        s.save_as(folder / name)
    vol = read_dicom_series(folder)
    assert vol.data.shape == (5, 128, 128)
    stored = [int(v) for v in vol.data[:, 0, 0] - float(ds.RescaleIntercept)]
    assert stored == [1000, 1001, 1002, 1003, 1004]
    assert vol.spacing[0] == pytest.approx(2.5)
    np.testing.assert_allclose(vol.metadata["slice_positions_mm"],
                               base[2] + 2.5 * np.arange(5))
    # Any one file opens the whole series.
    assert read_volume(folder / "c.dcm").data.shape == (5, 128, 128)
    assert is_medical(folder) and is_medical(folder / "a.dcm")


def test_nifti_volume_and_labels_with_the_same_affine(tmp_path):
    src = NIB_DATA / "anatomical.nii"
    img = nib.load(str(src))
    vol = read_nifti(src)
    x, y, z = img.shape[:3]
    assert vol.data.shape == (z, y, x)
    np.testing.assert_array_equal(vol.data[3, 5, 7], np.asarray(img.dataobj)[7, 5, 3])
    assert vol.spacing == pytest.approx(tuple(float(v) for v in img.header.get_zooms()[:3][::-1]))
    labels = (vol.data > np.percentile(vol.data, 90)).astype(np.uint8)
    out = write_nifti_labels(tmp_path / "anatomical.nii.gz", labels, vol.affine,
                             description="fmbff test")
    back = nib.load(str(out))
    np.testing.assert_allclose(back.affine, img.affine)
    assert back.shape == img.shape[:3]
    np.testing.assert_array_equal(np.transpose(np.asarray(back.dataobj), (2, 1, 0)), labels)
    with pytest.raises(FileExistsError):
        write_nifti_labels(out, labels, vol.affine)


def test_4d_nifti_is_refused_in_one_line():
    with pytest.raises(ValueError, match="4D NIfTI"):
        read_nifti(NIB_DATA / "example4d.nii.gz")


def test_windows():
    assert window_range("lung") == (-1350.0, 150.0)
    assert window_range("brain") == (0.0, 80.0)
    assert window_range("-100,300") == (-100.0, 300.0)
    for bad in ("spleen", "3,1", "a,b"):
        with pytest.raises(ValueError):
            window_range(bad)


def test_napari_opens_dicom_and_nifti_at_their_spacing(make_napari_viewer, tmp_path):
    pytest.importorskip("napari")
    viewer = make_napari_viewer()
    [ct] = viewer.open(str(ct_slice()), plugin="napari-fmbff")
    assert ct.data.shape == (128, 128)
    np.testing.assert_allclose(ct.scale, (0.661468, 0.661468), rtol=1e-5)
    assert ct.data.min() < -500  # Hounsfield units
    assert ct.metadata["napari_fmbff_source"]["modality"] == "CT"
    [mr] = viewer.open(str(NIB_DATA / "anatomical.nii"), plugin="napari-fmbff")
    img = nib.load(str(NIB_DATA / "anatomical.nii"))
    np.testing.assert_allclose(mr.scale, img.header.get_zooms()[:3][::-1])
    assert mr.data.shape == img.shape[:3][::-1]


def test_segment_a_nifti_volume_into_nifti_labels_with_its_affine(tiny_net, tmp_path):
    from napari_fmbff.inference.postprocess import Postprocess
    from napari_fmbff.inference.segmenter import SegmentSettings
    from napari_fmbff.jobs.files import SegmenterSpec
    from napari_fmbff.jobs.volumes import segment_volume

    src = NIB_DATA / "anatomical.nii"
    spec = SegmenterSpec("tiny", SegmentSettings(device="cpu", tile_size=64),
                         window="-100,300")
    gen = segment_volume(tiny_net, spec, src, tmp_path, Postprocess(threshold=0.0, labels=True),
                         provenance={"model": "tiny"})
    steps = []
    out = drain(gen, steps.append)
    img = nib.load(str(src))
    assert steps[-1] == Progress("slices", img.shape[2], img.shape[2])
    back = nib.load(str(out))
    assert out.name == "anatomical.nii.gz" and back.shape == img.shape[:3]
    np.testing.assert_allclose(back.affine, img.affine)
    data = np.asarray(back.dataobj)
    assert data.max() == 1  # threshold 0: one object through the whole volume (3D ids)
    import json

    record = json.loads((tmp_path / "anatomical.json").read_text())
    assert record["model"] == "tiny" and record["window"] == "-100,300"
    assert record["intensity"]["mode"] == "fixed" and record["intensity"]["low"] == -100


def test_3d_ids_are_unique_across_slices():
    from napari_fmbff.inference.postprocess import label_volume as labels_3d

    mask = np.zeros((4, 20, 20), bool)
    mask[0:3, 2:6, 2:6] = True       # one tumour over three slices
    mask[1, 12:15, 12:15] = True     # another object
    labels = labels_3d(mask)
    assert labels.max() == 2
    assert len(np.unique(labels[0:3, 2:6, 2:6])) == 1


def test_fmbff_segment_on_a_dicom_series_and_a_nifti(tiny_model, tmp_path, capsys):
    from napari_fmbff.cli import main

    ds = pydicom.dcmread(ct_slice())
    folder = tmp_path / "series"
    folder.mkdir()
    for k in range(3):
        s = pydicom.dcmread(ct_slice())
        s.ImagePositionPatient = [float(v) for v in ds.ImagePositionPatient[:2]] + \
            [float(ds.ImagePositionPatient[2]) + 5.0 * k]
        s.save_as(folder / f"{k}.dcm")
    out = tmp_path / "masks"
    rc = main(["segment", str(folder), str(NIB_DATA / "anatomical.nii"), "-m", tiny_model,
               "-o", str(out), "--tile-size", "64", "--window", "soft-tissue", "--device", "cpu"])
    assert rc == 0, capsys.readouterr().err
    series = nib.load(str(out / "series.nii.gz"))
    assert series.shape == (128, 128, 3)
    # DICOM's LPS position of the first voxel is NIfTI's RAS with x and y turned round.
    x, y, z = (float(v) for v in ds.ImagePositionPatient)
    np.testing.assert_allclose(series.affine[:3, 3], (-x, -y, z))
    assert series.header.get_zooms()[:3] == pytest.approx((0.661468, 0.661468, 5.0), rel=1e-5)
    mr = nib.load(str(out / "anatomical.nii.gz"))
    np.testing.assert_allclose(mr.affine, nib.load(str(NIB_DATA / "anatomical.nii")).affine)
    assert (out / "series.json").exists()
    # Never over an existing result.
    assert main(["segment", str(folder), "-m", tiny_model, "-o", str(out),
                 "--tile-size", "64"]) == 2
    assert "exists" in capsys.readouterr().err


def test_the_volume_and_a_dicom_seg_on_it_share_one_series_order(tmp_path):
    """One home for the DICOM series sort (``medical.sorted_series``): the volume's Z order
    and the headers a DICOM SEG is written on agree, with file names against the anatomy
    order; slices at one height keep their file order."""
    from dicom_files import ct_series
    from napari_fmbff.data import dicom_seg
    from napari_fmbff.data.medical import series_headers_of, sorted_series

    folder = ct_series(tmp_path / "ct", n=5)
    volume = read_dicom_series(folder)
    heights = volume.metadata["slice_positions_mm"]
    assert heights == sorted(heights) and len(set(heights)) == 5
    record = {"source": str(folder), "series_uid": volume.metadata["series_uid"],
              "slice_positions_mm": heights}
    uids = [str(ds.SOPInstanceUID) for ds in dicom_seg.series_headers(record)]
    assert uids == volume.metadata["sop_instance_uids"]
    found, _ = series_headers_of(folder)
    assert [p.name for p, _ in found] == sorted(p.name for p, _ in found)
    assert [str(ds.SOPInstanceUID) for _, ds in sorted_series(found).slices] == uids
    same = [(p, ds) for p, ds in found]
    for _, ds in same:
        ds.ImagePositionPatient = [0.0, 0.0, 1.0]
    assert [p for p, _ in sorted_series(same).slices] == [p for p, _ in found]
