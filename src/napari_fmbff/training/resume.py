"""MODEL.resume.pt: the state ``fmbff train`` writes after every epoch, so a stopped run can go on.

The state is ``Trainer.checkpoint()``'s (tensors and plain values only). It is written
atomically (a temporary file renamed over the last one, so a run killed while writing still
leaves the previous epoch's file) and read with ``torch.load(weights_only=True)``, so nothing in
the file is ever unpickled.
"""

from __future__ import annotations

import errno
from pathlib import Path

from .._files import atomic_path


class ResumeFile:
    """The resume file next to the model ``model_path`` (``m.safetensors`` -> ``m.resume.pt``)."""

    def __init__(self, model_path):
        self.path = Path(model_path).with_suffix(".resume.pt")

    def load(self) -> dict:
        """The saved state; a ValueError naming the file when it is missing or not one."""
        import torch

        if not self.path.exists():
            raise ValueError(f"--resume: {self.path} not found (it is written after each epoch)")
        try:  # weights only: nothing in the file is ever unpickled
            state = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 - refused, in one line
            raise ValueError(f"--resume: {self.path} is not a resume file fmbff train wrote "
                             f"(refused: {type(err).__name__}); delete it to start again") from None
        if not isinstance(state, dict) or not isinstance(state.get("epoch"), int):
            raise ValueError(f"--resume: {self.path} is not a resume file fmbff train wrote "
                             "(no epoch); delete it to start again")
        return state

    def save(self, state: dict) -> None:
        """Replace the file with ``state`` (a ``checkpoint_fn`` for ``iter_train``); a full or
        read-only disk is an OSError naming the file, and no temporary file is left."""
        import torch

        with atomic_path(self.path, overwrite=True) as tmp:
            try:
                torch.save(state, tmp)
            except RuntimeError as err:  # torch's own error for a full disk and friends
                raise OSError(errno.EIO, f"cannot write the resume file "
                              f"({str(err).strip()[:80]}); is the disk full or read-only?",
                              str(self.path)) from None

    def remove(self) -> None:
        """Delete the file (the run it belongs to has finished)."""
        self.path.unlink(missing_ok=True)
