"""Segmenting files: what one ``fmbff segment`` job is, and running one file or one chunk of it.

The command line runs these in its own process; ``cluster.py`` runs the very same functions on
dask workers. Ordinary images are read whole and written as png / tif; large images (zarr,
OME-Zarr, TIFFs above ``image_io.LARGE_IMAGE_PIXELS``, or any image with ``zarr=True``) are
read lazily and written as zarr, chunk by chunk.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .chunked import Chunk, segment_chunk


@dataclass(frozen=True)
class SegmenterSpec:
    """Everything needed to build the same Segmenter in another process."""

    model_path: str
    device: str = "auto"
    tile_size: int | None = None
    overlap: float = 0.25
    batch_size: int = 8
    tta: bool = False
    threads: int | None = None  # torch CPU threads; None leaves torch's default
    compile: bool = False

    def build(self, device: str | None = None):
        from .inference import Segmenter

        if self.threads:
            import torch

            torch.set_num_threads(self.threads)
        return Segmenter(self.model_path, device=device or self.device, tile_size=self.tile_size,
                         overlap=self.overlap, batch_size=self.batch_size, tta=self.tta,
                         compile=self.compile)


@dataclass(frozen=True)
class Postprocess:
    threshold: float = 0.5
    min_size: int = 0
    fill_holes: bool = False
    labels: bool = False        # connected-component labels (uint16 tif) instead of 0/255 png

    @property
    def whole_image(self) -> bool:
        """Whether this looks at whole objects, across chunk borders (``components.py``)."""
        return self.labels or self.min_size > 0 or self.fill_holes


@dataclass(frozen=True)
class FileJob:
    """One input and where its results go."""

    source: str
    target: str
    prob_target: str | None
    large: bool                 # lazy input, chunked zarr output

    @classmethod
    def plan(cls, source: Path, out_dir: Path, post: Postprocess, probabilities: bool,
             force_zarr: bool = False) -> "FileJob":
        from .image_io import is_large

        large = force_zarr or is_large(source)
        stem = source.name[: -len(".ome.zarr")] if source.name.endswith(".ome.zarr") else source.stem
        if large:
            suffix, prob_suffix = ".zarr", "_prob.zarr"
        else:
            suffix, prob_suffix = (".tif" if post.labels else ".png"), "_prob.tif"
        return cls(str(source), str(out_dir / f"{stem}{suffix}"),
                   str(out_dir / f"{stem}{prob_suffix}") if probabilities else None, large)

    @property
    def outputs(self) -> list[str]:
        return [self.target] + ([self.prob_target] if self.prob_target else [])


def as_2d(image: np.ndarray, name) -> np.ndarray:
    """Singleton axes dropped, checked to be 2D (+ channels); errors name the image."""
    from .inference import image_layout

    image = np.squeeze(image) if image.ndim > 3 else image
    try:
        image_layout(image.shape)
    except ValueError as err:
        raise ValueError(f"{name}: {err}") from None
    return image


def read_2d(path) -> np.ndarray:
    """An ordinary image file as a checked 2D (+ channels) array."""
    from .image_io import read_image

    return as_2d(read_image(path), path)


def open_source(job: FileJob):
    """The job's input: a lazy view for zarr / TIFF in large jobs, numpy otherwise."""
    from .image_io import is_zarr, open_large

    path = Path(job.source)
    if job.large and (is_zarr(path) or path.suffix.lower() in (".tif", ".tiff")):
        return open_large(path)
    return read_2d(path)


def segment_file(segmenter, job: FileJob, post: Postprocess, overwrite: bool = False) -> int:
    """An ordinary image -> its mask file (and probability tif); returns foreground pixels."""
    from .image_io import write_image
    from .inference import labels_from_proba

    prob = segmenter.predict_proba(read_2d(job.source))
    labels = labels_from_proba(prob, post.threshold, post.min_size, post.fill_holes,
                               split=post.labels)
    if post.labels:
        write_image(job.target, labels.astype("uint16"), overwrite=overwrite)
    else:
        write_image(job.target, ((labels > 0) * 255).astype("uint8"), overwrite=overwrite)
    if job.prob_target:
        write_image(job.prob_target, prob, overwrite=overwrite)
    return int((labels > 0).sum())


def segment_chunk_into(segmenter, job: FileJob, chunk: Chunk, intensity_range,
                       threshold: float, mask_store: str, prob_store: str | None) -> int:
    """One chunk of a large job, written into the (temporary) zarr stores by path: what a dask
    worker runs. Returns the chunk's foreground pixels."""
    import zarr

    mask_out = zarr.open_array(mask_store, mode="r+")
    prob_out = zarr.open_array(prob_store, mode="r+") if prob_store else None
    return segment_chunk(segmenter, open_source(job), chunk, intensity_range, threshold,
                         mask_out, prob_out)


class LargeOutputs:
    """The zarr outputs of one large job while it runs.

    Chunk tasks write the thresholded mask into ``mask_store`` (a path, so dask workers can
    open it): the output itself, or, when the job has whole-mask post-processing (labels,
    min size, hole filling), a scratch array that ``finish`` post-processes chunk by chunk
    into the output. Outputs live under temporary names until ``finish`` renames them.
    """

    def __init__(self, job: FileJob, post: Postprocess, shape, chunk: int,
                 overwrite: bool = False) -> None:
        import tempfile

        import zarr

        from .chunked import store_chunk
        from .image_io import ZarrOutput

        self.job, self.post, self.shape, self.chunk = job, post, tuple(shape), chunk
        edge = store_chunk(chunk)
        self.outs, self.scratch = [], None
        try:
            self.outs.append(ZarrOutput(job.target, self.shape,
                                        "uint32" if post.labels else "uint8", (edge, edge),
                                        overwrite))
            if job.prob_target:
                self.outs.append(ZarrOutput(job.prob_target, self.shape, "float32",
                                            (edge, edge), overwrite))
            if post.whole_image:
                self.scratch = Path(tempfile.mkdtemp(prefix=".fmbff-scratch-",
                                                     dir=Path(job.target).parent))
                zarr.create_array(store=str(self.scratch / "mask.zarr"), shape=self.shape,
                                  dtype="uint8", chunks=(edge, edge), fill_value=0)
        except BaseException:
            self.discard()
            raise

    @property
    def mask_store(self) -> str:
        return str(self.scratch / "mask.zarr") if self.scratch else str(self.outs[0].tmp)

    @property
    def prob_store(self) -> str | None:
        return str(self.outs[1].tmp) if len(self.outs) > 1 else None

    def finish(self) -> None:
        """Post-process (if asked) and rename every output into place."""
        if self.scratch is not None:
            self._postprocess()
        for out in self.outs:
            out.commit()
        self.discard()

    def discard(self) -> None:
        import shutil

        for out in self.outs:
            if out.tmp.exists():
                out.discard()
        if self.scratch is not None:
            shutil.rmtree(self.scratch, ignore_errors=True)

    def _postprocess(self) -> None:
        import zarr

        from . import components
        from .chunked import plan_chunks

        chunks = plan_chunks(*self.shape, self.chunk)
        edge = self.outs[0].array.chunks
        ids = zarr.create_array(store=str(self.scratch / "ids.zarr"), shape=self.shape,
                                dtype="uint32", chunks=edge, fill_value=0)
        target, post = self.outs[0].array, self.post

        def reader(array):
            return lambda c: array[slice(*c.rows), slice(*c.cols)]

        def writer(array):
            def write(c, values):
                array[slice(*c.rows), slice(*c.cols)] = values
            return write

        source = zarr.open_array(self.mask_store, mode="r+")
        relabel = post.labels or post.min_size > 0
        if post.fill_holes:
            filled = target if not relabel else zarr.create_array(
                store=str(self.scratch / "filled.zarr"), shape=self.shape, dtype="uint8",
                chunks=edge, fill_value=0)
            components.fill_holes(reader(source), writer(filled), ids, chunks, self.shape)
            source = filled
        if relabel:
            components.label(reader(source), writer(target), ids, chunks, self.shape,
                             post.min_size, split=post.labels)


def iter_segment_large(segmenter, job: FileJob, post: Postprocess, chunk: int,
                       overwrite: bool = False):
    """Generator over the chunks of one large job in this process (yields Progress); returns
    the foreground pixel count before post-processing. Outputs appear under their names only
    when complete."""
    import zarr

    from .chunked import iter_segment_chunked

    image = open_source(job)
    outputs = LargeOutputs(job, post, tuple(image.shape[:2]), chunk, overwrite)
    try:
        prob_out = zarr.open_array(outputs.prob_store, mode="r+") if outputs.prob_store else None
        foreground = yield from iter_segment_chunked(
            segmenter, image, zarr.open_array(outputs.mask_store, mode="r+"), prob_out,
            chunk, post.threshold)
        outputs.finish()
    except BaseException:
        outputs.discard()
        raise
    return foreground
