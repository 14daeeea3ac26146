"""What a training run is asked to do, as typed requests instead of long argument lists:

- ``RunControl``: how a run is cancelled, what a cancel keeps, and how it resumes, checkpoints
  and shares work between processes (``iter_train``, ``train_and_save`` and every run above
  them take one);
- ``ModelOut``: where the trained model is saved and what its record says it learned from.

Propagation's request (``propagate.PropagateRequest``) and a store run's (``store_training.
StoreRun``) live with their runs. Types only: nothing here imports another training module.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..inference.progress import Cancel


@dataclass(frozen=True)
class RunControl:
    """How a run is controlled while it runs.

    Args:
        cancel: the run's ``Cancel`` token (a dock's Cancel button, a time limit), polled
            after every training step; once it is set the run ends there (the result says
            ``cancelled``).
        keep_on_cancel: a cancelled run still saves the best weights so far.
        resume_state: a state saved by ``checkpoint_fn`` to continue from (None: start).
        checkpoint_fn: called after every epoch with a resumable state (rank 0 only).
        ddp: this process's place in a torchrun job (``ddp.Ddp``), or None.
    """

    cancel: Cancel | None = None
    keep_on_cancel: bool = True
    resume_state: dict | None = None
    checkpoint_fn: Callable[[dict], Any] | None = None
    ddp: Any = None

    @property
    def is_main(self) -> bool:
        """Whether this process saves and reports (no DDP, or DDP's rank 0)."""
        return self.ddp is None or self.ddp.is_main


@dataclass(frozen=True)
class ModelOut:
    """Where a trained model goes and what its record says.

    Args:
        path: the model file (``.safetensors``); checked before training starts.
        training_data: what the model learned from, in words (a folder, napari layers).
        base: the model it started from (None: new weights).
        overwrite: replace an existing model, log and plot of that name.
        half: save the weights in float16.
        extra: more provenance keys for the model's record.
    """

    path: str | Path
    training_data: str = ""
    base: Any = None
    overwrite: bool = False
    half: bool = False
    extra: Mapping = field(default_factory=dict)
