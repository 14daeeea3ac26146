"""The one-command demo without a screen: sample image -> default model -> mask, overlay, Dice."""

from __future__ import annotations

from pathlib import Path

import numpy as np

DEMO_SEED = 2026


def overlay(image: np.ndarray, labels: np.ndarray, truth: np.ndarray | None = None) -> np.ndarray:
    """RGB uint8: prediction filled in green, ground-truth outline in yellow."""
    from scipy import ndimage as ndi

    rgb = np.stack([image] * 3, -1) if image.ndim == 2 else image[..., :3]
    out = rgb.astype(np.float32)
    pred = labels > 0
    out[pred] = 0.55 * out[pred] + 0.45 * np.array([0, 255, 0])
    if truth is not None:
        t = truth > 0
        edge = t & ~ndi.binary_erosion(t, iterations=2)
        out[edge] = (255, 230, 0)
    return out.clip(0, 255).astype(np.uint8)


def run_headless(out_dir, look: str = "endoscopy", model: str | None = None,
                 device: str = "auto", overwrite: bool = False) -> dict:
    """Segment the bundled sample of ``look``; write mask + overlay; return Dice etc."""
    from .data.image_io import write_image
    from .data.synthetic import make_sample
    from .inference.segmenter import Segmenter
    from .model.checkpoint import load_model
    from .model.registry import default_model_name
    from .training.metrics import scores

    name = model or default_model_name()
    image, truth = make_sample(look, size=512, seed=DEMO_SEED, n_lesions=1)
    seg = Segmenter(load_model(name), device=device)
    labels = seg.segment(image)
    out_dir = Path(out_dir)
    write_image(out_dir / f"{look}_image.png", image, overwrite=overwrite)
    write_image(out_dir / f"{look}_mask.png", ((labels > 0) * 255).astype(np.uint8),
                overwrite=overwrite)
    write_image(out_dir / f"{look}_overlay.png", overlay(image, labels, truth), overwrite=overwrite)
    s = scores(labels > 0, truth)
    return {"look": look, "model": name, "device": seg.device_label, "dice": s["dice"],
            "jaccard": s["jaccard"], "overlay": out_dir / f"{look}_overlay.png"}
