"""Self-labelling: Propagate labels the neighbouring slices outward, only where it is sure."""

import numpy as np
import pytest

from napari_fmbff.inference.progress import drain
from napari_fmbff.training.propagate import PropagateRequest, iter_propagate
from napari_fmbff.training.self_label import SelfLabel, candidates, pseudo_labels


def _lesion(n=7, size=20):
    """A user's lesion on slice 3 and model probabilities that carry it up and down."""
    labels = np.zeros((n, size, size), np.int32)
    labels[3, 6:12, 6:12] = 1
    probs = np.zeros(labels.shape, np.float32)
    for z in range(n):
        probs[z, 6:12, 6:12] = 0.97       # the lesion, sure
        probs[z, 5, 6:12] = 0.7           # its border, unsure
    return labels, probs


def test_candidates_are_the_nearest_unlabelled_slices_first():
    assert candidates(10, [4], 2) == [3, 5, 2, 6]
    assert candidates(10, [0, 1], 1) == [2]
    assert candidates(3, [0, 1, 2], 2) == []


def test_the_model_labels_confident_connected_slices_outward_within_reach():
    labels, probs = _lesion()
    got = pseudo_labels(probs, labels, [3], SelfLabel(reach=2, confidence=0.9))
    assert sorted(got) == [1, 2, 4, 5]
    for mask in got.values():   # only the pixels it is sure of: the unsure border is left out
        assert mask.sum() == 36 and not mask[5].any()


def test_a_side_stops_at_the_first_slice_without_the_lesion_and_never_jumps_a_gap():
    labels, probs = _lesion()
    probs[2] = 0.0                       # the lesion ends below slice 3 ...
    got = pseudo_labels(probs, labels, [3], SelfLabel(reach=3))
    assert sorted(got) == [4, 5, 6]      # ... so slices 1 and 0 are never labelled
    probs[4, 6:12, 6:12] = 0.6           # unsure on slice 4: the upper side stops too
    assert pseudo_labels(probs, labels, [3], SelfLabel(reach=3)) == {}


def test_a_slice_that_leaks_is_not_learned():
    labels, probs = _lesion()
    probs[4] = 0.99                      # the whole slice "lesion": far more than its neighbour
    got = pseudo_labels(probs, labels, [3], SelfLabel(reach=2, growth=2.0))
    assert sorted(got) == [1, 2]


def test_an_object_not_connected_to_the_users_lesion_is_not_learned():
    labels, probs = _lesion()
    probs[:, 6:12, 6:12] = 0.0
    probs[4, 14:18, 14:18] = 0.99        # a false alarm beside, not touching the lesion
    assert pseudo_labels(probs, labels, [3], SelfLabel()) == {}


def test_the_recipes_epochs_are_shared_out_between_the_fine_tunes():
    from napari_fmbff.training.loop import finetune_config

    cfg = finetune_config()                      # 20 epochs, encoder frozen for 5
    assert SelfLabel(rounds=2).epochs(20) == [10, 5, 5]
    assert SelfLabel(rounds=2).epochs(12) == [6, 3, 3]
    assert SelfLabel(rounds=0).epochs(20) == [20]
    assert SelfLabel(rounds=3).epochs(2) == [1, 1, 1, 1]
    first, *later = SelfLabel(rounds=2).recipes(cfg)
    assert first.epochs == 10 and first.freeze_encoder_epochs == cfg.freeze_encoder_epochs
    assert [c.epochs for c in later] == [5, 5]
    assert all(c.freeze_encoder_epochs == 0 and c.lr == cfg.lr for c in later)


@pytest.mark.parametrize("kwargs", [dict(rounds=-1), dict(reach=0), dict(confidence=0.3),
                                    dict(first_share=0)])
def test_a_bad_rule_is_refused(kwargs):
    with pytest.raises(ValueError):
        SelfLabel(**kwargs)


def test_propagate_with_self_labelling_names_the_slices_it_labelled(tiny_net, tmp_path):
    from test_propagate import disk_volume

    from napari_fmbff.model.checkpoint import read_metadata
    from napari_fmbff.training.loop import finetune_config

    volume, disk = disk_volume(6)
    labels = np.zeros(volume.shape, np.int32)
    labels[2][disk] = 1
    out = tmp_path / "prop.safetensors"
    rule = SelfLabel(rounds=1, reach=1, confidence=0.5)
    events = []
    result = drain(iter_propagate(tiny_net, PropagateRequest(
        volume, labels, out, image_name="scan", self_label=rule,
        cfg=finetune_config(epochs=3, tile_size=64, batch_size=2))), events.append)
    # one fine-tune, the self-labelling round's two neighbours, the final fine-tune, the rest
    assert [(e.done, e.total, e.detail) for e in events if e.stage == "slices"][:2] == [
        (1, 2, "self-labelling"), (2, 2, "self-labelling")]
    np.testing.assert_array_equal(result.labels[2], labels[2])   # the user's slice verbatim
    assert result.slices == [2]                                   # the model's are not the user's
    if result.learned:
        prov = read_metadata(out)["provenance"]
        assert prov["self_label"]["rounds"] == 1
        assert set(prov["self_labelled"]) <= {1, 3}


def test_a_model_path_taken_is_refused_before_any_training(tiny_net, tmp_path):
    out = tmp_path / "taken.safetensors"
    out.write_bytes(b"x")
    labels = np.zeros((3, 32, 32), np.int32)
    labels[1, 8:16, 8:16] = 1
    events = []
    with pytest.raises(FileExistsError):
        drain(iter_propagate(tiny_net, PropagateRequest(
            np.zeros((3, 32, 32), np.uint8), labels, out, self_label=SelfLabel())),
            events.append)
    assert not events
