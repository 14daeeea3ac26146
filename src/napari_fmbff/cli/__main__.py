"""``python -m napari_fmbff.cli`` (and ``torchrun -m napari_fmbff.cli``): the ``fmbff`` command."""

import sys

from . import main

if __name__ == "__main__":  # not when a spawned worker process imports this module again
    sys.exit(main())
