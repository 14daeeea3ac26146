"""Training on several GPUs or machines: torch DistributedDataParallel under ``torchrun``.

``torchrun --nproc_per_node 4 -m napari_fmbff.cli train DATA --out m.safetensors`` starts one
process per GPU; each sees the same data folder, trains on its share of every epoch's crops
(``--batch-size`` is per process), and they average gradients every step. Validation tiles are
split between the processes and their counts summed, so every process takes the same
early-stopping and learning-rate decisions. Only rank 0 prints and writes files.
On CPUs (and in the tests) the processes talk over gloo.
"""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class Ddp:
    """This process's place in a torchrun job."""

    rank: int
    world_size: int
    local_rank: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_from_env(device: str = "auto") -> Ddp | None:
    """Join the process group torchrun describes in the environment; None when run alone.

    NCCL when this process trains on a GPU, gloo otherwise. Each process takes the GPU
    numbered by its LOCAL_RANK.
    """
    if not launched_by_torchrun():
        return None
    import torch
    import torch.distributed as dist

    ddp = Ddp(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]),
              int(os.environ.get("LOCAL_RANK", "0")))
    on_gpu = device in ("auto", "cuda") and torch.cuda.is_available()
    if on_gpu:
        if ddp.local_rank >= torch.cuda.device_count():
            raise ValueError(f"LOCAL_RANK {ddp.local_rank} but only {torch.cuda.device_count()} "
                             "GPU(s) here; start at most one process per GPU (--nproc_per_node)")
        torch.cuda.set_device(ddp.local_rank)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if on_gpu else "gloo")
    return ddp


def device_for(ddp: Ddp | None, device: str) -> str:
    """The device this process trains on: its own GPU under torchrun, else what was asked."""
    import torch

    if ddp is not None and device in ("auto", "cuda") and torch.cuda.is_available():
        return f"cuda:{ddp.local_rank}"
    if ddp is not None and device == "auto":
        return "cpu"
    return device


def all_sum(values: list[float], device) -> list[float]:
    """Element-wise sum over all processes (float64, so pixel counts stay exact)."""
    import torch
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def any_process(flag: bool, device) -> bool:
    """True on every process when it is true on any (a shared decision to stop)."""
    return all_sum([1.0 if flag else 0.0], device)[0] > 0


def check_replicas_agree(net, device) -> None:
    """Raise if the processes' weights differ: they must, after every synchronised step."""
    import torch
    import torch.distributed as dist

    with torch.no_grad():
        total = sum(p.double().sum() for p in net.parameters()).reshape(1).to(device)
        low, high = total.clone(), total.clone()
        dist.all_reduce(low, op=dist.ReduceOp.MIN)
        dist.all_reduce(high, op=dist.ReduceOp.MAX)
    if not torch.isclose(low, high, rtol=1e-9, atol=1e-6).all():
        raise RuntimeError(f"DDP replicas diverged (weight sums {low.item()} vs {high.item()})")


def shutdown() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()
