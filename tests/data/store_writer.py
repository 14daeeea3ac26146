"""A second process writing a corrections store, for tests/data/test_store_processes.py.

    python store_writer.py STORE SEED NAME STEP [STEP ...]

Steps, run in order: ``open`` (open the store), ``stage`` (stage this process's case: a
(4, 40, 48) volume from SEED, slice 1 corrected), ``commit``, ``crash`` (end at once, as a
killed process does: nothing tidied, no lock released by hand), ``signal:FILE`` (create FILE)
and ``wait:FILE`` (wait until FILE exists). Prints the case id when committed.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np

from napari_fmbff.data.store import CaseSource, open_store


def case_volume(seed: int, shape=(4, 40, 48)):
    rng = np.random.default_rng(seed)
    image = rng.integers(-1000, 1000, shape).astype(np.int16)
    labels = np.zeros(shape, np.uint8)
    labels[:, 10:20, 12:30] = 1
    return image, labels


def wait_for(path: Path, timeout: float = 180.0) -> None:
    end = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > end:
            sys.exit(f"store_writer: gave up waiting for {path}")
        time.sleep(0.05)


def main(argv: list[str]) -> int:
    folder, seed, name, steps = Path(argv[0]), int(argv[1]), argv[2], argv[3:]
    store = pending = None
    for step in steps:
        if step == "open":
            store = open_store(folder)
        elif step == "stage":
            pending = store.stage_case(*case_volume(seed), [1], CaseSource(name=name, source=name))
        elif step == "commit":
            pending.commit()
            print(pending.id, flush=True)
        elif step == "crash":
            os._exit(3)
        elif step.startswith("signal:"):
            Path(step[7:]).touch()
        elif step.startswith("wait:"):
            wait_for(Path(step[5:]))
        else:
            sys.exit(f"store_writer: unknown step {step!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
