"""The demo with a screen: napari with a sample, both widgets docked, and Segment's result."""

from __future__ import annotations


def open_demo(look: str = "endoscopy", model: str | None = None, screenshot=None,
              size=(1500, 950)):
    """Open napari on the bundled sample, dock Segment + Fine-tune and segment at once.

    With ``screenshot`` set, the window is saved there once the result is in and the
    viewer closes (used for the README's pictures); otherwise napari runs until closed.
    """
    import napari
    from qtpy.QtCore import QEventLoop, QTimer

    from .._sample_data import _sample
    from ._finetune import FineTuneWidget
    from ._segment import SegmentWidget

    viewer = napari.Viewer(title=f"napari-fmbff demo ({look})")
    for data, meta, kind in _sample(look):
        getattr(viewer, f"add_{kind}")(data, **meta)
    image_layer = viewer.layers[f"{look} sample"]
    viewer.layers.selection.active = image_layer
    segment = SegmentWidget(viewer)
    if model:
        segment.model.value = model
    finetune = FineTuneWidget(viewer)
    viewer.window.add_dock_widget(finetune, name="Fine-tune (napari-fmbff)", area="right")
    dock = viewer.window.add_dock_widget(segment, name="Segment (napari-fmbff)", area="right",
                                         tabify=True)
    dock.raise_()
    viewer.window._qt_window.resize(*size)
    segment.image.value = image_layer
    worker = segment.run()
    if screenshot is None:
        napari.run()
        return viewer
    loop = QEventLoop()
    if worker is not None:
        worker.finished.connect(loop.quit)
        QTimer.singleShot(300_000, loop.quit)
        loop.exec_()
    for _ in range(10):  # let the canvas draw the new layer
        QTimer.singleShot(100, loop.quit)
        loop.exec_()
    viewer.screenshot(str(screenshot), canvas_only=False)
    viewer.close()
    return viewer
