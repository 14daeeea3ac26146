"""Lever 1, one patient -> the next: a model trained on one LiteMedSAM box's slice of patient A
segments every slice of patient B of the same kind (lung CT, brain MR), before anyone
corrects anything on B. Today's recipe (``starter`` fine-tuned by Propagate on 192 px crops)
against new FM-BFF-Net layers on LiteMedSAM's frozen encoder (``training.medical``), same
seeds, same box. Scored over all of B's slices (lesion-free slices counted): 3D Dice,
precision, recall of the model's mask at 0.5 (nothing to connect to: no user object on B).

    pip install -e ".[bench]"
    python benchmarks/medical_transfer.py --seeds 0,1 --store build/levers
    python benchmarks/medical_transfer.py --whole --seeds 0 --store build/levers

``--store``: the levers benchmark's store (each volume's LiteMedSAM features are encoded
once and kept there). Torch on ``--threads`` threads.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
import interactive  # noqa: E402
import levers  # noqa: E402

PAIRS = (("lung2", "lung1"), ("lung1", "lung2"), ("brain1", "brain2"), ("brain2", "brain1"))


def scores(pred, truth) -> dict:
    pred, truth = np.asarray(pred, bool), np.asarray(truth, bool)
    tp = float((pred & truth).sum())
    return {"dice": 2 * tp / max(pred.sum() + truth.sum(), 1),
            "precision": tp / pred.sum() if pred.sum() else float("nan"),
            "recall": tp / max(truth.sum(), 1)}


def boxed(name, cache, engine):
    image, mask = interactive.load_volume(name, cache)
    top = int(np.argmax(mask.sum(axis=(1, 2))))
    engine.for_volume(name, image)
    accepted = engine(image[top], interactive.grown_box(mask[top])) > 0
    return image, mask, top, accepted


def today(image, top, accepted, seed, other):
    """``starter`` fine-tuned by Propagate on the box's slice (its shipped recipe), then the
    saved model on every slice of ``other``."""
    from napari_fmbff import load_model
    from napari_fmbff.inference.progress import drain
    from napari_fmbff.inference.segmenter import Segmenter
    from napari_fmbff.model.normalization import default_normalization
    from napari_fmbff.training.loop import propagate_config
    from napari_fmbff.training.propagate import PropagateRequest, iter_propagate

    labels = np.zeros(image.shape, np.int32)
    labels[top] = accepted
    with tempfile.TemporaryDirectory() as tmp:
        request = PropagateRequest(image, labels, Path(tmp) / "m.safetensors", slices=[top],
                                   cfg=propagate_config(device="cpu", seed=seed),
                                   base="starter", redraw=False)
        result = drain(iter_propagate(load_model("starter"), request))
        net = result.outcome.result.net if result.learned else load_model("starter")
    setting = default_normalization(net).for_stack(other)
    seg = Segmenter(net, normalization=setting)
    return np.stack([seg.predict_proba(np.asarray(p)) for p in other])


def medical_run(name, image, top, accepted, seed, other_name, other, store, start=None,
                tune=True):
    """New layers on LiteMedSAM's encoder (drawn from ``seed``, or read from ``start``),
    fine-tuned on A's box slice (``tune``), then every slice of B."""
    from napari_fmbff.inference import medical as seen
    from napari_fmbff.inference.litemedsam import volume_range
    from napari_fmbff.training import medical

    net = medical.medical_model(True, seed, start)
    if tune:
        medical.fine_tune(net, [image[top]], [accepted], volume_range(image), seed=seed)
    feats = levers.volume_features(other_name, other, volume_range(other), store)["feats"]
    return np.stack([seen.predict_plane(net, f) for f in feats])


#: A store on LiteMedSAM's encoder (``--whole``): the new layers' training on whole patients,
#: steps of ``WHOLE_BATCH`` (one patient: ``WHOLE_STEPS``, about 12-30 passes over its
#: slices; four patients: ``STORE_STEPS``, about 16 passes).
WHOLE_STEPS, STORE_STEPS, WHOLE_BATCH = 300, 1000, 4


def whole_run(names, seed, b, other, store, start, cache):
    """Patients reviewed whole, then the next: new layers (from ``start``) trained on every
    slice of each volume in ``names`` (its plain encodings, kept in ``store``; lesion slices
    repeated as the store repeats them, ``store_training.lesion_repeat``), then every slice
    of B. What a store's model on LiteMedSAM's encoder would answer a new patient first."""
    from types import SimpleNamespace

    from napari_fmbff.inference import medical as seen
    from napari_fmbff.inference.litemedsam import volume_range
    from napari_fmbff.inference.progress import drain
    from napari_fmbff.training import medical
    from napari_fmbff.training.store_training import lesion_repeat

    net = medical.medical_model(True, seed, start)
    feats, targets, reviewed = [], [], []
    for name in names:
        image, mask = interactive.load_volume(name, cache)
        planes = levers.volume_features(name, image, volume_range(image), store)["feats"]
        reviewed.append((planes, mask > 0))
        repeat = lesion_repeat([SimpleNamespace(mask=m) for m in mask])
        for f, m in zip(planes, mask):
            for _ in range(repeat if m.any() else 1):
                feats.append((f.s2, f.s4))
                targets.append(medical._target(m > 0, f.resized))
    steps = WHOLE_STEPS if len(names) == 1 else STORE_STEPS
    recipe = medical.HeadRecipe(steps=steps, batch=WHOLE_BATCH)
    drain(medical.iter_fine_tune(net, None, None, None, recipe, seed, (feats, targets, [])))

    def answer(planes):
        return np.stack([seen.predict_plane(net, f) for f in planes]) >= 0.5

    own = [scores(answer(planes), truth)["dice"] for planes, truth in reviewed]
    mine = levers.volume_features(b, other, volume_range(other), store)["feats"]
    return answer(mine), own


def whole_plans():
    """(patients reviewed whole, the next patient): each pair of ``PAIRS``, then each volume
    with the other four in the store."""
    return [((a,), b) for a, b in PAIRS] + [
        (tuple(v for v in interactive.VOLUMES if v != b), b) for b in interactive.VOLUMES]


def starts(path, a, image, top, accepted, seed, b, other, store):
    """The rows of a file of new layers (none without one): fine-tuned on A's slice, and alone
    (the same for every A, so run for the first seed only)."""
    if not path:
        return []
    out = [("medical encoder, procedural start", lambda: medical_run(
        a, image, top, accepted, seed, b, other, store, path))]
    if seed == 0:
        out.append(("procedural start alone (zero-shot)", lambda: medical_run(
            a, image, top, accepted, seed, b, other, store, path, tune=False)))
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--store", default=None)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--medical-start", default=None,
                   help="a file of new layers (scripts/train_medical_starter.py): adds its "
                        "rows, fine-tuned on A and alone (zero-shot on B)")
    p.add_argument("--skip-today", action="store_true",
                   help="leave out today's rows (starter fine-tuned: the slow ones)")
    p.add_argument("--whole", action="store_true",
                   help="only the store on LiteMedSAM's encoder: patients reviewed whole "
                        "(each pair, and each volume after the other four), then the next "
                        "patient's every slice (new layers from --medical-start, or the "
                        "bundled start)")
    p.add_argument("--next", default=None,
                   help="--whole: only these next patients (comma-separated volume names)")
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    cache = Path.home() / ".cache" / "napari-fmbff-bench"
    store = Path(args.store) if args.store else None
    if args.whole:
        return whole_table(args, cache, store)
    engine = interactive.LiteMedSAM()
    rows = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        for a, b in PAIRS:
            image, _, top, accepted = boxed(a, cache, engine)
            other, truth = interactive.load_volume(b, cache)
            for variant, run in (*(() if args.skip_today else (
                                     ("today (starter, Propagate's recipe)",
                                      lambda: today(image, top, accepted, seed, other)),)),
                                 ("medical encoder", lambda: medical_run(
                                     a, image, top, accepted, seed, b, other, store)),
                                 *starts(args.medical_start, a, image, top, accepted, seed, b,
                                         other, store)):
                start = time.process_time()
                probs = run()
                rows.append({"variant": variant, "pair": f"{a} -> {b}", "seed": seed,
                             **scores(probs >= 0.5, truth > 0),
                             "cpu_s": time.process_time() - start})
                print(f"[{time.strftime('%H:%M:%S')}] {a} -> {b} seed {seed} {variant}: "
                      f"{rows[-1]['dice']:.3f}", file=sys.stderr, flush=True)
    print("\n## Lever 1, one patient -> the next (one box's slice of A, every slice of B)\n")
    print("| variant | runs | 3D Dice | precision | recall |")
    print("|---|---:|---:|---:|---:|")
    for variant in dict.fromkeys(r["variant"] for r in rows):
        n = sum(r["variant"] == variant for r in rows)
        dice, precision, recall = (levers.variant_mean(rows, variant, k)
                                   for k in ("dice", "precision", "recall"))
        print(f"| {variant} | {n} | **{dice:.3f}** | {precision:.3f} | {recall:.3f} |")
    print("\n| variant | " + " | ".join(f"{a} -> {b}" for a, b in PAIRS) + " |")
    print("|---|" + "---:|" * len(PAIRS))
    for variant in dict.fromkeys(r["variant"] for r in rows):
        cells = [" / ".join(f"{r['dice']:.3f}" for r in rows if r["variant"] == variant
                            and r["pair"] == f"{a} -> {b}") for a, b in PAIRS]
        print(f"| {variant} | " + " | ".join(cells) + " |")
    return 0


def whole_table(args, cache, store) -> int:
    from napari_fmbff.training import medical

    start = Path(args.medical_start) if args.medical_start else medical.start_layers()
    rows = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        for names, b in whole_plans():
            if args.next and b not in args.next.split(","):
                continue
            other, truth = interactive.load_volume(b, cache)
            begin = time.process_time()
            pred, own = whole_run(names, seed, b, other, store, start, cache)
            rows.append({"plan": f"{' + '.join(names)} -> {b}", "seed": seed,
                         **scores(pred, truth > 0), "own": statistics.mean(own),
                         "cpu_s": time.process_time() - begin})
            print(f"[{time.strftime('%H:%M:%S')}] {rows[-1]['plan']} seed {seed}: "
                  f"{rows[-1]['dice']:.3f}", file=sys.stderr, flush=True)
    print("\n## A store on LiteMedSAM's encoder: patients reviewed whole -> the next patient\n")
    print(f"New layers from {start.name if start else 'the seed'}, {WHOLE_STEPS} steps "
          f"({STORE_STEPS} for four patients) of {WHOLE_BATCH} on every slice of the reviewed "
          "patients; the next patient's every slice scored at 0.5 (lesion-free slices "
          "counted). \"own\": the mean 3D Dice of the reviewed patients' own slices.\n")
    print("| reviewed whole -> next | seed | 3D Dice | precision | recall | own | CPU s |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['plan']} | {r['seed']} | **{r['dice']:.3f}** | {r['precision']:.3f} | "
              f"{r['recall']:.3f} | {r['own']:.3f} | {r['cpu_s']:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
