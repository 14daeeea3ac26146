"""The zarr outputs of one large job: a hidden working folder, resumable, renamed when done.

``masks/.slide.zarr.partial/`` holds ``mask.zarr`` (and ``prob.zarr``), the scratch arrays of
whole-object post-processing, ``job.json`` (the settings the job was started with) and
``done/`` (one empty file per finished chunk, written by whichever process ran it). When every
chunk is done and post-processed, the arrays are renamed to ``slide.zarr`` /
``slide_prob.zarr`` and the folder is removed. If the run stops part-way, the folder stays:
``--resume`` runs only the missing chunks, ``--overwrite`` starts again, and nothing ever
appears under the real names half-written.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from ..inference.chunked import Chunk, PlaneOf, plan_chunks, plan_stack, store_chunk


def _marker(done_dir, chunk: Chunk) -> Path:
    return Path(done_dir) / "_".join(str(i) for i in chunk.plane + (chunk.rows[0], chunk.cols[0]))


def mark_done(done_dir, chunk: Chunk) -> None:
    _marker(done_dir, chunk).touch()


class LargeOutputs:
    """Create (or, with ``resume``, reopen) the working folder of ``job``.

    Chunk tasks write the thresholded 0/1 mask into ``mask_store`` and probabilities into
    ``prob_store`` (paths, so dask workers can open them). Whole-object post-processing
    (labels, min size, holes) runs in ``finish``, chunk by chunk, into the final array.
    """

    def __init__(self, job, post, shape, chunk: int, overwrite: bool = False,
                 resume: bool = False, settings: dict | None = None,
                 scale: tuple[float, ...] | None = None) -> None:
        import zarr

        self.job, self.post, self.shape, self.chunk = job, post, tuple(shape), chunk
        self.settings, self.scale = dict(settings or {}), scale
        self.overwrite = overwrite
        target = Path(job.target)
        self.work = target.parent / f".{target.name}.partial"
        self.done_dir = str(self.work / "done")
        fingerprint = {"source": str(Path(job.source).resolve()), "shape": list(self.shape),
                       "chunk": chunk, "outputs": job.outputs, "post": vars(post).copy(),
                       **self.settings}
        for out in job.outputs:
            if Path(out).exists() and not overwrite:
                raise FileExistsError(f"{out} exists; pass --overwrite to replace it")
        if self.work.exists():
            if resume:
                record = self.work / "job.json"
                try:
                    started = json.loads(record.read_text())
                    if not isinstance(started, dict):
                        raise ValueError("not a JSON object")
                except (OSError, ValueError) as err:
                    raise ValueError(f"{record}: not the record of a run this program started "
                                     f"({err}); pass --overwrite to start again") from None
                if started != json.loads(json.dumps(fingerprint)):
                    changed = sorted(k for k in fingerprint if started.get(k) != fingerprint[k])
                    raise ValueError(
                        f"{self.work} was started with other settings ({', '.join(changed)} "
                        "differ); rerun with those, or pass --overwrite to start again")
                return
            if not overwrite:
                raise FileExistsError(
                    f"{self.work} holds an unfinished run for {job.source}; pass --resume to "
                    "continue it or --overwrite to start again")
            shutil.rmtree(self.work)
        edge = store_chunk(chunk)
        # Chunks write a 0/1 mask; labels (room for many objects) exist only after
        # whole-object post-processing, in final.zarr.
        arrays = {"mask.zarr": "uint8"}
        if job.prob_target:
            arrays["prob.zarr"] = "float32"
        if post.whole_objects:
            arrays.update({"final.zarr": "uint32" if post.labels else "uint8",
                           "ids.zarr": "uint32"})
            if post.fill_holes:
                arrays["filled.zarr"] = "uint8"
        (self.work / "done").mkdir(parents=True)
        layout = (1,) * (len(self.shape) - 2) + (min(edge, self.shape[-2]),
                                                 min(edge, self.shape[-1]))
        for name, dtype in arrays.items():
            zarr.create_array(store=str(self.work / name), shape=self.shape, dtype=dtype,
                              chunks=layout, fill_value=0)
        (self.work / "job.json").write_text(json.dumps(fingerprint, indent=1))

    @property
    def mask_store(self) -> str:
        return str(self.work / "mask.zarr")

    @property
    def prob_store(self) -> str | None:
        return str(self.work / "prob.zarr") if self.job.prob_target else None

    def is_done(self, chunk: Chunk) -> bool:
        return _marker(self.done_dir, chunk).exists()

    def mark_done(self, chunk: Chunk) -> None:
        mark_done(self.done_dir, chunk)

    def missing(self) -> list[Chunk]:
        return [c for c in plan_stack(self.shape, self.chunk) if not self.is_done(c)]

    def finish(self) -> None:
        """Post-process (if asked), rename the arrays into place, remove the folder."""
        missing = self.missing()
        if missing:
            raise RuntimeError(f"{len(missing)} chunk(s) of {self.job.source} are not done")
        final = self.work / "mask.zarr"
        if self.post.whole_objects:
            self._postprocess()
            final = self.work / "final.zarr"
        moves = [(final, Path(self.job.target))]
        if self.job.prob_target:
            moves.append((self.work / "prob.zarr", Path(self.job.prob_target)))
        self._describe(moves)
        for src, dst in moves:
            if dst.exists():
                if not self.overwrite:
                    raise FileExistsError(f"{dst} appeared while segmenting; not replaced")
                shutil.rmtree(dst) if dst.is_dir() else dst.unlink()
            os.replace(src, dst)
        shutil.rmtree(self.work)

    def _describe(self, moves) -> None:
        """Provenance (and the input's pixel size) in each output's attributes."""
        import zarr

        from .. import __version__

        kinds = ["labels" if self.post.labels else "mask", "probability"]
        for (src, _), kind in zip(moves, kinds):
            info = {"kind": kind, "source": self.job.source, "package_version": __version__,
                    "threshold": self.post.threshold, **self.settings}
            if self.scale:  # per axis of the output, and y, x alone
                info["scale"], info["scale_yx"] = list(self.scale), list(self.scale[-2:])
            zarr.open_array(str(src), mode="r+").attrs["napari_fmbff"] = info

    def discard(self) -> None:
        shutil.rmtree(self.work, ignore_errors=True)

    def _postprocess(self) -> None:
        """Whole objects, plane by plane (labels of a stack are numbered per plane)."""
        import itertools

        import zarr

        from ..inference import postprocess

        chunks = plan_chunks(*self.shape[-2:], self.chunk)
        stored = {name: zarr.open_array(str(self.work / name), mode="r+")
                  for name in ("mask.zarr", "final.zarr", "ids.zarr", "filled.zarr")
                  if (self.work / name).exists()}

        def reader(array):
            return lambda c: array[slice(*c.rows), slice(*c.cols)]

        def writer(array):
            def write(c, values):
                array[slice(*c.rows), slice(*c.cols)] = values
            return write

        post, relabel = self.post, self.post.labels or self.post.min_size > 0
        for plane in itertools.product(*(range(n) for n in self.shape[:-2])):
            view = {name: PlaneOf(a, plane) for name, a in stored.items()}
            source, target = view["mask.zarr"], view["final.zarr"]
            if post.fill_holes:
                filled = view["filled.zarr"] if relabel else target
                postprocess.fill_holes(reader(source), writer(filled), view["ids.zarr"], chunks,
                                      self.shape[-2:])
                source = filled
            if relabel:
                postprocess.label(reader(source), writer(target), view["ids.zarr"], chunks,
                                 self.shape[-2:], post.min_size, split=post.labels)
