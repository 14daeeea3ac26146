"""What every ``fmbff`` command shares: the option types and options several commands take,
the one-line errors (exit code 2), the version line and loading the model an option names."""

from __future__ import annotations

import argparse
import sys

from .._files import os_error_hint

EXIT_USAGE = 2


class CliError(Exception):
    """A problem the user can fix; printed as one line."""


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def _chunk_size(text: str) -> int:
    value = int(text)
    if value < 32 or value % 32:
        raise argparse.ArgumentTypeError(f"must be a positive multiple of 32, got {value}")
    return value


def _fraction(text: str) -> float:
    value = float(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {value}")
    return value


def _probability(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {value}")
    return value


def _add_model_arg(p: argparse.ArgumentParser, required: bool = False) -> None:
    p.add_argument("--model", "-m", required=required, default=None if required else "default",
                   help="a registered model name (see `fmbff info --list`) or a .safetensors "
                        "file (default: the bundled starter model)")


def _add_intensity_args(p) -> None:
    """--window / --normalize: the same intensity choice for segment, train and evaluate."""
    p.add_argument("--window", default=None, metavar="NAME|LOW,HIGH",
                   help="intensity window: lung, soft-tissue, bone, brain (CT, in HU), or "
                        "LOW,HIGH in the image's units")
    p.add_argument("--normalize", default="model", choices=["model", "slice", "volume"],
                   help="intensities: the model's own (default), each slice's percentiles, "
                        "or one range for the whole stack / volume")


def _check_intensity(args) -> None:
    """A bad --window / --normalize is said in one line before any work (the model's own
    setting is not needed to tell)."""
    from ..inference.intensity import intensity_setting
    from ..model.normalization import Normalization

    intensity_setting(Normalization(), args.window, args.normalize)


#: RTSTRUCT masks (train, evaluate): which ROI is the lesion (data/rtstruct.py says why).
ROI_HELP = ("RTSTRUCT masks: the ROI that is the lesion (case-insensitive; a pattern such as "
            "'GTV*'; repeat to join several); needed when an RTSTRUCT holds several ROIs")


def _version() -> str:
    from .. import __version__

    return f"napari-fmbff {__version__}"


def one_line(err: BaseException) -> str:
    """An exception as one line a user can act on (the path of an OSError included)."""
    if isinstance(err, OSError) and err.strerror:
        where = f"{err.filename}: " if err.filename else ""
        return f"{where}{err.strerror} ({os_error_hint(err)})"
    lines = [line.strip() for line in str(err).strip().splitlines() if line.strip()]
    text = lines[0] if lines else type(err).__name__
    if not isinstance(err, (CliError, ValueError, OSError, MemoryError)):
        text = f"{type(err).__name__}: {text} (FMBFF_DEBUG=1 shows the traceback)"
    return text


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"fmbff: warning: {message}", file=sys.stderr)


def _load(name: str):
    from ..model.checkpoint import load_model

    return load_model(_model_name(name))


def _model_name(name: str) -> str:
    from ..model.registry import default_model_name

    return default_model_name() if name == "default" else name

