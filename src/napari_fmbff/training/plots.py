"""The training curve (loss and validation Dice per epoch) as a PNG, with matplotlib."""

from __future__ import annotations

import math


def draw_training_curve(ax_loss, history) -> None:
    """Draw loss (left axis) and validation Dice (right axis) on a matplotlib Axes.

    A marker per epoch (one epoch is a dot, not nothing); the Dice axis runs to 1.05 so a
    score of exactly 1.0 stays off the frame; without held-out data only the loss is drawn.
    """
    epochs = [h["epoch"] for h in history]
    ax_loss.clear()
    ax_loss.plot(epochs, [h["train_loss"] for h in history], color="tab:blue", marker="o",
                 markersize=3, label="train loss")
    ax_loss.set_xlabel("epoch", fontsize=8, labelpad=1)
    ax_loss.set_ylabel("loss", color="tab:blue", fontsize=8, labelpad=2)
    ax_loss.tick_params(labelsize=7)
    if epochs:
        ax_loss.set_xlim(min(epochs) - 0.5, max(epochs) + 0.5)
    ax_loss.xaxis.get_major_locator().set_params(integer=True)
    ax_dice = getattr(ax_loss, "_fmbff_twin", None) or ax_loss.twinx()
    ax_loss._fmbff_twin = ax_dice
    ax_dice.clear()
    ax_dice.yaxis.tick_right()  # clear() puts a twin's ticks and label back on the left,
    ax_dice.yaxis.set_label_position("right")  # on top of the loss axis's
    dice = [h.get("val_dice", float("nan")) for h in history]
    validated = any(not math.isnan(d) for d in dice)
    if validated:
        ax_dice.plot(epochs, dice, color="tab:orange", marker="s", markersize=3,
                     label="held-out Dice")
        ax_dice.set_ylabel("held-out Dice", color="tab:orange", fontsize=8, labelpad=2)
    else:
        ax_dice.set_ylabel("no held-out data", color="0.5", fontsize=8, labelpad=2)
    ax_dice.set_ylim(0, 1.05)
    ax_dice.tick_params(labelsize=7)


def training_curve_png(history, path) -> None:

    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 3.5), dpi=100)
    ax = fig.add_subplot(111)
    if history:
        draw_training_curve(ax, history)
    fig.tight_layout()
    fig.savefig(path)
