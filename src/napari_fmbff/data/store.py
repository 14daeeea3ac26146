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
    STORE/fmbff_store.json      our record (store_record.py: StoreRecord): per case its
                                identity, source, dates, the model that proposed the labels,
                                the intensity setting, the corrected slices (CaseEntry); and
                                the models trained on the store (ModelEntry: lineage, and
                                whether each was promoted to the store's latest)

One store per kind of image under the store folder (issue 28): ``FOLDER/grey`` and
``FOLDER/rgb``, chosen by the image (``open_store_for``). A store of the earlier layout (its
record at the top of the folder) is read in place, never moved: it serves its own kind, and
the other kind gets its subfolder beside it.

One case per image or volume: its identity is the DICOM Series Instance UID (with the SOP
Instance UID of a single image, where known) when the image came from DICOM, else a hash of
its pixels, so correcting the same scan again updates its case (the new corrected slices
replace those slices; earlier corrected slices stay). A 2D image is a one-slice case.

Writes never leave a half-made store: a case is written under a new id, announced as
"pending" in the record first, and becomes part of the store only when the record says so
(``PendingCase.commit``, one atomic rename, ``Store.admit``); ``discard`` removes a pending
case's files (``Store.withdraw``). An update is a new id replacing the old case in that one
step.

Several processes share a store (two napari windows, a command-line run beside one): every
change of the record (staging, commit, discard, removal, a model registered) is made under a
cross-process lock (``filelock``) on the record as it is on disk at that moment, so two
writers both land whole. Each pending case also holds a lock of its own until it is committed
or discarded: a writer removes only the files of pending cases whose writer is gone (a crash:
the system freed its lock), never a live writer's. A case the record lists whose files are
gone is dropped when the store is opened, with one warning naming it (``StoreWarning``,
``Store.repairs``).

numpy, nibabel and filelock only; the callers (training/store_training.py) bring the model
side."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import threading
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from .._files import atomic_path, os_error_hint
from .store_record import FORMAT, CaseEntry, ModelEntry, StoreRecord
from .store_record import now as _now

STORE_DIR_ENV = "FMBFF_STORE_DIR"
RECORD = "fmbff_store.json"
FILE_ENDING = ".nii.gz"
LESION, IGNORE = 1, 2
LABELS = {"background": 0, "lesion": LESION, "ignore": IGNORE}
#: One store per kind of image under the store folder, by the image's channel count.
KINDS = {1: "grey", 3: "rgb"}
#: The lock every change of a store's record is made under (another process waits for it).
LOCK = ".fmbff_store.lock"
#: Where each pending case's own lock lives (held by its writer until commit or discard).
PENDING_LOCKS = ".fmbff_pending"
#: Seconds a writer waits for another process's staging or commit (each takes seconds).
LOCK_TIMEOUT = 300.0


class StoreError(ValueError):
    """A store that cannot be used or changed as asked; the message is one line to act on."""


class StoreWarning(UserWarning):
    """A store repaired when opened: a case listed without its files was dropped."""


def default_store_dir() -> Path:
    """The user's corrections store: $FMBFF_STORE_DIR, else ``store`` in the platform's user
    data folder, beside the models folder (``model.registry.models_dir``)."""
    env = os.environ.get(STORE_DIR_ENV)
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_data_dir("napari-fmbff", appauthor=False)) / "store"


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


@dataclass(frozen=True)
class CaseSource:
    """What a new case records of its image and its labels (``Store.stage_case``).

    Args:
        rgb: the image is one colour picture (Y, X, 3|4), not a stack.
        source: where the image came from (a file, a layer).
        name: the case's name (default: the source's file name).
        identity: the scan's identity (default ``identity_of(image, source_meta)``): the
            same scan again updates its case.
        source_meta: the reader's record (DICOM UID, modality, affine).
        model: the model that proposed the labels.
        intensity: the intensity setting as recorded (``{"setting", "applied",
            "describe"}``).
        spacing: the voxel spacing (mm), when the reader knows it.
    """

    rgb: bool = False
    source: str = ""
    name: str = ""
    identity: str | None = None
    source_meta: dict | None = None
    model: str | None = None
    intensity: dict | None = None
    spacing: tuple | list | None = None


@dataclass
class Case:
    """One case as the record keeps it (``Store.cases``): its id and a copy of its entry."""

    id: str
    entry: CaseEntry

    @property
    def slices(self) -> list[int]:
        return list(self.entry.corrected_slices or [])

    @property
    def name(self) -> str:
        return str(self.entry.name or self.id)

    def describe(self) -> str:
        """The case as the store dock lists it: its id, name and the slices of each kind
        (``CaseEntry.slice_kinds``), or the number of corrected slices where the record
        does not say."""
        kinds = self.entry.slice_kinds()
        if kinds is None:
            n = len(self.slices)
            return f"{self.id} ({self.name}, {n} corrected slice{'s' if n != 1 else ''})"
        words = [f"{kinds['lesion']} lesion", f"{kinds['lesion_free']} lesion-free"]
        if kinds["unreviewed"]:
            words.append(f"{kinds['unreviewed']} unreviewed")
        return f"{self.id} ({self.name}: {', '.join(words)} slice(s))"


@dataclass
class TrainingSlice:
    """One labelled slice of a case, read on demand (``Store.training_slices``)."""

    image: np.ndarray      # (Y, X) or (Y, X, C), the stored intensities
    mask: np.ndarray       # (Y, X) uint8 0 / 1
    case: str
    z: int

    def __iter__(self):  # (image plane, mask plane, case id, z)
        return iter((self.image, self.mask, self.case, self.z))


def image_kind(rgb: bool) -> str:
    """The kind of image a store holds: "rgb" for a colour image (3 or 4 channels), else
    "grey" (one channel: CT, MR, ultrasound, a grey photo)."""
    return KINDS[3] if rgb else KINDS[1]


def open_store_for(folder=None, *, rgb: bool = False) -> Store:
    """The store for this kind of image (``image_kind``) under the store folder ``folder``
    (default ``default_store_dir()``): ``folder/grey`` or ``folder/rgb``, checked but not
    created. A store of the earlier layout (its record at the top of ``folder``) is read in
    place for its own kind; an nnU-Net folder made elsewhere opens read-only as it is."""
    folder = Path(folder).expanduser() if folder else default_store_dir()
    kind = image_kind(rgb)
    _check_not_a_file(folder)
    if (folder / RECORD).exists() or _is_nnunet(folder):
        top = open_store(folder)
        if top.read_only or top.kind == kind:
            return top
    elif folder.is_dir():
        _check_only_stores(folder)
    store = open_store(folder / kind)
    store.folder_kind = kind
    return store


def open_store(path=None) -> Store:
    """The store in ``path`` (default ``default_store_dir()``), checked but not created (the
    first case creates it); a case whose files are gone is dropped (``Store.repairs``). One
    line (``StoreError``) for a file in the way, a damaged record, a folder holding other
    files, or a store folder holding one store per kind (name one of them). A folder in
    nnU-Net v2's raw layout that is not ours opens read-only (``fmbff train`` reads it;
    nothing is added to it)."""
    path = Path(path).expanduser() if path else default_store_dir()
    _check_not_a_file(path)
    if (path / RECORD).exists():
        store = Store(path, _read_record(path / RECORD))
        store.repair()
        return store
    if _is_nnunet(path):
        return Store(path, _foreign_record(path), read_only=True)
    kinds = [name for name in _visible(path) if name in KINDS.values()]
    if kinds and kinds == _visible(path):
        raise StoreError(f"{path}: holds one corrections store per kind of image "
                         f"({', '.join(kinds)}); give one of them, e.g. {path / kinds[0]}")
    _check_only_stores(path, allowed=())
    return Store(path, StoreRecord())


def _visible(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir() if not p.name.startswith(".")) \
        if path.is_dir() else []


def _is_nnunet(path: Path) -> bool:
    return (path / "dataset.json").is_file() and (path / "imagesTr").is_dir()


def _check_not_a_file(path: Path) -> None:
    if path.exists() and not path.is_dir():
        raise StoreError(f"{path}: a file is in the way of the corrections store (it is not a "
                         "folder); choose a folder (empty, or an existing store)")


def _check_only_stores(path: Path, allowed=tuple(KINDS.values())) -> None:
    """A StoreError when ``path`` holds files other than the stores ``allowed``."""
    others = [name for name in _visible(path) if name not in allowed]
    if others:
        shown = ", ".join(others[:3]) + (f" and {len(others) - 3} more" if len(others) > 3 else "")
        raise StoreError(f"{path}: holds other files ({shown}), not a corrections store; "
                         "choose an empty folder or an existing store")


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


def _read_record(path: Path) -> StoreRecord:
    """A store's record as it is on disk, else a new one (nothing there yet)."""
    if not path.exists():
        return StoreRecord()
    return StoreRecord.from_json(_read_json(path, "the store's record"))


def _foreign_record(path: Path) -> StoreRecord:
    """A record for an nnU-Net v2 raw folder made elsewhere: every image / label pair is a
    case; its labelled slices are found when reading (``corrected_slices`` None)."""
    meta = _read_json(path / "dataset.json", "dataset.json")
    ending = str(meta.get("file_ending", FILE_ENDING))
    labels = meta.get("labels") or {}
    record = StoreRecord(channel_names=meta.get("channel_names"), file_ending=ending,
                         ignore=labels.get("ignore"), foreign=True)
    for image in sorted((path / "imagesTr").glob(f"*_0000{ending}")):
        case = image.name[: -len(f"_0000{ending}")]
        if (path / "labelsTr" / f"{case}{ending}").is_file():
            record.cases[case] = CaseEntry(name=case, corrected_slices=None)
    return record


@contextlib.contextmanager
def _writing(store: Path):
    """OSErrors while writing the store as one StoreError line saying what to do."""
    try:
        yield
    except OSError as err:
        hint = os_error_hint(err, "choose a store folder you can write to",
                             "check the folder and try again")
        where = err.filename or store
        raise StoreError(f"{where}: cannot write the corrections store "
                         f"({err.strerror or err}); {hint}; the store was left as it was") \
            from None


def _pending_lock(store: Path, case_id: str):
    """The lock a pending case's writer holds until it commits or discards (any thread may
    release it: a worker stages, the same worker or its caller commits)."""
    from filelock import FileLock

    return FileLock(str(store / PENDING_LOCKS / f"{case_id}.lock"), thread_local=False)


class Store:
    """A corrections store (``open_store``, ``open_store_for``). Cases are kept in the order
    they were last added or updated; the last is the newest."""

    def __init__(self, path: Path, record: StoreRecord, read_only: bool = False):
        self.path, self.record, self.read_only = Path(path), record, read_only
        #: Slices the last ``training_slices`` left out because part of them was ignore.
        self.skipped_partial = 0
        #: One line per case dropped because its files were gone (see ``repair``).
        self.repairs: list[str] = []
        #: The kind of image its folder is for (``open_store_for``), until its record says.
        self.folder_kind: str | None = None
        self._held = threading.local()

    def __repr__(self) -> str:
        return f"Store({str(self.path)!r}: {self.summary()})"

    @property
    def kind(self) -> str | None:
        """"grey" or "rgb" (``KINDS``): what its images are, else what its folder is for."""
        names = self.record.channel_names
        if names:
            return KINDS.get(len(names), f"{len(names)}-channel")
        return self.folder_kind

    def describe(self) -> str:
        """Which store this is, for a status line: its folder and the kind of image."""
        kind = self.kind
        return f"{self.path}" + (f" ({kind} images)" if kind else "")

    # ---- the lock and the record as it is on disk --------------------------------------------

    @contextlib.contextmanager
    def _locked(self):
        """The store's cross-process lock, with the record read again under it (another
        process may have changed it). Held while staging or committing, never while
        training; never taken twice by one thread (see ``_holding``)."""
        from filelock import FileLock, Timeout

        self.path.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(self.path / LOCK), timeout=LOCK_TIMEOUT)
        try:
            lock.acquire()
        except Timeout:
            raise StoreError(f"{self.path}: another process has been writing the corrections "
                             f"store for over {LOCK_TIMEOUT:.0f} s; try again when it is done"
                             ) from None
        self._held.on = True
        try:
            self._reread()
            yield
        except BaseException:
            with contextlib.suppress(OSError, StoreError):
                self._reread()  # what the file still says (a write may have failed)
            raise
        finally:
            self._held.on = False
            lock.release()

    @property
    def _holding(self) -> bool:
        return getattr(self._held, "on", False)

    def _reread(self) -> None:
        self.record = _read_record(self.path / RECORD)

    def reload(self) -> None:
        """Read the record again (another process may have added a case or a model since
        this store was opened), then ``repair``."""
        if self.read_only:
            self.record = _foreign_record(self.path)
            return
        self._reread()
        self.repair()

    def repair(self) -> list[str]:
        """Drop every case the record lists whose files are gone, with one warning naming
        each (``StoreWarning``; kept in ``repairs`` for the dock and the command line). The
        record remembers them (``lost``); a model trained on them stays usable. Returns the
        lines of this repair."""
        if self.read_only or not self._missing():
            return []
        if self._holding:
            lines = self._drop_missing()
        else:
            try:
                with _writing(self.path), self._locked():
                    lines = self._drop_missing()
            except StoreError as err:  # a read-only disk: dropped from this view only
                lines = [f"{line} (not written back: {err})" for line in self._drop_missing(
                    save=False)]
        for line in lines:
            warnings.warn(line, StoreWarning, stacklevel=2)
        self.repairs += lines
        return lines

    def _missing(self) -> dict[str, Path]:
        """The cases whose files are gone -> the first missing file."""
        missing = {}
        for case_id in self.record.cases:
            images, label_path = self._files(case_id, self._channels())
            gone = next((p for p in (*images, label_path) if not p.is_file()), None)
            if gone is not None:
                missing[case_id] = gone
        return missing

    def _drop_missing(self, save: bool = True) -> list[str]:
        """Drop the cases ``_missing`` finds (their files left are removed by the tidy: a
        half case is no nnU-Net case); with ``save``, under the lock, written back."""
        lines = []
        for case_id, gone in self._missing().items():
            rec = self.record.retire(case_id)
            self.record.lost.append(
                {"id": case_id, "name": rec.name, "identity": rec.identity,
                 "missing": gone.name, "dropped": _now()})
            lines.append(f"{self.path}: case {case_id} ({rec.name or case_id}) was listed "
                         f"but its files are gone ({gone.name} missing); it was dropped from the "
                         "store, its other cases are as they were")
        if lines and save:
            self._save_record()
            self._write_dataset_json()
            self._tidy()
        return lines

    # ---- reading ---------------------------------------------------------------------------

    def cases(self) -> list[Case]:
        return [Case(cid, replace(rec)) for cid, rec in self.record.cases.items()]

    def case(self, case_id: str) -> Case:
        if case_id not in self.record.cases:
            names = ", ".join(self.record.cases) or "none"
            raise StoreError(f"{self.path}: no case {case_id!r} in the store (cases: {names})")
        return Case(case_id, replace(self.record.cases[case_id]))

    def find(self, identity: str) -> str | None:
        """The id of the case of the scan ``identity`` (``identity_of``), or None."""
        return next((cid for cid, rec in self.record.cases.items()
                     if rec.identity == identity), None)

    @property
    def newest(self) -> str | None:
        return next(reversed(self.record.cases), None)

    @property
    def n_slices(self) -> int:
        """Corrected slices over all cases (a store made elsewhere: its cases' slice count
        is known once read, so it counts 0 here)."""
        return sum(len(rec.corrected_slices or []) for rec in self.record.cases.values())

    def summary(self) -> str:
        n, m = len(self.record.cases), self.n_slices
        return f"{n} case{'s' if n != 1 else ''}, {m} corrected slice{'s' if m != 1 else ''}"

    @property
    def latest_model(self) -> Path | None:
        """The newest model promoted on this store (``record_model``, ``PendingCase.commit``)
        that still exists and learned no case since removed from it (a removed case's
        knowledge is not carried on; a case dropped because its files were lost does not
        count as removed); None: no model yet. Segment's default."""
        entry = self.latest_entry
        return Path(entry.path) if entry is not None else None

    @property
    def latest_entry(self) -> ModelEntry | None:
        """The record of ``latest_model`` (its path, base, cases, promotion), or None."""
        current = set(self.record.cases) | {e.get("id") for e in self.record.lost}
        for entry in reversed(self.record.models):
            if entry.promoted is False:
                continue
            if set(entry.cases) <= current and entry.path and Path(entry.path).is_file():
                return entry
        return None

    def _ending(self) -> str:
        return str(self.record.file_ending or FILE_ENDING)

    def _files(self, case_id: str, channels: int = 1) -> tuple[list[Path], Path]:
        end = self._ending()
        images = [self.path / "imagesTr" / f"{case_id}_{c:04d}{end}" for c in range(channels)]
        return images, self.path / "labelsTr" / f"{case_id}{end}"

    def _channels(self) -> int:
        return max(1, len(self.record.channel_names or {}))

    def read_case(self, case_id: str):
        """(image, labels, entry) of a case as stored: the image in its stored intensities
        ((Y, X[, C]) for a 2D image, (Z, Y, X[, C]) for a volume), the labels on its grid
        (1 lesion, 0 background, ``IGNORE`` on slices nobody corrected). A case whose files
        are gone is dropped (``repair``) and said in one line."""
        import nibabel as nib

        case = self.case(case_id)
        images, label_path = self._files(case_id, self._channels())
        try:
            planes = [np.asanyarray(nib.load(str(p)).dataobj).transpose(2, 1, 0) for p in images]
            labels = np.asanyarray(nib.load(str(label_path)).dataobj).transpose(2, 1, 0)
        except FileNotFoundError:
            self.repair()
            raise StoreError(f"{self.path}: case {case_id}'s files are gone; it was dropped "
                             "from the store") from None
        except (OSError, ValueError) as err:
            raise StoreError(f"{self.path}: case {case_id}'s files cannot be read ({err}); "
                             "remove the case or restore the store") from None
        image = planes[0] if len(planes) == 1 else np.stack(planes, axis=-1)
        if case.entry.is_2d:
            image, labels = image[0], labels[0]
        return image, np.asarray(labels).astype(np.uint8), case.entry

    def training_cases(self, pending: PendingCase | None = None) -> list[str]:
        """The ids a training run reads: every case, with ``pending`` (a case staged but not
        committed) last, in place of the case it replaces."""
        ids = [cid for cid in self.record.cases if pending is None or cid != pending.replaces]
        return ids + ([pending.id] if pending is not None else [])

    def training_slices(self, cases=None, pending: PendingCase | None = None):
        """Yield (image plane, mask plane, case id, z) (a ``TrainingSlice``) for every
        labelled slice of ``cases`` (default: ``training_cases(pending)``), reading one slice
        at a time; slices that are all ignore are never read, slices partly ignore are
        skipped (counted in ``skipped_partial``: the trainer has no per-pixel ignore). A case
        whose files went missing meanwhile is dropped (``repair``) and skipped."""
        self.skipped_partial = 0
        ignore = self.record.ignore if self.record.foreign else IGNORE
        for case_id in (cases if cases is not None else self.training_cases(pending)):
            staged = pending is not None and case_id == pending.id
            rec = pending.entry if staged else self.case(case_id).entry
            try:
                proxies, labels = self._proxies(
                    case_id, len(pending.channel_names) if staged else self._channels())
            except FileNotFoundError:
                if staged:
                    raise
                self.repair()
                continue
            zs = rec.corrected_slices
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

    def _proxies(self, case_id: str, channels: int):
        """The lazily read images (one per channel) and labels of a case (NIfTI proxies)."""
        import nibabel as nib

        images, label_path = self._files(case_id, channels)
        return [nib.load(str(p)).dataobj for p in images], nib.load(str(label_path)).dataobj

    # ---- writing ---------------------------------------------------------------------------

    def add_case(self, image, labels, corrected_slices, **about) -> str:
        """``stage_case`` and commit at once; ``about``: the ``CaseSource`` fields. Returns
        the case id."""
        pending = self.stage_case(image, labels, corrected_slices, CaseSource(**about))
        pending.commit()
        return pending.id

    def stage_case(self, image, labels, corrected_slices,
                   about: CaseSource | None = None) -> PendingCase:
        """Write an image and its corrected slices as a pending case (not yet part of the
        store: ``commit`` or ``discard`` it). ``labels``: the image's labels (any lesion id
        counts as lesion); ``corrected_slices``: the slices the user corrected or accepted
        (z of a volume; [0] or [] for a 2D image: its one slice). ``about``
        (``CaseSource``): where the image came from and who proposed the labels; the same
        scan again (``about.identity``, default ``identity_of(image, about.source_meta)``)
        updates its case: these slices replace the case's, its other corrected slices stay.
        Staged under the store's lock, on the record as it is on disk."""
        about = about or CaseSource()
        rgb, source_meta, spacing = about.rgb, about.source_meta, about.spacing
        self.check_writable()
        volume, is_2d = _as_volume(image, rgb)
        grid = _labels_grid(labels, volume.shape[:3], is_2d)
        zs = sorted({int(z) for z in corrected_slices} or ({0} if is_2d else set()))
        if not zs or not all(0 <= z < volume.shape[0] for z in zs):
            raise StoreError(f"corrected slices {zs} do not fit the image's {volume.shape[0]} "
                             "slice(s); correct at least one slice of this image")
        identity = about.identity or identity_of(image, source_meta)
        entry = _case_entry(image, volume, is_2d, identity, about)
        with _writing(self.path), self._locked():
            self.repair()  # an earlier case of this scan whose files are gone is no case
            self._tidy()
            old = self.find(identity)
            merged, entry.corrected_slices = self._merged_labels(
                old, grid, zs, volume.shape[:3], identity)
            entry.lesion_free = [z for z in entry.corrected_slices if not merged[z].any()]
            channel_names = self._channel_names(volume, source_meta)
            if old is not None:
                entry.added = self.record.cases[old].added or entry.added
            pending = self._announce(entry, old, channel_names)
        self._write_case_files(pending, volume, merged, _case_affine(source_meta, spacing, is_2d))
        return pending

    def check_writable(self) -> None:
        """A StoreError when the store is an nnU-Net data set made elsewhere (read-only)."""
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
            rec = self.record.cases[old]
            stored_labels = self.read_case(old)[1]
            stored = tuple(np.shape(stored_labels))
            wanted = tuple(shape[1:]) if rec.is_2d else tuple(shape)
            if stored != wanted:
                raise StoreError(
                    f"{self.path}: case {old} has the same scan identity ({identity}) but "
                    f"shape {stored}, and this image is {wanted}; the UID is not unique: "
                    f"remove case {old} first, or check the series you opened")
            before = stored_labels.reshape(shape)
            kept = [z for z in rec.corrected_slices or [] if z not in slices]
            merged[kept] = before[kept]
            slices.update(kept)
        merged[zs] = (np.asarray(grid)[zs] > 0).astype(np.uint8)
        return merged, sorted(slices)

    def _channel_names(self, volume, source_meta) -> dict:
        channels = volume.shape[3] if volume.ndim == 4 else 1
        names = ({str(c): n for c, n in enumerate("RGB")} if channels == 3 else
                 {"0": str((source_meta or {}).get("modality") or "image")})
        self._check_kind(names)
        return self.record.channel_names or names

    def _check_kind(self, names: dict) -> None:
        have = self.record.channel_names
        if have and len(have) != len(names):
            kinds = {1: "grey", 3: "RGB"}
            raise StoreError(f"{self.path}: the store holds {kinds.get(len(have), len(have))} "
                             f"images and this image is {kinds[len(names)]}; one store holds "
                             "one kind of image: choose another store folder for it")

    def _announce(self, entry: CaseEntry, old, channel_names) -> PendingCase:
        """Under the lock: a new case id, its own lock taken, announced as pending."""
        from filelock import Timeout

        existed = (self.path / RECORD).exists()
        slug = re.sub(r"[^A-Za-z0-9]+", "-", entry.name.split(".")[0]).strip("-")[:24]
        number = int(self.record.next)
        case_id = f"{slug or 'case'}_{number:03d}"
        (self.path / PENDING_LOCKS).mkdir(exist_ok=True)
        lock = _pending_lock(self.path, case_id)
        try:
            lock.acquire(timeout=0)
        except Timeout:
            raise StoreError(f"{self.path}: case id {case_id} is in use by another writer; "
                             "try again") from None
        pending = PendingCase(self, case_id, entry, old, channel_names, number,
                              store_existed=existed, _lock=lock)
        self.record.next = number + 1
        self.record.pending.append(case_id)
        try:
            self._save_record()
        except BaseException:
            pending.release()
            raise
        return pending

    def _write_case_files(self, pending: PendingCase, volume, labels, affine) -> None:
        """The pending case's image and labels files (outside the store's lock: its own lock
        keeps other writers off them); any error discards the pending case."""
        from .medical import write_nifti, write_nifti_labels

        try:
            with _writing(self.path):
                images, label_path = self._files(pending.id, len(pending.channel_names))
                planes = [volume] if volume.ndim == 3 else \
                    [volume[..., c] for c in range(volume.shape[3])]
                for path, plane in zip(images, planes):
                    write_nifti(path, plane, affine)
                write_nifti_labels(label_path, labels, affine, description="fmbff corrections")
        except BaseException:
            pending.discard()
            raise

    def remove_case(self, case_id: str) -> None:
        """Take a case out of the store (its files too). Removing the last case leaves an
        empty store: the next fine-tune starts from the chosen base model again."""
        self.check_writable()
        self.case(case_id)
        with _writing(self.path), self._locked():
            self.case(case_id)  # still there on disk (another process may have removed it)
            self.record.retire(case_id)  # its files go in _tidy, even after a crash
            self._save_record()
            self._write_dataset_json()
            self._tidy()

    def record_model(self, path, *, base=None, cases=None, slices: int | None = None,
                     promoted: bool = True, gate: dict | None = None) -> None:
        """Note a model trained on the store (its lineage: the base and the cases); the
        newest one ``promoted`` is ``latest_model``; ``gate``: how the promotion was
        decided (``store_training.promotion``)."""
        self.check_writable()
        with _writing(self.path), self._locked():
            self.record.models.append(self._model_entry(path, base, cases, slices, promoted, gate))
            self._save_record()

    def _model_entry(self, path, base, cases, slices, promoted=True, gate=None) -> ModelEntry:
        cases = list(cases if cases is not None else self.record.cases)
        return ModelEntry(path=str(Path(path).resolve()), name=Path(path).stem,
                          base=str(base) if base else None, cases=cases,
                          slices=slices if slices is not None else self.n_slices,
                          trained=_now(), promoted=bool(promoted), gate=gate or None)

    # ---- a pending case joins the store or leaves it (what PendingCase asks of the store) ---

    def admit(self, pending: PendingCase, model=None, *, base=None, promoted: bool = True,
              gate: dict | None = None) -> None:
        """Make ``pending`` part of the store in one atomic step (replacing the same scan's
        old case), under the store's lock on the record as it is on disk, then free its lock
        (``PendingCase.commit``); ``model``: a model just trained on the store with it
        (lineage, ``base``), the store's latest only if ``promoted`` (``gate``: how that was
        decided)."""
        with _writing(self.path), self._locked():
            record = self.record
            if pending.id not in record.pending:
                raise StoreError(f"{self.path}: case {pending.id} is no longer pending in the "
                                 "store's record (it was changed by hand?); fine-tune again")
            self._check_kind(pending.channel_names)
            if pending.replaces is not None and pending.replaces in record.cases:
                record.retire(pending.replaces)
            record.cases[pending.id] = pending.entry
            record.unpend(pending.id)
            record.channel_names = record.channel_names or pending.channel_names
            if model is not None:
                record.models.append(self._model_entry(model, base, None, None, promoted, gate))
            self._save_record()
            pending.done = True
            pending.release()
            self._write_dataset_json()
            self._tidy()

    def withdraw(self, pending: PendingCase) -> None:
        """Remove a pending case's files and its announcement, under the store's lock, and
        free its lock (``PendingCase.discard``; best effort: what cannot be removed now is
        removed by a later write). A store this case created is left as it was before: no
        record, no folders."""
        with contextlib.suppress(OSError, StoreError), self._locked():
            images, label_path = self._files(pending.id, len(pending.channel_names))
            for path in (*images, label_path):
                path.unlink(missing_ok=True)
            record = self.record
            record.unpend(pending.id)
            if int(record.next) == pending.number + 1:
                record.next = pending.number  # nobody took a number since: as it was
            pending.release()
            if pending.store_existed or record.cases or record.pending or record.models:
                self._save_record()
            else:
                _remove_new_store(self)

    # ---- the files of the record --------------------------------------------------------------

    def _save_record(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        with atomic_path(self.path / RECORD, overwrite=True) as tmp:
            tmp.write_text(json.dumps(self.record.to_json(), indent=1))

    def _write_dataset_json(self) -> None:
        meta = {"channel_names": self.record.channel_names or {"0": "image"},
                "labels": LABELS, "numTraining": len(self.record.cases),
                "file_ending": FILE_ENDING, "name": "napari-fmbff corrections",
                "description": "Slices corrected in napari-fmbff; every other slice is the "
                               f"ignore label. Provenance per case: {RECORD}."}
        with atomic_path(self.path / "dataset.json", overwrite=True) as tmp:
            tmp.write_text(json.dumps(meta, indent=1))

    def _tidy(self) -> None:
        """Under the lock: remove the files of pending cases whose writer is gone (a crash)
        and of replaced or removed cases, and forget them. A pending case whose writer still
        holds its lock (another process, or this one) is left alone."""
        stale = [cid for cid in self.record.pending if cid not in self.record.cases]
        gone = [case_id for case_id in stale if self._sweep(case_id)]
        if gone:
            self.record.pending = [c for c in self.record.pending if c not in gone]
            self._save_record()

    def _sweep(self, case_id: str) -> bool:
        """Remove a stale case's files unless its writer holds its lock; True when removed."""
        from filelock import Timeout

        (self.path / PENDING_LOCKS).mkdir(exist_ok=True)
        lock = _pending_lock(self.path, case_id)
        try:
            lock.acquire(timeout=0)
        except Timeout:
            return False  # a live writer's pending case
        try:
            images, label_path = self._files(case_id, max(3, self._channels()))
            for path in (*images, label_path):
                path.unlink(missing_ok=True)
        finally:
            lock.release()
            Path(lock.lock_file).unlink(missing_ok=True)
        return True


def _case_entry(image, volume, is_2d, identity, about: CaseSource) -> CaseEntry:
    """A case's entry (its identity, source, dates, provenance and geometry) from what
    ``stage_case`` was told ``about`` it."""
    meta = about.source_meta or {}
    spacing = about.spacing
    return CaseEntry(
        identity=identity, name=about.name or Path(str(about.source)).name or "image",
        source=str(about.source), added=_now(), updated=_now(), model=about.model,
        intensity=about.intensity or {}, corrected_slices=[], shape=list(np.shape(image)),
        dtype=str(volume.dtype), is_2d=is_2d,
        spacing=[float(v) for v in spacing] if spacing is not None else meta.get("spacing_mm"),
        series_uid=meta.get("series_uid"), modality=meta.get("modality"))


@dataclass
class PendingCase:
    """A case written but not yet in the store (``Store.stage_case``); its writer holds its
    lock until ``commit`` or ``discard``. What the store reads of it (``Store.admit``,
    ``Store.withdraw``): its id and entry, the case it replaces, its channel names, its
    number and whether the store's record existed before it (``store_existed``)."""

    store: Store
    id: str
    entry: CaseEntry
    replaces: str | None
    channel_names: dict
    number: int = 0
    store_existed: bool = True
    _lock: object = field(default=None, repr=False)
    done: bool = False

    def commit(self, model=None, *, base=None, promoted: bool = True,
               gate: dict | None = None) -> None:
        """Make the case part of the store in one atomic step (``Store.admit``: replacing the
        same scan's old case); ``model``: a model just trained on the store with it (lineage,
        ``base``), the store's latest only if ``promoted`` (``gate``: how that was
        decided)."""
        if not self.done:
            self.store.admit(self, model, base=base, promoted=promoted, gate=gate)

    def discard(self) -> None:
        """Remove the pending case's files and its announcement (``Store.withdraw``; best
        effort)."""
        if self.done:
            return
        self.done = True
        self.store.withdraw(self)
        self.release()

    def release(self) -> None:
        """Free the case's own lock and remove its lock file (once; then a no-op)."""
        lock, self._lock = self._lock, None
        if lock is not None:
            with contextlib.suppress(OSError):
                lock.release()
                Path(lock.lock_file).unlink(missing_ok=True)


def _remove_new_store(store: Store) -> None:
    """Under the lock: the record and folders of a store whose first case was discarded."""
    (store.path / RECORD).unlink(missing_ok=True)
    store.record = StoreRecord()
    for sub in ("imagesTr", "labelsTr", PENDING_LOCKS):
        with contextlib.suppress(OSError):
            (store.path / sub).rmdir()


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
