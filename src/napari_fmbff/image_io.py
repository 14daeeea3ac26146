"""Reading and writing image files for the command line (png, jpg, bmp, tif)."""

from __future__ import annotations

import glob
import os
import tempfile
from pathlib import Path

import numpy as np

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


def expand_inputs(items: list[str]) -> list[Path]:
    """Files, folders (their images, sorted) and glob patterns -> a list of image files."""
    files: list[Path] = []
    for item in items:
        path = Path(item).expanduser()
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise FileNotFoundError(f"{path}: folder holds no images ({', '.join(IMAGE_SUFFIXES)})")
            files += found
        elif path.is_file():
            files.append(path)
        elif any(ch in item for ch in "*?["):
            found = sorted(Path(p) for p in glob.glob(os.path.expanduser(item), recursive=True)
                           if Path(p).suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise FileNotFoundError(f"{item}: pattern matches no images")
            files += found
        else:
            raise FileNotFoundError(f"{item}: no such file or folder")
    return files


def read_image(path) -> np.ndarray:
    """An image file as a numpy array; tif via tifffile (any dtype), others via imageio."""
    path = Path(path)
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            return tifffile.imread(str(path))
        import imageio.v3 as iio

        return np.asarray(iio.imread(str(path)))
    except Exception as err:
        raise ValueError(f"{path}: cannot read image ({type(err).__name__}: {err})") from err


def write_image(path, array: np.ndarray, overwrite: bool = False) -> Path:
    """Write atomically; refuse to replace an existing file unless asked."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass --overwrite to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}-", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            tifffile.imwrite(tmp, array, compression="zlib")
        else:
            import imageio.v3 as iio

            iio.imwrite(tmp, array)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path
