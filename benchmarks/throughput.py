"""Network and tiled throughput of FM-BFF-Net; prints tables (no pass/fail).

    python benchmarks/throughput.py                      # CPU: light encoder, small batches
    python benchmarks/throughput.py --device cuda        # GPU: default encoder, fp32 + bf16

Reports parameters, GFLOPs and img/s at 352 and 512 px, then the tiled end-to-end rate and
peak memory on a 4096 x 4096 RGB image through ``Segmenter``.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time

import numpy as np
import torch


def peak_host_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_network(net, device, size, batch, dtype, seconds=3.0):
    x = torch.randn(batch, 3, size, size, device=device)
    if device.type == "cuda":
        x = x.contiguous(memory_format=torch.channels_last)
    ctx = torch.autocast(device.type, dtype=dtype) if dtype is not None else torch.autocast(
        device.type, enabled=False)
    with torch.inference_mode(), ctx:
        for _ in range(2):
            net(x)
        sync(device)
        n, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            net(x)
            n += 1
        sync(device)
        elapsed = time.perf_counter() - start
    return n * batch / elapsed


def run_setup(args):
    """(device, encoder, batch, card) from --device / --encoder / --batch: the default encoder
    and batch for that device, and the device's name for the table header."""
    from napari_fmbff.inference.runtime import resolve_device

    device = resolve_device(args.device)
    gpu = device.type == "cuda"
    encoder = args.encoder or ("tf_efficientnetv2_s" if gpu else "tf_efficientnetv2_b0")
    batch = args.batch or (32 if gpu else 2)
    card = torch.cuda.get_device_name() if gpu else f"CPU ({torch.get_num_threads()} threads)"
    return device, encoder, batch, card


def main(argv=None):
    from napari_fmbff import FMBFFNet, ModelConfig, Segmenter
    from napari_fmbff.model.summary import describe

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="auto")
    p.add_argument("--encoder", default=None, help="default: tf_efficientnetv2_s on CUDA, "
                   "tf_efficientnetv2_b0 on CPU")
    p.add_argument("--batch", type=int, default=None, help="network batch (32 GPU, 2 CPU)")
    p.add_argument("--tiled-size", type=int, default=4096)
    p.add_argument("--tile-size", type=int, default=512)
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--only-tiled", action="store_true", help="skip the network table")
    p.add_argument("--compare-pinned", action="store_true",
                   help="tiled rows with pinned copies (default) and with pinned=False, alternating")
    p.add_argument("--repeats", type=int, default=1, help="tiled calls after the first one")
    args = p.parse_args(argv)

    device, encoder, batch, card = run_setup(args)
    gpu = device.type == "cuda"
    net = FMBFFNet(ModelConfig(encoder=encoder)).eval()
    print(f"# napari-fmbff throughput | {card} | torch {torch.__version__} | encoder {encoder}")

    if not args.only_tiled:
        print("\n| size | params (M) | GFLOPs/img | precision | batch | img/s |")
        print("|---:|---:|---:|---|---:|---:|")
    precisions = [("fp32", None)] + ([("bf16", torch.bfloat16)] if gpu else [])
    for size in () if args.only_tiled else (352, 512):
        info = describe(net, size)
        params = info["parameters"].split()[0]
        gflops = info[f"GFLOPs @ {size}"].split()[0]
        model = net.to(device)
        if gpu:
            model = model.to(memory_format=torch.channels_last)
        for label, dtype in precisions:
            rate = time_network(model, device, size, batch, dtype, args.seconds)
            print(f"| {size} | {params} | {gflops} | {label} | {batch} | {rate:.1f} |")
        net = net.cpu()

    s = args.tiled_size
    image = np.random.default_rng(0).integers(0, 255, (s, s, 3), dtype=np.uint8)
    pinned = (True, False) if args.compare_pinned else (True,)
    segs = {v: Segmenter(net, device=str(device), tile_size=args.tile_size, overlap=0.25,
                         batch_size=batch, pinned=v) for v in pinned}
    if gpu:
        torch.cuda.reset_peak_memory_stats()
    # First call: includes one-time costs (CUDA kernels loaded on first use, allocator
    # growth); later calls: the steady state a batch job sees from its second image on.
    # Variants alternate, so a drifting machine hits each of them alike.
    runs = {v: [] for v in pinned}
    for _ in range(1 + max(1, args.repeats)):
        for v, seg in segs.items():
            start = time.perf_counter()
            for progress in seg.iter_predict(image):
                n_tiles = progress.total
            sync(device)
            runs[v].append(time.perf_counter() - start)
    seg = segs[True]
    raw = time_network(seg.model, device, args.tile_size, batch, seg.amp_dtype, args.seconds)
    gpu_peak = torch.cuda.max_memory_allocated() / 2**20 if gpu else float("nan")
    print("\n| tiled image | tile | overlap | tiles | copies | call | seconds | tiles/s "
          "| raw net tiles/s | fraction of raw | peak GPU MB | peak host MB |")
    print("|---|---:|---:|---:|---|---|---:|---:|---:|---:|---:|---:|")
    for v, times in runs.items():
        copies = "pinned" if v and gpu else ("pageable" if gpu else "-")
        for label, elapsed in (("first", times[0]), ("later (best)", min(times[1:]))):
            print(f"| {s}x{s} RGB uint8 | {args.tile_size} | 0.25 | {n_tiles} | {copies} "
                  f"| {label} | {elapsed:.2f} | {n_tiles / elapsed:.1f} | {raw:.1f} "
                  f"| {n_tiles / elapsed / raw:.2f} | {gpu_peak:.0f} | {peak_host_mb():.0f} |")
        print(f"SUMMARY | {s}^2 tiled ({copies} copies), later calls / raw net tile rate "
              f"| {n_tiles / min(times[1:]) / raw:.2f} | >= 0.8 |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
