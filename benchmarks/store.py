"""The corrections store, patient after patient: does the next patient get easier, and are the
earlier ones kept?

    pip install -e ".[bench]"             # pynrrd (the pyradiomics volumes)
    python benchmarks/store.py --quick    # brain1 -> brain2, 2 epochs, a few minutes
    python benchmarks/store.py --deadline 17:30 --json build/store.json \\
        --alt epochs=30 --alt freeze_encoder_epochs=0

Data: the pyradiomics 3.1.0 volumes of benchmarks/few_shot.py's cache (lung1, lung2: lung CT;
brain1, brain2: brain MR), read as benchmarks/interactive.py reads them (axial slices; never
committed). A simulated user, for each sequence of patients A -> B:

1. A gets one corrected slice (its largest lesion slice, the ground truth) and a model is
   trained on it from ``starter``: a Store in a temporary folder with A as its one case,
   ``train_on_store`` (what the Fine-tune dock does with "add to the store").
2. B opens: its 3D Dice with A's model, **before any correction** (every slice of B).
3. B gets one corrected slice (its largest lesion slice; with ``--box``, LiteMedSAM's answer to
   one box on it, accepted as it is: one box, then Propagate) and a model is trained again,
   by arm:

   - **store**: B is added to A's store and ``train_on_store`` trains on both from the base
     (``starter``; ``--chained``: from the store's latest model, A's, as store runs did before
     issue 31), the cases sampled by ``--sampling`` (default: the store's, balanced
     per case; "newest-half": B replayed to about half the samples, ``REPLAY_SHARE``);
   - **newest only**: from A's model on B's slice alone (the dock before the store): a store
     holding only B, trained from A's model, so the recipe and code are the same;
   - **starter, B alone** (reference): from ``starter`` on B's slice alone (step 1 for B).

4. B's 3D Dice **after one corrected slice** (B's other slices), and A's 3D Dice with B's model
   (A's other slices), against A's with its own model: the **forgetting**.

Same seed in every arm; every training uses the engine's own functions (``Store``,
``train_on_store``, ``finetune_config`` with ``--set`` overrides) and every score ``Segmenter``
with the model's own intensity setting, so the numbers are what a user gets. CPU s: the
process's CPU time of one training (torch ``--threads`` threads). ``--alt FIELD=VALUE``
(repeatable) adds the store arm again with another recipe (e.g. ``epochs=30``,
``freeze_encoder_epochs=0``) after the main rows. ``--deadline HH:MM`` (UTC) starts no work
that would end later; the tables say what was cut.

``--procedural N``: a sequence of N procedural CT patients (``data.synthetic.ct_volume``: a
lesion that grows and shrinks through the slices, most slices lesion-free), as the store now
learns them: each patient is first segmented by the store's latest model (starter before the
first), the **automatic first answer** (3D Dice of every slice, CT soft-tissue window); then
the patient is reviewed whole (every slice accepted as the ground truth: its lesion slices as
lesion, the others as lesion-free background) and joins the store, and a model is trained
**from the base** (starter) on the whole store, promoted only by the gate. Each row also says
whether the earlier patients are kept (their mean 3D Dice with the newest model), the
training's CPU / wall s and the process's peak memory so far.

``--scale 5,10,20``: the time and memory of one store run at N cases (procedural patients of
``--slices`` x ``--size``, every slice reviewed), each N in a fresh process: the store is
filled without training, then ``train_on_store`` runs ``--set epochs=E`` (default 2) from
starter; the table gives CPU and wall s per epoch, the default recipe's (20 epochs)
extrapolated, and the process's peak resident memory.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
import few_shot  # noqa: E402  (the pyradiomics cache, --set parsing)
import interactive  # noqa: E402  (volumes, Dice, deadline, log)

KIND = interactive.KIND
# Most important first: one sequence of each kind in each direction.
PAIRS = (("brain1", "brain2"), ("lung1", "lung2"), ("brain2", "brain1"), ("lung2", "lung1"))
ARMS = ("store", "newest only", "starter, B alone")
MAIN, ALT = "defaults", "alternative"


class Bench:
    """Trains and scores, keeping every model and probability map it made (a model trained
    from ``starter`` on one volume's slice is step 1 of its sequence and the reference arm of
    the other)."""

    def __init__(self, cache: Path, work: Path, recipes: dict, seed: int):
        from napari_fmbff import load_model
        from napari_fmbff.model.normalization import default_normalization

        self.cache, self.work, self.recipes, self.seed = cache, work, recipes, seed
        self.sampling, self.chained, self.box, self.whole_a = "balanced", False, False, False
        self.answers = {}
        self.setting = default_normalization(load_model("starter"))
        self.volumes, self.alone, self.probs = {}, {}, {}
        self.last_s = 0.0  # wall s of the last training + its scoring: what the next may take
        self.count = 0

    def volume(self, name):
        if name not in self.volumes:
            image, mask = interactive.load_volume(name, self.cache)
            self.volumes[name] = (image, mask, int(np.argmax(mask.sum(axis=(1, 2)))))
        return self.volumes[name]

    def corrected(self, name) -> np.ndarray:
        """``--box``: the slice the user accepts is LiteMedSAM's answer to one box (the
        lesion's bounding box grown by 5 px, interactive.py's) on the largest lesion slice,
        with the volume's intensity range, as the Segment dock gives it; its Dice is kept."""
        from napari_fmbff.inference.litemedsam import litemedsam_box, volume_range

        if name not in self.answers:
            image, mask, top = self.volume(name)
            answer = litemedsam_box(image[top], interactive.grown_box(mask[top]), "cpu",
                                    volume_range(image))
            self.answers[name] = (answer.astype(np.uint8),
                                  interactive.dice(answer, mask[top] > 0))
            interactive.log(f"{name}: LiteMedSAM's box answer on slice {top}, Dice "
                            f"{self.answers[name][1]:.3f}")
        return self.answers[name][0]

    def cfg(self, recipe: str):
        from napari_fmbff.training.loop import finetune_config

        return finetune_config(device="cpu", seed=self.seed, **self.recipes[recipe])

    def train(self, store_dir: Path, name: str, start, recipe: str, whole: bool = False) -> dict:
        """Stage ``name``'s largest lesion slice (ground truth) in the store at ``store_dir``
        and ``train_on_store`` from ``start`` (None: the store's latest model, else starter:
        the start this benchmark measured; the dock now starts from the base model chosen);
        the trained net, its path and its CPU / wall s."""
        from napari_fmbff import load_model
        from napari_fmbff.data.store import CaseSource, open_store
        from napari_fmbff.inference.progress import drain
        from napari_fmbff.training.requests import ModelOut
        from napari_fmbff.training.store_training import StoreRun, stage, train_on_store

        image, mask, top = self.volume(name)
        store = open_store(store_dir)
        base = str(start) if start is not None else str(store.latest_model or "starter")
        self.count += 1
        out = self.work / "models" / f"m{self.count:02d}-{name}.safetensors"
        out.parent.mkdir(parents=True, exist_ok=True)
        wall, cpu = time.perf_counter(), time.process_time()
        labels = np.zeros(mask.shape, np.uint8)
        labels[top] = self.corrected(name) if self.box else mask[top]
        slices = [top]
        if whole:  # reviewed whole: every slice accepted as its ground truth
            labels, slices = mask.astype(np.uint8), list(range(len(mask)))
        pending = stage(store, image, labels, slices, self.setting,
                        CaseSource(source=name, name=name, model=base))
        gen = train_on_store(load_model(base), store, self.cfg(recipe), self.setting,
                             ModelOut(out, training_data=f"{name} z{top}", base=base),
                             store_run=StoreRun(pending, sampling=self.sampling))
        outcome = drain(gen)
        run = {"path": outcome.path, "net": outcome.result.net, "base": base,
               "cases": outcome.store_items.cases, "replay": outcome.store_items.replay(),
               "cpu_s": time.process_time() - cpu, "wall_s": time.perf_counter() - wall}
        interactive.log(f"trained {name} in {store_dir.name} from {Path(base).stem} "
                        f"({run['cpu_s']:.0f} CPU s, {run['wall_s']:.0f} s wall; "
                        f"cases {run['cases']}, replay {run['replay']})")
        return run

    def probabilities(self, key, net, name):
        """The net's probabilities on every slice of ``name`` (kept under ``key``)."""
        from napari_fmbff import Segmenter

        if (key, name) not in self.probs:
            image = self.volume(name)[0]
            seg = Segmenter(net, device="cpu", normalization=self.setting.for_stack(image))
            self.probs[key, name] = np.stack([seg.predict_proba(s) for s in image])
        return self.probs[key, name]

    def dice(self, key, net, name, skip_top: bool) -> float:
        """3D Dice of ``name`` (without its corrected slice when ``skip_top``)."""
        from napari_fmbff.inference.postprocess import DEFAULT_THRESHOLD

        _, mask, top = self.volume(name)
        probs = self.probabilities(key, net, name)
        rest = interactive.other_slices(len(mask), {top} if skip_top else set())
        return interactive.dice(probs[rest] >= DEFAULT_THRESHOLD, mask[rest])

    def first(self, name: str, recipe: str, whole: bool = False) -> dict:
        """Step 1: ``starter`` trained on ``name``'s slice (``whole``: every slice, the
        patient reviewed whole) in a store of its own."""
        key = (name, recipe) + (("whole",) if whole else ())
        if key not in self.alone:
            store_dir = self.work / f"store-{name}-{recipe}{'-whole' if whole else ''}"
            run = self.train(store_dir, name, None, recipe, whole)
            run["store"] = store_dir
            run["own"] = self.dice(("alone", name, recipe, whole), run["net"], name, True)
            self.alone[key] = run
        return self.alone[key]

    def sequence(self, a: str, b: str, arm: str, recipe: str) -> dict:
        """One row: A -> B in ``arm``."""
        first = self.first(a, recipe, self.whole_a)
        before = self.dice(("alone", a, recipe, self.whole_a), first["net"], b, False)
        if arm == "store":
            store_dir = self.work / f"store-{a}-{b}-{recipe}"
            shutil.copytree(first["store"], store_dir)
            # from the base (starter) on A and B, as the Fine-tune dock does (issue 31); with
            # --chained, from the store's latest (A's model), as store runs did before
            run = self.train(store_dir, b, None if self.chained else "starter", recipe)
        elif arm == "newest only":
            run = self.train(self.work / f"newest-{a}-{b}-{recipe}", b, first["path"], recipe)
        else:
            run = self.first(b, recipe)
            before = self.dice(("starter",), self.starter(), b, False)
        key = (arm, a, b, recipe)
        return {"sequence": f"{a} -> {b}", "kind": KIND[a], "arm": arm, "recipe": recipe,
                "b_before": before, "b_after": self.dice(key, run["net"], b, True),
                "a_own": first["own"], "a_after": self.dice(key, run["net"], a, True),
                "cpu_s": run["cpu_s"], "wall_s": run["wall_s"], "cases": run["cases"],
                "replay": run["replay"], "seed": self.seed}

    def starter(self):
        from napari_fmbff import load_model

        if not hasattr(self, "_starter"):
            self._starter = load_model("starter").eval()
        return self._starter


# ---- tables --------------------------------------------------------------------------------------

def print_table(rows, recipe_text):
    print(f"\n### Patient after patient ({recipe_text})\n")
    print("3D Dice. B before: B's every slice with A's model (B not corrected yet). B after: "
          "B's other slices after its one corrected slice. A own: A's other slices with A's "
          "model; A after B: the same slices with B's model (forgetting: A after B - A own). "
          "CPU s: the training on B.\n")
    print("| sequence | arm | seed | B before | B after one slice | A own | A after B | "
          "forgetting | CPU s |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in sorted(rows, key=lambda r: (r["sequence"], ARMS.index(r["arm"]), r["seed"])):
        print(f"| {r['sequence']} | {r['arm']} | {r['seed']} | {r['b_before']:.3f} | "
              f"{r['b_after']:.3f} | {r['a_own']:.3f} | {r['a_after']:.3f} | "
              f"{r['a_after'] - r['a_own']:+.3f} | {r['cpu_s']:.0f} |")
    groups = dict.fromkeys((r["arm"], r["recipe"]) for r in rows)
    for arm, recipe in groups:
        mine = [r for r in rows if (r["arm"], r["recipe"]) == (arm, recipe)]
        mean = {k: statistics.mean(r[k] for r in mine)
                for k in ("b_before", "b_after", "a_own", "a_after", "cpu_s")}
        print(f"| **mean** ({len(mine)} rows) | {arm} | | {mean['b_before']:.3f} | "
              f"**{mean['b_after']:.3f}** | {mean['a_own']:.3f} | **{mean['a_after']:.3f}** | "
              f"{mean['a_after'] - mean['a_own']:+.3f} | {mean['cpu_s']:.0f} |")


# ---- main ----------------------------------------------------------------------------------------

def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="brain1 -> brain2, 2 epochs, no extras")
    p.add_argument("--pairs", default=",".join(f"{a}:{b}" for a, b in PAIRS),
                   help="sequences A:B, most important first")
    p.add_argument("--set", action="append", metavar="FIELD=VALUE",
                   help="override a FINETUNE_DEFAULTS field (JSON value), e.g. --set epochs=10")
    p.add_argument("--alt", action="append", metavar="FIELD=VALUE",
                   help="an alternative recipe for the store arm (on top of --set); repeatable")
    p.add_argument("--no-reference", action="store_true", help="skip the 'starter, B alone' arm")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--deadline", default=None, help="HH:MM UTC: start no work that ends later")
    p.add_argument("--cache", default=None, help="data cache (FMBFF_BENCH_CACHE)")
    p.add_argument("--work", default=None, help="folder for the stores and models (default: "
                   "a temporary folder, removed at the end)")
    p.add_argument("--json", default=None, help="also write every number here")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (1: robust on a busy CPU; 0: torch's default)")
    p.add_argument("--sampling", default="balanced", choices=("balanced", "newest-half"),
                   help="how a store run samples its cases (store_training.SAMPLING)")
    p.add_argument("--box", action="store_true",
                   help="each patient's corrected slice is LiteMedSAM's answer to one box, "
                        "not the ground truth (one box, then propagate)")
    p.add_argument("--whole-a", action="store_true",
                   help="patient A is reviewed whole (every slice its ground truth) before B")
    p.add_argument("--chained", action="store_true",
                   help="the store arm starts from the store's latest model (A's), not starter")
    p.add_argument("--procedural", type=int, default=0, metavar="N",
                   help="run the procedural sequence of N CT patients instead of the pairs")
    p.add_argument("--scale", default=None, metavar="N,N,...",
                   help="time and memory of one store run at N cases (e.g. 5,10,20)")
    p.add_argument("--scale-one", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--slices", type=int, default=20, help="procedural: slices per patient")
    p.add_argument("--size", type=int, default=160, help="procedural: slice size in px")
    p.add_argument("--tables", nargs="+", metavar="JSON",
                   help="print the tables of earlier --json files (seeds pooled), run nothing")
    args = p.parse_args(argv)
    args.overrides = few_shot.parse_overrides(args.set)
    args.alt = few_shot.parse_overrides(args.alt)
    if args.quick:
        args.pairs, args.no_reference, args.alt = "brain1:brain2", True, {}
        args.overrides.setdefault("epochs", 2)
    args.pairs = [tuple(pair.split(":")) for pair in args.pairs.split(",")]
    unknown = {v for pair in args.pairs for v in pair} - set(KIND)
    if unknown or any(len(pair) != 2 for pair in args.pairs):
        p.error(f"--pairs: A:B of {', '.join(sorted(KIND))}, got {sorted(unknown) or 'a bad pair'}")
    return args


def plan(args):
    """(arm, pair, recipe) in priority order: the store against newest-only on every pair,
    then the reference arm, then the alternative recipe's store arm."""
    jobs = [(arm, pair, MAIN) for pair in args.pairs for arm in ARMS[:2]]
    if not args.no_reference:
        jobs += [(ARMS[2], pair, MAIN) for pair in args.pairs]
    if args.alt:
        jobs += [("store", pair, ALT) for pair in args.pairs]
    return jobs


def main(argv=None) -> int:
    from napari_fmbff.training.loop import finetune_config
    from napari_fmbff.training.store_training import REPLAY_SHARE

    args = parse_args(argv)
    if args.tables:
        return print_saved(args.tables)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.scale_one:
        return _scale_one(args)
    if args.scale:
        return scale(args)
    if args.procedural:
        return procedural(args)
    deadline = interactive.parse_deadline(args.deadline)
    recipes = {MAIN: args.overrides, ALT: {**args.overrides, **args.alt}}
    shown = {name: {k: v for k, v in vars(finetune_config(**r)).items()
                    if k in few_shot_fields()} for name, r in recipes.items()}
    print(f"# store benchmark | CPU, torch threads {args.threads or 'default'} | seed {args.seed} "
          f"| sampling {args.sampling} (newest-half: share {REPLAY_SHARE}) | recipe {shown[MAIN]}"
          + (f" | alternative {args.alt}" if args.alt else ""))
    with tempfile.TemporaryDirectory(prefix="fmbff-store-bench-") as tmp:
        work = Path(args.work) / time.strftime("%Y%m%d-%H%M%S") if args.work else Path(tmp)
        bench = Bench(few_shot.cache_dir(args.cache), work, recipes, args.seed)
        bench.sampling, bench.chained, bench.box = args.sampling, args.chained, args.box
        bench.whole_a = args.whole_a
        rows, cut = [], []
        for arm, (a, b), recipe in plan(args):
            what = f"{arm} {a} -> {b} ({recipe})"
            if interactive.past(deadline, bench.last_s):
                cut.append(what)
                continue
            started = time.perf_counter()
            rows.append(bench.sequence(a, b, arm, recipe))
            bench.last_s = time.perf_counter() - started
            r = rows[-1]
            interactive.log(f"{what}: B {r['b_before']:.3f} -> {r['b_after']:.3f}, A "
                            f"{r['a_own']:.3f} -> {r['a_after']:.3f}")
            dump(args.json, args, shown, rows, cut)
    for recipe in dict.fromkeys(r["recipe"] for r in rows):
        print_table([r for r in rows if r["recipe"] == recipe],
                    f"{recipe}: {shown[recipe]}")
    if cut:
        print(f"\nCut to end by {args.deadline} UTC: " + "; ".join(cut) + ".")
    dump(args.json, args, shown, rows, cut)
    return 0


# ---- the procedural sequence ------------------------------------------------------------------

def procedural(args) -> int:
    """``--procedural N``: N procedural patients in sequence through one store (module doc)."""
    import resource

    from napari_fmbff import load_model
    from napari_fmbff.data.store import CaseSource, open_store
    from napari_fmbff.data.synthetic import ct_volume
    from napari_fmbff.inference.intensity import intensity_setting
    from napari_fmbff.inference.progress import drain
    from napari_fmbff.model.normalization import default_normalization
    from napari_fmbff.training.loop import finetune_config
    from napari_fmbff.training.requests import ModelOut
    from napari_fmbff.training.store_training import StoreRun, stage, train_on_store

    deadline = interactive.parse_deadline(args.deadline)
    setting = intensity_setting(default_normalization(load_model("starter")), "soft-tissue")
    patients = [ct_volume(args.seed * 1000 + 100 + k, args.slices, args.size)
                for k in range(args.procedural)]
    cfg = finetune_config(device="cpu", seed=args.seed, **args.overrides)
    print(f"# store benchmark, procedural | {args.procedural} patients of {args.slices} x "
          f"{args.size} px | seed {args.seed} | sampling {args.sampling} | threads "
          f"{args.threads or 'default'} | recipe "
          f"{ {k: v for k, v in vars(cfg).items() if k in few_shot_fields()} }")
    rows, cut, last = [], [], 0.0
    with tempfile.TemporaryDirectory(prefix="fmbff-store-proc-") as tmp:
        store_dir, models = Path(tmp) / "store", []
        for k, (volume, mask) in enumerate(patients):
            latest = open_store(store_dir).latest_model if store_dir.exists() else None
            first = _volume_dice(load_model(str(latest or "starter")), volume, mask, setting)
            row = {"patient": k + 1, "model": Path(str(latest)).stem if latest else "starter",
                   "first_answer": first, "seed": args.seed}
            if interactive.past(deadline, last):
                cut.append(f"training on patient {k + 1}")
                rows.append(row)
                break
            wall, cpu = time.perf_counter(), time.process_time()
            store = open_store(store_dir)
            out = Path(tmp) / "models" / f"after-{k + 1:02d}.safetensors"
            out.parent.mkdir(exist_ok=True)
            pending = stage(store, volume, mask, list(range(len(volume))), setting,
                            CaseSource(source=f"procedural-{k + 1}", name=f"patient{k + 1}",
                                       model="starter"))
            outcome = drain(train_on_store(
                load_model("starter"), store, cfg, setting,
                ModelOut(out, training_data=f"procedural patient {k + 1}", base="starter"),
                store_run=StoreRun(pending, sampling=args.sampling)))
            last = time.perf_counter() - wall
            net = outcome.result.net
            kept = [_volume_dice(net, v, m, setting) for v, m in patients[:k]]
            row.update(cases=k + 1, promoted=bool(getattr(outcome, "promoted", True)),
                       own=_volume_dice(net, volume, mask, setting),
                       earlier=statistics.mean(kept) if kept else float("nan"),
                       cpu_s=time.process_time() - cpu, wall_s=last,
                       peak_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
            rows.append(row)
            models.append(out)
            interactive.log(f"patient {k + 1}: first answer {first:.3f}; trained on {k + 1} "
                            f"case(s) in {last:.0f} s, promoted {row['promoted']}")
            dump(args.json, args, {"procedural": vars(cfg)}, rows, cut)
    print_procedural(rows)
    if cut:
        print(f"\nCut to end by {args.deadline} UTC: " + "; ".join(cut) + ".")
    dump(args.json, args, {"procedural": vars(cfg)}, rows, cut)
    return 0


def scale(args) -> int:
    """``--scale N,N,...``: each N in its own process (``_scale_one``), one table."""
    import subprocess

    epochs = int(args.overrides.get("epochs", 2))
    rows = []
    for n in [int(v) for v in args.scale.split(",")]:
        cmd = [sys.executable, __file__, "--scale-one", str(n), "--slices", str(args.slices),
               "--size", str(args.size), "--threads", str(args.threads),
               "--set", f"epochs={epochs}"]
        done = subprocess.run(cmd, capture_output=True, text=True, check=True)
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        interactive.log(f"{n} cases: {rows[-1]}")
    print(f"\n### A store run at 5, 10, 20 cases ({args.slices} x {args.size} px procedural CT "
          f"patients, every slice reviewed; {epochs} epochs timed, torch threads "
          f"{args.threads})\n")
    print("| cases | slices | CPU s / epoch | wall s / epoch | 20 epochs (wall, extrapolated) | "
          "peak MiB |")
    print("|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['cases']} | {r['slices']} | {r['cpu_s'] / epochs:.0f} | "
              f"{r['wall_s'] / epochs:.0f} | {20 * r['wall_s'] / epochs / 60:.0f} min | "
              f"{r['peak_mib']:.0f} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"argv": sys.argv[1:], "rows": rows}, indent=1))
    return 0


def _scale_one(args) -> int:
    """One N of ``--scale`` (this process): fill a store with N patients, time one run."""
    import resource

    from napari_fmbff import load_model
    from napari_fmbff.data.store import open_store
    from napari_fmbff.data.synthetic import ct_volume
    from napari_fmbff.inference.intensity import intensity_setting
    from napari_fmbff.inference.progress import drain
    from napari_fmbff.model.normalization import default_normalization
    from napari_fmbff.training.loop import finetune_config
    from napari_fmbff.training.requests import ModelOut
    from napari_fmbff.training.store_training import StoreRun, train_on_store

    setting = intensity_setting(default_normalization(load_model("starter")), "soft-tissue")
    with tempfile.TemporaryDirectory(prefix="fmbff-store-scale-") as tmp:
        store = open_store(Path(tmp) / "store")
        for k in range(args.scale_one):
            volume, mask = ct_volume(100 + k, args.slices, args.size)
            store.add_case(volume, mask, list(range(len(volume))), source=f"p{k}")
        wall, cpu = time.perf_counter(), time.process_time()
        drain(train_on_store(load_model("starter"), store,
                              finetune_config(device="cpu", **args.overrides), setting,
                              ModelOut(Path(tmp) / "m.safetensors", base="starter"),
                              store_run=StoreRun()))
        print(json.dumps({"cases": args.scale_one, "slices": args.scale_one * args.slices,
                          "cpu_s": time.process_time() - cpu,
                          "wall_s": time.perf_counter() - wall,
                          "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
    return 0


def _volume_dice(net, volume, mask, setting) -> float:
    """3D Dice of ``net`` on every slice of ``volume`` (threshold 0.5)."""
    from napari_fmbff import Segmenter
    from napari_fmbff.inference.postprocess import DEFAULT_THRESHOLD

    seg = Segmenter(net.eval(), device="cpu", normalization=setting.for_stack(volume))
    probs = np.stack([seg.predict_proba(plane) for plane in volume])
    return interactive.dice(probs >= DEFAULT_THRESHOLD, mask)


def print_procedural(rows) -> None:
    print("\n### Procedural patients in sequence (store retrained from starter on every "
          "reviewed patient)\n")
    print("3D Dice. First answer: the patient's every slice with the store's latest model "
          "before any correction (starter for patient 1). Own / earlier: after the patient "
          "joined the store, the new model on this patient and on the earlier ones (mean). "
          "Peak MiB: the process's peak resident memory so far.\n")
    print("| patient | seed | answered by | first answer | cases trained | promoted | own | "
          "earlier (mean) | CPU s | wall s | peak MiB |")
    print("|---:|---:|---|---:|---:|---|---:|---:|---:|---:|---:|")
    for r in rows:
        if "cases" not in r:
            print(f"| {r['patient']} | {r['seed']} | {r['model']} | {r['first_answer']:.3f} | "
                  "| | | | | | |")
            continue
        print(f"| {r['patient']} | {r['seed']} | {r['model']} | {r['first_answer']:.3f} | "
              f"{r['cases']} | {'yes' if r['promoted'] else 'no'} | {r['own']:.3f} | "
              f"{r['earlier']:.3f} | {r['cpu_s']:.0f} | {r['wall_s']:.0f} | "
              f"{r['peak_mib']:.0f} |")


def print_saved(paths) -> int:
    """The tables of earlier runs' --json files, their rows pooled (each row keeps its seed)."""
    rows, cut = [], []
    for path in paths:
        saved = json.loads(Path(path).read_text())
        rows += [{"seed": saved["seed"], **r, "recipe": json.dumps(saved["recipes"][r["recipe"]])}
                 for r in saved["rows"]]  # pooled by what the recipe is, not by its name
        cut += [f"{c} (seed {saved['seed']})" for c in saved["cut"]]
    seeds = sorted({r["seed"] for r in rows})
    print(f"# store benchmark | {len(paths)} run(s), seeds {seeds}")
    for recipe in dict.fromkeys(r["recipe"] for r in rows):
        print_table([r for r in rows if r["recipe"] == recipe], recipe)
    if cut:
        print("\nCut by the deadline: " + "; ".join(cut) + ".")
    return 0


def few_shot_fields():
    """The recipe fields worth printing."""
    return ("epochs", "lr", "batch_size", "tile_size", "freeze_encoder", "freeze_encoder_epochs",
            "lr_schedule", "lesion_crop_fraction", "min_steps_per_epoch")


def dump(path, args, recipes, rows, cut) -> None:
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps({
            "argv": sys.argv[1:], "threads": args.threads, "seed": args.seed,
            "sampling": args.sampling, "chained": args.chained, "box": args.box,
            "whole_a": args.whole_a,
            "recipes": recipes, "rows": rows, "cut": cut}, indent=1, default=str))


if __name__ == "__main__":
    sys.exit(main())
