"""Report files: CSV tables and a model's training history (log CSV + loss-curve PNG).

Like every writer here they are atomic and never replace an existing file unless asked.
"""

from __future__ import annotations

from pathlib import Path

from .._files import atomic_path, refuse_existing
from ..model.registry import companions


def write_csv(rows: list[dict], path, overwrite: bool = False) -> Path:
    """A list of same-keyed dicts as a CSV table with a header."""
    import csv

    with atomic_path(path, overwrite) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return Path(path)


def check_history_free(model_path, overwrite: bool = False) -> None:
    """Refuse, before any training, when the model's log or plot would replace a file."""
    for path in companions(model_path):
        refuse_existing(path, overwrite)


def write_history(history, model_path, overwrite: bool = False) -> list[str]:
    """MODEL.log.csv and MODEL.loss.png next to the model; returns notes on what was skipped."""
    log, plot = companions(model_path)
    notes = []
    if history:
        write_csv(history, log, overwrite)
    try:
        from .plots import training_curve_png

        with atomic_path(plot, overwrite) as tmp:
            training_curve_png(history, tmp)
    except ImportError:
        notes.append("matplotlib not installed; no loss-curve PNG")
    return notes
