"""Which 2D planes of an n-D image to segment, and running a Segmenter over them.

napari layers are (..., Y, X) or (..., Y, X, C) for RGB; we segment the last two spatial
axes plane by plane. Free of napari so the CLI and tests share it.
"""

from __future__ import annotations

import itertools

import numpy as np

from .postprocess import PlaneLabels, Postprocess
from .progress import Progress, relay


def spatial_shape(shape: tuple[int, ...], rgb: bool) -> tuple[int, ...]:
    """The shape without the colour axis: what a Labels layer for this image has."""
    return tuple(shape[:-1]) if rgb else tuple(shape)


def plane_indices(shape: tuple[int, ...], rgb: bool, current: tuple[int, ...] | None = None):
    """Leading-axis indices of the planes to segment: all of them, or only ``current``."""
    lead = spatial_shape(shape, rgb)[:-2]
    if len(spatial_shape(shape, rgb)) < 2:
        raise ValueError(f"an image needs at least 2 spatial axes, got shape {tuple(shape)}")
    if current is not None:
        current = tuple(int(i) for i in current)[: len(lead)]
        if len(current) != len(lead) or any(not 0 <= i < n for i, n in zip(current, lead)):
            raise ValueError(f"slice {current} is outside the stack's leading shape {lead}")
        return [current]
    return list(itertools.product(*(range(n) for n in lead)))


def plane_of(data, index: tuple[int, ...]):
    """One 2D plane of ``data`` (``data`` itself for a 2D image). ``data[()]`` is avoided
    because zarr answers it by reading the whole array, and planes must stay lazy."""
    return data[index] if index else data


def iter_predict_planes(segmenter, data, rgb: bool, planes):
    """Generator over planes: yields the ``Progress`` of the slices ("slices": the planes
    done, ``detail`` the tiles of the one under way); returns {plane_index: probability
    map}. Each plane is read lazily (dask / zarr stay lazy)."""
    probs = {}
    for number, index in enumerate(planes):
        probs[index] = yield from relay(
            segmenter.iter_predict(plane_of(data, index)),
            lambda tiles, n=number: Progress("slices", n, len(planes), tiles))
    return probs


def iter_segment_stack(segmenter, data, rgb: bool, post: Postprocess | None = None, out=None,
                       probs_out=None):
    """Generator: a 2D image, or every plane of a stack (..., Y, X[, C]) (a CT or MR volume)
    one after the other, through ``segmenter``; yields ``Progress`` ("slices") after each and
    returns the labels under ``post`` (``postprocess.labels_from_planes``: 3D objects in a
    (Z, Y, X) volume unless per slice), in ``out`` if given, else in a new array (ids uint32,
    a mask 0/1 uint8). A stack is segmented with the setting made for the whole stack
    (``Normalization.for_stack``: a "volume" scope is one range for all its planes); the
    segmenter's own setting is left as it was. ``probs_out``: an array for the probabilities.
    """
    post = post or Postprocess()
    shape = spatial_shape(data.shape, rgb)
    planes = plane_indices(data.shape, rgb)
    if out is None:
        out = np.zeros(shape, np.uint32 if post.labels else np.uint8)
    labeller = PlaneLabels(post, out)
    setting = segmenter.normalization
    if len(shape) > 2:
        segmenter.normalization = setting.for_stack(data)
    try:
        for number, index in enumerate(planes):
            prob = segmenter.predict_proba(plane_of(data, index))
            if probs_out is not None:
                probs_out[index] = prob
            labeller.add(index, prob)
            yield Progress("slices", number + 1, len(planes))
    finally:
        segmenter.normalization = setting
    return labeller.result()


def write_planes(target: np.ndarray, planes: dict) -> np.ndarray:
    """Put per-plane 2D results into a full-shape array (in place)."""
    for index, plane in planes.items():
        target[index] = plane
    return target


TRAIN_SLICES = ("current slice", "all slices with labels", "all slices")


def training_planes(shape, rgb: bool, labels, mode: str, current=None):
    """Plane indices to fine-tune on: the current one, those with any label, or all."""
    if mode not in TRAIN_SLICES:
        raise ValueError(f"slices must be one of {TRAIN_SLICES}, got {mode!r}")
    if mode == TRAIN_SLICES[0]:
        return plane_indices(shape, rgb, current)
    planes = plane_indices(shape, rgb)
    if mode == TRAIN_SLICES[1]:
        planes = [i for i in planes if np.asarray(plane_of(labels, i)).any()]
        if not planes:
            raise ValueError("no slice has any labels; paint the lesions first")
    return planes
