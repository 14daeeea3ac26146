"""Images larger than memory: lazy inputs (zarr, OME-Zarr, TIFF) and chunk-by-chunk output."""

import numpy as np
import pytest
import tifffile
import zarr

from napari_fmbff import Segmenter
from napari_fmbff.data.image_io import is_large, open_large
from napari_fmbff.inference.chunked import (
    iter_segment_chunked,
    plan_chunks,
    segment_chunk,
    store_chunk,
)
from napari_fmbff.inference.segmenter import drain


@pytest.fixture
def seg(tiny_net):
    # A real network (it sees context): chunk seams would show if halos were wrong.
    return Segmenter(tiny_net, device="cpu", tile_size=64, overlap=0.25, batch_size=5)


@pytest.mark.parametrize("rows,cols", [((0, 37), (0, 300)), ((50, 51), (10, 11)),
                                       ((96, 180), (40, 200)), ((0, 180), (0, 300))])
def test_region_equals_the_same_pixels_of_the_whole_objects(seg, rng, rows, cols):
    image = rng.integers(0, 255, size=(180, 300, 3), dtype=np.uint8)
    whole = seg.predict_proba(image)
    region = seg.predict_region(image, rows, cols)
    assert region.shape == (rows[1] - rows[0], cols[1] - cols[0])
    np.testing.assert_allclose(region, whole[rows[0]:rows[1], cols[0]:cols[1]], atol=1e-5)


def test_region_outside_the_image_is_refused(seg, rng):
    image = rng.integers(0, 255, size=(64, 64), dtype=np.uint8)
    with pytest.raises(ValueError, match="outside the image"):
        seg.predict_region(image, (0, 65), (0, 10))


def test_chunked_zarr_output_matches_whole_objects_and_holds_only_chunks(seg, rng, tmp_path):
    image = rng.integers(0, 65535, size=(230, 170), dtype=np.uint16)  # percentiles: one range
    whole = seg.predict_proba(image)
    mask = zarr.create_array(store=str(tmp_path / "m.zarr"), shape=image.shape, dtype="uint8",
                             chunks=(64, 64))
    prob = zarr.create_array(store=str(tmp_path / "p.zarr"), shape=image.shape, dtype="float32",
                             chunks=(64, 64))
    chunks = plan_chunks(*image.shape, 64)
    assert len(chunks) == 4 * 3 and sum(c.pixels for c in chunks) == image.size

    # Chunks in any order (as workers finish them) give the same result.
    rng.shuffle(chunks)
    ir = seg.normalization.intensity_range(image)
    fg = sum(segment_chunk(seg, image, c, ir, 0.5, mask, prob) for c in chunks)
    np.testing.assert_allclose(prob[:], whole, atol=1e-5)
    np.testing.assert_array_equal(mask[:], (whole >= 0.5).astype(np.uint8))
    assert fg == int((whole >= 0.5).sum())

    progress = []
    gen = iter_segment_chunked(seg, image, prob_out=np.zeros(image.shape, np.float32), chunk=128)
    try:
        while True:
            progress.append(next(gen))
    except StopIteration as stop:
        assert stop.value == fg
    assert [(p.done, p.total) for p in progress] == [(0, 4), (1, 4), (2, 4), (3, 4), (4, 4)]


def test_store_chunks_never_straddle_work_units():
    assert store_chunk(4096) == 1024 and store_chunk(2048) == 1024 and store_chunk(640) == 640
    with pytest.raises(ValueError, match="multiple of 32"):
        plan_chunks(100, 100, 40)


def test_tiff_is_large_by_pixel_count_and_reads_lazily(tmp_path, monkeypatch, rng):
    image = rng.integers(0, 255, size=(300, 200, 3), dtype=np.uint8)
    path = tmp_path / "slide.tif"
    tifffile.imwrite(path, image, tile=(64, 64))
    assert not is_large(path)
    monkeypatch.setattr("napari_fmbff.data.image_io.LARGE_IMAGE_PIXELS", 300 * 200 - 1)
    assert is_large(path)
    view = open_large(path)
    assert view.shape == (300, 200, 3) and view.dtype == np.uint8
    np.testing.assert_array_equal(view[10:74, 150:250], image[10:74, 150:200])
    np.testing.assert_array_equal(np.asarray(view), image)


def test_ome_zarr_channels_first_is_viewed_as_yxc(tmp_path, rng):
    from conftest import write_ome_zarr

    image = rng.integers(0, 255, size=(1, 3, 1, 90, 120), dtype=np.uint8)  # t c z y x
    write_ome_zarr(tmp_path / "img.ome.zarr", image)
    assert is_large(tmp_path / "img.ome.zarr")
    view = open_large(tmp_path / "img.ome.zarr")
    assert view.shape == (90, 120, 3)
    np.testing.assert_array_equal(view[5:40, 100:], image[0, :, 0, 5:40, 100:].transpose(1, 2, 0))
    np.testing.assert_array_equal(view[::7, ::9], image[0, :, 0, ::7, ::9].transpose(1, 2, 0))


def test_stacks_open_as_lazy_planes_and_unknown_groups_are_clear_errors(tmp_path, rng):
    data = rng.integers(0, 255, (5, 64, 80), dtype=np.uint8)
    z = zarr.create_array(store=str(tmp_path / "stack.zarr"), shape=data.shape, dtype="uint8",
                          chunks=(1, 32, 32))
    z[:] = data
    view = open_large(tmp_path / "stack.zarr")
    assert view.shape == (5, 64, 80) and view[3].shape == (64, 80)
    np.testing.assert_array_equal(view[3][10:20, 70:], data[3, 10:20, 70:])
    with pytest.raises(IndexError, match="plane"):
        view[10:20, 5:9]  # rows of which plane?
    zarr.open_group(str(tmp_path / "g.zarr"), mode="w")
    with pytest.raises(ValueError, match="multiscales"):
        open_large(tmp_path / "g.zarr")


def test_large_outputs_appear_only_when_complete_and_never_overwrite(tmp_path):
    from napari_fmbff.jobs.files import FileJob, Postprocess
    from napari_fmbff.jobs.large_outputs import LargeOutputs

    job = FileJob(str(tmp_path / "in.zarr"), str(tmp_path / "out.zarr"), None, large=True)
    outs = LargeOutputs(job, Postprocess(), (10, 10), 32)
    zarr.open_array(outs.mask_store, mode="r+")[:] = 7
    with pytest.raises(RuntimeError, match="not done"):
        outs.finish()
    assert not (tmp_path / "out.zarr").exists()  # half-written results live under a hidden name
    outs.mark_done(plan_chunks(10, 10, 32)[0])
    outs.finish()
    assert zarr.open_array(str(tmp_path / "out.zarr"), mode="r")[3, 3] == 7
    assert [p.name for p in tmp_path.iterdir()] == ["out.zarr"]
    with pytest.raises(FileExistsError, match="--overwrite"):
        LargeOutputs(job, Postprocess(), (10, 10), 32)
    again = LargeOutputs(job, Postprocess(), (10, 10), 32, overwrite=True)
    again.discard()
    assert zarr.open_array(str(tmp_path / "out.zarr"), mode="r")[3, 3] == 7  # old result kept
    other = FileJob(str(tmp_path / "in.zarr"), str(tmp_path / "new.zarr"), None, large=True)
    LargeOutputs(other, Postprocess(), (10, 10), 32)  # started, never finished
    with pytest.raises(FileExistsError, match="--resume"):
        LargeOutputs(other, Postprocess(), (10, 10), 32)
    resumed = LargeOutputs(other, Postprocess(), (10, 10), 32, resume=True)
    assert len(resumed.missing()) == 1
    with pytest.raises(ValueError, match="other settings"):
        LargeOutputs(other, Postprocess(threshold=0.9), (10, 10), 32, resume=True)


def test_drain_of_chunked_run_on_a_lazy_view(seg, tmp_path, rng):
    image = rng.integers(0, 255, size=(100, 140, 3), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "a.tif", image, tile=(32, 32))
    out = np.zeros(image.shape[:2], np.float32)
    drain(iter_segment_chunked(seg, open_large(tmp_path / "a.tif"), prob_out=out, chunk=64))
    np.testing.assert_allclose(out, seg.predict_proba(image), atol=1e-5)


def test_intensity_range_of_a_lazy_image_reads_only_a_few_chunks(rng, monkeypatch):
    from napari_fmbff import Normalization
    from napari_fmbff.model.normalization import PERCENTILE_SAMPLE_PIXELS

    monkeypatch.setattr("napari_fmbff.model.normalization.PERCENTILE_SAMPLE_PIXELS", 2**20)
    yy, xx = np.mgrid[:4096, :4096]
    data = (yy * 7 + xx * 3 + rng.integers(0, 500, (4096, 4096))).astype(np.uint16)

    class Lazy:  # counts what is read, like a zarr array would decode it
        shape, dtype, read = data.shape, data.dtype, 0

        def __getitem__(self, key):
            block = data[key]
            Lazy.read += block.size
            return block

    norm = Normalization()
    lo, hi = norm.intensity_range(Lazy())
    exact = np.percentile(data, [norm.low, norm.high])
    assert Lazy.read == 16 * 256 * 256 == data.size / 16  # 16 blocks of the 256 there are
    assert abs(lo - exact[0]) < 0.05 * exact[1] and abs(hi - exact[1]) < 0.05 * exact[1]
    assert (lo, hi) == norm.intensity_range(Lazy())  # seeded: every process agrees
    assert PERCENTILE_SAMPLE_PIXELS > 2**20  # the default samples more
