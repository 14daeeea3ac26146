"""napari readers: the zarr results of `fmbff segment` (drag `masks/slide.zarr` into napari and
get a lazy Labels layer, or a probability Image layer, at the source's pixel size), and CT / MR
volumes (a DICOM file opens its whole series; NIfTI files) at their voxel spacing in mm.

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


# ---- CT / MR volumes: DICOM series and NIfTI --------------------------------------------------

MEDICAL_PATTERNS = (".dcm", ".nii", ".nii.gz")


def get_medical_reader(path):
    """A DICOM file (its whole series is gathered from its folder) or a NIfTI file."""
    if not isinstance(path, str) or not path.lower().endswith(MEDICAL_PATTERNS):
        return None
    return read_medical if Path(path).is_file() else None


def read_medical(path):
    """One Image layer in the scanner's units (CT in HU) at the voxel spacing in mm; the
    affine and the series' facts ride along in the layer metadata (labels written back as
    NIfTI use them)."""
    from .data.medical import read_volume, series_name, window_range

    volume = read_volume(path)
    data, scale = volume.data, volume.spacing
    if data.shape[0] == 1:  # one slice: a 2D image
        data, scale = data[0], scale[1:]
    source = {**volume.metadata, "source": volume.source, "spacing_mm": list(volume.spacing),
              "affine": volume.affine.tolist()}
    meta = {"name": series_name(volume), "scale": scale,
            "metadata": {"napari_fmbff_source": source}}
    if volume.metadata.get("units") == "HU":
        meta["contrast_limits"] = window_range("soft-tissue")
    return [(data, meta, "image")]
