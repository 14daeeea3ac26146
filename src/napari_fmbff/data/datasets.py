"""Find image / mask pairs in the folder layouts people download, and load them.

Layouts (detected in this order):
- ``kvasir``: ``images/`` + ``masks/`` (Kvasir-SEG; also any images/masks-like folder pair)
- ``cvc-clinicdb``: ``Original/`` + ``Ground Truth/``
- ``isic``: ``ISIC_x.jpg`` with ``ISIC_x_segmentation.png`` (same or separate folders)
- ``busi``: ``x.png`` with ``x_mask.png`` (and ``x_mask_1.png``, ... merged)
Masks: any nonzero pixel is lesion.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .image_io import IMAGE_SUFFIXES, read_image

IMAGE_DIRS = ("images", "image", "imgs", "img", "original", "inputs")
#: Smaller images are refused: the network works on multiples of 32 px.
MIN_EDGE = 32
MASK_DIRS = ("masks", "mask", "labels", "ground truth", "groundtruth", "gt", "annotations")


@dataclass
class PairedFolder:
    layout: str
    pairs: list[tuple[Path, list[Path]]]          # image, its mask file(s)
    unpaired: list[Path] = field(default_factory=list)

    def describe(self) -> str:
        text = f"{len(self.pairs)} image/mask pairs ({self.layout} layout)"
        if self.unpaired:
            names = ", ".join(p.name for p in self.unpaired[:5])
            more = f" and {len(self.unpaired) - 5} more" if len(self.unpaired) > 5 else ""
            text += f"; {len(self.unpaired)} file(s) without a partner: {names}{more}"
        return text


def _images_in(folder: Path, recursive: bool = False) -> list[Path]:
    it = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(p for p in it if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _by_stem(images: list[Path], masks: list[Path], layout: str) -> PairedFolder:
    mask_of = {m.stem: m for m in masks}
    image_stems = {i.stem for i in images}
    pairs = [(i, [mask_of[i.stem]]) for i in images if i.stem in mask_of]
    unpaired = [i for i in images if i.stem not in mask_of]
    unpaired += [m for m in masks if m.stem not in image_stems]
    return PairedFolder(layout, pairs, unpaired)


def _child(root: Path, names) -> Path | None:
    for child in sorted(root.iterdir()):
        if child.is_dir() and child.name.lower() in names:
            return child
    return None


def find_pairs(root) -> PairedFolder:
    """Detect the layout of ``root`` and pair every image with its mask(s)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such folder")
    img_dir, mask_dir = _child(root, IMAGE_DIRS), _child(root, MASK_DIRS)
    if img_dir and mask_dir:
        layout = "cvc-clinicdb" if img_dir.name == "Original" else "kvasir"
        found = _by_stem(_images_in(img_dir), _images_in(mask_dir), layout)
    else:
        files = _images_in(root, recursive=True)
        seg = [f for f in files if f.stem.endswith("_segmentation")]
        busi = [f for f in files if re.search(r"_mask(_\d+)?$", f.stem)]
        if seg:
            found = _pair_suffixed(files, seg, r"_segmentation$", "isic")
        elif busi:
            found = _pair_suffixed(files, busi, r"_mask(_\d+)?$", "busi")
        else:
            raise ValueError(
                f"{root}: no known layout. Expected images/ + masks/ (Kvasir-SEG), Original/ + "
                "Ground Truth/ (CVC-ClinicDB), ISIC_x.jpg + ISIC_x_segmentation.png (ISIC) or "
                "x.png + x_mask.png (BUSI)"
            )
    if not found.pairs:
        raise ValueError(f"{root}: {found.layout} layout, but no image has a mask with the same name")
    return found


def _pair_suffixed(files, masks, pattern, layout) -> PairedFolder:
    masks_of: dict[str, list[Path]] = {}
    for m in masks:
        masks_of.setdefault(re.sub(pattern, "", m.stem), []).append(m)
    mask_set = set(masks)
    images = [f for f in files if f not in mask_set]
    stems = {i.stem for i in images}
    pairs = [(i, sorted(masks_of[i.stem])) for i in images if i.stem in masks_of]
    unpaired = [i for i in images if i.stem not in masks_of]
    unpaired += [m for k, ms in masks_of.items() if k not in stems for m in ms]
    return PairedFolder(layout, pairs, unpaired)


def load_mask(paths: list[Path]) -> np.ndarray:
    """Union of one or more mask files, as uint8 0/1 (Y, X); colour masks use any channel.

    8-bit masks with values above 1 (0/255, the usual saving) are cut at 128, so the grey
    fringe of a JPEG mask (Kvasir-SEG ships JPEG masks) is not counted as lesion; 0/1 masks and
    other dtypes count every non-zero pixel.
    """
    mask = None
    for path in paths:
        m = read_image(path)
        m = m.max(axis=-1) if m.ndim == 3 else m
        m = m >= 128 if m.dtype == np.uint8 and m.max(initial=0) > 1 else m > 0
        if mask is not None and m.shape != mask.shape:
            raise ValueError(f"{path}: mask shape {m.shape} differs from {paths[0].name}'s")
        mask = m if mask is None else mask | m
    return mask.astype(np.uint8)


def load_pairs(found: PairedFolder) -> tuple[list[np.ndarray], list[np.ndarray], list[str]]:
    """All images and masks in memory (2D data sets of this field fit easily)."""
    images, masks, names = [], [], []
    for image_path, mask_paths in found.pairs:
        image, mask = read_image(image_path), load_mask(mask_paths)
        if min(image.shape[:2]) < MIN_EDGE:
            raise ValueError(f"{image_path}: {image.shape[0]} x {image.shape[1]} px is too small "
                             f"to learn from (at least {MIN_EDGE} px a side); remove it")
        if image.dtype.kind == "f" and not np.isfinite(image).any():
            raise ValueError(f"{image_path}: the image has no finite values (all NaN or inf); "
                             "remove or repair it")
        if image.shape[:2] != mask.shape:
            raise ValueError(
                f"{image_path.name}: image is {image.shape[:2]} but its mask is {mask.shape}")
        images.append(image)
        masks.append(mask)
        names.append(image_path.stem)
    return images, masks, names


def write_dataset(root, samples, names=None) -> Path:
    """Write (image, mask) pairs in Kvasir-SEG layout: root/images/*.png, root/masks/*.png."""
    from .image_io import write_image

    root = Path(root)
    for k, (image, mask) in enumerate(samples):
        name = names[k] if names else f"{k:05d}"
        write_image(root / "images" / f"{name}.png", image)
        write_image(root / "masks" / f"{name}.png", (np.asarray(mask) > 0).astype(np.uint8) * 255)
    return root
