"""Peak host and GPU memory against image size: in memory (numpy) vs chunked zarr.

    python benchmarks/memory.py                          # CPU, tiny test encoder, 1k/4k/16k
    python benchmarks/memory.py --device cuda --encoder tf_efficientnetv2_s

Each image is written to a zarr folder first (band by band, never whole), then each run
happens in a fresh process so its peak counters are its own:
- "numpy": the image read whole into memory, ``Segmenter.predict_proba`` into numpy;
- "zarr": ``fmbff segment``'s path for large images: read region by region, written to zarr
  chunk by chunk (work chunks of 4096 px).
GPU memory must not grow with the image in either mode; host memory must not in "zarr".
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def write_input(path: Path, edge: int) -> None:
    """An RGB uint8 zarr with blocky structure, written one 1024-row band at a time."""
    import zarr

    z = zarr.create_array(store=str(path), shape=(edge, edge, 3), dtype="uint8",
                          chunks=(1024, 1024, 3), overwrite=True)
    rng = np.random.default_rng(edge)
    for y in range(0, edge, 1024):
        rows = min(1024, edge - y)
        coarse = rng.integers(0, 255, (rows // 64 + 1, edge // 64 + 1, 3), dtype=np.uint8)
        z[y:y + rows] = np.repeat(np.repeat(coarse, 64, 0), 64, 1)[:rows, :edge]


def child(args) -> None:
    """One measured run; prints a JSON line."""
    import torch

    from napari_fmbff import FMBFFNet, ModelConfig, Segmenter
    from napari_fmbff.inference.postprocess import Postprocess
    from napari_fmbff.inference.progress import drain
    from napari_fmbff.jobs.files import FileJob, iter_segment_large

    torch.manual_seed(0)
    small = dict(decoder_channels=(32, 16, 16, 8), transformer_dim=32, transformer_heads=4,
                 transformer_depth=1) if args.encoder == "test_efficientnet" else {}
    net = FMBFFNet(ModelConfig(encoder=args.encoder, **small))
    seg = Segmenter(net, device=args.device, tile_size=512, batch_size=args.batch)
    gpu = seg.device.type == "cuda"
    start = time.perf_counter()
    if args.mode == "numpy":
        import zarr

        image = zarr.open_array(args.input, mode="r")[:]
        prob = seg.predict_proba(image)
        assert prob.shape == image.shape[:2]
    else:
        job = FileJob(args.input, str(Path(args.out) / "mask.zarr"), None, large=True)
        drain(iter_segment_large(seg, job, Postprocess(), chunk=4096, overwrite=True))
    if gpu:
        torch.cuda.synchronize()
    print(json.dumps({
        "seconds": time.perf_counter() - start,
        "host_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "gpu_mb": torch.cuda.max_memory_allocated() / 2**20 if gpu else None,
        "device": torch.cuda.get_device_name() if gpu else "cpu",
    }))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--encoder", default="test_efficientnet",
                   help="test_efficientnet (default) builds the tests' tiny network: it "
                        "measures the engine's memory, and is fast enough for 16k on a CPU")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--sizes", default="1024,4096,16384")
    p.add_argument("--modes", default="numpy,zarr")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--mode", help=argparse.SUPPRESS)
    p.add_argument("--input", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        child(args)
        return 0

    print(f"# memory | device {args.device} | encoder {args.encoder} | tile 512, overlap 0.25, "
          f"batch {args.batch} | {time.strftime('%Y-%m-%d')}\n")
    print("| image | mode | seconds | peak host MB | peak GPU MB | image bytes MB |")
    print("|---|---|---:|---:|---:|---:|")
    gpu_mb: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        for edge in (int(s) for s in args.sizes.split(",")):
            src = Path(tmp) / f"in{edge}.zarr"
            write_input(src, edge)
            for mode in args.modes.split(","):
                out = Path(tmp) / f"out{edge}{mode}"
                out.mkdir()
                cmd = [sys.executable, __file__, "--child", "--mode", mode, "--input", str(src),
                       "--out", str(out), "--device", args.device, "--encoder", args.encoder,
                       "--batch", str(args.batch)]
                res = subprocess.run(cmd, capture_output=True, text=True)
                if res.returncode:
                    print(res.stderr[-2000:], file=sys.stderr)
                    return 1
                r = json.loads(res.stdout.strip().splitlines()[-1])
                gpu = f"{r['gpu_mb']:.0f}" if r["gpu_mb"] is not None else "-"
                gpu_mb.setdefault(mode, []).append((edge, gpu))
                print(f"| {edge}x{edge} RGB | {mode} | {r['seconds']:.1f} | {r['host_mb']:.0f} "
                      f"| {gpu} | {edge * edge * 3 / 2**20:.0f} |", flush=True)
    for mode, rows in gpu_mb.items():
        print(f"SUMMARY | peak GPU MB at {' / '.join(str(e) for e, _ in rows)} px, {mode} "
              f"| {' / '.join(g for _, g in rows)} | flat |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
