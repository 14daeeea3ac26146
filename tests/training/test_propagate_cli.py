"""fmbff propagate: a partial labels volume in, the whole labels volume and the model out."""

import json
import re

import numpy as np
import pytest
import tifffile

from conftest import disk_volume
from napari_fmbff.cli import main


def stack(seed=0, n=4, size=64):
    return disk_volume(n, size, seed, np.uint8)


def test_tiff_stack_in_tiff_labels_out_labelled_slice_verbatim(tmp_path, tiny_model, capsys):
    volume, disk = stack()
    labels = np.zeros(volume.shape, np.uint16)
    labels[2][disk] = 4
    tifffile.imwrite(tmp_path / "scan.tif", volume, photometric="minisblack")
    tifffile.imwrite(tmp_path / "partial.tif", labels, photometric="minisblack")
    out = tmp_path / "out"
    args = ["propagate", str(tmp_path / "scan.tif"), "--labels", str(tmp_path / "partial.tif"),
            "-o", str(out), "--model", tiny_model, "--epochs", "2"]
    assert main(args) == 0
    written = tifffile.imread(out / "scan.tif")
    assert written.shape == volume.shape
    np.testing.assert_array_equal(written[2], labels[2])
    err = capsys.readouterr().err
    assert "learned from slice(s) 2" in err
    assert "were not redrawn: LiteMedSAM cannot be imported" in err  # said, not hidden
    assert main(args) == 2  # never replaced without --overwrite
    assert "exists" in capsys.readouterr().err


def test_nifti_volume_gets_nifti_labels_on_its_grid_and_a_record(tmp_path, tiny_model):
    nib = pytest.importorskip("nibabel")
    volume, disk = stack()
    affine = np.diag([0.7, 0.7, 2.5, 1.0])
    # NIfTI stores (x, y, z); the plugin reads volumes as (z, y, x).
    nib.save(nib.Nifti1Image(volume.transpose(2, 1, 0).astype(np.int16), affine),
             str(tmp_path / "ct.nii.gz"))
    labels = np.zeros(volume.shape, np.uint8)
    labels[1][disk] = 1
    nib.save(nib.Nifti1Image(labels.transpose(2, 1, 0), affine), str(tmp_path / "ct_seg.nii.gz"))
    out = tmp_path / "out"
    assert main(["propagate", str(tmp_path / "ct.nii.gz"), "--labels",
                 str(tmp_path / "ct_seg.nii.gz"), "-o", str(out), "--model", tiny_model,
                 "--epochs", "2"]) == 0
    img = nib.load(str(out / "ct.nii.gz"))
    np.testing.assert_allclose(img.affine, affine)
    back = np.asarray(img.dataobj).transpose(2, 1, 0)
    np.testing.assert_array_equal(back[1], labels[1])
    record = json.loads((out / "ct.json").read_text())
    assert record["slices_labelled"] == [1] and record["base_model"] == tiny_model
    assert record["redrawn_by_litemedsam"] == []  # LiteMedSAM is made unimportable in tests
    assert record["carried_past_ends_by_litemedsam"] == []


@pytest.mark.parametrize("case, message", [
    ("empty", "no slice holds a label"),
    ("full", "every one of the 4 slices"),
    ("shape", "do not fit the image"),
    ("fraction", "whole numbers"),
    ("one-slice", "one slice"),
    ("bad-slices", "--slices"),
])
def test_what_cannot_be_propagated_is_one_line_and_writes_nothing(tmp_path, tiny_model, capsys,
                                                                  case, message):
    volume, disk = stack()
    labels = np.zeros(volume.shape, np.uint8)
    extra = []
    if case == "full":
        labels[:] = 1
    elif case == "shape":
        labels = labels[:, :32]
    elif case == "fraction":
        labels = np.full(volume.shape, 0.5, np.float32)
    elif case == "one-slice":
        volume, labels = volume[:1], labels[:1] + 1
    elif case == "bad-slices":
        extra = ["--slices", "two"]
    tifffile.imwrite(tmp_path / "scan.tif", volume, photometric="minisblack")
    tifffile.imwrite(tmp_path / "partial.tif", labels, photometric="minisblack")
    out = tmp_path / "out"
    code = main(["propagate", str(tmp_path / "scan.tif"), "--labels",
                 str(tmp_path / "partial.tif"), "-o", str(out), "--model", tiny_model, *extra])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and message in err[0], err
    assert "Traceback" not in err[0]
    assert not out.exists() or not any(out.iterdir())


def test_the_lesion_carried_past_the_model_s_end_is_named(tmp_path, tiny_model,
                                                                       capsys, litemedsam):
    """With LiteMedSAM, a model that marks nothing (threshold 1) still gets the disk carried
    from the labelled slice to its neighbours, with its id; stderr names those slices;
    --no-ends keeps them empty."""
    volume, disk = stack(n=5)                           # the same disk on every slice
    labels = np.zeros(volume.shape, np.uint16)
    labels[2][disk] = 4
    tifffile.imwrite(tmp_path / "scan.tif", volume, photometric="minisblack")
    tifffile.imwrite(tmp_path / "partial.tif", labels, photometric="minisblack")
    args = ["propagate", str(tmp_path / "scan.tif"), "--labels", str(tmp_path / "partial.tif"),
            "--model", tiny_model, "--epochs", "1", "--threshold", "1.0"]
    assert main([*args, "-o", str(tmp_path / "a")]) == 0
    err = capsys.readouterr().err
    named = re.search(r"carried the lesion past its ends to slice\(s\) ([\d, ]+): check them",
                      err)
    carried = [int(z) for z in named.group(1).split(", ")]
    # its neighbours at least (slice 0 too in float32; in bfloat16 its end rule stops at 1)
    assert {1, 3} <= set(carried) <= {0, 1, 3, 4}
    written = tifffile.imread(tmp_path / "a" / "scan.tif")
    assert all(set(np.unique(written[z])) == {0, 4} for z in carried)
    assert not written[[z for z in (0, 1, 3, 4) if z not in carried]].any()
    assert main([*args, "-o", str(tmp_path / "b"), "--no-ends"]) == 0
    assert "past its ends" not in capsys.readouterr().err
    assert not tifffile.imread(tmp_path / "b" / "scan.tif")[[0, 1, 3, 4]].any()
