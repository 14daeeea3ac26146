"""A clinician's day in one real napari window, driven as a user does: open a DICOM CT series,
Segment, correct one slice with the brush, Propagate (the corrections store grows and a new
model learns from it), save the mask as NIfTI and as DICOM SEG, open the next patient and see
the store's model find that patient's lesion better than the model the day started with."""

import numpy as np
import pytest

pytest.importorskip("napari")
nib = pytest.importorskip("nibabel")
pydicom = pytest.importorskip("pydicom")
hd = pytest.importorskip("highdicom")

from napari_fmbff.data.medical import read_volume  # noqa: E402
from napari_fmbff.data.store import open_store_for  # noqa: E402
from napari_fmbff.jobs.saved_labels import SOURCE_KEY  # noqa: E402
from napari_fmbff.model.checkpoint import model_card  # noqa: E402

WAIT_MS = 240_000
SIZE, SLICES = 64, 6
WINDOW = "CT window: soft-tissue"
# (z, y, x) -> NIfTI's (x, y, z) voxel axes
SWAP = np.array([[0, 0, 1, 0], [0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1]], float)


def lesion(center, radius) -> np.ndarray:
    """A ball-like lesion: a disk on each slice, widest at ``center``'s slice."""
    zz, yy, xx = np.mgrid[:SLICES, :SIZE, :SIZE]
    cz, cy, cx = center
    r = np.clip(radius - 2.5 * np.abs(zz - cz), 0, None)
    return np.hypot(yy - cy, xx - cx) < r


def patient(folder, center, radius, seed):
    """A CT series (pydicom's CT_small.dcm as the template, its own Series / SOP UIDs) of soft
    tissue at ~30 HU with a bright lesion (~170 HU); returns (folder, the lesion's truth)."""
    from pathlib import Path

    from pydicom.data import get_testdata_file
    from pydicom.uid import generate_uid

    truth = lesion(center, radius)
    rng = np.random.default_rng(seed)
    hu = rng.normal(30, 12, truth.shape) + 140 * truth
    src = Path(get_testdata_file("CT_small.dcm"))
    folder = Path(folder)
    folder.mkdir(parents=True)
    series, first = generate_uid(), pydicom.dcmread(src)
    z0 = float(first.ImagePositionPatient[2])
    for k in range(SLICES):
        s = pydicom.dcmread(src)
        s.ImagePositionPatient = [*[float(v) for v in first.ImagePositionPatient[:2]], z0 + 5 * k]
        s.SeriesInstanceUID, s.SOPInstanceUID, s.InstanceNumber = series, generate_uid(), k + 1
        s.Rows = s.Columns = SIZE
        stored = np.round(hu[k] - float(s.RescaleIntercept)).astype(np.int16)
        s.PixelData = stored.tobytes()
        for tag in ("SmallestImagePixelValue", "LargestImagePixelValue"):
            if tag in s:
                delattr(s, tag)
        s.save_as(folder / f"slice{k:02d}.dcm")
    return folder, truth


def dice(labels, truth) -> float:
    pred = np.asarray(labels) > 0
    return 2 * (pred & truth).sum() / max(1, pred.sum() + truth.sum())


def segment(viewer, widget, image, model, qtbot):
    """Segment the whole series with ``model`` (the dock's fields as a user sets them)."""
    widget.image.value = image
    widget.model.value = model
    assert widget.run() is not None
    qtbot.waitUntil(lambda: widget._worker is None, timeout=WAIT_MS)
    return viewer.layers[f"{image.name} fmbff"]


def seg_values(path, folder) -> tuple:
    """(the SEG's SOP Instance UIDs referenced, its labels as napari values, slice order)."""
    seg = hd.seg.segread(str(path))
    referenced = {str(ref.ReferencedSOPInstanceUID) for item in seg.ReferencedSeriesSequence
                  for ref in item.ReferencedInstanceSequence}
    ordered = sorted(folder.glob("*.dcm"), key=lambda p: pydicom.dcmread(p).InstanceNumber)
    uids = [str(pydicom.dcmread(p).SOPInstanceUID) for p in ordered]
    values = np.zeros((len(uids), SIZE, SIZE), np.int32)
    for number in seg.segment_numbers:
        label = str(seg.get_segment_description(number).SegmentLabel)
        value = int(label.split()[-1]) if label.startswith("label ") else number
        planes = seg.get_pixels_by_source_instance(
            source_sop_instance_uids=uids, segment_numbers=[number], combine_segments=True)
        values[np.asarray(planes) > 0] = value
    return referenced, values, uids


def test_a_clinicians_day(make_napari_viewer, qtbot, tiny_model, models_dir, tmp_path):
    p1, truth1 = patient(tmp_path / "patient1", center=(2, 26, 28), radius=13, seed=1)
    p2, truth2 = patient(tmp_path / "patient2", center=(3, 38, 36), radius=10, seed=2)
    viewer = make_napari_viewer()

    # Morning: patient 1's series, opened from one of its files.
    image, = viewer.open(str(p1 / "slice03.dcm"), plugin="napari-fmbff")
    assert image.data.shape == (SLICES, SIZE, SIZE)
    _, seg = viewer.window.add_plugin_dock_widget("napari-fmbff", "Segment")
    _, tune = viewer.window.add_plugin_dock_widget("napari-fmbff", "Fine-tune")
    seg.tile_size.value, seg.device.value, seg.intensity.value = 64, "cpu", WINDOW
    seg.scope.value = "whole stack"
    labels = segment(viewer, seg, image, tiny_model, qtbot)
    before = dice(labels.data, truth1)

    # Correct the slice on screen: erase the proposal there, brush the lesion in.
    z = 2
    viewer.dims.set_current_step(0, z)
    viewer.layers.selection.active = labels
    labels.paint_polygon(np.array([[z, -1, -1], [z, -1, SIZE], [z, SIZE, SIZE], [z, SIZE, -1]],
                                  float), 0)
    labels.brush_size = 25  # the lesion's width on this slice
    labels.paint((z, 26, 28), 1)
    assert dice(labels.data[z], truth1[z]) > 0.9

    # Propagate: the store grows by this case and a new model learns from the store.
    assert tune.store.use_store.value and tune.labels_layer.value is labels
    for key, value in dict(model=tiny_model, intensity=WINDOW, epochs=20, lr=1e-2,
                           freeze_encoder=False, tile_size=64, batch_size=4, device="cpu",
                           new_name="day1").items():
        getattr(tune, key).value = value
    tune.propagate_button.native.click()
    qtbot.waitUntil(lambda: tune._worker is None, timeout=WAIT_MS)
    store = open_store_for(tune.store.store_dir.value)  # its store of grey images
    (case,) = store.cases()
    assert case.slices == [z] and case.entry.model == tiny_model
    assert "1 case, 1 corrected slice" in tune.store.store_summary.value
    latest = store.latest_model
    assert latest is not None and latest.stem == "day1" and latest.parent == models_dir
    assert "trained on 1 case, 1 corrected slice" in model_card("day1"), model_card("day1")
    assert labels.metadata["napari_fmbff"]["model"] == "day1"
    assert dice(labels.data, truth1) > before

    # Save the mask as NIfTI and as DICOM SEG, as File > Save Selected Layers does.
    out = tmp_path / "out"
    viewer.layers.selection.active = labels
    nii, _sidecar = viewer.layers.save(str(out / "patient1.nii.gz"), selected=True)
    img = nib.load(nii)
    np.testing.assert_allclose(img.affine, read_volume(p1).ras_affine @ SWAP)
    np.testing.assert_array_equal(np.transpose(np.asarray(img.dataobj), (2, 1, 0)), labels.data)
    (dcm,) = labels.save(str(out / "patient1.dcm"), plugin="napari-fmbff")
    referenced, values, uids = seg_values(dcm, p1)
    assert referenced == set(uids)  # patient 1's slices, every one
    # The model's objects are one class: one segment "lesion" over all of them (issue 28).
    assert [str(s.SegmentLabel) for s in pydicom.dcmread(dcm).SegmentSequence] == ["lesion"]
    np.testing.assert_array_equal(values > 0, labels.data > 0)

    # Next patient: Segment offers the store's model; it finds the lesion better than the
    # model the day started with.
    image2, = viewer.open(str(p2 / "slice00.dcm"), plugin="napari-fmbff")
    assert image2.metadata[SOURCE_KEY]["series_uid"] != image.metadata[SOURCE_KEY]["series_uid"]
    assert "day1" in seg.model.choices
    start = dice(segment(viewer, seg, image2, tiny_model, qtbot).data, truth2)
    learned = dice(segment(viewer, seg, image2, "day1", qtbot).data, truth2)
    assert "1 case, 1 corrected slice" in seg.model_card.value  # what the dock says of it
    print(f"patient 1: {before:.3f} before, patient 2: tiny {start:.3f}, day1 {learned:.3f}")
    assert learned > 0.6 and learned > start + 0.3
