"""The README's pictures, from real napari windows (run under Xvfb: scripts/screenshots.sh).

    python scripts/screenshots.py docs/images [--volume scan.nii.gz] [--volume-model NAME]
        [--volume-intensity "CT window: soft-tissue"]

1. segment_widget.png: the endoscopy sample, Segment's result, both docks in one tabbed dock.
2. finetune_widget.png: the loop on a look starter never saw (procedural CT): starter's
   proposal, the user's corrections on 6 slices, Fine-tune with the widget's defaults running.
3. medical_volume.png: a NIfTI / DICOM volume opened with the plugin's reader and segmented
   (default: nibabel's own test MR volume).
4. flow.png (--flow VOLUME --flow-box X0,Y0,X1,Y1@Z): the loop on a real scan: one box on
   one slice (answered at once), Propagate through the volume from that slice, then "next
   slice to check" moves the slider to the slice the review flags.
5. clinician_day.png (--only day [--day CT.nii.gz --day-mask MASK.nii.gz]): a clinician's day on
   a DICOM series (written to a temporary folder from the CT, cropped to the lesion's slices;
   default: procedural CT), in the README's order: Segment the whole stack, one box on the
   lesion's largest slice, Propagate (the corrections store grows by one case), Next slice to
   check.
Every window is 1600 x 1000, as the task's screen.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np


def wait(ms: int) -> None:
    from qtpy.QtCore import QEventLoop, QTimer

    loop = QEventLoop()
    QTimer.singleShot(ms, loop.quit)
    loop.exec_()


def until(predicate, timeout_s: float = 600) -> None:
    import time

    end = time.time() + timeout_s
    while not predicate() and time.time() < end:
        wait(100)


def viewer_with_docks(title: str):
    import napari

    viewer = napari.Viewer(title=title)
    viewer.window._qt_window.resize(1600, 1000)
    _, segment = viewer.window.add_plugin_dock_widget("napari-fmbff", "Segment")
    _, tune = viewer.window.add_plugin_dock_widget("napari-fmbff", "Fine-tune")
    wait(300)
    return viewer, segment, tune


def shoot(viewer, path) -> None:
    viewer.window._qt_window.resize(1600, 1000)
    wait(300)
    viewer.screenshot(str(path), canvas_only=False)
    print(f"wrote {path}")


def segment_picture(out: Path) -> None:
    from napari_fmbff._sample_data import endoscopy_sample

    viewer, segment, _ = viewer_with_docks("napari-fmbff: Segment")
    for data, meta, kind in endoscopy_sample():
        getattr(viewer, f"add_{kind}")(data, **meta)
    segment.image.value = viewer.layers["endoscopy sample"]
    segment.model.value = "starter"
    segment.run()
    until(lambda: segment._worker is None)
    segment.native.parentWidget().raise_()
    shoot(viewer, out / "segment_widget.png")
    viewer.close()


def finetune_picture(out: Path) -> None:
    from napari_fmbff.data.synthetic import make_sample

    pairs = [make_sample("ct", size=256, seed=100 + s, n_lesions=1) for s in range(6)]
    viewer, segment, tune = viewer_with_docks("napari-fmbff: correct, then fine-tune")
    viewer.add_image(np.stack([p[0] for p in pairs]), name="ct (never seen by starter)")
    segment.image.value = viewer.layers[0]
    segment.model.value = "starter"
    segment.scope.value = "whole stack"
    segment.run()
    until(lambda: segment._worker is None)
    labels = viewer.layers["ct (never seen by starter) fmbff"]
    truth = np.stack([p[1] for p in pairs]) > 0
    labels.data_setitem(np.nonzero(truth), 1)  # the user's corrections: paint each lesion
    labels.data_setitem(np.nonzero(~truth & (labels.data > 0)), 0)
    tune.image.value = viewer.layers[0]
    tune.new_name.value = "ct-tuned"
    tune.run()
    until(lambda: len(tune.history) >= 4 or tune._worker is None)
    tune.native.parentWidget().raise_()
    shoot(viewer, out / "finetune_widget.png")
    tune.cancel()
    until(lambda: tune._worker is None)
    viewer.close()


def volume_picture(out: Path, volume: str | None, model: str | None,
                   intensity: str | None = None) -> None:
    if volume is None:
        import nibabel

        volume = str(Path(nibabel.__file__).parent / "tests" / "data" / "anatomical.nii")
    viewer, segment, _ = viewer_with_docks("napari-fmbff: a NIfTI volume")
    [layer] = viewer.open(volume, plugin="napari-fmbff")
    segment.image.value = layer
    segment.model.value = model or "starter"
    segment.scope.value = "whole stack"
    if intensity:
        segment.intensity.value = intensity
    segment.run()
    until(lambda: segment._worker is None)
    labels = viewer.layers[f"{layer.name} fmbff"]
    counts = (labels.data > 0).reshape(labels.data.shape[0], -1).sum(axis=1)
    # The slice with the most segmented pixels (the middle one when nothing was found).
    viewer.dims.set_current_step(0, int(counts.argmax()) if counts.any()
                                 else layer.data.shape[0] // 2)
    segment.native.parentWidget().raise_()
    shoot(viewer, out / "medical_volume.png")
    viewer.close()


def flow_picture(out: Path, volume: str, box: str) -> None:
    """One box, Propagate from that slice, then the slice the review flags."""
    from napari_fmbff._widgets._prompts import OTSU_ENGINE
    from napari_fmbff.jobs.prompted import parse_prompt

    prompt = parse_prompt("box", box)
    viewer, segment, tune = viewer_with_docks("napari-fmbff: one box, propagate, review")
    [layer] = viewer.open(volume, plugin="napari-fmbff")
    segment.image.value = tune.image.value = layer
    viewer.dims.set_current_step(0, prompt.z)
    boxes, _ = segment.prompts.add_prompt_layers()
    segment.prompts.box_engine.value = OTSU_ENGINE  # answered at once, with or without the extra
    x0, y0, x1, y1 = prompt.values
    z = prompt.z
    boxes.add_rectangles(np.array([[z, y0, x0], [z, y0, x1], [z, y1, x1], [z, y1, x0]], float))
    wait(300)
    labels = viewer.layers[f"{layer.name} fmbff"]
    tune.labels_layer.value = labels
    tune.new_name.value = "flow-propagated"
    tune.propagate()
    until(lambda: tune._worker is None, timeout_s=1800)
    segment.review.next_slice_to_check()
    viewer.layers.selection.active = labels
    segment.native.parentWidget().raise_()
    bar = getattr(segment.native, "verticalScrollBar", None)
    if bar is not None:  # the dock scrolls: show its prompts and review part
        bar().setValue(bar().maximum())
    shoot(viewer, out / "flow.png")
    viewer.close()


def dicom_series(hu, spacing, folder: Path) -> Path:
    """A (Z, Y, X) volume in HU as a CT series (pydicom's CT_small.dcm as the header); its
    first file. Written to a temporary folder: no scan is kept or committed."""
    import pydicom
    from pydicom.data import get_testdata_file
    from pydicom.uid import generate_uid

    src = get_testdata_file("CT_small.dcm")
    series, study = generate_uid(), generate_uid()
    folder.mkdir(parents=True, exist_ok=True)
    for k, plane in enumerate(hu):
        s = pydicom.dcmread(src)
        s.StudyInstanceUID, s.SeriesInstanceUID, s.SOPInstanceUID = study, series, generate_uid()
        s.InstanceNumber, s.SeriesDescription = k + 1, "chest CT"
        s.Rows, s.Columns = plane.shape
        s.PixelSpacing = [float(spacing[1]), float(spacing[2])]
        s.SliceThickness = float(spacing[0])
        s.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        s.ImagePositionPatient = [0.0, 0.0, float(spacing[0]) * k]
        stored = np.round(np.clip(plane, -1024, 3071) - float(s.RescaleIntercept))
        s.PixelData = stored.astype(np.int16).tobytes()
        for tag in ("SmallestImagePixelValue", "LargestImagePixelValue"):
            if tag in s:
                delattr(s, tag)
        s.save_as(folder / f"ct{k:03d}.dcm")
    return folder / "ct000.dcm"


def day_scan(volume: str | None, mask: str | None):
    """(HU volume, lesion mask, spacing) for picture 5: the CT and its mask cropped to the
    lesion's slices and a few around them, else a procedural CT stack."""
    if volume and mask:
        from napari_fmbff.data.medical import read_volume

        scan, truth = read_volume(volume), read_volume(mask).data > 0
        zs = np.nonzero(truth.any(axis=(1, 2)))[0]
        keep = slice(max(int(zs.min()) - 3, 0), int(zs.max()) + 4)
        return scan.data[keep].astype(np.float32), truth[keep], scan.spacing
    from napari_fmbff.data.synthetic import make_sample

    pairs = [make_sample("ct", size=256, seed=300 + s, n_lesions=1) for s in range(8)]
    return (np.stack([p[0] for p in pairs]).astype(np.float32),
            np.stack([p[1] for p in pairs]) > 0, (5.0, 0.7, 0.7))


def day_picture(out: Path, volume: str | None, mask: str | None) -> None:
    """The README's order on a DICOM series: Segment the whole stack (starter), one box on
    the lesion's largest slice (the box states what that slice holds: starter's other objects
    there are cleared), Propagate with the dock's defaults (the corrections store grows by one
    case), then Next slice to check. Prints the 3D Dice of the other slices, the time of the
    propagation and the pick's true error and rank."""
    import time

    hu, truth, spacing = day_scan(volume, mask)
    first = dicom_series(hu, spacing, Path(tempfile.mkdtemp()) / "patient1")
    viewer, segment, tune = viewer_with_docks("napari-fmbff: a clinician's day")
    [layer] = viewer.open(str(first), plugin="napari-fmbff")
    z = int(truth.sum(axis=(1, 2)).argmax())  # the lesion's largest slice
    segment.image.value = tune.image.value = layer
    segment.model.value = "starter"
    segment.scope.value = "whole stack"
    segment.run()
    until(lambda: segment._worker is None)
    labels = viewer.layers[f"{layer.name} fmbff"]
    before = int((labels.data[z] > 0).sum())
    viewer.dims.set_current_step(0, z)
    boxes, _clicks = segment.prompts.add_prompt_layers(layer)
    ys, xs = np.nonzero(truth[z])
    y0, y1, x0, x1 = ys.min() - 3, ys.max() + 3, xs.min() - 3, xs.max() + 3
    boxes.add_rectangles(np.array([[z, y0, x0], [z, y0, x1], [z, y1, x1], [z, y1, x0]], float))
    pred = labels.data[z] > 0
    print(f"slice {z}: starter marked {before} px; after the box {pred.sum()} px, Dice "
          f"{2 * (pred & truth[z]).sum() / (pred.sum() + truth[z].sum()):.2f} "
          f"({segment.prompts.prompt_status.value})")
    tune.labels_layer.value = labels
    tune.new_name.value = "day-propagated"
    started = time.time()
    tune.propagate()
    until(lambda: tune._worker is None, timeout_s=1800)
    print(f"Propagate: {time.time() - started:.0f} s wall; {tune.status.value}")
    other = np.ones(len(truth), bool)
    other[z] = False
    pred, true = labels.data[other] > 0, truth[other]
    print(f"3D Dice of the other slices: {2 * (pred & true).sum() / (pred.sum() + true.sum()):.3f}"
          f" (precision {(pred & true).sum() / max(pred.sum(), 1):.2f}, recall "
          f"{(pred & true).sum() / max(true.sum(), 1):.2f}; {len(truth)} slices)")
    pick = segment.review.next_slice_to_check()
    errors = [int(((labels.data[k] > 0) != truth[k]).sum()) for k in range(len(truth))]
    if pick is not None:
        k = int(pick[0])
        rank = 1 + sum(e > errors[k] for e in errors)
        print(f"Next slice to check: {k} ({errors[k]} wrong px, rank {rank} of {len(errors)})")
    viewer.layers.selection.active = labels
    close_notifications(viewer)
    shoot(viewer, out / "clinician_day.png")
    viewer.close()
    smaller_png(out / "clinician_day.png")


def close_notifications(viewer) -> None:
    """Close the notification pop-ups (they would cover the slider)."""
    from napari._qt.dialogs.qt_notification import NapariQtNotification

    for popup in viewer.window._qt_window.findChildren(NapariQtNotification):
        popup.close()
    wait(300)


def smaller_png(path: Path) -> None:
    """The picture with a 256-colour palette (a third of the size, the same to the eye)."""
    from PIL import Image

    Image.open(path).convert("RGB").quantize(256).save(path, optimize=True)
    print(f"{path}: {path.stat().st_size // 1024} KB")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path)
    p.add_argument("--only", choices=["segment", "finetune", "volume", "flow", "day"],
                   default=None)
    p.add_argument("--day", default=None, help="a CT .nii(.gz) for picture 5")
    p.add_argument("--day-mask", default=None, help="its lesion mask (the painted correction)")
    p.add_argument("--flow", default=None, help="a .nii(.gz) or .dcm file for picture 4")
    p.add_argument("--flow-box", default=None, metavar="X0,Y0,X1,Y1@Z",
                   help="the one box of picture 4, on the lesion's largest slice")
    p.add_argument("--volume", default=None, help="a .nii(.gz) or .dcm file for picture 3")
    p.add_argument("--volume-model", default=None, help="model for picture 3 (default starter)")
    p.add_argument("--volume-intensity", default=None,
                   help="the Segment widget's intensity choice for picture 3")
    args = p.parse_args(argv)
    os.environ.setdefault("FMBFF_MODELS_DIR", tempfile.mkdtemp())
    os.environ.setdefault("FMBFF_CONFIG_DIR", tempfile.mkdtemp())  # default widget settings
    os.environ.setdefault("FMBFF_STORE_DIR", str(Path(tempfile.mkdtemp()) / "store"))
    args.out.mkdir(parents=True, exist_ok=True)
    import napari  # noqa: F401  (the Qt application)

    if args.only in (None, "segment"):
        segment_picture(args.out)
    if args.only in (None, "finetune"):
        finetune_picture(args.out)
    if args.only in (None, "volume"):
        volume_picture(args.out, args.volume, args.volume_model, args.volume_intensity)
    if args.flow and args.flow_box and args.only in (None, "flow"):
        flow_picture(args.out, args.flow, args.flow_box)
    if args.only in (None, "day"):
        day_picture(args.out, args.day, args.day_mask)
    return 0


if __name__ == "__main__":
    sys.exit(main())
