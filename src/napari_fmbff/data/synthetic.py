"""Seeded procedural lesion images with exact masks (sample data, tests, starter training).

Not patients: a generator that mimics the look of a modality closely enough to exercise the
pipeline and to pre-train. Every image comes from ``(look, seed)`` alone, so data sets are
reproducible.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

LOOKS = ("endoscopy", "dermoscopy", "ultrasound")
#: Looks kept out of the starter model's training, to measure what fine-tuning adds.
HELD_OUT_LOOKS = ("ct",)


def smooth_noise(rng, shape, sigma: float) -> np.ndarray:
    """Gaussian-filtered white noise scaled to [-1, 1]."""
    n = ndi.gaussian_filter(rng.standard_normal(shape), sigma)
    return n / (np.abs(n).max() + 1e-8)


def blob_mask(rng, shape, center, radius: float, roughness: float = 0.15) -> np.ndarray:
    """A filled closed curve: a circle whose radius wobbles with a few random harmonics."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    dy, dx = yy - center[0], xx - center[1]
    angle = np.arctan2(dy, dx)
    r = np.ones_like(angle)
    for k in range(2, 7):
        r += roughness / k * rng.standard_normal() * np.cos(k * angle + rng.uniform(0, 2 * np.pi))
    stretch = rng.uniform(0.7, 1.3)
    dist = np.hypot(dy * stretch, dx / stretch)
    return dist <= radius * r


def _lesion_count(rng, n_lesions):
    if n_lesions is not None:
        return n_lesions
    return int(rng.choice([0, 1, 1, 1, 1, 1, 2, 2], 1)[0])


def _place(rng, size, count, radius_range):
    centers, radii = [], []
    for _ in range(count):
        radius = rng.uniform(*radius_range) * size
        for _try in range(20):
            c = rng.uniform(radius + 4, size - radius - 4, 2)
            if all(np.hypot(*(c - o)) > radius + r + 8 for o, r in zip(centers, radii)):
                break
        centers.append(c)
        radii.append(radius)
    return centers, radii


def endoscopy(rng, size: int, n_lesions=None):
    """Pink mucosa, vessels, specular highlights, vignetting; polyps with shading, soft edge."""
    h = w = size
    base = np.array([190, 85, 75], np.float32)
    tex = smooth_noise(rng, (h, w), size / 40)[..., None] * 25 + smooth_noise(rng, (h, w), 2)[..., None] * 6
    img = base + tex * np.array([1.0, 0.6, 0.5])
    # Vessels: thin dark random walks.
    vessels = np.zeros((h, w), np.float32)
    for _ in range(rng.integers(4, 10)):
        p, heading = rng.uniform(0, size, 2), rng.uniform(0, 2 * np.pi)
        for _step in range(int(size * 1.5)):
            heading += rng.normal(0, 0.15)
            p += (np.sin(heading), np.cos(heading))
            y, x = int(p[0]), int(p[1])
            if 0 <= y < h and 0 <= x < w:
                vessels[y, x] = 1
    vessels = ndi.gaussian_filter(vessels, 1.0)
    img -= (vessels / (vessels.max() + 1e-8))[..., None] * np.array([25, 30, 22])
    mask = np.zeros((h, w), bool)
    yy, xx = np.mgrid[:h, :w]
    centers, radii = _place(rng, size, _lesion_count(rng, n_lesions), (0.08, 0.2))
    for c, r in zip(centers, radii):
        blob = blob_mask(rng, (h, w), c, r, 0.2)
        mask |= blob
        # A dome lit from the upper left, tinted and with a soft, low-contrast edge.
        dist = ndi.distance_transform_edt(blob)
        dome = np.sqrt(np.clip(dist / (dist.max() + 1e-8), 0, 1))
        light = 1 + 0.25 * (-(yy - c[0]) - (xx - c[1])) / (2 * r)
        tint = np.array([15, -5, 0]) + rng.uniform(-10, 10, 3)
        soft = ndi.gaussian_filter(blob.astype(np.float32), 2.5)[..., None]
        img = img * (1 - soft) + soft * (img + tint + 30 * dome[..., None]) * light[..., None]
    # Specular highlights everywhere, more on domes.
    spots = (rng.random((h, w)) < 0.0002) | (mask & (rng.random((h, w)) < 0.001))
    spots = ndi.gaussian_filter(ndi.binary_dilation(spots, iterations=2).astype(np.float32), 1.2)
    img = img + spots[..., None] * 400
    vignette = 1 - 0.6 * (np.hypot(yy - h / 2, xx - w / 2) / (0.75 * size)) ** 2
    img = img * np.clip(vignette, 0.15, 1)[..., None]
    return np.clip(img, 0, 255).astype(np.uint8), mask


def dermoscopy(rng, size: int, n_lesions=None):
    """Skin texture and hairs; pigmented lesions with irregular borders and colour variegation."""
    h = w = size
    skin = np.array([225, 180, 160], np.float32) + rng.uniform(-20, 20, 3)
    img = skin + smooth_noise(rng, (h, w), size / 30)[..., None] * 12 + rng.normal(0, 3, (h, w, 1))
    mask = np.zeros((h, w), bool)
    centers, radii = _place(rng, size, _lesion_count(rng, n_lesions), (0.12, 0.3))
    for c, r in zip(centers, radii):
        blob = blob_mask(rng, (h, w), c, r, 0.45)
        mask |= blob
        brown = np.array([120, 70, 45], np.float32) + rng.uniform(-25, 25, 3)
        dark = np.array([60, 35, 30], np.float32)
        mix = (smooth_noise(rng, (h, w), r / 5) * 0.5 + 0.5)[..., None]
        colour = brown * (1 - mix) + dark * mix
        dots = (rng.random((h, w)) < 0.004) & blob
        colour = colour - ndi.gaussian_filter(dots.astype(np.float32), 1.5)[..., None] * 300
        soft = ndi.gaussian_filter(blob.astype(np.float32), 1.5)[..., None]
        img = img * (1 - soft) + colour * soft
    hairs = np.zeros((h, w), np.float32)
    for _ in range(rng.integers(0, 12)):
        p, heading = rng.uniform(0, size, 2), rng.uniform(0, 2 * np.pi)
        for _step in range(int(size * rng.uniform(0.3, 1.0))):
            heading += rng.normal(0, 0.02)
            p += (np.sin(heading), np.cos(heading))
            y, x = int(p[0]), int(p[1])
            if 0 <= y < h and 0 <= x < w:
                hairs[y, x] = 1
    hairs = np.clip(ndi.gaussian_filter(hairs, 0.8) * 3, 0, 1)[..., None]
    img = img * (1 - hairs) + np.array([40, 30, 25]) * hairs
    return np.clip(img, 0, 255).astype(np.uint8), mask


def ultrasound(rng, size: int, n_lesions=None):
    """Grey speckle in a fan-shaped field of view; hypoechoic lesions with posterior
    shadowing or enhancement. Returns (Y, X) uint8."""
    h = w = size
    yy, xx = np.mgrid[:h, :w].astype(np.float32)
    apex = (-0.15 * size, w / 2)
    radius = np.hypot(yy - apex[0], xx - apex[1])
    angle = np.arctan2(xx - apex[1], yy - apex[0])
    fan = (np.abs(angle) < 0.6) & (radius > 0.2 * size) & (radius < 1.1 * size)
    echo = 0.5 + 0.25 * smooth_noise(rng, (h, w), size / 25)
    layers = 0.15 * np.sin(yy / size * rng.uniform(8, 20) + smooth_noise(rng, (h, w), size / 10) * 3)
    tissue = np.clip(echo + layers, 0.05, 1)
    mask = np.zeros((h, w), bool)
    inside = [c for c in _place(rng, size, _lesion_count(rng, n_lesions), (0.07, 0.16))]
    for c, r in zip(*inside):
        c = (np.clip(c[0], 0.35 * size, 0.8 * size), c[1] * 0.6 + 0.2 * size)
        blob = blob_mask(rng, (h, w), c, r, 0.25) & fan
        if not blob.any():
            continue
        mask |= blob
        tissue = np.where(blob, tissue * rng.uniform(0.1, 0.3), tissue)
        # Behind the lesion (deeper = larger y): shadow or enhancement.
        cols = blob.any(axis=0)
        below = (yy > c[0] + r) & cols[None, :]
        factor = rng.choice([0.45, 1.5])
        tissue = np.where(below, tissue * factor, tissue)
    speckle = rng.rayleigh(1.0, (h, w))
    img = tissue * speckle * fan * (1 - 0.4 * radius / (1.1 * size))
    img = ndi.gaussian_filter(img, 0.7)
    return np.clip(img * 140, 0, 255).astype(np.uint8), mask & fan


def ct(rng, size: int, n_lesions=None):
    """An abdominal CT slice (int16 Hounsfield units): body ellipse of soft tissue with fat
    rim, a liver-like organ, spine; hypodense lesions inside the organ. Returns (Y, X) int16."""
    h = w = size
    yy, xx = np.mgrid[:h, :w].astype(np.float32)
    cy, cx = h / 2, w / 2
    body = ((yy - cy) / (0.38 * h)) ** 2 + ((xx - cx) / (0.46 * w)) ** 2 <= 1
    inner = ((yy - cy) / (0.34 * h)) ** 2 + ((xx - cx) / (0.42 * w)) ** 2 <= 1
    hu = np.full((h, w), -1000.0, np.float32)
    hu[body] = -100                      # subcutaneous fat
    hu[inner] = 40                       # soft tissue
    organ = blob_mask(rng, (h, w), (cy - 0.05 * h, cx - 0.12 * w), 0.22 * size, 0.15) & inner
    hu[organ] = 60 + 8 * smooth_noise(rng, (h, w), size / 40)[organ]
    spine = np.hypot(yy - (cy + 0.25 * h), xx - cx) < 0.05 * size
    hu[spine] = 700
    mask = np.zeros((h, w), bool)
    ys, xs = np.nonzero(organ & ~spine)
    for _ in range(_lesion_count(rng, n_lesions)):
        if ys.size == 0:
            break
        k = rng.integers(ys.size)
        blob = blob_mask(rng, (h, w), (ys[k], xs[k]), rng.uniform(0.03, 0.07) * size, 0.2) & organ
        mask |= blob
        soft = ndi.gaussian_filter(blob.astype(np.float32), 1.5)
        hu = hu * (1 - soft) + soft * rng.uniform(5, 25)
    hu += rng.normal(0, 12, (h, w))       # quantum noise
    return np.clip(hu, -1024, 3071).astype(np.int16), mask


def make_sample(look: str = "endoscopy", size: int = 512, seed: int = 0, n_lesions=None):
    """One (image, mask) pair: image uint8 (Y, X, 3), or (Y, X) for ultrasound (uint8) and ct
    (int16 Hounsfield units); mask uint8 0/1."""
    known = LOOKS + HELD_OUT_LOOKS
    if look not in known:
        raise ValueError(f"look must be one of {known}, got {look!r}")
    if size < 64:
        raise ValueError(f"size must be at least 64 px, got {size}")
    rng = np.random.default_rng([known.index(look), seed])
    image, mask = {"endoscopy": endoscopy, "dermoscopy": dermoscopy,
                   "ultrasound": ultrasound, "ct": ct}[look](rng, size, n_lesions)
    return image, mask.astype(np.uint8)


def ct_volume(seed: int = 0, n_slices: int = 24, size: int = 192):
    """A procedural abdominal CT patient: (volume int16 HU (Z, Y, X), mask uint8 (Z, Y, X)).

    The ``ct`` look made three-dimensional, with what a patient's series has and one slice
    has not: a body whose outline, organ and texture change slowly from slice to slice, and
    one hypodense lesion inside the organ that grows from nothing to its widest section and
    shrinks again (an ellipsoid with a wobbling outline), so most slices hold no lesion.
    Each patient differs in body, organ, lesion size, depth, contrast and noise. Seeded by
    ``seed`` alone.
    """
    if n_slices < 8:
        raise ValueError(f"a volume needs at least 8 slices, got {n_slices}")
    if size < 64:
        raise ValueError(f"size must be at least 64 px, got {size}")
    rng = np.random.default_rng([len(LOOKS) + len(HELD_OUT_LOOKS), seed])
    z = np.arange(n_slices, dtype=np.float32)
    yy, xx = np.mgrid[:size, :size].astype(np.float32)
    texture = smooth_noise(rng, (n_slices, size, size), (1.5, size / 40, size / 40))
    body = rng.uniform(0.33, 0.40), rng.uniform(0.40, 0.47)
    organ_at = np.array([0.5 - rng.uniform(0.02, 0.08), 0.5 - rng.uniform(0.06, 0.16)]) * size
    organ_r = rng.uniform(0.18, 0.24) * size
    harmonics = rng.standard_normal((2, 5)), rng.uniform(0, 2 * np.pi, (2, 5))
    # the lesion: centre (slice, row, col) in the organ, its half-height in slices, its radius
    depth = rng.uniform(0.35, 0.65) * n_slices
    half = rng.uniform(0.12, 0.25) * n_slices
    angle, dist = rng.uniform(0, 2 * np.pi), rng.uniform(0, 0.45) * organ_r
    centre = organ_at + dist * np.array([np.sin(angle), np.cos(angle)])
    radius = rng.uniform(0.035, 0.08) * size
    lesion_hu, noise = rng.uniform(5, 30), rng.uniform(8, 16)
    volume = np.empty((n_slices, size, size), np.int16)
    mask = np.zeros((n_slices, size, size), bool)
    for k in z.astype(int):
        drift = 1 + 0.04 * np.sin(2 * np.pi * k / n_slices + harmonics[1][0, 0])
        outline = ((yy - size / 2) / (body[0] * size * drift)) ** 2 + \
                  ((xx - size / 2) / (body[1] * size * drift)) ** 2
        hu = np.full((size, size), -1000.0, np.float32)
        hu[outline <= 1] = -100
        inner = outline <= 0.8
        hu[inner] = 40
        organ = _wobbly(yy, xx, organ_at, organ_r * (0.85 + 0.15 * np.cos(np.pi * (k - depth)
                                                                         / n_slices)),
                        harmonics, 0.12, k / n_slices) & inner
        hu[organ] = 60 + 8 * texture[k][organ]
        hu[np.hypot(yy - 0.75 * size, xx - size / 2) < 0.05 * size] = 700  # spine
        section = 1 - ((k - depth) / half) ** 2
        if section > 0:
            blob = _wobbly(yy, xx, centre, radius * np.sqrt(section), harmonics, 0.2,
                           0.5 * k / n_slices) & organ
            mask[k] = blob
            soft = ndi.gaussian_filter(blob.astype(np.float32), 1.2)
            hu = hu * (1 - soft) + soft * (lesion_hu + 6 * texture[k])
        hu += rng.normal(0, noise, (size, size))
        volume[k] = np.clip(hu, -1024, 3071).astype(np.int16)
    return volume, mask.astype(np.uint8)


def _wobbly(yy, xx, centre, radius: float, harmonics, roughness: float, phase: float):
    """A closed curve around ``centre`` whose radius wobbles with fixed ``harmonics``
    (amplitudes, phases) that turn slowly with ``phase`` (0-1 through the volume)."""
    dy, dx = yy - centre[0], xx - centre[1]
    angle = np.arctan2(dy, dx)
    r = np.ones_like(angle)
    amp, ph = harmonics
    for k in range(5):
        r += roughness / (k + 2) * amp[0, k] * np.cos((k + 2) * angle + ph[0, k]
                                                       + 2 * np.pi * phase * amp[1, k] * 0.3)
    return np.hypot(dy, dx) <= radius * r
