"""Training on the corrections store (``data.store``): every fine-tune and propagation adds the
user's corrected slices as a case and trains on the whole store, so the next patient starts
from everything corrected so far.

- **Start**: the chosen base model (the model the dock's *base model* field shows, or
  ``--model``), resolved once when the run starts (``start_model``): a store run never starts
  from a model another run or another process made meanwhile. The store's latest model
  (``Store.latest_model``) is what Segment offers first; pick it as the base to continue it.
- **Data**: every labelled slice of every case, read one slice at a time (``Store.
  training_slices``); never a whole volume, never an uncorrected slice. Each case keeps the
  intensity setting it was corrected with (CT: its window), so its slices are presented as
  the model saw them.
- **Sampling** (issue 31): patients alike. Each case's slices are repeated so that every case
  gives about as many samples as the case with the most (``SAMPLING`` "balanced", the
  default): a patient reviewed whole does not drown one corrected slice of another, and the
  newest case is not favoured beyond that. The earlier rule, the newest case repeated to about
  half the samples (``REPLAY_SHARE``, "newest-half"), chained the store towards the last
  patient; it stays for benchmarks/store.py's comparison.
- **Recipe**: ``FINETUNE_DEFAULTS`` (the one-image fine-tune's, measured by
  benchmarks/few_shot.py) with nothing held out: the store is the user's corrections, and a
  held-out case would be a case not learned. The recipe for a store of several patients is
  still to be chosen by benchmarks/store.py (issue 23); until then this is the default.
- **Lineage**: the new model records the store, its cases, the newest case, the replay and
  its base; its card says "trained on N cases, M corrected slices".
- **Promotion** (issue 28): a new model becomes the store's latest (Segment's default) only
  if its Dice on the store's earlier cases (their labelled slices) is no worse than the
  current latest's (``promotion``); otherwise it is kept and registered, not promoted, and
  the run's message says so (``settle``). The first model of a store is promoted.
- **Nothing half-done**: the new case is staged and becomes part of the store only when the
  run ends (or, when cancelled, only if a model was kept); an error or a cancel that keeps
  nothing discards it, so the store is as it was.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from ..data.store import KINDS, RECORD, CaseSource, PendingCase, Store
from .requests import ModelOut, RunControl

#: How a store run samples its cases: "balanced" (every case about as many samples as the
#: largest; the default) or "newest-half" (the newest case repeated to ``REPLAY_SHARE``).
SAMPLING = ("balanced", "newest-half")
#: A case whose lesion slices are fewer than this share of its slices has them repeated to
#: about half of its samples (``lesion_repeat``).
LESION_SHARE = 1 / 3
#: "newest-half": the newest case's share of the training samples.
REPLAY_SHARE = 0.5
#: A new model is promoted when its Dice on the store's earlier cases, rounded as shown
#: (this many decimals), is at least the current latest model's.
GATE_DECIMALS = 3
#: A new model is never promoted when its Dice on the case it was just trained on (the new
#: case's labelled slices) is below this: it did not learn that patient (a run that collapsed
#: to "no lesion" scores 0 there). Checked for a store's first model too.
OWN_CASE_FLOOR = 0.5
#: Why a store run has no held-out score (its messages say so; ``run.score_summary``).
HOLDS_NOTHING_OUT = "the store holds nothing out"
#: Said in every store-trained model's record.
STORE_RECIPE = ("FINETUNE_DEFAULTS with nothing held out (every stored slice is trained on); "
                "the store's own recipe is to be chosen by benchmarks/store.py")


def is_store(path) -> bool:
    """A corrections store, or an nnU-Net v2 raw folder that declares an ignore label (its
    slices that are all ignore are not training data): ``fmbff train`` reads both lazily."""
    import json

    path = Path(path)
    if (path / RECORD).is_file() or any((path / kind / RECORD).is_file() for kind in
                                        KINDS.values()):
        return True  # a store folder of one store per kind: opening it says which to give
    try:
        meta = json.loads((path / "dataset.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and "ignore" in (meta.get("labels") or {})


def start_model(store: Store, chosen) -> str:
    """What a store run starts from: ``chosen``, the base model the user sees (the dock's
    *base model*, ``--model``), never the store's latest model, which another run or
    another process may have made meanwhile (issue 28). Resolve it once, when the run
    starts, and pass it on; the store's latest is Segment's default (``Store.latest_model``).
    """
    return str(chosen)


def intensity_record(setting, image=None) -> dict:
    """The intensity setting as a case records it: the setting, what it applied to this
    image (a "volume" scope resolved to this stack's range) and its words."""
    applied = setting.for_stack(image) if image is not None and np.ndim(image) >= 3 else setting
    return {"setting": setting.to_dict(), "applied": applied.to_dict(),
            "describe": setting.describe()}


def stage(store: Store, image, labels, slices, setting,
          about: CaseSource | None = None) -> PendingCase:
    """Stage the corrected ``slices`` of ``image`` as a case (``Store.stage_case``) with the
    intensity ``setting`` (a Normalization) recorded; ``about`` (``CaseSource``) says where
    the image came from and, as ``model``, the model that proposed the labels."""
    about = about or CaseSource()
    rgb = about.rgb
    stack = image if (np.ndim(image) == 4 or (np.ndim(image) == 3 and not rgb)) else None
    return store.stage_case(image, labels, slices, replace(
        about, model=str(about.model) if about.model else None,
        intensity=intensity_record(setting, stack)))


@dataclass(frozen=True)
class StoreRun:
    """How a store run treats its new case and its data.

    Args:
        pending: the new case (``stage``), trained on with the store; None: the store alone.
        commit: ``pending`` joins the store when the run ends and the new model is
            registered (``settle``); False leaves that to the caller (a propagation commits
            after segmenting).
        sampling: ``SAMPLING``: "balanced" (default), or "newest-half": the newest case
            weighted up to ``REPLAY_SHARE`` when a case is added.
        hold_out: keep ``cfg.val_fraction`` of the cases for validation (``fmbff train
            STORE``); else nothing is held out.
    """

    pending: PendingCase | None = None
    commit: bool = True
    sampling: str = "balanced"
    hold_out: bool = False


@dataclass(frozen=True)
class StoreCase:
    """The corrections store a run's labelled slices join as a new case, and what the case
    records of its volume (``propagate.PropagateRequest.store``).

    Args:
        store: the open store (``data.store.Store``).
        about: where the volume came from (``CaseSource``); its name, source and proposing
            model default to the run's (``case_source``).
    """

    store: Store
    about: CaseSource = CaseSource()

    def case_source(self, name: str, model) -> CaseSource:
        """``about`` with its defaults filled in: the source (the reader's, else ``name``),
        the case's name ``name`` and the proposing ``model``."""
        about = self.about
        source = about.source or str((about.source_meta or {}).get("source") or name)
        return replace(about, source=source, name=about.name or name,
                       model=about.model or model)


@dataclass
class StoreItems:
    """The training items of a store run and what they are."""

    items: list
    cases: list = field(default_factory=list)
    n_slices: int = 0
    newest: str | None = None
    repeats: dict = field(default_factory=dict)
    sampling: str = "balanced"
    skipped_partial: int = 0
    lesion_repeats: dict = field(default_factory=dict)  # {case: k} where k > 1 (``lesion_repeat``)

    def describe(self) -> str:
        n, m = len(self.cases), self.n_slices
        return f"{n} case{'s' if n != 1 else ''}, {m} corrected slice{'s' if m != 1 else ''}"

    def replay(self) -> dict:
        """How the cases were sampled, as the model's record keeps it: the rule, each case's
        repeats (1: its slices once) and the newest case's share of the samples."""
        newest = sum(1 for item in self.items if item.group == self.newest)
        return {"sampling": self.sampling, "newest_case": self.newest,
                "repeats": dict(self.repeats), "lesion_repeats": dict(self.lesion_repeats),
                "newest_share": round(newest / max(1, len(self.items)), 3)}


def store_items(store: Store, setting, pending: PendingCase | None = None,
                sampling: str = "balanced") -> StoreItems:
    """Training items of every labelled slice in the store (``pending`` included), each
    case one group with its own intensity setting, sampled by ``sampling`` (``SAMPLING``,
    ``repeat_cases``: repeated items are the same arrays, nothing is copied)."""
    from .loop import make_items

    by_case: dict[str, list] = {}
    for piece in store.training_slices(pending=pending):
        by_case.setdefault(piece.case, []).append(piece)
    if not by_case:
        raise ValueError(f"{store.path}: the corrections store has no corrected slice yet; "
                         "correct a slice and Fine-tune (or fmbff propagate --store) first")
    items, within = [], {}
    for case_id, pieces in by_case.items():
        planes = [p.image for p in pieces]
        norm = _case_normalization(store, case_id, pending, setting, planes)
        mine = make_items(planes, [p.mask for p in pieces], norm,
                          [f"{case_id} z{p.z}" for p in pieces], group=case_id,
                          require_lesion=False)
        k = lesion_repeat(mine)
        if k > 1:
            within[case_id] = k
        items += [item for item in mine for _ in range(k if item.mask.any() else 1)]
    if not any(item.mask.any() for item in items):
        raise ValueError("the masks contain no lesion pixels anywhere; paint some labels first"
                         if len(by_case) <= 1 else
                         f"{store.path}: no stored slice holds a lesion; paint some labels first")
    cases = list(by_case)
    data = StoreItems(items, cases, sum(map(len, by_case.values())), cases[-1] if cases else None,
                      sampling=sampling, skipped_partial=store.skipped_partial,
                      lesion_repeats=within)
    data.repeats = repeat_cases(items, cases, sampling, newest_is_new=pending is not None)
    data.items = [item for item in items for _ in range(data.repeats[item.group])]
    return data


def lesion_repeat(items) -> int:
    """How many times each lesion slice of one case is repeated: when its lesion slices are
    under ``LESION_SHARE`` of its slices, enough for them to be about half of the case's
    samples; else 1. A patient reviewed whole (a tumour on 3 of 48 slices) otherwise teaches
    mostly background, and a run on it was measured to collapse to "no lesion" (docs/models.md,
    "Real patients, the first one reviewed whole"); cases with a larger lesion share (the
    procedural patients of benchmarks/store.py: 7-12 of 20) are sampled as they were."""
    lesion = sum(1 for item in items if item.mask.any())
    free = len(items) - lesion
    if not lesion or lesion >= LESION_SHARE * len(items):
        return 1
    return max(1, round(free / lesion))


def repeat_cases(items, cases, sampling: str = "balanced", newest_is_new: bool = True) -> dict:
    """{case: how many times its items are repeated}. "balanced": each case about as many
    samples as the case with the most; "newest-half": the newest case (the last of
    ``cases``, when it is a new one: ``newest_is_new``) to about ``REPLAY_SHARE`` of the
    samples, the others once."""
    if sampling not in SAMPLING:
        raise ValueError(f"store sampling must be one of {', '.join(SAMPLING)}, got {sampling!r}")
    count = {case: sum(1 for item in items if item.group == case) for case in cases}
    repeats = dict.fromkeys(cases, 1)
    if len(cases) < 2:
        return repeats
    if sampling == "balanced":
        most = max(count.values())
        return {case: max(1, round(most / n)) if n else 1 for case, n in count.items()}
    if newest_is_new:
        newest, older = cases[-1], len(items) - count[cases[-1]]
        repeats[newest] = max(1, round(REPLAY_SHARE / (1 - REPLAY_SHARE) * older
                                       / max(1, count[newest])))
    return repeats


def _case_normalization(store: Store, case_id: str, pending, setting, planes):
    """The intensity setting a case's slices are trained with: what it recorded as applied,
    else ``setting`` (a "volume" scope resolved on the case's labelled slices)."""
    from ..model.normalization import Normalization

    rec = pending.entry if pending is not None and case_id == pending.id \
        else store.case(case_id).entry
    applied = (rec.intensity or {}).get("applied")
    if applied:
        return Normalization.from_dict(applied)
    return setting.for_stack(np.stack(planes)) if len(planes) > 1 else setting


def store_lineage(store: Store, data: StoreItems, base) -> dict:
    """The model's record of the store it learned from (its cases, the replay, its base)."""
    return {"path": str(store.path.resolve()), "cases": data.cases, "n_cases": len(data.cases),
            "n_slices": data.n_slices, "replay": data.replay(), "base": str(base) if base else
            None, "recipe_note": STORE_RECIPE}


def train_on_store(net, store: Store, cfg, setting, out: ModelOut,
                   control: RunControl | None = None, store_run: StoreRun = StoreRun()):
    """Generator: yields the training's ``Progress``; returns the ``run.Outcome`` of training
    ``net`` on
    the whole store (``store_run.pending`` included; the record read again first: another
    process may have added a case) with ``run.train_and_save``.

    ``out`` (``ModelOut``): the model's file, base and provenance; its ``training_data``,
    when given, says what the newest case is (the model's record says the store and its
    cases). ``store_run`` (``StoreRun``): the new case, whether it is committed here,
    replay and hold-out. ``commit``: ``pending`` joins the store when the run ends (a
    cancelled run only if it kept a model) and the new model is registered, promoted to the
    store's latest only if it passes ``promotion`` (``settle``). Any error, or a cancel
    that kept nothing, discards ``pending``: the store is as it was."""
    from . import run

    control, pending = control or RunControl(), store_run.pending
    try:
        store.reload()
        data = store_items(store, setting, pending, store_run.sampling)
        training_data = (f"corrections store {store.path}: trained on {data.describe()}"
                         + (f"; newest: {out.training_data}" if out.training_data else ""))
        out = replace(out, training_data=training_data, extra={
            **out.extra, "store": store_lineage(store, data, out.base), "n_train": data.n_slices})
        outcome = yield from run.train_and_save(
            net, data.items, cfg if store_run.hold_out else replace(cfg, val_fraction=0.0),
            setting, out, control,
            run.TOO_FEW_TO_HOLD_OUT if store_run.hold_out else HOLDS_NOTHING_OUT)
        outcome.store_items = data
        if data.skipped_partial:
            outcome.notes.append(f"{data.skipped_partial} slice(s) partly the ignore label were "
                                 "left out (training has no per-pixel ignore)")
        if not control.is_main:
            return outcome
        if pending is not None and not store_run.commit:
            if not keeps_case(outcome):
                pending.discard()
            return outcome
        return settle(store, outcome, pending, base=out.base, data=data, cfg=cfg)
    except BaseException:
        if pending is not None:
            pending.discard()
        raise


def settle(store: Store, outcome, pending: PendingCase | None = None, *, base=None,
           data: StoreItems | None = None, cfg=None):
    """After a store run (its main process): the new case joins the store, or is discarded
    when the run kept nothing (``keeps_case``); a saved model is registered, and becomes the
    store's latest only if ``promotion`` says so. The outcome says which: ``promoted``, and
    a sentence added to its message and notes (the dock and the command line show them).
    Returns the outcome."""
    if pending is not None and not keeps_case(outcome):
        pending.discard()
        return outcome
    gate = None
    if outcome.saved and not store.read_only:
        store.reload()  # the latest model and the cases as they are now
        gate = promotion(store, outcome.path,
                         exclude=[pending.replaces] if pending is not None else (),
                         device=getattr(cfg, "device", "auto"),
                         tile_size=getattr(cfg, "tile_size", None), pending=pending)
        outcome.promoted = gate.promoted
        outcome.message = f"{outcome.message} {gate.message}"
        outcome.notes.append(gate.message)
    decided = {"promoted": gate.promoted, "gate": gate.record} if gate is not None else {}
    if pending is not None:
        pending.commit(outcome.path if outcome.saved else None, base=base, **decided)
    elif gate is not None:
        store.record_model(outcome.path, base=base, cases=data.cases if data else None,
                           slices=data.n_slices if data else None, **decided)
    outcome.store_latest = store.latest_model
    return outcome


@dataclass
class Promotion:
    """Whether a new model becomes the store's latest, the sentence that says so, and the
    scores it was decided on (kept in the store's record)."""

    promoted: bool
    message: str
    record: dict = field(default_factory=dict)


def promotion(store: Store, model, *, exclude=(), device="auto", tile_size=None,
              pending: PendingCase | None = None) -> Promotion:
    """The promotion gate: ``model`` (a model file just trained on ``store``) becomes the
    store's latest when the store has no latest model yet, or no earlier case (every case
    but ``exclude``: the case a new one replaces), or when its Dice on the earlier cases
    (``store_dice``), rounded to ``GATE_DECIMALS``, is at least the latest model's. Never when
    it did not learn the case it was just trained on (``pending``): its Dice there below
    ``OWN_CASE_FLOOR``."""
    from ..model.checkpoint import load_model

    latest = store.latest_model
    earlier = [case for case in store.record.cases if case not in set(exclude)]
    name = Path(str(model)).stem
    record = {"latest": str(latest) if latest else None, "cases": earlier}
    new_net = None  # loaded once, when a score needs it
    kinds = pending.entry.slice_kinds() if pending is not None else None
    if pending is not None and (kinds is None or kinds["lesion"]):  # a lesion to learn
        new_net = load_model(model)
        own = store_dice(store, new_net, [pending.id], device, tile_size, pending)
    else:
        own = float("nan")
    if own == own:
        record["own_case_dice"] = round(own, 4)
        if own < OWN_CASE_FLOOR:
            keeps = (f"'{latest.stem}' stays the store's latest (Segment's default)"
                     if latest else "Segment keeps its own default")
            return Promotion(False, f"'{name}' was kept and registered but not promoted: its "
                                    f"Dice on the case it was just trained on is {own:.3f}, "
                                    f"below {OWN_CASE_FLOOR}: it did not learn that patient; "
                                    f"{keeps}.", record)
    if latest is None or not earlier:
        why = ("the first model trained on this store" if latest is None else
               "no earlier case to compare it on")
        return Promotion(True, f"'{name}' is the store's latest model now ({why}): Segment "
                               "offers it first.", record)
    try:
        current = load_model(latest)
    except (OSError, ValueError) as err:  # the latest's file damaged: nothing to keep it for
        return Promotion(True, f"'{name}' is the store's latest model now (the previous "
                               f"latest '{latest.stem}' cannot be read: {err}).", record)
    new = store_dice(store, new_net or load_model(model), earlier, device, tile_size)
    old = store_dice(store, current, earlier, device, tile_size)
    if new != new or old != old:  # no labelled slice to score on
        return Promotion(True, f"'{name}' is the store's latest model now (no labelled slice "
                               "of an earlier case to compare it on).", record)
    ok = round(new, GATE_DECIMALS) >= round(old, GATE_DECIMALS)
    record.update(dice=round(new, 4), latest_dice=round(old, 4))
    where = f"the store's {len(earlier)} earlier case{'s' if len(earlier) != 1 else ''}"
    if ok:
        text = (f"'{name}' is the store's latest model now (Segment offers it first): Dice on "
                f"{where} {new:.3f}, the previous latest '{latest.stem}' {old:.3f}.")
    else:
        text = (f"'{name}' was kept and registered but not promoted: its Dice on {where} is "
                f"{new:.3f}, worse than {old:.3f} for the store's latest model "
                f"'{latest.stem}', which stays the store's latest (Segment's default).")
    return Promotion(ok, text, record)


def store_dice(store: Store, net, cases, device="auto", tile_size=None,
               pending: PendingCase | None = None) -> float:
    """``net``'s Dice on the labelled slices of ``cases`` (the ignore label never counts):
    per case over all its labelled slices (pixels pooled), then the mean over cases, so each
    patient counts alike; NaN when no case has a labelled slice. Each case
    is presented with the intensity setting it was corrected with; threshold 0.5.
    ``pending``: a staged case, which ``cases`` may name."""
    from ..inference.postprocess import DEFAULT_THRESHOLD
    from ..inference.segmenter import Segmenter
    from ..model.normalization import default_normalization
    from .metrics import Counts, confusion

    per_case = []
    for case_id in cases:
        pieces = list(store.training_slices(cases=[case_id], pending=pending))
        if not pieces:
            continue
        norm = _case_normalization(store, case_id, pending, default_normalization(net),
                                   [p.image for p in pieces])
        seg = Segmenter(net, device=device, normalization=norm,
                        **({"tile_size": tile_size} if tile_size else {}))
        counts = sum((confusion(seg.predict_proba(p.image) >= DEFAULT_THRESHOLD, p.mask)
                      for p in pieces), Counts())
        per_case.append(counts.scores()["dice"])
    return float(np.mean(per_case)) if per_case else float("nan")


def keeps_case(outcome) -> bool:
    """Whether a run's new case joins the store: it ran to its end (learned or not: the
    corrections are good data), or it was cancelled but kept a model trained on them."""
    return outcome.saved or not outcome.result.cancelled
