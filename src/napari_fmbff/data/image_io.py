"""Reading and writing image files for the command line.

Ordinary files (png, jpg, bmp, tif) are read whole. Zarr / OME-Zarr folders and TIFFs larger
than ``LARGE_IMAGE_PIXELS`` are opened lazily as (Y, X[, C]) views that read only the region
asked for (their zarr outputs: ``large_outputs.py``).
"""

from __future__ import annotations

import glob
import os
from pathlib import Path

import numpy as np

from .._files import atomic_path
from .keys import PROVENANCE as PROVENANCE_KEY

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".zarr")
#: TIFFs with more pixels than this (8k x 8k) are read lazily, region by region.
LARGE_IMAGE_PIXELS = 8192 * 8192


def expand_inputs(items: list[str]) -> list[Path]:
    """Files, folders (their images, sorted) and glob patterns -> a list of image files.

    Only regular files (and zarr folders) are taken: a named pipe or a device called
    ``x.png`` in a folder is skipped with a warning (reading it could block for ever).
    """
    files: list[Path] = []
    for item in items:
        path = Path(item).expanduser()
        if path.is_dir() and is_zarr(path):
            files.append(path)
        elif path.is_dir():
            found = regular_images(sorted(path.iterdir()))
            if not found:
                raise FileNotFoundError(f"{path}: folder holds no images ({', '.join(IMAGE_SUFFIXES)})")
            files += found
        elif path.is_file():
            files.append(path)
        elif path.exists():
            raise ValueError(f"{item}: not a regular file (a pipe or a device?); give an image file")
        elif any(ch in item for ch in "*?["):
            found = regular_images(sorted(Path(p) for p in glob.glob(os.path.expanduser(item),
                                                                      recursive=True)))
            if not found:
                raise FileNotFoundError(f"{item}: pattern matches no images")
            files += found
        else:
            raise FileNotFoundError(f"{item}: no such file or folder")
    return files


def output_stem(path) -> str:
    """The name an input's outputs take: its file name without the suffix (``.ome.zarr``
    dropped whole)."""
    path = Path(path)
    return path.name[: -len(".ome.zarr")] if path.name.endswith(".ome.zarr") else path.stem


def regular_images(paths, zarr: bool = True) -> list[Path]:
    """The image files among ``paths`` (and zarr folders, with ``zarr``), in their order.
    Anything else with an image's name (a named pipe, a device, a folder) is skipped with a
    warning: reading a pipe could block for ever."""
    import warnings

    found = []
    for p in paths:
        if p.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        if p.is_file() or (zarr and p.is_dir() and is_zarr(p)):
            found.append(p)
        else:
            warnings.warn(f"{p}: skipped, not a regular file (a named pipe, device or "
                          "folder); only image files are read", stacklevel=3)
    return found


def read_image(path) -> np.ndarray:
    """An image file as a numpy array; tif via tifffile (any dtype), others via imageio."""
    path = Path(path)
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            with tifffile.TiffFile(str(path)) as tif:
                series = tif.series[0]
                data, axes = series.asarray(), series.axes.upper()
            return _channels_last(data, axes, path)
        import imageio.v3 as iio

        return np.asarray(iio.imread(str(path)))
    except _ChannelsError:
        raise
    except Exception as err:
        first = (str(err).strip().splitlines() or [""])[0].strip()
        raise ValueError(f"{path}: cannot read image ({type(err).__name__}"
                         + (f": {first}" if first else "") + "); is it a valid "
                         f"{path.suffix.lstrip('.') or 'image'} file?") from err


class _ChannelsError(ValueError):
    """A TIFF read fine whose channels no model here takes (said as they are, not as a read
    error)."""


def _channels_last(data: np.ndarray, axes: str, path) -> np.ndarray:
    """Channels last, as everywhere here: a CYX TIFF becomes YXC. Channels stored before Y
    and X other than RGB(A) (2 fluorescence channels, say) are refused, naming the file:
    otherwise they would pass for a stack of planes."""
    for channel in "SC":
        if channel not in axes or axes.index(channel) == len(axes) - 1:
            continue
        n = data.shape[axes.index(channel)]
        if n in (3, 4):
            data = np.moveaxis(data, axes.index(channel), -1)
            axes = axes.replace(channel, "") + channel
        elif n > 1:
            raise _ChannelsError(
                f"{path}: {n} channels stored first (axes {axes}, shape {data.shape}); the "
                "models take grey, RGB or RGBA images: save one channel as a grey TIFF")
    return data


#: Where a result's provenance lives in the files we write: a PNG text chunk, a key of the
#: TIFF's JSON description (tifffile's shaped metadata), a zarr / OME-Zarr attribute.


def write_image(path, array: np.ndarray, overwrite: bool = False,
                provenance: dict | None = None) -> Path:
    """Write atomically; refuse to replace an existing file unless asked. ``provenance`` (a
    JSON-able dict: model, settings, version, date) goes into the file itself: a PNG text chunk
    or the TIFF's description, under ``PROVENANCE_KEY`` (``read_provenance`` reads it back)."""
    import json

    path = Path(path)
    record = json.dumps(provenance, default=str) if provenance else None
    with atomic_path(path, overwrite) as tmp:
        if path.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            # Planes stay planes: tifffile would store a 3- or 4-plane stack as colour.
            colour = array.ndim == 3 and array.shape[-1] in (3, 4)
            tifffile.imwrite(tmp, array, compression="zlib",
                             photometric="rgb" if colour else "minisblack",
                             metadata={PROVENANCE_KEY: json.loads(record)} if record else {})
        elif record and path.suffix.lower() == ".png":
            from PIL import Image, PngImagePlugin

            info = PngImagePlugin.PngInfo()
            info.add_itxt(PROVENANCE_KEY, record)
            Image.fromarray(np.ascontiguousarray(array)).save(tmp, format="PNG", pnginfo=info)
        else:
            import imageio.v3 as iio

            iio.imwrite(tmp, array)
    return path


def read_provenance(path) -> dict:
    """The provenance ``write_image`` stored in a PNG or TIFF ({} when there is none)."""
    import json

    path = Path(path)
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            with tifffile.TiffFile(str(path)) as tif:
                shaped = tif.shaped_metadata or ({},)
                return dict(shaped[0].get(PROVENANCE_KEY) or {})
        from PIL import Image

        with Image.open(path) as img:
            text = img.text.get(PROVENANCE_KEY) if hasattr(img, "text") else None
        return json.loads(text) if text else {}
    except (OSError, ValueError) as err:
        raise ValueError(f"{path}: cannot read its provenance ({err})") from err


# ---- large images: lazy (Y, X[, C]) views of zarr, OME-Zarr and TIFF --------------------------


def is_zarr(path) -> bool:
    path = Path(path)
    return path.is_dir() and (path.suffix == ".zarr" or any(
        (path / marker).exists() for marker in ("zarr.json", ".zarray", ".zgroup")))


def is_large(path) -> bool:
    """Whether ``path`` should be read lazily: zarr, or a TIFF above LARGE_IMAGE_PIXELS."""
    path = Path(path)
    if is_zarr(path):
        return True
    if path.suffix.lower() in (".tif", ".tiff"):
        shape, axes = _tiff_series(path)
        sizes = dict(zip(axes, shape))
        return int(sizes.get("Y", 1)) * int(sizes.get("X", 1)) > LARGE_IMAGE_PIXELS
    return False


def is_stack(path) -> bool:
    """Whether a TIFF holds several planes (Z, T, ... beyond Y, X and channels)."""
    path = Path(path)
    if path.suffix.lower() not in (".tif", ".tiff"):
        return False
    shape, axes = _tiff_series(path)
    return any(n > 1 for a, n in zip(axes, shape) if a not in "YXSC")


def _tiff_series(path) -> tuple[tuple[int, ...], str]:
    """(shape, axes in upper case) of a TIFF's first series, from its header only."""
    import tifffile

    try:
        with tifffile.TiffFile(str(path)) as tif:
            return tuple(tif.series[0].shape), tif.series[0].axes.upper()
    except Exception as err:
        raise ValueError(f"{path}: cannot read TIFF header ({type(err).__name__}: {err})") from err


class AxesView:
    """A read-only (..., Y, X[, C]) view of an n-D array with named axes.

    Stack axes (z, t, ... with more than one plane) lead, in file order; length-1 axes are
    dropped; the channel axis goes last. ``view[k]`` (one int per stack axis) is a lazy 2D
    plane; a 2D view sliced with (rows, columns) reads only that region from the underlying
    (zarr) array.
    """

    def __init__(self, array, axes: str, source: str = "", fixed: dict | None = None) -> None:
        axes = axes.lower().replace("s", "c")  # TIFF's "S" (samples) is a channel axis
        if len(axes) != array.ndim or "y" not in axes or "x" not in axes:
            raise ValueError(f"{source}: cannot tell the Y and X axes apart (axes {axes!r}, "
                             f"shape {tuple(array.shape)})")
        self.array, self.axes, self.source = array, axes, source
        self.fixed = dict(fixed or {})  # stack axis -> the plane chosen
        sizes = dict(zip(axes, array.shape))
        self.free = [a for a in axes if a not in "yxc" and sizes[a] > 1 and a not in self.fixed]
        self.shape = (tuple(sizes[a] for a in self.free) + (sizes["y"], sizes["x"])
                      + ((sizes["c"],) if "c" in sizes else ()))
        self.dtype = np.dtype(array.dtype)
        self.ndim = len(self.shape)
        #: Physical size per axis name where the file says it (OME-Zarr), else None.
        self.pixel_size: dict[str, float] | None = None
        #: An OME-Zarr image's physical offset and unit per axis name
        #: ({"offset": {...}, "units": {...}}), else None.
        self.ome: dict | None = None

    @property
    def scale(self) -> tuple[float, ...] | None:
        """Physical pixel size of the view's spatial axes (stack axes..., y, x), or None."""
        if not self.pixel_size:
            return None
        return tuple(float(self.pixel_size.get(a, 1.0)) for a in self.free + ["y", "x"])

    def __getitem__(self, key):
        key = key if isinstance(key, tuple) else (key,)
        n_int = len(key) - len([k for k in key if isinstance(k, slice)])
        if n_int:
            if n_int != len(self.free) or not all(isinstance(k, (int, np.integer))
                                                  for k in key[:n_int]):
                raise IndexError(f"give one index per stack axis ({''.join(self.free)}) "
                                 "before the row and column slices")
            plane = AxesView(self.array, self.axes, self.source,
                             {**self.fixed, **{a: int(k) for a, k in zip(self.free, key)}})
            plane.pixel_size, plane.ome = self.pixel_size, self.ome
            return plane[key[n_int:]] if key[n_int:] else plane
        if self.free:
            raise IndexError(f"pick a plane first: the stack axes are {''.join(self.free)}")
        if len(key) > 2:
            raise IndexError("AxesView takes up to two slices (rows, columns)")
        rows, cols = (tuple(key) + (slice(None),) * 2)[:2]
        return self._read(rows, cols)

    def _read(self, rows, cols) -> np.ndarray:
        index = tuple(rows if a == "y" else cols if a == "x" else self.fixed[a]
                      if a in self.fixed else slice(None) if a == "c" or a in self.free else 0
                      for a in self.axes)
        block = np.asarray(self.array[index])
        kept = [a for a in self.axes if a in "yxc" or a in self.free]
        order = [kept.index(a) for a in self.free + ["y", "x", "c"] if a in kept]
        return block.transpose(order)

    def __array__(self, dtype=None, copy=None):
        whole = self._read(slice(None), slice(None))
        return whole.astype(dtype) if dtype is not None else whole


def open_large(path) -> AxesView:
    """A zarr array, an OME-Zarr image (its full-resolution level) or a TIFF, opened lazily."""
    import zarr

    path = Path(path)
    source = str(path)
    try:
        if is_zarr(path):
            node = zarr.open(str(path), mode="r")
            axes, geometry = None, None
            if not hasattr(node, "shape"):  # a group: OME-Zarr multiscales, or one array "0"
                attrs = dict(node.attrs)
                multiscales = attrs.get("multiscales") or attrs.get("ome", {}).get("multiscales")
                if multiscales:
                    level0 = multiscales[0]["datasets"][0]["path"]
                    axes = "".join(a["name"] if isinstance(a, dict) else a
                                   for a in multiscales[0].get("axes", []))
                    geometry = _ome_geometry(multiscales[0], axes)
                    node = node[level0]
                elif "0" in node:
                    node = node["0"]
                else:
                    raise ValueError("a zarr group without OME-Zarr 'multiscales' metadata or "
                                     "an array named '0'")
            view = AxesView(node, axes or _guess_axes(node.shape), source)
            if geometry is not None:
                view.pixel_size = geometry.pop("pixel_size")
                view.ome = geometry
            return view
        import tifffile

        _, axes = _tiff_series(path)
        store = tifffile.imread(str(path), aszarr=True, series=0, level=0)
        return AxesView(zarr.open(store, mode="r"), axes, source)
    except ValueError as err:
        if str(err).startswith(source):
            raise
        raise ValueError(f"{source}: cannot open as a large image ({err})") from err
    except Exception as err:
        raise ValueError(f"{source}: cannot open as a large image "
                         f"({type(err).__name__}: {err})") from err


def _ome_geometry(multiscale: dict, axes: str) -> dict | None:
    """From OME-NGFF metadata, per axis name of the full-resolution level: ``pixel_size``
    (None when every scale is 1), ``offset`` (the translations, after the scales they follow:
    the dataset's transformations, then the image-wide ones) and ``units``. None when the
    transformations cannot be read."""
    try:
        n = len(axes)
        sizes, offset = [1.0] * n, [0.0] * n
        for level in (multiscale["datasets"][0], multiscale):
            for t in level.get("coordinateTransformations", []):
                if t.get("type") == "scale":
                    sizes = [a * float(b) for a, b in zip(sizes, t["scale"])]
                    offset = [o * float(b) for o, b in zip(offset, t["scale"])]
                elif t.get("type") == "translation":
                    offset = [o + float(v) for o, v in zip(offset, t["translation"])]
        names = axes.lower()
        units = {a: d.get("unit") for a, d in zip(names, multiscale.get("axes", []))
                 if isinstance(d, dict)}
        return {"pixel_size": None if sizes == [1.0] * n else dict(zip(names, sizes)),
                "offset": dict(zip(names, offset)), "units": units}
    except (KeyError, TypeError, ValueError, IndexError, AttributeError):
        return None


def _guess_axes(shape) -> str:
    """Plain arrays: (Y, X), (Y, X, C) with C <= 4, or (C, Y, X) with C <= 4."""
    if len(shape) == 2:
        return "yx"
    if len(shape) == 3:
        return "yxc" if shape[-1] <= 4 else "cyx" if shape[0] <= 4 else "zyx"
    return "tczyx"[-len(shape):] if len(shape) <= 5 else "?" * len(shape)
