"""Checkpoints (safetensors + config in the metadata) and the registry of available models.

A checkpoint is one ``.safetensors`` file. Its string metadata holds:
``format`` (``napari-fmbff/1``), ``config`` (ModelConfig JSON), ``normalization`` (JSON),
``tile_size``, ``package_version``, ``created`` and ``provenance`` (free JSON: training data,
recipe, metrics). Nothing is ever unpickled: ``.pt``/``.pth`` files are read with
``torch.load(weights_only=True)`` only.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import re
from pathlib import Path

from .._files import atomic_path, refuse_existing
from .registry import SUFFIX, ModelLoadError, resolve_model_path

FORMAT = "napari-fmbff/1"




def save_model(net, path, metadata: dict | None = None, overwrite: bool = False,
               half: bool = False) -> Path:
    """Write ``net`` to ``path`` atomically (temp file in the same folder, then rename).

    metadata: provenance to record (training data, recipe, metrics); may also hold
    ``normalization`` (a dict) and ``tile_size``. ``half`` stores float16 weights (half the
    size; loaded back as float32). An existing file is only replaced with ``overwrite=True``.
    """
    from safetensors.torch import save_file

    from .. import __version__
    from .normalization import default_normalization

    path = Path(path)
    if path.suffix != SUFFIX:
        raise ValueError(f"model files end in {SUFFIX}, got {path.name}")
    refuse_existing(path, overwrite, "choose another name or pass overwrite=True")
    metadata = dict(metadata or {})
    previous = dict(getattr(net, "metadata", {}) or {})
    special = ("normalization", "tile_size", "provenance")
    provenance = {**previous.get("provenance", {}), **metadata.get("provenance", {})}
    provenance.update({k: v for k, v in metadata.items() if k not in special})
    norm = (metadata.get("normalization") or previous.get("normalization")
            or default_normalization(net))
    if hasattr(norm, "to_dict"):
        norm = norm.to_dict()
    tile_size = int(metadata.get("tile_size") or previous.get("tile_size") or 512)
    header = {
        "format": FORMAT,
        "config": net.config.to_json(),
        "normalization": json.dumps(norm),
        "tile_size": str(tile_size),
        "package_version": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "provenance": json.dumps(provenance, default=str),
    }
    tensors = {}
    for k, v in net.state_dict().items():
        v = v.detach().cpu()
        if half and v.is_floating_point():
            v = v.half()
        tensors[k] = v.contiguous()
    with atomic_path(path, overwrite, "choose another name or pass overwrite=True") as tmp:
        try:
            save_file(tensors, str(tmp), metadata=header)
        except OSError:
            raise
        except Exception as err:  # safetensors' own error type for a full disk and friends
            code = re.search(r"os error (\d+)", str(err))
            if not code:
                raise
            raise OSError(int(code.group(1)), os.strerror(int(code.group(1))), str(path)) \
                from err
    return path



def _header_metadata(path: Path) -> dict:
    """The ``__metadata__`` of a safetensors file, read from its JSON header (no torch)."""
    import struct

    with open(path, "rb") as fh:
        head = fh.read(8)
        if len(head) != 8:
            raise ValueError("file too short")
        (size,) = struct.unpack("<Q", head)
        if size > 100_000_000:
            raise ValueError("implausible header size")
        header = json.loads(fh.read(size))
    if not isinstance(header, dict):
        raise ValueError("header is not a JSON object")
    meta = header.get("__metadata__") or {}
    if not isinstance(meta, dict):
        raise ValueError("metadata is not a JSON object")
    return meta


def read_metadata(path) -> dict:
    """The decoded metadata of a checkpoint, without building the network (nor importing torch)."""
    path = Path(path)
    try:
        raw = _header_metadata(path)
    except (OSError, ValueError, UnicodeDecodeError) as err:
        raise ModelLoadError(f"{path}: not a readable safetensors file ({err})") from err
    if raw.get("format") != FORMAT:
        raise ModelLoadError(
            f"{path}: not an FM-BFF-Net checkpoint (metadata format is {raw.get('format')!r}, "
            f"expected {FORMAT!r})"
        )
    try:
        meta = {
            "config": json.loads(raw["config"]),
            "normalization": json.loads(raw.get("normalization", "{}")),
            "tile_size": int(raw.get("tile_size", 512)),
            "package_version": raw.get("package_version", ""),
            "created": raw.get("created", ""),
            "provenance": json.loads(raw.get("provenance", "{}")),
        }
        if not isinstance(meta["config"], dict) or not isinstance(meta["provenance"], dict):
            raise ValueError("config and provenance must be JSON objects")
        if meta["tile_size"] < 32 or meta["tile_size"] % 32:
            raise ValueError(f"tile_size {meta['tile_size']} is not a positive multiple of 32")
        if meta["normalization"]:  # checked now: a std of 0 would give NaN masks later
            from .normalization import Normalization

            if not isinstance(meta["normalization"], dict):
                raise ValueError("normalization must be a JSON object")
            Normalization.from_dict(meta["normalization"])
    except (KeyError, ValueError, TypeError) as err:
        raise ModelLoadError(f"{path}: damaged metadata ({err}); re-save or re-train the model") \
            from err
    return meta


def model_card(path_or_name) -> str:
    """One line for a model: what it was trained on and how well it scored (from its metadata)."""
    try:
        path = resolve_model_path(path_or_name)
        if path.suffix != SUFFIX:
            return f"{path.name}: imported weights; no training record"
        meta = read_metadata(path)
        prov = meta["provenance"]
    except ModelLoadError as err:
        return f"cannot read this model ({err})"
    parts = []
    base = prov.get("finetuned_from") or prov.get("init")
    data = prov.get("training_data")
    n_train = prov.get("n_train")
    if base:
        parts.append(f"fine-tuned from {Path(str(base)).stem}"
                     + (f" on {n_train} image(s)/slice(s)" if n_train else ""))
        if data:
            parts.append(f"data: {data}")
    elif data:
        parts.append(f"trained on {data}" + (f" ({n_train} images)" if n_train else ""))
    else:
        parts.append("no record of its training data")
    encoder = prov.get("encoder")
    if isinstance(encoder, dict) and encoder.get("name"):
        parts.append(f"new FM-BFF-Net layers on {encoder['name']}'s frozen medical-pretrained "
                     f"encoder ({encoder.get('package', '')} {encoder.get('version', '')})".strip())
        if prov.get("layers_start_data"):
            parts.append(f"its new layers started from {prov['layers_start']} "
                         f"({prov['layers_start_data']})")
    held = prov.get("held_out_dice")
    if isinstance(held, dict) and held:
        parts.append("held-out Dice " + ", ".join(f"{v:.3f} ({k})" for k, v in held.items()))
    elif prov.get("validated", True) and prov.get("best_val_dice") is not None:
        before, after = prov.get("initial_val_dice"), prov["best_val_dice"]
        parts.append(f"held-out Dice {after:.3f}"
                     + (f" (base: {before:.3f})" if base and before is not None else ""))
    else:
        parts.append("no held-out score (too few images to hold any out)")
        if prov.get("fit_after") is not None:
            parts.append(f"Dice on its training corrections {prov['fit_after']:.3f}")
    norm = meta.get("normalization") or {}
    if norm.get("mode") == "fixed" or norm.get("scope") == "volume":
        from .normalization import Normalization

        parts.append(f"input: {Normalization.from_dict(norm).describe()}")
    return "; ".join(parts)


def load_model(path_or_name, map_location: str = "cpu"):
    """Rebuild an ``FMBFFNet`` from a registered name or a checkpoint file.

    ``.safetensors``: weights + config. ``.pt``/``.pth``: a state dict (or {'state_dict': ...})
    read with ``torch.load(weights_only=True)``; the config must then come from a sibling
    ``.json`` file or be the default. Everything else is refused.
    """
    from . import FMBFFNet, ModelConfig

    path = resolve_model_path(path_or_name)
    suffix = path.suffix.lower()
    if suffix == SUFFIX:
        meta = read_metadata(path)
        from safetensors.torch import load_file

        try:
            state = load_file(str(path), device=map_location)
        except Exception as err:
            raise ModelLoadError(f"{path}: weights could not be read ({err})") from err
        cfg_dict = meta["config"]
    elif suffix in (".pt", ".pth"):
        state, cfg_dict = _load_torch_weights(path, map_location)
        meta = {"provenance": {"imported_from": str(path)}}
    else:
        raise ModelLoadError(f"{path}: unsupported model file type {suffix!r}; use .safetensors")
    try:
        cfg = ModelConfig.from_dict({**cfg_dict, "encoder_weights": None})
    except (TypeError, ValueError) as err:
        raise ModelLoadError(f"{path}: its config does not describe an FM-BFF-Net ({err})") from err
    net = FMBFFNet(cfg)
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    try:
        missing, unexpected = net.load_state_dict(state, strict=False)
    except RuntimeError as err:  # shape mismatches
        first = str(err).strip().splitlines()[-1].strip()
        raise ModelLoadError(
            f"{path}: weights do not match the architecture in its config ({first})"
        ) from err
    if missing or unexpected:
        raise ModelLoadError(
            f"{path}: weights do not match the architecture in its config "
            f"({len(missing)} missing, e.g. {missing[:3]}; {len(unexpected)} unexpected, "
            f"e.g. {unexpected[:3]})"
        )
    net.metadata = {k: v for k, v in meta.items() if k != "config"}
    net.metadata["source"] = str(path)
    net.metadata["sha256"] = file_sha256(path)
    return net.eval()


_SHA256: dict = {}


def file_sha256(path) -> str:
    """The SHA-256 of a model file (remembered per path, size and modification time), so a
    result's provenance names exactly the weights that made it."""
    import hashlib

    path = Path(path)
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _SHA256:
        digest = hashlib.sha256()
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
        _SHA256[key] = digest.hexdigest()
    return _SHA256[key]


def _load_torch_weights(path: Path, map_location: str):
    import torch

    try:
        obj = torch.load(str(path), map_location=map_location, weights_only=True)
    except Exception as err:
        raise ModelLoadError(
            f"{path}: refused or unreadable as plain weights ({type(err).__name__}); only "
            "state dicts load (weights_only=True). Convert it with save_model()."
        ) from err
    if isinstance(obj, dict) and "state_dict" in obj:
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise ModelLoadError(f"{path}: does not hold a state dict")
    return obj, _sidecar_config(path.with_suffix(".json"))


def _sidecar_config(sidecar: Path) -> dict:
    """The ModelConfig fields in a plain-weights file's ``.json`` sidecar ({} without one)."""
    if not sidecar.is_file():
        return {}
    try:
        cfg = json.loads(sidecar.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise ModelLoadError(f"{sidecar}: the config beside the weights cannot be read "
                             f"({err}); repair it, or remove it to use the default "
                             "config") from err
    if not isinstance(cfg, dict):
        raise ModelLoadError(f"{sidecar}: the config beside the weights must be a JSON object "
                             f"of ModelConfig fields, got a {type(cfg).__name__}; repair it, "
                             "or remove it to use the default config")
    return cfg



def load_encoder_weights(net, path) -> int:
    """Initialise ``net.encoder`` from a timm state dict (.safetensors, e.g. ImageNet weights
    mapped by scripts/lite0_imagenet_weights.py). Every encoder tensor must be covered."""
    from safetensors.torch import load_file

    try:
        state = load_file(str(path))
    except Exception as err:
        raise ModelLoadError(f"{path}: not a readable safetensors file ({err})") from err
    own = net.encoder.state_dict()
    missing = [k for k in own if k not in state]
    wrong = [k for k in own if k in state and state[k].shape != own[k].shape]
    if missing or wrong:
        raise ModelLoadError(
            f"{path}: does not fit encoder {net.config.encoder!r} ({len(missing)} tensors "
            f"missing, e.g. {missing[:2]}; {len(wrong)} of another shape, e.g. {wrong[:2]})")
    net.encoder.load_state_dict({k: state[k] for k in own})
    return len(own)
