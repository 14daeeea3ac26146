"""Propagation that follows the lesion outward (self-labelling).

One labelled slice teaches the model only that slice's section of the lesion. Self-labelling
lets the model label the neighbouring slices itself, slice by slice outward, and learns from
them too: fine-tune on the user's slices, segment the slices next to them, take the ones
where the lesion connected to the user's is found with confidence as labels, fine-tune again
on all of them, and so on for a few rounds; the last model segments the volume.

A neighbouring slice becomes a label only when (``SelfLabel``):

- the lesion connected in 3D to the user's (``postprocess.connected_to_user``) is on it,
  counting only the pixels the model is sure of (probability >= ``confidence``: the model's
  probabilities are over-confident at the lesion's border, and a high threshold trims it);
- it did not leak: its area is at most ``growth`` times the neighbour's it came from.

A side stops at the first slice that fails, so a label never jumps a gap. Slices where the
lesion has ended are not learned as background: learning the lesion's ends as background was
measured to hurt (docs/models.md, "The lesion's ends"). The self-labelled slices are the
model's, never the user's: the final model segments them again like any other slice, and the
saved model names them in its record (``self_labelled``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import numpy as np


@dataclass(frozen=True)
class SelfLabel:
    """How a propagation labels its own slices outward (module doc).

    The recipe's epochs (``TrainConfig.epochs``) are shared out, so self-labelling costs
    about what learning from the user's slices alone costs: ``first_share`` of them train on
    the user's slices, the rest are split between the rounds' fine-tunes (at least one each).

    Args:
        rounds: how many times the model labels new slices (0: the user's slices only).
        reach: how many slices beyond the labelled ones each round may add on each side.
        confidence: the probability a pixel needs to be labelled lesion by the model.
        growth: a slice's lesion may be at most this many times the area of the labelled
            neighbour it was reached from.
        first_share: the share of the epochs spent on the user's slices before the first
            round.
    """

    rounds: int = 2
    reach: int = 2
    confidence: float = 0.9
    growth: float = 2.0
    first_share: float = 0.5

    def __post_init__(self):
        if self.rounds < 0 or self.reach < 1:
            raise ValueError("self-labelling needs rounds >= 0 and reach >= 1")
        if not 0.5 <= self.confidence < 1:
            raise ValueError(f"confidence must be in [0.5, 1), got {self.confidence}")
        if not 0 < self.first_share <= 1:
            raise ValueError(f"first_share must be in (0, 1], got {self.first_share}")

    def epochs(self, total: int) -> list[int]:
        """The epochs of each fine-tune, first to last, out of ``total``."""
        if not self.rounds:
            return [total]
        first = max(1, round(total * self.first_share))
        return [first] + [max(1, (total - first) // self.rounds)] * self.rounds

    def to_dict(self) -> dict:
        return asdict(self)

    def recipes(self, cfg) -> list:
        """The recipe of each fine-tune: ``cfg`` with its share of the epochs; the later ones
        continue the earlier, so nothing is frozen in them."""
        first, *later = self.epochs(cfg.epochs)
        return [replace(cfg, epochs=first)] + [
            replace(cfg, epochs=n, freeze_encoder_epochs=0, freeze_encoder=False)
            for n in later]


def candidates(n: int, labelled, reach: int) -> list[int]:
    """The slices within ``reach`` of the labelled ones (not labelled), nearest first."""
    labelled = set(int(z) for z in labelled)
    dist = {}
    for z in range(n):
        if z not in labelled:
            d = min(abs(z - s) for s in labelled)
            if d <= reach:
                dist[z] = d
    return sorted(dist, key=lambda z: (dist[z], z))


def pseudo_labels(probs, labels, labelled, rule: SelfLabel) -> dict[int, np.ndarray]:
    """The slices the model labels itself this round: ``{z: bool mask}``.

    ``probs`` (Z, Y, X): the model's probabilities (only the slices within ``rule.reach`` of
    ``labelled`` are read); ``labels``: the labels so far (the user's, and earlier rounds');
    ``labelled``: their slices. Walks outward from each labelled slice, one slice at a time,
    and stops on a side at the first slice that holds no confident connected lesion or
    grows too much (module doc)."""
    from ..inference.postprocess import connected_to_user

    labels = np.asarray(labels)
    labelled = sorted(set(int(z) for z in labelled))
    near = candidates(len(labels), labelled, rule.reach)
    if not near:
        return {}
    found = np.zeros(labels.shape, bool)
    found[near] = np.asarray(probs)[near] >= rule.confidence
    lesion = connected_to_user(found, labels, labelled)
    done = set(labelled)
    accepted: dict[int, np.ndarray] = {}
    area = {z: int((labels[z] > 0).sum()) for z in labelled}
    for z in near:  # nearest first: a slice's neighbour towards the labels is decided before it
        source = next((s for s in (z - 1, z + 1) if s in done and area.get(s, 0) > 0), None)
        if source is None:
            continue
        mask = lesion[z]
        if not mask.any() or mask.sum() > rule.growth * area[source]:
            continue
        accepted[z] = mask
        done.add(z)
        area[z] = int(mask.sum())
    return accepted


def iter_self_labelled(net, request, zs, setting, cfg, out, control):
    """Generator: the fine-tunes of a self-labelling propagation (module doc); yields their
    ``Progress`` and returns the ``run.Outcome`` of the last (the one saved, with
    ``self_labelled``: the slices the model labelled, in its record)."""
    from ..inference.progress import Progress
    from ..inference.segmenter import Segmenter
    from .loop import iter_train, slice_items
    from .run import check_output, train_and_save

    check_output(out.path, out.overwrite)  # refused before any training, as train_and_save does
    rule, volume = request.self_label, request.volume
    stack_norm = setting.for_stack(volume)
    labels = np.array(np.asarray(request.labels) > 0, np.uint8)
    labelled = list(zs)

    def items():  # a ValueError, before any training, when the user's slices hold no lesion
        return slice_items(volume, labels, labelled, setting, request.image_name)

    recipes = rule.recipes(cfg)
    model = net
    for step_cfg in recipes[:-1]:
        result = yield from iter_train(model, items(), [], step_cfg, setting, control)
        model = result.net
        if result.cancelled:
            break
        near = candidates(len(labels), labelled, rule.reach)
        probs = np.zeros(labels.shape, np.float32)
        seg = Segmenter(model, normalization=stack_norm)
        for k, z in enumerate(near):
            probs[z] = seg.predict_proba(np.asarray(volume[z]))
            yield Progress("slices", k + 1, len(near), "self-labelling")
        new = pseudo_labels(probs, labels, labelled, rule)
        if not new:
            break
        for z, mask in new.items():
            labels[z] = mask
        labelled = sorted({*labelled, *new})
    own = sorted(set(labelled) - set(zs))
    out = replace(out, extra={**out.extra, "self_labelled": own,
                              "self_label": rule.to_dict()})
    # The last fine-tune is the one saved (the rounds that found nothing new are not run).
    return (yield from train_and_save(model, items(), recipes[-1], setting, out, control))
