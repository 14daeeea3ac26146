"""What a new user meets first: the demo without a screen, the cluster extra, the metadata."""

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from napari_fmbff.cli import main

ROOT = Path(__file__).resolve().parents[1]


def _without_display():
    env = {k: v for k, v in os.environ.items()
           if k not in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM")}
    return env


@pytest.mark.skipif(sys.platform in ("darwin", "win32"), reason="X11 / Wayland only")
def test_demo_without_a_display_says_headless_and_exits_2(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "napari_fmbff.cli", "demo"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300, env=_without_display())
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "--headless" in lines[0], proc.stderr
    assert "qt.qpa" not in proc.stderr.lower()


def test_readme_demo_command_can_run_twice(tmp_path, monkeypatch, models_dir):
    monkeypatch.chdir(tmp_path)
    argv = ["demo", "--headless", "--out", "demo-out", "--overwrite", "--device", "cpu"]
    assert main(argv) == 0
    assert main(argv) == 0
    assert (tmp_path / "demo-out" / "endoscopy_overlay.png").exists()
    readme = (ROOT / "README.md").read_text()
    assert "fmbff demo --headless --out demo-out --overwrite" in readme
    assert "/demo-out/" in (ROOT / ".gitignore").read_text().split()


def test_cluster_options_without_distributed_name_the_extra(tmp_path, monkeypatch, capsys,
                                                            models_dir):
    import numpy as np

    from napari_fmbff.data.image_io import write_image

    write_image(tmp_path / "a.png", np.zeros((64, 64), np.uint8))
    monkeypatch.setitem(sys.modules, "distributed", None)  # "import distributed" fails
    code = main(["segment", str(tmp_path / "a.png"), "--out", str(tmp_path / "out"),
                 "--workers", "2", "--device", "cpu"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and 'pip install "napari-fmbff[cluster]"' in err, err


def test_metadata_extras_and_licence():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    project = meta["project"]
    everything = " ".join(project["dependencies"]
                          + sum(project["optional-dependencies"].values(), []))
    assert "pyqt5" not in everything.lower()
    assert project["optional-dependencies"]["napari"] == ["napari[pyqt6]>=0.9.2,<0.10"]
    assert not any("distributed" in d for d in project["dependencies"])
    assert any("distributed" in d for d in project["optional-dependencies"]["cluster"])
    for unused in ("superqt", "npe2"):
        assert not any(d.startswith(unused) for d in project["dependencies"])
    for used in ("torchvision", "psygnal", "scipy", "matplotlib", "pillow", "pydicom", "nibabel"):
        assert any(d.startswith(used) for d in project["dependencies"]), used
    assert meta["build-system"]["requires"] == ["setuptools>=77"]
    assert project["license"] == "BSD-3-Clause" and project["license-files"] == ["LICENSE"]
    assert "BSD 3-Clause" in (ROOT / "LICENSE").read_text()
    assert {"Source Code", "Documentation", "User Support"} <= set(project["urls"])
    tox = (ROOT / "tox.ini").read_text()
    assert "envlist = py{311,312,313}" in tox  # requires-python >= 3.11
    assert project["requires-python"] == ">=3.11"
