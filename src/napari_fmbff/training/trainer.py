"""The trainer: one training run as a short loop over hooks (the shape of nnU-Net's trainer).

``Trainer.run_training`` reads as the recipe: ``on_train_start`` (device, optimiser, scheduler,
crops; then a resume state, or the scores before training), and for every epoch
``on_epoch_start`` (the sampler's epoch, the encoder frozen or not), ``train_epoch`` (one
``train_step`` per batch, stopping where asked), ``validation_step``, ``on_epoch_end``
(scheduler, best epoch, early stopping, history) and ``save_checkpoint``; ``on_train_end``
puts back the best weights. It yields its ``TrainEvent``s as ``Progress`` (stage "train": the
optimiser steps done of the run's) that ``loop.iter_train`` passes on.
``checkpoint()`` / ``load_checkpoint()`` are the resumable state (tensors and plain values
only); ``resume.ResumeFile`` writes and reads it on disk.
"""

from __future__ import annotations

import copy
import math
import time
from typing import TYPE_CHECKING

import numpy as np

from ..inference.progress import Progress
from . import ddp as _ddp
from .config import TrainEvent, TrainResult
from .metrics import Counts, soft_dice
from .samples import CropDataset, ShapeBatchSampler, grid_counts

#: Devices on which the network trains in the channels-last memory layout: the same
#: arithmetic, a third less time per step on CPU (a training step of `starter` on 4 crops of
#: 256 px, 2 threads: 1.06 -> 0.72 s; docs/performance.md). The trained network is handed
#: back in the usual layout.
CHANNELS_LAST = ("cpu", "cuda")

if TYPE_CHECKING:
    from ..model.normalization import Normalization
    from .config import TrainConfig


class Trainer:
    """Trains ``net`` on ``train_items``, validated on ``val_items`` (none: a fixed budget).

    ``cancel`` (a ``Cancel`` token) is polled after every step; ``checkpoint_fn(state)`` gets
    the resumable state after every epoch (rank 0 only); ``ddp`` (``ddp.Ddp``): this process's
    place in a torchrun job, whose processes share gradients, validation counts and stop
    decisions.
    """

    def __init__(self, net, train_items, val_items, cfg: TrainConfig,
                 normalization: Normalization, *, cancel=None, checkpoint_fn=None,
                 ddp=None):
        if not train_items:
            raise ValueError("no training images")
        self.started = time.time()
        self.net, self.train_items, self.val_items = net, train_items, val_items
        self.cfg, self.normalization, self.ddp = cfg, normalization, ddp
        self.cancel, self.checkpoint_fn = cancel, checkpoint_fn
        self.validated = bool(val_items)
        self.share = (ddp.rank, ddp.world_size) if ddp is not None else (0, 1)
        self.is_main = ddp is None or ddp.is_main
        self.history: list = []
        self.losses: list = []
        self.cancelled = self.stopped_early = False

    def run_training(self, resume_state: dict | None = None):
        """Generator: yields ``Progress`` (stage "train", its detail the ``TrainEvent``: start,
        every step, every epoch); returns ``TrainResult``."""
        yield self.progress(self.on_train_start(resume_state))
        for epoch in range(self.epoch + 1, self.cfg.epochs + 1):
            self.on_epoch_start(epoch)
            if not (yield from self.train_epoch(epoch)):
                break  # stopped within the epoch: it is not validated or counted
            val_dice = self.validation_step()
            yield self.progress(self.on_epoch_end(epoch, val_dice))
            self.save_checkpoint()
            if self.cancelled or self.stopped_early:
                break
        return self.on_train_end()

    def progress(self, event: TrainEvent) -> Progress:
        """``event`` as the run's progress: the optimiser steps done (a "start" event: those of
        the epochs already run) of ``cfg.epochs`` epochs' worth, the event its detail."""
        done = (event.epoch * self.steps if event.kind == "start"
                else (event.epoch - 1) * self.steps + event.step)
        return Progress("train", done, self.cfg.epochs * self.steps, event)

    # ---- hooks, in the order run_training calls them ------------------------------------

    def on_train_start(self, resume_state: dict | None = None) -> TrainEvent:
        """Set up, then continue from ``resume_state`` or score the model before training;
        returns the "start" event."""
        self._set_up()
        if resume_state:
            self.load_checkpoint(resume_state)
        else:
            self.fit_before = self.fit()
            self.initial = self.best_dice = self.validation_step()
            self.best_state, self.best_epoch, self.epoch = copy.deepcopy(self.net.state_dict()), 0, 0
        self.since_best = self.epoch - self.best_epoch
        return TrainEvent("start", self.epoch, val_dice=self.initial, best_dice=self.best_dice,
                          lr=self.lr, fit=self.fit_before)

    def on_epoch_start(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)
        if self.cfg.encoder_frozen(epoch) != self.frozen:
            self._freeze_encoder(self.cfg.encoder_frozen(epoch))
            self.model = self._wrap()
        self.net.train()
        if self.frozen:
            self.net.encoder.eval()  # frozen BatchNorm statistics too

    def train_epoch(self, epoch: int):
        """Generator: one ``train_step`` per batch and a "step" event after each; returns
        whether the epoch finished (False: a stop was asked for within it)."""
        self.losses, self.cancelled = [], False
        for step, batch in enumerate(self.loader, 1):
            self.losses.append(self.train_step(*batch))
            yield self.progress(TrainEvent("step", epoch, step, self.steps, loss=self.losses[-1],
                                           best_dice=self.best_dice, lr=self.lr))
            self.cancelled = self._stop_requested()
            if self.cancelled:
                break
        return not self.cancelled or len(self.losses) >= self.steps

    def train_step(self, x, y, prompts=None) -> float:
        """One optimiser step on a batch (AMP where set up), with its prompt maps when the
        recipe trains prompts; returns its loss."""
        import torch

        x, y = x.to(self.device), y.to(self.device)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if prompts is not None:
            prompts = self._corrected_prompts(x, y, prompts.to(self.device))
        self.opt.zero_grad(set_to_none=True)
        with self._autocast():
            logits = self.model(x) if prompts is None else self.model(x, prompts=prompts)
        logits = logits.float()
        loss = (self.cfg.bce_weight * self.bce(logits, y)
                + self.cfg.dice_weight * (1 - soft_dice(torch.sigmoid(logits), y)))
        self.scaler.scale(loss).backward()
        self.scaler.step(self.opt)
        self.scaler.update()
        return loss.item()  # the graph goes with this frame, before the next batch is built

    def _autocast(self):
        import torch

        if self.amp_dtype is None:
            return torch.autocast(self.device.type, enabled=False)
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def _corrected_prompts(self, x, y, prompts):
        """Half the batches: each prompted crop gets one more click where the network, given
        its prompts, is wrong (the simulated user's correction; ``prompts.corrective_click``)."""
        import torch

        from ..model.prompts import add_click, corrective_click

        prompted = prompts.flatten(1).amax(1) > 0
        if not prompted.any() or torch.rand(()) < 0.5:
            return prompts
        was_training = self.net.training
        self.net.eval()  # a look, not a step: no BatchNorm statistics from it
        with torch.no_grad(), self._autocast():
            pred = self.net(x[prompted], prompts=prompts[prompted]).float() > 0
        self.net.train(was_training)
        if self.frozen:
            self.net.encoder.eval()
        maps = prompts.cpu().numpy()
        rng = np.random.default_rng(int(torch.randint(0, 2**31 - 1, ())))
        for k, i in enumerate(np.flatnonzero(prompted.cpu().numpy())):
            click = corrective_click(y[i, 0].cpu().numpy(), pred[k, 0].cpu().numpy(), rng)
            if click is not None:
                add_click(maps[i], click)
        return torch.from_numpy(maps).to(self.device)

    def validation_step(self) -> float:
        """Pooled Dice on the held-out items (NaN when nothing is held out)."""
        return self._pooled_dice(self.val_items, 16) if self.validated else float("nan")

    def on_epoch_end(self, epoch: int, val: float) -> TrainEvent:
        """Scheduler, best epoch and early stopping, the history row; the "epoch" event."""
        import torch

        if isinstance(self.sched, torch.optim.lr_scheduler.ReduceLROnPlateau):
            self.sched.step(val)
        else:
            self.sched.step()
        if not self.validated:  # nothing to choose by: the last finished epoch is the result
            self.best_epoch, self.best_state = epoch, copy.deepcopy(self.net.state_dict())
        elif val > self.best_dice:
            self.best_dice, self.best_epoch, self.since_best = val, epoch, 0
            self.best_state = copy.deepcopy(self.net.state_dict())
        else:
            self.since_best += 1
        self.epoch = epoch
        self.stopped_early = (not self.cancelled and self.validated
                              and self.since_best >= self.cfg.patience)
        row = {"epoch": epoch, "train_loss": self._mean_loss(), "val_dice": val, "lr": self.lr,
               "seconds": round(time.time() - self.started, 1)}
        self.history.append(row)
        return TrainEvent("epoch", epoch, self.steps, self.steps, loss=row["train_loss"],
                          val_dice=val, best_dice=self.best_dice, lr=row["lr"])

    def save_checkpoint(self) -> None:
        """Hand the resumable state to ``checkpoint_fn`` (rank 0 only)."""
        if self.checkpoint_fn is not None and self.is_main:
            self.checkpoint_fn(self.checkpoint())

    def on_train_end(self) -> TrainResult:
        """The best epoch's weights (or the last finished one's) and the result."""
        if self.ddp is not None:
            _ddp.check_replicas_agree(self.net, self.device)
        self.net.load_state_dict(self.best_state)
        if self.channels_last:  # the usual layout again: saved, copied and segmented as always
            import torch

            self.net = self.net.to(memory_format=torch.contiguous_format)
        self._freeze_encoder(False)
        result = TrainResult(self.net.eval(), self.history, self.initial, self.best_dice,
                             self.best_epoch, self.epoch, self.stopped_early, 0.0, self.cancelled,
                             self.validated, self.fit_before, self.fit_before,
                             cpu_threads=self.cpu_threads)
        if result.changed:
            result.fit_after = self.fit()
        result.seconds = time.time() - self.started
        return result

    # ---- the resumable state ----------------------------------------------------------

    def checkpoint(self) -> dict:
        """Everything a resumed run needs (loadable with torch.load(weights_only=True))."""
        return {"model": self.net.state_dict(), "optimizer": self.opt.state_dict(),
                "scheduler": self.sched.state_dict(), "history": self.history,
                "best_model": self.best_state, "best_dice": self.best_dice,
                "best_epoch": self.best_epoch, "initial_dice": self.initial,
                "epoch": self.epoch, "validated": self.validated, "fit_before": self.fit_before}

    def load_checkpoint(self, state: dict) -> None:
        """Continue from ``checkpoint()``'s state: after its epoch, with its best so far."""
        if state.get("validated", True) != self.validated:
            raise ValueError("the resume state was written with a different validation split")
        self.net.load_state_dict(state["model"])
        self.opt.load_state_dict(state["optimizer"])
        self.sched.load_state_dict(state["scheduler"])
        self.history = list(state["history"])
        self.best_state = state["best_model"]
        self.best_dice, self.best_epoch = state["best_dice"], state["best_epoch"]
        self.initial, self.epoch = state["initial_dice"], state["epoch"]
        self.fit_before = state.get("fit_before", float("nan"))

    # ---- helpers ------------------------------------------------------------------------

    @property
    def lr(self) -> float:
        return self.opt.param_groups[0]["lr"]

    def fit(self) -> float:
        """Pooled Dice on the training items' own pixels (at most ``cfg.fit_tiles`` tiles)."""
        return self._pooled_dice(self.train_items, self.cfg.fit_tiles, self.cfg.fit_tiles)

    def _set_up(self) -> None:
        """Device, the encoder's first freezing, optimiser, scheduler, AMP, loss and crops.
        (The seeds come in this order so that runs repeat exactly.)"""
        import torch

        from ..inference.runtime import amp_dtype as autocast_dtype
        from ..inference.runtime import fit_cpu_threads, resolve_device

        cfg = self.cfg
        torch.manual_seed(cfg.seed)
        self.device = resolve_device(_ddp.device_for(self.ddp, cfg.device))
        # As many threads as there are free CPUs now (kept for the whole run, and recorded).
        self.cpu_threads = fit_cpu_threads() if self.device.type == "cpu" else None
        if cfg.prompts and getattr(self.net, "prompt_conv", "none") is None:
            self.net.add_prompts()  # zero weights: the untrained path changes nothing
        self.net = self.net.to(self.device)
        self.channels_last = self.device.type in CHANNELS_LAST
        if self.channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)
        self._freeze_encoder(cfg.encoder_frozen(1))
        self.model = self._wrap()
        if self.ddp is not None:
            torch.manual_seed(cfg.seed + self.ddp.rank)  # each process draws its own crops
        # Every parameter is in the optimizer; frozen ones have no gradient, so Adam skips them.
        self.opt = torch.optim.Adam(self.net.parameters(), lr=cfg.lr,
                                    weight_decay=cfg.weight_decay)
        self.sched = self._scheduler()
        self.amp_dtype = autocast_dtype(self.device, "auto") if cfg.amp else None
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        self.loader = self._loader()
        self.steps = len(self.loader)  # this process's share of the epoch under DDP
        self.bce = torch.nn.BCEWithLogitsLoss()

    def _scheduler(self):
        import torch

        cfg, sched = self.cfg, torch.optim.lr_scheduler
        if cfg.lr_schedule == "cosine":
            return sched.CosineAnnealingLR(self.opt, T_max=cfg.epochs, eta_min=cfg.lr / 20)
        if cfg.lr_schedule == "plateau" and self.validated:
            return sched.ReduceLROnPlateau(self.opt, mode="max", factor=0.5,
                                           patience=cfg.lr_patience)
        return sched.LambdaLR(self.opt, lambda _e: 1.0)

    def _loader(self):
        """Crops for an epoch: ``steps_per_epoch`` batches, or enough to see each image once
        (at least ``min_steps_per_epoch``), in batches of one crop shape."""
        import torch

        cfg = self.cfg
        steps = cfg.steps_per_epoch or max(cfg.min_steps_per_epoch,
                                           math.ceil(len(self.train_items) / cfg.batch_size))
        dataset = CropDataset(self.train_items, cfg, self.normalization, steps * cfg.batch_size)
        self.sampler = ShapeBatchSampler(dataset, cfg.batch_size, cfg.seed, *self.share)
        return torch.utils.data.DataLoader(dataset, batch_sampler=self.sampler,
                                           num_workers=cfg.num_workers,
                                           persistent_workers=cfg.num_workers > 0,
                                           pin_memory=self.device.type == "cuda")

    def _freeze_encoder(self, frozen: bool) -> None:
        self.frozen = frozen
        for p in self.net.encoder.parameters():
            p.requires_grad_(not frozen)

    def _wrap(self):
        """What the steps run: the net itself, or its DDP wrapper (rebuilt when the set of
        trained parameters changes, since DDP fixes it at construction)."""
        if self.ddp is None:
            return self.net
        from torch.nn.parallel import DistributedDataParallel

        cuda = self.device.type == "cuda"  # the wrapper starts from rank 0's weights
        return DistributedDataParallel(self.net, device_ids=[self.device.index] if cuda else None)

    def _pooled_dice(self, items, limit: int, total: int | None = None) -> float:
        counts = grid_counts(self.net, items, self.cfg, self.normalization, self.device, limit,
                             total, self.share)
        if self.ddp is not None:
            counts = Counts(*(int(v) for v in _ddp.all_sum(
                [counts.tp, counts.fp, counts.fn, counts.tn], self.device)))
        return counts.scores()["dice"]

    def _mean_loss(self) -> float:
        """The epoch's mean training loss (over every process under DDP)."""
        loss_sum, loss_n = float(np.sum(self.losses)), float(len(self.losses))
        if self.ddp is not None:
            loss_sum, loss_n = _ddp.all_sum([loss_sum, loss_n], self.device)
        return loss_sum / loss_n

    def _stop_requested(self) -> bool:
        if self.cancel is None:
            return False
        # Under DDP every process must stop at the same step, or the others wait forever.
        if self.ddp is not None:
            return _ddp.any_process(self.cancel.is_set(), self.device)
        return self.cancel.is_set()
