import json
import pickle

import pytest
import torch

from conftest import tiny_config
from napari_fmbff import FMBFFNet, ModelLoadError, list_models, load_model, save_model
from napari_fmbff.model.checkpoint import read_metadata
from napari_fmbff.model.registry import sanitize_name, unique_model_path


def _same_output(a, b):
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return torch.allclose(a.eval()(x), b.eval()(x), atol=1e-5)


def test_round_trip_keeps_weights_config_and_metadata(tiny_net, tmp_path):
    path = save_model(tiny_net, tmp_path / "m.safetensors",
                      metadata={"training_data": "kvasir", "metrics": {"dice": 0.9}, "tile_size": 256})
    net = load_model(path)
    assert net.config == tiny_net.config
    assert _same_output(net, tiny_net)
    meta = read_metadata(path)
    assert meta["provenance"]["metrics"]["dice"] == 0.9
    assert meta["tile_size"] == 256
    assert meta["normalization"]["mode"] == "auto"
    assert meta["package_version"]
    # Saving a loaded model again keeps its history.
    again = save_model(net, tmp_path / "m2.safetensors", metadata={"finetuned": True})
    prov = read_metadata(again)["provenance"]
    assert prov["training_data"] == "kvasir" and prov["finetuned"] is True


def test_half_precision_file_is_smaller_and_close(tiny_net, tmp_path):
    full = save_model(tiny_net, tmp_path / "full.safetensors")
    half = save_model(tiny_net, tmp_path / "half.safetensors", half=True)
    assert half.stat().st_size < 0.6 * full.stat().st_size
    net = load_model(half)
    assert next(net.parameters()).dtype == torch.float32


def test_never_overwrites_without_being_asked(tiny_net, tmp_path):
    path = save_model(tiny_net, tmp_path / "m.safetensors")
    before = path.read_bytes()
    with pytest.raises(FileExistsError):
        save_model(FMBFFNet(tiny_config()), path)
    assert path.read_bytes() == before
    save_model(tiny_net, path, overwrite=True)
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_corrupt_missing_and_foreign_files_name_the_problem(tiny_net, tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file at all")
    with pytest.raises(ModelLoadError, match="bad.safetensors"):
        load_model(bad)
    with pytest.raises(ModelLoadError, match="no model"):
        load_model(tmp_path / "missing.safetensors")
    from safetensors.torch import save_file

    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, str(foreign))
    with pytest.raises(ModelLoadError, match="not an FM-BFF-Net checkpoint"):
        load_model(foreign)


def test_weights_of_another_architecture_are_refused(tiny_net, tmp_path):
    path = save_model(tiny_net, tmp_path / "m.safetensors")
    # Rewrite the header to claim a different architecture.
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    cfg = json.loads(meta["config"])
    cfg["vitm"] = False
    meta["config"] = json.dumps(cfg)
    other = tmp_path / "other.safetensors"
    save_file(tensors, str(other), metadata=meta)
    with pytest.raises(ModelLoadError, match="do not match the architecture"):
        load_model(other)


class Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_pt_files_load_weights_only_and_never_unpickle(tiny_net, tmp_path):
    good = tmp_path / "w.pt"
    torch.save({"state_dict": tiny_net.state_dict()}, good)
    (tmp_path / "w.json").write_text(tiny_net.config.to_json())
    assert _same_output(load_model(good), tiny_net)
    evil = tmp_path / "evil.pt"
    with open(evil, "wb") as fh:
        pickle.dump({"x": Evil()}, fh)
    with pytest.raises(ModelLoadError, match="weights_only"):
        load_model(evil)
    other = tmp_path / "model.pkl"
    other.write_bytes(b"x")
    with pytest.raises(ModelLoadError, match="unsupported model file type"):
        load_model(other)


def test_registry_lists_models_folder_fresh_and_by_name(tiny_net, models_dir):
    assert "mine" not in list_models()
    save_model(tiny_net, models_dir / "mine.safetensors")
    assert list_models()["mine"] == models_dir / "mine.safetensors"
    assert _same_output(load_model("mine"), tiny_net)


def test_names_are_sanitised_and_unique(models_dir, tiny_net):
    assert sanitize_name("../../etc/passwd") == "passwd"
    assert sanitize_name("my model (v2)") == "my_model_v2"
    with pytest.raises(ValueError):
        sanitize_name("../..")
    first = unique_model_path("tuned")
    save_model(tiny_net, first)
    second = unique_model_path("tuned")
    assert first.parent == second.parent == models_dir
    assert second.name == "tuned-2.safetensors"
    assert unique_model_path("../x").parent == models_dir
