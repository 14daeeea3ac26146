"""napari dock widgets: thin shells over the engine (napari, magicgui and Qt live only here)."""

from ._segment import SegmentWidget

__all__ = ["SegmentWidget"]
