"""napari reader for the zarr results of `fmbff segment`: drag `masks/slide.zarr` into napari
and get a lazy Labels layer (or a probability Image layer) at the source's pixel size.

Only zarr arrays carrying our ``napari_fmbff`` attributes are claimed; for any other zarr the
reader says no and napari asks the next plugin.
"""

from __future__ import annotations

from pathlib import Path


def _result_info(path):
    if not isinstance(path, str) or not path.rstrip("/").endswith(".zarr"):
        return None
    if not Path(path).is_dir():
        return None
    try:
        import zarr

        array = zarr.open_array(path, mode="r")
        info = dict(array.attrs).get("napari_fmbff")
    except Exception:  # not a zarr array of ours: let another reader try
        return None
    return (array, info) if isinstance(info, dict) and "kind" in info else None


def get_reader(path):
    return read_result if _result_info(path) is not None else None


def read_result(path):
    array, info = _result_info(path)
    scale = tuple(info.get("scale") or ())
    if len(scale) != array.ndim:  # no pixel size recorded: one unit per pixel
        scale = (1.0,) * array.ndim
    meta = {"name": Path(path.rstrip("/")).stem, "scale": scale, "metadata": {"napari_fmbff": info}}
    if info["kind"] == "probability":
        return [(array, {**meta, "colormap": "magma", "contrast_limits": (0.0, 1.0),
                         "blending": "additive"}, "image")]
    return [(array, {**meta, "opacity": 0.5}, "labels")]
