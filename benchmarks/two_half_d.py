"""Does 2.5D input help propagation? The starter fine-tuned on the corrected slice(s) of one
volume, every other slice segmented, with the network's 3 input channels either the grey
slice repeated (2D, what the plugin does today) or the slices z-1, z, z+1 (2.5D; the edge
slices repeat themselves).

    python benchmarks/two_half_d.py --help
    nice -n 10 python benchmarks/two_half_d.py --volumes lung1,brain2 --deadline 16:55 \
        --store build/two_half_d 2>> build/two_half_d.log

Everything else is benchmarks/interactive.py's propagation (imported, not copied): its
``load_volume`` (the pyradiomics volumes in few_shot.py's cache, never committed), its
``Propagator`` (``starter`` fine-tuned with ``finetune_config()`` on the corrected slices,
``Segmenter`` on every slice) and its Dice. The 2.5D arm only hands the Propagator a
(Z, Y, X, 3) volume instead of (Z, Y, X): ``make_items`` and ``Segmenter`` take 3-channel
slices as they are (``as_three_channels`` passes them through), so no network changes; its
first layer, trained on RGB-like images with 3 equal channels for grey, now sees 3 different
slices, and that is part of what is measured.

Same for both arms: the seed, the recipe, and the intensities: one fixed range per volume,
its 1 / 99.8 percentiles (``intensity_setting(..., normalize="volume").for_stack``: the
widgets' "whole stack (percentiles)", the consistent choice when channels are neighbouring
slices); ``--intensity slice`` gives each slice its own percentiles (the model default; for
2.5D joint over its 3 slices).

Corrected slices: ``1`` = the ground truth of the largest lesion slice; ``3`` = that slice
and the slices 2 above and 2 below it (clipped to the volume). Scores over the *other*
slices: 3D Dice (lesion-free slices included, so false alarms count) and Dice over the other
lesion slices only. ``--store`` keeps each run's probabilities (build/ is git-ignored), so a
rerun, or a second process on other volumes, resumes and the final table reads them all.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
import few_shot  # noqa: E402  (the data cache)
import interactive  # noqa: E402  (load_volume, Propagator, dice, deadline helpers)

VOLUMES = ("lung1", "lung2", "brain1", "brain2", "breast1")
ARMS = ("2D", "2.5D")
WINS_BY = 0.03  # the verdict's margin: mean gain above it, no volume worse by more


def neighbour_channels(volume: np.ndarray) -> np.ndarray:
    """(Z, Y, X) -> (Z, Y, X, 3): channels are slices z-1, z, z+1 (edges repeat themselves)."""
    before = np.concatenate([volume[:1], volume[:-1]])
    after = np.concatenate([volume[1:], volume[-1:]])
    return np.ascontiguousarray(np.stack([before, volume, after], axis=-1))


def volume_normalization(volume, intensity: str):
    """The one intensity setting both arms use on this volume (see the module docstring)."""
    from napari_fmbff import load_model
    from napari_fmbff.inference.intensity import intensity_setting
    from napari_fmbff.model.normalization import default_normalization

    base = default_normalization(load_model("starter"))
    return intensity_setting(base, normalize=intensity).for_stack(volume)


def corrected_slices(mask: np.ndarray, count: int) -> list[int]:
    """The largest lesion slice, and for 3 also the slices 2 above and below it."""
    top = int(np.argmax(mask.sum(axis=(1, 2))))
    if count == 1:
        return [top]
    if count == 3:
        return sorted({min(max(z, 0), len(mask) - 1) for z in (top - 2, top, top + 2)})
    raise SystemExit(f"--corrected: 1 or 3, got {count}")


def score(name, arm, count, seed, zs, mask, run) -> dict:
    rest = interactive.other_slices(len(mask), set(zs))
    probs = run["probs"][rest]
    lesion = mask[rest].any(axis=(1, 2))
    from napari_fmbff.training.metrics import confusion

    whole = confusion(probs >= 0.5, mask[rest]).scores()
    return {"volume": name, "arm": arm, "corrected": count, "seed": seed, "slices": zs,
            "dice": whole["dice"], "precision": whole["precision"], "recall": whole["recall"],
            "lesion_dice": interactive.dice(probs[lesion] >= 0.5, mask[rest][lesion]),
            "cpu_s": run["cpu_s"], "wall_s": run["wall_s"]}


def plan(args) -> list[tuple]:
    """(corrected count, seed, volume) in priority order: the first count and seed on every
    volume first, so a deadline cuts the extras, never half a comparison."""
    counts = [int(c) for c in args.corrected.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    return [(c, s, v) for c in counts for s in seeds for v in args.volumes.split(",")]


def run_all(args, deadline) -> tuple[list, list]:
    cache = few_shot.cache_dir(args.cache)
    store = Path(args.store) if args.store else None
    rows, cut, last_wall = [], [], 0.0
    for count, seed, name in plan(args):
        image, mask = interactive.load_volume(name, cache)
        zs = corrected_slices(mask, count)
        norm = volume_normalization(image, args.intensity)
        overrides = {**args.overrides, "seed": seed}
        for arm in ARMS:
            data = image if arm == "2D" else neighbour_channels(image)
            tag = f"{arm} {args.intensity}"  # the store key: arm and intensity
            prop = interactive.Propagator(name, data, overrides, store)
            prop.norm = norm
            stored = prop._stored((tag, tuple(zs))) is not None
            if not stored and (args.table_only or interactive.past(deadline, last_wall)):
                cut.append(f"{name} {arm}, {count} slice(s), seed {seed}")
                continue
            try:
                run = prop({z: mask[z] for z in zs}, tag=tag)
            except RuntimeError as err:
                cut.append(f"{name} {arm}, {count} slice(s), seed {seed}: {str(err)[:100]}")
                interactive.log(cut[-1])
                continue
            last_wall = max(last_wall, run["wall_s"])
            rows.append(score(name, arm, count, seed, zs, mask, run))
            interactive.log(f"{name} {arm} {count} slice(s) seed {seed}: 3D Dice "
                            f"{rows[-1]['dice']:.3f}, lesion slices {rows[-1]['lesion_dice']:.3f} "
                            f"({run['cpu_s']:.0f} CPU s, {run['wall_s']:.0f} s wall)")
            dump(args.json, rows, cut)
    return rows, cut


def paired(rows) -> dict:
    """{(count, seed): [(volume, slices, 2D row, 2.5D row)]} where both arms ran."""
    by = {(r["corrected"], r["seed"], r["volume"], r["arm"]): r for r in rows}
    out = {}
    for (count, seed, name, arm), r in by.items():
        other = by.get((count, seed, name, "2.5D"))
        if arm == "2D" and other:
            out.setdefault((count, seed), []).append((name, r["slices"], r, other))
    return out


def pr(row) -> str:
    return f"{row['precision']:.2f} / {row['recall']:.2f}"


def print_table(rows, intensity) -> None:
    print(f"\n#### 2.5D input: 3D Dice of the other slices (intensity: {intensity})\n")
    print("| volume | corrected slices | seed | 2D | 2.5D | 2.5D - 2D | lesion slices 2D "
          "| lesion slices 2.5D | precision / recall 2D | precision / recall 2.5D | CPU s 2D / 2.5D |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for (count, seed), pairs in paired(rows).items():
        for name, zs, a, b in pairs:
            print(f"| {name} | {', '.join(map(str, zs))} | {seed} | {a['dice']:.3f} | "
                  f"{b['dice']:.3f} | {b['dice'] - a['dice']:+.3f} | {a['lesion_dice']:.3f} | "
                  f"{b['lesion_dice']:.3f} | {pr(a)} | {pr(b)} | {a['cpu_s']:.0f} / {b['cpu_s']:.0f} |")
        gains = [b["dice"] - a["dice"] for _, _, a, b in pairs]
        print(f"| **mean** ({len(pairs)} volumes) | {count} | {seed} | "
              f"**{statistics.mean(a['dice'] for _, _, a, _ in pairs):.3f}** | "
              f"**{statistics.mean(b['dice'] for _, _, _, b in pairs):.3f}** | "
              f"**{statistics.mean(gains):+.3f}** | "
              f"{statistics.mean(a['lesion_dice'] for _, _, a, _ in pairs):.3f} | "
              f"{statistics.mean(b['lesion_dice'] for _, _, _, b in pairs):.3f} | | | "
              f"{statistics.mean(a['cpu_s'] for _, _, a, _ in pairs):.0f} / "
              f"{statistics.mean(b['cpu_s'] for _, _, _, b in pairs):.0f} |")
    print()
    for (count, seed), pairs in paired(rows).items():
        gains = [b["dice"] - a["dice"] for _, _, a, b in pairs]
        wins = statistics.mean(gains) > WINS_BY and min(gains) >= -WINS_BY
        print(f"- {count} corrected slice(s), seed {seed}: mean gain {statistics.mean(gains):+.3f}, "
              f"worst {min(gains):+.3f} -> 2.5D {'wins' if wins else 'does not win'} "
              f"(rule: mean > +{WINS_BY}, none below -{WINS_BY}).")


def dump(path, rows, cut) -> None:
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps({"rows": rows, "cut": cut}, indent=1))


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--volumes", default="lung1,lung2,brain1,brain2",
                   help=f"comma-separated, of {', '.join(VOLUMES)}")
    p.add_argument("--corrected", default="1,3", help="corrected-slice counts to run: 1 and / or 3")
    p.add_argument("--seeds", default="0", help="comma-separated training seeds")
    p.add_argument("--intensity", choices=("volume", "slice"), default="volume",
                   help="one percentile range per volume (default) or per slice")
    p.add_argument("--set", action="append", metavar="FIELD=VALUE",
                   help="override a FINETUNE_DEFAULTS field (JSON value), e.g. --set epochs=2")
    p.add_argument("--deadline", default=None, help="HH:MM UTC: start no run that ends later")
    p.add_argument("--cache", default=None, help="data cache (FMBFF_BENCH_CACHE)")
    p.add_argument("--store", default=None, help="folder keeping each run's probabilities")
    p.add_argument("--json", default=None, help="also write every number here")
    p.add_argument("--table-only", action="store_true",
                   help="train nothing: the table of the runs already in --store")
    p.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    args = p.parse_args(argv)
    args.overrides = few_shot.parse_overrides(args.set)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    rows, cut = run_all(args, interactive.parse_deadline(args.deadline))
    print(f"# 2.5D vs 2D propagation | volumes {args.volumes} | recipe finetune_config() "
          f"{args.overrides or ''} | torch threads {args.threads or 'default'}")
    print_table(rows, args.intensity)
    if cut:
        print("\nNot run (deadline, not in --store with --table-only, or failed): " + "; ".join(cut) + ".")
    dump(args.json, rows, cut)
    return 0


if __name__ == "__main__":
    sys.exit(main())
