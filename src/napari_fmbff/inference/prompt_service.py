"""The loaded prompt engines: one holder, for the Segment widget and ``fmbff segment`` alike.

A box or a click must cost only its engine's forward pass, never a load from disk. The networks
that answer prompts (LiteMedSAM's, ``inference.litemedsam.model``; a model's trained prompt
path, ``inference.prompting.prompt_network``) are loaded once per (engine, model, device) and
kept here, the ``KEPT`` last used. A model file is kept with its version (size and
modification time): a file replaced on disk is loaded anew. LiteMedSAM's image embeddings are
kept apart, by ``inference.litemedsam.embeddings``.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path

#: How many loaded engines are kept (the least recently used one goes first).
KEPT = 4


class LoadedEngines:
    """Loaded engines keyed by (engine name, model, device), the ``size`` last used kept.
    Thread-safe (the widget loads LiteMedSAM in a worker thread); one key is loaded by one
    thread at a time, so two boxes at once load it once."""

    def __init__(self, size: int = KEPT):
        self.size, self._kept, self._lock = size, OrderedDict(), threading.Lock()
        self._loading: dict = {}  # key -> the lock its loader holds

    def get(self, engine: str, model, device: str, load, version=None):
        """The engine kept under (``engine``, ``model``, ``device``) when it was loaded from
        ``version``, else ``load()``'s answer, kept from now on (an older version dropped)."""
        key = (engine, model, device)
        found = self._find(key, version)
        if found is not None:
            return found
        with self._lock:
            gate = self._loading.setdefault(key, threading.Lock())
        with gate:
            found = self._find(key, version)  # another thread may have loaded it meanwhile
            if found is not None:
                return found
            loaded = load()
            with self._lock:
                self._kept[key] = (version, loaded)
                self._kept.move_to_end(key)
                while len(self._kept) > self.size:
                    self._kept.popitem(last=False)
            return loaded

    def _find(self, key, version):
        with self._lock:
            kept = self._kept.get(key)
            if kept is None or kept[0] != version:
                return None
            self._kept.move_to_end(key)
            return kept[1]

    def holds(self, engine: str, model, device: str, version=None) -> bool:
        """Whether ``get`` with these would answer without loading."""
        with self._lock:
            kept = self._kept.get((engine, model, device))
            return kept is not None and kept[0] == version

    def clear(self) -> None:
        with self._lock:
            self._kept.clear()

    def __len__(self) -> int:
        return len(self._kept)


#: The engines the widget and the command line answer prompts with.
engines = LoadedEngines()


def file_version(path) -> tuple[str, tuple[int, int]]:
    """(the file's resolved path, its version: (size, modification time in ns)), the key and
    version a model file is kept under in ``engines``."""
    path = Path(path)
    stat = path.stat()
    return str(path.resolve()), (stat.st_size, stat.st_mtime_ns)
