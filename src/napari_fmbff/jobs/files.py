"""Segmenting files: what one ``fmbff segment`` job is, and running one file or one chunk of it.

The command line runs these in its own process; ``cluster.py`` runs the very same functions on
dask workers. Ordinary images are read whole and written as png / tif (TIFF stacks plane by
plane); large images (zarr, OME-Zarr, TIFFs above ``image_io.LARGE_IMAGE_PIXELS``, or any
image with ``zarr=True``) are read lazily and written as zarr, chunk by chunk.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .._files import naming
from ..inference.chunked import Chunk, segment_chunk
from ..inference.postprocess import Postprocess
from ..inference.segmenter import SegmentSettings

#: Stacks whose planes are smaller than this (px) are refused as a mistaken axis order.
MIN_PLANE_EDGE = 8


@dataclass(frozen=True)
class SegmenterSpec:
    """Everything needed to build the same Segmenter in another process."""

    model_path: str
    settings: SegmentSettings = SegmentSettings()
    threads: int | None = None  # torch CPU threads; None leaves torch's default
    #: The intensity choice, as ``fmbff segment --window / --normalize``.
    window: str | tuple | None = None
    normalize: str = "model"

    def intensity(self, model):
        """The Normalization of the intensity choice for ``model`` (``inference.intensity``)."""
        from ..inference.intensity import intensity_setting
        from ..model.normalization import default_normalization

        return intensity_setting(default_normalization(model), self.window, self.normalize)

    def build(self, device: str | None = None):
        from ..inference.segmenter import Segmenter
        from ..model.checkpoint import load_model

        if self.threads:
            from ..inference.runtime import set_cpu_threads

            set_cpu_threads(self.threads)
        model = load_model(self.model_path)
        return Segmenter(model, self.settings, device=device or self.settings.device,
                         normalization=self.intensity(model))


def result_provenance(segmenter, post: Postprocess, source) -> dict:
    """Everything a written result records about how it was made (one set of keys for PNG,
    TIFF, zarr and NIfTI outputs): the input, the model with its SHA-256, the tiling, the
    intensity normalisation, the post-processing, the package version and the date
    (``inference.provenance``)."""
    from ..inference.provenance import provenance

    return provenance(segmenter.record(), post.record(), source=source)


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
        from ..data.image_io import is_large, is_stack, output_stem

        large = force_zarr or is_large(source)
        stem = output_stem(source)
        if large:
            suffix, prob_suffix = ".zarr", "_prob.zarr"
        else:  # a stack's masks are a multi-page TIFF: PNG holds one plane
            tif = post.labels or is_stack(source)
            suffix, prob_suffix = (".tif" if tif else ".png"), "_prob.tif"
        return cls(str(source), str(out_dir / f"{stem}{suffix}"),
                   str(out_dir / f"{stem}{prob_suffix}") if probabilities else None, large)

    @property
    def outputs(self) -> list[str]:
        return [self.target] + ([self.prob_target] if self.prob_target else [])


def as_2d(image: np.ndarray, name) -> np.ndarray:
    """Singleton axes dropped, checked to be 2D (+ channels); errors name the image."""
    image, rgb = as_planes(image, name)
    if image.ndim - int(rgb) > 2:
        from ..inference.segmenter import image_layout

        try:
            image_layout(image.shape)  # its message: one 2D slice at a time
        except ValueError as err:
            raise ValueError(f"{name}: {err}") from None
    return image


def read_2d(path) -> np.ndarray:
    """An ordinary image file as a checked 2D (+ channels) array."""
    from ..data.image_io import read_image

    return as_2d(read_image(path), path)


def open_source(job: FileJob):
    """The job's input: a lazy view for zarr / TIFF in large jobs, numpy otherwise."""
    from ..data.image_io import is_zarr, open_large

    path = Path(job.source)
    if job.large and (is_zarr(path) or path.suffix.lower() in (".tif", ".tiff")):
        return open_large(path)
    return read_2d(path)


def as_planes(image: np.ndarray, name):
    """(image, rgb): a 2D image (Y, X[, C]), or a stack (..., Y, X[, C]) of them (a CT or
    MR series, a time lapse); ``rgb`` says whether the last axis holds colour channels."""
    from ..inference.segmenter import image_layout

    image = np.squeeze(image) if image.ndim > 3 else image
    if image.ndim == 3 and image.shape[-1] == 2:
        # Grey + alpha (a PNG in "LA" mode): the alpha is dropped, as for RGBA. Never a stack
        # of planes 2 px wide.
        image = image[..., 0]
    if image.ndim == 3 and image.shape[-1] not in (1, 3, 4) and image.shape[-1] < 8:
        # (Y, X, 5): channels no model here takes, not a stack of planes a few px wide.
        raise ValueError(f"{name}: {image.shape[-1]} channels (shape {image.shape}); give a grey, "
                         "RGB or RGBA image, or save one channel of it")
    try:
        image_layout(image.shape)
        return image, image.ndim == 3
    except ValueError as err:
        rgb = image.ndim >= 4 and image.shape[-1] in (3, 4)
        if image.ndim - int(rgb) < 3:
            raise ValueError(f"{name}: {err}") from None
        plane = image.shape[-3:-1] if rgb else image.shape[-2:]
        if min(plane) < MIN_PLANE_EDGE:  # (Y, X, 2, 2): not 1600 planes of 2 x 2 px
            raise ValueError(f"{name}: shape {image.shape} would be a stack of "
                             f"{plane[0]} x {plane[1]} px planes; save it as 2D images "
                             "(Y, X) or (Y, X, RGB), or a stack of them (Z, Y, X)")
        return image, rgb


def read_job(job: FileJob):
    """An ordinary job's input: (image, rgb), a 2D image or a stack (``as_planes``)."""
    from ..data.image_io import read_image

    return as_planes(read_image(job.source), job.source)


def predict_job(segmenter, image, rgb: bool, post: Postprocess, with_probs: bool):
    """(masks, probabilities or None) for a 2D image or, plane by plane, a stack
    (``stacks.iter_segment_stack``: labels of a (Z, Y, X) stack are 3D objects unless
    ``post.per_slice``; a "volume" intensity scope is one range for the whole stack). Labels
    are uint16 (a TIFF's), a mask 0 / 255 uint8 (a PNG's)."""
    from ..inference.progress import drain
    from ..inference.stacks import iter_segment_stack, spatial_shape

    shape = spatial_shape(image.shape, rgb)
    masks = np.zeros(shape, np.uint16 if post.labels else np.uint8)
    probs = np.zeros(shape, np.float32) if with_probs else None
    drain(iter_segment_stack(segmenter, image, rgb, post, out=masks, probs_out=probs))
    if not post.labels:
        masks *= 255
    return masks, probs


def write_job(job: FileJob, masks, probs, overwrite: bool = False,
              provenance: dict | None = None) -> int:
    """Write an ordinary job's results, each with its provenance inside (a PNG text chunk, the
    TIFF's description); returns its foreground pixels."""
    from ..data.image_io import write_image

    write_image(job.target, masks, overwrite=overwrite, provenance=provenance)
    if probs is not None:
        write_image(job.prob_target, probs, overwrite=overwrite,
                    provenance={**(provenance or {}), "kind": "probability"})
    return int((masks > 0).sum())


def segment_file(segmenter, job: FileJob, post: Postprocess, overwrite: bool = False) -> int:
    """An ordinary image, or a stack plane by plane, -> its mask file (and probability tif);
    returns foreground pixels."""
    image, rgb = read_job(job)
    with naming(job.source):
        masks, probs = predict_job(segmenter, image, rgb, post, job.prob_target is not None)
    return write_job(job, masks, probs, overwrite, result_provenance(segmenter, post, job.source))


def iter_segment_files(segmenter, jobs: list[FileJob], post: Postprocess,
                       overwrite: bool = False):
    """Ordinary jobs in this process, decoding the next image and encoding the last results
    in threads while the network runs (for folders of small images, file I/O is otherwise
    most of the time on a GPU). Yields the ``Progress`` of the images ("images") as each is
    written, in order."""
    import concurrent.futures

    from ..inference.progress import Progress

    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as io:
        reads = [io.submit(read_job, job) for job in jobs[:2]]
        writes, written = [], 0
        for k, job in enumerate(jobs):
            image, rgb = reads[k].result()
            if k + 2 < len(jobs):
                reads.append(io.submit(read_job, jobs[k + 2]))
            with naming(job.source):
                masks, probs = predict_job(segmenter, image, rgb, post,
                                           job.prob_target is not None)
            reads[k] = None  # the decoded image can go
            writes.append(io.submit(write_job, job, masks, probs, overwrite,
                                    result_provenance(segmenter, post, job.source)))
            while writes and writes[0].done():
                writes.pop(0).result()  # raises a write error here, in order
                written += 1
                yield Progress("images", written, len(jobs))
        for w in writes:
            w.result()
            written += 1
            yield Progress("images", written, len(jobs))


def segment_chunk_into(segmenter, job: FileJob, chunk: Chunk, intensity_range,
                       threshold: float, mask_store: str, prob_store: str | None,
                       done_dir: str | None = None) -> int:
    """One chunk of a large job, written into the job's working zarr stores by path (what a
    dask worker runs), then marked done for ``--resume``. Returns its foreground pixels."""
    import zarr

    from .large_outputs import mark_done

    mask_out = zarr.open_array(mask_store, mode="r+")
    prob_out = zarr.open_array(prob_store, mode="r+") if prob_store else None
    with naming(job.source):
        foreground = segment_chunk(segmenter, open_source(job), chunk, intensity_range,
                                   threshold, mask_out, prob_out)
    if done_dir:
        mark_done(done_dir, chunk)
    return foreground


@dataclass(frozen=True)
class WriteOptions:
    """How a run writes its outputs: large images in chunks of ``chunk`` pixels a side,
    existing outputs replaced only with ``overwrite``, a stopped large job continued with
    ``resume`` (with the same ``settings``, which its working folder records)."""

    chunk: int
    overwrite: bool = False
    resume: bool = False
    settings: dict | None = None


def open_large_job(job: FileJob, post: Postprocess, chunk: int, overwrite: bool = False,
                   resume: bool = False, settings: dict | None = None):
    """(lazy source, LargeOutputs) of a large job: its working folder created or reopened."""
    from ..inference.chunked import spatial_shape_of
    from .large_outputs import LargeOutputs

    image = open_source(job)
    return image, LargeOutputs(job, post, spatial_shape_of(image), chunk, overwrite, resume,
                               settings, getattr(image, "scale", None))


def iter_segment_large(segmenter, job: FileJob, post: Postprocess, chunk: int,
                       overwrite: bool = False, resume: bool = False,
                       settings: dict | None = None):
    """Generator over the chunks of one large job in this process (yields ``Progress``); returns
    the foreground pixel count of the chunks run now (before post-processing).

    Outputs appear under their names only when complete. If the run stops part-way, the
    finished chunks stay in the job's hidden working folder and ``resume=True`` (with the
    same ``settings``) runs only the rest.
    """
    import zarr

    from ..inference.chunked import iter_segment_chunked

    with naming(job.source):
        image, outputs = open_large_job(job, post, chunk, overwrite, resume, settings)
        prob_out = zarr.open_array(outputs.prob_store, mode="r+") if outputs.prob_store else None
        foreground = yield from iter_segment_chunked(
            segmenter, image, zarr.open_array(outputs.mask_store, mode="r+"), prob_out,
            chunk, post.threshold, skip=outputs.is_done, after=outputs.mark_done)
        outputs.finish(result_provenance(segmenter, post, job.source))
    return foreground
