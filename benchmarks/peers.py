"""FM-BFF-Net against what users would use instead; prints markdown tables (no pass/fail).

    pip install -e ".[bench]"                    # segmentation-models-pytorch, monai
    python benchmarks/peers.py                   # CPU: light encoder, small sizes
    python benchmarks/peers.py --device cuda     # GPU: tf_efficientnetv2_s, 16k tiled image

1. Network: FM-BFF-Net vs ``smp.Unet("tu-ENCODER")`` vs the bare timm encoder (the floor):
   parameters, GFLOPs, img/s at 352 and 512 px (fp32, and bf16 on GPU), all in this process.
2. Whole 1024 x 1024 image (CPU part of the issue): the same three through ``Segmenter``.
3. Tiled: one RGB image of 512 + k * 384 px (tile 512, overlap 0.25: our grid and MONAI's
   then coincide) through ``Segmenter`` (Gaussian blend) and through MONAI's
   ``sliding_window_inference`` (Gaussian, same model, tile, overlap, batch): seconds, the
   fraction of the network's raw tile rate, and the max abs difference of the probabilities.
   ``--variants`` picks the rows: ours (pinned copies, the default), pageable (``pinned=False``,
   the path before them), monai, compile (``compile=True``: inductor + CUDA graphs on GPU).
Ratios are what to read: both sides run in the same process, one after the other.
Lines starting with SUMMARY carry the headline figures for benchmarks/gpu_check.sh.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch
from throughput import peak_host_mb, run_setup, sync, time_network


def gflops(model, size: int) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model.eval().cpu()(torch.zeros(1, 3, size, size))
    return counter.get_total_flops() / 1e9


class BareEncoder(torch.nn.Module):
    """The timm encoder alone (features_only): the floor any U-Net on it pays."""

    def __init__(self, name: str):
        super().__init__()
        import timm

        self.body = timm.create_model(name, features_only=True, pretrained=False)

    def forward(self, x):
        return self.body(x)[-1]


def build_models(encoder: str) -> dict:
    import segmentation_models_pytorch as smp

    from napari_fmbff import FMBFFNet, ModelConfig

    return {
        "FM-BFF-Net": FMBFFNet(ModelConfig(encoder=encoder)).eval(),
        "FM-BFF-Net refine_convs=1": FMBFFNet(ModelConfig(encoder=encoder, refine_convs=1)).eval(),
        f"smp.Unet(tu-{encoder})": smp.Unet(f"tu-{encoder}", encoder_weights=None,
                                            classes=1).eval(),
        "bare encoder": BareEncoder(encoder).eval(),
    }


def summary(name: str, value, target: str = "") -> None:
    """One headline figure, collected by benchmarks/gpu_check.sh into its closing table."""
    print(f"SUMMARY | {name} | {value} | {target} |")


def network_table(models, device, batch, seconds, gpu, sizes=(352, 512)):
    print("\n## 1. Network throughput (img/s), same process\n")
    print("| model | params (M) | GFLOPs @512 | size | precision | batch | img/s | vs smp.Unet |")
    print("|---|---:|---:|---:|---|---:|---:|---:|")
    precisions = [("fp32", None)] + ([("bf16", torch.bfloat16)] if gpu else [])
    rates, rows = {}, []
    for name, model in models.items():
        params = sum(p.numel() for p in model.parameters()) / 1e6
        flops = gflops(model, 512)
        model = model.to(device)
        if gpu:
            model = model.to(memory_format=torch.channels_last)
        for size in sizes:
            for label, dtype in precisions:
                rates[name, size, label] = time_network(model, device, size, batch, dtype, seconds)
                rows.append((name, params, flops, size, label))
        models[name] = model.cpu()
    peer = next(k for k in models if k.startswith("smp"))
    for name, params, flops, size, label in rows:
        rate = rates[name, size, label]
        print(f"| {name} | {params:.2f} | {flops:.1f} | {size} | {label} | {batch} "
              f"| {rate:.1f} | {rate / rates[peer, size, label]:.2f} |")
    for size in sizes:
        for label, _ in precisions:
            ratio = rates["FM-BFF-Net", size, label] / rates[peer, size, label]
            summary(f"FM-BFF-Net / smp.Unet img/s, {size} px {label}", f"{ratio:.2f}",
                    ">= 1.0" if (size, label) == (512, "bf16") else "")
    return rates


def whole_image_table(models, device, size, repeats):
    from napari_fmbff import Segmenter

    print(f"\n## 2. One {size} x {size} RGB image through Segmenter (a single tile)\n")
    print("| model | seconds / image | vs smp.Unet |")
    print("|---|---:|---:|")
    image = np.random.default_rng(1).integers(0, 255, (size, size, 3), dtype=np.uint8)
    times = {}
    for name, model in models.items():
        if name == "bare encoder" or "refine" in name:
            continue
        seg = Segmenter(model, device=str(device), tile_size=size, overlap=0.0, batch_size=1)
        seg.predict_proba(image)  # warm-up
        sync(device)
        start = time.perf_counter()
        for _ in range(repeats):
            seg.predict_proba(image)
        sync(device)
        times[name] = (time.perf_counter() - start) / repeats
        models[name] = seg.model.cpu()
    peer = next(v for k, v in times.items() if k.startswith("smp"))
    for name, t in times.items():
        print(f"| {name} | {t:.3f} | {t / peer:.2f} |")


def count_syncs(seg, image) -> int:
    """Operations that made the host wait for the GPU during one ``predict_proba`` (torch's
    sync debug mode: blocking copies, synchronize calls). Pageable ``non_blocking`` uploads
    also wait (the driver stages them) but are not counted."""
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            seg.predict_proba(image)
            torch.cuda.synchronize()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


def tiled_table(net, device, edge, batch, seconds, variants=("ours", "pageable", "monai"),
                repeats=1):
    from napari_fmbff import Segmenter

    print(f"\n## 3. Tiled {edge} x {edge} RGB uint8 image, tile 512, overlap 0.25, "
          f"Gaussian blend, batch {batch}\n")
    rng = np.random.default_rng(2)
    # Smooth structure, not white noise, so the probabilities vary like a real image's.
    small = rng.integers(0, 255, (edge // 64 + 1, edge // 64 + 1, 3), dtype=np.uint8)
    image = np.repeat(np.repeat(small, 64, 0), 64, 1)[:edge, :edge].copy()

    def segmenter(**kw):
        return Segmenter(net, device=str(device), tile_size=512, overlap=0.25, batch_size=batch,
                         blend="gaussian", **kw)

    seg = segmenter()
    n_tiles = len(seg.plan(edge, edge))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    ir = seg.normalization.intensity_range(image)

    def monai(image):
        from monai.inferers import sliding_window_inference

        # MONAI's usual input: the whole normalised float image already on the device.
        x = seg.normalization.apply(torch.from_numpy(image)[None].to(device), ir)
        if device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        ctx = (torch.autocast(device.type, dtype=seg.amp_dtype) if seg.amp_dtype is not None
               else torch.autocast(device.type, enabled=False))
        with torch.inference_mode(), ctx:
            out = sliding_window_inference(
                x, roi_size=(512, 512), sw_batch_size=batch, overlap=0.25, mode="gaussian",
                predictor=lambda t: torch.sigmoid(seg.model(t).float()))
        return out[0, 0].float().cpu().numpy()

    names = {"ours": "ours (pinned copies)", "pageable": "ours, pageable copies (before)",
             "compile": "ours + compile", "monai": "MONAI"}
    makers = {"ours": lambda: seg, "pageable": lambda: segmenter(pinned=False),
              "compile": lambda: segmenter(compile=True)}
    fns = {}
    for v in variants:
        if v == "monai":
            fns[v] = monai
        else:
            fns[v] = makers[v]().predict_proba

    # The raw rate is taken before and after the tiled runs; the higher one is used, so a
    # noisy machine can only make our fraction look worse, never better.
    raw_before = time_network(seg.model, device, 512, batch, seg.amp_dtype, seconds)
    results, times, warm = {}, {v: [] for v in variants}, {}
    for v in variants:
        start = time.perf_counter()
        fns[v](image)  # warm-up: one-time CUDA and allocator costs (and the compiler, if any)
        sync(device)
        warm[v] = time.perf_counter() - start
    for _ in range(repeats):  # alternating, so drifts of the machine hit every variant
        for v in variants:
            start = time.perf_counter()
            results[v] = fns[v](image)
            sync(device)
            times[v].append(time.perf_counter() - start)
    raw = max(raw_before, time_network(seg.model, device, 512, batch, seg.amp_dtype, seconds))
    gpu_peak = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else float("nan")
    best = {v: min(t) for v, t in times.items()}
    print("| tiler | tiles | first call s | seconds (best) | all runs s | tiles/s "
          "| fraction of raw net rate | vs MONAI |")
    print("|---|---:|---:|---:|---|---:|---:|---:|")
    for v in variants:
        t = best[v]
        vs = f"{best['monai'] / t:.2f}x" if "monai" in best else "-"
        print(f"| {names[v]} | {n_tiles} | {warm[v]:.2f} | {t:.2f} "
              f"| {' / '.join(f'{x:.2f}' for x in times[v])} | {n_tiles / t:.1f} "
              f"| {n_tiles / t / raw:.2f} | {vs} |")
    print(f"\nraw network: {raw:.1f} tiles/s | peak GPU {gpu_peak:.0f} MB | "
          f"peak host {peak_host_mb():.0f} MB")
    label = f"{edge}^2 tiled"
    if "ours" in best:
        summary(f"{label}: ours / raw net tile rate", f"{n_tiles / best['ours'] / raw:.2f}",
                ">= 0.8")
    for v, other in (("pageable", "ours"), ("monai", "ours"), ("compile", "ours")):
        if v in results and other in results:
            diff = float(np.abs(results[v] - results[other]).max())
            print(f"max abs difference {names[v]} vs {names[other]}: {diff:.2e}")
            summary(f"{label}: max abs difference {v} vs {other}", f"{diff:.2e}")
    if "pageable" in best and "ours" in best:
        summary(f"{label}: pageable / raw net tile rate", f"{n_tiles / best['pageable'] / raw:.2f}")
        summary(f"{label}: pinned copies speed-up", f"{best['pageable'] / best['ours']:.2f}x")
    if "monai" in best and "ours" in best:
        summary(f"{label}: ours vs MONAI speed", f"{best['monai'] / best['ours']:.2f}x")
    if "compile" in best and "ours" in best:
        summary(f"{label}: compile speed-up (first call incl. compiling {warm['compile']:.0f} s)",
                f"{best['ours'] / best['compile']:.2f}x")
    if device.type == "cuda":
        part = image[:2048, :2048]
        for v in ("ours", "pageable"):
            if v in variants:
                s = makers[v]()
                s.predict_proba(part)
                try:
                    n = count_syncs(s, part)
                except Exception as err:  # noqa: BLE001 - a diagnostic: never lose the tables for it
                    n = f"n/a ({type(err).__name__}: {err})"
                batches = -(-len(s.plan(2048, 2048)) // batch)
                print(f"host waits for the GPU ({names[v]}, 2048^2, {batches} batches): {n}")
                summary(f"host-GPU syncs per 2048^2 image ({batches} batches), {v}", n)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="auto")
    p.add_argument("--encoder", default=None,
                   help="tf_efficientnetv2_s on GPU, tf_efficientnetv2_b0 (light) on CPU")
    p.add_argument("--batch", type=int, default=None, help="32 on GPU, 2 on CPU")
    p.add_argument("--tiled-k", type=int, default=None,
                   help="tiled image edge = 512 + k * 384 (k = 42: 16640 on GPU, 10: 4352 on CPU)")
    p.add_argument("--whole", type=int, default=1024, help="edge of the whole-image test")
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--parts", default="1,2,3", help="which tables, e.g. 1,3")
    p.add_argument("--compile", action="store_true", help="add a torch.compile row to table 3")
    p.add_argument("--variants", default=None,
                   help="table 3 rows, e.g. ours,pageable,monai,compile (default: ours,monai "
                        "on CPU, ours,pageable,monai on GPU; --compile adds compile)")
    p.add_argument("--repeats", type=int, default=1, help="timed runs of each table-3 row")
    p.add_argument("--sizes", default="352,512", help="table 1 image sizes")
    args = p.parse_args(argv)

    device, encoder, batch, card = run_setup(args)
    gpu = device.type == "cuda"
    k = args.tiled_k if args.tiled_k is not None else (42 if gpu else 10)
    import monai
    import segmentation_models_pytorch as smp
    import timm

    print(f"# peers | {card} | torch {torch.__version__} | timm {timm.__version__} | "
          f"smp {smp.__version__} | monai {monai.__version__} | encoder {encoder} | "
          f"{time.strftime('%Y-%m-%d')}")
    torch.manual_seed(0)
    models = build_models(encoder)
    parts = set(args.parts.split(","))
    if "1" in parts:
        network_table(models, device, batch, args.seconds, gpu,
                      sizes=tuple(int(v) for v in args.sizes.split(",")))
    if "2" in parts:
        whole_image_table(models, device, args.whole, repeats=3)
    if "3" in parts:
        variants = (args.variants.split(",") if args.variants
                    else ["ours", "pageable", "monai"] if gpu else ["ours", "monai"])
        if args.compile and "compile" not in variants:
            variants.append("compile")
        tiled_table(models["FM-BFF-Net"], device, 512 + k * 384, batch, args.seconds,
                    variants, args.repeats)
    return 0


if __name__ == "__main__":
    sys.exit(main())
