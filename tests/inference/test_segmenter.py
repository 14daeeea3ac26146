import numpy as np
import pytest
import torch

from napari_fmbff import Normalization, Segmenter, labels_from_proba
from napari_fmbff.inference.progress import Progress
from napari_fmbff.inference.runtime import resolve_device
from napari_fmbff.inference.staging import HostStaging
from napari_fmbff.inference.tiling import TileGrid


class PerPixel(torch.nn.Module):
    """A stand-in network whose output at a pixel depends on that pixel only: tiling and
    padding must then be invisible, so tiled == untiled exactly."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 1, 1)
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor([0.7, -1.3, 2.1]).view(1, 3, 1, 1))
            self.conv.bias.fill_(0.2)
        self.calls = 0
        self.batch_sizes = []

    def forward(self, x):
        self.calls += 1
        self.batch_sizes.append(x.shape[0])
        assert x.shape[-1] % 32 == 0 and x.shape[-2] % 32 == 0
        return self.conv(x)


def untiled(image, **kw):
    size = max(-(-max(image.shape[:2]) // 32) * 32, 32)
    return Segmenter(PerPixel(), device="cpu", tile_size=size, overlap=0, **kw).predict_proba(image)


@pytest.mark.parametrize("shape", [(333, 517, 3), (17, 29), (40, 1500), (1100, 37, 3), (96, 96, 4)])
def test_tiled_equals_untiled(shape, rng):
    image = rng.integers(0, 255, size=shape, dtype=np.uint8)
    seg = Segmenter(PerPixel(), device="cpu", tile_size=64, overlap=0.25, batch_size=3)
    tiled = seg.predict_proba(image)
    assert tiled.shape == shape[:2] and tiled.dtype == np.float32
    np.testing.assert_allclose(tiled, untiled(image), atol=1e-6)
    assert 0 <= tiled.min() and tiled.max() <= 1


def test_real_network_tiles_blend_without_seams(tiny_net, rng):
    # A real network sees context, so tiles differ near their borders; blending must keep the
    # stitched map close to the single-pass one (no hard seams).
    image = rng.integers(0, 255, size=(200, 200, 3), dtype=np.uint8)
    tiled = Segmenter(tiny_net, device="cpu", tile_size=128, overlap=0.25).predict_proba(image)
    whole = Segmenter(tiny_net, device="cpu", tile_size=224, overlap=0).predict_proba(image)
    assert tiled.shape == (200, 200)
    assert np.abs(tiled - whole).mean() < 0.05


def test_grid_covers_image_and_tiles_are_multiples_of_32():
    grid = TileGrid.plan(1000, 77, 256, 0.25)
    assert grid.tile_h == 256 and grid.tile_w == 96
    assert grid.ys[0] == 0 and grid.ys[-1] + grid.tile_h == 1000
    assert all(b - a <= 256 - 64 for a, b in zip(grid.ys, grid.ys[1:]))
    with pytest.raises(ValueError, match="multiple of 32"):
        TileGrid.plan(100, 100, 100, 0.25)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int16, np.float32, bool])
def test_dtypes_are_accepted(dtype, rng):
    image = (rng.random((70, 90)) * 1000).astype(dtype)
    prob = Segmenter(PerPixel(), device="cpu", tile_size=64).predict_proba(image)
    assert prob.shape == (70, 90) and np.isfinite(prob).all()


def test_percentile_normalisation_is_joint_over_channels():
    norm = Normalization(mode="percentile", low=0, high=100, mean=(0, 0, 0), std=(1, 1, 1))
    image = np.zeros((10, 10, 3), np.uint16)
    image[..., 0] = 1000  # a red image must stay red, not become grey
    lo, hi = norm.intensity_range(image)
    x = norm.apply(torch.from_numpy(image.astype(np.int32))[None], (lo, hi))
    assert x.shape == (1, 3, 10, 10) and x.dtype == torch.float32
    assert x[0, 0].min() == pytest.approx(1) and x[0, 1].max() == pytest.approx(0)
    assert Normalization().intensity_range(np.zeros((4, 4), np.uint8)) == (0, 255)


def test_dask_input_and_zarr_output_match_numpy(rng, tmp_path):
    import dask.array as da
    import zarr

    image = rng.integers(0, 60000, size=(300, 260), dtype=np.uint16)
    seg = Segmenter(PerPixel(), device="cpu", tile_size=64, overlap=0.25)
    expected = seg.predict_proba(image)
    lazy = da.from_array(image, chunks=(100, 100))
    out = zarr.open_array(str(tmp_path / "prob.zarr"), mode="w", shape=image.shape,
                          chunks=(64, 64), dtype="f4")
    result = seg.predict_proba(lazy, out=out)
    assert result is out
    np.testing.assert_allclose(out[:], expected, atol=1e-6)
    src = zarr.open_array(str(tmp_path / "img.zarr"), mode="w", shape=image.shape,
                          chunks=(50, 50), dtype="u2")
    src[:] = image
    np.testing.assert_allclose(seg.predict_proba(src), expected, atol=1e-6)


def test_iter_predict_yields_progress_and_stops_when_closed(rng):
    image = rng.integers(0, 255, size=(256, 256), dtype=np.uint8)
    net = PerPixel()
    seg = Segmenter(net, device="cpu", tile_size=64, overlap=0, batch_size=2)
    gen = seg.iter_predict(image)
    first = next(gen)
    assert first == Progress("tiles", 0, 16)
    second = next(gen)
    assert second.done == 2 and second.fraction == pytest.approx(2 / 16)
    gen.close()
    assert net.calls == 1  # nothing ran after the consumer stopped


def test_out_of_memory_halves_the_batch(rng):
    class Picky(PerPixel):
        def forward(self, x):
            if x.shape[0] > 2:
                raise torch.OutOfMemoryError("simulated")
            return super().forward(x)

    image = rng.integers(0, 255, size=(256, 256), dtype=np.uint8)
    seg = Segmenter(Picky(), device="cpu", tile_size=64, overlap=0, batch_size=8)
    prob = seg.predict_proba(image)
    assert seg.batch_size == 2
    np.testing.assert_allclose(prob, untiled(image), atol=1e-6)


def test_flip_tta_is_exact_for_a_per_pixel_model(rng):
    image = rng.integers(0, 255, size=(90, 70, 3), dtype=np.uint8)
    seg = Segmenter(PerPixel(), device="cpu", tile_size=64, tta=True)
    np.testing.assert_allclose(seg.predict_proba(image), untiled(image), atol=1e-6)


@pytest.mark.parametrize("shape", [(5, 64, 64), (64,), (2, 3, 64, 64), (0, 10)])
def test_bad_shapes_are_clear_errors(shape):
    seg = Segmenter(PerPixel(), device="cpu", tile_size=64)
    with pytest.raises(ValueError, match="2D image|empty"):
        seg.predict_proba(np.zeros(shape, np.uint8))


def test_all_nan_image_is_a_clear_error():
    seg = Segmenter(PerPixel(), device="cpu", tile_size=64)
    with pytest.raises(ValueError, match="no finite values"):
        seg.predict_proba(np.full((40, 40), np.nan, np.float32))


def test_labels_from_proba_threshold_min_size_holes_and_split():
    prob = np.zeros((40, 40), np.float32)
    prob[2:12, 2:12] = 0.9       # object A, with a hole
    prob[6:8, 6:8] = 0.1
    prob[20:30, 20:30] = 0.7     # object B
    prob[35, 35] = 0.95          # a speck
    labels = labels_from_proba(prob, 0.5)
    assert labels.max() == 3
    labels = labels_from_proba(prob, 0.5, min_size=5, fill_holes=True)
    assert labels.max() == 2 and labels[7, 7] > 0 and labels[35, 35] == 0
    assert labels_from_proba(prob, 0.8).max() == 2      # B drops out at 0.8
    merged = labels_from_proba(prob, 0.5, split=False)
    assert set(np.unique(merged)) == {0, 1}


def test_device_resolution():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type in ("cuda", "mps", "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA GPU"):
            resolve_device("cuda")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("pinned", [True, False])
def test_cuda_matches_cpu(tiny_net, rng, pinned):
    image = rng.integers(0, 255, size=(300, 300, 3), dtype=np.uint8)
    cpu = Segmenter(tiny_net, device="cpu", tile_size=128).predict_proba(image)
    gpu_seg = Segmenter(tiny_net, device="cuda", tile_size=128, pinned=pinned)
    assert gpu_seg.amp_dtype in (torch.bfloat16, torch.float16)
    assert (gpu_seg.staging is not None) == pinned
    gpu = gpu_seg.predict_proba(image)
    assert np.abs(gpu - cpu).max() < 0.05
    fp32 = Segmenter(tiny_net, device="cuda", tile_size=128, precision="fp32",
                     pinned=pinned).predict_proba(image)
    assert np.abs(fp32 - cpu).max() < 1e-3


class SlowPerPixel(torch.nn.Module):
    """Per pixel (so tiling is exact) and without matrix units (so CUDA fp32 equals the CPU to
    rounding); on CUDA each batch first spins the GPU, so the host runs far ahead of it and a
    host buffer reused too early, or a row read before its copy finished, shows as wrong
    pixels."""

    def __init__(self, cycles: int = 0):
        super().__init__()
        self.cycles = cycles
        self.register_buffer("w", torch.tensor([0.7, -1.3, 2.1]).view(1, 3, 1, 1))

    def forward(self, x):
        if x.is_cuda and self.cycles:
            torch.cuda._sleep(self.cycles)
        return (x * self.w).sum(1, keepdim=True) + 0.2


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("shape,dtype", [((610, 700, 3), np.uint8), ((530, 470), np.uint16)])
def test_pinned_copies_are_exact_while_the_gpu_lags(rng, shape, dtype):
    high = 255 if dtype == np.uint8 else 60000
    images = [rng.integers(0, high, size=shape, dtype=dtype) for _ in range(2)]
    cpu = Segmenter(SlowPerPixel(), device="cpu", tile_size=64, batch_size=2)
    pinned = Segmenter(SlowPerPixel(4_000_000), device="cuda", tile_size=64, batch_size=2,
                       precision="fp32")
    plain = Segmenter(SlowPerPixel(4_000_000), device="cuda", tile_size=64, batch_size=2,
                      precision="fp32", pinned=False)
    assert pinned.staging is not None and plain.staging is None
    for image in images:  # the second image reuses the first one's host buffers
        expected = cpu.predict_proba(image)
        got = pinned.predict_proba(image)
        np.testing.assert_allclose(got, expected, atol=1e-5)
        np.testing.assert_array_equal(got, plain.predict_proba(image))
        region = pinned.predict_region(image, (100, 300), (50, 260))
        np.testing.assert_allclose(region, expected[100:300, 50:260], atol=1e-5)
    assert all(buf.data.is_pinned() for buf in pinned.staging._free)


def test_gaussian_blend_is_seamless_and_centre_weighted(rng):
    image = rng.integers(0, 255, size=(300, 410, 3), dtype=np.uint8)
    seg = Segmenter(PerPixel(), device="cpu", tile_size=64, overlap=0.25, blend="gaussian")
    np.testing.assert_allclose(seg.predict_proba(image), untiled(image), atol=1e-6)
    w = seg.plan(300, 410).window()
    assert w[32, 32] == pytest.approx(w.max()) and w[0, 0] < 0.01 * w.max()
    with pytest.raises(ValueError, match="blend must be one of"):
        Segmenter(PerPixel(), device="cpu", blend="linear")


def test_compile_is_opt_in_and_keeps_one_batch_shape(rng, monkeypatch):
    # torch.compile itself is exercised on the GPU machine (benchmarks/gpu_check.sh); here:
    # that it is asked for the right mode and that every batch then has one shape.
    calls = []

    def fake_compile(model, **kwargs):
        calls.append(kwargs)
        return model

    monkeypatch.setattr(torch, "compile", fake_compile)
    net = PerPixel()
    image = rng.integers(0, 255, size=(200, 190, 3), dtype=np.uint8)  # 4 x 4 tiles
    plain = Segmenter(PerPixel(), device="cpu", tile_size=64, batch_size=4).predict_proba(image)
    seg = Segmenter(net, device="cpu", tile_size=64, batch_size=4, compile=True)
    assert calls == [{"mode": "default", "dynamic": False}]
    np.testing.assert_allclose(seg.predict_proba(image), plain, atol=1e-6)
    assert len(seg.plan(200, 190)) == 16 and net.batch_sizes == [4] * 4
    seg.batch_size = 6  # 16 tiles = 6 + 6 + 4: the last batch is padded to 6
    net.batch_sizes.clear()
    np.testing.assert_allclose(seg.predict_proba(image), plain, atol=1e-6)
    assert net.batch_sizes == [6] * 3


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_compiled_cuda_graphs_match_eager(tiny_net, rng):
    image = rng.integers(0, 255, size=(300, 260, 3), dtype=np.uint8)
    eager = Segmenter(tiny_net, device="cuda", tile_size=128, batch_size=4, precision="fp32")
    compiled = Segmenter(tiny_net, device="cuda", tile_size=128, batch_size=4, precision="fp32",
                         compile=True)
    expected = eager.predict_proba(image)
    for _ in range(2):  # the second run replays the recorded graphs
        assert np.abs(compiled.predict_proba(image) - expected).max() < 1e-3


def same(a, b):
    """Equal up to float32 rounding: the CPU's convolution kernels can round the last bit
    differently for batches of other shapes (seen with torch 2.14 and 2.15 on some x86 CPUs);
    a tile put in the wrong place or a lost row is off by far more than 1e-6."""
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)


def staged(seg, staging_cls=HostStaging):
    """The pinned path's bookkeeping (buffer ring, deferred row writes) on the CPU."""
    seg.staging = staging_cls(torch.device("cpu"))
    return seg


class LaggingStaging(HostStaging):
    """Copies never report done on their own: rows are written only when the limit of rows
    in flight forces a wait, or at the end."""

    def ready(self, buf):
        return False


@pytest.mark.parametrize("shape,dtype", [((333, 517, 3), np.uint8), ((170, 229), np.uint16),
                                         ((96, 150, 4), np.uint8), ((70, 90), bool),
                                         ((130, 65), np.float32)])
@pytest.mark.parametrize("staging_cls", [HostStaging, LaggingStaging])
def test_staged_path_equals_the_plain_path(rng, shape, dtype, staging_cls):
    image = (rng.random(shape) * 1000).astype(dtype)
    plain = Segmenter(PerPixel(), device="cpu", tile_size=64, batch_size=3).predict_proba(image)
    seg = staged(Segmenter(PerPixel(), device="cpu", tile_size=64, batch_size=3), staging_cls)
    same(seg.predict_proba(image), plain)
    same(seg.predict_proba(image), plain)  # buffers reused
    same(seg.predict_region(image, (10, 60), (5, 50)), plain[10:60, 5:50])


def test_staged_path_reuses_buffers_across_sizes_and_after_a_cancel(rng):
    seg = staged(Segmenter(PerPixel(), device="cpu", tile_size=64, batch_size=4), LaggingStaging)
    plain = Segmenter(PerPixel(), device="cpu", tile_size=64, batch_size=4)
    big = rng.integers(0, 255, size=(400, 900, 3), dtype=np.uint8)
    gen = seg.iter_predict(big)  # 19 tiles a row: 12 batches of 4 finish 2 rows
    for _ in range(13):
        next(gen)
    gen.close()  # cancelled with rows in flight: its buffers go back to the pool
    assert len(seg.staging._free) == 4  # 2 upload buffers + 2 row buffers
    for shape in [(100, 120, 3), (400, 900, 3), (300, 2000, 3), (50, 50, 3)]:
        image = rng.integers(0, 255, size=shape, dtype=np.uint8)
        same(seg.predict_proba(image), plain.predict_proba(image))
    assert len(seg.staging._free) <= 8


def test_staged_path_pads_compiled_batches_and_halves_on_oom(rng, monkeypatch):
    class Picky(PerPixel):
        def forward(self, x):
            if x.shape[0] > 2:
                raise torch.OutOfMemoryError("simulated")
            return super().forward(x)

    image = rng.integers(0, 255, size=(200, 190, 3), dtype=np.uint8)
    plain = Segmenter(PerPixel(), device="cpu", tile_size=64, batch_size=4).predict_proba(image)
    seg = staged(Segmenter(Picky(), device="cpu", tile_size=64, batch_size=8))
    same(seg.predict_proba(image), plain)
    assert seg.batch_size == 2
    monkeypatch.setattr(torch, "compile", lambda model, **kw: model)
    net = PerPixel()
    seg = staged(Segmenter(net, device="cpu", tile_size=64, batch_size=6, compile=True))
    same(seg.predict_proba(image), plain)
    assert net.batch_sizes == [6] * 3


@pytest.mark.parametrize("norm", [Normalization(), Normalization(mode="percentile"),
                                  Normalization(mode="fixed", low=10, high=3000,
                                                mean=(0.1, 0.2, 0.3), std=(0.5, 0.6, 0.7))])
def test_staged_normalisation_is_the_normalisation(rng, norm):
    seg = staged(Segmenter(PerPixel(), device="cpu", normalization=norm))
    raw = torch.from_numpy(rng.integers(0, 4000, size=(2, 32, 32, 3)).astype(np.int32))
    ir = norm.intensity_range(raw.numpy())
    torch.testing.assert_close(seg._normalize_staged(raw, ir), norm.apply(raw, ir),
                               rtol=0, atol=0)


def test_pinned_is_cuda_only():
    assert Segmenter(PerPixel(), device="cpu").staging is None
    assert Segmenter(PerPixel(), device="cpu", pinned=False).staging is None
