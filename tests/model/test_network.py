import pytest
import torch

from conftest import tiny_config
from napari_fmbff import FMBFFNet, ModelConfig
from napari_fmbff.model import EncoderWeightsUnavailable


@pytest.mark.parametrize("size", [(32, 32), (64, 96), (160, 64)])
def test_output_shape_matches_input(tiny_net, size):
    with torch.no_grad():
        y = tiny_net(torch.randn(2, 3, *size))
    assert y.shape == (2, 1, *size)
    assert torch.isfinite(y).all()


def test_rejects_sizes_not_multiple_of_32(tiny_net):
    with pytest.raises(ValueError, match="multiples of 32"):
        tiny_net(torch.randn(1, 3, 50, 64))


def _train_steps(net, steps=3):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 64, 64)
    target = (x[:, :1] > 0).float()
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    net.train()
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(net(x), target)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def test_gradient_reaches_every_parameter():
    torch.manual_seed(0)
    net = FMBFFNet(tiny_config()).train()
    x = torch.randn(2, 3, 64, 64)
    net(x).square().mean().backward()
    dead = [n for n, p in net.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert dead == []


@pytest.mark.parametrize("flag,prefix", [
    ("fmcab", "fmcab."), ("aggregate_skips", "aggregate."), ("vitm", "vitm."),
    ("biffm", "gate_dec"),
])
def test_switching_off_a_module_removes_it_and_still_trains(flag, prefix):
    on = FMBFFNet(tiny_config())
    off = FMBFFNet(tiny_config(**{flag: False}))
    assert any(prefix in n for n, _ in on.named_parameters())
    assert not any(prefix in n for n, _ in off.named_parameters())
    assert sum(p.numel() for p in off.parameters()) < sum(p.numel() for p in on.parameters())
    losses = _train_steps(off, steps=4)
    assert losses[-1] < losses[0]


def test_all_modules_off_is_a_plain_unet_that_trains():
    net = FMBFFNet(tiny_config(fmcab=False, aggregate_skips=False, vitm=False, biffm=False))
    names = [n for n, _ in net.named_parameters()]
    assert not any(k in n for n in names for k in ("fmcab", "aggregate", "vitm", "gate_dec"))
    losses = _train_steps(net, steps=4)
    assert losses[-1] < losses[0]


def test_default_config_is_the_paper_scale():
    net = FMBFFNet(ModelConfig())
    n = sum(p.numel() for p in net.parameters())
    assert 20e6 <= n <= 80e6
    assert net.encoder.feature_info.channels() == [24, 48, 64, 160, 256]
    assert net.encoder.feature_info.reduction() == [2, 4, 8, 16, 32]


@pytest.mark.parametrize("encoder", ["test_resnet", "mobilenetv3_small_050"])
def test_other_timm_encoders_work(encoder):
    net = FMBFFNet(tiny_config(encoder=encoder)).eval()
    with torch.no_grad():
        assert net(torch.randn(1, 3, 64, 64)).shape == (1, 1, 64, 64)


def test_unknown_encoder_is_a_clear_error():
    with pytest.raises(ValueError, match="no encoder named"):
        FMBFFNet(tiny_config(encoder="no_such_encoder_xyz"))


def test_imagenet_weights_offline_fail_with_guidance(monkeypatch, tmp_path):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # huggingface_hub reads the variable once, when it is imported (timm imports it): without
    # this the test waits ~45 s on the network's timeouts instead of being offline.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(EncoderWeightsUnavailable, match="encoder_weights=None"):
        FMBFFNet(ModelConfig(encoder="tf_efficientnetv2_b0", encoder_weights="imagenet"))


def test_config_round_trips_through_json():
    cfg = tiny_config(vitm=False, dropout=0.1)
    assert ModelConfig.from_json(cfg.to_json()) == cfg
    with pytest.raises(ValueError, match="unknown ModelConfig fields"):
        ModelConfig.from_dict({"encoder": "x", "bogus": 1})


def test_one_refine_conv_is_a_lighter_decoder_and_old_configs_keep_two():
    two, one = FMBFFNet(tiny_config()), FMBFFNet(tiny_config(refine_convs=1))
    assert sum(p.numel() for p in one.parameters()) < sum(p.numel() for p in two.parameters())
    assert one(torch.zeros(1, 3, 64, 64)).shape == (1, 1, 64, 64)
    old = {k: v for k, v in tiny_config().to_dict().items() if k != "refine_convs"}
    assert ModelConfig.from_dict(old).refine_convs == 2  # checkpoints from before the field
    with pytest.raises(ValueError, match="refine_convs"):
        tiny_config(refine_convs=3)


def test_fused_biffm_equals_eq15_as_written():
    # forward folds the 1x3 / 3x1 paths into one depthwise 3x3 conv and the channel shuffle
    # into the fuse conv's weights; reference_forward is the formula step by step.
    from napari_fmbff.model.blocks import BiFFM

    torch.manual_seed(0)
    block = BiFFM(24, 16, 32)
    for m in block.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2)
    for p in block.parameters():
        p.data.normal_()
    dec, skip = torch.randn(2, 24, 20, 12), torch.randn(2, 16, 20, 12)
    for mode in (False, True):
        block.train(mode)
        np_fast, np_ref = block(dec, skip), block.reference_forward(dec, skip)
        assert torch.allclose(np_fast, np_ref, atol=1e-4), (np_fast - np_ref).abs().max()
    assert "unshuffle" not in block.state_dict()  # checkpoints keep their layout


def test_head_runs_before_the_last_upsample_with_the_same_logits(tiny_net):
    import torch.nn.functional as F

    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        feats = tiny_net.encoder(x)
        feats = [feats[i] for i in tiny_net.feature_indices]
        y = tiny_net.decoder(tiny_net.vitm(feats[4]), tiny_net.skip_features(feats[:4]))
        upsample_then_head = tiny_net.head(F.interpolate(y, scale_factor=2.0, mode="bilinear"))
        assert torch.allclose(tiny_net(x), upsample_then_head, atol=1e-5)
