"""Where and how a network runs, for inference and training alike: the device, the autocast
precision, and driving the progress-yielding generators that every long job here is.

Jobs are generators that yield progress and return their result, so a GUI can show the
progress and stop between steps by closing them; ``drain`` runs one to its end and ``relay``
passes one's items on, changed, without a hand-written ``next()`` / ``StopIteration`` loop.
"""

from __future__ import annotations

import contextlib

#: Where the network can run; "auto" picks CUDA, then Apple MPS, then the CPU.
DEVICES = ("auto", "cuda", "mps", "cpu")
#: Arithmetic on CUDA; "auto" is bf16 where the card supports it, else fp16 (CPU: always fp32).
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def _returning(gen, outcome: list):
    """``gen``'s items, unchanged; its return value is appended to ``outcome`` at the end."""
    outcome.append((yield from gen))


def drain(gen, on_item=None):
    """Run a progress-yielding generator to its end and return what it returns; each yielded
    item goes to ``on_item`` (a progress bar, say) when one is given."""
    outcome: list = []
    for item in _returning(gen, outcome):
        if on_item is not None:
            on_item(item)
    return outcome[0]


def relay(gen, fn):
    """Generator: yields ``fn(item)`` for every item of ``gen`` and returns what ``gen``
    returns (``result = yield from relay(gen, fn)``). Closing it closes ``gen``."""
    outcome: list = []
    with contextlib.closing(_returning(gen, outcome)) as items:
        for item in items:
            yield fn(item)
    return outcome[0]


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
