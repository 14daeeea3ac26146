"""The zarr outputs of one large job: OME-Zarr images, resumable, renamed into place when done.

``masks/.slide.zarr.partial/`` holds ``mask.zarr`` (and ``prob.zarr``), the scratch arrays of
whole-object post-processing, ``job.json`` (the settings the job was started with) and
``done/`` (one empty file per finished chunk, written by whichever process ran it). When every
chunk is done and post-processed, each result becomes an OME-Zarr image (built in ``staged/``) (NGFF 0.5, zarr v3):
a group whose ``zarr.json`` holds ``ome.multiscales`` (one level, array ``0``, the source's
axes, pixel size and offset) and, for the mask or labels, ``ome.image-label``; the provenance
sits beside it under ``napari_fmbff``. The groups are renamed to ``slide.zarr`` /
``slide_prob.zarr`` and the folder is removed. If the run stops part-way, the folder stays:
``--resume`` runs only the missing chunks, ``--overwrite`` starts again, and nothing ever
appears under the real names half-written.

NGFF 0.5 rather than 0.4: 0.5 is the version written for zarr v3 stores (0.4 is defined on
zarr v2 ``.zattrs``), and napari-ome-zarr (its zarr v3 releases; checked with 0.10), ome-zarr-py
(>= 0.10) and ``image_io.open_large`` read its ``ome`` namespace; napari's builtin zarr reader ignores the
metadata either way and opens the arrays.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

from ..data import keys
from ..inference.chunked import Chunk, PlaneOf, plan_chunks, plan_stack, store_chunk


def _marker(done_dir, chunk: Chunk) -> Path:
    return Path(done_dir) / "_".join(str(i) for i in chunk.plane + (chunk.rows[0], chunk.cols[0]))


def mark_done(done_dir, chunk: Chunk) -> None:
    _marker(done_dir, chunk).touch()


#: For tests of interrupted jobs only: with this variable set to N, a job run in this process
#: stops still (until it is signalled) once N chunks are done, so that a signal always arrives
#: while the job is running, however fast the machine is.
HOLD_AFTER_CHUNKS = "FMBFF_TEST_HOLD_AFTER_CHUNKS"


def _hold_if_asked(done_dir) -> None:
    hold = os.environ.get(HOLD_AFTER_CHUNKS, "")
    if hold.isdigit() and len(os.listdir(done_dir)) >= int(hold):
        while True:  # ends only by the signal the test sends
            time.sleep(0.05)


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
        self.settings = dict(settings or {})
        self.scale = tuple(scale) if scale is not None else None
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
        _hold_if_asked(self.done_dir)

    def missing(self) -> list[Chunk]:
        return [c for c in plan_stack(self.shape, self.chunk) if not self.is_done(c)]

    def finish(self, provenance: dict | None = None) -> None:
        """Post-process (if asked), make each result an OME-Zarr image, rename them into place,
        remove the folder. ``provenance``: ``files.result_provenance`` of the segmenter that ran
        the job; without it, the same keys as far as the job's settings tell them
        (``_provenance``)."""
        missing = self.missing()
        if missing:
            raise RuntimeError(f"{len(missing)} chunk(s) of {self.job.source} are not done")
        self._recover()
        final = self.work / "mask.zarr"
        if self.post.whole_objects:
            self._postprocess()
            final = self.work / "final.zarr"
        results = [(final, Path(self.job.target), "labels" if self.post.labels else "mask")]
        if self.job.prob_target:
            results.append((self.work / "prob.zarr", Path(self.job.prob_target), "probability"))
        info = dict(provenance) if provenance else self._provenance()
        geometry = ngff_geometry(self.job.source, self.shape, self.scale)
        staged = [(self._stage(src, dst, kind, info, geometry), dst) for src, dst, kind in results]
        for src, dst in staged:
            if dst.exists():
                if not self.overwrite:
                    raise FileExistsError(f"{dst} appeared while segmenting; not replaced")
                shutil.rmtree(dst) if dst.is_dir() else dst.unlink()
            os.replace(src, dst)
        shutil.rmtree(self.work)

    def _provenance(self) -> dict:
        """``result_provenance``'s keys, as far as the job's settings tell them (no segmenter
        here: the device, blend and intensity setting are left out)."""
        from ..inference.provenance import model_file_record, provenance

        settings = dict(self.settings)
        model = settings.pop("model", None)
        return provenance(settings, self.post.record(), source=self.job.source,
                          model=model_file_record(model) if model else None)

    def _stage(self, array: Path, target: Path, kind: str, info: dict, geometry: dict) -> Path:
        """The OME-Zarr group of one result, built in the working folder: ``array`` moves in as
        its level ``0``. Returns the group's folder."""
        import zarr

        group = self.work / "staged" / target.name
        ome = ngff_metadata(geometry, target, kind, self.job.source)
        zarr.create_group(store=str(group), zarr_format=3, overwrite=True,
                          attributes={"ome": ome, keys.PROVENANCE: {**info, "kind": kind}})
        name_dimensions(array, [axis["name"] for axis in geometry["axes"]])
        os.replace(array, group / "0")
        return group

    def _recover(self) -> None:
        """A finish that stopped after moving an array into its staged group: move it back."""
        final = "final.zarr" if self.post.whole_objects else "mask.zarr"
        scratch = {Path(self.job.target).name: self.work / final}
        if self.job.prob_target:
            scratch[Path(self.job.prob_target).name] = self.work / "prob.zarr"
        for name, array in scratch.items():
            staged = self.work / "staged" / name
            if (staged / "0").is_dir() and not array.exists():
                os.replace(staged / "0", array)
            if staged.exists():
                shutil.rmtree(staged)

    def discard(self) -> None:
        shutil.rmtree(self.work, ignore_errors=True)

    def _postprocess(self) -> None:
        """Whole objects, chunk by chunk, under the same ``Postprocess`` rules as
        ``postprocess.labels_from_planes``: holes are filled plane by plane; labels of a
        (Z, Y, X) stack are 3D objects (6-connected, ids unique in the stack, ``min_size`` in
        voxels) unless ``post.per_slice`` (``Postprocess.joins``); stacks with more axes (t, z)
        are numbered plane by plane."""
        import itertools

        import zarr

        from ..inference import postprocess

        chunks = plan_chunks(*self.shape[-2:], self.chunk)
        stored = {name: zarr.open_array(str(self.work / name), mode="r+")
                  for name in ("mask.zarr", "final.zarr", "ids.zarr", "filled.zarr")
                  if (self.work / name).exists()}

        def reader(array):
            return lambda c: array[c.region]

        def writer(array):
            def write(c, values):
                array[c.region] = values
            return write

        post, relabel = self.post, self.post.labels or self.post.min_size > 0
        volume = post.joins(len(self.shape) - 2)
        for plane in itertools.product(*(range(n) for n in self.shape[:-2])):
            view = {name: PlaneOf(a, plane) for name, a in stored.items()}
            source, target = view["mask.zarr"], view["final.zarr"]
            if post.fill_holes:
                filled = view["filled.zarr"] if relabel else target
                postprocess.fill_holes(reader(source), writer(filled), view["ids.zarr"], chunks,
                                      self.shape[-2:])
                source = filled
            if relabel and not volume:
                postprocess.label(reader(source), writer(target), view["ids.zarr"], chunks,
                                 self.shape[-2:], post.min_size, split=post.labels)
        if volume:  # one sweep over the whole stack, joining planes
            source = stored["filled.zarr" if post.fill_holes else "mask.zarr"]
            postprocess.label(reader(source), writer(stored["final.zarr"]), stored["ids.zarr"],
                              plan_stack(self.shape, self.chunk), self.shape, post.min_size)


# ---- OME-Zarr (NGFF 0.5) metadata ------------------------------------------------------------

NGFF_VERSION = "0.5"
AXIS_TYPES = {"z": "space", "y": "space", "x": "space", "t": "time", "c": "channel"}
#: The lesion's colour in a 0/1 mask (label 1), background transparent.
MASK_COLORS = [{"label-value": 0, "rgba": [0, 0, 0, 0]},
               {"label-value": 1, "rgba": [255, 64, 32, 255]}]


def ngff_geometry(source, shape, scale=None) -> dict:
    """Axes (name, type, unit), pixel size and offset of an output of ``shape`` (stack
    axes..., y, x) of ``source``: the axis names the input's lazy view has (OME-Zarr axes, a
    TIFF's axes, or guessed), units and translation from an OME-Zarr input's metadata,
    ``scale`` where given (else the input's, else 1 per pixel)."""
    ndim = len(shape)
    names, meta = None, {}  # meta: an OME-Zarr input's offsets and units (AxesView.ome)
    try:
        from ..data.image_io import open_large

        view = open_large(source)
        names = view.free + ["y", "x"]
        meta = view.ome or {}
        if scale is None:
            scale = view.scale
    except (ValueError, OSError):  # not a lazily readable input (e.g. a PNG made zarr)
        pass
    if names is None or len(names) != ndim or len(set(names)) != ndim:
        stack = {0: [], 1: ["z"], 2: ["t", "z"]}.get(ndim - 2)
        names = (stack if stack is not None else [f"dim_{k}" for k in range(ndim - 2)]) + ["y", "x"]
    axes = []
    for name in names:
        axis = {"name": name}
        if name in AXIS_TYPES:
            axis["type"] = AXIS_TYPES[name]
        unit = meta.get("units", {}).get(name)
        if isinstance(unit, str) and unit:
            axis["unit"] = unit
        axes.append(axis)
    scale = [float(v) for v in scale] if scale is not None and len(scale) == ndim else [1.0] * ndim
    offsets = meta.get("offset", {})
    translation = [float(offsets.get(name, 0.0)) for name in names]
    return {"axes": axes, "scale": scale,
            "translation": translation if any(translation) else None,
            "source_is_image": bool(meta)}


def ngff_metadata(geometry: dict, target, kind: str, source) -> dict:
    """The ``ome`` attributes of one output: one-level ``multiscales`` and, for a mask or
    labels, ``image-label`` (with the source image's relative path when it is an OME-Zarr
    image, and the mask's colour)."""
    transforms = [{"type": "scale", "scale": geometry["scale"]}]
    if geometry["translation"]:
        transforms.append({"type": "translation", "translation": geometry["translation"]})
    ome = {"version": NGFF_VERSION,
           "multiscales": [{"name": Path(target).name[: -len(".zarr")],
                            "axes": geometry["axes"],
                            "datasets": [{"path": "0", "coordinateTransformations": transforms}]}]}
    if kind != "probability":
        label: dict = {}
        if kind == "mask":
            label["colors"] = MASK_COLORS
        if geometry["source_is_image"]:
            try:
                label["source"] = {"image": os.path.relpath(Path(source).resolve(),
                                                            Path(target).resolve())}
            except ValueError:  # another drive: no relative path
                pass
        ome["image-label"] = label
    return ome


def name_dimensions(array, names: list[str]) -> None:
    """Set a zarr v3 array's ``dimension_names`` (NGFF 0.5: equal to its axes' names)."""
    meta_file = Path(array) / "zarr.json"
    meta = json.loads(meta_file.read_text())
    meta["dimension_names"] = list(names)
    meta_file.write_text(json.dumps(meta, indent=2))
