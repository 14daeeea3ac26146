"""DICOM RTSTRUCTs (written by rt-utils from masks on a CT series made of pydicom's real
CT_small.dcm) read back as labels on the series' grid; found beside their series the way
clinic and TCIA exports lay them out; paired for fmbff train / evaluate."""

from pathlib import Path

import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom")
pytest.importorskip("rt_utils")

from dicom_files import ct_series, write_rtstruct  # noqa: E402
from napari_fmbff.data.datasets import find_pairs, iter_volume_pairs  # noqa: E402
from napari_fmbff.data.medical import read_dicom_series  # noqa: E402
from napari_fmbff.data.rtstruct import is_rtstruct, read_rtstruct  # noqa: E402

SHAPE = (6, 128, 128)  # the series ct_series makes: 6 slices of CT_small, 2.5 mm apart


def ring_and_box() -> np.ndarray:
    """A square with a square hole on slice 2; a box over slices 3 and 4."""
    mask = np.zeros(SHAPE, bool)
    mask[2, 30:70, 40:90] = True
    mask[2, 42:58, 55:75] = False
    mask[3:5, 80:110, 20:45] = True
    return mask


def near_the_edge(mask: np.ndarray) -> np.ndarray:
    """Pixels within one pixel of ``mask``'s outline, in its slices."""
    from scipy.ndimage import binary_dilation, binary_erosion

    cross = np.zeros((1, 3, 3), bool)
    cross[0] = [[0, 1, 0], [1, 1, 1], [0, 1, 0]]
    return binary_dilation(mask, cross) & ~binary_erosion(mask, cross)


def test_a_mask_comes_back_from_an_rtstruct_within_a_pixel_with_its_hole(tmp_path):
    series = ct_series(tmp_path / "patient" / "ct")
    mask = ring_and_box()
    rs = write_rtstruct(series, tmp_path / "patient" / "rs.dcm", {"GTV": mask})
    assert is_rtstruct(rs) and not is_rtstruct(next(series.iterdir()))
    found = read_rtstruct(rs)
    assert found.names == ["GTV"] and found.labels.shape == SHAPE
    # rt-utils draws the outline through the centres of the mask's edge pixels, hole
    # included: filled by even-odd with the outlines kept, the mask comes back exactly.
    np.testing.assert_array_equal(found.labels, mask)
    series_volume = read_dicom_series(series)
    np.testing.assert_allclose(found.series.affine, series_volume.affine)
    # Contours between pixel centres (a planning system's own, in mm): within a pixel.
    ds = pydicom.dcmread(rs)
    for contour in ds.ROIContourSequence[0].ContourSequence:
        xyz = np.asarray(contour.ContourData, float).reshape(-1, 3)
        xyz[:, 0] += 0.3 * series_volume.spacing[2]
        xyz[:, 1] -= 0.4 * series_volume.spacing[1]
        contour.ContourData = [f"{v:.4f}" for v in xyz.ravel()]
    ds.save_as(tmp_path / "patient" / "shifted.dcm")
    back = read_rtstruct(tmp_path / "patient" / "shifted.dcm").labels == 1
    assert not ((back ^ mask) & ~near_the_edge(mask)).any()
    assert not back[2, 45:55, 58:72].any()      # the hole stays a hole
    assert not back[[0, 1, 5]].any()            # no contour there, nothing filled


def test_two_rois_are_two_ids_with_their_names_and_the_smaller_one_wins_an_overlap(tmp_path):
    series = ct_series(tmp_path / "ct")
    lung = np.zeros(SHAPE, bool)
    lung[1:5, 10:120, 10:120] = True
    gtv = np.zeros(SHAPE, bool)
    gtv[2:4, 50:70, 50:70] = True
    rs = write_rtstruct(series, tmp_path / "rs.dcm", {"Lung-Left": lung, "GTV-1": gtv})
    found = read_rtstruct(rs)
    assert found.names == ["Lung-Left", "GTV-1"] and found.ids == {"Lung-Left": 1, "GTV-1": 2}
    assert found.labels[2, 60, 60] == 2 and found.labels[2, 20, 20] == 1
    assert found.labels[0].max() == 0
    # Picking ROIs by name (case-insensitive, patterns allowed), as training does.
    only = read_rtstruct(rs, rois=["gtv*"])
    assert only.names == ["GTV-1"] and only.labels[2, 60, 60] == 1 and only.labels[2, 20, 20] == 0
    with pytest.raises(ValueError, match=r"2 ROIs \('Lung-Left', 'GTV-1'\).*--roi NAME"):
        read_rtstruct(rs, require_choice=True)
    with pytest.raises(ValueError, match="no ROI matches --roi PTV.*'GTV-1'"):
        read_rtstruct(rs, rois=["PTV"])


@pytest.mark.parametrize("layout", ["inside", "beside", "subfolder"])
def test_the_series_is_found_where_exports_put_it(tmp_path, layout):
    """TCIA: study/<CT series>/ and study/<RTSTRUCT series>/; flat clinic exports: the RS
    file among the CT slices; or the RS file above a CT folder."""
    series = ct_series(tmp_path / "study" / "1-CT")
    (tmp_path / "study" / "0-other").mkdir()
    rs = {"inside": series / "RS.dcm", "beside": tmp_path / "study" / "2-RTSTRUCT" / "1-1.dcm",
          "subfolder": tmp_path / "study" / "RS.dcm"}[layout]
    rs.parent.mkdir(parents=True, exist_ok=True)
    write_rtstruct(series, rs, {"GTV": ring_and_box()})
    assert read_rtstruct(rs).labels.any()
    # The series folder still reads as the series alone (the RTSTRUCT holds no slices).
    assert read_dicom_series(series).data.shape == SHAPE


def test_find_pairs_pairs_each_series_with_its_rtstruct_and_names_cases_by_folder(tmp_path):
    masks = {}
    for k, patient in enumerate(["LUNG1-001", "LUNG1-002"]):
        series = ct_series(tmp_path / "data" / patient / "CT")
        mask = np.zeros(SHAPE, bool)
        mask[2:4, 40 + 10 * k:70, 40:80] = True
        lung = np.zeros(SHAPE, bool)
        lung[1:5, 10:120, 10:120] = True
        write_rtstruct(series, tmp_path / "data" / patient / "RS.dcm",
                       {"Lung": lung, "GTV-1": mask})
        masks[patient] = mask
    found = find_pairs(tmp_path / "data")
    assert found.layout == "dicom rtstruct" and found.is_volumes and len(found.pairs) == 2
    with pytest.raises(ValueError, match="--roi NAME"):    # two ROIs: which is the lesion?
        next(iter_volume_pairs(found))
    found = find_pairs(tmp_path / "data", roi=["GTV*"])
    for pair in iter_volume_pairs(found):
        assert pair.name in masks and pair.image.shape == SHAPE
        np.testing.assert_array_equal(pair.mask, masks[pair.name])  # a box: exact
    assert "2 volume pairs (dicom rtstruct layout)" in found.describe()


def test_fmbff_evaluate_on_series_with_rtstructs(tmp_path, tiny_model, capsys):
    from napari_fmbff.cli import main

    series = ct_series(tmp_path / "data" / "patient7" / "CT")
    write_rtstruct(series, tmp_path / "data" / "patient7" / "RTSTRUCT" / "1-1.dcm",
                   {"GTV": ring_and_box()})
    capsys.readouterr()
    assert main(["evaluate", str(tmp_path / "data"), "-m", tiny_model, "--tile-size", "64",
                 "--device", "cpu", "--window", "soft-tissue", "--roi", "GTV"]) == 0
    captured = capsys.readouterr()
    assert "patient7" in captured.out and "dicom rtstruct" in captured.err


def test_fmbff_train_on_series_with_rtstructs_records_the_roi(tmp_path, capsys):
    from napari_fmbff import load_model
    from napari_fmbff.cli import main

    for patient in ("p1", "p2"):
        series = ct_series(tmp_path / "data" / patient / "CT")
        lung = np.zeros(SHAPE, bool)
        lung[1:5, 10:120, 10:120] = True
        write_rtstruct(series, tmp_path / "data" / patient / "RS.dcm",
                       {"Lung": lung, "GTV-1": ring_and_box()})
    out = tmp_path / "gtv.safetensors"
    assert main(["train", str(tmp_path / "data"), "--roi", "gtv*", "-o", str(out),
                 "--epochs", "1", "--batch-size", "2", "--tile-size", "64", "--device", "cpu",
                 "--encoder", "test_efficientnet", "--window", "soft-tissue"]) == 0
    err = capsys.readouterr().err
    assert "2 volume pairs (dicom rtstruct layout)" in err and "from 2 volumes" in err
    prov = load_model(out).metadata["provenance"]  # no held-out volume: saved as trained
    assert prov["layout"] == "dicom rtstruct" and prov["roi"] == ["gtv*"]


def test_napari_opens_an_rtstruct_as_labels_on_its_series_grid(make_napari_viewer, tmp_path):
    pytest.importorskip("napari")
    series = ct_series(tmp_path / "ct")
    lung = np.zeros(SHAPE, bool)
    lung[1:5, 10:120, 10:120] = True
    rs = write_rtstruct(series, tmp_path / "rs.dcm", {"Lung": lung, "GTV": ring_and_box()})
    viewer = make_napari_viewer()
    [image] = viewer.open(str(next(series.iterdir())), plugin="napari-fmbff")
    [labels] = viewer.open(str(rs), plugin="napari-fmbff")
    assert type(labels).__name__ == "Labels" and type(image).__name__ == "Image"
    assert labels.data.shape == image.data.shape == SHAPE
    np.testing.assert_allclose(labels.scale, image.scale)
    assert labels.metadata["napari_fmbff_source"] == image.metadata["napari_fmbff_source"]
    assert labels.metadata["napari_fmbff_rois"] == {1: "Lung", 2: "GTV"}
    assert list(labels.features["roi"]) == ["Lung", "GTV"]
    assert labels.data[2, 35, 45] == 2 and labels.data[1, 20, 20] == 1


def test_a_series_file_still_opens_as_an_image_through_the_same_reader(tmp_path):
    from napari_fmbff._reader import get_medical_reader

    series = ct_series(tmp_path / "ct", n=2)
    reader = get_medical_reader(str(next(series.iterdir())))
    [(data, meta, kind)] = reader(str(next(series.iterdir())))
    assert kind == "image" and data.shape == (2, 128, 128) and Path(
        meta["metadata"]["napari_fmbff_source"]["source"]) == series
