"""Does LiteMedSAM draw a small lesion better when it sees only the region around its box?

LiteMedSAM scales a whole slice to 256 px (``inference.litemedsam.prepare``): a 20 px lesion
on a 512 px CT slice becomes 10 px. Cropping a square around the box first (its longest side
times ``factor``, at least ``min_side`` px, inside the slice) and giving LiteMedSAM that crop
enlarges the lesion, as zoom-in prompting does. A third way: the crop's answer where
LiteMedSAM's own predicted IoU (its decoder's IoU head) is higher than the whole slice's.

Two measurements, against the whole slice (what ships):
- the truth's bounding box grown by 5 px (the user's box; ``interactive.grown_box``) on every
  lesion slice of the five pyradiomics volumes: pooled Dice per volume, and their mean. No
  training, so no seeds.
- ``--propagate``: Propagate as shipped (the levers table's cached runs, ``--store``: the
  same box, the same training), its redraw (``inference.redraw``) on the whole slice or
  zoomed, then the lesion's ends carried as shipped; 3D Dice of every slice but the box's.

    pip install -e ".[bench]"
    python benchmarks/box_zoom.py --factors 2,4 --min-sides 64,96
    python benchmarks/box_zoom.py --propagate --store DIR --seeds 0,1,2,3 --factors 2,4 \
        --min-sides 64,96          # DIR: the --store of interactive.py --levers

Each crop is encoded anew (one LiteMedSAM encoding per box, where the whole slice's is shared
by every box on it). The volumes come from the cache of benchmarks/few_shot.py (never
committed). Results: docs/models.md, "Zoomed boxes".
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
import few_shot  # noqa: E402
import interactive  # noqa: E402


def crop_around(box, shape, factor: float, min_side: int):
    """(rows, cols) slices of the square (as far as the slice allows) around ``box``
    (x0, y0, x1, y1, inclusive): side = the box's longest side x ``factor``, at least
    ``min_side``, at most the slice's longest side, moved inside the slice."""
    x0, y0, x1, y1 = box
    h, w = shape
    side = int(round(min(max(max(x1 - x0 + 1, y1 - y0 + 1) * factor, min_side), max(h, w))))
    top = int(round((y0 + y1) / 2 - side / 2))
    left = int(round((x0 + x1) / 2 - side / 2))
    top, left = min(max(top, 0), max(h - side, 0)), min(max(left, 0), max(w - side, 0))
    return slice(top, min(top + side, h)), slice(left, min(left + side, w))


def whole_box(plane, box, intensity_range):
    """(mask, predicted IoU) on the whole slice: the plugin's own box engine (its embedding
    cached)."""
    from napari_fmbff.inference import litemedsam

    return litemedsam.litemedsam_box(plane, box, "cpu", intensity_range, scored=True)


def zoomed_box(plane, box, intensity_range, factor: float, min_side: int):
    """(mask (H, W), predicted IoU): LiteMedSAM's answer for ``box`` drawn on the crop
    ``crop_around`` gives."""
    from napari_fmbff.inference import litemedsam

    rows, cols = crop_around(box, plane.shape, factor, min_side)
    x0, y0, x1, y1 = box
    embedding = litemedsam.embed(plane[rows, cols], "cpu", intensity_range)
    drawn, iou = litemedsam.decode(embedding, (x0 - cols.start, y0 - rows.start,
                                               x1 + 1 - cols.start, y1 + 1 - rows.start),
                                   scored=True)
    out = np.zeros(plane.shape, bool)
    out[rows, cols] = drawn
    return out, iou


def run(volumes, settings, cache) -> list[dict]:
    from napari_fmbff.inference import litemedsam

    rows = []
    for name in volumes:
        image, mask = interactive.load_volume(name, cache)
        rng = litemedsam.volume_range(image)
        pairs = {s: [] for s in settings}
        pairs.update({("best", *s): [] for s in settings if s is not None})
        for z in np.flatnonzero(mask.any(axis=(1, 2))):
            truth = mask[z] > 0
            box = interactive.grown_box(truth)
            whole = whole_box(image[z], box, rng)
            for s in settings:
                drawn, iou = whole if s is None else zoomed_box(image[z], box, rng, *s)
                pairs[s].append((drawn, truth))
                if s is not None:  # the crop where LiteMedSAM rates it above the whole slice
                    pairs[("best", *s)].append((drawn if iou > whole[1] else whole[0], truth))
        for s in pairs:
            rows.append({"volume": name, "setting": label(s),
                         "dice": interactive.pooled_dice(pairs[s])})
        interactive.log(f"{name}: " + ", ".join(f"{r['setting']} {r['dice']:.3f}"
                                                for r in rows[-len(pairs):]))
    return rows


def redrawn(image, labels, top, rng, setting):
    """``labels`` with every marked slice but ``top`` redrawn by LiteMedSAM from the mask's
    box grown by 5 px (``inference.redraw.object_box``, as Propagate's redraw): on the whole
    slice (``setting`` None), on the crop, or on the crop where its predicted IoU is higher
    ("best", factor, min side). One object per slice, as the levers table redraws."""
    from napari_fmbff.inference.redraw import object_box

    out = labels.copy()
    for z in range(len(labels)):
        if z == top or not labels[z].any():
            continue
        box = object_box(labels[z])
        whole = whole_box(image[z], box, rng)
        if setting is None:
            drawn = whole[0]
        else:
            zoom = zoomed_box(image[z], box, rng, *setting[-2:])
            drawn = zoom[0] if setting[0] != "best" or zoom[1] > whole[1] else whole[0]
        out[z] = drawn
    return out


def propagate_rows(volumes, settings, seeds, store, cache) -> list[dict]:
    """Propagate as shipped (the levers table's cached runs in ``store``: the same box, the
    same training), its redraw on the whole slice or zoomed, then the lesion's ends carried
    (``levers.carried_ends``); 3D Dice of every slice but the box's (``levers.scores``)."""
    import levers

    from napari_fmbff.inference import litemedsam

    variant = levers.shipped_variant().split(" + ")[0]
    rows = []
    for seed in seeds:
        for name in volumes:
            image, mask = interactive.load_volume(name, cache)
            rng = litemedsam.volume_range(image)
            top = int(np.argmax(mask.sum(axis=(1, 2))))
            accepted = litemedsam.litemedsam_box(image[top], interactive.grown_box(mask[top]),
                                                 "cpu", rng)
            run = levers.run_variant(name, image, mask, top, accepted, variant, seed, store)
            rest = np.array([z for z in range(len(image)) if z != top])
            for s in settings:
                ends = levers.carried_ends(image, redrawn(image, run["labels"], top, rng, s),
                                           top)[0]
                rows.append({"volume": name, "seed": seed, "setting": label(s),
                             **levers.scores(ends, mask, rest)})
            interactive.log(f"{name} seed {seed}: " + ", ".join(
                f"{r['setting']} {r['dice']:.3f}" for r in rows[-len(settings):]))
    return rows


def label(setting) -> str:
    if setting is None:
        return "the whole slice (shipped)"
    if setting[0] == "best":
        return (f"crop x{setting[1]:g}, at least {setting[2]} px, where its predicted IoU "
                "is higher")
    return f"crop x{setting[0]:g}, at least {setting[1]} px"


def print_table(rows, volumes) -> None:
    names = list(dict.fromkeys(r["setting"] for r in rows))
    print("| LiteMedSAM sees | mean | " + " | ".join(volumes) + " |")
    print("|---|---:|" + "---:|" * len(volumes))
    for n in names:
        mine = {v: [r["dice"] for r in rows if r["setting"] == n and r["volume"] == v]
                for v in volumes}
        print(f"| {n} | **{np.mean(sum(mine.values(), [])):.3f}** | "
              + " | ".join(" / ".join(f"{d:.3f}" for d in mine[v]) for v in volumes) + " |")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--volumes", default=",".join(interactive.VOLUMES))
    p.add_argument("--factors", default="2,3,4")
    p.add_argument("--min-sides", default="32,64,96")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--cache", default=None, help="data cache (FMBFF_BENCH_CACHE)")
    p.add_argument("--json", type=Path)
    p.add_argument("--propagate", action="store_true",
                   help="Propagate as shipped, its redraw zoomed (the levers table's runs)")
    p.add_argument("--seeds", default="0,1,2,3")
    p.add_argument("--store", type=Path, help="the levers table's --store (its runs reused)")
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    volumes = args.volumes.split(",")
    settings = [None] + [(float(f), int(m)) for f in args.factors.split(",")
                         for m in args.min_sides.split(",")]
    if args.propagate:
        settings += [("best", *s) for s in settings[1:]]
        rows = propagate_rows(volumes, settings, [int(v) for v in args.seeds.split(",")],
                              args.store, few_shot.cache_dir(args.cache))
    else:
        rows = run(volumes, settings, few_shot.cache_dir(args.cache))
    print_table(rows, volumes)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
