"""Training on the corrections store (``data.store``): every fine-tune and propagation adds the
user's corrected slices as a case and trains on the whole store, so the next patient starts
from everything corrected so far.

- **Start**: the store's latest model (``Store.latest_model``), else the chosen base model.
- **Data**: every labelled slice of every case, read one slice at a time (``Store.
  training_slices``); never a whole volume, never an uncorrected slice. Each case keeps the
  intensity setting it was corrected with (CT: its window), so its slices are presented as
  the model saw them.
- **Replay**: the newest case's slices are repeated so that they make about half of the
  samples (``REPLAY_SHARE``); the other half is every older case, so patient 2 does not
  erase patient 1 and patient 2's corrections still count. With one case there is nothing
  to replay.
- **Recipe**: ``FINETUNE_DEFAULTS`` (the one-image fine-tune's, measured by
  benchmarks/few_shot.py) with nothing held out: the store is the user's corrections, and a
  held-out case would be a case not learned. The recipe for a store of several patients is
  still to be chosen by benchmarks/store.py (issue 23); until then this is the default.
- **Lineage**: the new model records the store, its cases, the newest case, the replay and
  its base; its card says "trained on N cases, M corrected slices".
- **Nothing half-done**: the new case is staged and becomes part of the store only when the
  run ends (or, when cancelled, only if a model was kept); an error or a cancel that keeps
  nothing discards it, so the store is as it was.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from ..data.store import RECORD, PendingCase, Store
from .propagate import KEEP_CONNECTED

#: The newest case's share of the training samples (replay of the older cases fills the rest).
REPLAY_SHARE = 0.5
#: Said in every store-trained model's record.
STORE_RECIPE = ("FINETUNE_DEFAULTS with nothing held out (every stored slice is trained on); "
                "the store's own recipe is to be chosen by benchmarks/store.py")


def is_store(path) -> bool:
    """A corrections store, or an nnU-Net v2 raw folder that declares an ignore label (its
    slices that are all ignore are not training data): ``fmbff train`` reads both lazily."""
    import json

    path = Path(path)
    if (path / RECORD).is_file():
        return True
    try:
        meta = json.loads((path / "dataset.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and "ignore" in (meta.get("labels") or {})


def start_model(store: Store, chosen) -> str:
    """What a store fine-tune starts from: the store's latest model, else ``chosen``."""
    latest = store.latest_model
    return str(latest) if latest is not None else str(chosen)


def intensity_record(setting, image=None) -> dict:
    """The intensity setting as a case records it: the setting, what it applied to this
    image (a "volume" scope resolved to this stack's range) and its words."""
    applied = setting.for_stack(image) if image is not None and np.ndim(image) >= 3 else setting
    return {"setting": setting.to_dict(), "applied": applied.to_dict(),
            "describe": setting.describe()}


def stage(store: Store, image, labels, slices, setting, *, rgb: bool = False, source: str = "",
          name: str = "", source_meta: dict | None = None, proposed_by=None,
          spacing=None, identity: str | None = None) -> PendingCase:
    """Stage the corrected ``slices`` of ``image`` as a case (``Store.stage_case``) with the
    intensity ``setting`` (a Normalization) and the model that proposed the labels."""
    stack = image if (np.ndim(image) == 4 or (np.ndim(image) == 3 and not rgb)) else None
    return store.stage_case(image, labels, slices, rgb=rgb, source=source, name=name,
                            source_meta=source_meta, spacing=spacing, identity=identity,
                            model=str(proposed_by) if proposed_by else None,
                            intensity=intensity_record(setting, stack))


@dataclass
class StoreItems:
    """The training items of a store run and what they are."""

    items: list
    cases: list = field(default_factory=list)
    n_slices: int = 0
    newest: str | None = None
    repeats: int = 1
    skipped_partial: int = 0

    def describe(self) -> str:
        n, m = len(self.cases), self.n_slices
        return f"{n} case{'s' if n != 1 else ''}, {m} corrected slice{'s' if m != 1 else ''}"

    def replay(self) -> dict:
        newest = sum(1 for item in self.items if item.group == self.newest)
        return {"newest_case": self.newest, "repeats": self.repeats,
                "newest_share": round(newest / max(1, len(self.items)), 3),
                "target_share": REPLAY_SHARE if self.repeats > 1 else None}


def store_items(store: Store, setting, pending: PendingCase | None = None,
                replay: bool = True) -> StoreItems:
    """Training items of every labelled slice in the store (``pending`` included), each
    case one group with its own intensity setting; with ``replay``, the newest case's items
    repeated to about ``REPLAY_SHARE`` of them (the same arrays: nothing is copied)."""
    from .loop import make_items

    by_case: dict[str, list] = {}
    for piece in store.training_slices(pending=pending):
        by_case.setdefault(piece.case, []).append(piece)
    if not by_case:
        raise ValueError(f"{store.path}: the corrections store has no corrected slice yet; "
                         "correct a slice and Fine-tune (or fmbff propagate --store) first")
    items = []
    for case_id, pieces in by_case.items():
        planes = [p.image for p in pieces]
        norm = _case_normalization(store, case_id, pending, setting, planes)
        items += make_items(planes, [p.mask for p in pieces], norm,
                            [f"{case_id} z{p.z}" for p in pieces], group=case_id,
                            require_lesion=False)
    if not any(item.mask.any() for item in items):
        raise ValueError("the masks contain no lesion pixels anywhere; paint some labels first"
                         if len(by_case) <= 1 else
                         f"{store.path}: no stored slice holds a lesion; paint some labels first")
    cases = list(by_case)
    data = StoreItems(items, cases, len(items), cases[-1] if cases else None,
                      skipped_partial=store.skipped_partial)
    if replay and len(cases) > 1:
        newest = [item for item in items if item.group == data.newest]
        older = len(items) - len(newest)
        data.repeats = max(1, round(REPLAY_SHARE / (1 - REPLAY_SHARE) * older / len(newest)))
        data.items = items + newest * (data.repeats - 1)
    return data


def _case_normalization(store: Store, case_id: str, pending, setting, planes):
    """The intensity setting a case's slices are trained with: what it recorded as applied,
    else ``setting`` (a "volume" scope resolved on the case's labelled slices)."""
    from ..model.normalization import Normalization

    rec = pending.entry if pending is not None and case_id == pending.id \
        else store.case(case_id).record
    applied = (rec.get("intensity") or {}).get("applied")
    if applied:
        return Normalization.from_dict(applied)
    return setting.for_stack(np.stack(planes)) if len(planes) > 1 else setting


def store_lineage(store: Store, data: StoreItems, base) -> dict:
    """The model's record of the store it learned from (its cases, the replay, its base)."""
    return {"path": str(store.path.resolve()), "cases": data.cases, "n_cases": len(data.cases),
            "n_slices": data.n_slices, "replay": data.replay(), "base": str(base) if base else
            None, "recipe_note": STORE_RECIPE}


def train_on_store(net, store: Store, cfg, setting, out, *, base=None,
                   pending: PendingCase | None = None, commit: bool = True, replay=None,
                   hold_out: bool = False, detail: str = "", overwrite: bool = False,
                   half: bool = False, keep_on_cancel: bool = True, should_stop=None,
                   resume_state=None, checkpoint_fn=None, ddp=None, extra: dict | None = None):
    """Generator: yields ``TrainEvent``; returns the ``run.Outcome`` of training ``net`` on
    the whole store (``pending`` included) with ``run.train_and_save``.

    ``replay`` (default: when a case is being added) weights the newest case up;
    ``hold_out`` keeps ``cfg.val_fraction`` (``fmbff train STORE``), else nothing is held
    out. ``commit``: ``pending`` joins the store when the run ends (a cancelled run only if
    it kept a model), with the new model as the store's latest; False leaves that to the
    caller (a propagation commits after segmenting). Any error, or a cancel that kept
    nothing, discards ``pending``: the store is as it was."""
    from . import run

    try:
        data = store_items(store, setting, pending, replay=pending is not None
                           if replay is None else replay)
        lineage = store_lineage(store, data, base)
        training_data = (f"corrections store {store.path}: trained on {data.describe()}"
                         + (f"; newest: {detail}" if detail else ""))
        outcome = yield from run.train_and_save(
            net, data.items, cfg if hold_out else replace(cfg, val_fraction=0.0), setting, out,
            training_data=training_data, base=base, overwrite=overwrite, half=half,
            keep_on_cancel=keep_on_cancel, should_stop=should_stop, resume_state=resume_state,
            checkpoint_fn=checkpoint_fn, ddp=ddp,
            extra={**(extra or {}), "store": lineage, "n_train": data.n_slices})
    except BaseException:
        if pending is not None:
            pending.discard()
        raise
    outcome.store_items = data
    if not hold_out:  # run.score_summary's reason for no held-out score is not this one's
        outcome.message = outcome.message.replace(
            "too few corrected images to hold any out", "the store holds nothing out")
    if data.skipped_partial:
        outcome.notes.append(f"{data.skipped_partial} slice(s) partly the ignore label were left "
                             "out (training has no per-pixel ignore)")
    if ddp is not None and not ddp.is_main:
        return outcome
    if pending is None:
        if outcome.saved and not store.read_only:
            store.record_model(outcome.path, base=base, cases=data.cases, slices=data.n_slices)
    elif not keeps_case(outcome):
        pending.discard()
    elif commit:
        pending.commit(outcome.path, base=base)
    return outcome


def keeps_case(outcome) -> bool:
    """Whether a run's new case joins the store: it ran to its end (learned or not: the
    corrections are good data), or it was cancelled but kept a model trained on them."""
    return outcome.saved or not outcome.result.cancelled


def iter_propagate_store(net, volume, labels, out_model, store: Store, *, slices=None,
                         normalization=None, cfg=None, base=None, image_name: str = "",
                         threshold=None, min_size: int = 0, overwrite: bool = False,
                         should_stop=None, keep_on_cancel: bool = False,
                         extra: dict | None = None, source_meta: dict | None = None,
                         spacing=None, proposed_by=None, identity: str | None = None,
                         connected: bool = KEEP_CONNECTED):
    """Generator: ``propagate.iter_propagate`` with the store: the labelled slices become a
    case, the model trains on the whole store (``train_on_store``), then segments the other
    slices. Yields ("train", TrainEvent) then ("segment", done, total); returns the
    ``PropagateResult``. The case joins the store once the run is done; closed or failed
    before that, the store is as it was."""
    from ..inference.runtime import relay
    from ..model.normalization import default_normalization
    from .loop import finetune_config
    from .propagate import finish_propagation, labelled_slices

    zs = labelled_slices(labels, len(volume), slices)
    setting = normalization or default_normalization(net)
    pending = stage(store, np.asarray(volume), np.asarray(labels), zs, setting,
                    source=str((source_meta or {}).get("source") or image_name),
                    name=image_name, source_meta=source_meta, spacing=spacing,
                    proposed_by=proposed_by or base, identity=identity)
    try:
        lineage = {"base": str(base) if base else None, "slices": zs, "image": image_name}
        outcome = yield from relay(train_on_store(
            net, store, cfg or finetune_config(), setting, out_model, base=base,
            pending=pending, commit=False, overwrite=overwrite, should_stop=should_stop,
            keep_on_cancel=keep_on_cancel,
            detail=f"{image_name or 'a volume'}, slice(s) {', '.join(map(str, zs))}",
            extra={"propagated": lineage, **(extra or {})}), lambda event: ("train", event))
        result = yield from finish_propagation(net, outcome, volume, labels, zs,
                                               setting.for_stack(volume), threshold, min_size,
                                               connected)
    except BaseException:
        pending.discard()
        raise
    if keeps_case(outcome):
        pending.commit(outcome.path, base=base)
    else:
        pending.discard()
    return result

