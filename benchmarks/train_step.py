"""One training step of `starter` on the CPU: the crop size and the memory layout.

    python benchmarks/train_step.py --threads 2

A step as the fine-tune takes it (Adam, BCE, a batch of 4 random crops), `starter` in train
mode; the median over 5 steps after one warm-up, per crop size, in the usual (NCHW) layout and
in channels-last (``training.trainer.CHANNELS_LAST``: what training uses on CPU and CUDA).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time


def step_seconds(channels_last: bool, crop: int, steps: int = 6) -> float:
    import torch

    from napari_fmbff import load_model

    torch.manual_seed(0)
    net = load_model("starter").train()
    x = torch.rand(4, 3, crop, crop)
    y = (torch.rand(4, 1, crop, crop) > 0.9).float()
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    opt, loss_fn, times = torch.optim.Adam(net.parameters(), 1e-3), torch.nn.BCEWithLogitsLoss(), []
    for _ in range(steps):
        start = time.perf_counter()
        loss = loss_fn(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def main(argv=None) -> int:
    import torch

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--crops", default="256,192")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"\n## One training step of starter, batch 4, CPU, {args.threads} torch threads\n")
    print("| crop | NCHW s / step | channels-last s / step | ratio |")
    print("|---:|---:|---:|---:|")
    for crop in (int(c) for c in args.crops.split(",")):
        plain, last = step_seconds(False, crop), step_seconds(True, crop)
        print(f"| {crop} | {plain:.2f} | {last:.2f} | {last / plain:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
