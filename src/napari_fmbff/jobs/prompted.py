"""`fmbff segment IMAGE --box ... --point ...`: only the prompted objects, written as labels.

Coordinates are napari's for the opened image: x the column, y the row, z the slice along the
first axis of a stack or volume (as napari's slider shows it). Each box makes a new object;
a positive click grows the object under it (or makes a new one); a negative click cuts its
region out of the object under it (``inference.prompting``, as in the Segment widget). The
answer comes from the engine ``inference.prompting.choose_engine`` picks, as in the widget:
LiteMedSAM (boxes, the default: ``inference.litemedsam``), Otsu inside the box
(``inference.box``, the fallback) or, with a model whose prompt path was trained, the network.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..inference.prompting import (  # noqa: F401 (the command line's names for them)
    ENGINE_LABELS,
    ENGINES,
    choose_engine,
    fallback_note,
    needs_model,
    prompt_network,
)


@dataclass(frozen=True)
class Prompt:
    kind: str                   # "box" or "point"
    values: tuple               # (x0, y0, x1, y1) or (x, y)
    z: int | None = None        # the slice of a stack / volume (None: a 2D image)
    positive: bool = True       # points only

    def describe(self) -> str:
        where = "" if self.z is None else f"@{self.z}"
        sign = "" if self.kind == "box" or self.positive else ":neg"
        return f"--{self.kind} {','.join(f'{v:g}' for v in self.values)}{where}{sign}"


def parse_prompt(kind: str, text: str) -> Prompt:
    """``X0,Y0,X1,Y1[@Z]`` (box) or ``X,Y[@Z][:neg]`` (point); one line for anything else."""
    spec, positive = text.strip(), True
    if kind == "point" and spec.endswith((":neg", ":pos")):
        spec, positive = spec[:-4], spec.endswith(":pos")
    coords, _, z = spec.partition("@")
    n = 4 if kind == "box" else 2
    form = "X0,Y0,X1,Y1[@Z]" if kind == "box" else "X,Y[@Z][:neg]"
    try:
        values = tuple(float(v) for v in coords.split(","))
        slice_ = int(z) if z else None
    except ValueError:
        values, slice_ = (), None
    if len(values) != n or not all(np.isfinite(values)):
        raise ValueError(f"--{kind} {text!r}: give {form} in pixels, e.g. "
                         + ("--box 40,30,120,90@12" if kind == "box" else "--point 64,50@12:neg"))
    return Prompt(kind, values, slice_, positive)


def answer_prompts(data, prompts: list[Prompt], rgb: bool = False, engine: str = "otsu",
                   model=None, device="cpu") -> np.ndarray:
    """int32 labels of ``data``'s spatial shape holding only the prompted objects, each
    answered by ``inference.prompting.prompt_mask`` (``device``: where LiteMedSAM runs;
    ``model``: the network, or its name or path, for the "network" engine)."""
    from ..inference.prompting import add_object, answer_click, prompt_mask

    data = np.asarray(data) if not hasattr(data, "shape") else data
    shape = data.shape[:-1] if rgb else data.shape
    if len(shape) not in (2, 3):
        raise ValueError(f"prompts need a 2D image or a (Z, Y, X) stack, got shape {shape}")
    labels = np.zeros(shape, np.int32)
    next_id = 1
    intensity_range = _box_range(data, rgb, engine)
    for prompt in prompts:
        index = _plane_index(prompt, shape)
        plane = np.asarray(data[index])
        box, click = ((prompt.values, None) if prompt.kind == "box"
                      else (None, (*prompt.values, prompt.positive)))
        mask = prompt_mask(engine, plane, box, click, model, device, intensity_range)
        if prompt.kind == "box":
            labels[index] = add_object(labels[index], mask, next_id)
            next_id += 1
        else:
            x, y = prompt.values
            labels[index], used = answer_click(labels[index], mask, x, y, prompt.positive,
                                               next_id)
            next_id += int(used == next_id)
    return labels


def _plane_index(prompt: Prompt, shape) -> tuple:
    if len(shape) == 2:
        if prompt.z is not None:
            raise ValueError(f"{prompt.describe()}: this image has no slices; drop the @Z")
        return ()
    if prompt.z is None:
        raise ValueError(f"{prompt.describe()}: this is a stack of {shape[0]} slices; say which "
                         "one with @Z (0-based, as napari's slider shows it)")
    if not 0 <= prompt.z < shape[0]:
        raise ValueError(f"{prompt.describe()}: slice {prompt.z} is outside the stack "
                         f"(0..{shape[0] - 1})")
    return (prompt.z,)


def _box_range(data, rgb: bool, engine: str):
    """LiteMedSAM's intensity range for every plane of ``data`` (its ``SCOPE``: one range for
    the whole volume, or None: each plane its own)."""
    from ..inference import litemedsam

    if engine != "litemedsam" or litemedsam.SCOPE != "volume":
        return None
    return litemedsam.volume_range(data, rgb)


def prompt_record(prompts: list[Prompt], engine: str, model_name: str, source) -> dict:
    """The provenance of a prompted result (``inference.provenance``): the prompts, the engine
    that answered them (LiteMedSAM's package and checkpoint as ``box_engine``) and the model
    where the network answered."""
    from ..inference import litemedsam
    from ..inference.provenance import provenance

    box = {"box_engine": litemedsam.provenance()} if engine == "litemedsam" else {}
    return provenance({"prompts": [asdict(p) for p in prompts], "engine": ENGINE_LABELS[engine],
                       "model": model_name if engine == "network" else None}, box,
                      source=source)


def write_prompted(source, labels: np.ndarray, out_dir, record: dict, volume=None,
                   overwrite: bool = False) -> Path:
    """Labels in ``out_dir`` under the input's name: NIfTI + JSON record for a NIfTI / DICOM
    volume (``volume``), else a TIFF with the record inside."""
    from ..data.image_io import output_stem, write_image
    from ..data.medical import series_name, write_labels_and_record

    out = Path(out_dir)
    if volume is not None:
        stem = series_name(volume)
        return write_labels_and_record(out / f"{stem}.nii.gz", out / f"{stem}.json", labels,
                                       volume.ras_affine, record, overwrite)
    ids = labels.astype(np.uint16) if labels.max(initial=0) < 2 ** 16 else labels
    return write_image(out / f"{output_stem(source)}.tif", ids, overwrite, record)
