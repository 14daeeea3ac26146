"""Binary segmentation metrics: Dice, Jaccard (IoU), precision, recall, accuracy.

Papers in this field mix two averages, so we report both and name them:
- "mean over images": the metric per image, then the mean (and std) over images;
- "pooled": true/false positives/negatives summed over all pixels of all images, then the metric.
Convention: when prediction and truth are both empty, Dice, Jaccard, precision and recall
are 1 (a perfect answer to "no lesion here"); when only one is empty the overlap ones are 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

METRICS = ("dice", "jaccard", "precision", "recall", "accuracy")


@dataclass
class Counts:
    tp: int = 0
    fp: int = 0
    fn: int = 0
    tn: int = 0

    def __add__(self, other: "Counts") -> "Counts":
        return Counts(self.tp + other.tp, self.fp + other.fp, self.fn + other.fn, self.tn + other.tn)

    def scores(self) -> dict[str, float]:
        tp, fp, fn, tn = self.tp, self.fp, self.fn, self.tn

        def ratio(num, den):
            return 1.0 if den == 0 else num / den  # empty vs empty counts as perfect

        return {
            "dice": ratio(2 * tp, 2 * tp + fp + fn),
            "jaccard": ratio(tp, tp + fp + fn),
            "precision": ratio(tp, tp + fp) if (tp + fp + fn) else 1.0,
            "recall": ratio(tp, tp + fn) if (tp + fp + fn) else 1.0,
            "accuracy": ratio(tp + tn, tp + tn + fp + fn),
        }


def confusion(pred, truth) -> Counts:
    """Pixel counts of a binary prediction against the truth (any nonzero = lesion)."""
    pred = np.asarray(pred) > 0
    truth = np.asarray(truth) > 0
    if pred.shape != truth.shape:
        raise ValueError(f"prediction {pred.shape} and truth {truth.shape} differ in shape")
    tp = int(np.count_nonzero(pred & truth))
    fp = int(np.count_nonzero(pred & ~truth))
    fn = int(np.count_nonzero(~pred & truth))
    return Counts(tp, fp, fn, pred.size - tp - fp - fn)


def scores(pred, truth) -> dict[str, float]:
    """The five metrics of one image."""
    return confusion(pred, truth).scores()


def summarize(per_image: list[Counts]) -> dict:
    """{"mean": {...}, "std": {...}, "pooled": {...}, "n": N} over a list of per-image counts."""
    if not per_image:
        raise ValueError("no images to summarize")
    table = np.array([[c.scores()[m] for m in METRICS] for c in per_image])
    pooled = sum(per_image, Counts()).scores()
    return {
        "n": len(per_image),
        "mean": dict(zip(METRICS, table.mean(axis=0).tolist())),
        "std": dict(zip(METRICS, table.std(axis=0).tolist())),
        "pooled": pooled,
    }


def soft_dice(prob, target, eps: float = 1.0):
    """Differentiable mean Dice over a batch of (B, 1, H, W) probabilities (torch)."""
    dims = tuple(range(1, prob.ndim))
    inter = (prob * target).sum(dims)
    return ((2 * inter + eps) / (prob.sum(dims) + target.sum(dims) + eps)).mean()
