"""Report files: CSV tables and a model's training history (log CSV + loss-curve PNG)."""

from __future__ import annotations

from pathlib import Path


def write_csv(rows: list[dict], path) -> None:
    """A list of same-keyed dicts as a CSV table with a header."""
    import csv

    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def write_history(history, model_path: Path) -> list[str]:
    """MODEL.log.csv and MODEL.loss.png next to the model; returns notes on what was skipped."""
    stem = Path(model_path).with_suffix("")
    notes = []
    if history:
        write_csv(history, f"{stem}.log.csv")
    try:
        from .plots import training_curve_png

        training_curve_png(history, f"{stem}.loss.png")
    except ImportError:
        notes.append("matplotlib not installed; no loss-curve PNG")
    return notes
