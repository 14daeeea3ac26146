"""Evaluate a model on image / mask pairs: per-image metrics, mean +- std and pooled."""

from __future__ import annotations

from ..inference.postprocess import labels_from_proba
from .metrics import METRICS, confusion, summarize


def evaluate(segmenter, images, masks, names, threshold: float = 0.5):
    """Returns (rows, summary): one dict per image, and ``metrics.summarize`` of them all."""
    rows, counts = [], []
    for image, mask, name in zip(images, masks, names):
        pred = labels_from_proba(segmenter.predict_proba(image), threshold) > 0
        c = confusion(pred, mask)
        counts.append(c)
        rows.append({"image": name, **c.scores()})
    return rows, summarize(counts)


def format_table(rows, summary) -> str:
    """A plain-text table; the last lines say which average is which."""
    width = max([len("image")] + [len(r["image"]) for r in rows])
    head = f"{'image':<{width}}  " + "  ".join(f"{m:>9}" for m in METRICS)
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['image']:<{width}}  " + "  ".join(f"{r[m]:9.4f}" for m in METRICS))
    lines.append("-" * len(head))
    mean, std = summary["mean"], summary["std"]
    lines.append(f"{'mean+-std':<{width}}  " + "  ".join(
        f"{mean[m]:.3f}+-{std[m]:.2f}".rjust(9) for m in METRICS))
    lines.append(f"{'pooled':<{width}}  " + "  ".join(f"{summary['pooled'][m]:9.4f}" for m in METRICS))
    lines.append(f"n = {summary['n']} images. mean+-std: metric per image, then averaged; "
                 "pooled: pixel counts summed over all images, then the metric. "
                 "Empty prediction on empty truth scores 1.")
    return "\n".join(lines)
