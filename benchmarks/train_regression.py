"""The command-line fine-tune on real CT lesion slices, as a user runs it: the row that shows a
training regression.

    pip install -e ".[bench]"                       # pynrrd reads the pyradiomics volumes
    python benchmarks/train_regression.py           # seed 0, 30 epochs, one CPU thread
    python benchmarks/train_regression.py --seeds 0,1,2 --threads 1,2
    PYTHONPATH=/path/to/old/checkout/src python benchmarks/train_regression.py   # an old commit

Data: the two lung CT volumes of the pyradiomics 3.1.0 source distribution (lung1, lung2;
``few_shot.fetch`` puts them in the cache outside the repository, never committed). Their
lesion slices, taken alternately along each volume, make two images/ + masks/ folders of TIFF
slices in Hounsfield units (written in the cache): the even ones are trained on, the odd ones
scored. (pyradiomics has two CT patients only, so the split is by slice, not by patient: a
model that reproduces no lesion of a patient it has seen shows here as well as one that misses
a new patient, and the numbers are far from 0, so a drop shows.)

Rows, each command in its own process, exactly as a user types it:

    fmbff train TRAIN --init starter --epochs 30 --seed S          # fine-tuned
    fmbff train TRAIN --config configs/starter.json --epochs 30 --seed S   # from random weights
    fmbff evaluate TEST --model MODEL                              # pooled Dice of the test slices

Threads: ``FMBFF_THREADS`` is fixed per run (default 1). On one thread a run repeats bit for
bit; another thread count sums in another order and the chaotic few-shot fine-tune ends
elsewhere (docs/models.md, "The fine-tune regression that was not"). Compare rows of the
same thread count only. ``REFERENCE`` holds the numbers this script printed when it was
written; a row more than ``--tolerance`` below it is marked and the exit status is 1.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import few_shot  # noqa: E402  (the pyradiomics cache and its checksum)

REPO = Path(__file__).resolve().parents[1]
CT_VOLUMES = ("lung1", "lung2")
#: (row, seed, threads) -> pooled Dice on the test slices, 30 epochs, as measured on
#: 2026-12-07 (torch 2.14.1 CPU, 2-core machine; docs/models.md).
REFERENCE: dict = {
    ("fine-tuned", 0, 1): 0.747, ("fine-tuned", 0, 2): 0.800,
    ("fine-tuned", 1, 1): 0.818, ("fine-tuned", 2, 1): 0.651,
    ("from random", 0, 1): 0.000, ("from random", 1, 1): 0.000,  # seed 1: nothing saved
}
ROWS = {
    "fine-tuned": ["--init", "starter"],
    "from random": ["--config", str(REPO / "configs" / "starter.json")],
}


def lesion_folders(cache: Path) -> tuple[Path, Path]:
    """(train, test) images/ + masks/ folders of the CT lesion slices, written once."""
    import tifffile

    root = cache / "train_regression"
    train, test = root / "train", root / "test"
    if (test / "masks").is_dir() and any((test / "masks").iterdir()):
        return train, test
    data = few_shot.fetch(cache)
    if data == cache:  # few_shot's slice cache alone: the volumes still come from the sdist
        data = cache / "pyradiomics-3.1.0" / "data"
    import nrrd

    for folder in (train, test):
        for sub in ("images", "masks"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
    for name in CT_VOLUMES:
        image, _ = nrrd.read(str(data / f"{name}_image.nrrd"))
        label, _ = nrrd.read(str(data / f"{name}_label.nrrd"))
        for k, z in enumerate(np.flatnonzero((label > 0).any(axis=(0, 1)))):
            folder = train if k % 2 == 0 else test
            stem = f"{name}_{z:03d}.tif"
            tifffile.imwrite(folder / "images" / stem, np.ascontiguousarray(image[:, :, z].T))
            tifffile.imwrite(folder / "masks" / stem,
                             (np.ascontiguousarray(label[:, :, z].T) > 0).astype(np.uint8) * 255)
    return train, test


def fmbff(args: list[str], threads: int, saved_nothing_ok: bool = False) -> str | None:
    """``fmbff ARGS`` in its own process on ``threads`` CPU threads; its stderr + stdout.
    None where ``fmbff train`` saved nothing (exit 1: no epoch beat the start) and that is
    ``saved_nothing_ok``."""
    env = {**os.environ, "FMBFF_THREADS": str(threads), "OMP_NUM_THREADS": str(threads),
           "MKL_NUM_THREADS": str(threads)}
    proc = subprocess.run([sys.executable, "-m", "napari_fmbff.cli", *args], env=env,
                          capture_output=True, text=True, check=False)
    if proc.returncode == 1 and saved_nothing_ok:
        return None
    if proc.returncode:
        raise SystemExit(f"fmbff {' '.join(args)} failed ({proc.returncode}):\n"
                         f"{proc.stderr[-2000:]}")
    return proc.stderr + proc.stdout


def pooled_dice(report: str) -> float:
    """The pooled Dice of an ``fmbff evaluate`` table."""
    found = re.search(r"^pooled\s+([0-9.]+)", report, re.MULTILINE)
    if not found:
        raise SystemExit(f"no pooled Dice in:\n{report[-1000:]}")
    return float(found.group(1))


def run_row(row: str, seed: int, threads: int, epochs: int, folders, out: Path) -> dict:
    train, test = folders
    model = out / f"{row.replace(' ', '_')}_s{seed}_t{threads}.safetensors"
    started = time.perf_counter()
    saved = fmbff(["train", str(train), *ROWS[row], "--epochs", str(epochs), "--seed",
                   str(seed), "--device", "cpu", "-o", str(model), "--overwrite"], threads,
                  saved_nothing_ok=True)
    seconds = time.perf_counter() - started
    dice = None if saved is None else pooled_dice(  # None: no epoch learned, nothing saved
        fmbff(["evaluate", str(test), "--model", str(model), "--device", "cpu"], threads))
    return {"row": row, "seed": seed, "threads": threads, "dice": dice, "train_s": seconds}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", default=",".join(ROWS), help="comma list of: " + ", ".join(ROWS))
    p.add_argument("--seeds", default="0", help="comma list of seeds")
    p.add_argument("--threads", default="1", help="comma list of CPU thread counts")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--tolerance", type=float, default=0.05,
                   help="a row this far below its reference is a regression (exit 1)")
    p.add_argument("--cache", default=None, help="data cache (FMBFF_BENCH_CACHE)")
    args = p.parse_args(argv)
    folders = lesion_folders(few_shot.cache_dir(args.cache))
    n_train = len(list((folders[0] / "images").iterdir()))
    n_test = len(list((folders[1] / "images").iterdir()))
    print(f"CT lesion slices of {', '.join(CT_VOLUMES)}: {n_train} trained on, {n_test} scored; "
          f"{args.epochs} epochs\n")
    print("| run | seed | CPU threads | pooled Dice, test slices | reference | train s |")
    print("|---|---:|---:|---:|---:|---:|")
    regressed, results = False, []
    with tempfile.TemporaryDirectory() as tmp:
        for row in args.rows.split(","):
            for seed in (int(s) for s in args.seeds.split(",")):
                for threads in (int(t) for t in args.threads.split(",")):
                    r = run_row(row, seed, threads, args.epochs, folders, Path(tmp))
                    results.append(r)
                    ref = REFERENCE.get((row, seed, threads)) if args.epochs == 30 else None
                    low = ref is not None and (r["dice"] or 0.0) < ref - args.tolerance
                    regressed |= low
                    dice = "nothing saved" if r["dice"] is None else f"{r['dice']:.3f}"
                    print(f"| {row} | {seed} | {threads} | {dice}"
                          f"{' **below the reference**' if low else ''} | "
                          f"{'-' if ref is None else f'{ref:.3f}'} | {r['train_s']:.0f} |",
                          flush=True)
    print_means(results)
    return 1 if regressed else 0


def print_means(results) -> None:
    """Mean Dice over the seeds of each run and thread count (one run says little)."""
    groups: dict = {}
    for r in results:
        groups.setdefault((r["row"], r["threads"]), []).append(r["dice"] or 0.0)
    for (row, threads), values in groups.items():
        if len(values) > 1:
            print(f"\n{row}, {threads} thread(s): mean {np.mean(values):.3f} over "
                  f"{len(values)} seeds (min {min(values):.3f}, max {max(values):.3f})")


if __name__ == "__main__":
    sys.exit(main())
