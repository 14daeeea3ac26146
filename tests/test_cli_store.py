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


def ct_files(folder, seed=0):
    """A NIfTI volume and its partial labels (slice 1), as fmbff propagate takes them."""
    volume, disk = scan(seed)
    affine = np.diag([0.7, 0.7, 2.5, 1.0])
    folder.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(volume.transpose(2, 1, 0), affine), str(folder / "ct.nii.gz"))
    labels = np.zeros(volume.shape, np.uint8)
    labels[1][disk] = 1
    nib.save(nib.Nifti1Image(labels.transpose(2, 1, 0), affine), str(folder / "seg.nii.gz"))
    return folder / "ct.nii.gz", folder / "seg.nii.gz", affine


def test_propagate_with_store_adds_the_scan_once(tmp_path, tiny_model, models_dir, capsys):
    ct, seg, affine = ct_files(tmp_path)
    store = tmp_path / "store"
    args = ["propagate", str(ct), "--labels", str(seg), "--model", tiny_model, "--epochs", "1",
            "--store", str(store)]
    assert main([*args, "-o", str(tmp_path / "out1")]) == 0
    err = capsys.readouterr().err
    grey = store / "grey"  # one store per kind of image: a CT volume is grey
    assert f"corrections store {grey} (grey images); training starts from 'tiny'" in err
    assert "the store's latest model now (the first model trained on this store)" in err
    (case,) = open_store(grey).cases()
    assert case.slices == [1] and case.entry.model == tiny_model
    stored = nib.load(grey / "imagesTr" / f"{case.id}_0000.nii.gz")
    np.testing.assert_allclose(stored.affine, affine)  # on the scan's grid
    first = open_store(grey).latest_model
    assert first is not None
    # The same scan again: its case is updated; training starts from --model, not from the
    # store's latest model (what the user named is what is used).
    assert main([*args, "-o", str(tmp_path / "out2")]) == 0
    (again,) = open_store(grey).cases()
    assert again.entry.identity == case.entry.identity and again.id != case.id
    record = json.loads((tmp_path / "out2" / "ct.json").read_text())
    assert record["base_model"] == tiny_model


def test_two_propagations_at_once_both_join_the_store(tmp_path, tiny_model, models_dir):
    """Two fmbff propagate --store S on two patients at the same time (two processes): both
    exit 0 and the store holds both cases with their files."""
    import subprocess
    import sys

    store = tmp_path / "store"
    runs = []
    for seed in (0, 1):
        ct, seg, _ = ct_files(tmp_path / f"p{seed}", seed)
        runs.append(subprocess.Popen(
            [sys.executable, "-c", "import sys; from napari_fmbff.cli import main; "
             "sys.exit(main(sys.argv[1:]))", "propagate", str(ct), "--labels", str(seg),
             "--model", tiny_model, "--epochs", "1", "--device", "cpu", "--store", str(store),
             "-o", str(tmp_path / f"out{seed}")],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    for run in runs:
        _out, err = run.communicate(timeout=600)
        assert run.returncode == 0, err
    grey = open_store(store / "grey")
    assert len(grey.cases()) == 2 and grey.record.pending == []
    for case in grey.cases():
        _image, labels, _ = grey.read_case(case.id)
        assert case.slices == [1] and labels[1].any()
    assert len(grey.record.models) == 2


def test_propagate_says_which_lost_case_it_dropped(tmp_path, tiny_model, models_dir, capsys):
    grey = open_store(tmp_path / "store" / "grey")
    volume, disk = scan(5)
    labels = np.zeros(volume.shape, np.uint8)
    labels[1][disk] = 1
    lost = grey.add_case(volume, labels, [1], name="gone")
    for path in (grey.path / "imagesTr").glob(f"{lost}_*"):
        path.unlink()
    ct, seg, _ = ct_files(tmp_path / "in")
    assert main(["propagate", str(ct), "--labels", str(seg), "--model", tiny_model, "--epochs",
                 "1", "--store", str(tmp_path / "store"), "-o", str(tmp_path / "out")]) == 0
    err = capsys.readouterr().err
    (line,) = [text for text in err.splitlines() if "fmbff: warning:" in text]
    assert lost in line and "gone" in line and "dropped" in line
    assert [c.name for c in open_store(grey.path).cases()] == ["ct"]
