"""Probabilities -> labels: one settings object (``Postprocess``) and the one function that
applies it (``labels_from_planes``): threshold, holes filled, small objects dropped, objects
numbered per plane or, in a (Z, Y, X) volume, as 3D objects. The Segment widget, ``fmbff
segment`` on files and on CT / MR volumes, and the evaluation all go through it; the chunked
path below takes the same settings. After a propagation through a volume the rule is
``propagated_labels`` (the user's slices verbatim, the model's objects joined to the user's
ids), for ``fmbff propagate``, the widget's Propagate and its re-threshold alike.

Masks too large for memory: connected components, small-object removal and hole filling
with the same results as ``labels_from_proba`` on a whole 2D mask (4-connectivity, like scipy's
defaults) and as ``label_volume`` on a whole (Z, Y, X) stack (6-connectivity: voxels joined
face to face), computed chunk by chunk: each chunk of a plane is labelled on its own with
provisional ids (kept in a scratch zarr), ids that touch across a chunk border (and, in a
volume, between adjacent planes at the same (y, x)) are joined with a sparse graph's connected
components, and a second sweep writes the final values. Memory holds one chunk (two in a
volume: the chunk and the one under it in the previous plane) plus one number per provisional
object.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .regions import Chunk

#: The probability cut everywhere (API, ``fmbff segment``, the widget, the evaluation).
DEFAULT_THRESHOLD = 0.5


@dataclass(frozen=True)
class Postprocess:
    """How probabilities become labels; one object for files, volumes, chunks and the widget.

    Args:
        threshold: probability cut in [0, 1].
        min_size: objects smaller than this are dropped (pixels; voxels for 3D objects).
        fill_holes: holes inside objects are filled, plane by plane.
        labels: objects numbered 1.. (connected components) instead of a 0/1 mask.
        per_slice: the planes of a (Z, Y, X) volume are numbered slice by slice, not as 3D
            objects (ids unique in the volume).
    """

    threshold: float = DEFAULT_THRESHOLD
    min_size: int = 0
    fill_holes: bool = False
    labels: bool = False
    per_slice: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.threshold, bool) or not 0 <= self.threshold <= 1:
            raise ValueError(f"threshold must be in [0, 1], got {self.threshold}")
        if isinstance(self.min_size, bool) or int(self.min_size) != self.min_size \
                or self.min_size < 0:
            raise ValueError(f"min size must be a whole number of pixels >= 0, got {self.min_size}")

    @property
    def whole_objects(self) -> bool:
        """Whether this needs whole objects, across chunk borders (the chunked path)."""
        return self.labels or self.min_size > 0 or self.fill_holes

    def joins(self, stack_axes: int) -> bool:
        """Whether objects are 3D: labels over planes indexed by one stack axis (Z, Y, X)."""
        return self.labels and not self.per_slice and stack_axes == 1

    def record(self) -> dict:
        """The post-processing part of a result's provenance."""
        return {"threshold": self.threshold, "min_size": self.min_size,
                "fill_holes": self.fill_holes,
                "objects": ("labels, per slice" if self.per_slice else "labels, 3D in stacks")
                if self.labels else "mask"}


class PlaneLabels:
    """``labels_from_planes`` one plane at a time, as the planes arrive (so a stack's
    probabilities need not all be kept): ``add(index, prob)`` for each, then ``result()``.

    ``out``: an array of the planes' full shape to write the labels into (its dtype must hold
    the ids); without it, ``result()`` is {index: labels plane}.
    """

    def __init__(self, post: Postprocess, out=None) -> None:
        self.post, self.out = post, out
        self.planes: dict = {}
        self.masks: dict = {}  # planes of 3D objects: joined in ``result``

    def add(self, index, prob) -> None:
        post = self.post
        joins = post.joins(len(index) if isinstance(index, tuple) else 1)
        plane = labels_from_proba(prob, post.threshold, 0 if joins else post.min_size,
                                  post.fill_holes, split=post.labels and not joins)
        if joins:
            self.masks[index] = plane > 0
        else:
            self._put(index, plane.astype(np.uint32) if post.labels else plane.astype(np.uint8))

    def result(self):
        """The labels: ``out``, or {index: labels plane} (ids uint32, a mask 0/1 uint8)."""
        if self.masks:  # one volume, its planes stacked in index order
            order = sorted(self.masks)
            volume = label_volume(np.stack([self.masks.pop(i) for i in order]),
                                  self.post.min_size)
            for k, index in enumerate(order):
                self._put(index, volume[k])
        return self.out if self.out is not None else self.planes

    def _put(self, index, plane: np.ndarray) -> None:
        if self.out is None:
            self.planes[index] = plane
            return
        dtype = np.dtype(self.out.dtype)
        if dtype.kind in "iu" and plane.size and plane.max() > np.iinfo(dtype).max:
            raise ValueError(f"{plane.max()} objects do not fit {dtype} labels; raise the "
                             "min size, or number the objects per slice")
        self.out[index] = plane


def labels_from_planes(probs, post: Postprocess | None = None, out=None):
    """Probability planes -> labels under ``post`` (default ``Postprocess()``): each plane
    thresholded, its holes filled and (per plane) objects under ``min_size`` dropped; objects
    numbered (``post.labels``) or a 0/1 mask.

    probs: {plane index: (Y, X) probabilities} -> {plane index: labels plane}; or an array
    (Y, X) or (..., Y, X) -> labels of its shape (or ``out``, filled). Planes indexed by one
    stack axis, (Z, Y, X), are one volume: its labels are 3D objects (6-connected, ids unique
    in the volume, ``min_size`` in voxels) unless ``post.per_slice``; planes of more stack axes
    are numbered plane by plane. Ids are uint32, a mask 0/1 uint8."""
    post = post or Postprocess()
    if isinstance(probs, dict):
        labeller = PlaneLabels(post, out)
        for index, prob in probs.items():
            labeller.add(index, prob)
        return labeller.result()
    probs = np.asarray(probs)
    if out is None:
        out = np.zeros(probs.shape, np.uint32 if post.labels else np.uint8)
    labeller = PlaneLabels(post, out)
    for index in np.ndindex(probs.shape[:-2]):
        labeller.add(index, probs[index])
    return labeller.result()


def join_user_ids(user_labels, user, proposed) -> np.ndarray:
    """int32 labels: the ``user`` voxels keep their ``user_labels`` values; every object of
    the ``proposed`` mask that touches a user object takes that object's id (the most common
    one where it touches several), so a lesion keeps the id the user gave it instead of a
    second id for the model's rim; the others get new ids above the user's, in order.

    ``user``: bool, the voxels that are the user's (painted pixels, or whole corrected slices);
    objects are 6-connected in a (Z, Y, X) stack, 4-connected in a plane, through the user's
    voxels too."""
    from scipy import ndimage as ndi

    user_labels, user = np.asarray(user_labels), np.asarray(user, bool)
    parts = ndi.label(np.where(user, user_labels > 0, np.asarray(proposed, bool)))[0]
    lut = np.zeros(int(parts.max()) + 1, np.int64)
    painted = user & (user_labels > 0)
    if painted.any():  # each object the user touched: its most common user id
        pairs, counts = np.unique(
            np.stack([parts[painted], user_labels[painted].astype(np.int64)]), axis=1,
            return_counts=True)
        order = np.lexsort((-counts, pairs[0]))
        first = order[np.r_[True, np.diff(pairs[0][order]) != 0]]
        lut[pairs[0][first]] = pairs[1][first]
    new = np.flatnonzero(lut == 0)[1:]
    start = int(user_labels.max(initial=0)) + 1
    lut[new] = np.arange(start, start + new.size)
    out = lut[parts].astype(np.int32)
    out[user] = user_labels[user]
    return out


def propagated_labels(probs, labels, zs, post: Postprocess | None = None,
                      connected: bool = False) -> np.ndarray:
    """Probabilities -> labels after a propagation: the one rule of ``fmbff propagate``, the
    Segment widget's Propagate and the widget's re-threshold after a propagation (the same
    ``probs``, ``labels``, ``zs`` and settings give the same labels, id for id).

    int32 labels: the slices ``zs`` of ``labels`` (the user's) verbatim; elsewhere the voxels
    of ``probs`` at or above ``post.threshold`` (holes filled plane by plane with
    ``post.fill_holes``), as ``merge_ids`` joins them to the user's objects (``connected``:
    only the objects touching one; the model's objects under ``post.min_size`` voxels that
    touch none dropped; new ids above the user's). Objects are 3D whatever
    ``post.per_slice`` says (a lesion carried through the volume is one object);
    ``post.labels`` False gives the 0/1 mask of those same labels."""
    post = post or Postprocess(labels=True)
    mask = np.asarray(probs) >= post.threshold
    if post.fill_holes:
        from scipy import ndimage as ndi

        mask = np.stack([ndi.binary_fill_holes(plane) for plane in mask])
    merged = merge_ids(labels, zs, mask, post.min_size, connected)
    return merged if post.labels else (merged > 0).astype(np.int32)


def connected_to_user(mask, labels, zs) -> np.ndarray:
    """bool: the voxels of ``mask`` (outside the slices ``zs``) in a 3D object (26-connected,
    with the user's labelled voxels) that touches an object the user labelled on ``zs``: the
    lesion carried through the volume, without the model's false alarms elsewhere."""
    from scipy import ndimage

    labels = np.asarray(labels)
    user = np.zeros(labels.shape, bool)
    user[zs] = True
    mask = np.asarray(mask, bool) & ~user
    seeds = user & (labels > 0)
    parts, n = ndimage.label(mask | seeds, structure=np.ones((3, 3, 3), bool))
    if not n:
        return mask
    keep = np.unique(parts[seeds])
    return mask & np.isin(parts, keep[keep > 0])


def merge_ids(labels, zs, mask, min_size: int = 0, connected: bool = False) -> np.ndarray:
    """int32 labels: the slices ``zs`` of ``labels`` verbatim; elsewhere ``mask``'s voxels,
    each 3D object taking the id the user gave the object it touches (``join_user_ids``),
    new ids above the largest on ``zs`` otherwise (what ``labels`` holds on other slices
    does not count). The model's objects under ``min_size`` voxels that touch no user object
    are dropped first; with ``connected`` every object that touches none is dropped
    (``connected_to_user``)."""
    labels = np.asarray(labels)
    user = np.zeros(labels.shape, bool)
    user[zs] = True
    mask = np.asarray(mask, bool) & ~user
    if connected:
        mask = connected_to_user(mask, labels, zs)
    if min_size > 1:  # small objects of the model's own, unless they touch the user's
        touching = label_volume(mask | (user & (labels > 0))) if mask.any() else None
        small = label_volume(mask, min_size) == 0
        if touching is not None:
            keep = np.unique(touching[user & (labels > 0)])
            small &= ~np.isin(touching, keep[keep > 0])
        mask &= ~small
    return join_user_ids(np.where(user, labels, 0), user, mask)


def labels_from_proba(prob: np.ndarray, threshold: float = DEFAULT_THRESHOLD, min_size: int = 0,
                      fill_holes: bool = False, split: bool = True) -> np.ndarray:
    """Threshold a probability map into int32 labels; cheap, so a GUI can redo it live."""
    from scipy import ndimage as ndi

    if not 0 <= threshold <= 1:
        raise ValueError(f"threshold must be in [0, 1], got {threshold}")
    mask = np.asarray(prob) >= threshold
    if fill_holes:
        mask = ndi.binary_fill_holes(mask)
    labels = _without_small(*ndi.label(mask), min_size)
    if not split:
        labels = (labels > 0).astype(np.int32)
    return labels.astype(np.int32, copy=False)


def label_volume(mask: np.ndarray, min_size: int = 0, split: bool = True) -> np.ndarray:
    """Whole-volume objects of a (Z, Y, X) mask: 3D connected components with ids unique in
    the volume (one lesion over 12 slices is one id). Voxels join face to face (6-connected:
    scipy's default, and in each slice the same 4-connectivity as ``labels_from_proba``).
    ``min_size`` in voxels; ``split=False`` gives a 0/1 mask. uint32 labels."""
    from scipy import ndimage as ndi

    labels = _without_small(*ndi.label(np.asarray(mask) > 0), min_size)
    return labels.astype(np.uint32) if split else (labels > 0).astype(np.uint8)


def _without_small(labels: np.ndarray, n: int, min_size: int) -> np.ndarray:
    """Connected-component labels without the objects under ``min_size`` pixels / voxels,
    numbered again 1.. (the same connectivity as the labelling)."""
    from scipy import ndimage as ndi

    if min_size <= 0 or not n:
        return labels
    small = np.bincount(labels.ravel()) < min_size
    small[0] = False
    labels[small[labels]] = 0
    return ndi.label(labels > 0)[0]


def _region(c: Chunk, shape) -> tuple:
    """The chunk's index into a scratch store of ``shape`` (a plane, or a volume)."""
    return (c.plane if len(shape) == 3 else ()) + (slice(*c.rows), slice(*c.cols))


def _label_sweep(read, scratch, chunks: list[Chunk], shape, invert: bool = False):
    """Sweep 1: provisional labels of every chunk into ``scratch`` (uint32; chunks in raster
    order, plane after plane). ``shape`` is (Y, X), or (Z, Y, X) for a volume, whose chunks
    carry their plane and are also joined to the plane before.

    Returns (n ids, pixel count per id, join pairs, ids on the border of their plane)."""
    from scipy import ndimage as ndi

    if len(shape) not in (2, 3):
        raise ValueError(f"labels of a plane (Y, X) or a volume (Z, Y, X), got shape {shape}")
    volume = len(shape) == 3
    sizes, pairs, border = [np.zeros(1, np.int64)], [], []
    offset = 0
    height, width = shape[-2:]

    def join(before, lab):
        before = np.asarray(before)
        both = (before > 0) & (lab > 0)
        pairs.append(np.stack([before[both], lab[both]]))

    for c in chunks:
        mask = np.asarray(read(c)) > 0
        if invert:
            mask = ~mask
        lab, n = ndi.label(mask)
        sizes.append(np.bincount(lab.ravel(), minlength=n + 1)[1:])
        lab = lab.astype(np.uint32)
        lab[lab > 0] += np.uint32(offset)
        (y0, y1), (x0, x1) = c.rows, c.cols
        # Joins with the chunks above and to the left (and the plane before), already in the
        # scratch store.
        region = _region(c, shape)
        if y0 > 0:
            join(scratch[region[:-2] + (y0 - 1, region[-1])], lab[0])
        if x0 > 0:
            join(scratch[region[:-2] + (region[-2], x0 - 1)], lab[:, 0])
        if volume and c.plane[0] > 0:
            join(scratch[(c.plane[0] - 1,) + region[1:]], lab)
        edges = [lab[0] if y0 == 0 else None, lab[-1] if y1 == height else None,
                 lab[:, 0] if x0 == 0 else None, lab[:, -1] if x1 == width else None]
        border += [np.unique(e[e > 0]) for e in edges if e is not None]
        scratch[region] = lab
        offset += n
    pairs = np.concatenate(pairs, axis=1) if pairs else np.zeros((2, 0), np.uint32)
    border = np.unique(np.concatenate(border)) if border else np.zeros(0, np.uint32)
    return offset, np.concatenate(sizes), pairs, border


def _components(n: int, pairs: np.ndarray) -> np.ndarray:
    """Object index (0..k-1) of each provisional id 1..n; index [0] is background's."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    graph = coo_matrix((np.ones(pairs.shape[1], np.int8), (pairs[0], pairs[1])),
                       shape=(n + 1, n + 1))
    return connected_components(graph, directed=False)[1]


def _final_sweep(scratch, chunks: list[Chunk], lut: np.ndarray, write, shape) -> None:
    for c in chunks:
        write(c, lut[np.asarray(scratch[_region(c, shape)])])


def fill_holes(read, write, scratch, chunks: list[Chunk], shape) -> None:
    """Background components that do not reach the image border are holes: filled. One plane
    (Y, X): a volume's holes are filled plane by plane, as ``labels_from_proba`` does."""
    if len(shape) != 2:
        raise ValueError(f"holes are filled plane by plane (Y, X), got shape {shape}")
    n, _, pairs, border = _label_sweep(read, scratch, chunks, shape, invert=True)
    comp = _components(n, pairs)
    outside = np.zeros(comp.max() + 1, bool)
    outside[comp[border]] = True
    is_hole = ~outside[comp]
    is_hole[0] = False
    for c in chunks:
        filled = (np.asarray(read(c)) > 0) | is_hole[np.asarray(scratch[_region(c, shape)])]
        write(c, filled.astype(np.uint8))


def label(read, write, scratch, chunks: list[Chunk], shape, min_size: int = 0,
          split: bool = True) -> int:
    """Connected components (labels 1.. in the order of their first chunk) or, with
    ``split=False``, a 0/1 mask; objects under ``min_size`` px are dropped. Returns the count.

    ``shape`` (Y, X): one plane (4-connected), chunks from ``plan_chunks``; (Z, Y, X): a volume
    (6-connected, ids unique in the volume, ``min_size`` in voxels), chunks from ``plan_stack``
    carrying their plane, and ``read`` / ``write`` / ``scratch`` indexed with that plane."""
    n, sizes, pairs, _ = _label_sweep(read, scratch, chunks, shape)
    comp = _components(n, pairs)
    object_sizes = np.bincount(comp, weights=sizes, minlength=comp.max() + 1)
    keep = object_sizes >= max(min_size, 1)
    keep[comp[0]] = False  # background
    # Number kept objects by their first provisional id, so labels follow the chunk order.
    first = np.full(comp.max() + 1, np.iinfo(np.int64).max)
    np.minimum.at(first, comp, np.arange(n + 1))
    kept = np.flatnonzero(keep)
    number = np.zeros(comp.max() + 1, np.uint32)
    number[kept[np.argsort(first[kept])]] = np.arange(1, kept.size + 1, dtype=np.uint32)
    lut = number[comp] if split else (number[comp] > 0).astype(np.uint8)
    _final_sweep(scratch, chunks, lut, write, shape)
    return int(kept.size)
