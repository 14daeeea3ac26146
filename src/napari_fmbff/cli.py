"""The ``fmbff`` command line: thin over the engine. Errors are one line and exit code 2."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

EXIT_USAGE = 2


class CliError(Exception):
    """A problem the user can fix; printed as one line."""


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _fraction(text: str) -> float:
    value = float(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {value}")
    return value


def _probability(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {value}")
    return value


def _add_model_arg(p: argparse.ArgumentParser, required: bool = False) -> None:
    p.add_argument("--model", "-m", required=required, default=None if required else "default",
                   help="a registered model name (see `fmbff info --list`) or a .safetensors "
                        "file (default: the bundled starter model)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fmbff", description="FM-BFF-Net lesion segmentation from the command line.")
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    seg = sub.add_parser("segment", help="segment images into masks",
                         description="Segment image files; writes one mask per input, same stem.")
    seg.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders or globs")
    _add_model_arg(seg)
    seg.add_argument("--out", "-o", required=True, help="output folder")
    seg.add_argument("--tile-size", type=_positive_int, default=None,
                     help="tile edge in px, a multiple of 32 (default: the model's)")
    seg.add_argument("--overlap", type=_fraction, default=0.25, help="tile overlap fraction (0.25)")
    seg.add_argument("--batch-size", type=_positive_int, default=8, help="tiles per batch (8)")
    seg.add_argument("--device", default="auto", choices=["auto", "cuda", "mps", "cpu"])
    seg.add_argument("--threshold", type=_probability, default=0.5, help="probability cut (0.5)")
    seg.add_argument("--min-size", type=int, default=0, help="drop objects smaller than this (px)")
    seg.add_argument("--fill-holes", action="store_true", help="fill holes in objects")
    seg.add_argument("--labels", action="store_true",
                     help="write connected-component labels (uint16 .tif) instead of a 0/255 png")
    seg.add_argument("--probabilities", action="store_true",
                     help="also write the probability map as STEM_prob.tif (float32)")
    seg.add_argument("--tta", action="store_true", help="flip test-time augmentation (4x slower)")
    seg.add_argument("--overwrite", action="store_true", help="replace existing outputs")

    info = sub.add_parser("info", help="describe a model (parameters, FLOPs, modules)",
                          description="Describe a model, or list the registered models.")
    _add_model_arg(info)
    info.add_argument("--size", type=_positive_int, default=512, help="input size for FLOPs (512)")
    info.add_argument("--list", action="store_true", help="list registered models and exit")
    info.add_argument("--encoder", default=None,
                      help="describe a fresh (untrained) network with this timm encoder instead")
    return parser


def _version() -> str:
    from . import __version__

    return f"napari-fmbff {__version__}"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return {"segment": cmd_segment, "info": cmd_info}[args.command](args)
    except KeyboardInterrupt:
        print("fmbff: interrupted", file=sys.stderr)
        return 130
    except (CliError, FileNotFoundError, FileExistsError, ValueError, MemoryError) as err:
        print(f"fmbff {args.command}: error: {err}", file=sys.stderr)
        return EXIT_USAGE


def _load(name: str):
    from .models import default_model_name, load_model

    return load_model(default_model_name() if name == "default" else name)


def cmd_segment(args) -> int:
    from tqdm import tqdm

    from .image_io import expand_inputs, read_image, write_image
    from .inference import Segmenter, labels_from_proba

    files = expand_inputs(args.inputs)
    out_dir = Path(args.out)
    if out_dir.exists() and not out_dir.is_dir():
        raise CliError(f"--out {out_dir} is a file, not a folder")
    suffix = ".tif" if args.labels else ".png"
    stems = [f.stem for f in files]
    dupes = sorted({s for s in stems if stems.count(s) > 1})
    if dupes:
        raise CliError(f"several inputs share the stem(s) {', '.join(dupes)}; their masks would collide")
    targets = [out_dir / f"{f.stem}{suffix}" for f in files]
    if not args.overwrite:
        clash = [str(t) for t in targets if t.exists()]
        if clash:
            raise CliError(f"{clash[0]} exists ({len(clash)} outputs in all); pass --overwrite to replace")
    seg = Segmenter(_load(args.model), device=args.device, tile_size=args.tile_size,
                    overlap=args.overlap, batch_size=args.batch_size, tta=args.tta)
    print(f"fmbff: {len(files)} image(s) on {seg.device_label}, tile {seg.tile_size}", file=sys.stderr)
    for path, target in tqdm(list(zip(files, targets)), desc="images", unit="img"):
        image = read_image(path)
        image = _squeeze_to_2d(image, path)
        prob = seg.predict_proba(image)
        labels = labels_from_proba(prob, args.threshold, args.min_size, args.fill_holes,
                                   split=args.labels)
        if args.labels:
            write_image(target, labels.astype("uint16"), overwrite=args.overwrite)
        else:
            write_image(target, ((labels > 0) * 255).astype("uint8"), overwrite=args.overwrite)
        if args.probabilities:
            write_image(out_dir / f"{path.stem}_prob.tif", prob, overwrite=args.overwrite)
    print(f"fmbff: wrote {len(files)} mask(s) to {out_dir}", file=sys.stderr)
    return 0


def _squeeze_to_2d(image, path):
    """Drop singleton axes; the CLI segments 2D images (grey or RGB/RGBA)."""
    import numpy as np

    image = np.squeeze(image) if image.ndim > 3 else image
    from .inference import image_layout

    try:
        image_layout(image.shape)
    except ValueError as err:
        raise CliError(f"{path}: {err}") from None
    return image


def cmd_info(args) -> int:
    from .models import list_models, models_dir

    if args.list:
        models = list_models()
        print(f"models folder: {models_dir()}")
        for name, path in models.items():
            print(f"  {name:24s} {path}")
        if not models:
            print("  (no models registered)")
        return 0
    if args.encoder:
        from .model import FMBFFNet, ModelConfig

        net, source = FMBFFNet(ModelConfig(encoder=args.encoder)), "untrained"
    else:
        net = _load(args.model)
        source = net.metadata.get("source", "")
    for key, value in describe(net, args.size).items():
        print(f"{key:18s} {value}")
    if source:
        print(f"{'source':18s} {source}")
    return 0


def describe(net, size: int = 512) -> dict:
    """Parameters, GFLOPs at ``size`` and the modules that are on."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from .tiling import round_up

    size = round_up(size, 32)
    cfg = net.config
    n_params = sum(p.numel() for p in net.parameters())
    n_encoder = sum(p.numel() for p in net.encoder.parameters())
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        net.eval()(torch.zeros(1, 3, size, size))
    modules = [m for m in ("fmcab", "aggregate_skips", "vitm", "biffm") if getattr(cfg, m)]
    return {
        "encoder": cfg.encoder,
        "parameters": f"{n_params / 1e6:.2f} M (encoder {n_encoder / 1e6:.2f} M)",
        f"GFLOPs @ {size}": f"{counter.get_total_flops() / 1e9:.2f} (1 image, multiply-add = 2)",
        "modules on": ", ".join(modules) or "none (plain U-Net)",
        "decoder": str(list(cfg.decoder_channels)),
        "transformer": f"dim {cfg.transformer_dim}, depth {cfg.transformer_depth}, "
                       f"heads {cfg.transformer_heads}",
    }


if __name__ == "__main__":
    sys.exit(main())
