"""napari dock widgets: thin shells over the engine (napari, magicgui and Qt live only here)."""

from ._finetune import FineTuneWidget
from ._segment import SegmentWidget

__all__ = ["SegmentWidget", "FineTuneWidget"]
