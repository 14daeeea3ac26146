"""Training the prompt input: simulated prompts in the crops, the corrective click, the CLI."""

import numpy as np
import pytest
import torch

from conftest import disks, tiny_config
from napari_fmbff import FMBFFNet, load_model
from napari_fmbff.cli import main
from napari_fmbff.data.datasets import write_dataset
from napari_fmbff.model.normalization import default_normalization
from napari_fmbff.model.prompts import add_click, corrective_click, prompt_maps
from napari_fmbff.training.loop import TrainConfig, make_items, run_training
from napari_fmbff.training.samples import CropDataset


def _items(n=4):
    pairs = disks(n, size=64)
    norm = default_normalization("tf_efficientnetv2_b0")
    return make_items([p[0] for p in pairs], [p[1] for p in pairs], norm), norm


def test_corrective_click_goes_in_the_larger_error_at_its_deepest_pixel():
    target = np.zeros((20, 20), bool)
    target[2:12, 2:12] = True
    pred = np.zeros_like(target)
    pred[2:12, 2:5] = True                       # misses columns 5..11: 70 px
    pred[15:17, 15:17] = True                    # a 4 px false alarm
    x, y, positive = corrective_click(target, pred)
    assert positive and 7 <= x <= 9 and 5 <= y <= 8  # inside the miss, far from its edges
    x, y, positive = corrective_click(target & ~target, pred)  # all of pred is wrong
    assert not positive and pred[int(y), int(x)]
    assert corrective_click(target, target) is None


def test_add_click_draws_on_the_right_map():
    maps = prompt_maps((16, 16))
    add_click(maps, (8.0, 8.0, False))
    assert maps[2, 8, 8] == 1 and maps[1].sum() == 0 and maps[0].sum() == 0


def test_crops_carry_prompts_and_the_prompted_lesion_as_target():
    items, norm = _items()
    torch.manual_seed(0)
    cfg = TrainConfig(tile_size=64, prompts=True, no_prompt_fraction=0.0, augment=False)
    x, y, maps = CropDataset(items, cfg, norm, 8)[0]
    assert maps.shape == (3, 64, 64) and maps.amax() == 1
    assert y.shape == (1, 64, 64) and y.sum() > 0
    # a box or a positive click lies on the target's lesion
    assert (maps[0] * y[0]).sum() > 0 or (maps[1] * y[0]).sum() > 0
    cfg = TrainConfig(tile_size=64, prompts=True, no_prompt_fraction=1.0, augment=False)
    assert CropDataset(items, cfg, norm, 8)[0][2].sum() == 0
    assert len(CropDataset(items, TrainConfig(tile_size=64), norm, 8)[0]) == 2


def test_training_with_prompts_gives_a_network_the_prompt_path_and_trains_it():
    items, norm = _items()
    net = FMBFFNet(tiny_config())
    assert net.prompt_conv is None
    cfg = TrainConfig(epochs=2, batch_size=2, tile_size=64, val_fraction=0, prompts=True,
                      no_prompt_fraction=0.2, steps_per_epoch=4, device="cpu")
    result = run_training(net, items, [], cfg, norm)
    assert result.net.config.prompts and result.net.prompt_conv is not None
    assert result.net.prompt_conv.weight.abs().sum() > 0   # it left zero: it learned


def test_fmbff_train_prompts_saves_a_promptable_model(tmp_path, capsys):
    data = write_dataset(tmp_path / "data", disks(4, size=64))
    out = tmp_path / "p.safetensors"
    code = main(["train", str(data), "--out", str(out), "--encoder", "tf_efficientnetv2_b0",
                 "--epochs", "1", "--batch-size", "2", "--tile-size", "64", "--val-fraction", "0",
                 "--steps-per-epoch", "2", "--device", "cpu", "--prompts",
                 "--no-prompt-fraction", "0.5"])
    assert code == 0, capsys.readouterr()
    net = load_model(out)
    assert net.config.prompts
    assert net.metadata["provenance"]["recipe"]["prompts"] is True


@pytest.mark.parametrize("value", [-0.1, 1.5])
def test_no_prompt_fraction_is_checked(value):
    with pytest.raises(ValueError, match="no_prompt_fraction"):
        TrainConfig(no_prompt_fraction=value)
