"""Screenshot of the Fine-tune widget mid-training (for the README); run under Xvfb."""

import sys
import tempfile

import napari
import numpy as np
from qtpy.QtCore import QEventLoop, QTimer

from napari_fmbff._widgets import FineTuneWidget, SegmentWidget
from napari_fmbff.data import make_sample


def wait(ms):
    loop = QEventLoop()
    QTimer.singleShot(ms, loop.quit)
    loop.exec_()


def main(path):
    import os

    os.environ.setdefault("FMBFF_MODELS_DIR", tempfile.mkdtemp())
    pairs = [make_sample("dermoscopy", size=256, seed=s, n_lesions=1) for s in range(6)]
    viewer = napari.Viewer(title="napari-fmbff: fine-tune on corrections")
    viewer.add_image(np.stack([p[0] for p in pairs]), rgb=True, name="lesions")
    viewer.add_labels(np.stack([p[1] for p in pairs]).astype(np.int32), name="corrected")
    seg = SegmentWidget(viewer)
    tune = FineTuneWidget(viewer)
    viewer.window.add_dock_widget(seg, name="Segment (napari-fmbff)", area="right")
    viewer.window.add_dock_widget(tune, name="Fine-tune (napari-fmbff)", area="right", tabify=True)
    tune.native.parentWidget().raise_()
    viewer.window._qt_window.resize(1500, 950)
    tune.image.value = viewer.layers["lesions"]
    tune.labels_layer.value = viewer.layers["corrected"]
    tune.epochs.value, tune.tile_size.value, tune.device.value = 40, 128, "cpu"
    tune.slices.value = "all slices with labels"
    tune.new_name.value = "dermoscopy-tuned"
    tune.run()
    for _ in range(600):  # until a few epochs are plotted
        wait(100)
        if len(tune.history) >= 4:
            break
    wait(300)
    viewer.screenshot(path, canvas_only=False)
    tune.cancel()
    while tune._worker is not None:
        wait(100)
    viewer.close()


if __name__ == "__main__":
    main(sys.argv[1])
