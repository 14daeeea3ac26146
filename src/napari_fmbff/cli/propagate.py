"""``fmbff propagate``: fine-tune on the labelled slices of a volume, segment the others and
write the whole labels volume (optionally through a corrections store)."""

from __future__ import annotations

import sys

from .._files import refuse_existing
from ..inference.postprocess import DEFAULT_THRESHOLD
from ..inference.progress import drain
from ..inference.runtime import DEVICES
from ..training.config import ENCODERS, MEDICAL_BASE, propagate_encoder
from ._common import (
    CliError,
    _add_intensity_args,
    _add_model_arg,
    _check_intensity,
    _load,
    _model_name,
    _positive_int,
    _probability,
    _version,
    one_line,
)


def add_parser(sub) -> None:
    prop = sub.add_parser(
        "propagate", help="learn from the labelled slices of a volume, fill in the others",
        description="Learn from the slices of PARTIAL that hold labels (or --slices): new "
                    "FM-BFF-Net layers on LiteMedSAM's encoder, or --model fine-tuned "
                    "(--encoder); then segment every other slice of VOLUME. Writes the whole "
                    "labels volume in --out with the input's name and format (NIfTI with the scan's affine "
                    "and a JSON record for NIfTI / DICOM, a TIFF for a TIFF stack), the labelled "
                    "slices copied verbatim and a lesion keeping the id you gave it, and the "
                    "model that learned beside it (STEM_propagated.safetensors).")
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
    prop.add_argument("--no-redraw", action="store_true",
                      help="keep the model's own masks on the other slices (default: each "
                           "object the model adds is redrawn by LiteMedSAM from its box, "
                           "measured better on real CT / MR; also turns --no-ends on)")
    prop.add_argument("--no-ends", action="store_true",
                      help="stop each lesion where the model's masks end (default: LiteMedSAM "
                           "carries it up to 2 slices past each end while the new mask is "
                           "the same lesion by its area, place and intensity)")
    prop.add_argument("--encoder", default=None, choices=ENCODERS,
                      help="what the model learns on: 'litemedsam' trains new FM-BFF-Net layers "
                           "on LiteMedSAM's frozen medical-pretrained encoder (--model then "
                           "answers only if they learn nothing; with --store they answer and "
                           "the store's model learns the case beside them); 'model' fine-tunes "
                           "--model (--epochs). Default: 'litemedsam'; 'model' with a --model "
                           "named (docs/models.md, \"Propagate's default\")")
    prop.add_argument("--device", default="auto", choices=DEVICES)
    _add_intensity_args(prop)
    prop.add_argument("--store", nargs="?", const="", default=None, metavar="DIR",
                      help="add the labelled slices to this corrections store folder (its grey "
                           "store) and train the store's model on all of it, from --model "
                           "(saved as <name>_propagated-store.safetensors beside the answer's "
                           "model with the default encoder; --store alone: the user's store, "
                           "$FMBFF_STORE_DIR or the user data folder)")
    prop.add_argument("--overwrite", action="store_true", help="replace existing outputs")


def cmd_propagate(args) -> int:
    from ..inference.intensity import intensity_setting
    from ..jobs.propagated import read_volume_files
    from ..model.normalization import default_normalization
    from ..training.loop import propagate_config
    from ..training.propagate import (
        PropagateRequest,
        iter_propagate,
        labelled_slices,
        store_model_beside,
    )
    from ..training.store_training import StoreCase, start_model

    _check_intensity(args)
    encoder = propagate_encoder(args.encoder, model_chosen=args.model != "default")
    if encoder == "litemedsam" and args.epochs and args.store is None:
        raise CliError("--epochs sets the fine-tune of --model, and Propagate learns on "
                       "LiteMedSAM's encoder: add --encoder model, or drop --epochs")
    files = read_volume_files(args.volume, args.labels)
    slices = labelled_slices(files.labels, len(files.data), _slice_list(args.slices))
    target, sidecar, model_path = files.targets(args.out)
    both = encoder == "litemedsam" and args.store is not None  # the store's model beside
    for path in (target, sidecar, model_path,
                 *([store_model_beside(model_path)] if both else [])):
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
    cfg = propagate_config(device=args.device,
                           **({"epochs": args.epochs} if args.epochs else {}))
    store_base = name  # what the store's model trains from
    if encoder == "litemedsam":
        name = MEDICAL_BASE
    request = PropagateRequest(files.data, files.labels, model_path, slices=slices,
                               normalization=setting, cfg=cfg,
                               base=store_base if both else name, encoder=encoder,
                               image_name=files.stem, threshold=args.threshold,
                               overwrite=args.overwrite, connected=not args.all_objects,
                               redraw=not args.no_redraw, ends=not args.no_ends,
                               store=None if store is None else StoreCase(
                                   store, _store_source(files, args.volume, proposed_by)))
    result, saved = _run_and_save(iter_propagate(net, request), files, args,
                                  (name, store_base), setting)
    for note in result.notes[saved["notes"]:]:  # the store's, after the answer
        print(f"fmbff propagate: {note}", file=sys.stderr)
    if store is not None:
        print(f"fmbff propagate: corrections store {store.path}: {store.summary()}",
              file=sys.stderr)
    return 0


def _run_and_save(run, files, args, names, setting):
    """(result, {"labels": the file written, "notes": the notes said with it}): ``run``
    (``iter_propagate``) drained under a progress bar, its answer said and written once
    (``_write_answer``): with --store as soon as it is there, so that a failed or interrupted
    store part takes nothing away, else at the end."""
    from tqdm import tqdm

    saved = {}

    def save(result):
        if "labels" not in saved:
            saved["notes"] = len(result.notes)
            saved["labels"] = _write_answer(files, result, args, names, setting)

    def show(step):
        _show_propagation(bar, step)
        if step.stage == "answer":
            save(step.detail)

    with tqdm(desc="propagate", unit="step") as bar:
        try:
            result = drain(run, show)
        except BaseException as err:
            if "labels" not in saved:
                raise
            print(f"fmbff propagate: the answer is saved in {saved['labels']}; the store's "
                  "part did not finish, and the store is as it was", file=sys.stderr)
            if isinstance(err, Exception):
                raise CliError(f"the corrections store's part failed: {one_line(err)}") from err
            raise
    save(result)
    return result, saved


def _write_answer(files, result, args, names, setting):
    """Say what Propagate learned and write its labels with their record (the model that
    answered, the settings, the sources); ``names``: (the base the answer names, the model
    the store's part starts from). Returns the labels file."""
    from ..jobs.propagated import write_propagated
    from ..jobs.saved_labels import run_record

    name, store_base = names
    outcome = result.outcome
    print(f"fmbff propagate: learned from slice(s) {', '.join(map(str, result.slices))}: "
          f"{outcome.message}", file=sys.stderr)
    for note in result.notes:
        print(f"fmbff propagate: {note}", file=sys.stderr)
    if result.redrawn:
        print(f"fmbff propagate: LiteMedSAM redrew the lesion on {len(result.redrawn)} "
              "slice(s)", file=sys.stderr)
    answered = outcome.path if result.learned else store_base  # the model loaded answered
    record = run_record(answered, base=name,
                        learned=result.learned, slices_labelled=result.slices,
                        threshold=args.threshold, connected_only=not args.all_objects,
                        redrawn_by_litemedsam=result.redrawn,
                        carried_past_ends_by_litemedsam=result.carried,
                        emptied_by_litemedsam=result.dropped,
                        source=str(args.volume), labels_source=str(args.labels),
                        intensity_setting=setting.to_dict(), package_version=_version())
    written = write_propagated(files, result.labels, args.out, record, args.overwrite)
    print(f"fmbff propagate: {args.volume} -> {written}", file=sys.stderr)
    return written


def _open_store_arg(value):
    """``--store DIR`` (``--store`` alone: the user's store folder) as the open store for
    grey volumes (``open_store_for``), or None."""
    if value is None:
        return None
    from ..data.store import open_store_for

    return open_store_for(value or None, rgb=False)


def _store_source(files, source, proposed_by):
    """What the store records of a propagated volume: the scan's identity and geometry, and
    the model that proposed its labels (a ``CaseSource``)."""
    from ..data.medical import source_record
    from ..data.store import CaseSource

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


def _show_propagation(bar, progress) -> None:
    if progress.stage == "train" and progress.detail.kind == "epoch":
        bar.set_description("fine-tuning")
        bar.set_postfix_str(f"epoch {progress.detail.epoch} loss {progress.detail.loss:.3f}")
    elif progress.stage == "train" and progress.detail.kind == "step" and \
            progress.detail.loss == progress.detail.loss:  # a step's loss (NaN: none)
        bar.set_description("fine-tuning")
        bar.set_postfix_str(f"step {progress.detail.step}/{progress.detail.steps} loss "
                            f"{progress.detail.loss:.3f}")
    elif progress.stage == "answer":  # with --store: the store's model learns the case next
        bar.set_description("answered; the store's model learns the case")
    elif progress.stage == "slices":
        bar.set_description(progress.detail if isinstance(progress.detail, str)
                            else "segmenting")
        bar.total, bar.n = progress.total, progress.done
        bar.refresh()

