"""Which intensity setting to fine-tune CT / MR with: measured on real volumes, end to end
through the command line (NIfTI in, the setting stored in the model, reused by evaluate).

    pip install -e ".[bench]"                       # pynrrd reads the pyradiomics volumes
    python benchmarks/intensity.py                  # lung CT both ways, brain MR both ways
    python benchmarks/intensity.py --tasks lung --epochs 20

Data: the CT and MR volumes with lesion labels of the pyradiomics 3.1.0 source distribution
(the cache of benchmarks/few_shot.py, fetched the first time; never committed), written once
as NIfTI in the nnU-Net layout (``<cache>/nifti/<volume>/imagesTr/<volume>_0000.nii.gz`` +
``labelsTr/<volume>.nii.gz``) with their NRRD geometry. Split by volume: each task is
``fmbff train <volume A> --init starter <setting>`` (the fine-tuning recipe; the training
slices are A's lesion slices plus as many lesion-free ones) and then ``fmbff evaluate
<volume B> -m <new model>`` with the model's stored setting, reporting B's 3D Dice. The first
column is the starter itself evaluated on B with the same setting (no fine-tuning).

Each run is its own process; prints a markdown table.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
import few_shot  # noqa: E402  (the pyradiomics cache and its checksum)

TASKS = {"lung": [("lung2", "lung1"), ("lung1", "lung2")],
         "brain": [("brain1", "brain2"), ("brain2", "brain1")]}
SETTINGS = {
    "lung": {"model default (each slice's percentiles)": [],
             "--window soft-tissue": ["--window", "soft-tissue"],
             "--normalize volume": ["--normalize", "volume"],
             "--window lung": ["--window", "lung"]},
    "brain": {"model default (each slice's percentiles)": [],
              "--normalize volume": ["--normalize", "volume"]},
}


def nifti_volume(name: str, data: Path, root: Path) -> Path:
    """One pyradiomics volume as a one-case nnU-Net folder (written once)."""
    folder = root / name
    image_path = folder / "imagesTr" / f"{name}_0000.nii.gz"
    label_path = folder / "labelsTr" / f"{name}.nii.gz"
    if image_path.exists() and label_path.exists():
        return folder
    import nibabel as nib
    import nrrd

    image, header = nrrd.read(str(data / f"{name}_image.nrrd"))
    label, _ = nrrd.read(str(data / f"{name}_label.nrrd"))
    affine = np.eye(4)
    affine[:3, :3] = np.asarray(header["space directions"], float).T
    affine[:3, 3] = np.asarray(header["space origin"], float)
    affine = np.diag([-1, -1, 1, 1]) @ affine  # NRRD's LPS -> NIfTI's RAS
    for path, array, dtype in ((image_path, image, np.int16 if image.min() < 0 else np.uint16),
                               (label_path, label > 0, np.uint8)):
        path.parent.mkdir(parents=True, exist_ok=True)
        nib.save(nib.Nifti1Image(np.asarray(array).astype(dtype), affine), str(path))
    return folder


def fmbff(*args: str) -> tuple[str, float]:
    start = time.time()
    out = subprocess.run([sys.executable, "-m", "napari_fmbff.cli", *args], capture_output=True,
                         text=True, check=False)
    if out.returncode not in (0, 1):  # 1: training did not change the model
        raise SystemExit(f"fmbff {' '.join(args)} failed:\n{out.stderr[-3000:]}")
    return out.stdout + out.stderr, time.time() - start


def pooled_dice(report: str) -> float:
    """The pooled Dice of ``fmbff evaluate``'s table (one volume: its 3D Dice)."""
    for line in report.splitlines():
        if line.startswith("pooled"):
            return float(line.split()[1])
    raise SystemExit(f"no pooled row in:\n{report[-2000:]}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cache", default=None)
    p.add_argument("--tasks", default="lung,brain")
    p.add_argument("--epochs", type=int, default=None, help="default: the fine-tuning recipe's")
    p.add_argument("--device", default="cpu")
    p.add_argument("--settings", type=int, default=None,
                   help="only the first N settings of each task (in the order listed)")
    args = p.parse_args(argv)
    cache = few_shot.cache_dir(args.cache)
    data = few_shot.fetch(cache)
    root = cache / "nifti"
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for task in args.tasks.split(","):
            for train, test in TASKS[task]:
                a, b = nifti_volume(train, data, root), nifti_volume(test, data, root)
                for label, flags in list(SETTINGS[task].items())[:args.settings]:
                    before, _ = fmbff("evaluate", str(b), "-m", "starter", "--device",
                                      args.device, *flags)
                    model = Path(tmp) / f"{train}-{len(rows)}.safetensors"
                    extra = ["--epochs", str(args.epochs)] if args.epochs else []
                    log, seconds = fmbff("train", str(a), "--init", "starter", "--out",
                                         str(model), "--device", args.device, *flags, *extra)
                    fit = re.search(r"Dice on your corrections [\d.]+ -> ([\d.]+)|"
                                    r"held-out Dice [\d.]+ -> ([\d.]+)", log)
                    after = (pooled_dice(fmbff("evaluate", str(b), "-m", str(model),
                                               "--device", args.device)[0])
                             if model.exists() else float("nan"))
                    rows.append((f"{train} -> {test}", label, pooled_dice(before),
                                 next((g for g in fit.groups() if g), "?") if fit else "?",
                                 after, seconds))
                    if len(rows) == 1:
                        print("| task (train -> held-out volume) | intensity | starter, 3D "
                              "Dice | fit to training slices | fine-tuned, 3D Dice | train s |")
                        print("|---|---|---|---|---|---|")
                    task_name, label, before, fit, after, seconds = rows[-1]
                    print(f"| {task_name} | {label} | {before:.3f} | {fit} | {after:.3f} | "
                          f"{seconds:.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
