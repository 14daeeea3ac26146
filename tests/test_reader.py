"""napari opens the OME-Zarr results of `fmbff segment`, and any other zarr, without asking
which reader to use: no reader of ours accepts folders (napari offers every folder reader for
every folder, whatever its patterns).

``viewer.open(path, plugin=None)`` is how napari chooses a reader for a dropped file or
``napari PATH`` (``viewer.open(path)`` alone means napari's builtin reader): one compatible
reader opens the path, several raise MultipleReaderError (the reader-choice dialog)."""

import numpy as np
import pytest
import zarr

pytest.importorskip("napari")

from conftest import write_ome_zarr  # noqa: E402
from napari_fmbff._reader import get_reader  # noqa: E402
from napari_fmbff.cli import main  # noqa: E402


@pytest.fixture
def results(tiny_model, tmp_path, rng):
    data = rng.integers(0, 255, (1, 1, 5, 70, 90), dtype=np.uint8)  # t c z y x: a volume
    write_ome_zarr(tmp_path / "ct.ome.zarr", data, scale=(1, 1, 2.5, 0.5, 0.5))
    out = tmp_path / "out" / "masks"  # napari-ome-zarr writes a group two folders up
    assert main(["segment", str(tmp_path / "ct.ome.zarr"), "-m", "tiny", "-o", str(out),
                 "--labels", "--probabilities", "--chunk", "64"]) == 0
    return out


def _folder_readers(path):
    from napari.plugins import _initialize_plugins, _npe2

    _initialize_plugins()
    return set(_npe2.get_readers(str(path)))


def test_no_folder_reader_of_ours_so_a_plain_zarr_opens_without_a_choice(
        make_napari_viewer, tmp_path, results):
    plain = zarr.create_array(store=str(tmp_path / "plain.zarr"), shape=(10, 12), dtype="uint8")
    plain[:] = 7
    readers = _folder_readers(tmp_path / "plain.zarr")
    assert "napari-fmbff" not in readers and "napari-fmbff" not in _folder_readers(
        results / "ct.zarr")
    if readers != {"napari"}:  # e.g. napari-ome-zarr: napari then asks, with or without us
        pytest.skip(f"other folder readers installed: {sorted(readers)}")
    viewer = make_napari_viewer()
    layer, = viewer.open(str(tmp_path / "plain.zarr"), plugin=None)  # napari chooses: no dialog
    assert type(layer).__name__ == "Image" and layer.data.shape == (10, 12)
    # napari's builtin reader opens our OME-Zarr output too, as the group's arrays: an Image
    # at one unit per pixel (it reads no metadata); napari-ome-zarr or the zarr.json route
    # below give Labels at the pixel size.
    builtin, = viewer.open(str(results / "ct.zarr"), plugin=None)
    assert type(builtin).__name__ == "Image" and tuple(builtin.level_shapes[0]) == (5, 70, 90)
    assert tuple(builtin.scale) == (1, 1, 1)


def test_a_result_opens_through_its_zarr_json_as_labels_at_the_pixel_size(make_napari_viewer,
                                                                         results):
    viewer = make_napari_viewer()
    labels, = viewer.open(str(results / "ct.zarr" / "zarr.json"), plugin=None)  # ours alone
    prob, = viewer.open(str(results / "ct_prob.zarr" / "zarr.json"), plugin=None)
    assert type(labels).__name__ == "Labels" and type(prob).__name__ == "Image"
    assert labels.data.shape == (5, 70, 90) and tuple(labels.scale) == (2.5, 0.5, 0.5)
    assert tuple(prob.scale) == (2.5, 0.5, 0.5) and tuple(prob.contrast_limits) == (0.0, 1.0)
    assert tuple(labels.axis_labels) == ("z", "y", "x") and labels.name == "ct"
    info = labels.metadata["napari_fmbff"]
    assert info["kind"] == "labels" and info["model_file"].endswith("tiny.safetensors")
    stored = zarr.open_group(str(results / "ct.zarr"), mode="r")["0"]
    np.testing.assert_array_equal(np.asarray(labels.data[2]), stored[2])


def test_napari_ome_zarr_opens_the_labels_at_the_pixel_size(make_napari_viewer, results):
    pytest.importorskip("napari_ome_zarr")
    viewer = make_napari_viewer()
    labels, = viewer.open(str(results / "ct.zarr"), plugin="napari-ome-zarr")
    prob, = viewer.open(str(results / "ct_prob.zarr"), plugin="napari-ome-zarr")
    assert type(labels).__name__ == "Labels" and type(prob).__name__ == "Image"
    assert tuple(labels.scale) == tuple(prob.scale) == (2.5, 0.5, 0.5)


def test_our_zarr_json_reader_leaves_other_paths_to_other_readers(tmp_path, results):
    zarr.create_array(store=str(tmp_path / "plain.zarr"), shape=(10, 10), dtype="uint8")
    write_ome_zarr(tmp_path / "img.ome.zarr", np.zeros((1, 1, 1, 8, 8), np.uint8))
    assert get_reader(str(tmp_path / "plain.zarr" / "zarr.json")) is None
    assert get_reader(str(tmp_path / "img.ome.zarr" / "zarr.json")) is None  # not ours
    assert get_reader(str(tmp_path / "missing.zarr" / "zarr.json")) is None
    assert get_reader(str(results / "ct.zarr")) is None  # the folder: napari's readers
    assert get_reader(str(results / "ct.zarr" / "zarr.json")) is not None


def test_an_rtstruct_opens_as_labels_over_its_series_with_roi_names_on_hover(
        make_napari_viewer, tmp_path):
    """An RTSTRUCT and one slice of its series, opened with our reader (napari's builtin
    imageio reader offers itself for .dcm too): the labels lie on the image, and hovering
    over an ROI shows its name."""
    pytest.importorskip("rt_utils")
    from dicom_files import ct_series, write_rtstruct

    series = ct_series(tmp_path / "patient" / "CT", n=3)
    gtv = np.zeros((3, 128, 128), bool)
    gtv[1, 30:60, 30:60] = True
    rs = write_rtstruct(series, tmp_path / "patient" / "RS.dcm", {"GTV": gtv})
    viewer = make_napari_viewer()
    image, = viewer.open(str(next(series.iterdir())), plugin="napari-fmbff")
    labels, = viewer.open(str(rs), plugin="napari-fmbff")
    assert type(labels).__name__ == "Labels" and labels.data.shape == image.data.shape
    np.testing.assert_allclose(labels.scale, image.scale)
    np.testing.assert_array_equal(labels.data, gtv)
    assert labels.get_status(position=(1, 45, 45))["coordinates"].endswith("roi: GTV")


def test_a_medical_volume_opens_in_mm_and_segment_keeps_the_unit(make_napari_viewer, tmp_path,
                                                                 tiny_model):
    """The layer's scale is the voxel spacing in mm, and napari is told so (not "pixel"); the
    output layers of Segment overlay it with the same units."""
    nib = pytest.importorskip("nibabel")

    volume = np.random.default_rng(0).normal(40, 10, (3, 64, 64)).astype(np.int16)
    affine = np.diag([0.7, 0.7, 2.5, 1.0])
    nib.save(nib.Nifti1Image(volume.transpose(2, 1, 0), affine), str(tmp_path / "ct.nii.gz"))
    viewer = make_napari_viewer()
    image, = viewer.open(str(tmp_path / "ct.nii.gz"), plugin="napari-fmbff")
    assert tuple(image.scale) == pytest.approx((2.5, 0.7, 0.7))
    assert [str(u) for u in image.units] == ["millimeter"] * 3
    _dock, widget = viewer.window.add_plugin_dock_widget("napari-fmbff", "Segment")
    labels = widget._labels_layer_for(image, volume.shape)
    assert [str(u) for u in labels.units] == ["millimeter"] * 3
