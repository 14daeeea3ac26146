import csv

import numpy as np
import pytest
import torch

from conftest import tiny_config
from napari_fmbff import FMBFFNet, load_model
from napari_fmbff.cli import main
from napari_fmbff.datasets import find_pairs, load_mask, write_dataset
from napari_fmbff.image_io import write_image
from napari_fmbff.inference import default_normalization
from napari_fmbff.metrics import Counts, confusion, scores, summarize
from napari_fmbff.training import TrainConfig, make_items, run_training, split_items


def disks(n, size=96, seed=0):
    """Bright disks on a noisy background: easy, so a few epochs must learn them."""
    rng = np.random.default_rng(seed)
    out = []
    yy, xx = np.mgrid[:size, :size]
    for _ in range(n):
        margin = min(25, size // 3)
        c, r = rng.uniform(margin, size - margin, 2), rng.uniform(10, min(20, margin))
        mask = np.hypot(yy - c[0], xx - c[1]) < r
        img = (rng.normal(80, 20, (size, size)) + mask * 70).clip(0, 255).astype(np.uint8)
        out.append((np.stack([img] * 3, -1), mask.astype(np.uint8)))
    return out


@pytest.fixture
def disk_folder(tmp_path):
    return write_dataset(tmp_path / "data", disks(12))


# ---- metrics --------------------------------------------------------------------------------

def test_metrics_match_hand_computed_values():
    pred = np.array([[1, 1, 0, 0]])
    truth = np.array([[1, 0, 1, 0]])
    c = confusion(pred, truth)
    assert (c.tp, c.fp, c.fn, c.tn) == (1, 1, 1, 1)
    s = scores(pred, truth)
    assert s["dice"] == pytest.approx(0.5) and s["jaccard"] == pytest.approx(1 / 3)
    assert s["precision"] == pytest.approx(0.5) and s["recall"] == pytest.approx(0.5)
    assert s["accuracy"] == pytest.approx(0.5)


def test_empty_vs_empty_is_perfect_and_one_sided_is_zero():
    empty = np.zeros((4, 4))
    assert scores(empty, empty)["dice"] == 1.0 and scores(empty, empty)["jaccard"] == 1.0
    full = np.ones((4, 4))
    assert scores(empty, full)["dice"] == 0.0 and scores(full, empty)["dice"] == 0.0


def test_mean_over_images_differs_from_pooled():
    big = confusion(np.ones((10, 10)), np.ones((10, 10)))           # dice 1, 100 px
    small = confusion(np.array([[1, 0]]), np.array([[0, 1]]))       # dice 0, 2 px
    s = summarize([big, small])
    assert s["mean"]["dice"] == pytest.approx(0.5)
    assert s["pooled"]["dice"] == pytest.approx(200 / 202)
    assert s["n"] == 2 and s["std"]["dice"] == pytest.approx(0.5)
    assert isinstance(big + small, Counts)


# ---- layouts --------------------------------------------------------------------------------

def _touch(path, mask=False):
    arr = np.zeros((8, 8), np.uint8)
    arr[2:4, 2:4] = 255 if mask else 100
    write_image(path, arr)


def test_layouts_are_detected_and_unpaired_files_reported(tmp_path):
    kv = tmp_path / "kvasir"
    for stem in ("a", "b"):
        _touch(kv / "images" / f"{stem}.png")
    _touch(kv / "masks" / "a.png", True)
    found = find_pairs(kv)
    assert found.layout == "kvasir" and len(found.pairs) == 1
    assert [p.name for p in found.unpaired] == ["b.png"] and "b.png" in found.describe()

    cvc = tmp_path / "cvc"
    _touch(cvc / "Original" / "1.tif")
    _touch(cvc / "Ground Truth" / "1.tif", True)
    assert find_pairs(cvc).layout == "cvc-clinicdb"

    isic = tmp_path / "isic"
    _touch(isic / "ISIC-2017_Training_Data" / "ISIC_0001.jpg")
    _touch(isic / "ISIC-2017_Training_Part1_GroundTruth" / "ISIC_0001_segmentation.png", True)
    found = find_pairs(isic)
    assert found.layout == "isic" and found.pairs[0][0].name == "ISIC_0001.jpg"

    busi = tmp_path / "busi" / "benign"
    _touch(busi / "benign (1).png")
    _touch(busi / "benign (1)_mask.png", True)
    m2 = np.zeros((8, 8), np.uint8)
    m2[6:8, 6:8] = 255
    write_image(busi / "benign (1)_mask_1.png", m2)
    found = find_pairs(tmp_path / "busi")
    assert found.layout == "busi" and len(found.pairs[0][1]) == 2
    merged = load_mask(found.pairs[0][1])
    assert merged.sum() == 8  # both masks merged

    with pytest.raises(ValueError, match="no known layout"):
        empty = tmp_path / "nothing"
        _touch(empty / "x.png")
        find_pairs(empty)


# ---- the loop -------------------------------------------------------------------------------

def test_training_learns_and_keeps_the_best_epoch():
    torch.manual_seed(0)
    net = FMBFFNet(tiny_config())
    norm = default_normalization(net)
    imgs, masks = zip(*disks(16))
    train, val = split_items(make_items(imgs, masks, norm), 0.25)
    cfg = TrainConfig(epochs=8, batch_size=4, tile_size=64, lr=3e-3, device="cpu")
    result = run_training(net, train, val, cfg, norm)
    assert result.best_dice > result.initial_dice + 0.3
    assert result.best_dice == max(h["val_dice"] for h in result.history)
    assert len(result.history) == result.epochs_run


def test_bad_training_input_is_explained():
    norm = default_normalization(FMBFFNet(tiny_config()))
    img = np.zeros((64, 64), np.uint8)
    with pytest.raises(ValueError, match="does not match"):
        make_items([img], [np.zeros((32, 64))], norm)
    with pytest.raises(ValueError, match="no lesion pixels"):
        make_items([img], [np.zeros((64, 64))], norm)
    with pytest.raises(ValueError, match="NaN"):
        make_items([np.full((64, 64), np.nan, np.float32)], [np.ones((64, 64))], norm)


def test_single_small_image_is_split_by_area_and_padded():
    norm = default_normalization(FMBFFNet(tiny_config()))
    (img, mask), = disks(1, size=40)
    train, val = split_items(make_items([img], [mask], norm), 0.25)
    assert train[0].image.shape[0] + val[0].image.shape[0] == 40
    net = FMBFFNet(tiny_config())
    cfg = TrainConfig(epochs=1, batch_size=2, tile_size=64, device="cpu")
    result = run_training(net, train, val, cfg, norm)
    assert 0 <= result.best_dice <= 1


# ---- command line ---------------------------------------------------------------------------

def test_fmbff_train_then_evaluate(disk_folder, tmp_path, capsys):
    out = tmp_path / "m.safetensors"
    rc = main(["train", str(disk_folder), "--out", str(out), "--encoder", "test_efficientnet",
               "--epochs", "6", "--batch-size", "4", "--tile-size", "64", "--lr", "3e-3",
               "--device", "cpu"])
    assert rc == 0
    net = load_model(out)
    prov = net.metadata["provenance"]
    assert prov["layout"] == "kvasir" and prov["n_train"] + prov["n_val"] == 12
    assert prov["best_val_dice"] > prov["initial_val_dice"] + 0.3
    rows = list(csv.DictReader(open(tmp_path / "m.log.csv")))
    assert len(rows) == prov["epochs_run"] and "val_dice" in rows[0]
    assert (tmp_path / "m.loss.png").stat().st_size > 1000
    assert not (tmp_path / "m.resume.pt").exists()
    capsys.readouterr()
    table = tmp_path / "eval.csv"
    assert main(["evaluate", str(disk_folder), "--model", str(out), "--csv", str(table),
                 "--tile-size", "64"]) == 0
    text = capsys.readouterr().out
    assert "mean+-std" in text and "pooled" in text and "Empty prediction" in text
    assert len(list(csv.DictReader(open(table)))) == 12
    # Never overwrite a model without being asked.
    assert main(["train", str(disk_folder), "--out", str(out), "--epochs", "1"]) == 2


def test_fmbff_train_resume_and_ablation_flags(disk_folder, tmp_path, capsys):
    out = tmp_path / "abl.safetensors"
    assert main(["train", str(disk_folder), "-o", str(out), "--resume"]) == 2
    assert "resume" in capsys.readouterr().err
    rc = main(["train", str(disk_folder), "-o", str(out), "--encoder", "test_efficientnet",
               "--epochs", "1", "--batch-size", "4", "--tile-size", "64", "--device", "cpu",
               "--no-vitm", "--no-biffm"])
    assert rc == 0
    cfg = load_model(out).config
    assert not cfg.vitm and not cfg.biffm and cfg.fmcab


def test_make_data_writes_a_trainable_folder(tmp_path):
    out = tmp_path / "gen"
    assert main(["make-data", "--look", "all", "-n", "2", "--size", "128", "--out", str(out)]) == 0
    found = find_pairs(out)
    assert found.layout == "kvasir" and len(found.pairs) == 6 and not found.unpaired
    assert main(["make-data", "--look", "endoscopy", "-n", "1", "--out", str(out)]) == 2
