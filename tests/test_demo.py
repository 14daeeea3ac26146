"""The one-command demo and the bundled starter model."""

import os
import subprocess
import sys

import numpy as np
import pytest

from napari_fmbff import list_models, load_model
from napari_fmbff.cli import main
from napari_fmbff.data.image_io import read_image
from napari_fmbff.data.synthetic import LOOKS, make_sample


def test_starter_is_bundled_small_and_registered(models_dir):
    models = list_models()
    assert "starter" in models
    assert models["starter"].stat().st_size <= 25e6
    net = load_model("starter")
    assert net.config.encoder == "tf_efficientnet_lite0"
    prov = net.metadata["provenance"]
    assert prov["best_val_dice"] > 0.9 and prov["encoder_init"]


def test_headless_demo_writes_overlay_and_a_good_dice(tmp_path, capsys, models_dir):
    assert main(["demo", "--headless", "--out", str(tmp_path), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    dice = float(out.split("Dice ")[1].split(",")[0])
    assert dice > 0.8
    overlay = read_image(tmp_path / "endoscopy_overlay.png")
    assert overlay.shape == (512, 512, 3)
    # Never silently overwritten.
    assert main(["demo", "--headless", "--out", str(tmp_path)]) == 2


@pytest.mark.parametrize("look", LOOKS)
def test_generator_is_seeded_and_has_lesions(look):
    a, ma = make_sample(look, size=128, seed=3, n_lesions=1)
    b, mb = make_sample(look, size=128, seed=3, n_lesions=1)
    np.testing.assert_array_equal(a, b)
    assert ma.any() and (ma == mb).all()
    _, empty = make_sample(look, size=128, seed=3, n_lesions=0)
    assert not empty.any()
    with pytest.raises(ValueError, match="look must be"):
        make_sample("xray")


@pytest.mark.skipif(not os.environ.get("DISPLAY"), reason="needs an X server (pytest-xvfb)")
def test_demo_window_with_a_screen(tmp_path):
    """The GUI demo in a fresh process: torch is first imported after napari's OpenGL is up,
    which is exactly the path a napari user's first click takes."""
    shot = tmp_path / "demo.png"
    env = {**os.environ, "FMBFF_MODELS_DIR": str(tmp_path / "models")}
    proc = subprocess.run([sys.executable, "-m", "napari_fmbff.cli", "demo", "--screenshot",
                           str(shot)], capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    picture = read_image(shot)
    assert picture.shape[0] > 500 and picture.shape[1] > 800
    assert picture[..., :3].std() > 10  # a real picture, not a blank canvas
