"""Segmenting with FM-BFF-Net on LiteMedSAM's frozen encoder (``model.medical_encoder``, issue
30's lever 1): whole slices, seen as LiteMedSAM sees them.

Such a model does not run on tiles: its encoder takes a whole slice prepared as LiteMedSAM's
(``litemedsam.prepare``: one intensity range, the longest side resized to 256, padded to 256 x
256), and its answer on that grid is resized back to the slice. Its embedding (the TinyViT's
``neck``) is LiteMedSAM's image embedding, so the slices it segments are handed to LiteMedSAM's
cache (``litemedsam.embeddings``): redrawing them from a box then costs the decoder only.
``training.medical`` fine-tunes it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np


@dataclass
class SliceFeatures:
    """One slice's frozen features and where the slice lies in the 256 x 256 input."""
    s2: object            # torch (1, 128, 128, 128): the TinyViT's stride-2 map
    s4: object            # torch (1, 256, 64, 64): its embedding, LiteMedSAM's
    shape: tuple          # the slice's (H, W)
    resized: tuple        # its (H, W) inside the 256 x 256 input
    scale: float          # input pixels per slice pixel


def is_medical(net) -> bool:
    """Whether ``net`` is FM-BFF-Net on LiteMedSAM's encoder (segments whole slices here)."""
    from ..model.medical_encoder import NAME

    config = getattr(net, "config", None)
    return getattr(config, "encoder", None) == NAME


def dihedral(x, k: int):
    """The k-th of the 8 flips and quarter turns of the last two axes (k = 0: unchanged)."""
    import torch

    x = torch.rot90(x, k % 4, dims=(-2, -1))
    return torch.flip(x, dims=(-1,)) if k >= 4 else x


def encode(net, plane, intensity_range=None, k: int = 0) -> SliceFeatures:
    """The frozen features of ``plane`` (flipped / turned by ``k``, see ``dihedral``), on the
    network's device; ``intensity_range``: (low, high) mapped to [0, 1], e.g. the volume's
    ``litemedsam.volume_range`` (None: the plane's own 0.5 / 99.5 percentiles)."""
    from .litemedsam import prepare

    x, (shape, resized, scale) = prepare(plane, intensity_range)
    device = next(net.parameters()).device
    s2, s4 = net.encoder.frozen_features(dihedral(x, k).to(device))
    return SliceFeatures(s2, s4, shape, resized, scale)


def predict_plane(net, feats: SliceFeatures) -> np.ndarray:
    """float32 (H, W) probabilities for one encoded slice (k = 0)."""
    import torch
    import torch.nn.functional as F

    with torch.no_grad():
        logits = net.forward_features(net.encoder.from_frozen(feats.s2, feats.s4))
        nh, nw = feats.resized
        logits = F.interpolate(logits[..., :nh, :nw], feats.shape, mode="bilinear",
                               align_corners=False)
    return torch.sigmoid(logits)[0, 0].float().cpu().numpy()


def share_embedding(plane, feats: SliceFeatures, intensity_range, device) -> None:
    """Hand the slice's embedding to LiteMedSAM's cache: a box on it (the redraw, the ends)
    then runs the decoder only."""
    from . import litemedsam

    embedding = litemedsam.Embedding(feats.s4, feats.shape, feats.resized, feats.scale,
                                     str(device))
    litemedsam.embeddings.put(plane, device, intensity_range, embedding)


def same_encoder(net) -> bool:
    """Whether ``net``'s TinyViT holds LiteMedSAM's own weights (then its embeddings are
    LiteMedSAM's; a model built with random weights, as in tests, shares nothing)."""
    import torch

    from . import litemedsam

    mine = next(net.encoder.tinyvit.parameters())
    theirs = next(litemedsam.model("cpu").image_encoder.parameters())
    return mine.shape == theirs.shape and torch.equal(mine.detach().cpu(), theirs.detach().cpu())


def iter_predict_slices(net, volume, zs, intensity_range=None, share: bool = True,
                        out=None, total: int | None = None):
    """Generator: the model's probabilities on the slices ``zs`` of ``volume`` (yields
    ``Progress``, "slices", of ``total``, default ``len(zs)``); returns {z: float32 (H, W)}.
    ``zs`` may be an iterator that looks at the answers so far (``propagate.outward_slices``):
    each one is written into ``out`` ((Z, H, W), when given) before the next slice is asked
    for. ``share``: slices where the model marks something, and their neighbours, have their
    embeddings handed to LiteMedSAM's cache (``share_embedding``; as many as it keeps)."""
    from . import litemedsam
    from .progress import Progress

    net.eval()
    device = next(net.parameters()).device
    found, kept = {}, []
    total = len(zs) if total is None else total
    for k, z in enumerate(zs):
        plane = np.asarray(volume[z])
        feats = encode(net, plane, intensity_range)
        found[z] = predict_plane(net, feats)
        if out is not None:
            out[z] = found[z]
        kept.append((z, plane, replace(feats, s2=None)))  # the embedding is all that is shared
        yield Progress("slices", k + 1, total)
    if share and litemedsam.available() and same_encoder(net):
        marked = {z for z, p in found.items() if p.max() >= 0.5}
        near = {z for z, _, _ in kept if any(abs(z - m) <= 2 for m in marked)}
        chosen = [item for item in kept if item[0] in near][-litemedsam.CACHED_PLANES:]
        key = device.type  # as Propagate's redraw names it (``resolve_device(...).type``)
        for _, plane, feats in chosen:
            share_embedding(plane, feats, intensity_range, key)
    return found
