"""Propagate: learn from the labelled slices, fill in the others, never touch what was labelled."""

import numpy as np
import pytest

from napari_fmbff.inference.postprocess import (
    Postprocess,
    connected_to_user,
    merge_ids,
    propagated_labels,
)
from napari_fmbff.inference.progress import drain
from napari_fmbff.training.propagate import PropagateRequest, iter_propagate, labelled_slices


def test_model_voxels_take_the_id_of_the_user_object_they_touch():
    labels = np.zeros((4, 10, 10), np.int32)
    labels[1, 2:5, 2:5] = 5                     # the user's lesion, id 5, on slice 1
    mask = np.zeros(labels.shape, bool)
    mask[0, 2:5, 2:5] = mask[2, 3:6, 3:6] = True  # the model continues it above and below
    mask[3, 8:10, 8:10] = True                  # and finds another object of its own
    mask[1, 7:9, 0:2] = True                    # the model's guess on the labelled slice: ignored
    out = merge_ids(labels, [1], mask)
    np.testing.assert_array_equal(out[1], labels[1])          # verbatim
    assert set(np.unique(out[[0, 2]])) == {0, 5}              # one id across slices
    assert set(np.unique(out[3])) == {0, 6}                   # a new id above the user's
    assert out.dtype == np.int32
    assert not merge_ids(labels, [1], mask, min_size=5)[3].any()  # small new objects dropped


def test_connected_keeps_the_lesion_carried_from_the_user_objects_only():
    labels = np.zeros((6, 12, 12), np.int32)
    labels[2, 3:6, 3:6] = 4                       # the user's lesion on slice 2
    mask = np.zeros(labels.shape, bool)
    mask[1, 4:7, 4:7] = mask[0, 5:8, 5:8] = True  # carried down through two slices
    mask[3, 2:5, 2:5] = True                      # and up one
    mask[5, 9:12, 9:12] = True                    # a false alarm far away: not connected
    mask[3, 10:12, 0:2] = True                    # one on a neighbour slice, off the lesion
    kept = connected_to_user(mask, labels, [2])
    np.testing.assert_array_equal(kept, mask & ~(np.arange(6)[:, None, None] == 5)
                                  & ~((np.arange(12)[None, :, None] >= 10)
                                      & (np.arange(12)[None, None, :] < 2)))
    out = merge_ids(labels, [2], mask, connected=True)
    assert set(np.unique(out)) == {0, 4} and not out[5].any()
    assert merge_ids(labels, [2], mask)[5].max() > 4   # the old rule keeps it, with a new id
    # an accepted lesion-free slice has no object to carry: nothing of the model's is kept
    assert not connected_to_user(mask, np.zeros_like(labels), [2]).any()


def test_new_ids_start_above_the_user_slices_only():
    labels = np.zeros((3, 8, 8), np.int32)
    labels[0, 1:3, 1:3] = 2                      # the user's lesion on slice 0
    labels[2, 5:7, 5:7] = 40                     # a proposal on a slice not learned from
    mask = np.zeros(labels.shape, bool)
    mask[2, 0:2, 6:8] = True                     # the model's own object there
    out = merge_ids(labels, [0], mask)
    assert set(np.unique(out[2])) == {0, 3}      # 40 is not the user's: not counted


def test_propagated_labels_is_merge_ids_under_the_postprocess_settings():
    labels = np.zeros((3, 12, 12), np.int32)
    labels[1, 3:8, 3:8] = 5
    probs = np.zeros(labels.shape, np.float32)
    probs[1] = labels[1] > 0
    probs[0, 3:8, 3:8] = 0.7                     # the lesion carried, with a hole at 0.2
    probs[0, 5, 5] = 0.2
    probs[2, 10:12, 10:12] = 0.9                 # a small object of the model's own
    plain = propagated_labels(probs, labels, [1], Postprocess(0.5, labels=True))
    np.testing.assert_array_equal(plain, merge_ids(labels, [1], probs >= 0.5))
    assert plain[0, 5, 5] == 0 and plain[2, 10, 10] == 6
    filled = propagated_labels(probs, labels, [1], Postprocess(0.5, 5, True, labels=True))
    assert filled[0, 5, 5] == 5 and not filled[2].any()   # hole filled, small object dropped
    np.testing.assert_array_equal(filled[1], labels[1])
    connected = propagated_labels(probs, labels, [1], Postprocess(0.5, labels=True), True)
    assert not connected[2].any() and connected[0, 4, 4] == 5
    mask = propagated_labels(probs, labels, [1], Postprocess(0.5))
    np.testing.assert_array_equal(mask, (plain > 0).astype(np.int32))


@pytest.mark.parametrize("labels, slices, message", [
    (np.zeros((3, 8, 8), np.int32), None, "no slice holds a label"),
    (np.ones((3, 8, 8), np.int32), None, "every one of the 3 slices"),
    (np.zeros((3, 8, 8), np.float32), None, "whole numbers"),
    (np.zeros((2, 8, 8), np.int32), None, "2 slices but the image has 3"),
    (np.zeros((3, 8, 8), np.int32), [7], "slice 7 is outside"),
])
def test_what_cannot_be_propagated_is_one_line(labels, slices, message):
    with pytest.raises(ValueError, match=message):
        labelled_slices(labels, 3, slices)
    with pytest.raises(ValueError, match="one slice"):
        labelled_slices(np.ones((1, 8, 8), np.int32), 1)


def disk_volume(n: int):
    """(uint8 (n, 64, 64) stack: a bright disk on noise on every slice, the disk's mask)."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:64, :64]
    disk = (yy - 30) ** 2 + (xx - 34) ** 2 < 144
    volume = np.stack([(rng.normal(60, 10, (64, 64)) + 120 * disk).clip(0, 255)
                       for _ in range(n)]).astype(np.uint8)
    return volume, disk


def test_propagate_learns_from_one_slice_and_saves_its_lineage(tiny_net, tmp_path):
    from napari_fmbff.model.checkpoint import read_metadata
    from napari_fmbff.training.loop import finetune_config

    volume, disk = disk_volume(4)
    labels = np.zeros(volume.shape, np.int32)
    labels[1][disk] = 3
    labels[1, 0, 0] = 9  # a stray user pixel: kept verbatim
    out = tmp_path / "prop.safetensors"
    events = []
    gen = iter_propagate(tiny_net, PropagateRequest(
        volume, labels, out, base="tiny", image_name="scan",
        cfg=finetune_config(epochs=3, tile_size=64, batch_size=2)))
    result = drain(gen, events.append)
    assert {e.stage for e in events} == {"train", "slices"}
    # one event per slice segmented, outward until the lesion ends; the last says all 3 are done
    steps = [(e.done, e.total) for e in events if e.stage == "slices"]
    assert steps[-1] == (3, 3) and {t for _, t in steps} == {3}
    assert [d for d, _ in steps] == sorted(set(d for d, _ in steps))
    np.testing.assert_array_equal(result.labels[1], labels[1])
    assert result.slices == [1] and result.probs.shape == volume.shape
    assert result.uncertainty[1] == 0 and result.uncertainty.shape == (4,)
    if result.learned:  # saved with its lineage
        prov = read_metadata(out)["provenance"]
        assert prov["propagated"] == {"base": "tiny", "slices": [1], "image": "scan"}
        assert prov["finetuned_from"] == "tiny" and "slice(s) 1" in prov["training_data"]
    else:
        assert not out.exists() and "did not change" in result.outcome.message


def test_propagate_s_recipe_is_fine_tune_s_on_crops_of_at_most_propagate_crop():
    from napari_fmbff.training.loop import PROPAGATE_CROP, finetune_config, propagate_config

    assert propagate_config().tile_size == PROPAGATE_CROP < finetune_config().tile_size
    assert propagate_config(epochs=3, tile_size=96).tile_size == 96
    assert propagate_config(epochs=3).epochs == 3
    given = finetune_config(lr=0.01)
    assert propagate_config(given).lr == 0.01 and given.tile_size == finetune_config().tile_size
