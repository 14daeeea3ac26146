"""A folder of small images (what most `fmbff segment` runs are): one by one vs pipelined.

    python benchmarks/folder.py [--device cuda] [-n 40] [--size 576]

"one by one": read, segment, write, next (the CLI before file I/O was threaded);
"pipelined": `batch.iter_segment_files`, decoding the next images and encoding the last
results in threads while the network runs. Prints images/s of each, same process.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def main(argv=None) -> int:
    from napari_fmbff import Segmenter
    from napari_fmbff.data.image_io import write_image
    from napari_fmbff.data.synthetic import make_sample
    from napari_fmbff.inference.postprocess import Postprocess
    from napari_fmbff.jobs.files import (
        FileJob,
        iter_segment_files,
        segment_file,
    )

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="auto")
    p.add_argument("-n", type=int, default=40)
    p.add_argument("--size", type=int, default=576, help="edge of each image (576)")
    p.add_argument("--model", default="starter")
    args = p.parse_args(argv)
    h = w = args.size
    seg = Segmenter(args.model, device=args.device)
    post = Postprocess()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        sources = []
        for k in range(args.n):
            image, _ = make_sample("endoscopy", size=h, seed=k)
            sources.append(write_image(tmp / "in" / f"img{k:04d}.png", image))
        seg.predict_proba(np.zeros((h, w, 3), np.uint8))  # warm-up
        rates = {}
        for mode in ("one by one", "pipelined", "one by one", "pipelined"):
            out = tmp / f"out-{len(rates)}-{mode.replace(' ', '')}"
            jobs = [FileJob.plan(s, out, post, False) for s in sources]
            start = time.perf_counter()
            if mode == "pipelined":
                for _ in iter_segment_files(seg, jobs, post):
                    pass
            else:
                for job in jobs:
                    segment_file(seg, job, post)
            rates.setdefault(mode, []).append(args.n / (time.perf_counter() - start))
    print(f"# folder of {args.n} RGB PNGs {h}x{w} | {seg.device_label} | model {args.model} | "
          f"{time.strftime('%Y-%m-%d')}\n")
    print("| mode | images/s (two runs, alternating) |")
    print("|---|---|")
    for mode, r in rates.items():
        print(f"| {mode} | {' / '.join(f'{v:.2f}' for v in r)} |")
    print(f"SUMMARY | folder of {args.n} {h}^2 PNGs, images/s one by one -> pipelined "
          f"| {max(rates['one by one']):.1f} -> {max(rates['pipelined']):.1f} |  |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
