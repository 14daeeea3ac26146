"""Files we write: atomically (a temp file beside the target, renamed into place), never over an
existing file unless asked, with the permissions the user's umask gives (mkstemp's 0600 would
lock colleagues out of shared results)."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def refuse_existing(path, overwrite: bool, hint: str = "pass --overwrite to replace it") -> None:
    """A FileExistsError naming ``path`` unless ``overwrite``."""
    if Path(path).exists() and not overwrite:
        raise FileExistsError(f"{path} exists; {hint}")


@contextlib.contextmanager
def atomic_path(path, overwrite: bool = False, hint: str = "pass --overwrite to replace it"):
    """Yield a temporary path in ``path``'s folder; on success it becomes ``path``.

    An existing ``path`` is refused unless ``overwrite`` (checked before and again just before
    the rename, in case another process wrote it meanwhile); on any error the temporary file
    is removed and ``path`` is untouched.
    """
    path = Path(path)
    refuse_existing(path, overwrite, hint)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}-", suffix=path.suffix or ".tmp",
                               dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        refuse_existing(path, overwrite, "it appeared while writing; not replaced")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
