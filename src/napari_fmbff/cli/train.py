"""``fmbff train``: train or fine-tune a model on a data folder, a folder of volumes or a
corrections store (under torchrun: DDP), with an epoch bar and a one-line outcome."""

from __future__ import annotations

import sys
from pathlib import Path

from ..inference.progress import Cancel, drain
from ..inference.runtime import DEVICES
from ._common import (
    ROI_HELP,
    CliError,
    _add_intensity_args,
    _check_intensity,
    _fraction,
    _positive_int,
)


def add_parser(sub) -> None:
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


def cmd_train(args) -> int:
    from ..training.ddp import init_from_env, shutdown

    ddp = init_from_env(args.device)  # None unless started by torchrun
    try:
        return _train(args, ddp)
    finally:
        shutdown()


def _train(args, ddp) -> int:
    from ..data.datasets import find_pairs, load_pairs
    from ..inference.intensity import intensity_setting
    from ..model.normalization import default_normalization
    from ..training.loop import make_items
    from ..training.requests import ModelOut
    from ..training.resume import ResumeFile
    from ..training.run import build_network, check_output, train_and_save
    from ..training.store_training import is_store

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

    from ..training.run import score_summary

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
    from ..data.store import open_store
    from ..inference.intensity import intensity_setting
    from ..model.normalization import default_normalization
    from ..training.requests import ModelOut
    from ..training.run import build_network
    from ..training.store_training import StoreRun, train_on_store

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
    from ..training.requests import RunControl

    return RunControl(cancel=Cancel.after(60 * args.time_limit) if args.time_limit else None,
                      resume_state=state, checkpoint_fn=resume.save, ddp=ddp)


def _train_config(args):
    """The TrainConfig of the options given: fine-tuning (``--init``) starts from the measured
    recipe, a new model from the paper's (TrainConfig's defaults)."""
    from ..training.loop import TrainConfig, finetune_config

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

    from ..data.datasets import iter_volume_pairs
    from ..training.loop import make_items

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


def _show_epoch(bar, progress) -> None:
    event = progress.detail
    if event.kind == "start":
        bar.set_postfix_str(f"val Dice {event.val_dice:.3f} (before training)")
    elif event.kind == "epoch":
        bar.update(1)
        bar.set_postfix_str(f"loss {event.loss:.3f} val Dice {event.val_dice:.3f} "
                            f"best {event.best_dice:.3f}")

