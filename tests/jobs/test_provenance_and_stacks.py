"""Every written result says how it was made; stacks get whole-volume object ids."""

import numpy as np
import pytest
import tifffile

from conftest import Planes
from napari_fmbff.cli import main
from napari_fmbff.data.image_io import read_provenance, write_image
from napari_fmbff.inference.postprocess import Postprocess
from napari_fmbff.jobs.files import predict_job
from napari_fmbff.model.checkpoint import file_sha256
from napari_fmbff.model.normalization import Normalization


@pytest.fixture
def inputs(tmp_path, rng):
    folder = tmp_path / "in"
    folder.mkdir()
    write_image(folder / "a.png", rng.integers(0, 255, (70, 90, 3), dtype=np.uint8))
    tifffile.imwrite(folder / "ct.tif", rng.integers(-1000, 1000, (3, 64, 64)).astype(np.int16),
                     photometric="minisblack")
    return folder


def test_png_and_tiff_outputs_carry_their_provenance(tiny_model, models_dir, inputs, tmp_path):
    out = tmp_path / "out"
    assert main(["segment", str(inputs), "-m", tiny_model, "-o", str(out), "--tile-size", "64",
                 "--threshold", "0.4", "--window", "soft-tissue", "--probabilities"]) == 0
    sha = file_sha256(models_dir / "tiny.safetensors")
    png = read_provenance(out / "a.png")
    assert png["model"] == "tiny" and png["model_sha256"] == sha
    assert png["threshold"] == 0.4 and png["tile_size"] == 64 and png["overlap"] == 0.25
    assert png["intensity"]["mode"] == "fixed" and png["intensity"]["low"] == -160
    assert png["source"].endswith("a.png") and png["package_version"] and png["date"]
    stack = read_provenance(out / "ct.tif")  # a stack's masks: a multi-page TIFF
    assert stack["model_sha256"] == sha and stack["objects"] == "mask"
    assert read_provenance(out / "ct_prob.tif")["kind"] == "probability"
    assert tifffile.imread(out / "ct.tif").shape == (3, 64, 64)
    # A file written by someone else simply has none.
    write_image(tmp_path / "plain.png", np.zeros((8, 8), np.uint8))
    assert read_provenance(tmp_path / "plain.png") == {}




def two_objects_over_three_slices():
    probs = np.zeros((3, 40, 40), np.float32)
    probs[0:2, 5:15, 5:15] = 1  # one lesion over slices 0 and 1
    probs[2, 25:35, 25:35] = 1  # another, in slice 2 only
    return probs


def test_stack_labels_are_3d_objects_unless_per_slice():
    probs = two_objects_over_three_slices()
    image = np.zeros((3, 40, 40), np.uint16)
    masks, _ = predict_job(Planes(probs), image, False, Postprocess(labels=True), False)
    assert masks.dtype == np.uint16 and masks.max() == 2
    assert masks[0, 10, 10] == masks[1, 10, 10] != masks[2, 30, 30]
    per, _ = predict_job(Planes(probs), image, False,
                         Postprocess(labels=True, per_slice=True), False)
    assert per[0, 10, 10] == per[1, 10, 10] == per[2, 30, 30] == 1
    # min_size counts voxels of the whole object: 200 voxels stay, 100 go.
    big, _ = predict_job(Planes(probs), image, False, Postprocess(labels=True, min_size=150),
                         False)
    assert big[0, 10, 10] == 1 and big[2, 30, 30] == 0


def test_a_volume_scope_is_one_range_for_the_stack(rng):
    image = rng.normal(0, 1, (3, 40, 40)).astype(np.float32)
    image[1] += 100
    seg = Planes(two_objects_over_three_slices())
    seg.normalization = Normalization(mode="percentile", scope="volume")
    predict_job(seg, image, False, Postprocess(), False)
    ranges = {n.intensity_range(image[0]) for n in seg.seen}
    assert len(ranges) == 1 and next(iter(ranges))[1] > 50  # one range, bright slice in it
    assert seg.normalization.scope == "volume"  # the setting itself is left as it was


@pytest.mark.parametrize("window,message", [("liver", "lung, soft-tissue"),
                                            ("300,100", "LOW < HIGH")])
def test_a_bad_window_is_one_line_before_any_work(tiny_model, inputs, tmp_path, capsys,
                                                  window, message):
    out = tmp_path / "out"
    assert main(["segment", str(inputs / "a.png"), "-m", tiny_model, "-o", str(out),
                 "--window", window]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not out.exists()
