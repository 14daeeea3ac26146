"""`fmbff train` / `fmbff evaluate` on CT / MR volumes (issue 13): NIfTI image + mask pairs in
the nnU-Net / MSD layout (imagesTr/ + labelsTr/) and images/ + masks/, DICOM series folders as
images. The volumes are nibabel's and pydicom's own test files (read from the installed
packages, never copied into the repository); their masks are made here, with the same affine."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

nib = pytest.importorskip("nibabel")

from napari_fmbff.cli import main
from napari_fmbff.data.datasets import (
    MIN_LESION_FREE_SLICES,
    VolumePair,
    find_pairs,
    iter_volume_pairs,
    load_volume_pair,
    training_slices,
)
from napari_fmbff.model.checkpoint import read_metadata
from napari_fmbff.model.normalization import Normalization
from napari_fmbff.training.loop import Item, split_items

NIB_DATA = Path(nib.__file__).parent / "tests" / "data"
FAST = ["--epochs", "2", "--batch-size", "2", "--tile-size", "64", "--device", "cpu",
        "--encoder", "test_efficientnet"]


def _save(path, data, affine):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(data), affine), str(path))
    return path


def _lesion(data: np.ndarray, slices: slice) -> np.ndarray:
    """Bright voxels in some slices (the file's third axis) only: lesion-free slices remain."""
    mask = np.zeros(data.shape, np.uint8)
    part = data[:, :, slices]
    mask[:, :, slices] = part > np.percentile(part, 90)
    return mask


def anatomical():
    img = nib.load(str(NIB_DATA / "anatomical.nii"))            # (33, 41, 25) MR, int16
    data = np.asanyarray(img.dataobj)
    return data, img.affine, _lesion(data, slice(8, 14))


def example3d():
    img = nib.load(str(NIB_DATA / "example4d.nii.gz"))          # (128, 96, 24, 2): time 0
    data = np.asanyarray(img.dataobj)[..., 0]
    return data, img.affine, _lesion(data, slice(10, 13))


def nnunet(root: Path) -> Path:
    """nnU-Net v2 names: imagesTr/case_0000.nii.gz + labelsTr/case.nii.gz."""
    for case, (data, affine, mask) in (("mr_a", anatomical()), ("mr_b", example3d())):
        _save(root / "imagesTr" / f"{case}_0000.nii.gz", data, affine)
        _save(root / "labelsTr" / f"{case}.nii.gz", mask, affine)
    return root


# ---- layouts, pairing, slices ----------------------------------------------------------------

def test_volume_layouts_are_detected_and_paired(tmp_path):
    root = nnunet(tmp_path / "Dataset001")
    data, affine, mask = anatomical()
    _save(root / "imagesTr" / "mr_a_0001.nii.gz", data, affine)  # a second channel
    (root / "imagesTr" / "._mr_a_0000.nii.gz").write_bytes(b"macOS resource fork")
    _save(root / "imagesTr" / "lonely_0000.nii.gz", data, affine)
    found = find_pairs(root)
    assert found.layout == "nnU-Net / MSD" and found.is_volumes
    assert [(i.name, [m.name for m in ms]) for i, ms in found.pairs] == [
        ("mr_a_0000.nii.gz", ["mr_a.nii.gz"]), ("mr_b_0000.nii.gz", ["mr_b.nii.gz"])]
    assert [p.name for p in found.unpaired] == ["lonely_0000.nii.gz"]
    text = found.describe()
    assert "2 volume pairs" in text and "mr_a_0001.nii.gz" in text and "_0000" in text
    # MSD: the same name in imagesTr/ and labelsTr/.
    _save(tmp_path / "Task01" / "imagesTr" / "liver_3.nii.gz", data, affine)
    _save(tmp_path / "Task01" / "labelsTr" / "liver_3.nii.gz", mask, affine)
    msd = find_pairs(tmp_path / "Task01")
    assert msd.layout == "nnU-Net / MSD" and msd.pairs[0][1][0].name == "liver_3.nii.gz"
    # images/ + labels/ of NIfTI files.
    _save(tmp_path / "plain" / "images" / "p1.nii", data, affine)
    _save(tmp_path / "plain" / "labels" / "p1.nii", mask, affine)
    plain = find_pairs(tmp_path / "plain")
    assert plain.layout == "nifti volumes" and len(plain.pairs) == 1


def test_training_slices_are_the_lesion_slices_and_as_many_lesion_free_ones_spread_out():
    mask = np.zeros((40, 8, 8), np.uint8)
    mask[[10, 11, 12, 13, 30, 31], 3, 3] = 1
    image = np.ones((40, 8, 8))
    image[:, 0, 0] = 5                 # not flat ...
    image[:2] = 0                      # ... except two padding slices at the start
    zs = training_slices(mask, image)
    free = [z for z in zs if not mask[z].any()]
    assert [z for z in zs if mask[z].any()] == [10, 11, 12, 13, 30, 31]
    assert len(free) == 6 and zs == sorted(zs) and not {0, 1} & set(free)
    assert min(free) < 10 and max(free) > 31 and any(13 < z < 30 for z in free)  # spread out
    # A small lesion still gets a few lesion-free slices; a healthy volume gets some too.
    one = np.zeros((20, 4, 4), np.uint8)
    one[5, 1, 1] = 1
    assert len(training_slices(one)) == 1 + MIN_LESION_FREE_SLICES
    assert len(training_slices(np.zeros((20, 4, 4)))) == MIN_LESION_FREE_SLICES
    assert training_slices(np.ones((3, 4, 4))) == [0, 1, 2]


def test_a_mask_stored_in_another_axis_order_is_turned_onto_the_image_grid(tmp_path):
    data, affine, mask = anatomical()
    image = _save(tmp_path / "img.nii.gz", data, affine)
    # The same mask stored with i and j swapped and k reversed; its affine says so.
    stored = np.flip(np.transpose(mask, (1, 0, 2)), axis=2)
    index = np.zeros((4, 4))
    index[0, 1] = index[1, 0] = 1
    index[2, 2], index[2, 3], index[3, 3] = -1, mask.shape[2] - 1, 1
    turned = _save(tmp_path / "turned.nii.gz", stored, affine @ index)
    pair = load_volume_pair(image, turned)
    expected = np.transpose(mask, (2, 1, 0))            # (z, y, x) of the image
    assert pair.mask.shape == pair.image.shape == expected.shape
    np.testing.assert_array_equal(pair.mask, expected)
    assert pair.name == "turned" and pair.mask.dtype == np.uint8


def test_split_by_volume_never_puts_a_volume_on_both_sides():
    def items(n_volumes, per=4):
        out = []
        for v in range(n_volumes):
            for z in range(per):
                mask = np.zeros((8, 8), np.uint8)
                mask[2:4, 2:4] = z % 2
                out.append(Item(np.zeros((8, 8)), mask, f"v{v} z{z}", group=f"v{v}"))
        return out

    six = items(6)
    for seed in range(5):
        train, val = split_items(six, 0.2, seed=seed)
        assert len(val) == 4 and len(train) == 20   # round(0.2 * 6) = 1 volume of 4 slices
        assert {i.group for i in train}.isdisjoint({i.group for i in val})
    # Four volumes are too few to hold one out, however many slices they have.
    four = items(4, per=25)
    assert split_items(four, 0.2) == (four, [])
    # Without groups every item is its own (its name): the image-by-image split as before.
    assert Item(np.zeros((2, 2)), np.zeros((2, 2)), "a").group == "a"


# ---- fmbff train -----------------------------------------------------------------------------

def test_fmbff_train_on_volumes_stores_the_window_and_evaluate_scores_each_volume(
        tmp_path, capsys):
    root = nnunet(tmp_path / "data")
    out = tmp_path / "ct.safetensors"
    rc = main(["train", str(root), "-o", str(out), "--window", "soft-tissue", *FAST])
    err = capsys.readouterr().err
    assert rc == 0, err
    assert "2 volume pairs (nnU-Net / MSD layout)" in err and "from 2 volumes" in err
    meta = read_metadata(out)
    norm = meta["normalization"]
    assert (norm["mode"], norm["low"], norm["high"]) == ("fixed", -160.0, 240.0)
    prov = meta["provenance"]
    # 6 + 3 lesion slices, each with as many lesion-free ones (at least 4): 12 + 7 slices.
    assert prov["layout"] == "nnU-Net / MSD" and prov["volumes"] == 2
    assert prov["n_train"] + prov["n_val"] == 12 + 7 and prov["window"] == "soft-tissue"
    # evaluate: one row per volume, metrics over the whole volume.
    table = tmp_path / "eval.csv"
    assert main(["evaluate", str(root), "-m", str(out), "--csv", str(table),
                 "--tile-size", "64", "--device", "cpu"]) == 0
    text = capsys.readouterr().out
    assert "n = 2 volumes" in text and text.splitlines()[0].startswith("volume")
    rows = list(csv.DictReader(open(table)))
    assert [r["volume"] for r in rows] == ["mr_a", "mr_b"]
    assert [int(r["slices"]) for r in rows] == [25, 24]       # every slice is evaluated
    assert all(0 <= float(r["dice"]) <= 1 for r in rows)


def test_fmbff_train_normalize_volume_stores_the_scope_and_gives_each_volume_one_range(
        tmp_path, capsys):
    from napari_fmbff.cli.train import _volume_items

    root = nnunet(tmp_path / "data")
    out = tmp_path / "vol.safetensors"
    rc = main(["train", str(root), "-o", str(out), "--normalize", "volume", *FAST])
    assert rc == 0, capsys.readouterr().err
    norm = read_metadata(out)["normalization"]
    assert norm["scope"] == "volume" and norm["mode"] != "fixed"
    # The slices of one volume share that volume's range; the two volumes' ranges differ.
    items = _volume_items(find_pairs(root), Normalization(mode="percentile", scope="volume"),
                          show=False)
    ranges = {g: {i.intensity_range for i in items if i.group == g} for g in ("mr_a", "mr_b")}
    assert all(len(r) == 1 for r in ranges.values()) and ranges["mr_a"] != ranges["mr_b"]


# ---- evaluate: 3D metrics, DICOM series ------------------------------------------------------

def _threshold_net():
    """A stand-in network: lesion where the (unit-range) intensity is above 0.5."""
    import torch

    class Threshold(torch.nn.Module):
        def forward(self, x):
            return 20.0 * (x[:, :1] - 0.5)

    return Threshold()


def test_volume_metrics_are_over_the_whole_volume_not_a_mean_of_slices():
    from napari_fmbff.training.evaluation import evaluate_volumes
    from napari_fmbff.training.metrics import confusion

    truth = np.zeros((3, 32, 32), np.uint8)
    truth[0, 4:20, 4:20] = 1            # a big lesion found exactly
    truth[1, 2:4, 2:4] = 1              # a small one missed
    pred = truth.copy()
    pred[1] = 0
    pred[2, 10:12, 10:12] = 1           # a false positive on a lesion-free slice
    pair = VolumePair("v", pred.astype(np.float32), truth, (1.0, 1.0, 1.0), Path("v"), Path("v"))
    setting = Normalization(mode="fixed", low=0.0, high=1.0, mean=(0, 0, 0), std=(1, 1, 1))
    rows, summary = evaluate_volumes(_threshold_net(), setting, [pair], device="cpu", tile_size=32)
    expected = confusion(pred, truth).scores()
    assert rows[0]["dice"] == pytest.approx(expected["dice"]) and rows[0]["slices"] == 3
    per_slice = np.mean([confusion(p, t).scores()["dice"] for p, t in zip(pred, truth)])
    assert abs(rows[0]["dice"] - per_slice) > 0.1 and summary["n"] == 1


def test_a_dicom_series_folder_pairs_with_a_nifti_mask(tmp_path, tiny_model, capsys):
    pydicom = pytest.importorskip("pydicom")
    from pydicom.data import get_testdata_file

    from napari_fmbff.data.medical import read_volume, write_nifti_labels

    src = Path(get_testdata_file("CT_small.dcm"))
    z0 = float(pydicom.dcmread(src).ImagePositionPatient[2])
    series = tmp_path / "ct" / "images" / "patient7"
    series.mkdir(parents=True)
    for k in range(3):
        s = pydicom.dcmread(src)
        s.ImagePositionPatient = [*[float(v) for v in s.ImagePositionPatient[:2]], z0 + 5.0 * k]
        s.save_as(series / f"{k}.dcm")
    volume = read_volume(series)
    mask = np.zeros(volume.data.shape, np.uint8)
    mask[1, 40:70, 50:90] = 1
    write_nifti_labels(tmp_path / "ct" / "masks" / "patient7.nii.gz", mask, volume.affine)
    found = find_pairs(tmp_path / "ct")
    assert found.layout == "nifti volumes" and found.pairs[0][0].name == "patient7"
    (pair,) = iter_volume_pairs(found)
    np.testing.assert_array_equal(pair.mask, mask)
    # The same mask as a converter writes it (RAS affine, x reversed in the file): same voxels.
    ras = np.diag([-1.0, -1.0, 1.0, 1.0]) @ volume.affine
    flip_x = np.eye(4)
    flip_x[2, 2], flip_x[2, 3] = -1, mask.shape[2] - 1          # (z, y, x') -> (z, y, x)
    swap = np.eye(4)[[2, 1, 0, 3]]                               # (i, j, k) -> (z, y, x)
    _save(tmp_path / "ras.nii.gz", np.transpose(mask[:, :, ::-1], (2, 1, 0)),
          ras @ flip_x @ swap)
    np.testing.assert_array_equal(load_volume_pair(series, tmp_path / "ras.nii.gz").mask, mask)
    assert main(["evaluate", str(tmp_path / "ct"), "-m", tiny_model, "--tile-size", "64",
                 "--device", "cpu", "--window", "soft-tissue"]) == 0
    assert "patient7" in capsys.readouterr().out


# ---- bad inputs: one line, exit 2 -------------------------------------------------------------

def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "error" in line]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_a_mask_volume_of_another_shape_is_one_line_naming_it(tmp_path, tiny_model, capsys):
    root = nnunet(tmp_path / "data")
    data, affine, mask = anatomical()
    _save(root / "labelsTr" / "mr_a.nii.gz", mask[:, :, :20], affine)
    assert main(["train", str(root), "-o", str(tmp_path / "m.safetensors"), *FAST]) == 2
    line = _one_line_error(capsys)
    assert "mr_a.nii.gz" in line and "20" in line and "resample" in line
    assert not (tmp_path / "m.safetensors").exists()
    assert main(["evaluate", str(root), "-m", tiny_model, "--device", "cpu"]) == 2
    assert "mr_a.nii.gz" in _one_line_error(capsys)


def test_images_without_masks_and_4d_images_are_one_line(tmp_path, tiny_model, capsys):
    data, affine, mask = anatomical()
    _save(tmp_path / "a" / "imagesTr" / "case_0000.nii.gz", data, affine)
    _save(tmp_path / "a" / "labelsTr" / "other.nii.gz", mask, affine)
    assert main(["train", str(tmp_path / "a"), "-o", str(tmp_path / "m.safetensors"),
                 *FAST]) == 2
    line = _one_line_error(capsys)
    assert "nnU-Net" in line and "case_0000.nii.gz and case.nii.gz" in line
    four_d = nib.load(str(NIB_DATA / "example4d.nii.gz"))
    _save(tmp_path / "b" / "imagesTr" / "t.nii.gz", np.asanyarray(four_d.dataobj), four_d.affine)
    _save(tmp_path / "b" / "labelsTr" / "t.nii.gz", np.zeros(four_d.shape[:3], np.uint8),
          four_d.affine)
    assert main(["evaluate", str(tmp_path / "b"), "-m", tiny_model, "--device", "cpu"]) == 2
    line = _one_line_error(capsys)
    assert "t.nii.gz" in line and "4D" in line
    # A bad --window is refused before any data is read.
    assert main(["train", str(tmp_path / "b"), "-o", str(tmp_path / "w.safetensors"),
                 "--window", "liver"]) == 2
    assert "lung, soft-tissue" in _one_line_error(capsys)
