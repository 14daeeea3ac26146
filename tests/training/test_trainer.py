"""The trainer's hooks, the resume file and the network fmbff train builds (training/)."""

import errno
import json

import numpy as np
import pytest
import torch

from conftest import disks, tiny_config
from napari_fmbff import FMBFFNet
from napari_fmbff.inference.progress import drain
from napari_fmbff.model.normalization import default_normalization
from napari_fmbff.training.loop import TrainConfig, iter_train, make_items
from napari_fmbff.training.requests import RunControl
from napari_fmbff.training.resume import ResumeFile
from napari_fmbff.training.run import build_network, check_output
from napari_fmbff.training.trainer import Trainer


def _run(trainer, resume_state=None):
    events = []
    result = drain(trainer.run_training(resume_state), lambda p: events.append(p.detail))
    return events, result


def _small(n=6):
    torch.manual_seed(0)
    net = FMBFFNet(tiny_config())
    norm = default_normalization(net)
    imgs, masks = zip(*disks(n, size=64))
    items = make_items(imgs, masks, norm)
    return net, items[:4], items[4:], norm


def test_run_training_calls_the_hooks_in_order_and_stops_early_on_a_plateau():
    calls = []

    class Recording(Trainer):
        def __getattribute__(self, name):
            if name in ("on_train_start", "on_epoch_start", "train_epoch", "validation_step",
                        "on_epoch_end", "save_checkpoint", "on_train_end"):
                calls.append(name)
            return super().__getattribute__(name)

    net, train, val, norm = _small()
    cfg = TrainConfig(epochs=5, batch_size=2, tile_size=64, lr=1e-12, device="cpu",
                      steps_per_epoch=1, patience=1, fit_tiles=2)
    events, result = _run(Recording(net, train, val, cfg, norm))
    epoch = ["on_epoch_start", "train_epoch", "validation_step", "on_epoch_end",
             "save_checkpoint"]
    # validation_step once before training; lr 1e-12 never beats it: patience 1 stops at 1.
    assert calls == ["on_train_start", "validation_step", *epoch, "on_train_end"]
    assert [e.kind for e in events] == ["start", "step", "epoch"]
    assert result.stopped_early and result.epochs_run == 1 and not result.changed


def test_iter_train_is_the_trainer_run_and_resumes_from_its_checkpoint(tmp_path):
    net, train, val, norm = _small()
    cfg = TrainConfig(epochs=2, batch_size=2, tile_size=64, device="cpu", steps_per_epoch=1,
                      fit_tiles=2)
    start = {k: v.clone() for k, v in net.state_dict().items()}
    file = ResumeFile(tmp_path / "m.safetensors")
    gen = iter_train(net, train, val, cfg, norm, RunControl(checkpoint_fn=file.save))
    kinds = []
    whole = drain(gen, lambda progress: kinds.append(progress.detail.kind))
    assert kinds == ["start", "step", "epoch", "step", "epoch"]
    state = file.load()
    assert state["epoch"] == 2 and len(state["history"]) == 2
    assert file.path == tmp_path / "m.resume.pt"
    # A trainer loaded from the state continues after its epoch, with its history.
    net2 = FMBFFNet(tiny_config())
    net2.load_state_dict(start)
    trainer = Trainer(net2, train, val, TrainConfig(**{**cfg.__dict__, "epochs": 3}), norm)
    events, result = _run(trainer, state)
    assert [e.kind for e in events] == ["start", "step", "epoch"] and events[0].epoch == 2
    assert [h["epoch"] for h in result.history] == [1, 2, 3]
    assert result.initial_dice == whole.initial_dice
    assert result.fit_before == whole.fit_before


def test_a_resume_state_of_another_split_is_refused():
    net, train, val, norm = _small()
    cfg = TrainConfig(epochs=1, batch_size=2, tile_size=64, device="cpu", steps_per_epoch=1)
    trainer = Trainer(net, train, val, cfg, norm)
    with pytest.raises(ValueError, match="different validation split"):
        _run(trainer, {"validated": False, "epoch": 1})


def test_resume_file_is_refused_in_one_line_naming_it(tmp_path):
    file = ResumeFile(tmp_path / "m.safetensors")
    with pytest.raises(ValueError, match=r"m\.resume\.pt not found"):
        file.load()
    file.path.write_bytes(b"junk")
    with pytest.raises(ValueError, match=r"m\.resume\.pt is not a resume file.*delete it"):
        file.load()
    torch.save({"model": {}}, file.path)
    with pytest.raises(ValueError, match=r"\(no epoch\); delete it"):
        file.load()
    file.remove()
    assert not file.path.exists()
    file.remove()  # nothing there: fine


def test_resume_file_write_is_atomic_and_a_full_disk_names_the_file(tmp_path, monkeypatch):
    file = ResumeFile(tmp_path / "new" / "m.safetensors")
    file.save({"epoch": 1, "model": {"w": torch.ones(2)}})  # the folder is made
    assert file.load()["epoch"] == 1

    def full(obj, f, *args, **kwargs):
        with open(f, "wb") as fh:
            fh.write(b"half")
        raise RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed")

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(OSError) as caught:
        file.save({"epoch": 2})
    err = caught.value
    assert err.errno == errno.EIO and err.filename == str(file.path)
    assert "disk full" in err.strerror
    assert sorted(p.name for p in file.path.parent.iterdir()) == ["m.resume.pt"]
    monkeypatch.undo()
    assert file.load()["epoch"] == 1  # the last good state is still there


def test_check_output_refuses_before_any_work(tmp_path):
    with pytest.raises(ValueError, match=r"\.safetensors, got m\.pt"):
        check_output(tmp_path / "m.pt")
    out = tmp_path / "m.safetensors"
    (tmp_path / "m.log.csv").write_text("epoch\n")
    with pytest.raises(FileExistsError, match=r"m\.log\.csv"):
        check_output(out)
    assert check_output(out, resuming=True) == out  # a resumed run's log is its own
    out.write_bytes(b"mine")
    with pytest.raises(FileExistsError, match="--overwrite"):
        check_output(out, resuming=True)  # the model itself never
    assert check_output(str(out), overwrite=True) == out


def test_build_network_from_a_config_file_with_ablation_and_a_seed(tmp_path):
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps(tiny_config().to_dict()))
    net, notes = build_network(config=cfg, ablate=["vitm", "biffm"], seed=3)
    again, _ = build_network(config=cfg, ablate=["vitm", "biffm"], seed=3)
    assert not net.config.vitm and not net.config.biffm and net.config.fmcab
    assert net.config.encoder_weights is None and notes == []
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(),
                                                 again.state_dict().values()))
    other, _ = build_network(config=cfg, seed=4)
    assert not all(torch.equal(a, b) for a, b in zip(net.state_dict().values(),
                                                     other.state_dict().values()))


@pytest.mark.parametrize("content,says", [
    (None, "No such file"), ("{oops", "give a JSON file"), ([1, 2], "a JSON object"),
    ({"transformer_heads": 0}, "transformer_heads"), ({"layers": 3}, "unknown")])
def test_build_network_says_what_is_wrong_with_the_config_in_one_line(tmp_path, content, says):
    cfg = tmp_path / "cfg.json"
    if content is not None:
        cfg.write_text(content if isinstance(content, str) else json.dumps(content))
    with pytest.raises(ValueError) as caught:
        build_network(config=cfg)
    text = str(caught.value)
    assert text.startswith(f"--config {cfg}: ") and says in text and "\n" not in text


def test_build_network_from_init_loads_the_model(tiny_model):
    net, notes = build_network(init=tiny_model, config="ignored.json")
    assert isinstance(net, FMBFFNet) and notes == []
    assert np.isfinite(sum(float(p.detach().sum()) for p in net.parameters()))
