"""Where and how a network runs, for inference and training alike: the device, the autocast
precision and torch's CPU threads. (How a long job reports progress and is cancelled:
``progress.py``.)
"""

from __future__ import annotations

import contextlib
import os
import threading
import time

#: Where the network can run; "auto" picks CUDA, then Apple MPS, then the CPU.
DEVICES = ("auto", "cuda", "mps", "cpu")
#: Arithmetic on CUDA; "auto" is bf16 where the card supports it, else fp16 (CPU: always fp32).
PRECISIONS = ("auto", "fp32", "bf16", "fp16")

#: Set to a whole number to fix torch's CPU threads (otherwise chosen before each CPU run).
THREADS_ENV = "FMBFF_THREADS"
_fixed_threads: int | None = None
_this_thread = threading.local()  # .kept_free: CPUs ``cpus_kept_free`` keeps in this thread


def set_cpu_threads(n: int) -> None:
    """Fix torch's CPU threads for this process from now on (a dask worker's share, say)."""
    global _fixed_threads
    import torch

    _fixed_threads = max(1, int(n))
    torch.set_num_threads(_fixed_threads)


@contextlib.contextmanager
def cpus_kept_free(n: int = 1):
    """Within this thread, ``fit_cpu_threads`` leaves ``n`` CPUs more free when it would give
    torch 3 threads or more (Linux; a fixed number, ``FMBFF_THREADS`` or
    ``set_cpu_threads``, stays as it is).

    For a napari widget's worker: the window's own threads (the Qt main thread, the canvas,
    software OpenGL) are in the same process, so /proc/stat does not count them as busy
    elsewhere, yet each time they run they take a core from one of torch's threads and the
    others wait for it at every layer.
    """
    before = getattr(_this_thread, "kept_free", 0)
    _this_thread.kept_free = before + max(0, int(n))
    try:
        yield
    finally:
        _this_thread.kept_free = before


def fit_cpu_threads() -> int:
    """Before a CPU run, give torch as many threads as there are CPUs free now; returns it.

    torch starts one thread per core whatever else runs, and its threads wait for each other
    at every layer, so a thread that shares its core with another busy process stalls them
    all: with one other CPU-bound process on a 2-core machine, ``fmbff segment`` with 2
    threads took 5.3x the wall time of 1 thread (docs/performance.md). The CPUs other
    processes keep busy are read from /proc/stat over a fifth of a second (Linux; elsewhere
    torch's own choice stays). ``FMBFF_THREADS`` or ``set_cpu_threads`` fix the number.
    """
    import torch

    fixed = _threads_from_env() or _fixed_threads
    if fixed is None:
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
        busy = _cpus_busy_elsewhere()
        if cpus is None or busy is None:
            return torch.get_num_threads()
        fixed = _keep_free(max(1, min(cpus, int(cpus - busy + 0.5))))
    if torch.get_num_threads() != fixed:
        torch.set_num_threads(fixed)
    return fixed


def _keep_free(threads: int) -> int:
    kept = getattr(_this_thread, "kept_free", 0)
    return threads - kept if kept and threads >= 3 else threads


def _threads_from_env() -> int | None:
    text = os.environ.get(THREADS_ENV, "").strip()
    if not text:
        return None
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise ValueError(f"{THREADS_ENV}={text!r}: give a whole number of threads, 1 or more, "
                         "or unset it to choose by the free CPUs")
    return value


def _cpus_busy_elsewhere(seconds: float = 0.2) -> float | None:
    """How many CPUs other processes kept busy over ``seconds`` (None: not on Linux)."""
    def sample():
        try:
            with open("/proc/stat", encoding="ascii") as f:
                values = [int(v) for v in f.readline().split()[1:]]
        except (OSError, ValueError):
            return None
        ours = os.times()
        # Busy = all but idle and iowait. Niced processes count too: they give way, but not
        # soon enough for threads that wait for each other at every layer (measured: a
        # fine-tune beside a niced job ran 10x slower with 2 threads than expected with 1).
        return sum(values), sum(values) - values[3] - values[4], ours.user + ours.system

    first = sample()
    if first is None:
        return None
    start = time.monotonic()
    time.sleep(seconds)
    second, wall = sample(), time.monotonic() - start
    if second is None or second[0] <= first[0]:
        return None
    all_cpus = os.cpu_count() or 1
    busy = (second[1] - first[1]) / (second[0] - first[0]) * all_cpus
    return max(0.0, busy - (second[2] - first[2]) / wall)


def resolve_device(device: str = "auto"):
    """"auto" -> CUDA, else Apple MPS, else CPU; an explicit choice must exist."""
    import torch

    name = str(device).lower()
    mps = bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps" if mps else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for but no CUDA GPU is available; use 'auto' or 'cpu'")
    if name == "mps" and not mps:
        raise ValueError("device 'mps' was asked for but Apple MPS is not available; use 'auto' or 'cpu'")
    try:
        return torch.device(name)
    except RuntimeError as err:
        raise ValueError(f"unknown device {device!r}; use auto, cuda, mps or cpu") from err


def amp_dtype(device, precision: str = "auto"):
    """The autocast dtype for ``precision`` on ``device`` (None: plain fp32)."""
    import torch

    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "fp32" or (precision == "auto" and device.type != "cuda"):
        return None
    if precision == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if precision == "bf16" else torch.float16


def autocast(device, dtype):
    """The autocast context for ``dtype`` on ``device`` (``amp_dtype``'s answer; None: none)."""
    if dtype is None:
        return contextlib.nullcontext()
    import torch

    return torch.autocast(device.type, dtype=dtype)


def device_label(device) -> str:
    """A human-readable name of a torch device, e.g. 'cuda (NVIDIA H100)' or 'cpu'."""
    import torch

    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return device.type
