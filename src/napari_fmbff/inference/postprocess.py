"""Connected components, small-object removal and hole filling on masks too large for memory.

The same results as ``labels_from_proba`` on a whole 2D mask (4-connectivity, like scipy's
defaults) and as ``label_volume`` on a whole (Z, Y, X) stack (6-connectivity: voxels joined
face to face), computed chunk by chunk: each chunk of a plane is labelled on its own with
provisional ids (kept in a scratch zarr), ids that touch across a chunk border (and, in a
volume, between adjacent planes at the same (y, x)) are joined with a sparse graph's connected
components, and a second sweep writes the final values. Memory holds one chunk (two in a
volume: the chunk and the one under it in the previous plane) plus one number per provisional
object.
"""

from __future__ import annotations

import numpy as np

from .chunked import Chunk


def labels_from_proba(prob: np.ndarray, threshold: float = 0.5, min_size: int = 0,
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
