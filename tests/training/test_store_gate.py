"""The promotion gate (issue 28): a model trained on the store becomes its latest (Segment's
default) only if it scores no worse than the current latest on the store's earlier cases; the
first model of a store is promoted."""

import numpy as np
import pytest

from napari_fmbff import load_model
from napari_fmbff.data.store import CaseSource, open_store
from napari_fmbff.inference.progress import drain
from napari_fmbff.model.normalization import Normalization
from napari_fmbff.training import store_training
from napari_fmbff.training.loop import finetune_config
from napari_fmbff.training.requests import ModelOut


def patient(seed, n=3, size=64):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    disk = np.hypot(yy - 30, xx - 34) < 12
    image = np.stack([(rng.normal(60, 10, (size, size)) + 120 * disk).clip(0, 255)
                      for _ in range(n)]).astype(np.uint8)
    return image, np.repeat(disk[None], n, 0).astype(np.uint8)


def constant_model(tiny_net, path, logit: float):
    """A model that answers ``logit`` everywhere: +50 marks every pixel, -50 none."""
    from napari_fmbff import save_model

    tiny_net.head.weight.data.zero_()
    tiny_net.head.bias.data.fill_(logit)
    save_model(tiny_net, path, metadata={"tile_size": 64})
    return path


@pytest.fixture(autouse=True)
def own_case_floor():
    """The real floor here (tests/conftest.py turns it off elsewhere)."""
    yield


def tiny_cfg():
    return finetune_config(epochs=1, tile_size=64, batch_size=2, device="cpu",
                           min_steps_per_epoch=1, freeze_encoder_epochs=0)


@pytest.fixture
def store(tmp_path):
    store = open_store(tmp_path / "store")
    store.add_case(*patient(1), [0, 1], name="p1")
    return store


def test_the_gate_compares_on_the_earlier_cases(store, tiny_net, tmp_path):
    everything = constant_model(tiny_net, tmp_path / "everything.safetensors", 50.0)
    nothing = constant_model(tiny_net, tmp_path / "nothing.safetensors", -50.0)
    first = store_training.promotion(store, everything, device="cpu", tile_size=64)
    assert first.promoted and "first model" in first.message  # no latest yet
    store.record_model(everything, promoted=first.promoted)
    dice = store_training.store_dice(store, load_model(everything), [store.newest], "cpu", 64)
    assert 0.05 < dice < 0.5  # every pixel marked: the disk's share
    gate = store_training.promotion(store, nothing, device="cpu", tile_size=64)
    assert not gate.promoted and gate.record["dice"] == 0.0
    assert gate.record["latest_dice"] == pytest.approx(dice, abs=1e-4)
    assert "not promoted" in gate.message and "'everything'" in gate.message
    same = store_training.promotion(store, everything, device="cpu", tile_size=64)
    assert same.promoted  # no worse is enough
    # Only the case a new one replaces is left out: with no earlier case, it is promoted.
    assert store_training.promotion(store, nothing, exclude=[store.newest]).promoted
    everything.write_bytes(b"damaged")  # a latest model that cannot be read keeps nothing
    damaged = store_training.promotion(store, nothing, device="cpu", tile_size=64)
    assert damaged.promoted and "cannot be read" in damaged.message


def test_a_model_that_predicts_nothing_is_registered_not_promoted(store, tiny_net, tmp_path):
    everything = constant_model(tiny_net, tmp_path / "everything.safetensors", 50.0)
    store.record_model(everything, base="starter")
    net = load_model(
        constant_model(tiny_net, tmp_path / "nothing.safetensors", -50.0))
    pending = store_training.stage(store, *patient(2), [2], Normalization(),
                                   CaseSource(name="p2"))
    out = tmp_path / "new.safetensors"
    outcome = drain(store_training.train_on_store(
        net, store, tiny_cfg(), Normalization(), ModelOut(out, base="nothing"),
        store_run=store_training.StoreRun(pending)))
    assert outcome.saved and not outcome.promoted
    assert "not promoted" in outcome.message and outcome.notes[-1] in outcome.message
    store = open_store(store.path)
    assert [c.name for c in store.cases()] == ["p1", "p2"]  # the case joined all the same
    assert store.latest_model == everything.resolve()  # still Segment's default
    entry = store.record.models[-1]
    assert entry.path == str(out.resolve()) and entry.promoted is False
    # It marks nothing: it did not even learn its own new case, so the gate stops there.
    assert entry.gate["own_case_dice"] == 0.0 and entry.gate["cases"] == [store.cases()[0].id]
    assert outcome.store_latest == everything.resolve()


def test_the_first_model_of_a_store_is_promoted_and_fmbff_train_is_gated(tmp_path, tiny_net):
    store = open_store(tmp_path / "store")
    store.add_case(*patient(1), [0, 1], name="p1")
    net = load_model(
        constant_model(tiny_net, tmp_path / "nothing.safetensors", -50.0))
    first = drain(store_training.train_on_store(
        net, store, tiny_cfg(), Normalization(),
        ModelOut(tmp_path / "a.safetensors", base="nothing")))
    assert first.promoted and "latest model now" in first.message
    assert open_store(store.path).latest_model == (tmp_path / "a.safetensors").resolve()
    # fmbff train STORE (no new case): the same gate against that latest model.
    again = drain(store_training.train_on_store(
        net, store, tiny_cfg(), Normalization(),
        ModelOut(tmp_path / "b.safetensors", base="nothing")))
    assert again.promoted  # both predict nothing: no worse
    assert open_store(store.path).latest_model == (tmp_path / "b.safetensors").resolve()


def test_a_model_that_did_not_learn_its_own_new_case_is_never_promoted(tmp_path, tiny_net,
                                                                      monkeypatch):
    store = open_store(tmp_path / "fresh")  # no latest model: the first would be promoted
    pending = store_training.stage(store, *patient(1), [0, 1], Normalization(),
                                   CaseSource(name="p1"))
    nothing = constant_model(tiny_net, tmp_path / "nothing.safetensors", -50.0)
    gate = store_training.promotion(store, nothing, device="cpu", tile_size=64,
                                    pending=pending)
    assert not gate.promoted and gate.record["own_case_dice"] == 0.0
    assert "did not learn that patient" in gate.message
    assert "Segment keeps its own default" in gate.message
    everything = constant_model(tiny_net, tmp_path / "everything.safetensors", 50.0)
    below = store_training.promotion(store, everything, device="cpu", tile_size=64,
                                     pending=pending)
    own = below.record["own_case_dice"]
    assert 0.05 < own < store_training.OWN_CASE_FLOOR and not below.promoted
    monkeypatch.setattr(store_training, "OWN_CASE_FLOOR", own - 0.01)
    first = store_training.promotion(store, everything, device="cpu", tile_size=64,
                                     pending=pending)
    assert first.promoted and "first model" in first.message
    pending.discard()
