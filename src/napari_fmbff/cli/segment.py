"""``fmbff segment``: image files, folders and globs into masks; DICOM / NIfTI volumes into
NIfTI labels; large images chunk by chunk as zarr, here or on a dask cluster; ``--box`` /
``--point`` prompts for the objects of one input."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from .._files import check_folders
from ..inference.postprocess import DEFAULT_THRESHOLD
from ..inference.progress import drain, relay
from ..inference.runtime import DEVICES, PRECISIONS
from ..inference.segmenter import SegmentSettings
from ..inference.tiling import BLENDS
from ._common import (
    CliError,
    _add_intensity_args,
    _add_model_arg,
    _check_intensity,
    _chunk_size,
    _fraction,
    _load,
    _model_name,
    _non_negative_int,
    _positive_int,
    _probability,
)


def add_parser(sub) -> None:
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
    from ..jobs.prompted import ENGINES

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
    from ..data.medical import is_medical, read_volume
    from ..jobs.prompted import (
        answer_prompts,
        choose_engine,
        fallback_note,
        needs_model,
        parse_prompt,
        prompt_network,
        prompt_record,
        write_prompted,
    )

    prompts = ([parse_prompt("box", b) for b in args.box]
               + [parse_prompt("point", p) for p in args.point])
    if len(args.inputs) != 1:
        raise CliError("--box / --point are pixel coordinates of one image: give one input")
    model_name = _model_name(args.model)
    model = prompt_network(model_name) if needs_model(args.box_engine) else None
    engine = choose_engine(args.box_engine, model)
    source = args.inputs[0]
    volume = read_volume(source) if is_medical(source) else None
    data, rgb = (volume.data, False) if volume is not None else _prompt_image(source)
    device = "cpu"
    if engine == "litemedsam":
        from ..inference.runtime import resolve_device

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

    from ..data.image_io import is_stack, read_image

    path = Path(source)
    if not path.is_file():
        raise CliError(f"{source}: no such file")
    if is_stack(path):
        return tifffile.imread(path), False
    image = read_image(path)
    return image, image.ndim == 3


def _plan_segment(args) -> SegmentPlan:
    """Every argument of `fmbff segment` read here, once; a bad one is said before any work."""
    from ..data.medical import is_medical
    from ..inference.postprocess import Postprocess
    from ..inference.runtime import resolve_device
    from ..jobs.files import SegmenterSpec
    from ..model.registry import resolve_model_path

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
    from ..data.image_io import expand_inputs
    from ..jobs.files import FileJob

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

    from ..jobs.volumes import segment_volume

    model, spec, post = _load(plan.spec.model_path), plan.spec, plan.post
    for item in plan.volumes:
        gen = segment_volume(
            model, spec, item, plan.out, dataclasses.replace(post, labels=True),
            overwrite=plan.overwrite)
        with tqdm(desc=Path(item).name, unit="slice", leave=False) as bar:
            target = drain(gen, lambda progress: _show_slice(bar, progress))
        print(f"fmbff segment: {item} -> {target}", file=sys.stderr)


def _show_slice(bar, progress) -> None:
    bar.total = progress.total
    bar.update(progress.done - bar.n)


def _segment_here(plan: SegmentPlan) -> int:
    from tqdm import tqdm

    from ..jobs.files import iter_segment_files, iter_segment_large

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

    def show(progress):
        bar.total, bar.n = progress.total, progress.done
        bar.refresh()
        return progress

    with tqdm(desc=f"{name} chunks", unit="chunk", leave=False) as bar:
        return (yield from relay(gen, show))


def _segment_on_cluster(plan: SegmentPlan) -> int:
    from tqdm import tqdm

    from ..jobs.cluster import cpu_threads_per_worker, iter_run_jobs, start_client
    from ..jobs.files import WriteOptions

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
            drain(gen, lambda progress: _show_tasks(bar, progress))
    print(f"fmbff: wrote {len(jobs)} mask(s) to {plan.out}", file=sys.stderr)
    return 0


def _show_tasks(bar, progress) -> None:
    bar.total, bar.n = progress.total, progress.done
    bar.refresh()

