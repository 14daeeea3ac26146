import csv

import numpy as np
import pytest
import torch

from conftest import disks, tiny_config
from napari_fmbff import FMBFFNet, load_model
from napari_fmbff.cli import main
from napari_fmbff.data.datasets import find_pairs, load_mask, write_dataset
from napari_fmbff.data.image_io import write_image
from napari_fmbff.inference.progress import Cancel, drain
from napari_fmbff.model.normalization import default_normalization
from napari_fmbff.training.loop import (
    TrainConfig,
    iter_train,
    make_items,
    run_training,
    split_items,
)
from napari_fmbff.training.metrics import Counts, confusion, scores, summarize
from napari_fmbff.training.requests import RunControl


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


def _items(n, size=64, lesion=None, seed=0):
    norm = default_normalization(FMBFFNet(tiny_config()))
    pairs = disks(n, size=size, seed=seed)
    masks = [m if lesion is None or k in lesion else np.zeros_like(m)
             for k, (_, m) in enumerate(pairs)]
    return make_items([img for img, _ in pairs], masks, norm), norm


def test_split_never_cuts_an_image_and_holds_out_nothing_with_too_little_data():
    one, _ = _items(1, size=40)
    train, val = split_items(one, 0.25)
    assert val == [] and train == one and train[0].image.shape[:2] == (40, 40)
    four, _ = _items(4)
    assert split_items(four, 0.5) == (four, [])          # fewer than 5 images
    ten, _ = _items(10)
    assert split_items(ten, 0.0) == (ten, [])            # asked for no validation
    train, val = split_items(ten, 0.2, seed=3)
    assert len(val) == 2 and len(train) == 8
    assert {id(i) for i in train}.isdisjoint({id(i) for i in val})
    assert all(i.image.shape[:2] == (64, 64) for i in train + val)
    # One lesion among six images: whichever side it lands on, the other side has none, so
    # nothing is held out (a lesion-free Dice says nothing; the only lesion is never taken).
    for seed in range(4):
        six, _ = _items(6, lesion={2})
        assert split_items(six, 0.2, seed=seed) == (six, [])


def test_without_validation_a_fixed_budget_trains_on_every_pixel_and_keeps_the_last_weights():
    torch.manual_seed(0)
    net = FMBFFNet(tiny_config())
    before = {k: v.clone() for k, v in net.state_dict().items()}
    items, norm = _items(1, size=64)
    train, val = split_items(items, 0.2)
    cfg = TrainConfig(epochs=6, batch_size=4, tile_size=64, lr=5e-3, device="cpu",
                      min_steps_per_epoch=4)
    progress = []
    result = drain(iter_train(net, train, val, cfg, norm), progress.append)
    assert {p.stage for p in progress} == {"train"}
    assert [(p.done, p.total) for p in progress[:2]] == [(0, 6 * 4), (1, 6 * 4)]
    assert (progress[-1].done, progress[-1].total) == (6 * 4, 6 * 4)
    events = [p.detail for p in progress]
    assert not result.validated and result.changed
    assert result.epochs_run == 6 and not result.stopped_early and result.best_epoch == 6
    epochs = [e for e in events if e.kind == "epoch"]
    assert len(epochs) == 6 and all(np.isnan(e.val_dice) for e in epochs)
    assert sum(e.kind == "step" for e in events) == 6 * 4
    assert np.isnan(result.initial_dice) and np.isnan(result.best_dice)
    assert events[0].kind == "start" and events[0].fit == result.fit_before
    # It learned the painted disk: the model now reproduces the corrections.
    assert result.fit_after > max(0.7, result.fit_before + 0.3), (result.fit_before,
                                                                   result.fit_after)
    assert any(not torch.equal(before[k], v) for k, v in result.net.state_dict().items())


def test_cancelled_in_the_first_epoch_returns_the_initial_weights_unchanged():
    torch.manual_seed(0)
    net = FMBFFNet(tiny_config())
    before = {k: v.clone() for k, v in net.state_dict().items()}
    items, norm = _items(2)
    cfg = TrainConfig(epochs=3, batch_size=2, tile_size=64, lr=1e-2, device="cpu",
                      min_steps_per_epoch=3)
    stop = Cancel()
    stop.set()
    result = run_training(net, items, [], cfg, norm, RunControl(cancel=stop))
    assert result.cancelled and result.epochs_run == 0 and not result.changed
    assert all(torch.equal(before[k], v) for k, v in result.net.state_dict().items())
    assert result.fit_after == result.fit_before


def test_validated_run_that_never_improves_reports_unchanged():
    torch.manual_seed(0)
    net = FMBFFNet(tiny_config())
    items, norm = _items(6)
    train, val = split_items(items, 0.2)
    assert val
    cfg = TrainConfig(epochs=2, batch_size=2, tile_size=64, lr=0.0, device="cpu",
                      augment=False)
    result = run_training(net, train, val, cfg, norm)
    assert result.validated and result.best_epoch == 0 and not result.changed
    assert result.initial_dice == result.best_dice


def test_small_images_get_crops_of_their_own_size_and_batches_share_a_shape():
    from napari_fmbff.training.samples import CropDataset, ShapeBatchSampler, crop_shape

    assert crop_shape((40, 40), 256) == (64, 64)
    assert crop_shape((100, 300), 256) == (128, 256)
    assert crop_shape((512, 512), 256) == (256, 256)
    small, norm = _items(3, size=40)
    big, _ = _items(2, size=100, seed=1)
    cfg = TrainConfig(tile_size=256, batch_size=3, device="cpu")
    ds = CropDataset(small + big, cfg, norm, length=30)
    loader = torch.utils.data.DataLoader(ds, batch_sampler=ShapeBatchSampler(ds, 3))
    shapes = [tuple(x.shape[-2:]) for x, _ in loader]
    assert set(shapes) == {(64, 64), (128, 128)}
    assert sum(len(b) for b in ShapeBatchSampler(ds, 3)) == 30
    # Under DDP every process gets the same number of batches, and all are dealt out.
    parts = [list(ShapeBatchSampler(ds, 4, rank=r, world_size=2)) for r in range(2)]
    assert len(parts[0]) == len(parts[1])
    assert {i for p in parts for b in p for i in b} == set(range(30))


def test_encoder_freezing_schedule():
    items, norm = _items(2)

    def run(epochs):
        torch.manual_seed(0)
        net = FMBFFNet(tiny_config())
        enc = {k: v.clone() for k, v in net.encoder.state_dict().items()}
        dec = {k: v.clone() for k, v in net.state_dict().items() if not k.startswith("encoder.")}
        cfg = TrainConfig(epochs=epochs, batch_size=2, tile_size=64, lr=1e-2, device="cpu",
                          freeze_encoder_epochs=1)
        out = run_training(net, items, [], cfg, norm).net
        enc_same = all(torch.equal(enc[k], v) for k, v in out.encoder.state_dict().items())
        dec_same = all(torch.equal(dec[k], out.state_dict()[k]) for k in dec)
        return enc_same, dec_same, all(p.requires_grad for p in out.parameters())

    assert run(1) == (True, False, True)    # epoch 1: encoder (BatchNorm too) untouched
    assert run(2) == (False, False, True)   # epoch 2: the encoder trains as well


def test_resume_without_validation(tmp_path):
    items, norm = _items(2)
    cfg = TrainConfig(epochs=2, batch_size=2, tile_size=64, lr=1e-2, device="cpu")
    states = []
    torch.manual_seed(0)
    first = run_training(FMBFFNet(tiny_config()), items, [], TrainConfig(
        **{**cfg.__dict__, "epochs": 1}), norm, RunControl(checkpoint_fn=states.append))
    torch.save(states[-1], tmp_path / "r.pt")
    state = torch.load(tmp_path / "r.pt", weights_only=True)
    assert state["validated"] is False and state["epoch"] == 1
    resumed = run_training(FMBFFNet(tiny_config()), items, [], cfg, norm,
                           RunControl(resume_state=state))
    assert resumed.epochs_run == 2 and not resumed.validated and resumed.changed
    assert resumed.fit_before == first.fit_before and len(resumed.history) == 2


def test_finetune_config_is_the_one_home_of_the_defaults():
    from dataclasses import fields

    from napari_fmbff.training.loop import FINETUNE_DEFAULTS, finetune_config

    names = {f.name for f in fields(TrainConfig)}
    assert set(FINETUNE_DEFAULTS) <= names
    assert {"epochs", "lr", "batch_size", "tile_size", "freeze_encoder",
            "val_fraction"} <= set(FINETUNE_DEFAULTS)
    cfg = finetune_config()
    assert all(getattr(cfg, k) == v for k, v in FINETUNE_DEFAULTS.items())
    assert finetune_config(epochs=3, device="cpu").epochs == 3
    with pytest.raises(TypeError):
        finetune_config(learning_rate=1.0)


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
    # Enough to beat the initial held-out Dice (a run that changes nothing saves nothing).
    rc = main(["train", str(disk_folder), "-o", str(out), "--encoder", "test_efficientnet",
               "--epochs", "3", "--batch-size", "4", "--tile-size", "64", "--lr", "3e-3",
               "--device", "cpu", "--no-vitm", "--no-biffm"])
    assert rc == 0
    cfg = load_model(out).config
    assert not cfg.vitm and not cfg.biffm and cfg.fmcab


def test_make_data_writes_a_trainable_folder(tmp_path):
    out = tmp_path / "gen"
    assert main(["make-data", "--look", "all", "-n", "2", "--size", "128", "--out", str(out)]) == 0
    found = find_pairs(out)
    assert found.layout == "kvasir" and len(found.pairs) == 6 and not found.unpaired
    assert main(["make-data", "--look", "endoscopy", "-n", "1", "--out", str(out)]) == 2


def test_augmentation_keeps_the_shape_of_non_square_crops():
    """A batch of 64 x 128 crops (a 45 x 120 px breast MR slice) stays stackable: 90-degree
    turns would make some crops 128 x 64."""
    import torch

    from napari_fmbff.training.augment import Augment

    torch.manual_seed(0)
    aug = Augment()
    shapes = {tuple(aug(torch.rand(3, 64, 128), torch.zeros(1, 64, 128))[0].shape)
              for _ in range(20)}
    assert shapes == {(3, 64, 128)}
