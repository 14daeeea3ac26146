"""Labels, small-object removal and hole filling chunk by chunk == on the whole mask."""

import numpy as np
import pytest
from scipy import ndimage as ndi

from conftest import same_partition
from napari_fmbff.inference.chunked import plan_chunks
from napari_fmbff.inference.postprocess import fill_holes, label, labels_from_proba


def blobs(rng, shape=(150, 230), density=0.45):
    """Smoothed noise cut at a level: objects of many shapes, with holes, crossing chunks."""
    noise = ndi.gaussian_filter(rng.random(shape), 3)
    return (noise > np.quantile(noise, 1 - density)).astype(np.uint8)



def run(mask, chunk, **kw):
    chunks = plan_chunks(*mask.shape, chunk)
    out = np.zeros(mask.shape, np.uint32)
    scratch = np.zeros(mask.shape, np.uint32)

    def read(c):
        return mask[slice(*c.rows), slice(*c.cols)]

    def write(c, values):
        out[slice(*c.rows), slice(*c.cols)] = values

    n = label(read, write, scratch, chunks, mask.shape, **kw)
    return out, n


@pytest.mark.parametrize("chunk", [32, 64, 96, 256])
@pytest.mark.parametrize("min_size", [0, 40])
def test_chunked_labels_equal_whole_mask_labels(rng, chunk, min_size):
    mask = blobs(rng)
    expected = labels_from_proba(mask.astype(np.float32), 0.5, min_size=min_size)
    got, n = run(mask, chunk, min_size=min_size)
    assert n == expected.max() and n > 5
    assert same_partition(got, expected)
    assert sorted(np.unique(got)) == list(range(n + 1))  # 1..n, no gaps
    merged, _ = run(mask, chunk, min_size=min_size, split=False)
    np.testing.assert_array_equal(merged, expected > 0)


@pytest.mark.parametrize("chunk", [32, 64, 256])
def test_chunked_hole_filling_equals_scipy(rng, chunk):
    mask = blobs(rng, density=0.7)  # mostly foreground: many holes, some crossing chunks
    mask[0:40, 0:40] = 1
    mask[10:20, 10:20] = 0  # a hole by construction
    chunks = plan_chunks(*mask.shape, chunk)
    out = np.zeros_like(mask)
    fill_holes(lambda c: mask[slice(*c.rows), slice(*c.cols)],
               lambda c, v: out.__setitem__((slice(*c.rows), slice(*c.cols)), v),
               np.zeros(mask.shape, np.uint32), chunks, mask.shape)
    expected = ndi.binary_fill_holes(mask)
    assert expected.sum() > mask.sum() and out[15, 15] == 1
    np.testing.assert_array_equal(out, expected)


# ---- probabilities -> labels under one Postprocess ------------------------------------------


def widget_labels(probs, threshold, min_size, fill, split, objects_3d, shape):
    """What the Segment widget's re-threshold computed by hand before ``labels_from_planes``
    (the reference the one function must keep)."""
    from napari_fmbff.inference.postprocess import label_volume

    if len(probs) > 1 and split and objects_3d and len(shape) == 3:
        order = sorted(probs)
        masks = np.stack([labels_from_proba(probs[i], threshold, 0, fill, split=False)
                          for i in order])
        volume = label_volume(masks, min_size).astype(np.int32)
        return {index: volume[k] for k, index in enumerate(order)}
    return {index: labels_from_proba(prob, threshold, min_size, fill, split)
            for index, prob in probs.items()}


@pytest.mark.parametrize("split", [True, False])
@pytest.mark.parametrize("objects_3d", [True, False])
@pytest.mark.parametrize("planes", [[(0,), (1,), (2,)], [(1,)], [()]])
def test_labels_from_planes_is_what_the_widget_computed(rng, split, objects_3d, planes):
    from napari_fmbff.inference.postprocess import Postprocess, labels_from_planes

    probs = {i: ndi.gaussian_filter(rng.random((60, 70)), 2).astype(np.float32) * 2 - 0.5
             for i in planes}
    probs = {i: np.clip(p, 0, 1) for i, p in probs.items()}
    shape = (3, 60, 70) if planes[0] else (60, 70)
    post = Postprocess(0.5, 6, True, labels=split, per_slice=not objects_3d)
    got = labels_from_planes(probs, post)
    expected = widget_labels(probs, 0.5, 6, True, split, objects_3d, shape)
    assert sorted(got) == sorted(expected)
    for index in expected:
        np.testing.assert_array_equal(got[index], expected[index])
        assert got[index].dtype == (np.uint32 if split else np.uint8)


def test_labels_from_planes_of_an_array_equal_those_of_a_dict(rng):
    from napari_fmbff.inference.postprocess import Postprocess, labels_from_planes

    probs = rng.random((3, 40, 50)).astype(np.float32)
    for post in (Postprocess(labels=True), Postprocess(labels=True, per_slice=True),
                 Postprocess(min_size=3, fill_holes=True)):
        stack = labels_from_planes(probs, post)
        planes = labels_from_planes({(z,): probs[z] for z in range(3)}, post)
        assert stack.shape == probs.shape
        for z in range(3):
            np.testing.assert_array_equal(stack[z], planes[(z,)])
    # More than one stack axis (t, z): numbered plane by plane.
    four = labels_from_planes(probs[None], Postprocess(labels=True))
    np.testing.assert_array_equal(four[0, 1], labels_from_proba(probs[1]))


def test_labels_from_planes_refuses_ids_that_do_not_fit_the_output():
    from napari_fmbff.inference.postprocess import Postprocess, labels_from_planes

    checker = np.zeros((3, 600), np.float32)
    checker[1, ::2] = 1  # 300 one-pixel objects
    with pytest.raises(ValueError, match="300 objects do not fit uint8"):
        labels_from_planes(checker, Postprocess(labels=True), out=np.zeros((3, 600), np.uint8))


@pytest.mark.parametrize("bad", [dict(threshold=1.5), dict(threshold=True),
                                 dict(min_size=-1), dict(min_size=2.5)])
def test_postprocess_refuses_bad_settings(bad):
    from napari_fmbff.inference.postprocess import Postprocess

    with pytest.raises(ValueError, match="threshold|min size"):
        Postprocess(**bad)
