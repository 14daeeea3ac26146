"""fmbff train STORE and fmbff propagate --store: the corrections store from the command line."""

import json

import numpy as np
import pytest

from conftest import disk_volume
from napari_fmbff.cli import main
from napari_fmbff.data.store import open_store

nib = pytest.importorskip("nibabel")


def scan(seed=0, n=4, size=64):
    return disk_volume(n, size, seed, np.int16)


def test_train_on_a_store_records_the_model_as_its_latest(tmp_path, tiny_model, models_dir,
                                                          capsys):
    store = open_store(tmp_path / "store")
    for seed in (0, 1):
        volume, disk = scan(seed)
        labels = np.zeros(volume.shape, np.uint8)
        labels[1][disk] = 1
        store.add_case(volume, labels, [1, 2], source=f"p{seed}")
    out = tmp_path / "m.safetensors"
    assert main(["train", str(store.path), "--out", str(out), "--init", tiny_model,
                 "--epochs", "1", "--tile-size", "64", "--batch-size", "2",
                 "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    assert "2 cases, 4 corrected slices" in err and "saved" in err
    assert open_store(store.path).latest_model == out.resolve()
    assert main(["info", "--model", str(out), "--size", "64"]) == 0
    assert "trained on 2 cases, 4 corrected slices" in capsys.readouterr().out


def test_propagate_with_store_adds_the_scan_once(tmp_path, tiny_model, models_dir, capsys):
    volume, disk = scan()
    affine = np.diag([0.7, 0.7, 2.5, 1.0])
    nib.save(nib.Nifti1Image(volume.transpose(2, 1, 0), affine), str(tmp_path / "ct.nii.gz"))
    labels = np.zeros(volume.shape, np.uint8)
    labels[1][disk] = 1
    nib.save(nib.Nifti1Image(labels.transpose(2, 1, 0), affine), str(tmp_path / "seg.nii.gz"))
    store = tmp_path / "store"
    args = ["propagate", str(tmp_path / "ct.nii.gz"), "--labels", str(tmp_path / "seg.nii.gz"),
            "--model", tiny_model, "--epochs", "1", "--store", str(store)]
    assert main([*args, "-o", str(tmp_path / "out1")]) == 0
    assert "corrections store" in capsys.readouterr().err
    (case,) = open_store(store).cases()
    assert case.slices == [1] and case.record["model"] == tiny_model
    stored = nib.load(store / "imagesTr" / f"{case.id}_0000.nii.gz")
    np.testing.assert_allclose(stored.affine, affine)  # on the scan's grid
    first = open_store(store).latest_model
    assert first is not None
    # The same scan again: its case is updated, and training starts from the store's model.
    assert main([*args, "-o", str(tmp_path / "out2")]) == 0
    (again,) = open_store(store).cases()
    assert again.record["identity"] == case.record["identity"] and again.id != case.id
    record = json.loads((tmp_path / "out2" / "ct.json").read_text())
    assert record["base_model"] == str(first)
