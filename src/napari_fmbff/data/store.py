"""The corrections store: every slice a user corrected, kept so the next patient starts from
all of them (issue 23).

A store is a folder in nnU-Net v2's raw layout, so nnU-Net, MONAI and ``fmbff train`` read it
as it is::

    STORE/dataset.json          channel_names, labels {"background": 0, "lesion": 1,
                                "ignore": 2}, numTraining, file_ending ".nii.gz"
    STORE/imagesTr/CASE_0000.nii.gz   the image (RGB: _0000, _0001, _0002), intensities as the
                                      model saw them (CT in Hounsfield units)
    STORE/labelsTr/CASE.nii.gz        1 lesion, 0 background on the corrected slices; every
                                      other slice is the ignore label (nnU-Net v2's is the
                                      highest value), so training never reads it as background
    STORE/fmbff_store.json      our record: per case its identity, source, dates, the model
                                that proposed the labels, the intensity setting, the corrected
                                slices; and the models trained on the store (lineage)

One case per image or volume: its identity is the DICOM Series Instance UID (with the SOP
Instance UID of a single image, where known) when the image came from DICOM, else a hash of
its pixels, so correcting the same scan again updates its case (the new corrected slices
replace those slices; earlier corrected slices stay). A 2D image is a one-slice case.

Writes never leave a half-made store: a case is written under a new id, announced as
"pending" in the record first, and becomes part of the store only when the record says so
(``PendingCase.commit``, one atomic rename); ``discard`` (or the next write after a crash)
removes a pending case's files. An update is a new id replacing the old case in that one
step. numpy and nibabel only; the callers (training/store_training.py) bring the model side.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .._files import atomic_path

STORE_DIR_ENV = "FMBFF_STORE_DIR"
RECORD = "fmbff_store.json"
FORMAT = "napari-fmbff-store/1"
FILE_ENDING = ".nii.gz"
LESION, IGNORE = 1, 2
LABELS = {"background": 0, "lesion": LESION, "ignore": IGNORE}


class StoreError(ValueError):
    """A store that cannot be used or changed as asked; the message is one line to act on."""


def default_store_dir() -> Path:
    """The user's corrections store: $FMBFF_STORE_DIR, else ``store`` in the platform's user
    data folder, beside the models folder (``model.registry.models_dir``)."""
    env = os.environ.get(STORE_DIR_ENV)
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_data_dir("napari-fmbff", appauthor=False)) / "store"


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def content_hash(image) -> str:
    """``sha256:...`` of an array's shape, dtype and pixels (the identity of a non-DICOM image)."""
    array = np.ascontiguousarray(np.asarray(image))
    digest = hashlib.sha256(f"{array.shape}|{array.dtype.str}|".encode())
    digest.update(memoryview(array).cast("B"))
    return "sha256:" + digest.hexdigest()[:32]


def identity_of(image, source: dict | None = None) -> str:
    """One scan's identity: ``dicom:SERIES_UID`` (``/SOP_UID`` for a single image whose SOP
    Instance UID is known) when ``source`` (the reader's ``napari_fmbff_source`` record,
    ``Volume.metadata``) says it came from DICOM; else the pixels' ``content_hash``.

    A single-slice DICOM without a SOP UID gets the series UID and the pixels' hash, so two
    images of one series stay two cases."""
    source = source or {}
    uid = source.get("series_uid")
    if source.get("format") == "dicom" and uid:
        sops = source.get("sop_instance_uids") or [source.get("sop_instance_uid")]
        single = int(source.get("n_slices", 0) or 0) == 1 or np.ndim(image) == 2
        if not single:
            return f"dicom:{uid}"
        sop = sops[0] if len(sops) == 1 and sops[0] else None
        return f"dicom:{uid}/{sop}" if sop else f"dicom:{uid}/{content_hash(image)}"
    return content_hash(image)


@dataclass
class Case:
    """One case as the record keeps it (``Store.cases``)."""

    id: str
    record: dict

    @property
    def slices(self) -> list[int]:
        return list(self.record.get("corrected_slices", []))

    @property
    def name(self) -> str:
        return str(self.record.get("name") or self.id)

    def describe(self) -> str:
        n = len(self.slices)
        return f"{self.id} ({self.name}, {n} corrected slice{'s' if n != 1 else ''})"


@dataclass
class TrainingSlice:
    """One labelled slice of a case, read on demand (``Store.training_slices``)."""

    image: np.ndarray      # (Y, X) or (Y, X, C), the stored intensities
    mask: np.ndarray       # (Y, X) uint8 0 / 1
    case: str
    z: int

    def __iter__(self):  # (image plane, mask plane, case id, z)
        return iter((self.image, self.mask, self.case, self.z))


def open_store(path=None) -> Store:
    """The store in ``path`` (default ``default_store_dir()``), checked but not created (the
    first case creates it). One line (``StoreError``) for a file in the way, a damaged record,
    or a folder holding other files. A folder in nnU-Net v2's raw layout that is not ours
    opens read-only (``fmbff train`` reads it; nothing is added to it)."""
    path = Path(path).expanduser() if path else default_store_dir()
    if path.exists() and not path.is_dir():
        raise StoreError(f"{path}: a file is in the way of the corrections store (it is not a "
                         "folder); choose a folder (empty, or an existing store)")
    if (path / RECORD).exists():
        return Store(path, _read_json(path / RECORD, "the store's record"))
    if (path / "dataset.json").is_file() and (path / "imagesTr").is_dir():
        return Store(path, _foreign_record(path), read_only=True)
    others = sorted(p.name for p in path.iterdir() if not p.name.startswith(".")) \
        if path.is_dir() else []
    if others:
        shown = ", ".join(others[:3]) + (f" and {len(others) - 3} more" if len(others) > 3 else "")
        raise StoreError(f"{path}: holds other files ({shown}), not a corrections store; "
                         "choose an empty folder or an existing store")
    return Store(path, _new_record())


def _new_record() -> dict:
    return {"format": FORMAT, "created": _now(), "next": 1, "cases": {}, "pending": [],
            "models": [], "channel_names": None}


def _read_json(path: Path, what: str) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        why = err.strerror if isinstance(err, OSError) and err.strerror else "not valid JSON"
        raise StoreError(f"{path}: cannot read {what} ({why}); restore it from a backup or "
                         "choose another store folder") from None
    if not isinstance(data, dict) or (path.name == RECORD and data.get("format") != FORMAT):
        raise StoreError(f"{path}: not a napari-fmbff store record; restore it or choose "
                         "another store folder")
    return data


def _foreign_record(path: Path) -> dict:
    """A record for an nnU-Net v2 raw folder made elsewhere: every image / label pair is a
    case; its labelled slices are found when reading (``corrected_slices`` None)."""
    meta = _read_json(path / "dataset.json", "dataset.json")
    ending = str(meta.get("file_ending", FILE_ENDING))
    labels = meta.get("labels") or {}
    record = _new_record()
    record.update(channel_names=meta.get("channel_names"), file_ending=ending,
                  ignore=labels.get("ignore"), foreign=True)
    for image in sorted((path / "imagesTr").glob(f"*_0000{ending}")):
        case = image.name[: -len(f"_0000{ending}")]
        if (path / "labelsTr" / f"{case}{ending}").is_file():
            record["cases"][case] = {"name": case, "corrected_slices": None}
    return record


@contextlib.contextmanager
def _writing(store: Path):
    """OSErrors while writing the store as one StoreError line saying what to do."""
    try:
        yield
    except OSError as err:
        hint = {errno.ENOSPC: "the disk is full: free some space or choose another store "
                              "folder",
                errno.EDQUOT: "over the disk quota: free some space or choose another store "
                              "folder",
                errno.EROFS: "read-only: choose a store folder you can write to",
                errno.EACCES: "no permission: choose a store folder you can write to",
                errno.EPERM: "not permitted: choose a store folder you can write to",
                }.get(err.errno, "check the folder and try again")
        where = err.filename or store
        raise StoreError(f"{where}: cannot write the corrections store "
                         f"({err.strerror or err}); {hint}; the store was left as it was") \
            from None


class Store:
    """A corrections store (``open_store``). Cases are kept in the order they were last
    added or updated; the last is the newest."""

    def __init__(self, path: Path, record: dict, read_only: bool = False):
        self.path, self.record, self.read_only = Path(path), record, read_only
        #: Slices the last ``training_slices`` left out because part of them was ignore.
        self.skipped_partial = 0

    def __repr__(self) -> str:
        return f"Store({str(self.path)!r}: {self.summary()})"

    # ---- reading ---------------------------------------------------------------------------

    def cases(self) -> list[Case]:
        return [Case(cid, dict(rec)) for cid, rec in self.record["cases"].items()]

    def case(self, case_id: str) -> Case:
        if case_id not in self.record["cases"]:
            names = ", ".join(self.record["cases"]) or "none"
            raise StoreError(f"{self.path}: no case {case_id!r} in the store (cases: {names})")
        return Case(case_id, dict(self.record["cases"][case_id]))

    def find(self, identity: str) -> str | None:
        """The id of the case of the scan ``identity`` (``identity_of``), or None."""
        return next((cid for cid, rec in self.record["cases"].items()
                     if rec.get("identity") == identity), None)

    @property
    def newest(self) -> str | None:
        return next(reversed(self.record["cases"]), None)

    @property
    def n_slices(self) -> int:
        """Corrected slices over all cases (a store made elsewhere: its cases' slice count
        is known once read, so it counts 0 here)."""
        return sum(len(rec.get("corrected_slices") or []) for rec in self.record["cases"].values())

    def summary(self) -> str:
        n, m = len(self.record["cases"]), self.n_slices
        return f"{n} case{'s' if n != 1 else ''}, {m} corrected slice{'s' if m != 1 else ''}"

    @property
    def latest_model(self) -> Path | None:
        """The newest model trained on this store that still exists and learned no case since
        removed from it (a removed case's knowledge is not carried on); None: use the base."""
        current = set(self.record["cases"])
        for entry in reversed(self.record.get("models", [])):
            path = Path(entry.get("path", ""))
            if set(entry.get("cases", [])) <= current and path.is_file():
                return path
        return None

    def _ending(self) -> str:
        return str(self.record.get("file_ending", FILE_ENDING))

    def _files(self, case_id: str, channels: int = 1) -> tuple[list[Path], Path]:
        end = self._ending()
        images = [self.path / "imagesTr" / f"{case_id}_{c:04d}{end}" for c in range(channels)]
        return images, self.path / "labelsTr" / f"{case_id}{end}"

    def _channels(self) -> int:
        return max(1, len(self.record.get("channel_names") or {}))

    def read_case(self, case_id: str):
        """(image, labels, record) of a case as stored: the image in its stored intensities
        ((Y, X[, C]) for a 2D image, (Z, Y, X[, C]) for a volume), the labels on its grid
        (1 lesion, 0 background, ``IGNORE`` on slices nobody corrected)."""
        import nibabel as nib

        case = self.case(case_id)
        images, label_path = self._files(case_id, self._channels())
        try:
            planes = [np.asanyarray(nib.load(str(p)).dataobj).transpose(2, 1, 0) for p in images]
            labels = np.asanyarray(nib.load(str(label_path)).dataobj).transpose(2, 1, 0)
        except (OSError, ValueError) as err:
            raise StoreError(f"{self.path}: case {case_id}'s files cannot be read ({err}); "
                             "remove the case or restore the store") from None
        image = planes[0] if len(planes) == 1 else np.stack(planes, axis=-1)
        if case.record.get("is_2d"):
            image, labels = image[0], labels[0]
        return image, np.asarray(labels).astype(np.uint8), case.record

    def training_cases(self, pending: PendingCase | None = None) -> list[str]:
        """The ids a training run reads: every case, with ``pending`` (a case staged but not
        committed) last, in place of the case it replaces."""
        ids = [cid for cid in self.record["cases"] if pending is None or cid != pending.replaces]
        return ids + ([pending.id] if pending is not None else [])

    def training_slices(self, cases=None, pending: PendingCase | None = None):
        """Yield (image plane, mask plane, case id, z) (a ``TrainingSlice``) for every
        labelled slice of ``cases`` (default: ``training_cases(pending)``), reading one slice
        at a time; slices that are all ignore are never read, slices partly ignore are
        skipped (counted in ``skipped_partial``: the trainer has no per-pixel ignore)."""
        import nibabel as nib

        self.skipped_partial = 0
        ignore = self.record.get("ignore", IGNORE) if self.record.get("foreign") else IGNORE
        for case_id in (cases if cases is not None else self.training_cases(pending)):
            staged = pending is not None and case_id == pending.id
            rec = pending.entry if staged else self.case(case_id).record
            images, label_path = self._files(
                case_id, len(pending.channel_names) if staged else self._channels())
            proxies = [nib.load(str(p)).dataobj for p in images]
            labels = nib.load(str(label_path)).dataobj
            zs = rec.get("corrected_slices")
            if zs is None:  # a store made elsewhere: the slices not all ignore
                zs = _labelled_slices(np.asanyarray(labels), ignore)
            for z in zs:
                mask = np.rint(np.asarray(labels[:, :, z], np.float64)).T
                if ignore is not None and (mask == ignore).any():
                    self.skipped_partial += int(not (mask == ignore).all())
                    continue
                planes = [np.asarray(p[:, :, z]).T for p in proxies]
                plane = planes[0] if len(planes) == 1 else np.stack(planes, axis=-1)
                yield TrainingSlice(plane, (mask > 0).astype(np.uint8), case_id, int(z))

    # ---- writing ---------------------------------------------------------------------------

    def add_case(self, image, labels, corrected_slices, **kwargs) -> str:
        """``stage_case`` and commit at once; returns the case id."""
        pending = self.stage_case(image, labels, corrected_slices, **kwargs)
        pending.commit()
        return pending.id

    def stage_case(self, image, labels, corrected_slices, *, rgb: bool = False,
                   source: str = "", name: str = "", identity: str | None = None,
                   source_meta: dict | None = None, model: str | None = None,
                   intensity: dict | None = None, spacing=None) -> PendingCase:
        """Write an image and its corrected slices as a pending case (not yet part of the
        store: ``commit`` or ``discard`` it). ``labels``: the image's labels (any lesion id
        counts as lesion); ``corrected_slices``: the slices the user corrected or accepted
        (z of a volume; [0] or [] for a 2D image: its one slice). The same scan again
        (``identity``, default ``identity_of(image, source_meta)``) updates its case: these
        slices replace the case's, its other corrected slices stay. ``source_meta``: the
        reader's record (DICOM UID, modality, affine); ``model`` and ``intensity`` (the
        setting as recorded, e.g. ``{"setting": ..., "applied": ..., "describe": ...}``)
        are kept as the case's provenance."""
        self._check_writable()
        volume, is_2d = _as_volume(image, rgb)
        grid = _labels_grid(labels, volume.shape[:3], is_2d)
        zs = sorted({int(z) for z in corrected_slices} or ({0} if is_2d else set()))
        if not zs or not all(0 <= z < volume.shape[0] for z in zs):
            raise StoreError(f"corrected slices {zs} do not fit the image's {volume.shape[0]} "
                             "slice(s); correct at least one slice of this image")
        identity = identity or identity_of(image, source_meta)
        old = self.find(identity)
        merged, slices = self._merged_labels(old, grid, zs, volume.shape[:3], identity)
        channel_names = self._channel_names(volume, source_meta)
        entry = {"identity": identity, "name": name or Path(str(source)).name or "image",
                 "source": str(source), "added": _now(), "updated": _now(),
                 "model": model, "intensity": intensity or {}, "corrected_slices": slices,
                 "shape": list(np.shape(image)), "dtype": str(volume.dtype), "is_2d": is_2d,
                 "spacing": [float(v) for v in spacing] if spacing is not None else
                 (source_meta or {}).get("spacing_mm"),
                 "series_uid": (source_meta or {}).get("series_uid"),
                 "modality": (source_meta or {}).get("modality")}
        if old is not None:
            entry["added"] = self.record["cases"][old].get("added", entry["added"])
        return self._write_pending(volume, merged, entry, old, channel_names,
                                   _case_affine(source_meta, spacing, is_2d))

    def _check_writable(self) -> None:
        if self.read_only:
            raise StoreError(f"{self.path}: an nnU-Net data set made elsewhere (no {RECORD}); "
                             "napari-fmbff reads it but never writes into it: choose an empty "
                             "folder for the corrections store")

    def _merged_labels(self, old, grid, zs, shape, identity):
        """The case's label volume: ``grid``'s corrected slices over the old case's (same
        scan), every other slice ignore; and the sorted corrected slices."""
        merged = np.full(shape, IGNORE, np.uint8)
        slices = set(zs)
        if old is not None:
            rec = self.record["cases"][old]
            stored_labels = self.read_case(old)[1]
            stored = tuple(np.shape(stored_labels))
            wanted = tuple(shape[1:]) if rec.get("is_2d") else tuple(shape)
            if stored != wanted:
                raise StoreError(
                    f"{self.path}: case {old} has the same scan identity ({identity}) but "
                    f"shape {stored}, and this image is {wanted}; the UID is not unique: "
                    f"remove case {old} first, or check the series you opened")
            before = stored_labels.reshape(shape)
            kept = [z for z in rec.get("corrected_slices", []) if z not in slices]
            merged[kept] = before[kept]
            slices.update(kept)
        merged[zs] = (np.asarray(grid)[zs] > 0).astype(np.uint8)
        return merged, sorted(slices)

    def _channel_names(self, volume, source_meta) -> dict:
        channels = volume.shape[3] if volume.ndim == 4 else 1
        names = ({str(c): n for c, n in enumerate("RGB")} if channels == 3 else
                 {"0": str((source_meta or {}).get("modality") or "image")})
        have = self.record.get("channel_names")
        if have and len(have) != len(names):
            kinds = {1: "grey", 3: "RGB"}
            raise StoreError(f"{self.path}: the store holds {kinds.get(len(have), len(have))} "
                             f"images and this image is {kinds[channels]}; one store holds one "
                             "kind of image: choose another store folder for it")
        return have or names

    def _write_pending(self, volume, labels, entry, old, channel_names, affine) -> PendingCase:
        existed = (self.path / RECORD).exists()
        with _writing(self.path):
            self._tidy()
            before = json.loads(json.dumps(self.record))
            slug = re.sub(r"[^A-Za-z0-9]+", "-", entry["name"].split(".")[0]).strip("-")[:24]
            case_id = f"{slug or 'case'}_{int(self.record['next']):03d}"
            self.record["next"] = int(self.record["next"]) + 1
            self.record["pending"].append(case_id)
            self._save_record()
        pending = PendingCase(self, case_id, entry, old, channel_names, before, existed)
        try:
            with _writing(self.path):
                images, label_path = self._files(case_id, len(channel_names))
                planes = [volume] if volume.ndim == 3 else \
                    [volume[..., c] for c in range(volume.shape[3])]
                from .medical import write_nifti, write_nifti_labels

                for path, plane in zip(images, planes):
                    write_nifti(path, plane, affine)

                write_nifti_labels(label_path, labels, affine, description="fmbff corrections")
        except BaseException:
            pending.discard()
            raise
        return pending

    def remove_case(self, case_id: str) -> None:
        """Take a case out of the store (its files too). Removing the last case leaves an
        empty store: the next fine-tune starts from the chosen base model again."""
        self._check_writable()
        self.case(case_id)
        with _writing(self.path):
            self._tidy()
            del self.record["cases"][case_id]
            self.record["pending"].append(case_id)  # its files go in _tidy, even after a crash
            self._save_record()
            self._write_dataset_json()
            self._tidy()

    def record_model(self, path, *, base=None, cases=None, slices: int | None = None) -> None:
        """Note a model trained on the store (its lineage: the base and the cases); the
        newest one is ``latest_model``."""
        self._check_writable()
        with _writing(self.path):
            self.record.setdefault("models", []).append(self._model_entry(path, base, cases,
                                                                          slices))
            self._save_record()

    def _model_entry(self, path, base, cases, slices) -> dict:
        cases = list(cases if cases is not None else self.record["cases"])
        return {"path": str(Path(path).resolve()), "name": Path(path).stem,
                "base": str(base) if base else None, "cases": cases,
                "slices": slices if slices is not None else self.n_slices, "trained": _now()}

    def _save_record(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        with atomic_path(self.path / RECORD, overwrite=True) as tmp:
            tmp.write_text(json.dumps(self.record, indent=1))

    def _write_dataset_json(self) -> None:
        meta = {"channel_names": self.record.get("channel_names") or {"0": "image"},
                "labels": LABELS, "numTraining": len(self.record["cases"]),
                "file_ending": FILE_ENDING, "name": "napari-fmbff corrections",
                "description": "Slices corrected in napari-fmbff; every other slice is the "
                               f"ignore label. Provenance per case: {RECORD}."}
        with atomic_path(self.path / "dataset.json", overwrite=True) as tmp:
            tmp.write_text(json.dumps(meta, indent=1))

    def _tidy(self) -> None:
        """Remove the files of pending or removed cases (an add that never committed, a
        case replaced or removed) and forget them."""
        stale = [cid for cid in self.record.get("pending", []) if cid not in self.record["cases"]]
        if not stale:
            return
        for case_id in stale:
            images, label_path = self._files(case_id, max(3, self._channels()))
            for path in (*images, label_path):
                path.unlink(missing_ok=True)
        self.record["pending"] = [c for c in self.record["pending"] if c not in stale]
        self._save_record()


@dataclass
class PendingCase:
    """A case written but not yet in the store (``Store.stage_case``)."""

    store: Store
    id: str
    entry: dict
    replaces: str | None
    channel_names: dict
    _before: dict = field(repr=False, default_factory=dict)
    _existed: bool = True
    done: bool = False

    def commit(self, model=None, *, base=None) -> None:
        """Make the case part of the store in one atomic step (replacing the same scan's old
        case); ``model``: a model just trained on the store with it (lineage, ``base``)."""
        if self.done:
            return
        store = self.store
        record, kept = store.record, json.loads(json.dumps(store.record))
        with _writing(store.path), _restoring(store, kept):
            if self.replaces is not None:
                record["cases"].pop(self.replaces, None)
                record["pending"].append(self.replaces)
            record["cases"][self.id] = self.entry
            record["pending"] = [c for c in record["pending"] if c != self.id]
            record["channel_names"] = self.channel_names
            if model is not None:
                record.setdefault("models", []).append(store._model_entry(model, base, None,
                                                                          None))
            store._save_record()
            self.done = True
        with _writing(store.path):
            store._write_dataset_json()
            store._tidy()

    def discard(self) -> None:
        """Remove the pending case's files and put the record back as it was (best effort:
        what cannot be removed now is removed by the next write)."""
        if self.done:
            return
        self.done = True
        store = self.store
        with contextlib.suppress(OSError):
            images, label_path = store._files(self.id, len(self.channel_names))
            for path in (*images, label_path):
                path.unlink(missing_ok=True)
            store.record = self._before
            if self._existed:
                store._save_record()
            else:
                (store.path / RECORD).unlink(missing_ok=True)
                for sub in ("imagesTr", "labelsTr"):
                    with contextlib.suppress(OSError):
                        (store.path / sub).rmdir()


@contextlib.contextmanager
def _restoring(store: Store, record: dict):
    """On an error, ``store.record`` back to ``record`` (what the file on disk still says)."""
    try:
        yield
    except BaseException:
        store.record = record
        raise


def _as_volume(image, rgb: bool) -> tuple[np.ndarray, bool]:
    """(Z, Y, X) or (Z, Y, X, C) in a dtype NIfTI keeps exactly, and whether it was 2D."""
    array = np.asarray(image)
    is_2d = array.ndim == (3 if rgb else 2)
    if is_2d:
        array = array[None]
    if array.ndim != (4 if rgb else 3):
        raise StoreError(f"an image of shape {np.shape(image)} cannot be stored: a 2D image or "
                         "a (Z, Y, X) stack is needed")
    if rgb and array.shape[-1] not in (3, 4):
        raise StoreError(f"a colour image needs 3 or 4 channels, got {array.shape[-1]}")
    if rgb:
        array = array[..., :3]
    if array.dtype == bool:
        array = array.astype(np.uint8)
    elif array.dtype.kind in "iu" and array.dtype.itemsize == 8:
        fits = array.size == 0 or (array.min() >= -2**31 and array.max() < 2**31)
        array = array.astype(np.int32 if fits else np.float64)
    elif array.dtype == np.float16:
        array = array.astype(np.float32)
    return array, is_2d


def _labels_grid(labels, shape, is_2d: bool) -> np.ndarray:
    grid = np.asarray(labels)
    grid = grid[None] if is_2d and grid.ndim == 2 else grid
    if tuple(grid.shape) != tuple(shape):
        raise StoreError(f"labels of shape {np.shape(labels)} do not fit the image's "
                         f"{tuple(shape[1:]) if is_2d else tuple(shape)}; give this image's "
                         "labels")
    return grid


def _case_affine(source_meta, spacing, is_2d: bool) -> np.ndarray:
    """(z, y, x, 1) -> RAS mm: the source scan's affine where the reader recorded one (DICOM's
    LPS turned to RAS), else the layer's spacing, else 1 mm voxels."""
    from .medical import record_ras_affine

    meta = source_meta or {}
    if meta.get("affine") is not None:
        return record_ras_affine(meta)
    affine = np.eye(4)
    if spacing is not None:
        steps = [float(s) for s in spacing][-3:]
        steps = [1.0] * (3 - len(steps)) + steps
        affine[[0, 1, 2], [0, 1, 2]] = steps
    return affine


def _labelled_slices(labels: np.ndarray, ignore) -> list[int]:
    """The z of every slice (NIfTI's last axis) not all ``ignore``."""
    labels = np.rint(np.asarray(labels, np.float64))
    if ignore is None:
        return list(range(labels.shape[2]))
    return [z for z in range(labels.shape[2]) if not (labels[:, :, z] == ignore).all()]
