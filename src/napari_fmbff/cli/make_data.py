"""``fmbff make-data``: a seeded procedural data set of lesion images and exact masks."""

from __future__ import annotations

import sys
from pathlib import Path

from .._files import check_folders
from ._common import CliError, _positive_int


def add_parser(sub) -> None:
    make = sub.add_parser("make-data", help="write a procedural data set (Kvasir-SEG layout; all = the starter's three looks)",
                          description="Generate seeded synthetic lesion images with exact masks.")
    make.add_argument("--look", choices=["endoscopy", "dermoscopy", "ultrasound", "ct", "all"],
                      default="endoscopy")
    make.add_argument("-n", type=_positive_int, default=100, help="images per look")
    make.add_argument("--size", default="256-512",
                      help="edge in px, or a range MIN-MAX drawn per image (256-512)")
    make.add_argument("--seed", type=int, default=0, help="first seed")
    make.add_argument("--out", "-o", required=True, help="output folder (images/, masks/)")
    make.add_argument("--workers", type=_positive_int, default=1, help="processes (1)")


def cmd_make_data(args) -> int:
    import numpy as np

    from ..data.synthetic import LOOKS

    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise CliError(f"--out {out} is a file, not a folder; choose a new folder")
    check_folders(out / "images")
    if (out / "images").exists() and any((out / "images").iterdir()):
        raise CliError(f"{out}/images is not empty; choose a new folder")
    try:
        lo, hi = (int(v) for v in args.size.split("-")) if "-" in args.size else (int(args.size),) * 2
    except ValueError:
        raise CliError(f"--size must be N or MIN-MAX, got {args.size!r}") from None
    if lo > hi:
        raise CliError(f"--size {args.size}: MIN is larger than MAX; give MIN-MAX, e.g. {hi}-{lo}")
    if lo < 64:
        raise CliError(f"--size {args.size}: images need at least 64 px a side")
    looks = LOOKS if args.look == "all" else (args.look,)
    jobs = []
    for look in looks:
        for k in range(args.n):
            seed = args.seed + k
            size = int(np.random.default_rng([seed, 7]).integers(lo, hi + 1)) // 32 * 32 or lo
            jobs.append((out, look, size, seed))
    if args.workers > 1:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(args.workers) as pool:
            list(pool.map(_write_sample, jobs, chunksize=8))
    else:
        for job in jobs:
            _write_sample(job)
    print(f"fmbff make-data: wrote {len(jobs)} pairs to {out}", file=sys.stderr)
    return 0


def _write_sample(job) -> None:
    from ..data.datasets import write_dataset
    from ..data.synthetic import make_sample

    out, look, size, seed = job
    write_dataset(out, [make_sample(look, size=size, seed=seed)], [f"{look}_{seed:05d}"])

