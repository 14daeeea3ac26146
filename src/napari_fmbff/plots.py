"""The training curve (loss and validation Dice per epoch) as a PNG, with matplotlib."""

from __future__ import annotations


def draw_training_curve(ax_loss, history) -> None:
    """Draw loss (left axis) and validation Dice (right axis) on a matplotlib Axes."""
    epochs = [h["epoch"] for h in history]
    ax_loss.clear()
    ax_loss.plot(epochs, [h["train_loss"] for h in history], color="tab:blue", label="train loss")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("train loss (BCE + Dice)", color="tab:blue")
    ax_dice = ax_loss.twinx() if not hasattr(ax_loss, "_fmbff_twin") else ax_loss._fmbff_twin
    ax_loss._fmbff_twin = ax_dice
    ax_dice.clear()
    ax_dice.plot(epochs, [h["val_dice"] for h in history], color="tab:orange", label="val Dice")
    ax_dice.set_ylim(0, 1)
    ax_dice.set_ylabel("validation Dice", color="tab:orange")


def training_curve_png(history, path) -> None:

    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 3.5), dpi=100)
    ax = fig.add_subplot(111)
    if history:
        draw_training_curve(ax, history)
    fig.tight_layout()
    fig.savefig(path)
