"""Issue 30's levers, one table: one LiteMedSAM box on the largest lesion slice of each
pyradiomics volume, accepted as it is, then Propagate (``training.propagate.iter_propagate``,
the path ``fmbff propagate`` and the widget run) with each variant, 2 seeds.

Run through ``python benchmarks/interactive.py --levers`` (``--seeds 0,1``, ``--variants``,
``--store`` to resume, ``--json``). Scored over every slice but the boxed one, lesion-free
slices included: 3D Dice of what Propagate writes, the same on the lesion slices only,
precision, recall, CPU s and wall s of the propagation (redraws add LiteMedSAM's time).

Variants:
- **256 px crops**: ``FINETUNE_DEFAULTS`` (20 epochs, 256 px training crops), the user's slice
  only, without the redraw (``PropagateRequest.redraw=False``: the redraw rows below add it).
  Propagate's recipe before ``PROPAGATE_CROP``.
- **fast**: 10 epochs (lever 6).
- **outward**: self-labelling (``training.self_label.SelfLabel``, lever 2): 10 epochs on the
  box's slice, then 2 rounds that add confident neighbouring slices (2 slices each side per
  round) and train 5 epochs each: 20 epochs in all, as today (fewer when a round finds
  nothing new).
- **outward fast**: the same on 12 epochs: 6 + 3 + 3.
- **192 px crops** (lever 6): the same on 192 x 192 training crops (``propagate_config``,
  Propagate's recipe now); **160 / 128 px crops**: smaller still.
- **+ redraw ...** (lever 4), on today's and on outward's labels: slices Propagate marked,
  redrawn by LiteMedSAM from the mask's bounding box grown 5 px (``REDRAW_RULES``):
  - *always*: every marked slice;
  - *ring >= t*: where the model is unsure just outside its mask (mean probability in the
    3 px ring around it at least t), the sign of a boundary drawn too tight;
  - *shrinks*: where the mask is under 0.6 of the larger of its two neighbours' (the lesion
    narrowing faster than lesions do);
  - *extends*: where LiteMedSAM's mask holds at least 90 % of the model's and is at most twice
    its area (LiteMedSAM only grows the mask, never moves it).
  - *always, unsure emptied*: every marked slice, and those whose redraw LiteMedSAM's own
    IoU head rates below ``inference.redraw.UNSURE`` (0.5) emptied (Propagate's redraw now);
    with the ends too.
- **+ threshold 0.7** (medical encoder rows): the model's voxels at or above 0.7 connected in
  3D to the box's object, alone and with the redraw and the ends.
- **+ grow t** (lever 3, the ends): the model's voxels at or above t (0.3, 0.2) connected in 3D
  to the box's object instead of those at or above 0.5; alone and with the redraw.
- **192 px crops + negatives** (lever 3, automatic negatives): the 192 px propagation first;
  then, on each side, of the slices at least 5 past the last one it marked, the one where its
  largest probability is lowest, learned as lesion-free beside the box's slice by a second
  propagation (CPU s of both).
- **+ redraw always + ends** (lever 3): after the redraw, the lesion carried past its first and
  last slice by LiteMedSAM from the end slice's box, up to 2 slices each side, where the new
  mask is the same lesion by its own signals (``inference.redraw.EndRule``: area 0.3-1.2 of
  the end slice's, half of it inside the end slice's mask, median intensity within half an
  interquartile range of the end slice's lesion).
- **medical encoder** (lever 1, ``training.medical``): new FM-BFF-Net layers on LiteMedSAM's
  frozen TinyViT, trained on the box's slice in its 8 flips and turns, 150 steps of 4; every
  slice encoded once (its cost charged to each run), segmented whole. **medical encoder
  fast**: 100 steps of 2 (``fmbff propagate --encoder litemedsam``'s recipe). Both with the
  redraw and ends rows above.
"""

from __future__ import annotations

import hashlib
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

VARIANTS = {
    "256 px crops": ({"tile_size": 256}, None),
    "fast": ({"epochs": 10}, None),
    "outward": ({}, dict(rounds=2, reach=2)),                  # 10 + 5 + 5 epochs
    "outward fast": ({"epochs": 12}, dict(rounds=2, reach=2)),  # 6 + 3 + 3 epochs
    "192 px crops": ({"tile_size": 192}, None),
    "160 px crops": ({"tile_size": 160}, None),
    "128 px crops": ({"tile_size": 128}, None),
    "192 px crops + negatives": ({"tile_size": 192}, None),  # two passes: far_negatives
}
#: Lever 1: FM-BFF-Net on LiteMedSAM's frozen TinyViT (``training.medical``), its layers
#: trained from scratch on the box's slice in its 8 flips and turns: steps x batch ("fast" is
#: the recipe ``--encoder litemedsam`` runs: ``medical.STEPS``, ``medical.BATCH``), the new
#: layers in float32 or under bfloat16 autocast (``bf16``, ``medical.TRAIN_BFLOAT16``).
MEDICAL = {"medical encoder": {"steps": 150, "batch": 4, "bf16": False},
           "medical encoder fast": {"steps": 100, "batch": 2, "bf16": False},
           "medical encoder fast bf16 layers": {"steps": 100, "batch": 2, "bf16": True},
           "medical encoder 60 steps": {"steps": 60, "batch": 2, "bf16": False},
           "medical encoder procedural start": {"steps": 100, "batch": 2, "bf16": True,
                                                "start": "procedural"}}
#: Where the "procedural start" rows read their new layers from: ``--medical-start`` of
#: interactive.py, or None: the bundled file (``training.medical.start_layers``, made by
#: scripts/train_medical_starter.py).
STARTS = {"procedural": None}


def start_file(recipe) -> Path | None:
    """The file of new layers a MEDICAL recipe starts from, or None (drawn from the seed)."""
    from napari_fmbff.training.medical import start_layers

    name = recipe.get("start")
    if name is None:
        return None
    path = STARTS[name] or start_layers()
    if path is None or not path.exists():
        raise SystemExit(f"{path}: no file of new layers; make it with "
                         "scripts/train_medical_starter.py, or give --medical-start")
    return path
REDRAWN = ("256 px crops", "outward", "192 px crops", "160 px crops", "128 px crops",
           "192 px crops + negatives", *MEDICAL)

#: Automatic negatives (lever 3): a first propagation (``NEGATIVES_FROM``) marks the lesion;
#: on each side, of the slices at least ``FAR`` past the last one it marked, the one where the
#: model's largest probability is lowest is taken as lesion-free, and a second propagation
#: learns the box's slice and those. Its CPU s count both propagations.
NEGATIVES_FROM = "192 px crops"
FAR = 5


def far_negatives(labels, probs, top, far: int = FAR) -> list:
    """On each side of what ``labels`` marks (the box's slice counted), of the slices at
    least ``far`` past it, the one where ``probs``' largest value is lowest (the nearest of
    equals): the automatic negatives."""
    marked = [int(z) for z in range(len(labels)) if labels[z].any()] or [top]
    out = []
    for side in (range(min(marked) - far, -1, -1), range(max(marked) + far, len(labels))):
        if len(side):
            out.append(min(side, key=lambda z: float(probs[z].max())))
    return sorted(int(z) for z in out)

#: Hysteresis (lever 3, the lesion's ends): the model's voxels at or above ``low`` that are
#: connected in 3D to the user's object, instead of those at or above 0.5: a lesion's small end
#: sections, where the one-slice model is unsure, joined to the lesion it is sure of.
GROWN = {"grow 0.3": 0.3, "grow 0.2": 0.2}

#: A higher threshold for the medical encoder's answer (its masks ran larger than the
#: lesion: precision 0.55-0.60 at 0.5): the model's voxels at or above t connected in 3D to the
#: box's object, alone and with the redraw and the ends.
RAISED = {"threshold 0.7": 0.7}


def scores(pred, truth, rest) -> dict:
    pred, truth = np.asarray(pred[rest], bool), np.asarray(truth[rest], bool)
    tp = float((pred & truth).sum())
    lesion = truth.any(axis=(1, 2))
    lp, lt = pred[lesion], truth[lesion]
    return {"dice": 2 * tp / max(pred.sum() + truth.sum(), 1),
            "lesion_dice": 2 * float((lp & lt).sum()) / max(lp.sum() + lt.sum(), 1),
            "precision": tp / pred.sum() if pred.sum() else float("nan"),
            "recall": tp / max(truth.sum(), 1)}


def ring_mean(probs, mask, width: int = 3) -> float:
    from scipy import ndimage

    ring = ndimage.binary_dilation(mask, iterations=width) & ~mask
    return float(probs[ring].mean()) if ring.any() else 0.0


def _shrinks(z, pred, probs, drawn) -> bool:
    near = [int(pred[n].sum()) for n in (z - 1, z + 1) if 0 <= n < len(pred)]
    return bool(near) and pred[z].sum() < 0.6 * max(near)


def _extends(z, pred, probs, drawn) -> bool:
    mine = pred[z]
    return (drawn & mine).sum() >= 0.9 * mine.sum() and drawn.sum() <= 2 * mine.sum()


#: Every marked slice redrawn, and the slices whose redraw LiteMedSAM itself rates below
#: ``inference.redraw.UNSURE`` predicted IoU emptied (Propagate's redraw since "LiteMedSAM's
#: own doubt", docs/models.md).
UNSURE_DROPPED = "always, unsure emptied"

#: The redraw rules whose labels are also carried past the lesion's ends ("+ ends" rows).
ENDED = ("always", UNSURE_DROPPED)

#: When a marked slice is redrawn by LiteMedSAM: rule(z, labels, probs, LiteMedSAM's mask).
REDRAW_RULES = {
    "always": lambda z, pred, probs, drawn: True,
    "ring >= 0.1": lambda z, pred, probs, drawn: ring_mean(probs[z], pred[z]) >= 0.1,
    "ring >= 0.2": lambda z, pred, probs, drawn: ring_mean(probs[z], pred[z]) >= 0.2,
    "shrinks": _shrinks,
    "extends": _extends,
}


def grown(probs, accepted, top, low: float):
    """The voxels of ``probs`` >= ``low`` connected in 3D to the accepted object on ``top``
    (``postprocess.connected_to_user``, the rule Propagate keeps), the accepted slice kept."""
    from napari_fmbff.inference.postprocess import connected_to_user

    user = np.zeros(probs.shape, np.int32)
    user[top] = accepted
    out = connected_to_user(probs >= low, user, [top])
    out[top] = accepted
    return out


def slice_signals(pred, probs, truth, drawn) -> list:
    """Per marked slice: what a rule could see (the model's area, its mean and max
    probability, LiteMedSAM's area and its IoU with the model's mask) and the truth's area,
    so that rules for the lesion's ends can be studied from the JSON."""
    out = []
    for z, mask in sorted(drawn.items()):
        mine = pred[z]
        inter, union = float((mine & mask).sum()), float((mine | mask).sum())
        out.append({"z": int(z), "truth": int(truth[z].sum()), "model": int(mine.sum()),
                    "hit": int((mine & truth[z]).sum()),
                    "mean_p": float(probs[z][mine].mean()) if mine.any() else 0.0,
                    "max_p": float(probs[z].max()), "sam": int(mask.sum()),
                    "sam_hit": int((mask & truth[z]).sum()),
                    "iou": inter / union if union else 0.0})
    return out


def carried_ends(image, pred, top):
    """(labels, slices written, CPU s): the lesion carried past its ends by LiteMedSAM where
    its own signals say it is the same lesion (``inference.redraw.iter_extend_ends``, the
    rule Propagate would run), the boxed slice never written."""
    from napari_fmbff.inference.progress import drain
    from napari_fmbff.inference.redraw import iter_extend_ends

    start = time.process_time()
    out, written = drain(iter_extend_ends(image, np.asarray(pred, np.int32), [top], "cpu"))
    return out > 0, written, time.process_time() - start


def redraws(image, pred, probs, rest, engine, drawn_out=None) -> dict:
    """{rule: (labels with the slices it picks redrawn, those slices, CPU s)}: LiteMedSAM
    answers each marked slice once (its CPU s counted for every rule that redraws it), from
    the box Propagate's redraw gives it (``inference.redraw.object_box``)."""
    from napari_fmbff.inference.redraw import object_box

    drawn, cost, iou = {}, {}, {}
    for z in rest:
        if pred[z].any():
            start = time.process_time()
            drawn[z], iou[z] = engine.engine.litemedsam_box(
                image[z], object_box(pred[z]), "cpu", engine.range, scored=True)
            cost[z] = time.process_time() - start
    if drawn_out is not None:
        drawn_out.update(drawn)
    out = {}
    for name, rule in REDRAW_RULES.items():
        new, done = pred.copy(), []
        for z, mask in drawn.items():
            if rule(z, pred, probs, mask):
                new[z] = mask
                done.append(int(z))
        out[name] = (new, done, sum(cost[z] for z in done))
    from napari_fmbff.inference.redraw import UNSURE

    new = pred.copy()  # UNSURE_DROPPED: always, and the slices LiteMedSAM doubts emptied
    for z, mask in drawn.items():
        new[z] = mask if iou[z] >= (UNSURE or 0.5) else False
    out[UNSURE_DROPPED] = (new, sorted(drawn), sum(cost.values()))
    return out


def run_key(name, variant, seed, accepted_px) -> str:
    """The cache key of one propagation: the volume, the seed, the accepted mask's size, the
    fine-tunes' epochs and self-labelling rule as they run, and any other recipe field."""
    from napari_fmbff.training.loop import FINETUNE_DEFAULTS, finetune_config
    from napari_fmbff.training.self_label import SelfLabel

    overrides, rule = VARIANTS[variant]
    cfg = finetune_config(**overrides)
    plan = SelfLabel(**rule).to_dict() if rule else None
    epochs = SelfLabel(**rule).epochs(cfg.epochs) if rule else [cfg.epochs]
    other = {k: v for k, v in overrides.items()  # e.g. the crop size, where not the default
             if k != "epochs" and v != FINETUNE_DEFAULTS.get(k)}
    key = [name, seed, accepted_px, epochs, plan] + ([other] if other else [])
    return hashlib.sha1(json.dumps(key).encode()).hexdigest()[:12]


def run_variant(name, image, mask, top, accepted, variant, seed, store):
    """One propagation (cached in ``store``): labels, probs, CPU s, wall s. The negatives
    variant runs ``NEGATIVES_FROM`` first (cached too) and learns its ``far_negatives``."""
    if variant in MEDICAL:
        return medical_propagated(name, image, mask, top, accepted, variant, seed, store)
    if variant.endswith(" + negatives"):
        first = run_variant(name, image, mask, top, accepted, NEGATIVES_FROM, seed, store)
        negatives = far_negatives(first["labels"], first["probs"], top)
        run = propagated(name, image, mask, top, accepted, NEGATIVES_FROM, seed, store,
                         negatives)
        return {**run, "cpu_s": run["cpu_s"] + first["cpu_s"],
                "wall_s": run["wall_s"] + first["wall_s"], "negatives": negatives}
    return propagated(name, image, mask, top, accepted, variant, seed, store)


def precision_tag() -> str:
    """"" when LiteMedSAM's encoder runs in float32 here (the caches of earlier runs), else
    "-bfloat16": what the medical caches are keyed by."""
    from napari_fmbff.model.litemedsam_weights import encoder_precision

    precision = encoder_precision("cpu")
    return "" if precision == "float32" else "-" + precision


def volume_features(name, image, intensity, store):
    """Every slice's frozen LiteMedSAM features (``inference.medical.encode``) and what encoding
    them cost (CPU s, wall s), cached in ``store``: each medical run is charged that cost."""
    import torch

    from napari_fmbff.inference import medical as seen
    from napari_fmbff.training import medical

    path = store / f"medical-features-{name}{precision_tag()}.pt" if store else None
    if path and path.exists():
        saved = torch.load(path, weights_only=False)
        return {**saved, "feats": [seen.SliceFeatures(**f) for f in saved["feats"]]}
    net = medical.medical_model(True)
    wall, cpu = time.perf_counter(), time.process_time()
    feats = [seen.encode(net, image[z], intensity) for z in range(len(image))]
    out = {"feats": feats, "cpu_s": time.process_time() - cpu,
           "wall_s": time.perf_counter() - wall}
    if path:
        store.mkdir(parents=True, exist_ok=True)
        part = path.with_suffix(f".{time.time_ns()}.part")  # two runs may encode at once
        torch.save({**out, "feats": [vars(f) for f in feats]}, part)
        part.replace(path)
    return out


def medical_propagated(name, image, mask, top, accepted, variant, seed, store):
    """Lever 1: FM-BFF-Net on LiteMedSAM's frozen encoder, trained on the box's slice, then
    every other slice; its labels kept as Propagate keeps them (connected to the box's object).
    Cached in ``store``; CPU s and wall s include encoding every slice once."""
    from napari_fmbff.inference import medical as seen
    from napari_fmbff.inference.litemedsam import volume_range
    from napari_fmbff.inference.postprocess import Postprocess, propagated_labels
    from napari_fmbff.training import medical

    recipe = dict(MEDICAL[variant])
    start = start_file(recipe)
    if start is not None:  # keyed by the tensors the file holds, not by its metadata
        raw = start.read_bytes()
        recipe["start"] = hashlib.sha1(raw[8 + int.from_bytes(raw[:8], "little"):]
                                       ).hexdigest()[:12]
    # float32 layers are what the caches of earlier runs hold: keyed as they were
    keyed = {k: v for k, v in recipe.items() if k != "bf16" or v}
    key = [name, seed, int(accepted.sum()), keyed, medical.MODEL]
    tag = precision_tag()
    key = hashlib.sha1(json.dumps(key + ([tag] if tag else [])).encode()).hexdigest()[:12]
    path = store / f"medical-{name}-{key}.npz" if store else None
    if path and path.exists():
        z = np.load(path)
        return {"labels": z["labels"], "probs": z["probs"].astype(np.float32),
                "cpu_s": float(z["cpu_s"]), "wall_s": float(z["wall_s"]), "own": []}
    intensity = volume_range(image)
    encoded = volume_features(name, image, intensity, store)
    wall, cpu = time.perf_counter(), time.process_time()
    net = medical.medical_model(True, seed, start)
    medical.fine_tune(net, [image[top]], [accepted], intensity, seed=seed,
                      **{k: v for k, v in recipe.items() if k != "start"})
    probs = np.stack([seen.predict_plane(net, f) for f in encoded["feats"]])
    labels = np.zeros(mask.shape, np.int32)
    labels[top] = accepted
    probs[top] = accepted
    pred = propagated_labels(probs, labels, [top], Postprocess(0.5, 0, labels=True), True) > 0
    # the box's slice is encoded twice (once in its 8 flips): its plain encoding is not charged
    run = {"labels": pred, "probs": probs,
           "cpu_s": time.process_time() - cpu + encoded["cpu_s"] * (1 - 1 / len(image)),
           "wall_s": time.perf_counter() - wall + encoded["wall_s"] * (1 - 1 / len(image)),
           "own": []}
    if path:
        store.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(path, labels=run["labels"], probs=run["probs"].astype(np.float16),
                            cpu_s=run["cpu_s"], wall_s=run["wall_s"])
    return run


def propagated(name, image, mask, top, accepted, variant, seed, store, negatives=()):
    """One propagation of ``variant`` from the box's slice (and the lesion-free slices
    ``negatives``), cached in ``store``."""
    from napari_fmbff import load_model
    from napari_fmbff.inference.progress import drain
    from napari_fmbff.training.loop import finetune_config
    from napari_fmbff.training.propagate import PropagateRequest, iter_propagate
    from napari_fmbff.training.self_label import SelfLabel

    overrides, rule = VARIANTS[variant]
    key = run_key(name, variant, seed, int(accepted.sum()))
    if negatives:
        key = hashlib.sha1(json.dumps([key, list(negatives)]).encode()).hexdigest()[:12]
    path = store / f"lever-{name}-{key}.npz" if store else None
    if path and path.exists():
        z = np.load(path)
        return {"labels": z["labels"], "probs": z["probs"].astype(np.float32),
                "cpu_s": float(z["cpu_s"]), "wall_s": float(z["wall_s"]),
                "own": [int(v) for v in z["own"]]}
    labels = np.zeros(mask.shape, np.int32)
    labels[top] = accepted
    with tempfile.TemporaryDirectory() as tmp:
        request = PropagateRequest(
            image, labels, Path(tmp) / "m.safetensors", slices=[top, *negatives],
            cfg=finetune_config(device="cpu", seed=seed, **overrides), base="starter",
            image_name=name, self_label=SelfLabel(**rule) if rule else None,
            redraw=False)  # the redraw rules below are applied to the model's own labels
        wall, cpu = time.perf_counter(), time.process_time()
        result = drain(iter_propagate(load_model("starter"), request))
        run = {"labels": result.labels > 0, "probs": result.probs,
               "cpu_s": time.process_time() - cpu, "wall_s": time.perf_counter() - wall}
        own = []
        if result.outcome.saved:
            from napari_fmbff.model.checkpoint import read_metadata

            own = read_metadata(result.outcome.path)["provenance"].get("self_labelled", [])
        run["own"] = [int(v) for v in own]
    if path:
        store.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(path, labels=run["labels"], probs=run["probs"].astype(np.float16),
                            cpu_s=run["cpu_s"], wall_s=run["wall_s"], own=np.array(run["own"]))
    return run


#: Two references, not variants: what the parts could give with the truth's help. Every
#: lesion slice but the box's drawn by LiteMedSAM from the truth's own box on it (grown as the
#: user's box is) and nothing elsewhere: the best any box-carrying or redraw rule could do
#: with this box engine. And Propagate as shipped with its slices cut to the truth's first and
#: last lesion slice: the lesion's ends known.
TRUE_BOXES = "reference: LiteMedSAM from the truth's box on every lesion slice"
TRUE_ENDS = "reference: Propagate as shipped, cut to the lesion's true ends"


def true_box_labels(image, mask, top, engine, grown_box):
    """``TRUE_BOXES``: LiteMedSAM from ``grown_box`` of the truth on each lesion slice but
    ``top``, nothing on the lesion-free slices."""
    out = np.zeros(mask.shape, bool)
    for z in np.nonzero(mask.any(axis=(1, 2)))[0]:
        if z != top:
            out[z] = engine.engine.litemedsam_box(image[z], grown_box(mask[z]), "cpu",
                                                  engine.range) > 0
    return out


def within_true_ends(pred, mask):
    """``pred`` with every slice outside the truth's first..last lesion slice emptied."""
    zs = np.nonzero(mask.any(axis=(1, 2)))[0]
    out = np.zeros_like(pred)
    out[zs.min():zs.max() + 1] = pred[zs.min():zs.max() + 1]
    return out


def lever_rows(volumes, cache, seeds, variants, store, deadline, cut, load_volume, LiteMedSAM,
               grown_box, past, log) -> list:
    engine, rows, boxed, shipped = LiteMedSAM(), [], {}, shipped_variant()
    for seed in seeds:
        for name in volumes:
            image, mask = load_volume(name, cache)
            top = int(np.argmax(mask.sum(axis=(1, 2))))
            engine.for_volume(name, image)
            accepted = engine(image[top], grown_box(mask[top])) > 0
            rest = np.array([z for z in range(len(image)) if z != top])
            if name not in boxed:  # the same each seed: drawn once
                boxed[name] = scores(true_box_labels(image, mask, top, engine, grown_box),
                                     mask, rest)
            rows.append({"volume": name, "seed": seed, "slice": top, "variant": TRUE_BOXES,
                         **boxed[name], "cpu_s": float("nan"), "wall_s": float("nan")})
            for variant in variants:
                if past(deadline, 120):
                    cut.append(f"{name} seed {seed}: {variant}")
                    continue
                run = run_variant(name, image, mask, top, accepted, variant, seed, store)
                base = {"volume": name, "seed": seed, "slice": top,
                        "self_labelled": run["own"], "negatives": run.get("negatives", [])}
                rows.append({**base, "variant": variant, **scores(run["labels"], mask, rest),
                             "cpu_s": run["cpu_s"], "wall_s": run["wall_s"]})
                log(f"levers: {name} seed {seed} {variant}: {rows[-1]['dice']:.3f} "
                    f"({run['wall_s']:.0f} s wall, self-labelled {run['own']})")
                if variant not in REDRAWN:
                    continue
                drawn, redrawn = {}, {}
                for rule, (new, done, cpu) in redraws(image, run["labels"], run["probs"], rest,
                                                      engine, drawn).items():
                    if rule in ENDED:
                        redrawn[rule] = (new, cpu)
                    label = f"{variant} + redraw {rule}"
                    rows.append({**base, "variant": label, **scores(new, mask, rest),
                                 "cpu_s": run["cpu_s"] + cpu, "wall_s": run["wall_s"] + cpu,
                                 "redrawn": done})
                    log(f"levers: {name} seed {seed} {label}: {rows[-1]['dice']:.3f} "
                        f"(redrew {done})")
                rows[-1]["signals"] = slice_signals(run["labels"], run["probs"], mask > 0,
                                                    drawn)
                for rule in ENDED:
                    ends, written, cpu = carried_ends(image, redrawn[rule][0], top)
                    label = f"{variant} + redraw {rule} + ends"
                    rows.append({**base, "variant": label, **scores(ends, mask, rest),
                                 "cpu_s": run["cpu_s"] + redrawn[rule][1] + cpu,
                                 "wall_s": run["wall_s"] + redrawn[rule][1] + cpu,
                                 "ends": written})
                    log(f"levers: {name} seed {seed} {label}: {rows[-1]['dice']:.3f} "
                        f"(carried to {written})")
                    if label == shipped:
                        rows.append({**rows[-1], "variant": TRUE_ENDS,
                                     **scores(within_true_ends(ends, mask), mask, rest)})
                for label, high in RAISED.items() if variant in MEDICAL else ():
                    label = f"{variant} + {label}"
                    more = grown(run["probs"], accepted, top, high)
                    rows.append({**base, "variant": label, **scores(more, mask, rest),
                                 "cpu_s": run["cpu_s"], "wall_s": run["wall_s"]})
                    new, done, cpu = redraws(image, more, run["probs"], rest, engine)["always"]
                    ends, written, more_cpu = carried_ends(image, new, top)
                    rows.append({**base, "variant": f"{label} + redraw always + ends",
                                 **scores(ends, mask, rest), "cpu_s": run["cpu_s"] + cpu
                                 + more_cpu, "wall_s": run["wall_s"] + cpu + more_cpu,
                                 "redrawn": done, "ends": written})
                    log(f"levers: {name} seed {seed} {label}: {rows[-2]['dice']:.3f}, with the "
                        f"redraw and ends {rows[-1]['dice']:.3f}")
                for grow, low in GROWN.items():
                    more = grown(run["probs"], accepted, top, low)
                    label = f"{variant} + {grow}"
                    rows.append({**base, "variant": label, **scores(more, mask, rest),
                                 "cpu_s": run["cpu_s"], "wall_s": run["wall_s"]})
                    new, done, cpu = redraws(image, more, run["probs"], rest, engine)["always"]
                    rows.append({**base, "variant": f"{label} + redraw always",
                                 **scores(new, mask, rest), "cpu_s": run["cpu_s"] + cpu,
                                 "wall_s": run["wall_s"] + cpu, "redrawn": done})
                    log(f"levers: {name} seed {seed} {label}: {rows[-2]['dice']:.3f}, "
                        f"with the redraw {rows[-1]['dice']:.3f}")
    return rows


def shipped_variant() -> str:
    """The row that is Propagate as it ships without the store (``PROPAGATE_ENCODER``,
    ``REDRAW``, ``CARRY_ENDS``), so the table can say which one it is."""
    from napari_fmbff.training.config import PROPAGATE_ENCODER
    from napari_fmbff.training.medical import TRAIN_BFLOAT16, start_layers
    from napari_fmbff.training.propagate import CARRY_ENDS, REDRAW

    low = TRAIN_BFLOAT16 and precision_tag() == "-bfloat16"  # as train_precision decides
    base = ("192 px crops" if PROPAGATE_ENCODER != "litemedsam" else
            "medical encoder procedural start" if low and start_layers() else
            "medical encoder fast bf16 layers" if low else "medical encoder fast")
    from napari_fmbff.inference.redraw import UNSURE

    rule = "always" if UNSURE is None else UNSURE_DROPPED
    return base + (f" + redraw {rule}" if REDRAW else "") + (" + ends" if REDRAW and CARRY_ENDS
                                                             else "")


def variant_mean(rows, variant, key) -> float:
    """The mean of ``key`` over ``variant``'s rows (NaNs, e.g. no precision, left out)."""
    vals = [r[key] for r in rows if r["variant"] == variant and r[key] == r[key]]
    return statistics.mean(vals) if vals else float("nan")


def row_order(rows) -> list:
    """The variants in the order they ran, the references last."""
    names = list(dict.fromkeys(r["variant"] for r in rows))
    return sorted(names, key=lambda v: v.startswith("reference: "))


def print_lever_table(rows) -> None:
    print("\n## Issue 30's levers: one LiteMedSAM box, then Propagate\n")
    print("Over every slice but the boxed one (lesion-free slices counted); mean over the "
          "volumes and seeds.\n")
    print("| variant | runs | 3D Dice | lesion slices | precision | recall | CPU s | wall s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    shipped = shipped_variant()
    for variant in row_order(rows):
        mine = [r for r in rows if r["variant"] == variant]
        name = f"{variant} (**Propagate as shipped**)" if variant == shipped else variant

        def mean(key):
            return variant_mean(mine, variant, key)

        def secs(key):  # the references have no time of their own
            return "–" if mean(key) != mean(key) else f"{mean(key):.0f}"

        print(f"| {name} | {len(mine)} | **{mean('dice'):.3f}** | {mean('lesion_dice'):.3f} "
              f"| {mean('precision'):.3f} | {mean('recall'):.3f} | {secs('cpu_s')} | "
              f"{secs('wall_s')} |")
    print("\nPer volume (3D Dice, seeds in order):\n")
    volumes = list(dict.fromkeys(r["volume"] for r in rows))
    print("| variant | " + " | ".join(volumes) + " |")
    print("|---|" + "---:|" * len(volumes))
    for variant in row_order(rows):
        cells = []
        for v in volumes:
            vals = [f"{r['dice']:.3f}" for r in rows if r["variant"] == variant
                    and r["volume"] == v]
            cells.append(" / ".join(vals) or "–")
        print(f"| {variant} | " + " | ".join(cells) + " |")
