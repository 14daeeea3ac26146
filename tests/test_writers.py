"""Labels saved in the clinic's formats (issue 23, item 4), files read back with the field's
own readers: nibabel (NIfTI), pydicom + highdicom (DICOM SEG), zarr (OME-Zarr).

The scans are built as tests/data/test_medical.py builds them: slices of pydicom's own
CT_small.dcm at new positions (here also with their own SOP Instance UIDs, as every real
series has), and nibabel's anatomical.nii."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom")
nib = pytest.importorskip("nibabel")
hd = pytest.importorskip("highdicom")

from napari_fmbff._reader import read_medical  # noqa: E402
from napari_fmbff.data.dicom_seg import write_dicom_seg  # noqa: E402
from napari_fmbff.jobs.saved_labels import (  # noqa: E402
    SOURCE_KEY,
    ome_geometry,
    provenance_of,
    save_nifti,
    save_ome_zarr,
    scan_labels,
)

NIB_DATA = Path(nib.__file__).parent / "tests" / "data"


def dicom_series(folder, n=3, step=5.0, names=None) -> Path:
    """``n`` slices of CT_small.dcm, ``step`` mm apart, one series, each with its own SOP
    Instance UID; file names run against the anatomy when ``names`` says so. Returns the
    folder."""
    from pydicom.data import get_testdata_file
    from pydicom.uid import generate_uid

    src = Path(get_testdata_file("CT_small.dcm"))
    first = pydicom.dcmread(src)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    series = generate_uid()
    for k, name in enumerate(names or [f"{k}.dcm" for k in range(n)]):
        s = pydicom.dcmread(src)
        s.ImagePositionPatient = [float(v) for v in first.ImagePositionPatient[:2]] + \
            [float(first.ImagePositionPatient[2]) + step * k]
        s.SeriesInstanceUID, s.SOPInstanceUID, s.InstanceNumber = series, generate_uid(), k + 1
        s.save_as(folder / name)
    return folder


def opened(path):
    """(image data, the layer's scan record) as napari-fmbff's reader opens ``path``."""
    (data, meta, _), = read_medical(str(path))
    return data, meta["metadata"][SOURCE_KEY]


def some_labels(shape, values=(3, 7)) -> np.ndarray:
    labels = np.zeros(shape, np.int32)
    labels[..., 10:30, 20:50] = values[0]
    if labels.ndim == 3:
        labels[-1, 60:90, 70:100] = values[1]
    return labels


# ---- NIfTI -----------------------------------------------------------------------------------

def test_nifti_of_a_dicom_series_is_what_fmbff_segment_writes(tmp_path, tiny_model, capsys):
    from napari_fmbff.cli import main

    folder = dicom_series(tmp_path / "series", names=["c.dcm", "a.dcm", "b.dcm"])
    assert main(["segment", str(folder), "-m", tiny_model, "-o", str(tmp_path / "cli"),
                 "--tile-size", "64", "--device", "cpu", "--threshold", "0.3"]) == 0, \
        capsys.readouterr().err
    cli = nib.load(str(tmp_path / "cli" / "series.nii.gz"))
    voxels = np.transpose(np.asarray(cli.dataobj), (2, 1, 0))  # as napari holds them: (z, y, x)
    voxels[1, 5:9, 5:9] = 2  # whatever the tiny model found, something to compare
    image, record = opened(folder / "a.dcm")
    out = save_nifti(tmp_path / "saved.nii.gz", scan_labels(voxels, record, image.shape),
                     record, provenance_of(record, {"model": "tiny"}, "series fmbff"))
    saved = nib.load(str(out[0]))
    np.testing.assert_array_equal(saved.affine, cli.affine)
    np.testing.assert_array_equal(np.transpose(np.asarray(saved.dataobj), (2, 1, 0)), voxels)
    assert saved.header.get_zooms() == cli.header.get_zooms()
    sidecar = json.loads(out[1].read_text())
    assert out[1].name == "saved.json" and sidecar["model"] == "tiny"
    assert sidecar["source"] == str(folder) and sidecar["package_version"]


def test_nifti_of_a_nifti_scan_keeps_its_affine_and_one_slice_scans_work(tmp_path):
    image, record = opened(NIB_DATA / "anatomical.nii")
    labels = some_labels(image.shape)
    out = save_nifti(tmp_path / "mr.nii", scan_labels(labels, record, image.shape), record,
                     provenance_of(record, None))
    saved = nib.load(str(out[0]))
    np.testing.assert_allclose(saved.affine, nib.load(str(NIB_DATA / "anatomical.nii")).affine)
    np.testing.assert_array_equal(np.transpose(np.asarray(saved.dataobj), (2, 1, 0)), labels)
    # A one-slice scan opens as a 2D image; its 2D labels get their slice back.
    one = dicom_series(tmp_path / "one", n=1)
    image, record = opened(one / "0.dcm")
    assert image.ndim == 2
    labels = some_labels(image.shape)
    out = save_nifti(tmp_path / "one.nii.gz", scan_labels(labels, record, image.shape), record,
                     provenance_of(record, None))
    assert nib.load(str(out[0])).shape == (128, 128, 1)
    with pytest.raises(ValueError, match=r"shape \(64, 64\) but the scan .* has \(1, 128, 128\)"):
        scan_labels(np.zeros((64, 64)), record, image.shape)


# ---- DICOM SEG -------------------------------------------------------------------------------

def test_dicom_seg_references_the_series_in_its_z_order(tmp_path):
    folder = dicom_series(tmp_path / "series", names=["c.dcm", "a.dcm", "b.dcm"])
    image, record = opened(folder / "b.dcm")
    labels = some_labels(image.shape)
    path = write_dicom_seg(tmp_path / "seg.dcm", labels, record,
                           {"model": "tiny", "package_version": "9.9", "threshold": 0.5})
    # The slices in Z order are c, a, b (c.dcm is the lowest): their UIDs, in that order.
    uids = [str(pydicom.dcmread(folder / n).SOPInstanceUID) for n in ("c.dcm", "a.dcm", "b.dcm")]
    seg = hd.seg.segread(str(path))
    assert seg.number_of_segments == 2
    assert [seg.get_segment_description(k).segment_label for k in (1, 2)] == ["label 3",
                                                                             "label 7"]
    assert {uid for _, _, uid in seg.get_source_image_uids()} == set(uids)
    pixels = seg.get_pixels_by_source_instance(source_sop_instance_uids=uids,
                                               combine_segments=True, relabel=False)
    np.testing.assert_array_equal(np.array([0, 3, 7])[pixels], labels)
    ds = pydicom.dcmread(path)
    assert ds.SeriesInstanceUID != record["series_uid"] and ds.Modality == "SEG"
    assert str(ds.ContentCreatorName).rstrip("^") == "napari-fmbff" and ds.SoftwareVersions == "napari-fmbff 9.9"
    algorithm = ds.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0]
    assert algorithm.AlgorithmName == "FM-BFF-Net" and algorithm.AlgorithmVersion == "tiny"
    assert ds.SegmentSequence[0].SegmentAlgorithmType == "SEMIAUTOMATIC"
    # Never over a file unless asked; the file stays as it was.
    before = path.read_bytes()
    with pytest.raises(FileExistsError):
        write_dicom_seg(path, labels, record, {})
    assert path.read_bytes() == before
    # Hand-made labels (no model): MANUAL, and a one-slice scan's 2D labels.
    one = dicom_series(tmp_path / "one", n=1)
    image, record = opened(one / "0.dcm")
    path = write_dicom_seg(tmp_path / "one.dcm", some_labels(image.shape), record)
    ds = pydicom.dcmread(path)
    assert ds.SegmentSequence[0].SegmentAlgorithmType == "MANUAL" and ds.NumberOfFrames == 1


def test_dicom_seg_refusals_say_why_in_one_line(tmp_path):
    _, nifti = opened(NIB_DATA / "anatomical.nii")
    folder = dicom_series(tmp_path / "series")
    image, record = opened(folder / "0.dcm")
    cases = [
        (some_labels((4, 5, 6)), nifti, "not a DICOM series"),
        (np.zeros(image.shape, np.int32), record, "labels are empty"),
        (some_labels((3, 64, 64)), record, r"shape \(3, 64, 64\) but the series"),
    ]
    for labels, rec, message in cases:
        with pytest.raises(ValueError, match=message) as err:
            write_dicom_seg(tmp_path / "x.dcm", labels, rec)
        assert "\n" not in str(err.value)
    (folder / "1.dcm").unlink()  # the series changed since it was opened
    with pytest.raises(ValueError, match="changed since it was opened"):
        write_dicom_seg(tmp_path / "x.dcm", some_labels(image.shape), record)
    assert not (tmp_path / "x.dcm").exists()


# ---- OME-Zarr --------------------------------------------------------------------------------

def test_ome_zarr_labels_as_fmbff_segment_writes_them(tmp_path, tiny_model, rng):
    import tifffile
    import zarr

    from napari_fmbff._reader import read_result
    from napari_fmbff.cli import main

    tifffile.imwrite(tmp_path / "vol.tif", rng.integers(0, 255, (3, 64, 64), dtype=np.uint8),
                     imagej=True, metadata={"axes": "ZYX"})
    assert main(["segment", str(tmp_path / "vol.tif"), "-m", tiny_model, "-o",
                 str(tmp_path / "cli"), "--zarr", "--labels", "--chunk", "64"]) == 0
    cli = zarr.open_group(str(tmp_path / "cli" / "vol.zarr"), mode="r")
    labels = some_labels((3, 64, 64))
    geometry = ome_geometry(3, (2.5, 0.5, 0.5), (0, 10, 0), [None, "millimeter", "millimeter"])
    out, = save_ome_zarr(tmp_path / "saved.zarr", labels, geometry, {"model": "tiny"})
    ours = zarr.open_group(str(out), mode="r")
    assert set(ours.attrs["ome"]) == set(cli.attrs["ome"]) and ours.attrs["ome"]["version"] == "0.5"
    assert "image-label" in ours.attrs["ome"] and ours.attrs["napari_fmbff"]["kind"] == "labels"
    axes = ours.attrs["ome"]["multiscales"][0]["axes"]
    assert [a["name"] for a in axes] == ["z", "y", "x"] and axes[1]["unit"] == "millimeter"
    transforms = ours.attrs["ome"]["multiscales"][0]["datasets"][0]["coordinateTransformations"]
    assert transforms == [{"type": "scale", "scale": [2.5, 0.5, 0.5]},
                          {"type": "translation", "translation": [0.0, 10.0, 0.0]}]
    assert ours["0"].dtype == cli["0"].dtype == np.uint32
    assert ours["0"].metadata.dimension_names == cli["0"].metadata.dimension_names
    np.testing.assert_array_equal(ours["0"][:], labels)
    # napari-fmbff's own reader opens it as Labels at its pixel size.
    (data, meta, kind), = read_result(str(out / "zarr.json"))
    assert kind == "labels" and meta["scale"] == (2.5, 0.5, 0.5)
    # Saved again (the user corrected more): our own group is replaced, atomically.
    labels[0, 0, 0] = 9
    save_ome_zarr(out, labels, geometry, {}, overwrite=True)
    assert zarr.open_group(str(out), mode="r")["0"][0, 0, 0] == 9
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    # A folder of other files is never replaced, asked or not.
    other = tmp_path / "notes.zarr"
    other.mkdir()
    (other / "mine.txt").write_text("keep")
    with pytest.raises(FileExistsError, match="choose another name"):
        save_ome_zarr(other, labels, geometry, {}, overwrite=True)
    assert (other / "mine.txt").read_text() == "keep"


def test_a_dicom_seg_opens_back_as_labels_on_its_series(tmp_path):
    from napari_fmbff._reader import get_medical_reader, read_medical

    folder = dicom_series(tmp_path / "series", names=["c.dcm", "a.dcm", "b.dcm"])
    image, record = opened(folder / "b.dcm")
    labels = some_labels(image.shape)
    # Saved inside the series folder, as a PACS export often lays it out.
    path = write_dicom_seg(folder / "seg.dcm", labels, record, {"model": "tiny"})
    [(data, meta, kind)] = read_medical(str(path))
    assert kind == "labels" and get_medical_reader(str(path)) is not None
    np.testing.assert_array_equal(data, labels)   # napari values back, on the series' Z order
    assert meta["metadata"]["napari_fmbff_source"]["series_uid"] == record["series_uid"]
    assert meta["metadata"]["napari_fmbff_segments"] == {3: "label 3", 7: "label 7"}
    # The SEG beside the slices does not disturb the series itself.
    [(again, _, kind)] = read_medical(str(folder / "a.dcm"))
    assert kind == "image" and again.shape == image.shape


def test_a_dicom_seg_without_its_series_is_one_line(tmp_path):
    from napari_fmbff._reader import read_medical

    folder = dicom_series(tmp_path / "series")
    image, record = opened(folder / "0.dcm")
    path = write_dicom_seg(tmp_path / "elsewhere" / "seg.dcm", some_labels(image.shape), record)
    moved = tmp_path / "other" / "patient" / "seg.dcm"   # no series in or beside its folder
    moved.parent.mkdir(parents=True)
    path.rename(moved)
    with pytest.raises(ValueError) as err:
        read_medical(str(moved))
    assert "put the series' .dcm files beside it" in str(err.value)
    assert "\n" not in str(err.value)
