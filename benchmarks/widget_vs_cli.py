"""Propagate in the Fine-tune dock against ``fmbff propagate`` on the same volume, side by side.

    python benchmarks/widget_vs_cli.py                      # procedural 16 x 256 x 256, 5 epochs
    python benchmarks/widget_vs_cli.py --pairs 3 --epochs 20
    python benchmarks/widget_vs_cli.py --volume scan.tif --labels partial.tif

Each run is its own process, and the two sides alternate (cli, widget, cli, widget, ...), so a
machine that gets busier or quieter during the benchmark weighs on both alike. The CLI side is
``fmbff propagate`` (``napari_fmbff.cli.main``) timed inside its process, after the imports.
The widget side opens a napari window (it needs a display), docks Fine-tune from the Plugins
menu, chooses the partial labels layer and presses "Propagate through the volume"; timed from
the press to the result written into the layer (torch imported before, on both sides). Both start from ``starter`` (or ``--model``)
with the same recipe (``finetune_config`` with ``--epochs``), no corrections store, and the
slices of ``--labels`` that hold labels (by default one: the middle slice, the lesion's).

Columns: wall s (the whole propagation: fine-tune + segment the other slices), train s and
median s per epoch (the trainer's own clock, from the model's training log), torch threads in
the thread that trained, and the CPU seconds napari's main thread spent meanwhile (widget). The last line is the widget / CLI ratio of the medians.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def procedural_volume(n: int = 16, size: int = 256, seed: int = 0):
    """(volume, partial labels): a bright ellipsoid in noise; the middle slice labelled."""
    rng = np.random.default_rng(seed)
    z, y, x = np.mgrid[:n, :size, :size]
    c = (n - 1) / 2
    lesion = ((z - c) / (n / 3)) ** 2 + ((y - size / 2) / (size / 6)) ** 2 + \
             ((x - size / 2) / (size / 5)) ** 2 < 1
    volume = (60 + 25 * rng.standard_normal((n, size, size)) + 120 * lesion).clip(0, 255)
    labels = np.zeros(volume.shape, np.uint8)
    labels[n // 2] = lesion[n // 2]
    return volume.astype(np.uint8), labels


# ---- the two sides (each in its own process) --------------------------------------------------

def run_cli(args, out: Path) -> dict:
    from napari_fmbff.cli import main

    import_engine_like_the_widget()
    start = time.perf_counter()
    code = main(["propagate", str(args.volume), "--labels", str(args.labels), "--out",
                 str(out), "--model", args.model, "--epochs", str(args.epochs),
                 "--device", "cpu"])
    wall = time.perf_counter() - start
    if code:
        raise SystemExit(f"fmbff propagate exited {code}")
    return {"wall_s": wall, "log": str(next(out.glob("*.log.csv")))}


def run_widget(args, out: Path) -> dict:
    import napari
    import tifffile
    from qtpy.QtCore import QEventLoop

    from napari_fmbff._widgets._common import IMAGE_TAG, OUTPUT_TAG, import_engine

    viewer = napari.Viewer()
    import_engine()  # what the first press does before it starts the worker: not timed
    volume, partial = tifffile.imread(args.volume), tifffile.imread(args.labels)
    viewer.add_image(volume, name="scan")
    viewer.add_labels(np.zeros(volume.shape, np.int32), name="scan fmbff",
                      metadata={OUTPUT_TAG: "labels", IMAGE_TAG: "scan"})
    viewer.add_labels(partial.astype(np.int32), name="partial")
    _dock, tune = viewer.window.add_plugin_dock_widget("napari-fmbff", "Fine-tune")
    tune.image.value = viewer.layers["scan"]
    tune.labels_layer.value = viewer.layers["partial"]
    tune.model.value = args.model
    tune.epochs.value = args.epochs
    tune.device.value = "cpu"
    tune.store.use_store.value = False
    tune.propagate_encoder.value = "model"  # the fine-tune the CLI runs with --model named
    tune.new_name.value = "bench"
    loop = QEventLoop()
    start, main_cpu = time.perf_counter(), time.thread_time()
    tune.propagate_button.native.click()  # the user's press; the worker starts at once
    if tune._worker is None:
        raise SystemExit("Propagate did not start: " + tune.status.value)
    tune._worker.finished.connect(loop.quit)
    loop.exec_()
    wall, main_cpu = time.perf_counter() - start, time.thread_time() - main_cpu
    outcome = getattr(getattr(tune, "last_propagation", None), "outcome", None)
    if outcome is None or not outcome.saved:
        raise SystemExit("Propagate saved no model: " + tune.status.value)
    from napari_fmbff.model.registry import companions

    result = {"wall_s": wall, "main_cpu_s": main_cpu, "log": str(companions(outcome.path)[0])}
    viewer.close()
    return result


def import_engine_like_the_widget() -> None:
    from napari_fmbff.inference import segmenter  # noqa: F401
    from napari_fmbff.model import checkpoint, network  # noqa: F401


def side_main(args) -> int:
    out = Path(tempfile.mkdtemp(prefix=f"fmbff-{args.side}-"))
    os.environ["FMBFF_MODELS_DIR"] = str(out / "models")
    threads = []
    _record_training_threads(threads)
    result = (run_cli if args.side == "cli" else run_widget)(args, out)
    with open(result.pop("log"), newline="") as f:
        seconds = [float(row["seconds"]) for row in csv.DictReader(f)]
    epochs = np.diff([0.0, *seconds])
    print(json.dumps({**result, "train_s": seconds[-1], "epoch_s": epochs.tolist(),
                      "threads": threads[0] if threads else None}))
    return 0


def _record_training_threads(into: list) -> None:
    """Note torch's thread count where the trainer chooses it (in the thread that trains)."""
    from napari_fmbff.inference import runtime

    original = runtime.fit_cpu_threads

    def fit():
        import torch

        chosen = original()
        into.append(torch.get_num_threads())
        return chosen

    runtime.fit_cpu_threads = fit


# ---- the driver ---------------------------------------------------------------------------------

def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--volume", type=Path, default=None, help="TIFF stack (default: procedural)")
    p.add_argument("--labels", type=Path, default=None, help="TIFF partial labels, same shape")
    p.add_argument("--model", default="starter")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--pairs", type=int, default=2, help="cli + widget runs, alternating")
    p.add_argument("--side", choices=("cli", "widget"), default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.side:
        return side_main(args)
    if args.volume is None:
        import tifffile

        folder = Path(tempfile.mkdtemp(prefix="fmbff-bench-"))
        volume, labels = procedural_volume()
        args.volume, args.labels = folder / "scan.tif", folder / "partial.tif"
        tifffile.imwrite(args.volume, volume)
        tifffile.imwrite(args.labels, labels)
    shape = tuple(__import__("tifffile").imread(args.volume).shape)
    rows = []
    for pair in range(args.pairs):
        for side in ("cli", "widget"):
            cmd = [sys.executable, __file__, "--side", side, "--volume", str(args.volume),
                   "--labels", str(args.labels), "--model", args.model,
                   "--epochs", str(args.epochs)]
            done = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if done.returncode:
                raise SystemExit(f"{side} failed:\n{done.stderr[-3000:]}")
            row = json.loads(done.stdout.strip().splitlines()[-1])
            rows.append({"side": side, "pair": pair + 1, **row})
            print(f"[{time.strftime('%H:%M:%S')}] {side} {pair + 1}: {row['wall_s']:.1f} s",
                  file=sys.stderr, flush=True)
    print_table(rows, args, shape)
    return 0


def print_table(rows, args, shape) -> None:
    print(f"\n### Propagate: widget vs `fmbff propagate` (CPU, {os.cpu_count()} cores; volume "
          f"{shape}; {args.epochs} epochs from {args.model})\n")
    print("| side | run | wall s | train s | s / epoch (median) | torch threads | "
          "main thread CPU s |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        main = f"{r['main_cpu_s']:.1f}" if "main_cpu_s" in r else "–"
        print(f"| {r['side']} | {r['pair']} | {r['wall_s']:.1f} | {r['train_s']:.1f} | "
              f"{statistics.median(r['epoch_s']):.2f} | {r['threads']} | {main} |")
    med = {side: statistics.median(r["wall_s"] for r in rows if r["side"] == side)
           for side in ("cli", "widget")}
    per_epoch = {side: statistics.median(e for r in rows if r["side"] == side
                                         for e in r["epoch_s"]) for side in ("cli", "widget")}
    print(f"\nwidget / CLI: wall {med['widget'] / med['cli']:.2f}x, "
          f"per epoch {per_epoch['widget'] / per_epoch['cli']:.2f}x")


if __name__ == "__main__":
    sys.exit(main())
