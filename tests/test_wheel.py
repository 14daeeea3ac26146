"""load_model("starter") from an installed wheel, not only from this checkout."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_starter_loads_from_a_built_wheel(tmp_path):
    wheels, site = tmp_path / "wheels", tmp_path / "site"
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w",
                            str(wheels), str(ROOT)], capture_output=True, text=True)
    assert build.returncode == 0, build.stderr[-2000:]
    wheel = next(wheels.glob("napari_fmbff-*.whl"))
    install = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q",
                              "--target", str(site), str(wheel)], capture_output=True, text=True)
    assert install.returncode == 0, install.stderr[-2000:]
    # The installed copy comes first on the path; run from elsewhere so the checkout is unseen.
    code = ("import napari_fmbff, numpy as np; from napari_fmbff import load_model, Segmenter; "
            f"assert napari_fmbff.__file__.startswith({str(site)!r}), napari_fmbff.__file__; "
            "net = load_model('starter'); "
            "p = Segmenter(net, device='cpu', tile_size=64).predict_proba(np.zeros((64, 64), np.uint8)); "
            "assert p.shape == (64, 64); "
            "from npe2 import PluginManifest; "
            "m = PluginManifest.from_file(str(__import__('pathlib').Path(napari_fmbff.__file__).parent / 'napari.yaml')); "
            "print('ok', net.metadata['source'])")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=tmp_path, env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin",
                                             "FMBFF_MODELS_DIR": str(tmp_path / "models")})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert str(site) in proc.stdout
