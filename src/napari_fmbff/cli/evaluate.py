"""``fmbff evaluate``: Dice, Jaccard, precision, recall and accuracy of a model on a data
folder (one row per image, or per volume), as a table and optionally a CSV file."""

from __future__ import annotations

import sys
from pathlib import Path

from .._files import refuse_existing
from ..inference.postprocess import DEFAULT_THRESHOLD
from ..inference.runtime import DEVICES
from ._common import (
    ROI_HELP,
    CliError,
    _add_intensity_args,
    _add_model_arg,
    _check_intensity,
    _load,
    _positive_int,
    _probability,
)


def add_parser(sub) -> None:
    ev = sub.add_parser("evaluate", help="Dice, Jaccard, precision, recall, accuracy on a folder",
                        description="Evaluate a model on a data folder (same layouts as train). "
                                    "Volumes: one row per volume, its metrics over every "
                                    "slice (3D Dice).")
    ev.add_argument("data", help="data folder")
    _add_model_arg(ev)
    ev.add_argument("--csv", default=None, help="also write the per-image table here")
    ev.add_argument("--overwrite", action="store_true", help="replace an existing --csv file")
    ev.add_argument("--threshold", type=_probability, default=DEFAULT_THRESHOLD)
    ev.add_argument("--tile-size", type=_positive_int, default=None)
    ev.add_argument("--roi", action="append", default=None, metavar="NAME", help=ROI_HELP)
    ev.add_argument("--device", default="auto", choices=DEVICES)
    _add_intensity_args(ev)


def cmd_evaluate(args) -> int:
    from ..data.datasets import find_pairs, iter_volume_pairs, load_pairs
    from ..inference.intensity import intensity_setting
    from ..inference.segmenter import Segmenter
    from ..jobs.files import as_2d
    from ..model.normalization import default_normalization
    from ..training.evaluation import evaluate, evaluate_volumes, format_table

    _check_intensity(args)
    if args.csv:  # before the evaluation, not after it
        if Path(args.csv).is_dir():
            raise CliError(f"--csv {args.csv} is a folder; give a file name ending in .csv")
        refuse_existing(args.csv, args.overwrite)
    found = find_pairs(args.data, roi=args.roi)
    print(f"fmbff evaluate: {found.describe()}", file=sys.stderr)
    model = _load(args.model)
    setting = intensity_setting(default_normalization(model), args.window, args.normalize)
    if found.is_volumes:
        from tqdm import tqdm

        with tqdm(total=len(found.pairs), desc="volumes", unit="volume") as bar:
            def progress(name, slices):
                bar.set_postfix_str(f"{name} slice {slices.done}/{slices.total}")
                if slices.done == slices.total:
                    bar.update(1)

            rows, summary = evaluate_volumes(model, setting, iter_volume_pairs(found),
                                             args.threshold, progress, device=args.device,
                                             tile_size=args.tile_size)
    else:
        images, masks, names = load_pairs(found)
        seg = Segmenter(model, device=args.device, tile_size=args.tile_size,
                        normalization=setting)
        rows, summary = evaluate(seg, [as_2d(i, n) for i, n in zip(images, names)],
                                 masks, names, args.threshold)
    print(format_table(rows, summary))
    if args.csv:
        from ..training.reports import write_csv

        write_csv(rows, args.csv, args.overwrite)
    return 0

