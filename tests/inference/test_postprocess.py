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
