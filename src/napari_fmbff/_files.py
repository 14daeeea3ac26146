"""Files we write: atomically (a temp file beside the target, renamed into place), never over an
existing file unless asked, with the permissions the user's umask gives (mkstemp's 0600 would
lock colleagues out of shared results)."""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


#: What an OSError means for the user and what to do about it, by errno: (what it is, what to
#: do). "{elsewhere}" is said the caller's way ("write elsewhere", "choose a store folder you
#: can write to"). The one table for the command line's errors and the store's.
OS_ERROR_HINTS = {
    errno.ENOSPC: ("the disk is full", "free some space or {elsewhere}"),
    errno.EDQUOT: ("over your disk quota", "free some space or {elsewhere}"),
    errno.EACCES: ("no permission", "{elsewhere} or ask for access"),
    errno.EPERM: ("not permitted", "{elsewhere} or ask for access"),
    errno.EROFS: ("read-only", "{elsewhere}"),
    errno.ENOTDIR: ("a part of this path is a file, not a folder", "choose another path"),
    errno.EISDIR: ("a folder", "give a file name"),
    errno.ENOENT: ("", "check the path"),
    errno.ENAMETOOLONG: ("", "choose a shorter name"),
}


def os_error_hint(err: OSError, elsewhere: str = "write elsewhere",
                  otherwise: str = "check the path and try again") -> str:
    """What ``err`` means and what to do, in a few words (``OS_ERROR_HINTS``); ``otherwise``
    for an errno the table does not know."""
    cause, action = OS_ERROR_HINTS.get(err.errno, ("", otherwise))
    action = action.format(elsewhere=elsewhere)
    return f"{cause}: {action}" if cause else action


def check_folders(path) -> None:
    """A NotADirectoryError naming the first existing part of ``path``'s folders that is a
    file (``out.png/masks/a.png``): said before any work, not when the first write fails."""
    for parent in reversed(Path(path).parents):
        if parent.exists() and not parent.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(parent))


def refuse_existing(path, overwrite: bool, hint: str = "pass --overwrite to replace it") -> None:
    """A FileExistsError naming ``path`` unless ``overwrite``; a NotADirectoryError when a
    folder on its way is a file."""
    check_folders(path)
    if Path(path).exists() and not overwrite:
        raise FileExistsError(f"{path} exists; {hint}")


@contextlib.contextmanager
def naming(path):
    """Errors raised inside (a ValueError from deep in the engine: "the image has no finite
    values") name ``path`` when they do not already, so a user knows which file to fix."""
    try:
        yield
    except (ValueError, RuntimeError, MemoryError) as err:
        text = str(err)
        if str(path) in text or Path(str(path)).name in text:
            raise
        try:
            named = type(err)(f"{path}: {text}")
        except Exception:  # noqa: BLE001 - an exception type with another signature
            named = ValueError(f"{path}: {text}")
        raise named from err


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
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}-", suffix=path.suffix or ".tmp",
                                   dir=path.parent)
    except OSError as err:
        err.filename = str(path)
        raise
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        refuse_existing(path, overwrite, "it appeared while writing; not replaced")
        os.replace(tmp, path)
    except OSError as err:  # disk full, read-only...: say the file the user asked for
        if not err.filename or str(err.filename) == str(tmp):
            err.filename = str(path)
        raise
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
