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

from napari_fmbff._widgets import FineTuneWidget, SegmentWidget  # noqa: E402
from napari_fmbff.data.medical import read_volume  # noqa: E402
from napari_fmbff.jobs.saved_labels import SOURCE_KEY  # noqa: E402
from test_writers import dicom_series  # noqa: E402

WAIT_MS = 240_000
# (z, y, x, 1) -> NIfTI's (i, j, k, 1) = (x, y, z, 1)
SWAP = np.array([[0, 0, 1, 0], [0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1]], float)


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
    seg = SegmentWidget(viewer)
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
    fine = FineTuneWidget(viewer)
    fine.image.value = image
    for key, value in dict(model="tiny", epochs=1, tile_size=64, batch_size=2, device="cpu",
                           new_name="series propagated").items():
        getattr(fine, key).value = value
    assert fine.propagate() is not None
    qtbot.waitUntil(lambda: fine._worker is None, timeout=WAIT_MS)
    assert labels.metadata[SOURCE_KEY] == image.metadata[SOURCE_KEY]
    nii, sidecar = labels.save(str(tmp_path / "propagated.nii.gz"), plugin="napari-fmbff")
    assert json.loads(open(sidecar).read())["propagated"] is True
