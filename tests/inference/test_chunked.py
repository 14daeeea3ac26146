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
from napari_fmbff.inference.progress import drain


def level0(path):
    """The full-resolution array of an OME-Zarr result (the group's dataset "0")."""
    return zarr.open_group(str(path), mode="r")["0"]


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
    assert drain(gen, progress.append) == fg
    assert [(p.stage, p.done, p.total) for p in progress] == [
        ("chunks", 0, 4), ("chunks", 1, 4), ("chunks", 2, 4), ("chunks", 3, 4), ("chunks", 4, 4)]


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
    from napari_fmbff.inference.postprocess import Postprocess
    from napari_fmbff.jobs.files import FileJob
    from napari_fmbff.jobs.large_outputs import LargeOutputs

    job = FileJob(str(tmp_path / "in.zarr"), str(tmp_path / "out.zarr"), None, large=True)
    outs = LargeOutputs(job, Postprocess(), (10, 10), 32)
    zarr.open_array(outs.mask_store, mode="r+")[:] = 7
    with pytest.raises(RuntimeError, match="not done"):
        outs.finish()
    assert not (tmp_path / "out.zarr").exists()  # half-written results live under a hidden name
    outs.mark_done(plan_chunks(10, 10, 32)[0])
    outs.finish()
    assert level0(tmp_path / "out.zarr")[3, 3] == 7
    assert [p.name for p in tmp_path.iterdir()] == ["out.zarr"]
    with pytest.raises(FileExistsError, match="--overwrite"):
        LargeOutputs(job, Postprocess(), (10, 10), 32)
    again = LargeOutputs(job, Postprocess(), (10, 10), 32, overwrite=True)
    again.discard()
    assert level0(tmp_path / "out.zarr")[3, 3] == 7  # old result kept
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


# ---- whole-volume ids, chunk by chunk ---------------------------------------------------------


def blobs3d(rng, shape=(5, 100, 130), density=0.2):
    """Smoothed 3D noise cut at a level: objects over several planes and chunks, and a hollow
    square over three planes (a hole in each, across a chunk border)."""
    from scipy import ndimage as ndi

    noise = ndi.gaussian_filter(rng.random(shape), (1, 3, 3))
    mask = (noise > np.quantile(noise, 1 - density)).astype(np.uint8)
    if len(shape) == 3 and shape[0] >= 4:
        mask[1:4, 20:44, 20:44] = 1
        mask[1:4, 26:38, 26:38] = 0
    return mask


def finish_with(tmp_path, mask, post, chunk, name="out", provenance=None, scale=None,
                probabilities=False):
    """LargeOutputs run to the end on a known 0/1 mask: the chunked post-processing alone."""
    from napari_fmbff.jobs.files import FileJob
    from napari_fmbff.jobs.large_outputs import LargeOutputs

    prob = str(tmp_path / f"{name}_prob.zarr") if probabilities else None
    job = FileJob(str(tmp_path / "in.zarr"), str(tmp_path / f"{name}.zarr"), prob, large=True)
    outs = LargeOutputs(job, post, mask.shape, chunk, scale=scale)
    zarr.open_array(outs.mask_store, mode="r+")[:] = mask
    if probabilities:
        zarr.open_array(outs.prob_store, mode="r+")[:] = mask * 0.75
    for c in outs.missing():
        outs.mark_done(c)
    outs.finish(provenance)
    return level0(tmp_path / f"{name}.zarr")[:]


@pytest.mark.parametrize("chunk", [32, 64])
@pytest.mark.parametrize("min_size,fill_holes", [(0, False), (0, True), (60, False), (60, True)])
def test_chunked_stack_labels_are_the_3d_objects_of_the_whole_mask(tmp_path, rng, chunk,
                                                                   min_size, fill_holes):
    from scipy import ndimage as ndi

    from conftest import same_partition
    from napari_fmbff.inference.postprocess import Postprocess, label_volume

    mask = blobs3d(rng)
    assert len(plan_chunks(*mask.shape[1:], chunk)) >= 4  # several chunks per plane
    got = finish_with(tmp_path, mask, Postprocess(labels=True, min_size=min_size,
                                                  fill_holes=fill_holes), chunk)
    # The in-memory paths: holes filled plane by plane, then 6-connected 3D objects.
    filled = np.stack([ndi.binary_fill_holes(p) for p in mask]) if fill_holes else mask
    expected = label_volume(filled, min_size)
    assert got.dtype == np.uint32 and got.max() == expected.max() > 10
    assert ((got > 0).sum() > (mask > 0).sum()) == fill_holes or min_size
    assert same_partition(got, expected)
    assert sorted(np.unique(got)) == list(range(got.max() + 1))  # 1..n, no gaps
    # Ids are unique in the stack: objects carry their id from plane to plane.
    spans = [len({z for z in range(mask.shape[0]) if (got[z] == i).any()})
             for i in range(1, got.max() + 1)]
    assert max(spans) > 1
    if min_size:  # counted in voxels of the 3D object, not pixels of a plane
        sizes = np.bincount(got.ravel())[1:]
        assert sizes.min() >= min_size
        assert any((np.bincount(got[z].ravel())[1:] < min_size).any() for z in range(5))


def test_per_slice_labels_and_stacks_with_two_axes_are_numbered_plane_by_plane(tmp_path, rng):
    from conftest import same_partition
    from napari_fmbff.inference.postprocess import Postprocess, labels_from_proba

    mask = blobs3d(rng, (3, 70, 90))
    per_slice = finish_with(tmp_path, mask, Postprocess(labels=True, min_size=10,
                                                        per_slice=True), 32, "slices")
    for z in range(3):
        expected = labels_from_proba(mask[z].astype(np.float32), 0.5, min_size=10)
        assert same_partition(per_slice[z], expected) and per_slice[z].max() == expected.max()
    two_axes = finish_with(tmp_path, mask.reshape(1, 3, 70, 90).repeat(2, axis=0),
                           Postprocess(labels=True), 32, "tz")
    for t in range(2):
        for z in range(3):
            assert same_partition(two_axes[t, z], labels_from_proba(mask[z].astype(np.float32)))


# ---- outputs are OME-Zarr (NGFF 0.5) images ----------------------------------------------------


def _check_ngff_image(group_path, ndim):
    """The MUSTs of NGFF 0.5 for a one-level image, checked on the stored JSON."""
    import json

    meta = json.loads((group_path / "zarr.json").read_text())
    assert meta["zarr_format"] == 3 and meta["node_type"] == "group"
    ome = meta["attributes"]["ome"]
    assert ome["version"] == "0.5"
    multiscale, = ome["multiscales"]
    axes = multiscale["axes"]
    assert len(axes) == ndim and len({a["name"] for a in axes}) == ndim
    assert sum(a.get("type") == "space" for a in axes) in (2, 3)
    dataset, = multiscale["datasets"]
    assert dataset["path"] == "0"
    transforms = dataset["coordinateTransformations"]
    assert transforms[0]["type"] == "scale" and [t["type"] for t in transforms].count("scale") == 1
    assert all(len(t[t["type"]]) == ndim for t in transforms)
    assert [t["type"] for t in transforms] in (["scale"], ["scale", "translation"])
    array = json.loads((group_path / "0" / "zarr.json").read_text())
    assert array["node_type"] == "array" and len(array["shape"]) == ndim
    assert array["dimension_names"] == [a["name"] for a in axes]
    return meta["attributes"]


def test_outputs_are_ngff_images_with_the_source_geometry_and_provenance(tmp_path, rng):
    from conftest import write_ome_zarr
    from napari_fmbff.inference.postprocess import Postprocess

    # A z-stack with an offset in space, micrometre units: the output keeps both.
    write_ome_zarr(tmp_path / "in.zarr", rng.integers(0, 255, (1, 1, 4, 64, 80), np.uint8),
                   scale=(1, 1, 3.0, 0.5, 0.25))
    src = zarr.open_group(str(tmp_path / "in.zarr"), mode="r+")
    ms = src.attrs["multiscales"]
    ms[0]["axes"] = [{"name": a, "type": t, **({"unit": "micrometer"} if t == "space" else {})}
                     for a, t in zip("tczyx", ["time", "channel", "space", "space", "space"])]
    ms[0]["datasets"][0]["coordinateTransformations"].append(
        {"type": "translation", "translation": [0, 0, 30.0, 10.0, 5.0]})
    src.attrs["multiscales"] = ms
    provenance = {"source": str(tmp_path / "in.zarr"), "model": "m.safetensors",
                  "model_sha256": "ab" * 32, "threshold": 0.5}
    mask = blobs3d(rng, (4, 64, 80))
    labels = finish_with(tmp_path, mask, Postprocess(labels=True), 32, provenance=provenance,
                         scale=(3.0, 0.5, 0.25), probabilities=True)
    attrs = _check_ngff_image(tmp_path / "out.zarr", 3)
    multiscale = attrs["ome"]["multiscales"][0]
    assert [(a["name"], a["type"], a["unit"]) for a in multiscale["axes"]] == [
        ("z", "space", "micrometer"), ("y", "space", "micrometer"), ("x", "space", "micrometer")]
    scale, shift = multiscale["datasets"][0]["coordinateTransformations"]
    assert scale["scale"] == [3.0, 0.5, 0.25] and shift["translation"] == [30.0, 10.0, 5.0]
    # The labels point back at their image (relative, as NGFF's labels do).
    assert attrs["ome"]["image-label"]["source"] == {"image": "../in.zarr"}
    assert attrs["napari_fmbff"] == {**provenance, "kind": "labels"}
    prob = _check_ngff_image(tmp_path / "out_prob.zarr", 3)
    assert "image-label" not in prob["ome"] and prob["napari_fmbff"]["kind"] == "probability"
    # Our own reader (and so `fmbff segment` on a result) reads them back at their pixel size.
    view = open_large(tmp_path / "out.zarr")
    assert view.shape == (4, 64, 80) and view.scale == (3.0, 0.5, 0.25)
    np.testing.assert_array_equal(np.asarray(view[2]), labels[2])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.zarr", "out.zarr", "out_prob.zarr"]


def test_a_mask_without_known_geometry_is_a_unit_scale_ngff_label_image(tmp_path, rng):
    from napari_fmbff.inference.postprocess import Postprocess

    mask = (rng.random((60, 70)) > 0.5).astype(np.uint8)
    # No input to copy a geometry from; the output's name is that of a scratch array.
    got = finish_with(tmp_path, mask, Postprocess(), 32, name="mask")
    np.testing.assert_array_equal(got, mask)
    attrs = _check_ngff_image(tmp_path / "mask.zarr", 2)
    multiscale = attrs["ome"]["multiscales"][0]
    assert [a["name"] for a in multiscale["axes"]] == ["y", "x"]
    assert multiscale["datasets"][0]["coordinateTransformations"] == [
        {"type": "scale", "scale": [1.0, 1.0]}]
    label = attrs["ome"]["image-label"]
    assert "source" not in label and {c["label-value"] for c in label["colors"]} == {0, 1}
    # Without the segmenter's record, what the job knows; the same keys as other outputs
    # wherever it knows them.
    info = attrs["napari_fmbff"]
    assert info["kind"] == "mask" and info["threshold"] == 0.5 and "package_version" in info


def test_a_finish_stopped_after_staging_is_recovered(tmp_path, rng, monkeypatch):
    import os

    from napari_fmbff.inference.postprocess import Postprocess
    from napari_fmbff.jobs.files import FileJob
    from napari_fmbff.jobs.large_outputs import LargeOutputs

    job = FileJob(str(tmp_path / "in.zarr"), str(tmp_path / "out.zarr"), None, large=True)
    outs = LargeOutputs(job, Postprocess(), (40, 50), 32)
    zarr.open_array(outs.mask_store, mode="r+")[:] = 1
    for c in outs.missing():
        outs.mark_done(c)
    real = os.replace

    def crash(src, dst):  # the array moved into its group, then the process died
        real(src, dst)
        if str(dst).endswith(os.sep + "0"):
            raise KeyboardInterrupt

    monkeypatch.setattr("napari_fmbff.jobs.large_outputs.os.replace", crash)
    with pytest.raises(KeyboardInterrupt):
        outs.finish()
    monkeypatch.setattr("napari_fmbff.jobs.large_outputs.os.replace", real)
    assert not (tmp_path / "out.zarr").exists()
    LargeOutputs(job, Postprocess(), (40, 50), 32, resume=True).finish()
    assert (level0(tmp_path / "out.zarr")[:] == 1).all()
    assert [p.name for p in tmp_path.iterdir()] == ["out.zarr"]


# ---- one intensity range for a whole stack ("volume" scope) -----------------------------------


def _zarr_stack(tmp_path, data, name="ct.zarr"):
    z = zarr.create_array(store=str(tmp_path / name), shape=data.shape, dtype=data.dtype,
                          chunks=(1, 64, 64))
    z[:] = data
    return open_large(tmp_path / name)


def test_volume_scope_is_one_range_for_the_whole_lazy_stack(tmp_path, rng):
    from napari_fmbff import Normalization
    from napari_fmbff.inference.chunked import intensity_ranges, stack_range

    data = rng.integers(0, 4000, (7, 90, 100), dtype=np.uint16)
    data[2] //= 8  # a dark plane: its own percentiles would differ
    view = _zarr_stack(tmp_path, data)
    volume = Normalization(mode="percentile", scope="volume")
    fixed = volume.for_stack(data)  # what the in-memory paths use
    assert stack_range(volume, view) == (fixed.low, fixed.high)
    range_of = intensity_ranges(volume, view)
    assert {range_of((z,)) for z in range(7)} == {(fixed.low, fixed.high)}
    per_plane = intensity_ranges(Normalization(mode="percentile"), view)
    assert per_plane((2,)) != per_plane((3,))
    assert per_plane((2,)) == Normalization(mode="percentile").intensity_range(data[2])


def test_volume_scope_samples_a_bounded_number_of_pixels(rng, monkeypatch):
    from napari_fmbff import Normalization
    from napari_fmbff.data.image_io import AxesView
    from napari_fmbff.inference.chunked import stack_range

    monkeypatch.setattr("napari_fmbff.model.normalization.PERCENTILE_SAMPLE_PIXELS", 2**16)
    data = rng.integers(0, 4000, (100, 512, 512), dtype=np.uint16)

    class Lazy:  # counts what is read, like a zarr array would decode it
        shape, dtype, ndim, read = data.shape, data.dtype, 3, 0

        def __getitem__(self, key):
            block = data[key]
            Lazy.read += block.size
            return block

    lo, hi = stack_range(Normalization(scope="volume"), AxesView(Lazy(), "zyx"))
    assert 2**15 < Lazy.read <= 2**16  # 25 planes of the 100, one block each: 0.25 %
    exact = np.percentile(data, [1, 99.8])
    assert abs(lo - exact[0]) < 0.05 * exact[1] and abs(hi - exact[1]) < 0.05 * exact[1]


def test_chunked_volume_scope_equals_the_in_memory_stack(tiny_net, tmp_path, rng):
    from napari_fmbff import Normalization
    from napari_fmbff.inference.postprocess import Postprocess
    from napari_fmbff.jobs.files import predict_job

    data = rng.integers(0, 4000, (5, 70, 96), dtype=np.uint16)  # 4 planes would read as RGBA
    data[1] //= 8
    volume = Normalization(mode="percentile", scope="volume")
    seg = Segmenter(tiny_net, device="cpu", tile_size=64, normalization=volume)
    out = np.zeros(data.shape, np.float32)
    drain(iter_segment_chunked(seg, _zarr_stack(tmp_path, data), prob_out=out, chunk=64))
    _, expected = predict_job(seg, data, False, Postprocess(), with_probs=True)
    np.testing.assert_allclose(out, expected, atol=1e-5)
    per_plane = Segmenter(tiny_net, device="cpu", tile_size=64,
                          normalization=Normalization(mode="percentile"))
    assert np.abs(out[1] - per_plane.predict_proba(data[1])).max() > 1e-4  # not per plane


# ---- the command line: a zarr stack -> 3D ids, or per plane on request --------------------------


def test_cli_zarr_stack_labels_are_3d_unless_per_slice(tiny_model, tmp_path, rng):
    from conftest import same_partition
    from napari_fmbff.cli import main
    from napari_fmbff.inference.postprocess import label_volume, labels_from_proba

    data = rng.integers(0, 4000, (5, 80, 70), dtype=np.uint16)
    _zarr_stack(tmp_path, data)
    seg = Segmenter(tiny_model, device="cpu", tile_size=64)
    probs = np.stack([seg.predict_proba(plane) for plane in data])
    threshold = float(f"{np.quantile(probs, 0.6):.6f}")
    common = ["segment", str(tmp_path / "ct.zarr"), "-m", tiny_model, "--tile-size", "64",
              "--chunk", "32", "--labels", "--min-size", "5", "--threshold", str(threshold)]
    assert main([*common, "-o", str(tmp_path / "3d")]) == 0
    assert main([*common, "-o", str(tmp_path / "2d"), "--per-slice-labels"]) == 0
    volume = level0(tmp_path / "3d" / "ct.zarr")[:]
    expected = label_volume(probs >= threshold, 5)
    assert volume.max() == expected.max() > 1 and same_partition(volume, expected)
    slices = level0(tmp_path / "2d" / "ct.zarr")[:]
    for z in range(5):
        assert same_partition(slices[z], labels_from_proba(probs[z], threshold, min_size=5))
    assert volume.max() < sum(int(slices[z].max()) for z in range(5))  # objects span planes
