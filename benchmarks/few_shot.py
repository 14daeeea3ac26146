"""Few-shot fine-tuning on real lesions: a few corrected slices of one patient, scored on another.

    pip install -e ".[bench]"            # pynrrd, segmentation-models-pytorch
    python benchmarks/few_shot.py                      # the full table (CPU: about an hour)
    python benchmarks/few_shot.py --quick              # a short check (N = 1, 10; lung; 3 epochs)
    python benchmarks/few_shot.py --rows starter --n 3,10 --set lr=1e-3 --set epochs=40
    python benchmarks/few_shot.py --speed --repeats 3  # the 20-slice CPU time / memory check

Data: the CT and MR volumes with lesion labels that ship in the pyradiomics 3.1.0 source
distribution (``data/*_image.nrrd`` + ``*_label.nrrd``, BSD-3), fetched from the package index
into a cache outside the repository (``--cache``, or FMBFF_BENCH_CACHE, default
~/.cache/napari-fmbff-bench) the first time. Never committed, never shipped.

Slices: the axial slices of a volume with lesion, plus as many lesion-free ones spread evenly
over the rest of the volume. Split by volume (a task trains on one patient's volume and is
scored on the other patient's): lung CT lung2 -> lung1 and lung1 -> lung2, brain MR brain1 ->
brain2 and brain2 -> brain1 (breast1 has no second volume and is not used). The N corrected
slices are the ground truth of the N training slices with the largest lesions, then lesion-free
slices (N = all: every slice of the training volume's set). Dice at threshold 0.5 through the
plugin's own ``Segmenter``, pooled over the held-out volume's slices.

Rows: the starter as is (N = 0); (i) the starter fine-tuned with ``finetune_config()``;
(ii) the same recipe from random weights (``FMBFFNet(starter.config)``, seed 0); (iii)
``smp.Unet("tu-tf_efficientnet_lite0")`` with the ImageNet Lite0 encoder weights the starter
started from (scripts/lite0_imagenet_weights.py), same recipe. Each run is its own process, so
its peak memory (RSS, taken after training) is its own. Prints markdown tables.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import statistics
import subprocess
import sys
import tarfile
import time
import urllib.request
from pathlib import Path

import numpy as np

SDIST = "pyradiomics-3.1.0.tar.gz"
SDIST_SHA256 = "24722c962a6bbd09bc39c1c67dbffe92435f9692a421fabaae8a6b4511eb48e4"
VOLUMES = ("lung1", "lung2", "brain1", "brain2")
# (training volume, held-out volume): never slices of one volume on both sides.
TASKS = {"lung": [("lung2", "lung1"), ("lung1", "lung2")],
         "brain": [("brain1", "brain2"), ("brain2", "brain1")]}
ROWS = ("starter", "random", "smp")
ROW_NAMES = {"base": "starter as is", "starter": "(i) starter + fine-tune",
             "random": "(ii) random init, same recipe",
             "smp": "(iii) smp.Unet, ImageNet Lite0 encoder, same recipe"}


# ---- data ------------------------------------------------------------------------------------

def cache_dir(arg: str | None) -> Path:
    return Path(arg or os.environ.get("FMBFF_BENCH_CACHE")
                or Path.home() / ".cache" / "napari-fmbff-bench").expanduser()


def fetch(cache: Path) -> Path:
    """The pyradiomics sdist's data folder in ``cache``; downloaded and unpacked if missing."""
    if all((cache / f"{v}_slices.npz").exists() for v in VOLUMES):
        return cache  # slices saved by an earlier run (no pynrrd needed)
    data = cache / "pyradiomics-3.1.0" / "data"
    if all((data / f"{v}_{k}.nrrd").exists() for v in VOLUMES for k in ("image", "label")):
        return data
    cache.mkdir(parents=True, exist_ok=True)
    sdist = cache / SDIST
    print(f"few_shot: fetching the pyradiomics 3.1.0 source distribution (34 MB, BSD-3) "
          f"from the package index into {cache}", file=sys.stderr)
    if not sdist.exists():
        # pip saves the file only after building its metadata, which fails for this sdist
        # (its metadata reports another version); the link pip found is downloaded instead.
        out = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps",
                              "--no-binary", ":all:", "--no-build-isolation", "-vv",
                              "pyradiomics==3.1.0", "-d", str(cache)],
                             capture_output=True, text=True, check=False)
        if not sdist.exists():
            links = re.findall(r"(https?://\S+/" + re.escape(SDIST) + r")", out.stdout + out.stderr)
            if not links:
                raise SystemExit(f"pip found no {SDIST}:\n{out.stderr[-2000:]}")
            tmp = sdist.with_suffix(".part")
            urllib.request.urlretrieve(links[0], tmp)
            tmp.replace(sdist)
    digest = hashlib.sha256(sdist.read_bytes()).hexdigest()
    if digest != SDIST_SHA256:
        raise SystemExit(f"{sdist}: sha256 {digest}, expected {SDIST_SHA256}")
    with tarfile.open(sdist) as tar:
        members = [m for m in tar.getmembers()
                   if m.name.startswith("pyradiomics-3.1.0/data/") and m.name.endswith(".nrrd")]
        tar.extractall(cache, members=members, filter="data")
    return data


def slice_set(name: str, data: Path):
    """(images, masks, has_lesion) of one volume: lesion slices (largest lesion first), then as
    many lesion-free slices spread evenly over the rest. Axial = the volume's third axis."""
    cached = data / f"{name}_slices.npz"
    if cached.exists():
        z = np.load(cached)
        return list(z["images"]), list(z["masks"])
    import nrrd

    image, _ = nrrd.read(str(data / f"{name}_image.nrrd"))
    label, _ = nrrd.read(str(data / f"{name}_label.nrrd"))
    area = (label > 0).sum(axis=(0, 1))
    lesion = sorted(np.flatnonzero(area), key=lambda k: -area[k])
    free = np.flatnonzero(area == 0)
    free = free[np.linspace(0, len(free) - 1, len(lesion)).round().astype(int)]
    order = list(lesion) + sorted(set(free.tolist()))
    images = [np.ascontiguousarray(image[:, :, k].T) for k in order]
    masks = [np.ascontiguousarray(label[:, :, k].T > 0).astype(np.uint8) for k in order]
    np.savez_compressed(cached, images=np.stack(images), masks=np.stack(masks))
    return images, masks


# ---- one run (its own process) ----------------------------------------------------------------

def lite0_unet(seed: int):
    import importlib.util

    import segmentation_models_pytorch as smp
    import torch

    torch.manual_seed(seed)
    net = smp.Unet("tu-tf_efficientnet_lite0", encoder_weights=None, classes=1)
    if os.environ.get("FMBFF_LITE0"):  # encoder weights written by the script below
        from safetensors.torch import load_file

        src = load_file(os.environ["FMBFF_LITE0"])
    else:
        script = Path(__file__).resolve().parents[1] / "scripts" / "lite0_imagenet_weights.py"
        spec = importlib.util.spec_from_file_location("lite0", script)
        lite0 = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(lite0)
        src = lite0.map_to_timm(lite0.source_weights()).state_dict()
    dst = net.encoder.model.state_dict()
    missing = [k for k in dst if k not in src or src[k].shape != dst[k].shape]
    if missing:
        raise SystemExit(f"Lite0 weights do not cover smp's encoder: {missing[:5]}")
    net.encoder.model.load_state_dict({k: src[k] for k in dst})
    return net


def run_one(spec: dict) -> dict:
    import resource

    import torch

    from napari_fmbff import FMBFFNet, Segmenter, load_model
    from napari_fmbff.model.normalization import default_normalization
    from napari_fmbff.training.loop import (
        finetune_config,
        make_items,
        run_training,
        split_items,
    )
    from napari_fmbff.training.metrics import Counts, confusion

    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    data = Path(spec["data"])
    starter = load_model("starter")
    norm = default_normalization(starter)
    row = spec["row"]
    if row in ("base", "starter"):
        net = starter
    elif row == "random":
        torch.manual_seed(0)
        net = FMBFFNet(starter.config)
    else:
        net = lite0_unet(0)
    out = {"train_s": 0.0, "cpu_s": 0.0, "epochs": 0, "s_per_epoch": float("nan")}
    if row != "base":
        images, masks = slice_set(spec["train"], data)
        n = min(spec["n"], len(images))
        if spec.get("crop"):
            images, masks = crop_to(images[:n], masks[:n], spec["crop"])
        items = make_items(images[:n], masks[:n], norm)
        cfg = finetune_config(device=spec["device"], **spec.get("overrides", {}))
        train, val = split_items(items, cfg.val_fraction, cfg.seed)
        wall, cpu = time.perf_counter(), time.process_time()
        result = run_training(net, train, val, cfg, norm)
        out.update(train_s=time.perf_counter() - wall, cpu_s=time.process_time() - cpu,
                   epochs=result.epochs_run, n_train=len(train), n_val=len(val),
                   fit_before=result.fit_before, fit_after=result.fit_after,
                   best_epoch=result.best_epoch)
        out["s_per_epoch"] = out["train_s"] / max(result.epochs_run, 1)
        net = result.net
    out["peak_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if spec.get("test"):
        images, masks = slice_set(spec["test"], data)
        for key, tta in (("dice", spec.get("tta", False)), ("dice_tta", True)):
            if key == "dice_tta" and not spec.get("tta_too"):
                continue
            seg = Segmenter(net, device=spec["device"], tile_size=512, normalization=norm,
                            tta=tta)
            counts = [confusion(seg.predict_proba(img) >= 0.5, m)
                      for img, m in zip(images, masks)]
            out[key] = sum(counts, Counts()).scores()["dice"]
    return out


def crop_to(images, masks, size: int):
    """Crops of ``size`` px around the volume's lesion centre (the speed check's ~200 px)."""
    ys, xs = np.nonzero(np.any(np.stack(masks), axis=0))
    cy, cx = int(ys.mean()), int(xs.mean())
    h, w = masks[0].shape
    y0 = int(np.clip(cy - size // 2, 0, h - size))
    x0 = int(np.clip(cx - size // 2, 0, w - size))
    return ([im[y0:y0 + size, x0:x0 + size] for im in images],
            [m[y0:y0 + size, x0:x0 + size] for m in masks])


def in_process(spec: dict) -> dict:
    """``run_one`` in a fresh Python process (its own peak memory)."""
    if spec.get("same_process"):
        return run_one(spec)
    proc = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)],
                          capture_output=True, text=True, check=False)
    if proc.returncode:
        raise SystemExit(f"run {spec} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---- tables ----------------------------------------------------------------------------------

def parse_overrides(pairs) -> dict:
    out = {}
    for pair in pairs or []:
        key, _, value = pair.partition("=")
        try:
            out[key] = json.loads(value)
        except ValueError:
            out[key] = value
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--quick", action="store_true",
                   help="a short check: lung only, N = 1 and 10, 3 epochs")
    p.add_argument("--rows", default="base,starter,random,smp",
                   help="comma list of base, starter, random, smp")
    p.add_argument("--n", default="1,3,10,all", help="corrected slices (comma list; 'all')")
    p.add_argument("--tasks", default="lung,brain", help="comma list of lung, brain")
    p.add_argument("--folds", choices=["both", "first"], default="both",
                   help="both directions of each task, or only the first (lung2->lung1, ...)")
    p.add_argument("--set", action="append", metavar="FIELD=VALUE",
                   help="override a FINETUNE_DEFAULTS field (JSON value), e.g. --set lr=1e-3")
    p.add_argument("--tta", action="store_true", help="flip test-time augmentation when scoring")
    p.add_argument("--device", default="cpu")
    p.add_argument("--cache", default=None, help="data cache (FMBFF_BENCH_CACHE)")
    p.add_argument("--speed", action="store_true",
                   help="time the default recipe on 20 CT slices cropped to ~200 px")
    p.add_argument("--repeats", type=int, default=3, help="--speed: runs to take min / median of")
    p.add_argument("--json", default=None, help="also write every run's numbers here")
    p.add_argument("--same-process", action="store_true",
                   help="run everything in this process (faster; memory no longer per run)")
    p.add_argument("--tta-too", action="store_true", help="also score with flip TTA")
    p.add_argument("--threads", type=int, default=0,
                   help="torch threads per run (0: torch's default; 1 is robust on a busy CPU)")
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps(run_one(json.loads(args.worker))))
        return 0

    data = fetch(cache_dir(args.cache))
    overrides = parse_overrides(args.set)
    if args.quick:
        overrides.setdefault("epochs", 3)
    from napari_fmbff.training.loop import finetune_config

    recipe = {k: v for k, v in vars(finetune_config(**overrides)).items()
              if k not in ("device", "seed", "amp", "num_workers")}
    print(f"# few-shot fine-tuning | device {args.device} | recipe {recipe}"
          + (" | TTA" if args.tta else ""))
    runs = []
    if args.speed:
        spec = dict(row="starter", train="lung2", n=20, crop=200, data=str(data),
                    device=args.device, overrides=overrides, threads=args.threads)
        for _ in range(args.repeats):
            runs.append(in_process(spec))
        secs = [r["train_s"] for r in runs]
        mem = [r["peak_mb"] for r in runs]
        print("\n20 lung CT slices (lung2: 11 with lesion, 9 without) cropped to 200 x 200 px, "
              f"starter + finetune_config(), torch threads {args.threads or 'default'}\n")
        print("| runs | train s min | train s median | s / epoch (median) | CPU s (median) "
              "| epochs | peak RSS MB min | peak RSS MB median |")
        print("|---:|---:|---:|---:|---:|---:|---:|---:|")
        print(f"| {len(runs)} | {min(secs):.1f} | {statistics.median(secs):.1f} | "
              f"{statistics.median(r['s_per_epoch'] for r in runs):.2f} | "
              f"{statistics.median(r['cpu_s'] for r in runs):.0f} | {runs[0]['epochs']} | "
              f"{min(mem):.0f} | {statistics.median(mem):.0f} |")
        return _dump(args.json, runs)

    tasks = args.tasks.split(",")
    folds = [f for t in tasks for f in (TASKS[t][:1] if args.folds == "first" or args.quick
                                        else TASKS[t])]
    n_values = ["1", "10"] if args.quick and args.n == "1,3,10,all" else args.n.split(",")
    rows = args.rows.split(",")
    test_volumes = [test for _, test in folds]
    table = {}
    for row in rows:
        for n_text in (["0"] if row == "base" else n_values):
            for train_vol, test_vol in folds:
                pool = len(slice_set(train_vol, data)[0])
                n = pool if n_text == "all" else int(n_text)
                if n > pool and n_text != "all":
                    continue  # this volume has fewer slices: "all" covers it
                spec = dict(row=row, train=train_vol, test=test_vol, n=n, data=str(data),
                            device=args.device, overrides=overrides, tta=args.tta,
                            tta_too=args.tta_too, same_process=args.same_process,
                            threads=args.threads)
                started = time.time()
                res = in_process(spec)
                res.update(row=row, n_text=n_text, n=n, train=train_vol, test=test_vol)
                runs.append(res)
                table.setdefault((row, n_text), {})[test_vol] = res
                print(f"  {row:8s} N={n:<3d} {train_vol}->{test_vol}: Dice {res['dice']:.3f} "
                      f"train {res['train_s']:.0f} s, peak {res['peak_mb']:.0f} MB "
                      f"({time.time() - started:.0f} s in all)", file=sys.stderr, flush=True)
    print("\nDice at 0.5 pooled over each held-out volume's slices (lesion + lesion-free); "
          "'mean' averages the volumes. N = corrected slices of the *other* volume of the task "
          "(N = all: every slice of its set). Seconds and memory: the median run of the row.\n")
    print("| model | N | " + " | ".join(test_volumes) + " | mean | train s | s / epoch "
          "| epochs | peak RSS MB |")
    print("|---|---|" + "---:|" * (len(test_volumes) + 5))
    for (row, n_text), by_vol in table.items():
        cells = [f"{by_vol[v]['dice']:.3f}" if v in by_vol else "–" for v in test_volumes]
        res = list(by_vol.values())
        mean = statistics.mean(r["dice"] for r in res)
        if args.tta_too:
            tta = statistics.mean(r["dice_tta"] for r in res)
            cells[-1] += f" (TTA mean {tta:.3f})"
        med = {key: statistics.median(r[key] for r in res)
               for key in ("s_per_epoch", "train_s", "epochs", "peak_mb")}
        spe = "–" if np.isnan(med["s_per_epoch"]) else f"{med['s_per_epoch']:.2f}"
        print(f"| {ROW_NAMES[row]} | {n_text} | " + " | ".join(cells)
              + f" | **{mean:.3f}** | {med['train_s']:.0f} | {spe} | {med['epochs']:.0f} | "
              f"{med['peak_mb']:.0f} |")
    return _dump(args.json, runs)


def _dump(path, runs) -> int:
    if path:
        Path(path).write_text(json.dumps(runs, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
