"""Segmenting a stack slice by slice (``iter_segment_stack``) and planes' progress."""

import numpy as np

from conftest import Planes as PlaneList
from napari_fmbff import Normalization
from napari_fmbff.inference.postprocess import Postprocess
from napari_fmbff.inference.progress import Progress, drain
from napari_fmbff.inference.stacks import iter_predict_planes, iter_segment_stack


class Planes(PlaneList):
    """Given probability planes, in order, with the tiled path's progress too."""

    def iter_predict(self, image):
        yield Progress("tiles", 0, 2)
        yield Progress("tiles", 2, 2)
        return self.predict_proba(image)


def lesion_over_two_slices():
    probs = np.zeros((3, 30, 30), np.float32)
    probs[0:2, 5:15, 5:15] = 0.9
    probs[2, 20:25, 20:25] = 0.7
    return probs


def test_a_stack_is_segmented_slice_by_slice_into_3d_objects():
    probs = lesion_over_two_slices()
    seg = Planes(probs)
    seg.normalization = Normalization(mode="percentile", scope="volume")
    kept = np.zeros(probs.shape, np.float32)
    steps = []
    image = np.arange(3 * 30 * 30, dtype=np.float32).reshape(3, 30, 30)
    labels = drain(iter_segment_stack(seg, image, False, Postprocess(labels=True),
                                      probs_out=kept), steps.append)
    assert [(s.stage, s.done, s.total) for s in steps] == [("slices", 1, 3), ("slices", 2, 3),
                                                           ("slices", 3, 3)]
    assert labels.dtype == np.uint32 and labels.max() == 2
    assert labels[0, 10, 10] == labels[1, 10, 10] != labels[2, 22, 22]
    np.testing.assert_array_equal(kept, probs)
    # One fixed range for the whole stack while segmenting; the setting itself is left alone.
    assert len({n.intensity_range(image[0]) for n in seg.seen}) == 1
    assert seg.seen[0].mode == "fixed" and seg.normalization.scope == "volume"


def test_a_mask_of_a_stack_is_0_1_and_per_slice_labels_restart_in_each_slice():
    probs = lesion_over_two_slices()
    mask = drain(iter_segment_stack(Planes(probs), probs, False, Postprocess(threshold=0.8)))
    assert mask.dtype == np.uint8 and set(np.unique(mask)) == {0, 1}
    assert mask[2].max() == 0  # 0.7 is under the threshold
    per = drain(iter_segment_stack(Planes(probs), probs, False,
                                   Postprocess(labels=True, per_slice=True)))
    assert per[0, 10, 10] == per[1, 10, 10] == per[2, 22, 22] == 1


def test_a_2d_image_is_one_plane():
    prob = lesion_over_two_slices()[0]
    labels = drain(iter_segment_stack(Planes([prob]), np.zeros((30, 30)), False))
    assert labels.shape == (30, 30) and labels[10, 10] == 1


def test_predicting_planes_relays_each_planes_progress():
    probs = lesion_over_two_slices()
    steps = []
    got = drain(iter_predict_planes(Planes(probs), probs, False, [(0,), (2,)]), steps.append)
    assert [(s.stage, s.done, s.total, s.detail.done) for s in steps] == [
        ("slices", 0, 2, 0), ("slices", 0, 2, 2), ("slices", 1, 2, 0), ("slices", 1, 2, 2)]
    assert [s.fraction for s in steps] == [0.0, 0.5, 0.5, 1.0]
    assert sorted(got) == [(0,), (2,)] and got[(2,)] is not None
