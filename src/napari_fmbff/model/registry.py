"""The models folder and the names in it: bundled models, the user's folder, safe names."""

from __future__ import annotations

import os
import re
from pathlib import Path


class ModelLoadError(ValueError):
    """A model file is missing, corrupt, or not an FM-BFF-Net checkpoint."""


SUFFIX = ".safetensors"


MODELS_DIR_ENV = "FMBFF_MODELS_DIR"


#: Models shipped inside the package (the starter model lives here).
BUNDLED_DIR = Path(__file__).parent.parent / "weights"


#: The folder an application chose (``use_models_dir``), used when FMBFF_MODELS_DIR is unset.
_chosen: tuple[Path, str] | None = None


def use_models_dir(folder, where: str = "") -> None:
    """Use ``folder`` as the models folder when FMBFF_MODELS_DIR is not set (None: back to
    the default). How the napari widgets pass on the Preferences' models folder without the
    engine importing napari; ``where`` says in error messages where the folder was set."""
    global _chosen
    _chosen = None if folder is None else (Path(folder).expanduser(), where)


def models_dir(create: bool = False, check: bool = False) -> Path:
    """The user's models folder: $FMBFF_MODELS_DIR, else the folder given to
    ``use_models_dir``, else the platform's user data dir.

    ``create``: make it (and its parents). ``check`` (implied by ``create``): a path that is
    a file, not a folder, is refused in one line saying what the folder should be.
    """
    env = os.environ.get(MODELS_DIR_ENV)
    if env:
        path = Path(env).expanduser()
    elif _chosen is not None:
        path = _chosen[0]
    else:
        import platformdirs

        path = Path(platformdirs.user_data_dir("napari-fmbff", appauthor=False)) / "models"
    if not (create or check):
        return path
    try:
        if create:
            path.mkdir(parents=True, exist_ok=True)
        elif path.exists() and not path.is_dir():
            raise FileExistsError(path)
    except (FileExistsError, NotADirectoryError):
        where = f"{MODELS_DIR_ENV}={env}" if env else f"the models folder {path}"
        if not env and _chosen is not None and _chosen[1]:
            where += f" (set in {_chosen[1]})"
        raise ValueError(f"{where}: a file is in the way (it is not a folder); set "
                         f"{MODELS_DIR_ENV} to an existing folder or one that can be "
                         "created") from None
    return path


def sanitize_name(name: str) -> str:
    """A model name safe as a file stem: letters, digits, '-', '_', '.'; no path parts."""
    stem = Path(str(name)).name
    if stem.endswith(SUFFIX):
        stem = stem[: -len(SUFFIX)]
    clean = re.sub(r"[^A-Za-z0-9._-]+", "_", stem).strip("._")
    if not clean:
        raise ValueError(f"{name!r} is not usable as a model name; use letters, digits, - and _")
    return clean


def list_models() -> dict[str, Path]:
    """Name -> file of every model: bundled ones first, then the user's models folder.

    Read fresh on every call, so a model saved a moment ago shows up without a restart.
    A user model with a bundled model's name is listed as ``name (user)``.
    """
    found: dict[str, Path] = {}
    for folder, tag in ((BUNDLED_DIR, ""), (models_dir(), " (user)")):
        if not folder.is_dir():
            continue
        for path in sorted(folder.glob(f"*{SUFFIX}")):
            name = path.name[: -len(SUFFIX)]
            found[name if name not in found else name + tag] = path
    return found


def companions(model_path) -> tuple[Path, Path]:
    """The files that go with a model: MODEL.log.csv (training history) and MODEL.loss.png."""
    stem = Path(model_path).with_suffix("")
    return Path(f"{stem}.log.csv"), Path(f"{stem}.loss.png")


def unique_model_path(name: str, folder: Path | None = None) -> Path:
    """A path in the models folder for ``name`` that is free, with its companions
    (name-2, name-3, ...)."""
    folder = Path(folder) if folder is not None else models_dir(create=True)
    folder.mkdir(parents=True, exist_ok=True)
    stem = sanitize_name(name)
    path, n = folder / f"{stem}{SUFFIX}", 2
    while path.exists() or any(p.exists() for p in companions(path)):
        path, n = folder / f"{stem}-{n}{SUFFIX}", n + 1
    return path


def resolve_model_path(path_or_name) -> Path:
    """A registered name or a file path -> an existing file, or a ModelLoadError."""
    text = str(path_or_name)
    registry = list_models()
    if text in registry:
        return registry[text]
    path = Path(text).expanduser()
    try:
        if path.is_file():
            return path
    except (OSError, ValueError):  # a name too long for a path, a NUL byte: not a file
        pass
    names = ", ".join(registry) or "none"
    raise ModelLoadError(
        f"no model {text!r}: not a file and not a registered name (registered: {names}; "
        f"models folder: {models_dir()})"
    )


def default_model_name() -> str:
    """The model used when none is named: the bundled starter, else the only user model."""
    models = list_models()
    if "starter" in models:
        return "starter"
    if len(models) == 1:
        return next(iter(models))
    raise ModelLoadError(
        "no default model: this install has no bundled 'starter' model"
        + (f" and several user models ({', '.join(models)}); " if models else "; ")
        + "name one with --model NAME or --model PATH.safetensors"
    )
