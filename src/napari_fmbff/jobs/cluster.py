"""Spreading ``fmbff segment`` over dask.distributed workers.

Ordinary images are one task each; large images are one task per chunk (``chunked.py``), and
each worker writes its chunks straight into the output zarr, so the client never holds pixels.
Each worker process builds the model once and keeps it; where a machine has several GPUs,
worker k uses GPU k mod n. Inputs, outputs and the model file must be on storage every worker
can read (a shared file system; on one machine that is simply the local disk).
"""

from __future__ import annotations

import logging
import os

from ..inference.chunked import intensity_ranges
from ..inference.postprocess import Postprocess
from ..inference.progress import Progress
from .files import (
    FileJob,
    SegmenterSpec,
    WriteOptions,
    open_large_job,
    result_provenance,
    segment_chunk_into,
    segment_file,
)

#: Segmenters built in this worker process, by spec: the model is loaded once per worker.
_BUILT: dict = {}


def start_client(scheduler: str | None = None, workers: int | None = None):
    """A client of the cluster at ``scheduler`` (host:port), or of a new local cluster of
    ``workers`` processes with one thread each (closed with the client)."""
    try:
        from distributed import Client
    except ImportError:
        raise ValueError('--workers / --scheduler need dask.distributed: '
                         'pip install "napari-fmbff[cluster]"') from None

    if scheduler:
        try:
            return Client(scheduler, timeout="30s")
        except OSError as err:
            raise ValueError(f"--scheduler {scheduler}: cannot reach a dask scheduler there "
                             f"({err}); start one with `dask scheduler` or use --workers N") from err
    return Client(n_workers=workers, threads_per_worker=1, processes=True,
                  dashboard_address=None, silence_logs=logging.WARNING)


def cpu_threads_per_worker(workers: int) -> int:
    """Torch threads for each of ``workers`` local processes, so they do not oversubscribe."""
    return max(1, (os.cpu_count() or 1) // max(1, workers))


def _worker_segmenter(spec: SegmenterSpec):
    seg = _BUILT.get(spec)
    if seg is None:
        seg = _BUILT[spec] = spec.build(device=_worker_device(spec.settings.device))
    return seg


def _worker_device(device: str) -> str:
    """One GPU per worker where a machine has several: worker k takes GPU k mod n."""
    import torch

    count = torch.cuda.device_count() if device in ("auto", "cuda") else 0
    if count < 2:
        return device
    from distributed import get_worker

    name = get_worker().name
    index = name if isinstance(name, int) else sum(map(ord, str(name)))
    return f"cuda:{index % count}"


def run_file(spec: SegmenterSpec, job: FileJob, post: Postprocess, overwrite: bool) -> int:
    return segment_file(_worker_segmenter(spec), job, post, overwrite)


def run_chunk(spec: SegmenterSpec, job: FileJob, chunk, intensity_range, threshold: float,
              mask_store: str, prob_store: str | None, done_dir: str) -> int:
    return segment_chunk_into(_worker_segmenter(spec), job, chunk, intensity_range, threshold,
                              mask_store, prob_store, done_dir)


def job_provenance(spec: SegmenterSpec, post: Postprocess, source: str) -> dict:
    """What a large job's zarr outputs record about how they were made (the keys every other
    output has: ``result_provenance``), from the segmenter a worker runs."""
    return result_provenance(_worker_segmenter(spec), post, source)


def _awaited(future, source: str):
    """A task's result; its error as a ValueError naming the input."""
    try:
        return future.result()
    except Exception as err:
        raise ValueError(f"{source}: {type(err).__name__}: {err}") from err


def iter_run_jobs(client, spec: SegmenterSpec, jobs: list[FileJob], post: Postprocess,
                  normalization, writes: WriteOptions):
    """Submit every job (large ones as their missing chunks); yields the ``Progress`` of the
    tasks ("tasks") as they finish; returns {source: foreground pixels}. On the first failure
    the rest is cancelled and a ValueError names the input; finished chunks stay for
    ``writes.resume``."""
    from distributed import as_completed

    chunk, overwrite, resume, settings = (writes.chunk, writes.overwrite, writes.resume,
                                          writes.settings)

    tasks, outputs, remaining, foreground, provenance = {}, {}, {}, {}, {}
    try:
        for job in jobs:
            foreground[job.source] = 0
            if not job.large:
                fut = client.submit(run_file, spec, job, post, overwrite, pure=False)
                tasks[fut] = job
                continue
            # Lazy: only the shape and intensity samples are read here.
            image, outs = open_large_job(job, post, chunk, overwrite, resume, settings)
            # Provenance from the segmenter a worker builds (model file, SHA-256, device...).
            provenance[job.source] = client.submit(job_provenance, spec, post, job.source,
                                                   pure=False)
            chunks = outs.missing()
            if not chunks:  # a resumed job whose chunks were all done
                outs.finish(_awaited(provenance.pop(job.source), job.source))
                continue
            outputs[job.source], remaining[job.source] = outs, len(chunks)
            # Each plane's own range, or one for the stack ("volume" scope).
            range_of = intensity_ranges(normalization, image)
            for c in chunks:
                fut = client.submit(run_chunk, spec, job, c, range_of(c.plane), post.threshold,
                                    outs.mask_store, outs.prob_store, outs.done_dir,
                                    pure=False)
                tasks[fut] = job
        yield Progress("tasks", 0, len(tasks))
        for done, fut in enumerate(as_completed(list(tasks)), 1):
            job = tasks[fut]
            foreground[job.source] += _awaited(fut, job.source)
            if job.source in remaining:
                remaining[job.source] -= 1
                if remaining[job.source] == 0:  # labels / holes need every chunk: here
                    outputs.pop(job.source).finish(
                        _awaited(provenance.pop(job.source), job.source))
            yield Progress("tasks", done, len(tasks))
    finally:
        unfinished = [f for f in [*tasks, *provenance.values()] if not f.done()]
        if unfinished:
            client.cancel(unfinished)
    return foreground
