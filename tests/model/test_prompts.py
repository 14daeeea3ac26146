"""Prompts: the maps (numpy), simulated training prompts, and the network's prompt input."""

import copy
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import tiny_config
from napari_fmbff import FMBFFNet, load_model, save_model
from napari_fmbff.model import (
    PROMPT_CHANNELS,
    ModelConfig,
    PromptSampling,
    prompt_maps,
    simulate_prompts,
    with_prompts,
)

# ---- the maps ----------------------------------------------------------------------------


def test_box_map_covers_exactly_the_box():
    maps = prompt_maps((50, 60), boxes=[(10, 20, 30, 40)])
    assert maps.shape == (3, 50, 60) and maps.dtype == np.float32
    want = np.zeros((50, 60), bool)
    want[20:41, 10:31] = True  # columns 10..30 (x), rows 20..40 (y), pixel centres inside
    assert np.array_equal(maps[0] == 1, want) and set(np.unique(maps[0])) == {0.0, 1.0}
    assert not maps[1:].any()
    # Either corner first; napari's pixel-edge coordinates give the same pixels.
    assert np.array_equal(prompt_maps((50, 60), boxes=[(30, 40, 10, 20)]), maps)
    assert np.array_equal(prompt_maps((50, 60), boxes=[(9.5, 19.5, 30.5, 40.5)]), maps)
    # Partly outside: clipped to the image.
    edge = prompt_maps((50, 60), boxes=[(-20, -5, 4, 3)])[0]
    assert edge[:4, :5].all() and edge.sum() == 20


def test_clicks_lie_where_asked():
    maps = prompt_maps((64, 64), points=[(10, 50, True), (40, 5, False), (60, 60)], radius=3)
    pos, neg = maps[1], maps[2]
    assert pos[50, 10] == 1 and pos[60, 60] == 1 and neg[5, 40] == 1
    assert pos[5, 40] == 0 and neg[50, 10] == 0 and not maps[0].any()
    rows, cols = np.nonzero(neg)
    assert np.hypot(rows - 5, cols - 40).max() <= 3
    assert neg.sum() == 29  # the pixels within 3 px of the centre
    assert maps.min() >= 0 and maps.max() <= 1


@pytest.mark.parametrize("box,match", [
    ((100, 10, 120, 20), "outside the 60 x 50 image"),
    ((-30, -30, -1, -1), "outside"),
    ((10, 10, 10, 30), "zero area"),
    ((10, 20, 30, 20), "zero area"),
    ((10.2, 10.2, 10.8, 10.8), "no pixel centre"),
    ((1, 2, 3), "4 finite numbers"),
    ((1, 2, float("nan"), 4), "4 finite numbers"),
])
def test_bad_boxes_are_refused_in_one_line(box, match):
    with pytest.raises(ValueError, match=match) as err:
        prompt_maps((50, 60), boxes=[box])
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("point,match", [
    ((60, 10, True), "outside the 60 x 50 image"),
    ((-1, 10), "outside"),
    ((5, 49.6, False), "outside"),
    ((5, 5, "neg"), "positive"),
    ((5,), "x, y"),
])
def test_bad_clicks_are_refused_in_one_line(point, match):
    with pytest.raises(ValueError, match=match) as err:
        prompt_maps((50, 60), points=[point])
    assert "\n" not in str(err.value)


def test_maps_module_loads_no_torch():
    code = ("import sys; from napari_fmbff.model.prompts import prompt_maps; "
            "prompt_maps((8, 8), [(1, 1, 4, 4)]); assert 'torch' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


# ---- simulated prompts -------------------------------------------------------------------


def _two_lesions():
    mask = np.zeros((96, 96), np.uint8)
    mask[20:50, 30:70] = 1
    yy, xx = np.mgrid[:96, :96]
    mask[(yy - 75) ** 2 + (xx - 20) ** 2 <= 36] = 1
    return mask


def test_simulated_box_contains_most_of_its_lesion():
    mask, rng = _two_lesions(), np.random.default_rng(0)
    seen = 0
    for _ in range(40):
        s = simulate_prompts(mask, rng, PromptSampling(p_none=0.0, p_box=1.0))
        assert len(s.boxes) == 1 and s.maps.shape == (3, 96, 96)
        target = s.target
        assert target.any() and not (target & (mask == 0)).any()
        # The target is one lesion, not both.
        assert target.sum() in (30 * 40, int(((np.mgrid[:96, :96][0] - 75) ** 2
                                              + (np.mgrid[:96, :96][1] - 20) ** 2 <= 36).sum()))
        inside = (s.maps[0] == 1) & target
        assert inside.sum() >= 0.8 * target.sum()
        assert (s.maps[0] == 1).sum() <= 2.0 * target.sum() + 400
        seen += int(target.sum() == 30 * 40)
    assert 5 < seen < 35  # both lesions get prompted


def test_simulated_clicks_fall_in_the_lesion_or_near_it_outside():
    mask, rng = _two_lesions(), np.random.default_rng(1)
    n_pos = n_neg = 0
    for _ in range(60):
        s = simulate_prompts(mask, rng, PromptSampling(p_none=0.0, p_box=0.0))
        assert s.points and s.points[0][2] is True  # no box: the first click is positive
        for x, y, positive in s.points:
            r, c = int(y), int(x)
            if positive:
                n_pos += 1
                assert s.target[r, c]
            else:
                n_neg += 1
                assert mask[r, c] == 0
                rows, cols = np.nonzero(s.target)
                assert rows.min() - 20 <= r <= rows.max() + 20
                assert cols.min() - 20 <= c <= cols.max() + 20
        assert s.maps[1].any() and not s.maps[0].any()
    assert n_pos and n_neg


def test_simulated_no_prompt_some_of_the_time_and_for_empty_masks():
    mask, rng = _two_lesions(), np.random.default_rng(2)
    runs = [simulate_prompts(mask, rng, PromptSampling(p_none=0.3)) for _ in range(200)]
    empty = [s for s in runs if not s.boxes and not s.points]
    assert 30 < len(empty) < 90
    assert all(not s.maps.any() and np.array_equal(s.target, mask != 0) for s in empty)
    blank = simulate_prompts(np.zeros((32, 32)), rng, PromptSampling(p_none=0.0))
    assert not blank.maps.any() and not blank.target.any()


def test_simulated_clicks_go_to_the_prediction_errors():
    mask, rng = _two_lesions(), np.random.default_rng(3)
    prediction = mask.astype(bool).copy()
    prediction[20:50, 30:40] = False   # a miss inside the big lesion
    prediction[55:58, 30:70] = True    # a false alarm just below it
    for _ in range(40):
        s = simulate_prompts(mask, rng, PromptSampling(p_none=0.0, p_box=0.0),
                             prediction=prediction)
        if s.target.sum() != 30 * 40:
            continue
        for x, y, positive in s.points:
            r, c = int(y), int(x)
            assert (20 <= r < 50 and 30 <= c < 40) if positive else (55 <= r < 58)


# ---- the network's prompt input -----------------------------------------------------------


def _inputs(batch=2, size=64, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 3, size, size, generator=g)
    maps = np.stack([prompt_maps((size, size), boxes=[(8 + 4 * i, 10, 40, 50)],
                                 points=[(20, 30, True), (50, 55, False)])
                     for i in range(batch)])
    return x, torch.from_numpy(maps)


def test_config_field_is_checked_and_travels():
    assert ModelConfig().prompts is False
    cfg = tiny_config(prompts=True)
    assert ModelConfig.from_json(cfg.to_json()) == cfg
    with pytest.raises(ValueError, match="prompts must be true or false"):
        tiny_config(prompts="yes")


@pytest.mark.parametrize("encoder", ["test_efficientnet", "test_resnet"])
def test_prompt_path_starts_as_a_no_op(encoder):
    torch.manual_seed(0)
    plain = FMBFFNet(tiny_config(encoder=encoder)).eval()
    prompted = FMBFFNet(tiny_config(encoder=encoder, prompts=True)).eval()
    missing, unexpected = prompted.load_state_dict(plain.state_dict(), strict=False)
    assert missing == ["prompt_conv.weight"] and unexpected == []
    assert PROMPT_CHANNELS == ("box", "positive", "negative")
    x, maps = _inputs()
    with torch.no_grad():
        ref = plain(x)
        assert torch.equal(prompted(x), ref)
        assert torch.equal(prompted(x, maps), ref)
        assert torch.equal(prompted(x, torch.zeros_like(maps)), ref)


def test_prompt_path_learns_and_then_the_output_depends_on_the_prompt():
    torch.manual_seed(0)
    net = FMBFFNet(tiny_config(prompts=True)).train()
    x, maps = _inputs()
    target = maps[:, :1]  # "segment the box"
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(3):
        opt.zero_grad()
        torch.nn.functional.binary_cross_entropy_with_logits(net(x, maps), target).backward()
        opt.step()
    assert net.prompt_conv.weight.abs().sum() > 0
    net.eval()
    with torch.no_grad():
        with_box, without = net(x, maps), net(x)
        other = net(x, maps.flip(-1))
    assert (with_box - without).abs().max() > 1e-3
    assert (with_box - other).abs().max() > 1e-3


def test_gradient_reaches_the_prompt_conv():
    torch.manual_seed(0)
    net = FMBFFNet(tiny_config(prompts=True)).train()
    x, maps = _inputs()
    net(x, maps).square().mean().backward()
    assert net.prompt_conv.weight.grad.abs().sum() > 0


def test_bad_prompt_tensors_are_refused(tiny_net):
    x, maps = _inputs()
    with pytest.raises(ValueError, match="takes no prompts; add the prompt input"):
        tiny_net(x, maps)
    prompted = FMBFFNet(tiny_config(prompts=True)).eval()
    with pytest.raises(ValueError, match=r"must have shape \(2, 3, 64, 64\)"):
        prompted(x, maps[:, :2])
    with pytest.raises(ValueError, match="must have shape"):
        prompted(x, maps[:1])
    # A refused call leaves nothing behind: the next call without prompts is plain.
    with torch.no_grad():
        assert torch.equal(prompted(x), prompted(x, torch.zeros_like(maps)))


def test_with_prompts_keeps_outputs_and_a_deep_copy_works(tiny_net):
    x, maps = _inputs()
    with torch.no_grad():
        before = tiny_net(x)
    net = with_prompts(tiny_net)
    assert net is tiny_net and net.config.prompts and with_prompts(net) is net
    assert sum(1 for n, _ in net.named_parameters() if n.startswith("prompt_conv")) == 1
    with torch.no_grad():
        assert torch.equal(net(x, maps), before)
        net.prompt_conv.weight.normal_()
        changed = net(x, maps)
        twin = copy.deepcopy(net)
        assert torch.equal(twin(x, maps), changed)
        assert torch.equal(net(x, maps), changed)  # the copy's hook feeds the copy


def test_old_files_load_without_prompts_and_prompt_weights_round_trip(tiny_net, tmp_path):
    x, maps = _inputs()
    with torch.no_grad():
        before = tiny_net(x)
    old = save_model(tiny_net, tmp_path / "old.safetensors")
    loaded = load_model(old)
    assert loaded.config.prompts is False and loaded.prompt_conv is None
    with torch.no_grad():
        assert torch.equal(loaded(x), before)
    # Fine-tune from it with prompts: the path is added, trained, saved and read back.
    net = with_prompts(loaded)
    with torch.no_grad():
        net.prompt_conv.weight.uniform_(-0.1, 0.1)
        after = net(x, maps)
    new = load_model(save_model(net, tmp_path / "new.safetensors"))
    assert new.config.prompts is True
    assert torch.equal(new.prompt_conv.weight, net.prompt_conv.weight)
    with torch.no_grad():
        assert torch.allclose(new(x, maps), after, atol=1e-6)
        assert torch.allclose(new(x), before, atol=1e-6)
