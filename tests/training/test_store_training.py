"""Training on the corrections store: all cases, the newest weighted up, lineage in the model,
and a store that is as it was after a failed or cancelled run."""

import numpy as np
import pytest

from conftest import disks
from napari_fmbff.data.store import CaseSource, open_store
from napari_fmbff.inference.progress import Cancel, drain
from napari_fmbff.model.normalization import Normalization
from napari_fmbff.training import store_training
from napari_fmbff.training.loop import finetune_config
from napari_fmbff.training.propagate import PropagateRequest, iter_propagate
from napari_fmbff.training.requests import ModelOut, RunControl
from napari_fmbff.training.store_training import StoreRun


def patient(seed, n=4, size=64):
    pairs = disks(n, size=size, seed=seed)
    return (np.stack([p[0][..., 0] for p in pairs]),
            np.stack([p[1] for p in pairs]).astype(np.int32))


def tiny_cfg(**kw):
    return finetune_config(**{"epochs": 1, "tile_size": 64, "batch_size": 2, "device": "cpu",
                              "min_steps_per_epoch": 1, "freeze_encoder_epochs": 0, **kw})


def files(folder):
    return {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.fixture
def store(tmp_path):
    store = open_store(tmp_path / "store")
    image, labels = patient(1)
    store.add_case(image, labels, [0, 1], source="p1")
    return store


def test_items_hold_only_labelled_slices_and_sample_patients_alike(store):
    """Balanced (the default): the case with one slice is repeated to as many samples as the
    case with two, the same arrays; the earlier rule (newest-half) weights the new case up to
    half the samples whatever its size."""
    image, labels = patient(2)
    pending = store_training.stage(store, image, labels, [2], Normalization())
    first = store.cases()[0].id
    data = store_training.store_items(store, Normalization(), pending)
    assert data.cases == [first, pending.id] and data.n_slices == 3
    newest = [item for item in data.items if item.group == pending.id]
    assert data.repeats == {first: 1, pending.id: 2} and len(data.items) == 4
    assert newest[0] is newest[1]  # repeated, not copied
    assert data.replay() == {"sampling": "balanced", "newest_case": pending.id,
                             "repeats": {first: 1, pending.id: 2}, "lesion_repeats": {},
                             "newest_share": 0.5}
    pending.discard()
    # A whole reviewed patient (5 slices) beside the one-slice case: each gives 4-5 samples.
    image3, labels3 = patient(3, n=5)
    pending = store_training.stage(store, image3, labels3, [0, 1, 2, 3, 4], Normalization())
    data = store_training.store_items(store, Normalization(), pending)
    assert data.repeats == {first: 2, pending.id: 1}
    share = data.replay()["newest_share"]
    assert 0.5 <= share < 0.6  # alike, the newest not favoured beyond that
    older = store_training.store_items(store, Normalization(), pending, "newest-half")
    assert older.repeats == {first: 1, pending.id: 1} and older.sampling == "newest-half"
    with pytest.raises(ValueError, match="store sampling"):
        store_training.store_items(store, Normalization(), pending, "newest")
    pending.discard()


def test_a_patient_reviewed_whole_is_learned_half_from_its_lesion_slices(store):
    """A tumour on 2 of 8 reviewed slices (under a third): each lesion slice is repeated 3
    times, so the case teaches lesion about as much as background; the record says so."""
    image, labels = patient(4, n=8)
    labels[2:] = 0                                   # lesion-free slices, reviewed as such
    pending = store_training.stage(store, image, labels, list(range(8)), Normalization())
    data = store_training.store_items(store, Normalization(), pending)
    mine = [item for item in data.items if item.group == pending.id]
    lesion = [item for item in mine if item.mask.any()]
    assert data.lesion_repeats == {pending.id: 3} and len(lesion) == 6 and len(mine) == 12
    assert data.n_slices == 10                       # the slices, not the samples
    assert data.replay()["lesion_repeats"] == {pending.id: 3}
    assert store_training.lesion_repeat(lesion[:2]) == 1   # all lesion: nothing to balance
    free = [item for item in mine if not item.mask.any()]
    assert store_training.lesion_repeat(lesion[:2] + free[:4]) == 1  # a third: as it was
    pending.discard()


def test_train_on_store_adds_the_case_and_records_the_lineage(store, tiny_net, tmp_path):
    from napari_fmbff.model.checkpoint import model_card, read_metadata

    image, labels = patient(2)
    pending = store_training.stage(store, image, labels, [2, 3], Normalization(),
                                   CaseSource(source="p2", model="tiny"))
    out = tmp_path / "m.safetensors"
    outcome = drain(store_training.train_on_store(
        tiny_net, store, tiny_cfg(), Normalization(), ModelOut(out, base="tiny"),
        store_run=StoreRun(pending)))
    assert outcome.saved and len(store.cases()) == 2 and store.newest == pending.id
    assert store.latest_model == out.resolve() and outcome.promoted  # the store's first model
    # The next run starts from the base model chosen, not from the store's latest (issue 28).
    assert store_training.start_model(store, "starter") == "starter"
    prov = read_metadata(out)["provenance"]
    assert prov["store"]["cases"] == [c.id for c in store.cases()]
    assert prov["store"]["n_slices"] == 4 and prov["n_train"] == 4
    assert set(prov["store"]["replay"]["repeats"].values()) == {1}  # 2 slices each: alike
    assert prov["finetuned_from"] == "tiny"
    assert prov["recipe"]["val_fraction"] == 0.0  # nothing held out
    assert "trained on 2 cases, 4 corrected slices" in model_card(out)
    assert store.case(pending.id).entry.model == "tiny"


def test_a_failed_or_cancelled_run_leaves_the_store_as_it_was(store, tiny_net, tmp_path,
                                                              monkeypatch):
    before = files(store.path)
    image, labels = patient(2)
    stop = Cancel()
    stop.set()
    cancelled = drain(store_training.train_on_store(
        tiny_net, store, tiny_cfg(), Normalization(), ModelOut(tmp_path / "c.safetensors"),
        RunControl(cancel=stop, keep_on_cancel=False),
        StoreRun(store_training.stage(store, image, labels, [2], Normalization()))))
    assert cancelled.result.cancelled and not cancelled.saved
    assert files(store.path) == before
    from napari_fmbff.training import run

    def broken(*_args, **_kwargs):
        raise OSError(28, "No space left on device")
        yield

    monkeypatch.setattr(run, "train_and_save", broken)
    with pytest.raises(OSError):
        drain(store_training.train_on_store(
            tiny_net, store, tiny_cfg(), Normalization(), ModelOut(tmp_path / "d.safetensors"),
            store_run=StoreRun(store_training.stage(store, image, labels, [2],
                                                    Normalization()))))
    assert files(store.path) == before


def test_propagate_with_the_store(store, tiny_net, tmp_path):
    image, labels = patient(3)
    partial = np.zeros_like(labels)
    partial[1] = labels[1]
    before = files(store.path)
    request = PropagateRequest(image, partial, tmp_path / "p.safetensors", cfg=tiny_cfg(),
                               base="tiny", image_name="p3",
                               store=store_training.StoreCase(store))
    gen = iter_propagate(tiny_net, request)
    next(gen)
    gen.close()  # cancelled mid-way: nothing joined the store
    assert files(store.path) == before
    result = drain(iter_propagate(tiny_net, request))
    assert result.slices == [1] and result.labels.shape == labels.shape
    np.testing.assert_array_equal(result.labels[1], partial[1])
    assert [c.name for c in store.cases()] == ["p1", "p3"]
    assert store.case(store.newest).slices == [1]
    assert store.latest_model == (tmp_path / "p.safetensors").resolve()


def test_is_store(store, tmp_path):
    assert store_training.is_store(store.path)
    assert not store_training.is_store(tmp_path)
