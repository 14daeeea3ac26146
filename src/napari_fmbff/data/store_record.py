"""The corrections store's record (``fmbff_store.json``, ``data/store.py``) as types: the
record (``StoreRecord``), a case's entry (``CaseEntry``) and a trained model's entry
(``ModelEntry``).

``from_json`` / ``to_json`` read and write the one JSON format, ``napari-fmbff-store/1``::

    {"format": "napari-fmbff-store/1", "created": ISO time, "next": the next case number,
     "cases": {case id: case entry, ...} (oldest first), "pending": [case id, ...],
     "models": [model entry, ...], "channel_names": {"0": "CT"} or null,
     "lost": [{"id", "name", "identity", "missing", "dropped"}, ...] (once a case was lost)}

A key this version does not know is kept (``extra``) and written back as it was; a known key
an older record lacks reads as its default. The keys of an nnU-Net folder made elsewhere
(``file_ending``, ``ignore``, ``foreign``) are never written: such a store is read-only.

Plain Python only (the store writes the files)."""

from __future__ import annotations

import dataclasses
import datetime as _dt
from dataclasses import dataclass, field

#: The ``format`` of a store's record.
FORMAT = "napari-fmbff-store/1"


def now() -> str:
    """The time as the record writes it: UTC, ISO 8601 to the second."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


class _Json:
    """``to_json`` / ``from_json`` of an entry: its fields by name, in their order, then the
    keys it does not know (``extra``) as they were read."""

    extra: dict

    def to_json(self) -> dict:
        known = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                 if f.name != "extra"}
        return {**known, **self.extra}

    @classmethod
    def from_json(cls, data: dict):
        known = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        return cls(**{k: v for k, v in data.items() if k in known},
                   extra={k: v for k, v in data.items() if k not in known})


@dataclass
class CaseEntry(_Json):
    """One case as the record keeps it: its scan's identity (``store.identity_of``), name and
    source, when it was added and last updated, the model that proposed its labels, the
    intensity setting, the corrected slices (None: a case of a store made elsewhere, its
    labelled slices found when read), those of them that hold no lesion (``lesion_free``:
    taught as background; None in a record written before it was kept, and then not
    written), its image's shape and dtype, whether it is 2D, the voxel spacing (mm) and, from
    DICOM, the series UID and modality."""

    identity: str | None = None
    name: str = ""
    source: str = ""
    added: str | None = None
    updated: str | None = None
    model: str | None = None
    intensity: dict = field(default_factory=dict)
    corrected_slices: list[int] | None = field(default_factory=list)
    shape: list[int] | None = None
    dtype: str | None = None
    is_2d: bool = False
    spacing: list[float] | None = None
    series_uid: str | None = None
    modality: str | None = None
    lesion_free: list[int] | None = None
    extra: dict = field(default_factory=dict, repr=False)

    def to_json(self) -> dict:
        data = super().to_json()
        if self.lesion_free is None:
            data.pop("lesion_free")
        return data

    def slice_kinds(self) -> dict | None:
        """How many slices of each kind the case holds: ``lesion`` (corrected, a lesion on
        it), ``lesion_free`` (corrected or accepted, no lesion: background) and ``unreviewed``
        (the ignore label: never learned); None when the record does not say (a case of an
        older record or of a store made elsewhere)."""
        if self.lesion_free is None or self.corrected_slices is None:
            return None
        n_slices = 1 if self.is_2d or not self.shape else int(self.shape[0])
        free = len(set(self.lesion_free) & set(self.corrected_slices))
        return {"lesion": len(self.corrected_slices) - free, "lesion_free": free,
                "unreviewed": n_slices - len(self.corrected_slices)}


@dataclass
class ModelEntry(_Json):
    """A model trained on the store: its file (resolved) and name, the model it started from,
    the cases and the number of slices it learned, when, whether it was promoted to the
    store's latest and, where a gate decided that, how (``gate``, written only when
    given)."""

    path: str = ""
    name: str = ""
    base: str | None = None
    cases: list[str] = field(default_factory=list)
    slices: int = 0
    trained: str | None = None
    promoted: bool = True
    gate: dict | None = None
    extra: dict = field(default_factory=dict, repr=False)

    def to_json(self) -> dict:
        data = super().to_json()
        if not self.gate:
            data.pop("gate")
        return data


@dataclass
class StoreRecord:
    """A store's record: its cases (oldest first; the last is the newest), the ids of cases
    pending (staged and not committed, or replaced or removed and their files not yet gone),
    the models trained on it, its channel names (the kind of image it holds) and the cases
    it lost (listed, their files gone). ``file_ending``, ``ignore`` and ``foreign``: an
    nnU-Net folder made elsewhere, read as it is."""

    format: str = FORMAT
    created: str = field(default_factory=now)
    next: int = 1
    cases: dict[str, CaseEntry] = field(default_factory=dict)
    pending: list[str] = field(default_factory=list)
    models: list[ModelEntry] = field(default_factory=list)
    channel_names: dict | None = None
    lost: list[dict] = field(default_factory=list)
    file_ending: str | None = None
    ignore: int | None = None
    foreign: bool = False
    extra: dict = field(default_factory=dict, repr=False)

    #: The record's own keys read as they are (the cases, models and lost ones are typed).
    _PLAIN = ("format", "created", "next", "pending", "channel_names", "file_ending", "ignore",
              "foreign")
    #: Written only when not their default (a store made elsewhere is never written).
    _FOREIGN_DEFAULTS = {"file_ending": None, "ignore": None, "foreign": False}

    def to_json(self) -> dict:
        data = {"format": self.format, "created": self.created, "next": self.next,
                "cases": {case_id: entry.to_json() for case_id, entry in self.cases.items()},
                "pending": list(self.pending),
                "models": [entry.to_json() for entry in self.models],
                "channel_names": self.channel_names}
        if self.lost:
            data["lost"] = list(self.lost)
        data.update({k: getattr(self, k) for k, default in self._FOREIGN_DEFAULTS.items()
                     if getattr(self, k) != default})
        return {**data, **self.extra}

    @classmethod
    def from_json(cls, data: dict) -> StoreRecord:
        known = {"cases", "models", "lost", *cls._PLAIN}
        return cls(**{k: data[k] for k in cls._PLAIN if k in data},
                   cases={cid: CaseEntry.from_json(entry)
                          for cid, entry in (data.get("cases") or {}).items()},
                   models=[ModelEntry.from_json(entry) for entry in data.get("models") or []],
                   lost=list(data.get("lost") or []),
                   extra={k: v for k, v in data.items() if k not in known})

    def retire(self, case_id: str) -> CaseEntry:
        """Take a case out of the cases; its id goes to ``pending``, so its files are removed
        by the next tidy (even after a crash). Returns its entry."""
        entry = self.cases.pop(case_id)
        self.pending.append(case_id)
        return entry

    def unpend(self, case_id: str) -> None:
        """``case_id`` no longer pending."""
        self.pending = [c for c in self.pending if c != case_id]
