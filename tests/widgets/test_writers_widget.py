"""Saving Labels from napari as a user does (File > Save Selected Layers runs the same
``viewer.layers.save``): the scan opened with napari-fmbff's reader, labels made with napari's
"new labels" button or by the Segment / Propagate docks, the files read back with nibabel,
pydicom + highdicom and zarr."""

import json

import numpy as np
import pytest

pytest.importorskip("napari")
nib = pytest.importorskip("nibabel")
pydicom = pytest.importorskip("pydicom")
hd = pytest.importorskip("highdicom")

from napari_fmbff.data.medical import read_volume  # noqa: E402
from napari_fmbff.jobs.saved_labels import SOURCE_KEY  # noqa: E402
from test_writers import dicom_series  # noqa: E402

WAIT_MS = 240_000
# (z, y, x, 1) -> NIfTI's (i, j, k, 1) = (x, y, z, 1)
SWAP = np.array([[0, 0, 1, 0], [0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1]], float)


def docked(viewer, name="Segment"):
    """The plugin's dock opened from the Plugins menu, as a user opens it (napari hands it a
    proxy of the viewer)."""
    _dock, widget = viewer.window.add_plugin_dock_widget("napari-fmbff", name)
    return widget


def open_scan(viewer, path):
    layer, = viewer.open(str(path), plugin="napari-fmbff")
    return layer


def new_labels(viewer, image):
    """napari's "new labels" button with the scan selected, as a user makes labels."""
    viewer.layers.selection.active = image
    viewer.window._qt_viewer.layerButtons.newLabelsButton.click()
    labels = viewer.layers.selection.active
    assert type(labels).__name__ == "Labels" and labels.name == f"{image.name} - Labels"
    assert SOURCE_KEY not in labels.metadata  # napari's layer: none of our metadata
    return labels


def nifti_voxels(path):
    img = nib.load(str(path))
    return img, np.transpose(np.asarray(img.dataobj), (2, 1, 0))


def seg_pixels(path, folder, names):
    """The SEG's labels on the given slices (in that order), as segment numbers."""
    uids = [str(pydicom.dcmread(folder / n).SOPInstanceUID) for n in names]
    seg = hd.seg.segread(str(path))
    return seg, seg.get_pixels_by_source_instance(source_sop_instance_uids=uids,
                                                  combine_segments=True, relabel=False)


def test_new_labels_on_a_dicom_series_save_as_nifti_seg_and_ome_zarr(make_napari_viewer,
                                                                      tmp_path):
    import zarr

    folder = dicom_series(tmp_path / "series", names=["c.dcm", "a.dcm", "b.dcm"])
    viewer = make_napari_viewer()
    image = open_scan(viewer, folder / "a.dcm")
    labels = new_labels(viewer, image)
    labels.brush_size = 12
    labels.paint((2, 60, 60), 4)
    labels.paint((0, 30, 90), 9)
    painted = np.asarray(labels.data).copy()
    assert set(np.unique(painted)) == {0, 4, 9}

    written = viewer.layers.save(str(tmp_path / "out" / "mask.nii.gz"), selected=True)
    assert [p.rsplit("/", 1)[-1] for p in written] == ["mask.nii.gz", "mask.json"]
    img, voxels = nifti_voxels(written[0])
    np.testing.assert_array_equal(voxels, painted)
    np.testing.assert_allclose(img.affine, read_volume(folder).ras_affine @ SWAP)
    assert json.loads((tmp_path / "out" / "mask.json").read_text())["layer"] == labels.name

    path, = labels.save(str(tmp_path / "out" / "mask.dcm"), plugin="napari-fmbff")
    seg, pixels = seg_pixels(path, folder, ["c.dcm", "a.dcm", "b.dcm"])  # the Z order
    np.testing.assert_array_equal(np.array([0, 4, 9])[pixels], painted)
    assert seg.SegmentSequence[0].SegmentAlgorithmType == "MANUAL"

    path, = viewer.layers.save(str(tmp_path / "out" / "mask.zarr"), selected=True)
    group = zarr.open_group(path, mode="r")
    np.testing.assert_array_equal(group["0"][:], painted)
    multiscale = group.attrs["ome"]["multiscales"][0]
    assert [a.get("unit") for a in multiscale["axes"]] == ["millimeter"] * 3
    np.testing.assert_allclose(multiscale["datasets"][0]["coordinateTransformations"][0]["scale"],
                               image.scale)
    assert group.attrs["napari_fmbff"][SOURCE_KEY]["series_uid"] == \
        image.metadata[SOURCE_KEY]["series_uid"]
    # Saved again after another correction: napari's dialog asked; the file is replaced whole.
    labels.paint((1, 100, 100), 4)
    viewer.layers.save(str(tmp_path / "out" / "mask.nii.gz"), selected=True)
    np.testing.assert_array_equal(nifti_voxels(tmp_path / "out" / "mask.nii.gz")[1], labels.data)


def test_two_d_labels_on_a_one_slice_scan(make_napari_viewer, tmp_path):
    folder = dicom_series(tmp_path / "one", n=1)
    viewer = make_napari_viewer()
    image = open_scan(viewer, folder / "0.dcm")
    assert image.ndim == 2
    labels = new_labels(viewer, image)
    labels.brush_size = 20
    labels.paint((64, 64), 1)
    nii = viewer.layers.save(str(tmp_path / "one.nii"), selected=True)[0]
    img, voxels = nifti_voxels(nii)
    assert img.shape == (128, 128, 1)
    np.testing.assert_array_equal(voxels[0], labels.data)
    path, = viewer.layers.save(str(tmp_path / "one.dcm"), selected=True)
    _, pixels = seg_pixels(path, folder, ["0.dcm"])
    np.testing.assert_array_equal(pixels[0], labels.data)


def test_segment_and_propagate_outputs_save_on_the_scan_with_their_model(
        make_napari_viewer, qtbot, tiny_model, tmp_path):
    folder = dicom_series(tmp_path / "series", n=3)
    viewer = make_napari_viewer()
    image = open_scan(viewer, folder / "1.dcm")
    seg = docked(viewer)
    seg.model.value, seg.tile_size.value, seg.device.value = "tiny", 64, "cpu"
    seg.threshold.value = 0.0  # every pixel one object: a known, non-empty answer
    seg.scope.value = seg.scope.choices[-1]  # the whole stack
    assert seg.run() is not None
    qtbot.waitUntil(lambda: seg._worker is None, timeout=WAIT_MS)
    labels = viewer.layers[f"{image.name} fmbff"]
    assert labels.metadata[SOURCE_KEY] == image.metadata[SOURCE_KEY]
    nii, sidecar = labels.save(str(tmp_path / "seg.nii.gz"), plugin="napari-fmbff")
    assert json.loads(open(sidecar).read())["model"] == "tiny"
    np.testing.assert_array_equal(nifti_voxels(nii)[1], labels.data)
    path, = labels.save(str(tmp_path / "seg.dcm"), plugin="napari-fmbff")
    ds = pydicom.dcmread(path)
    algorithm = ds.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0]
    assert algorithm.AlgorithmVersion == "tiny" and ds.SoftwareVersions.startswith("napari-fmbff")

    # Propagate writes into that layer and keeps (or gives back) the scan's record.
    del labels.metadata[SOURCE_KEY]
    labels.fill((1, 2, 2), 0)
    labels.brush_size = 30
    labels.paint((1, 64, 64), 1)
    fine = docked(viewer, "Fine-tune")
    fine.image.value = image
    for key, value in dict(model="tiny", epochs=1, tile_size=64, batch_size=2, device="cpu",
                           new_name="series propagated").items():
        getattr(fine, key).value = value
    assert fine.propagate() is not None
    qtbot.waitUntil(lambda: fine._worker is None, timeout=WAIT_MS)
    assert labels.metadata[SOURCE_KEY] == image.metadata[SOURCE_KEY]
    nii, sidecar = labels.save(str(tmp_path / "propagated.nii.gz"), plugin="napari-fmbff")
    assert json.loads(open(sidecar).read())["propagated"] is True


# ---- issue 28, item 6: the model file that made the pixels ----------------------------------

def _sidecar(path):
    return json.loads(open(path).read())


def test_a_propagated_layer_saves_the_propagated_model_file_hash_and_time(
        make_napari_viewer, tiny_net, models_dir, tmp_path):
    """A layer whose record says a propagation with model file F made it (the record
    ``run_record`` builds) saves, through napari's save, F's path and SHA-256 and that run's
    time in the NIfTI sidecar, the DICOM SEG and the OME-Zarr; Segment's run is kept as the
    previous run. A record that names a model with another model's file (what Propagate left
    before) is not saved as that model's file and hash."""
    import datetime

    import zarr

    from napari_fmbff import save_model
    from napari_fmbff.jobs.saved_labels import run_record
    from napari_fmbff.model.checkpoint import file_sha256

    starter = save_model(tiny_net, models_dir / "starter2.safetensors")
    fine = save_model(tiny_net, models_dir / "day1.safetensors", metadata={"note": "tuned"})
    folder = dicom_series(tmp_path / "series", n=3)
    viewer = make_napari_viewer()
    image = open_scan(viewer, folder / "1.dcm")
    labels = new_labels(viewer, image)
    labels.brush_size = 20
    labels.paint((1, 64, 64), 1)
    segment_run = {"model": "starter2", "model_file": str(starter),
                   "model_sha256": file_sha256(starter), "date": "2020-01-01T00:00:00+00:00",
                   "threshold": 0.5}
    when = datetime.datetime(2031, 5, 6, 7, 8, 9, tzinfo=datetime.timezone.utc)
    labels.metadata["napari_fmbff"] = run_record(fine, segment_run, when=when, base="starter2",
                                                 learned=True, slices_labelled=[1],
                                                 propagated=True)
    viewer.layers.selection.active = labels
    _, sidecar = viewer.layers.save(str(tmp_path / "mask.nii.gz"), selected=True)
    record = _sidecar(sidecar)
    assert (record["model"], record["model_file"], record["model_sha256"], record["date"]) == \
        ("day1", str(fine), file_sha256(fine), "2031-05-06T07:08:09+00:00")
    assert record["model_sha256"] != file_sha256(starter) or fine.read_bytes() == \
        starter.read_bytes()
    assert record["previous_run"]["model_file"] == str(starter)
    assert record["base_model_file"] == str(starter)
    path, = labels.save(str(tmp_path / "mask.dcm"), plugin="napari-fmbff")
    algorithm = pydicom.dcmread(path).SegmentSequence[0] \
        .SegmentationAlgorithmIdentificationSequence[0]
    parameters = dict(p.split("=", 1) for p in algorithm.AlgorithmParameters.split(","))
    assert algorithm.AlgorithmVersion == "day1"
    assert parameters["model_sha256"] == file_sha256(fine)
    assert parameters["model_file"] == "day1.safetensors"
    assert parameters["run"] == "2031-05-06T07:08:09+00:00"
    path, = viewer.layers.save(str(tmp_path / "mask.zarr"), selected=True)
    attrs = zarr.open_group(path, mode="r").attrs["napari_fmbff"]
    assert attrs["model_file"] == str(fine) and attrs["date"] == "2031-05-06T07:08:09+00:00"

    # What Propagate's record said before: the new model's name, Segment's file and time.
    labels.metadata["napari_fmbff"] = {**segment_run, "model": "day1", "propagated": True}
    _, sidecar = viewer.layers.save(str(tmp_path / "stale.nii.gz"), selected=True)
    record = _sidecar(sidecar)
    assert record["model"] == "day1" and record["model_file"] is None
    assert record["model_sha256"] is None and record["date"] is None
    assert "day1" in record["provenance_note"]


def _docked(viewer):
    return docked(viewer), docked(viewer, "Fine-tune")


def _segment_whole_stack(viewer, seg, image, qtbot):
    seg.image.value = image
    seg.model.value, seg.tile_size.value, seg.device.value = "tiny", 64, "cpu"
    seg.threshold.value = 0.0  # every pixel one object: a known, non-empty answer
    seg.scope.value = "whole stack"
    assert seg.run() is not None
    qtbot.waitUntil(lambda: seg._worker is None, timeout=WAIT_MS)
    return viewer.layers[f"{image.name} fmbff"]


def test_docked_propagate_saves_the_model_file_it_made(make_napari_viewer, qtbot, tiny_model,
                                                       tmp_path):
    """Issue 28, item 6, as a user does it (docks from the Plugins menu, napari's brush and
    save): after Propagate, the saved sidecar names the model file Propagate saved, its
    SHA-256 and the propagation's time, not the Segment run's model and date."""
    import datetime

    from napari_fmbff.model.checkpoint import file_sha256

    folder = dicom_series(tmp_path / "series", n=3)
    viewer = make_napari_viewer()
    image = open_scan(viewer, folder / "1.dcm")
    seg, tune = _docked(viewer)
    labels = _segment_whole_stack(viewer, seg, image, qtbot)
    segment_date = labels.metadata["napari_fmbff"]["date"]
    labels.fill((1, 2, 2), 0)
    labels.brush_size = 30
    labels.paint((1, 64, 64), 1)
    for key, value in dict(model="tiny", epochs=1, tile_size=64, batch_size=2, device="cpu",
                           new_name="series propagated").items():
        getattr(tune, key).value = value
    start = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
    tune.propagate_button.native.click()
    qtbot.waitUntil(lambda: tune._worker is None, timeout=WAIT_MS)
    made = tune.last_saved
    assert made is not None and made.stem.startswith("series_propagated")
    viewer.layers.selection.active = labels
    _, sidecar = viewer.layers.save(str(tmp_path / "propagated.nii.gz"), selected=True)
    record = _sidecar(sidecar)
    assert record["model"] == made.stem and record["model_file"] == str(made)
    assert record["model_sha256"] == file_sha256(made)
    assert datetime.datetime.fromisoformat(record["date"]) >= start
    assert record["date"] != segment_date


# ---- issue 28, item 8: segments named as the layer's labels are; reopening -------------------

def test_docked_segment_output_is_one_lesion_segment_and_reopens_as_labels(
        make_napari_viewer, qtbot, tiny_model, tmp_path):
    """Segment's output (model objects, plus one the user painted with a new id) saves as
    one DICOM SEG segment "lesion" over every object; saved as NIfTI it opens again as Labels
    on the scan (same grid, its record), and saves from there as a DICOM SEG again."""
    folder = dicom_series(tmp_path / "series", n=3)
    viewer = make_napari_viewer()
    image = open_scan(viewer, folder / "1.dcm")
    seg, _ = _docked(viewer)
    labels = _segment_whole_stack(viewer, seg, image, qtbot)
    labels.fill((0, 2, 2), 0)  # the first slice: background, then two objects of the user's
    labels.brush_size = 10
    labels.paint((0, 30, 30), 7)
    labels.paint((0, 90, 90), 12)
    assert len(np.unique(labels.data)) >= 4
    path, = labels.save(str(tmp_path / "mask.dcm"), plugin="napari-fmbff")
    ds, pixels = seg_pixels(path, folder, ["0.dcm", "1.dcm", "2.dcm"])
    assert [str(s.SegmentLabel) for s in ds.SegmentSequence] == ["lesion"]
    np.testing.assert_array_equal(pixels > 0, labels.data > 0)

    viewer.layers.selection.active = labels
    nii, _ = viewer.layers.save(str(tmp_path / "mask.nii.gz"), selected=True)
    reopened, = viewer.open(nii, plugin="napari-fmbff")
    assert type(reopened).__name__ == "Labels"
    np.testing.assert_array_equal(reopened.data, labels.data)
    np.testing.assert_allclose(reopened.scale, image.scale)
    assert reopened.metadata[SOURCE_KEY] == image.metadata[SOURCE_KEY]
    assert reopened.metadata["napari_fmbff"]["model"] == "tiny"
    path, = reopened.save(str(tmp_path / "again.dcm"), plugin="napari-fmbff")
    assert [str(s.SegmentLabel) for s in pydicom.dcmread(path).SegmentSequence] == ["lesion"]


def test_rtstruct_labels_save_as_a_seg_named_by_their_rois(make_napari_viewer, tmp_path):
    """An RTSTRUCT opened as Labels saves as a DICOM SEG with one segment per ROI, named as
    the ROI; the SEG opened without its series lies on its own grid over the scan, and a
    warning (napari's notification) says so."""
    pytest.importorskip("rt_utils")
    from dicom_files import ct_series, write_rtstruct

    series = ct_series(tmp_path / "patient" / "CT", n=3)
    gtv, lung = np.zeros((3, 128, 128), bool), np.zeros((3, 128, 128), bool)
    gtv[1, 30:60, 30:60] = True
    lung[:, 70:120, 70:120] = True
    rs = write_rtstruct(series, tmp_path / "patient" / "RS.dcm", {"GTV": gtv, "Lung": lung})
    viewer = make_napari_viewer()
    image, = viewer.open(str(next(series.iterdir())), plugin="napari-fmbff")
    rois, = viewer.open(str(rs), plugin="napari-fmbff")
    out = tmp_path / "elsewhere" / "rois.dcm"
    path, = rois.save(str(out), plugin="napari-fmbff")
    ds = pydicom.dcmread(path)
    assert [str(s.SegmentLabel) for s in ds.SegmentSequence] == ["GTV", "Lung"]
    with pytest.warns(UserWarning, match="own grid"):
        back, = viewer.open(path, plugin="napari-fmbff")
    assert type(back).__name__ == "Labels" and back.data.shape == image.data.shape
    np.testing.assert_allclose(back.scale, image.scale, rtol=1e-5)
    np.testing.assert_allclose(back.translate, image.translate)
    np.testing.assert_array_equal(back.data > 0, rois.data > 0)
    assert sorted(back.metadata["napari_fmbff_segments"].values()) == ["GTV", "Lung"]
