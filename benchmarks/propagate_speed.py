"""How long `fmbff propagate` takes on 30 slices of 512 x 512 px (issue 30's speed goal: at most
60 s wall on a 2-core CPU), end to end as a user runs it: reading the NIfTI files, the
fine-tune, segmenting the other slices, writing the labels and the model.

    pip install -e ".[bench]"
    python benchmarks/propagate_speed.py                       # the shipped defaults, 2 runs
    python benchmarks/propagate_speed.py --runs 1 --threads 2 --float32-too "--extra=--encoder model"
    python benchmarks/propagate_speed.py --runs 3 --threads 1,2 --epochs 20,10  # --encoder model

The volume: 30 axial slices of the pyradiomics lung CT `lung2` (512 x 512, its tumour on 11 of
them; the cache of benchmarks/few_shot.py, never committed), written as NIfTI; the partial
labels: the tumour's largest slice (its ground truth), as one box accepted would give. Each
setting runs `fmbff propagate` in a fresh process (`FMBFF_THREADS` for the torch threads);
wall and CPU seconds of the whole process (its children's rusage), median over the runs, and
the 3D Dice of the other slices against the ground truth.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
import few_shot  # noqa: E402
import interactive  # noqa: E402


def make_inputs(folder: Path, cache: Path, n: int = 30):
    """(volume.nii.gz, partial.nii.gz, truth (Z, Y, X), labelled slice) of ``n`` lung2 slices
    centred on its tumour."""
    import nibabel as nib

    image, mask = interactive.load_volume("lung2", cache)
    held = np.flatnonzero(mask.any(axis=(1, 2)))
    start = max(0, min(int(held.mean()) - n // 2, len(image) - n))
    image, mask = image[start:start + n], mask[start:start + n]
    top = int(np.argmax(mask.sum(axis=(1, 2))))
    partial = np.zeros(mask.shape, np.uint8)
    partial[top] = mask[top]
    affine = np.eye(4)
    # NIfTI keeps (X, Y, Z): our (Z, Y, X) slices transposed; fmbff reads them back as slices.
    nib.save(nib.Nifti1Image(np.ascontiguousarray(image.transpose(2, 1, 0)).astype(np.int16),
                             affine), folder / "volume.nii.gz")
    nib.save(nib.Nifti1Image(np.ascontiguousarray(partial.transpose(2, 1, 0)), affine),
             folder / "partial.nii.gz")
    return folder / "volume.nii.gz", folder / "partial.nii.gz", mask, top


#: ``fmbff propagate`` with LiteMedSAM's encoder in float32 (``CPU_BFLOAT16`` off): the before.
FLOAT32 = ("import sys; from napari_fmbff.model import litemedsam_weights; "
           "litemedsam_weights.CPU_BFLOAT16 = False; from napari_fmbff.cli import main; "
           "sys.exit(main(sys.argv[1:]))")
#: The same with only the new layers' training in float32 (``medical.TRAIN_BFLOAT16`` off).
LAYERS_FLOAT32 = ("import sys; from napari_fmbff.training import medical; "
                  "medical.TRAIN_BFLOAT16 = False; from napari_fmbff.cli import main; "
                  "sys.exit(main(sys.argv[1:]))")


def one_run(volume, partial, out: Path, threads: int, extra, float32="") -> dict:
    env = {**os.environ, "FMBFF_THREADS": str(threads)}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    cli = {"float32": ["-c", FLOAT32], "layers float32": ["-c", LAYERS_FLOAT32]}.get(
        float32, ["-m", "napari_fmbff.cli"])
    done = subprocess.run([sys.executable, *cli, "propagate", str(volume),
                           "--labels", str(partial), "--out", str(out), "--device", "cpu",
                           "--overwrite", *extra], capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode:
        raise SystemExit(f"fmbff propagate failed: {done.stderr.strip()[-400:]}")
    return {"wall_s": wall, "cpu_s": (after.ru_utime - before.ru_utime)
            + (after.ru_stime - before.ru_stime)}


def dice_of(out: Path, truth, top) -> float:
    import nibabel as nib

    labels = np.asarray(nib.load(str(out / "volume.nii.gz")).dataobj).transpose(2, 1, 0) > 0
    rest = [z for z in range(len(truth)) if z != top]
    pred, real = labels[rest], truth[rest] > 0
    return 2 * float((pred & real).sum()) / max(float(pred.sum() + real.sum()), 1.0)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=2)
    p.add_argument("--threads", default="2", help="comma-separated torch thread counts")
    p.add_argument("--epochs", default="", help="comma-separated; empty: the recipe's")
    p.add_argument("--extra", action="append", default=[],
                   help="a further setting: fmbff propagate flags in one string; repeatable")
    p.add_argument("--float32-too", action="store_true",
                   help="each setting also with LiteMedSAM's encoder in float32 (the box, the "
                        "redraw and --encoder litemedsam as they ran before bfloat16)")
    p.add_argument("--layers-float32-too", action="store_true",
                   help="each setting also with the new layers on LiteMedSAM's encoder "
                        "trained in float32 (medical.TRAIN_BFLOAT16 off)")
    p.add_argument("--cache", default=None)
    args = p.parse_args(argv)
    from napari_fmbff.model.litemedsam_weights import encoder_precision

    cache = few_shot.cache_dir(args.cache)
    settings = []
    for threads in (int(t) for t in args.threads.split(",")):
        for epochs in [e for e in args.epochs.split(",") if e] or [None]:
            for extra in [""] + args.extra:
                flags = (["--encoder", "model", "--epochs", epochs] if epochs  # a fine-tune's
                         else []) + extra.split()
                for float32 in ("", *(["float32"] if args.float32_too else []),
                                *(["layers float32"] if args.layers_float32_too else [])):
                    settings.append((threads, flags, float32))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        volume, partial, truth, top = make_inputs(Path(tmp), cache)
        for threads, flags, float32 in settings:
            runs = [one_run(volume, partial, Path(tmp) / "out", threads, flags, float32)
                    for _ in range(args.runs)]
            rows.append({"threads": threads, "flags": " ".join(flags) or "(defaults)",
                         "encoder": {"layers float32": "encoder bfloat16, layers float32"}.get(
                             float32, float32 or encoder_precision("cpu")),
                         "wall_s": statistics.median(r["wall_s"] for r in runs),
                         "walls": [round(r["wall_s"]) for r in runs],
                         "cpu_s": statistics.median(r["cpu_s"] for r in runs),
                         "dice": dice_of(Path(tmp) / "out", truth, top)})
            print(f"[{time.strftime('%H:%M:%S')}] {rows[-1]}", file=sys.stderr, flush=True)
    print(f"\n## fmbff propagate on 30 slices of 512 x 512 px (lung2, one labelled slice), "
          f"{os.cpu_count()} CPUs\n")
    print("| torch threads | flags | precision | wall s (median) | runs | CPU s | "
          "3D Dice, other slices |")
    print("|---:|---|---|---:|---|---:|---:|")
    for r in rows:
        print(f"| {r['threads']} | {r['flags']} | {r['encoder']} | **{r['wall_s']:.0f}** | "
              f"{', '.join(map(str, r['walls']))} | {r['cpu_s']:.0f} | {r['dice']:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
