"""napari sample data: procedural lesion images with their ground truth (see data.py)."""

from __future__ import annotations

from .data.keys import SAMPLE as SAMPLE_TAG

#: Layer metadata key of a bundled sample image (its look), so widgets know a sample.


def _sample(look: str):
    from .data.synthetic import make_sample
    from .demo import DEMO_SEED

    image, mask = make_sample(look, size=512, seed=DEMO_SEED, n_lesions=1)
    return [
        (image, {"name": f"{look} sample", "rgb": image.ndim == 3,
                 "metadata": {SAMPLE_TAG: look}}, "image"),
        (mask, {"name": f"{look} ground truth", "opacity": 0.4, "visible": False}, "labels"),
    ]


def endoscopy_sample():
    return _sample("endoscopy")


def dermoscopy_sample():
    return _sample("dermoscopy")


def ultrasound_sample():
    return _sample("ultrasound")
