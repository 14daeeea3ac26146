"""Evaluate a model on image / mask pairs: per-image metrics, mean +- std and pooled.

CT / MR volumes (``evaluate_volumes``): one row per volume, its metrics over every voxel of
every slice (3D Dice, as the field reports per case), then the same summary over volumes.
"""

from __future__ import annotations

from ..inference.postprocess import DEFAULT_THRESHOLD, Postprocess, labels_from_proba
from .metrics import METRICS, confusion, summarize


def evaluate(segmenter, images, masks, names, threshold: float = DEFAULT_THRESHOLD):
    """Returns (rows, summary): one dict per image, and ``metrics.summarize`` of them all."""
    rows, counts = [], []
    for image, mask, name in zip(images, masks, names):
        pred = labels_from_proba(segmenter.predict_proba(image), threshold) > 0
        c = confusion(pred, mask)
        counts.append(c)
        rows.append({"image": name, **c.scores()})
    return rows, summarize(counts)


def evaluate_volumes(model, setting, pairs, threshold: float = DEFAULT_THRESHOLD,
                     on_slice=None, **run):
    """Returns (rows, summary): one dict per volume (``volume``, the five metrics over the
    whole volume, ``slices``), and ``metrics.summarize`` over the volumes.

    model: a loaded network; setting: the intensity ``Normalization`` to segment with, made
    concrete for each volume (``for_stack``: a "volume" scope becomes that volume's range);
    pairs: ``data.datasets.VolumePair`` items (an iterable: read one at a time); run:
    ``Segmenter`` keywords (device, tile_size, ...); on_slice(name, progress): each volume's
    ``Progress`` of its slices.
    """
    from ..inference.progress import drain
    from ..inference.segmenter import Segmenter
    from ..inference.stacks import iter_segment_stack

    post = Postprocess(threshold)
    rows, counts = [], []
    for pair in pairs:
        seg = Segmenter(model, normalization=setting, **run)
        pred = drain(iter_segment_stack(seg, pair.image, False, post),
                     None if on_slice is None else lambda step, p=pair: on_slice(p.name, step))
        c = confusion(pred > 0, pair.mask)
        counts.append(c)
        rows.append({"volume": pair.name, **c.scores(), "slices": len(pair.image)})
    if not rows:
        raise ValueError("no volumes to evaluate")
    return rows, summarize(counts)


def format_table(rows, summary) -> str:
    """A plain-text table; the last lines say which average is which. Rows of volumes (a
    ``volume`` key) are named so, and their averages are over volumes."""
    what = "volume" if rows and "volume" in rows[0] else "image"
    width = max([len(what)] + [len(r[what]) for r in rows])
    head = f"{what:<{width}}  " + "  ".join(f"{m:>9}" for m in METRICS)
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r[what]:<{width}}  " + "  ".join(f"{r[m]:9.4f}" for m in METRICS))
    lines.append("-" * len(head))
    mean, std = summary["mean"], summary["std"]
    lines.append(f"{'mean+-std':<{width}}  " + "  ".join(
        f"{mean[m]:.3f}+-{std[m]:.2f}".rjust(9) for m in METRICS))
    lines.append(f"{'pooled':<{width}}  " + "  ".join(f"{summary['pooled'][m]:9.4f}" for m in METRICS))
    if what == "volume":
        lines.append(f"n = {summary['n']} volumes. Each row: the whole volume (3D, every "
                     "slice). mean+-std: metric per volume, then averaged; pooled: voxel counts "
                     "summed over all volumes, then the metric. Empty prediction on empty truth "
                     "scores 1.")
    else:
        lines.append(f"n = {summary['n']} images. mean+-std: metric per image, then averaged; "
                     "pooled: pixel counts summed over all images, then the metric. "
                     "Empty prediction on empty truth scores 1.")
    return "\n".join(lines)
