"""Lever 1, within one patient from 1 and from 3 corrected slices: new FM-BFF-Net layers on
LiteMedSAM's frozen encoder (``training.medical``, Propagate's recipe) learn the true lesion on
the largest lesion slice, or on it and the two slices halfway to each end of the lesion; the
model's voxels connected to those slices' lesion (Propagate's rule), alone and as Propagate
finishes them (LiteMedSAM's redraw, then the lesion's ends: ``inference.redraw``), are scored
over every other slice, lesion-free slices counted. The layers start drawn from the seed, or
from a file of new layers trained on procedural images (``--medical-start``,
``scripts/train_medical_starter.py``).

Only volumes whose lesion spans at least 5 slices are run (lung2, brain1 of the pyradiomics
set): on a lesion of 3 slices, 3 corrected slices leave no lesion to find.

    pip install -e ".[bench]"
    python benchmarks/medical_slices.py --seeds 0,1 --store build/levers \\
        --medical-start src/napari_fmbff/weights/layers/medical_start.safetensors
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
import interactive  # noqa: E402
import levers  # noqa: E402

MIN_SLICES = 5


def corrected_slices(mask, count: int) -> list:
    """The largest lesion slice; with ``count`` 3, also the slices halfway from it to each
    end of the lesion."""
    areas = mask.sum(axis=(1, 2))
    top = int(np.argmax(areas))
    if count == 1:
        return [top]
    lesion = np.flatnonzero(areas)
    return sorted({top, (int(lesion[0]) + top) // 2, (int(lesion[-1]) + top + 1) // 2})


def redrawn(image, pred, zs):
    """``pred`` as Propagate finishes it: every marked slice but ``zs`` redrawn by LiteMedSAM
    from its mask's box, then the lesion carried past its ends (``inference.redraw``)."""
    from napari_fmbff.inference.progress import drain
    from napari_fmbff.inference.redraw import iter_extend_ends, iter_redraw

    out, *_ = drain(iter_redraw(image, np.asarray(pred, np.int32), zs, "cpu"))
    out, _ = drain(iter_extend_ends(image, out, zs, "cpu"))
    return out > 0


def run(name, image, mask, zs, seed, start, store):
    """(labels, CPU s): the layers trained on ``zs`` (the truth there), Propagate's rule."""
    from napari_fmbff.inference import medical as seen
    from napari_fmbff.inference.litemedsam import volume_range
    from napari_fmbff.inference.postprocess import Postprocess, propagated_labels
    from napari_fmbff.training import medical

    intensity = volume_range(image)
    feats = levers.volume_features(name, image, intensity, store)["feats"]
    cpu = time.process_time()
    net = medical.medical_model(True, seed, start)
    medical.fine_tune(net, [image[z] for z in zs], [mask[z] > 0 for z in zs], intensity,
                      seed=seed)
    probs = np.stack([seen.predict_plane(net, f) for f in feats])
    labels = np.zeros(mask.shape, np.int32)
    labels[zs] = mask[zs] > 0
    pred = propagated_labels(probs, labels, zs, Postprocess(0.5, 0, labels=True), True) > 0
    return pred, time.process_time() - cpu


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--store", default=None, help="the levers benchmark's store (features)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--medical-start", default=None,
                   help="a file of new layers: adds its rows")
    p.add_argument("--volumes", default=",".join(interactive.VOLUMES))
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    cache = Path.home() / ".cache" / "napari-fmbff-bench"
    store = Path(args.store) if args.store else None
    starts = {"drawn from the seed": None}
    if args.medical_start:
        starts["procedural start"] = Path(args.medical_start)
    rows = []
    for name in args.volumes.split(","):
        image, mask = interactive.load_volume(name, cache)
        if (mask.sum(axis=(1, 2)) > 0).sum() < MIN_SLICES:
            continue
        for count in (1, 3):
            zs = corrected_slices(mask, count)
            rest = np.array([z for z in range(len(image)) if z not in zs])
            for seed in [int(s) for s in args.seeds.split(",")]:
                for label, start in starts.items():
                    pred, cpu = run(name, image, mask, zs, seed, start, store)
                    for finish, labels in (("", pred), (" + redraw + ends",
                                                        redrawn(image, pred, zs))):
                        rows.append({"variant": f"{label}{finish}, {count} slice(s)",
                                     "volume": name, "seed": seed, "slices": zs, "cpu_s": cpu,
                                     **levers.scores(labels, mask > 0, rest)})
                        print(f"[{time.strftime('%H:%M:%S')}] {name} {zs} seed {seed} "
                              f"{label}{finish}: {rows[-1]['dice']:.3f}", file=sys.stderr,
                              flush=True)
    print("\n## Lever 1 within a patient: 1 and 3 corrected slices\n")
    print("| layers start | slices | runs | 3D Dice | lesion slices | precision | recall | "
          "CPU s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for variant in dict.fromkeys(r["variant"] for r in rows):
        n = sum(r["variant"] == variant for r in rows)
        label, count = variant.rsplit(", ", 1)
        cells = [levers.variant_mean(rows, variant, k)
                 for k in ("dice", "lesion_dice", "precision", "recall", "cpu_s")]
        print(f"| {label} | {count.split()[0]} | {n} | **{cells[0]:.3f}** | {cells[1]:.3f} | "
              f"{cells[2]:.3f} | {cells[3]:.3f} | {cells[4]:.0f} |")
    names = list(dict.fromkeys(r["volume"] for r in rows))
    print("\n| variant | " + " | ".join(names) + " |")
    print("|---|" + "---:|" * len(names))
    for variant in dict.fromkeys(r["variant"] for r in rows):
        cells = [" / ".join(f"{r['dice']:.3f}" for r in rows if r["variant"] == variant
                            and r["volume"] == v) for v in names]
        print(f"| {variant} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
