"""Find image / mask pairs in the folder layouts people download, and load them.

Layouts (detected in this order):
- ``kvasir``: ``images/`` + ``masks/`` (Kvasir-SEG; also any images/masks-like folder pair)
- ``cvc-clinicdb``: ``Original/`` + ``Ground Truth/``
- ``isic``: ``ISIC_x.jpg`` with ``ISIC_x_segmentation.png`` (same or separate folders)
- ``busi``: ``x.png`` with ``x_mask.png`` (and ``x_mask_1.png``, ... merged)
Masks: any nonzero pixel is lesion.

CT / MR volumes (``PairedFolder.is_volumes``; read with ``iter_volume_pairs``, one at a time):
- ``nnU-Net / MSD``: ``imagesTr/`` + ``labelsTr/`` of NIfTI files. nnU-Net v2 names the image
  ``case_0000.nii.gz`` and its label ``case.nii.gz``; the Medical Segmentation Decathlon uses
  the same name in both. Only the first channel (``_0000``) is used; other channels
  (``_0001``, ...) are reported and left out.
- ``nifti volumes``: ``images/`` + ``masks/`` (or ``labels/``) holding NIfTI files
  (``.nii`` / ``.nii.gz``) with the same names; an image may also be a DICOM series folder
  whose mask is ``masks/<folder name>.nii.gz``.
- ``dicom rtstruct``: DICOM series with an RTSTRUCT beside them (radiotherapy exports): any
  folder tree (one folder per patient: ``LUNG1-001/CT/*.dcm`` + ``LUNG1-001/RS.dcm``, the
  RTSTRUCT among the slices, or TCIA's ``study/<CT series>/`` + ``study/<RTSTRUCT series>/``);
  each RTSTRUCT is paired with the series it names (by Series Instance UID, in its folder, its
  subfolders or the folders beside it: ``rtstruct.find_series``). The case is the patient
  folder. Its ROIs become the lesion: the one ROI, or those named with ``roi`` (``--roi GTV``;
  patterns such as ``GTV*``); an RTSTRUCT of several ROIs and no ``roi`` is refused in one
  line listing them, since structure sets carry organs and the body outline too.
Mask volumes: any non-zero voxel is lesion (every class of a multi-class label map: for
MSD Liver that is liver and tumour; write a mask of the one class to learn only that). A mask
must lie on its image's voxel grid (same shape; a mask stored in another axis order or
direction, by its affine, is turned onto the image's grid). Hidden files (``._case.nii.gz``
from macOS archives) are skipped. Slices are the volume's first (z) axis, axial for most CT.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .image_io import read_image, regular_images

IMAGE_DIRS = ("images", "image", "imgs", "img", "original", "inputs")
#: Smaller images are refused: the network works on multiples of 32 px.
MIN_EDGE = 32
MASK_DIRS = ("masks", "mask", "labels", "ground truth", "groundtruth", "gt", "annotations")
#: Layouts of CT / MR volume pairs (read with ``iter_volume_pairs``, not ``load_pairs``).
VOLUME_LAYOUTS = ("nnU-Net / MSD", "nifti volumes", "dicom rtstruct")
#: Training slices: every slice with lesion, plus as many lesion-free ones (at least this
#: many), evenly spread through the volume (see ``training_slices``).
MIN_LESION_FREE_SLICES = 4


@dataclass
class PairedFolder:
    layout: str
    pairs: list[tuple[Path, list[Path]]]          # image, its mask file(s)
    unpaired: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    roi: tuple[str, ...] = ()                     # RTSTRUCT ROIs that are lesion (names, patterns)
    names: dict[Path, str] = field(default_factory=dict)   # a mask's case name, where not its stem

    @property
    def is_volumes(self) -> bool:
        """CT / MR volume pairs: read them with ``iter_volume_pairs``."""
        return self.layout in VOLUME_LAYOUTS

    def describe(self) -> str:
        what = "volume pairs" if self.is_volumes else "image/mask pairs"
        text = f"{len(self.pairs)} {what} ({self.layout} layout)"
        if self.unpaired:
            names = ", ".join(p.name for p in self.unpaired[:5])
            more = f" and {len(self.unpaired) - 5} more" if len(self.unpaired) > 5 else ""
            text += f"; {len(self.unpaired)} file(s) without a partner: {names}{more}"
        return "; ".join([text, *self.notes])


def _images_in(folder: Path, recursive: bool = False) -> list[Path]:
    """Image files in ``folder``; anything else with an image's name (a named pipe, a
    folder) is skipped with a warning."""
    it = folder.rglob("*") if recursive else folder.iterdir()
    return regular_images(sorted(it), zarr=False)


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


def find_pairs(root, roi=None) -> PairedFolder:
    """Detect the layout of ``root`` and pair every image with its mask(s). ``roi``: the
    RTSTRUCT ROIs that are lesion (names or patterns; ``dicom rtstruct`` layout only)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such folder")
    img_tr, label_tr = _child(root, ("imagestr",)), _child(root, ("labelstr",))
    img_dir, mask_dir = _child(root, IMAGE_DIRS), _child(root, MASK_DIRS)
    if img_tr and label_tr:
        found = _volume_pairs(img_tr, label_tr, "nnU-Net / MSD")
    elif img_dir and mask_dir and _volume_entries(img_dir):
        found = _volume_pairs(img_dir, mask_dir, "nifti volumes")
    elif img_dir and mask_dir:
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
            found = _rtstruct_pairs(root)
        if found is None:
            raise ValueError(
                f"{root}: no known layout. Expected images/ + masks/ (Kvasir-SEG; or NIfTI "
                "volumes), Original/ + Ground Truth/ (CVC-ClinicDB), ISIC_x.jpg + "
                "ISIC_x_segmentation.png (ISIC), x.png + x_mask.png (BUSI), imagesTr/ + "
                "labelsTr/ (nnU-Net / Medical Segmentation Decathlon) or DICOM series with an "
                "RTSTRUCT beside them (patient/CT/*.dcm + patient/RS.dcm)"
            )
    if not found.pairs:
        hint = (" (nnU-Net names them case_0000.nii.gz and case.nii.gz)"
                if found.layout == "nnU-Net / MSD" else "")
        raise ValueError(f"{root}: {found.layout} layout, but no image has a mask with the "
                         f"same name{hint}")
    if roi:
        found.roi = (roi,) if isinstance(roi, str) else tuple(roi)
        if found.layout != "dicom rtstruct":
            found.notes.append("--roi applies to RTSTRUCT masks only: left unused")
    return found


def _rtstruct_pairs(root: Path) -> PairedFolder | None:
    """The ``dicom rtstruct`` layout: each RTSTRUCT under ``root`` with one file of its
    series; None when there is no RTSTRUCT. No series for any: that RTSTRUCT's one line."""
    from .rtstruct import case_names, find_rtstructs, rtstruct_series

    rtstructs = find_rtstructs(root)
    if not rtstructs:
        return None
    pairs, unpaired, missing = [], [], []
    for rs in rtstructs:
        try:
            pairs.append((rtstruct_series(rs), [rs]))
        except ValueError as err:
            unpaired.append(rs)
            missing.append(err)
    if not pairs:
        raise missing[0]
    return PairedFolder("dicom rtstruct", pairs, unpaired,
                        names=case_names(root, [rs for _, (rs,) in pairs]))


def volume_stem(path) -> str:
    """A NIfTI file's name without .nii / .nii.gz; a DICOM series folder's name."""
    name = Path(path).name
    for suffix in (".nii.gz", ".nii"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def _volume_entries(folder: Path) -> list[Path]:
    """NIfTI files and DICOM series folders in ``folder`` (hidden files skipped)."""
    from .medical import is_medical, is_nifti

    return sorted(p for p in folder.iterdir() if not p.name.startswith(".") and (
        (p.is_file() and is_nifti(p)) or (p.is_dir() and is_medical(p))))


def _volume_pairs(img_dir: Path, mask_dir: Path, layout: str) -> PairedFolder:
    from .medical import is_nifti

    masks = [m for m in _volume_entries(mask_dir) if m.is_file() and is_nifti(m)]
    mask_of = {volume_stem(m): m for m in masks}
    pairs, unpaired, other_channels, used = [], [], [], set()
    for image in _volume_entries(img_dir):
        case = volume_stem(image)
        channel = re.fullmatch(r"(.+)_(\d{4})", case)
        if case not in mask_of and channel and channel.group(1) in mask_of:  # nnU-Net v2
            if channel.group(2) != "0000":
                other_channels.append(image)
                continue
            case = channel.group(1)
        if case in mask_of:
            pairs.append((image, [mask_of[case]]))
            used.add(case)
        else:
            unpaired.append(image)
    unpaired += [m for case, m in mask_of.items() if case not in used]
    notes = ([f"{len(other_channels)} other-channel image(s) left out (only channel _0000 "
              f"is used), e.g. {other_channels[0].name}"] if other_channels else [])
    return PairedFolder(layout, pairs, unpaired, notes)


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
    if found.is_volumes:
        raise ValueError(f"{found.layout} layout: volumes are read one at a time with "
                         "iter_volume_pairs")
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
        if image.ndim == 3 and image.shape[-1] not in (1, 3, 4):
            raise ValueError(f"{image_path}: {image.shape[-1]} channels (shape {image.shape}); "
                             "give a grey, RGB or RGBA image, or save one channel of it")
        images.append(image)
        masks.append(mask)
        names.append(image_path.stem)
    return images, masks, names


@dataclass
class VolumePair:
    """One CT / MR volume and its mask, on the same (Z, Y, X) voxel grid."""

    name: str                 # the case: the mask's name without .nii(.gz)
    image: np.ndarray         # (Z, Y, X), the scanner's units (CT: HU)
    mask: np.ndarray          # (Z, Y, X) uint8 0/1: any non-zero voxel of the mask file
    spacing: tuple[float, float, float]
    image_path: Path
    mask_path: Path

    def training_slices(self) -> list[int]:
        return training_slices(self.mask, self.image)

    def slice_name(self, z: int) -> str:
        return f"{self.name} z{z}"


def training_slices(mask: np.ndarray, image: np.ndarray | None = None) -> list[int]:
    """The slices of a volume to train on, in order: every slice with a lesion voxel, plus as
    many lesion-free slices (at least ``MIN_LESION_FREE_SLICES``, at most all of them) spread
    evenly through the volume (the middle of equal runs of the lesion-free slices), so the
    model also learns what is not lesion. Flat lesion-free slices (padding: one value
    everywhere in ``image``) are never picked."""
    mask = np.asarray(mask)
    has_lesion = mask.reshape(len(mask), -1).any(axis=1)
    lesion = np.flatnonzero(has_lesion)
    free = np.flatnonzero(~has_lesion)
    if image is not None:
        free = np.array([z for z in free if np.ptp(image[z]) > 0], int)
    k = min(len(free), max(len(lesion), MIN_LESION_FREE_SLICES))
    picked = free[((np.arange(k) + 0.5) * len(free) / k).astype(int)] if k else free[:0]
    return sorted(int(z) for z in np.concatenate([lesion, picked]))


def iter_volume_pairs(found: PairedFolder):
    """Yield each pair of a volume layout as a checked ``VolumePair``, one at a time (CT data
    sets do not fit in memory at once). Errors name the file and say what to do."""
    for image_path, mask_paths in found.pairs:
        yield load_volume_pair(image_path, mask_paths[0], found.roi,
                               found.names.get(mask_paths[0]))


def load_volume_pair(image_path, mask_path, roi=(), name: str | None = None) -> VolumePair:
    """One checked pair; the mask a NIfTI / DICOM volume or an RTSTRUCT (its ROIs ``roi``,
    see ``find_pairs``). ``name``: the case, else the mask's name."""
    from .medical import read_volume
    from .rtstruct import is_rtstruct

    image_path, mask_path = Path(image_path), Path(mask_path)
    image = read_volume(image_path)
    data = image.data
    if min(data.shape[1:]) < MIN_EDGE:
        raise ValueError(f"{image_path}: slices of {data.shape[1]} x {data.shape[2]} px are too "
                         f"small to learn from (at least {MIN_EDGE} px a side); remove it")
    if data.dtype.kind == "f" and not np.isfinite(data).any():
        raise ValueError(f"{image_path}: the volume has no finite values (all NaN or inf); "
                         "remove or repair it")
    if is_rtstruct(mask_path):
        from .rtstruct import read_rtstruct

        labels = read_rtstruct(mask_path, roi, series=image, require_choice=True).labels
    else:
        labels = on_image_grid(read_volume(mask_path), image, mask_path, image_path)
    lesion = ((labels > 0) | (labels < 0)).astype(np.uint8)  # non-zero; NaN is not lesion
    return VolumePair(name or volume_stem(mask_path), data, lesion, image.spacing, image_path,
                      mask_path)


def on_image_grid(mask, image, mask_path: Path, image_path: Path) -> np.ndarray:
    """The mask's voxels in the image's (z, y, x) order: as stored when both grids agree;
    turned (axes swapped / flipped, by the two affines) when the mask is stored in another
    orientation; as stored, with a warning, when the affines disagree otherwise."""
    data, shape = mask.data, image.data.shape
    affines = [image.affine]
    if image.metadata.get("format") == "dicom" and mask.metadata.get("format") == "nifti":
        # A NIfTI mask is in RAS (as fmbff segment writes it); one written with the DICOM's
        # LPS affine as it is (as some tools do) is accepted too.
        affines.insert(0, image.ras_affine)
    for affine in affines:
        try:
            to_image = np.linalg.solve(affine, mask.affine)   # mask index -> image index
        except np.linalg.LinAlgError:
            continue
        turned = _turned(data, to_image, shape)
        if turned is not None:
            return turned
    if data.shape == shape:
        warnings.warn(f"{mask_path}: its affine does not match {image_path.name}'s; its voxels "
                      "are used in the image's order", stacklevel=2)
        return data
    z, y, x = data.shape
    raise ValueError(f"{mask_path}: mask volume is {z} x {y} x {x} voxels (z, y, x) but its "
                     f"image {image_path.name} is {shape[0]} x {shape[1]} x {shape[2]}; resample "
                     "the mask onto the image's voxel grid")


def _turned(data: np.ndarray, to_image: np.ndarray, shape) -> np.ndarray | None:
    """``data`` on the image grid when ``to_image`` (mask index -> image index) swaps and
    flips axes only; None otherwise. Same orientation and shape: ``data`` itself (an origin
    that differs by a fraction of a voxel is a header's rounding, not another grid)."""
    rot, shift = to_image[:3, :3], to_image[:3, 3]
    perm = np.round(rot)
    if (np.abs(rot - perm).max() > 0.05 or not np.all(np.abs(perm).sum(axis=0) == 1)
            or not np.all(np.abs(perm).sum(axis=1) == 1)):
        return None
    if np.array_equal(perm, np.eye(3)):
        return data if data.shape == tuple(shape) else None
    axes = [int(np.flatnonzero(perm[i])[0]) for i in range(3)]   # image axis i <- mask axis
    signs = [perm[i, axes[i]] for i in range(3)]
    out = np.transpose(data, axes)
    if out.shape != tuple(shape):
        return None
    for i in range(3):
        expected = 0.0 if signs[i] > 0 else shape[i] - 1.0
        if abs(shift[i] - expected) > 0.5:
            return None
        if signs[i] < 0:
            out = np.flip(out, axis=i)
    return np.ascontiguousarray(out)


def write_dataset(root, samples, names=None) -> Path:
    """Write (image, mask) pairs in Kvasir-SEG layout: root/images/*.png, root/masks/*.png."""
    from .image_io import write_image

    root = Path(root)
    for k, (image, mask) in enumerate(samples):
        name = names[k] if names else f"{k:05d}"
        write_image(root / "images" / f"{name}.png", image)
        write_image(root / "masks" / f"{name}.png", (np.asarray(mask) > 0).astype(np.uint8) * 255)
    return root
