"""The ``fmbff`` command line: thin over the engine. Errors are one line and exit code 2."""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

from ._files import check_folders, os_error_hint, refuse_existing
from .inference.postprocess import DEFAULT_THRESHOLD
from .inference.runtime import DEVICES, PRECISIONS, drain
from .inference.segmenter import SegmentSettings
from .inference.tiling import BLENDS

EXIT_USAGE = 2


class CliError(Exception):
    """A problem the user can fix; printed as one line."""


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def _chunk_size(text: str) -> int:
    value = int(text)
    if value < 32 or value % 32:
        raise argparse.ArgumentTypeError(f"must be a positive multiple of 32, got {value}")
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


def _add_intensity_args(p) -> None:
    """--window / --normalize: the same intensity choice for segment, train and evaluate."""
    p.add_argument("--window", default=None, metavar="NAME|LOW,HIGH",
                   help="intensity window: lung, soft-tissue, bone, brain (CT, in HU), or "
                        "LOW,HIGH in the image's units")
    p.add_argument("--normalize", default="model", choices=["model", "slice", "volume"],
                   help="intensities: the model's own (default), each slice's percentiles, "
                        "or one range for the whole stack / volume")


def _check_intensity(args) -> None:
    """A bad --window / --normalize is said in one line before any work (the model's own
    setting is not needed to tell)."""
    from .inference.intensity import intensity_setting
    from .model.normalization import Normalization

    intensity_setting(Normalization(), args.window, args.normalize)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fmbff", description="FM-BFF-Net lesion segmentation from the command line.")
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for add in (_add_segment_parser, _add_info_parser, _add_train_parser,
                _add_evaluate_parser, _add_propagate_parser, _add_demo_parser,
                _add_make_data_parser):
        add(sub)
    parser.subcommands = dict(sub.choices)  # for errors in the sub-command's own usage
    return parser


def _add_segment_parser(sub) -> None:
    seg = sub.add_parser("segment", help="segment images into masks",
                         description="Segment image files; writes one mask per input, same stem.")
    seg.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders or globs")
    _add_model_arg(seg)
    seg.add_argument("--out", "-o", required=True, help="output folder")
    _add_run_args(seg)
    _add_output_args(seg)
    vol = seg.add_argument_group(
        "intensities, stacks and CT / MR volumes",
        "DICOM series (a folder, or any one .dcm of it) and NIfTI files (.nii, .nii.gz) become "
        "NIfTI labels with the source's affine (masks/<series>.nii.gz) and a JSON sidecar; "
        "--window and --normalize apply to every input")
    _add_intensity_args(vol)
    vol.add_argument("--per-slice-labels", action="store_true",
                     help="number objects slice by slice instead of whole-volume 3D objects "
                          "(volumes, TIFF stacks, zarr stacks)")
    seg.add_argument("--compile", action="store_true",
                     help="torch.compile the network (CUDA graphs on GPU): faster for many "
                          "or large images, the first batch waits for the compiler")
    seg.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    _add_large_args(seg)
    _add_prompt_args(seg)


def _add_prompt_args(seg) -> None:
    from .jobs.prompted import ENGINES

    group = seg.add_argument_group(
        "prompts", "only the prompted objects of ONE input are written, as labels "
                   "(STEM.tif; NIfTI labels for a NIfTI / DICOM volume). Pixel coordinates as "
                   "napari shows the opened image: X the column, Y the row, Z the slice")
    group.add_argument("--box", action="append", default=[], metavar="X0,Y0,X1,Y1[@Z]",
                       help="a box around one object: a new object (repeat for more)")
    group.add_argument("--point", action="append", default=[], metavar="X,Y[@Z][:neg]",
                       help="a click: grows the object under it or makes a new one; :neg cuts "
                            "its region out of the object under it")
    group.add_argument("--box-engine", default="auto", choices=ENGINES,
                       help="how a prompt is answered: LiteMedSAM (boxes; clicks use "
                            "Otsu), Otsu inside the box (no network) or the model's prompt "
                            "path when it has one (auto, as the Segment widget: LiteMedSAM, "
                            "else Otsu, which then says why)")


def _add_run_args(seg) -> None:
    """How `fmbff segment` runs the network: SegmentSettings' fields and defaults."""
    run = SegmentSettings.defaults()
    seg.add_argument("--tile-size", type=_positive_int, default=run["tile_size"],
                     help="tile edge in px, a multiple of 32 (default: the model's)")
    seg.add_argument("--overlap", type=_fraction, default=run["overlap"],
                     help=f"tile overlap fraction ({run['overlap']})")
    seg.add_argument("--batch-size", type=_positive_int, default=run["batch_size"],
                     help=f"tiles per batch ({run['batch_size']})")
    seg.add_argument("--device", default=run["device"], choices=DEVICES)
    seg.add_argument("--precision", default=run["precision"], choices=PRECISIONS,
                     help="CUDA arithmetic (auto: bf16 where supported, else fp16)")
    seg.add_argument("--blend", default=run["blend"], choices=BLENDS,
                     help=f"tile weights ({run['blend']}; gaussian as MONAI / nnU-Net)")
    seg.add_argument("--no-pinned", dest="pinned", action="store_false",
                     help="CUDA: plain synchronous copies instead of pinned buffers")


def _add_output_args(seg) -> None:
    """What `fmbff segment` writes: post-processing and the kinds of output."""
    seg.add_argument("--threshold", type=_probability, default=DEFAULT_THRESHOLD,
                     help=f"probability cut ({DEFAULT_THRESHOLD})")
    seg.add_argument("--min-size", type=_non_negative_int, default=0, help="drop objects smaller than this (px)")
    seg.add_argument("--fill-holes", action="store_true", help="fill holes in objects")
    seg.add_argument("--labels", action="store_true",
                     help="write connected-component labels (uint16 .tif; uint32 for zarr "
                          "outputs) instead of a 0/255 png")
    seg.add_argument("--probabilities", action="store_true",
                     help="also write the probability map as STEM_prob.tif (float32)")
    seg.add_argument("--tta", action="store_true", help="flip test-time augmentation (4x slower)")


def _add_large_args(seg) -> None:
    """Large images (chunked zarr outputs, --resume) and dask clusters."""
    big = seg.add_argument_group(
        "large images and clusters",
        "zarr / OME-Zarr folders and TIFFs over 8k x 8k px are read region by region and "
        "written chunk by chunk as STEM.zarr, an OME-Zarr label image (0/1 uint8; uint32 ids "
        "with --labels), and STEM_prob.zarr with --probabilities")
    big.add_argument("--zarr", action="store_true",
                     help="write zarr chunk by chunk for every input, not only large ones")
    big.add_argument("--resume", action="store_true",
                     help="continue large images an interrupted run left unfinished "
                          "(same command otherwise)")
    big.add_argument("--chunk", type=_chunk_size, default=4096,
                     help="work unit edge in px for zarr output, a multiple of 32 (4096)")
    big.add_argument("--workers", type=_positive_int, default=None,
                     help="spread images / chunks over a local dask cluster of N processes")
    big.add_argument("--scheduler", default=None, metavar="ADDRESS",
                     help="spread them over the dask.distributed cluster at ADDRESS "
                          "(e.g. tcp://10.0.0.5:8786); inputs and --out must be on storage "
                          "every worker can read")


def _add_info_parser(sub) -> None:
    info = sub.add_parser("info", help="describe a model (parameters, FLOPs, modules)",
                          description="Describe a model, or list the registered models.")
    _add_model_arg(info)
    info.add_argument("--size", type=_positive_int, default=512, help="input size for FLOPs (512)")
    info.add_argument("--list", action="store_true", help="list registered models and exit")
    info.add_argument("--encoder", default=None,
                      help="describe a fresh (untrained) network with this timm encoder instead")


#: RTSTRUCT masks (train, evaluate): which ROI is the lesion (data/rtstruct.py says why).
ROI_HELP = ("RTSTRUCT masks: the ROI that is the lesion (case-insensitive; a pattern such as "
            "'GTV*'; repeat to join several); needed when an RTSTRUCT holds several ROIs")


def _add_train_parser(sub) -> None:
    train = sub.add_parser(
        "train", help="train or fine-tune a model on a data folder",
        description="Train FM-BFF-Net on a folder in Kvasir-SEG, CVC-ClinicDB, ISIC or BUSI layout "
                    "(or images/ + masks/), or on CT / MR volumes: imagesTr/ + labelsTr/ "
                    "(nnU-Net / Medical Segmentation Decathlon) or images/ + masks/ of NIfTI "
                    "files (an image may be a DICOM series folder); volumes train on every "
                    "slice with lesion plus as many lesion-free slices, and a volume is never "
                    "split between training and held-out data. Writes the model, "
                    "MODEL.log.csv and MODEL.loss.png. "
                    "On several GPUs: torchrun --nproc_per_node N -m napari_fmbff.cli train ... "
                    "(DDP; --batch-size is per process).")
    train.add_argument("data", help="data folder, or a corrections store (its labelled slices; "
                                    "slices all of nnU-Net's ignore label are skipped)")
    train.add_argument("--out", "-o", required=True, help="the new model file (.safetensors)")
    train.add_argument("--init", default=None,
                       help="start from this model: fine-tuning, with the measured fine-tuning "
                            "recipe (docs/models.md) for every option not given")
    _add_new_model_args(train)
    _add_recipe_args(train)
    train.add_argument("--roi", action="append", default=None, metavar="NAME", help=ROI_HELP)
    train.add_argument("--device", default="auto", choices=DEVICES)
    _add_intensity_args(train.add_argument_group(
        "intensities", "stored in the model, so fmbff segment with its default uses them again"))
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--resume", action="store_true",
                       help="continue from MODEL.resume.pt, written after every epoch")
    train.add_argument("--overwrite", action="store_true", help="replace an existing model file")
    train.add_argument("--half", action="store_true", help="store float16 weights (half the size)")
    train.add_argument("--workers", type=int, default=0, help="data-loading processes (0)")
    train.add_argument("--time-limit", type=float, default=None,
                       help="stop after this many minutes, keeping the best epoch")
    for flag in ("fmcab", "vitm", "biffm", "aggregate-skips"):
        train.add_argument(f"--no-{flag}", action="store_true",
                           help=f"switch {flag} off (the paper's ablation)")


def _add_new_model_args(train) -> None:
    """The network of a new model (without --init)."""
    train.add_argument("--config", default=None,
                       help="JSON file of ModelConfig fields for a new model (overrides --encoder)")
    train.add_argument("--encoder", default="tf_efficientnetv2_s", help="timm encoder (new models)")
    train.add_argument("--encoder-init", default=None,
                       help="initialise the encoder from a timm state dict (.safetensors)")
    train.add_argument("--encoder-weights", choices=["imagenet", "none"], default="none",
                       help="start the encoder from ImageNet weights (needs them in timm's cache)")


def _add_recipe_args(train) -> None:
    """The training recipe; None: the paper's, or with --init the fine-tuning recipe's."""
    new = "from scratch; with --init the fine-tuning recipe's"
    train.add_argument("--epochs", type=_positive_int, default=None, help=f"100 {new}")
    train.add_argument("--batch-size", type=_positive_int, default=None, help=f"8 {new}")
    train.add_argument("--lr", type=float, default=None, help=f"1e-3 {new}")
    train.add_argument("--tile-size", type=_positive_int, default=None,
                       help=f"training crop size: 352 {new}")
    train.add_argument("--val-fraction", type=_fraction, default=None, help=f"0.2 {new}")
    train.add_argument("--patience", type=_positive_int, default=None,
                       help=f"stop after this many epochs without a better validation Dice: 15 {new}")
    train.add_argument("--steps-per-epoch", type=_positive_int, default=None)
    train.add_argument("--freeze-encoder", action="store_true")
    train.add_argument("--resize", action="store_true", help="resize images to the tile, no crops")
    train.add_argument("--no-augment", action="store_true")
    train.add_argument("--prompts", action="store_true",
                       help="also train the prompt input (boxes and clicks simulated from the "
                            "masks; a model without one gains it), so the model answers "
                            "fmbff segment --box / --point and the widget's prompts")
    train.add_argument("--no-prompt-fraction", type=_fraction, default=None,
                       help="with --prompts: share of crops trained without any prompt, so "
                            "automatic segmentation stays trained (0.3)")


def _add_evaluate_parser(sub) -> None:
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


def _add_demo_parser(sub) -> None:
    demo = sub.add_parser("demo", help="segment the bundled sample with the bundled model",
                          description="Open napari on a sample image with the Segment and "
                                      "Fine-tune widgets and Segment's result; --headless writes "
                                      "the mask, an overlay PNG and the Dice instead.")
    demo.add_argument("--look", choices=["endoscopy", "dermoscopy", "ultrasound"],
                      default="endoscopy")
    _add_model_arg(demo)
    demo.add_argument("--headless", action="store_true", help="no window; write files to --out")
    demo.add_argument("--out", "-o", default="fmbff-demo", help="output folder (headless)")
    demo.add_argument("--device", default="auto", choices=DEVICES)
    demo.add_argument("--screenshot", default=None,
                      help="save the window as this PNG once segmented, then close")
    demo.add_argument("--overwrite", action="store_true")


def _add_propagate_parser(sub) -> None:
    prop = sub.add_parser(
        "propagate", help="learn from the labelled slices of a volume, fill in the others",
        description="Fine-tune a model on the slices of PARTIAL that hold labels (or --slices), "
                    "then segment every other slice of VOLUME. Writes the whole labels volume "
                    "in --out with the input's name and format (NIfTI with the scan's affine "
                    "and a JSON record for NIfTI / DICOM, a TIFF for a TIFF stack), the labelled "
                    "slices copied verbatim and a lesion keeping the id you gave it, and the "
                    "fine-tuned model beside it (STEM_propagated.safetensors).")
    prop.add_argument("volume", metavar="VOLUME",
                      help="NIfTI file, DICOM series (folder or one .dcm of it), or TIFF stack")
    prop.add_argument("--labels", required=True, metavar="PARTIAL",
                      help="the partial labels: NIfTI on the same scan, or a TIFF of the same "
                           "shape; slices with any label are learned from")
    prop.add_argument("--out", "-o", required=True, help="output folder")
    _add_model_arg(prop)
    prop.add_argument("--slices", default=None, metavar="Z,Z,...",
                      help="learn from these slices (0-based, along the first axis) instead of "
                           "every slice with a label; a listed slice without labels teaches "
                           "what is not lesion")
    prop.add_argument("--epochs", type=_positive_int, default=None,
                      help="fine-tuning epochs (default: the measured recipe's)")
    prop.add_argument("--threshold", type=_probability, default=DEFAULT_THRESHOLD)
    prop.add_argument("--all-objects", action="store_true",
                      help="keep every object the model finds on the other slices (default: "
                           "only those connected in 3D to the objects you labelled, the "
                           "lesion carried through the volume)")
    prop.add_argument("--device", default="auto", choices=DEVICES)
    _add_intensity_args(prop)
    prop.add_argument("--store", nargs="?", const="", default=None, metavar="DIR",
                      help="add the labelled slices to this corrections store folder (its grey "
                           "store) and train on all of it, from --model (--store alone: the "
                           "user's store, $FMBFF_STORE_DIR or the user data folder)")
    prop.add_argument("--overwrite", action="store_true", help="replace existing outputs")


def _add_make_data_parser(sub) -> None:
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


def _version() -> str:
    from . import __version__

    return f"napari-fmbff {__version__}"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # a misspelled option: the sub-command's own usage, not the top-level one
        parser.subcommands[args.command].error(f"unrecognized arguments: {' '.join(unknown)}")
    command = {"segment": cmd_segment, "info": cmd_info, "train": cmd_train,
               "evaluate": cmd_evaluate, "propagate": cmd_propagate, "make-data": cmd_make_data,
               "demo": cmd_demo}
    with warnings.catch_warnings():
        warnings.showwarning = _one_line_warning
        try:
            return command[args.command](args)
        except KeyboardInterrupt:
            print("fmbff: interrupted", file=sys.stderr)
            return 130
        except Exception as err:  # noqa: BLE001 - every error is one line, never a traceback
            if os.environ.get("FMBFF_DEBUG"):
                raise
            print(f"fmbff {args.command}: error: {one_line(err)}", file=sys.stderr)
            return EXIT_USAGE


def one_line(err: BaseException) -> str:
    """An exception as one line a user can act on (the path of an OSError included)."""
    if isinstance(err, OSError) and err.strerror:
        where = f"{err.filename}: " if err.filename else ""
        return f"{where}{err.strerror} ({os_error_hint(err)})"
    lines = [line.strip() for line in str(err).strip().splitlines() if line.strip()]
    text = lines[0] if lines else type(err).__name__
    if not isinstance(err, (CliError, ValueError, OSError, MemoryError)):
        text = f"{type(err).__name__}: {text} (FMBFF_DEBUG=1 shows the traceback)"
    return text


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"fmbff: warning: {message}", file=sys.stderr)


def _load(name: str):
    from .model.checkpoint import load_model

    return load_model(_model_name(name))


@dataclass
class SegmentPlan:
    """`fmbff segment`'s arguments, read once and checked before any work
    (``_plan_segment``); the three ways to run (volumes, here, on a cluster) take this."""

    spec: object            # jobs.files.SegmenterSpec: model file, SegmentSettings, intensities
    post: object            # inference.postprocess.Postprocess
    volumes: list[str]      # DICOM series and NIfTI inputs -> NIfTI labels
    jobs: list              # jobs.files.FileJob for every other input
    out: str                # the output folder, as given
    chunk: int
    overwrite: bool
    resume: bool
    workers: int | None
    scheduler: str | None

    @property
    def large(self) -> list:
        return [job for job in self.jobs if job.large]

    @property
    def settings(self) -> dict:
        """What a resumed large job must share with the run that started it."""
        run = self.spec.settings
        return {"model": self.spec.model_path, "tile_size": run.tile_size,
                "overlap": run.overlap, "tta": run.tta}


def cmd_segment(args) -> int:
    if args.box or args.point:
        return _segment_prompted(args)
    plan = _plan_segment(args)
    if plan.volumes:
        _segment_volumes(plan)
    if not plan.jobs:
        return 0
    large = plan.large
    before = {job.target: _chunks_done(job) for job in large}
    try:
        if plan.workers is not None or plan.scheduler:
            return _segment_on_cluster(plan)
        return _segment_here(plan)
    except BaseException:
        # Only when finished chunks of a large job are on disk that this run made: not after
        # a bad input, nor after refusing an unfinished run (whose message says --resume), nor
        # when the first chunk failed (a disk full: a working folder with nothing in it).
        if any(_chunks_done(job) > max(before[job.target], 0) for job in large):
            print("fmbff: finished chunks of large images are kept; run the same command with "
                  "--resume to continue", file=sys.stderr)
        raise


def _segment_prompted(args) -> int:
    """`fmbff segment INPUT --box ... --point ...`: only the prompted objects of one input."""
    from .data.medical import is_medical, read_volume
    from .jobs.prompted import (
        answer_prompts,
        choose_engine,
        fallback_note,
        needs_model,
        parse_prompt,
        prompt_record,
        write_prompted,
    )

    prompts = ([parse_prompt("box", b) for b in args.box]
               + [parse_prompt("point", p) for p in args.point])
    if len(args.inputs) != 1:
        raise CliError("--box / --point are pixel coordinates of one image: give one input")
    model_name = _model_name(args.model)
    model = _load(model_name) if needs_model(args.box_engine) else None
    engine = choose_engine(args.box_engine, model)
    source = args.inputs[0]
    volume = read_volume(source) if is_medical(source) else None
    data, rgb = (volume.data, False) if volume is not None else _prompt_image(source)
    device = "cpu"
    if engine == "litemedsam":
        from .inference.runtime import resolve_device

        device = resolve_device(args.device)
    labels = answer_prompts(data, prompts, rgb, engine, model, device)
    record = prompt_record(prompts, engine, model_name, source)
    written = write_prompted(source, labels, args.out, record, volume, args.overwrite)
    if any(p.kind == "box" for p in prompts) and fallback_note(args.box_engine, engine):
        print(f"fmbff segment: {fallback_note(args.box_engine, engine)}", file=sys.stderr)
    print(f"fmbff segment: {len(prompts)} prompt(s), {int(labels.max())} object(s) "
          f"({record['engine']}): {source} -> {written}", file=sys.stderr)
    return 0


def _prompt_image(source) -> tuple:
    """(pixels, rgb) of a 2D image or a TIFF stack, read whole."""
    import tifffile

    from .data.image_io import is_stack, read_image

    path = Path(source)
    if not path.is_file():
        raise CliError(f"{source}: no such file")
    if is_stack(path):
        return tifffile.imread(path), False
    image = read_image(path)
    return image, image.ndim == 3


def _plan_segment(args) -> SegmentPlan:
    """Every argument of `fmbff segment` read here, once; a bad one is said before any work."""
    from .data.medical import is_medical
    from .inference.postprocess import Postprocess
    from .inference.runtime import resolve_device
    from .jobs.files import SegmenterSpec
    from .model.registry import resolve_model_path

    _check_intensity(args)
    volumes = [item for item in args.inputs if is_medical(item)]
    files = [item for item in args.inputs if item not in volumes]
    post = Postprocess(args.threshold, args.min_size, args.fill_holes, args.labels,
                       args.per_slice_labels)
    jobs = []
    if files:
        jobs = _file_jobs(files, Path(args.out), post, args.probabilities, args.zarr,
                          args.overwrite)
        if args.workers is not None and args.scheduler:
            raise CliError("give either --workers N (a local cluster) or --scheduler ADDRESS, "
                           "not both")
    run = SegmentSettings(**{name: getattr(args, name) for name in SegmentSettings.names()})
    resolve_device(run.device)  # a missing GPU is said now, not after the model loaded
    spec = SegmenterSpec(str(resolve_model_path(_model_name(args.model))), run,
                         window=args.window, normalize=args.normalize)
    return SegmentPlan(spec, post, volumes, jobs, args.out, args.chunk, args.overwrite,
                       args.resume, args.workers, args.scheduler)


def _file_jobs(inputs, out_dir: Path, post, probabilities: bool, force_zarr: bool,
               overwrite: bool) -> list:
    """One FileJob per image file of ``inputs``; refused when an output would replace an
    input, collide with another or (without ``overwrite``) replace an existing file."""
    from .data.image_io import expand_inputs
    from .jobs.files import FileJob

    files = expand_inputs(inputs)
    if out_dir.exists() and not out_dir.is_dir():
        raise CliError(f"--out {out_dir} is a file, not a folder; choose a folder")
    check_folders(out_dir / "mask")
    jobs = [FileJob.plan(f, out_dir, post, probabilities, force_zarr=force_zarr) for f in files]
    targets = [t for job in jobs for t in job.outputs]
    sources = {Path(f).resolve() for f in files}
    onto = [t for t in targets if Path(t).resolve() in sources]
    if onto:
        raise CliError(f"{onto[0]} is one of the inputs: its mask would replace it; "
                       "choose another --out folder")
    dupes = sorted({Path(t).name for t in targets if targets.count(t) > 1})
    if dupes:
        raise CliError(f"several inputs share the output name(s) {', '.join(dupes)}; "
                       "their masks would collide")
    if not overwrite:
        clash = [t for t in targets if Path(t).exists()]
        if clash:
            raise CliError(f"{clash[0]} exists ({len(clash)} outputs in all); pass --overwrite to replace")
    return jobs


def _chunks_done(job) -> int:
    """Finished chunks in a large job's working folder (-1: no working folder)."""
    target = Path(job.target)
    done = target.parent / f".{target.name}.partial" / "done"
    return sum(1 for _ in done.iterdir()) if done.is_dir() else -1


def _segment_volumes(plan: SegmentPlan) -> None:
    """DICOM series and NIfTI files -> NIfTI labels (+ JSON provenance) in --out."""
    import dataclasses

    from tqdm import tqdm

    from .jobs.volumes import segment_volume

    model, spec, post = _load(plan.spec.model_path), plan.spec, plan.post
    for item in plan.volumes:
        gen = segment_volume(
            model, spec, item, plan.out, dataclasses.replace(post, labels=True),
            overwrite=plan.overwrite)
        with tqdm(desc=Path(item).name, unit="slice", leave=False) as bar:
            target = drain(gen, lambda step: _show_slice(bar, *step))
        print(f"fmbff segment: {item} -> {target}", file=sys.stderr)


def _show_slice(bar, done: int, total: int) -> None:
    bar.total = total
    bar.update(done - bar.n)


def _segment_here(plan: SegmentPlan) -> int:
    from tqdm import tqdm

    from .jobs.files import iter_segment_files, iter_segment_large

    jobs, large = plan.jobs, plan.large
    small = [job for job in jobs if not job.large]
    seg = plan.spec.build()
    print(f"fmbff: {len(jobs)} image(s) on {seg.device_label}, tile {seg.tile_size}"
          + (f", {len(large)} large (zarr, chunk {plan.chunk})" if large else ""), file=sys.stderr)
    with tqdm(total=len(jobs), desc="images", unit="img") as bar:
        for _ in iter_segment_files(seg, small, plan.post, plan.overwrite):
            bar.update(1)
        for job in large:
            drain(_chunk_bar(iter_segment_large(seg, job, plan.post, plan.chunk, plan.overwrite,
                                                plan.resume, plan.settings),
                             Path(job.source).name))
            bar.update(1)
    print(f"fmbff: wrote {len(jobs)} mask(s) to {plan.out}", file=sys.stderr)
    return 0


def _chunk_bar(gen, name: str):
    """Pass a Progress generator through, showing a chunks bar for one large image."""
    from tqdm import tqdm

    from .inference.runtime import relay

    def show(progress):
        bar.total, bar.n = progress.total, progress.done
        bar.refresh()
        return progress

    with tqdm(desc=f"{name} chunks", unit="chunk", leave=False) as bar:
        return (yield from relay(gen, show))


def _segment_on_cluster(plan: SegmentPlan) -> int:
    from tqdm import tqdm

    from .jobs.cluster import cpu_threads_per_worker, iter_run_jobs, start_client
    from .jobs.files import WriteOptions

    spec, jobs = plan.spec, plan.jobs
    if plan.workers is not None:
        import dataclasses

        spec = dataclasses.replace(spec, threads=cpu_threads_per_worker(plan.workers))
    normalization = spec.intensity(_load(spec.model_path))
    with start_client(plan.scheduler, plan.workers) as client:
        n_workers = len(client.scheduler_info()["workers"])
        print(f"fmbff: {len(jobs)} image(s) on a dask cluster of {n_workers} worker(s) "
              f"({plan.scheduler or 'local'})", file=sys.stderr)
        gen = iter_run_jobs(client, spec, jobs, plan.post, normalization,
                            WriteOptions(plan.chunk, plan.overwrite, plan.resume, plan.settings))
        with tqdm(desc="tasks", unit="task") as bar:
            drain(gen, lambda step: _show_tasks(bar, *step))
    print(f"fmbff: wrote {len(jobs)} mask(s) to {plan.out}", file=sys.stderr)
    return 0


def _show_tasks(bar, done: int, total: int) -> None:
    bar.total, bar.n = total, done
    bar.refresh()


def _model_name(name: str) -> str:
    from .model.registry import default_model_name

    return default_model_name() if name == "default" else name


def cmd_info(args) -> int:
    from .model.registry import list_models, models_dir
    from .model.summary import describe

    if args.list:
        folder = models_dir(check=True)  # a file named as the folder: said, not listed empty
        models = list_models()
        print(f"models folder: {folder}")
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
    if not args.encoder:
        from .model.checkpoint import model_card

        print(f"{'card':18s} {model_card(_model_name(args.model))}")
    return 0


def cmd_train(args) -> int:
    from .training.ddp import init_from_env, shutdown

    ddp = init_from_env(args.device)  # None unless started by torchrun
    try:
        return _train(args, ddp)
    finally:
        shutdown()


def _train(args, ddp) -> int:
    from .data.datasets import find_pairs, load_pairs
    from .inference.intensity import intensity_setting
    from .model.normalization import default_normalization
    from .training.loop import make_items
    from .training.requests import ModelOut
    from .training.resume import ResumeFile
    from .training.run import build_network, check_output, train_and_save
    from .training.store_training import is_store

    is_main = ddp is None or ddp.is_main

    def say(text):
        if is_main:
            print(f"fmbff train: {text}", file=sys.stderr)

    # Refused before any work: the model path (train_and_save checks it again, after loading),
    # the intensity options and the resume file.
    out = check_output(args.out, args.overwrite, resuming=args.resume)
    _check_intensity(args)
    resume = ResumeFile(out)
    state = resume.load() if args.resume else None
    if is_store(args.data):
        return _train_store(args, ddp, out, resume, state)
    found = find_pairs(args.data, roi=args.roi)
    say(found.describe())
    if ddp is not None:
        say(f"DDP over {ddp.world_size} processes, batch {args.batch_size} each "
            f"({args.batch_size * ddp.world_size} per step in all)")
    images, masks, names = ([], [], []) if found.is_volumes else load_pairs(found)
    ablate = [m for m in ("fmcab", "vitm", "biffm", "aggregate_skips") if getattr(args, f"no_{m}")]
    net, notes = build_network(init=args.init, config=args.config, encoder=args.encoder,
                               imagenet=args.encoder_weights == "imagenet", ablate=ablate,
                               encoder_init=args.encoder_init, seed=args.seed)
    for note in notes:
        say(note)
    # The setting the model stores (a "volume" scope stays a scope); each volume's slices get
    # the range it resolves to for that volume.
    normalization = intensity_setting(default_normalization(net), args.window, args.normalize)
    cfg = _train_config(args)
    items = (_volume_items(found, normalization, is_main) if found.is_volumes
             else make_items(images, masks, normalization, names))
    if state:
        say(f"resuming after epoch {state['epoch']}")
    model_out = ModelOut(
        out, training_data=str(Path(args.data).resolve()), base=args.init,
        overwrite=args.overwrite, half=args.half,
        extra={"layout": found.layout, "encoder_init": args.encoder_init,
               "window": args.window, "normalize": args.normalize,
               **({"roi": list(found.roi)} if found.roi else {}),
               **({"volumes": len({item.group for item in items}), "slices": VOLUME_SLICES}
                  if found.is_volumes else {})})
    gen = train_and_save(net, items, cfg, normalization, model_out,
                         _train_control(args, state, resume, ddp))
    return _report_training(gen, cfg, state, resume, ddp,
                            "slices" if found.is_volumes else "images")


def _report_training(gen, cfg, state, resume, ddp, unit: str) -> int:
    """Run a train-and-save generator with an epoch bar; say its outcome (exit 1: nothing
    saved)."""
    from tqdm import tqdm

    from .training.run import score_summary

    is_main = ddp is None or ddp.is_main
    bar = tqdm(total=cfg.epochs, desc="epochs", unit="epoch", initial=state["epoch"] if state else 0,
               disable=not is_main)
    try:  # closed before an error is printed, so the error is the last line
        outcome = drain(gen, lambda event: _show_epoch(bar, event))
    finally:
        bar.close()
    if not is_main:
        return 0

    def say(text):
        print(f"fmbff train: {text}", file=sys.stderr)

    for note in outcome.notes:
        say(note)
    counts = f"{outcome.n_train} training / {outcome.n_val} held-out {unit}"
    if not outcome.saved:  # nothing learned (or cancelled): no file, and a status to test
        say(f"{outcome.message} ({counts})")
        return 1
    resume.remove()
    say(f"{score_summary(outcome.result)} ({counts}); saved {outcome.path}")
    return 0


def _train_store(args, ddp, out, resume, state) -> int:
    """``fmbff train STORE``: every labelled slice of a corrections store (or of an nnU-Net
    folder with an ignore label), read lazily, each case a group; the store records the model
    as its latest (lineage)."""
    from .data.store import open_store
    from .inference.intensity import intensity_setting
    from .model.normalization import default_normalization
    from .training.requests import ModelOut
    from .training.run import build_network
    from .training.store_training import StoreRun, train_on_store

    store = open_store(args.data)
    if ddp is None or ddp.is_main:
        print(f"fmbff train: corrections store {store.path}: {store.summary()}"
              + (" (nnU-Net data set made elsewhere: read only)" if store.read_only else ""),
              file=sys.stderr)
    ablate = [m for m in ("fmcab", "vitm", "biffm", "aggregate_skips") if getattr(args, f"no_{m}")]
    net, _notes = build_network(init=args.init, config=args.config, encoder=args.encoder,
                                imagenet=args.encoder_weights == "imagenet", ablate=ablate,
                                encoder_init=args.encoder_init, seed=args.seed)
    normalization = intensity_setting(default_normalization(net), args.window, args.normalize)
    cfg = _train_config(args)
    model_out = ModelOut(out, base=args.init, overwrite=args.overwrite, half=args.half,
                         extra={"layout": "corrections store", "encoder_init": args.encoder_init,
                                "window": args.window, "normalize": args.normalize})
    gen = train_on_store(net, store, cfg, normalization, model_out,
                         _train_control(args, state, resume, ddp), StoreRun(hold_out=True))
    return _report_training(gen, cfg, state, resume, ddp, "slices")


def _train_control(args, state, resume, ddp):
    """How ``fmbff train`` runs: stopped after ``--time-limit`` minutes (keeping the best so
    far), resumed from ``state``, checkpointed to ``resume``, under DDP."""
    import time

    from .training.requests import RunControl

    deadline = time.time() + 60 * args.time_limit if args.time_limit else None
    return RunControl(should_stop=(lambda: time.time() > deadline) if deadline else None,
                      resume_state=state, checkpoint_fn=resume.save, ddp=ddp)


def _train_config(args):
    """The TrainConfig of the options given: fine-tuning (``--init``) starts from the measured
    recipe, a new model from the paper's (TrainConfig's defaults)."""
    from .training.loop import TrainConfig, finetune_config

    given = {key: getattr(args, key) for key in ("epochs", "batch_size", "lr", "tile_size",
                                                  "val_fraction", "patience", "steps_per_epoch")
             if getattr(args, key) is not None}
    if args.freeze_encoder:
        given["freeze_encoder"] = True
    if args.no_augment:
        given["augment"] = False
    if args.prompts:
        given["prompts"] = True
    if args.no_prompt_fraction is not None:
        given["no_prompt_fraction"] = args.no_prompt_fraction
    given.update(resize=args.resize, device=args.device, seed=args.seed, num_workers=args.workers)
    return finetune_config(**given) if args.init else TrainConfig(**given)


#: Which slices of a volume ``fmbff train`` learns from (said, and stored in the model).
VOLUME_SLICES = "every slice with lesion, and as many lesion-free ones"


def _volume_items(found, setting, show: bool = True) -> list:
    """Training slices of every volume pair (``datasets.training_slices``), each volume's
    slices one group, their intensity ranges from ``setting`` resolved for that volume."""
    import numpy as np
    from tqdm import tqdm

    from .data.datasets import iter_volume_pairs
    from .training.loop import make_items

    items = []
    with tqdm(total=len(found.pairs), desc="volumes", unit="volume", disable=not show) as bar:
        for pair in iter_volume_pairs(found):
            zs = pair.training_slices()
            # Copies: a view would keep the whole volume in memory.
            items += make_items([np.array(pair.image[z]) for z in zs],
                                [np.array(pair.mask[z]) for z in zs],
                                setting.for_stack(pair.image), [pair.slice_name(z) for z in zs],
                                group=pair.name, require_lesion=False)
            bar.update(1)
    if not any(item.mask.any() for item in items):
        raise CliError(f"{found.pairs[0][1][0].parent}: no mask volume has a lesion voxel "
                       "(lesion = any non-zero voxel); check that these are the masks")
    if show:
        print(f"fmbff train: {len(items)} slices from {len({i.group for i in items})} volumes "
              f"({VOLUME_SLICES})", file=sys.stderr)
    return items


def _show_epoch(bar, event) -> None:
    if event.kind == "start":
        bar.set_postfix_str(f"val Dice {event.val_dice:.3f} (before training)")
    elif event.kind == "epoch":
        bar.update(1)
        bar.set_postfix_str(f"loss {event.loss:.3f} val Dice {event.val_dice:.3f} "
                            f"best {event.best_dice:.3f}")


def cmd_evaluate(args) -> int:
    from .data.datasets import find_pairs, iter_volume_pairs, load_pairs
    from .inference.intensity import intensity_setting
    from .inference.segmenter import Segmenter
    from .jobs.files import as_2d
    from .model.normalization import default_normalization
    from .training.evaluation import evaluate, evaluate_volumes, format_table

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
            def progress(done, total, name):
                bar.set_postfix_str(f"{name} slice {done}/{total}")
                if done == total:
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
        from .training.reports import write_csv

        write_csv(rows, args.csv, args.overwrite)
    return 0


def cmd_propagate(args) -> int:
    from tqdm import tqdm

    from .inference.intensity import intensity_setting
    from .jobs.propagated import read_volume_files, write_propagated
    from .jobs.saved_labels import run_record
    from .model.normalization import default_normalization
    from .training.loop import finetune_config
    from .training.propagate import PropagateRequest, iter_propagate, labelled_slices
    from .training.store_training import StoreCase, start_model

    _check_intensity(args)
    files = read_volume_files(args.volume, args.labels)
    slices = labelled_slices(files.labels, len(files.data), _slice_list(args.slices))
    target, sidecar, model_path = files.targets(args.out)
    for path in (target, sidecar, model_path):
        if path is not None:
            refuse_existing(path, args.overwrite)
    proposed_by = _model_name(args.model)
    store = _open_store_arg(args.store)
    name = start_model(store, proposed_by) if store is not None else proposed_by
    net = _load(name)
    if store is not None:
        print(f"fmbff propagate: corrections store {store.describe()}; training starts from "
              f"'{name}'", file=sys.stderr)
    setting = intensity_setting(default_normalization(net), args.window, args.normalize)
    cfg = finetune_config(device=args.device,
                          **({"epochs": args.epochs} if args.epochs else {}))
    request = PropagateRequest(files.data, files.labels, model_path, slices=slices,
                               normalization=setting, cfg=cfg, base=name,
                               image_name=files.stem, threshold=args.threshold,
                               overwrite=args.overwrite, connected=not args.all_objects,
                               store=None if store is None else StoreCase(
                                   store, _store_source(files, args.volume, proposed_by)))
    with tqdm(desc="propagate", unit="step") as bar:
        result = drain(iter_propagate(net, request), lambda step: _show_propagation(bar, step))
    outcome = result.outcome
    print(f"fmbff propagate: learned from slice(s) {', '.join(map(str, result.slices))}: "
          f"{outcome.message}", file=sys.stderr)
    record = run_record(outcome.path if result.learned else name, base=name,
                        learned=result.learned, slices_labelled=result.slices,
                        threshold=args.threshold, connected_only=not args.all_objects,
                        source=str(args.volume), labels_source=str(args.labels),
                        intensity_setting=setting.to_dict(), package_version=_version())
    written = write_propagated(files, result.labels, args.out, record, args.overwrite)
    print(f"fmbff propagate: {args.volume} -> {written}", file=sys.stderr)
    if store is not None:
        print(f"fmbff propagate: corrections store {store.path}: {store.summary()}",
              file=sys.stderr)
    return 0


def _open_store_arg(value):
    """``--store DIR`` (``--store`` alone: the user's store folder) as the open store for
    grey volumes (``open_store_for``), or None."""
    if value is None:
        return None
    from .data.store import open_store_for

    return open_store_for(value or None, rgb=False)


def _store_source(files, source, proposed_by):
    """What the store records of a propagated volume: the scan's identity and geometry, and
    the model that proposed its labels (a ``CaseSource``)."""
    from .data.medical import source_record
    from .data.store import CaseSource

    if files.volume is None:
        return CaseSource(source_meta={"source": str(source)}, model=proposed_by)
    return CaseSource(source_meta=source_record(files.volume), spacing=files.volume.spacing,
                      model=proposed_by)


def _slice_list(text):
    if text is None:
        return None
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise CliError(f"--slices {text!r}: give slice numbers separated by commas, e.g. "
                       "12,18") from None


def _show_propagation(bar, step) -> None:
    if step[0] == "train" and step[1].kind == "epoch":
        bar.set_description("fine-tuning")
        bar.set_postfix_str(f"epoch {step[1].epoch} loss {step[1].loss:.3f}")
    elif step[0] == "segment":
        bar.set_description("segmenting")
        bar.total, bar.n = step[2], step[1]
        bar.refresh()


def cmd_make_data(args) -> int:
    import numpy as np

    from .data.synthetic import LOOKS

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


def cmd_demo(args) -> int:
    model = None if args.model == "default" else args.model
    if args.headless:
        from .demo import run_headless

        r = run_headless(args.out, args.look, model, args.device, args.overwrite)
        print(f"fmbff demo: {r['look']} sample, model '{r['model']}' on {r['device']}: "
              f"Dice {r['dice']:.3f}, Jaccard {r['jaccard']:.3f} against the ground truth")
        print(f"fmbff demo: overlay (green = prediction, yellow = truth) in {r['overlay']}")
        return 0
    if not _has_display():  # before Qt, which would abort the process without one
        print("fmbff demo: no display (DISPLAY / WAYLAND_DISPLAY unset); run `fmbff demo "
              "--headless` to write the result as image files instead", file=sys.stderr)
        return EXIT_USAGE
    try:
        from ._widgets._demo import open_demo
    except ImportError as err:
        raise CliError(f"the demo window needs napari ({err}); pip install 'napari-fmbff[napari]' "
                       "or use --headless") from None
    open_demo(args.look, model, args.screenshot)
    return 0


def _has_display() -> bool:
    """Whether a window can open: on Linux (and other X11 systems) a display must be named."""
    import os

    if sys.platform in ("darwin", "win32"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
                or os.environ.get("QT_QPA_PLATFORM") in ("offscreen", "minimal", "vnc"))


def _write_sample(job) -> None:
    from .data.datasets import write_dataset
    from .data.synthetic import make_sample

    out, look, size, seed = job
    write_dataset(out, [make_sample(look, size=size, seed=seed)], [f"{look}_{seed:05d}"])



if __name__ == "__main__":
    sys.exit(main())
