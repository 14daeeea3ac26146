"""napari opens the zarr results of `fmbff segment` as layers at the source's pixel size."""

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
    out = tmp_path / "out"
    assert main(["segment", str(tmp_path / "ct.ome.zarr"), "-m", "tiny", "-o", str(out),
                 "--labels", "--probabilities", "--chunk", "64"]) == 0
    return out


def test_results_open_as_labels_and_probability_layers(make_napari_viewer, results):
    viewer = make_napari_viewer()
    labels, = viewer.open(str(results / "ct.zarr"), plugin="napari-fmbff")
    prob, = viewer.open(str(results / "ct_prob.zarr"), plugin="napari-fmbff")
    assert type(labels).__name__ == "Labels" and type(prob).__name__ == "Image"
    assert labels.data.shape == (5, 70, 90) and tuple(labels.scale) == (2.5, 0.5, 0.5)
    assert labels.metadata["napari_fmbff"]["kind"] == "labels"
    assert tuple(prob.contrast_limits) == (0.0, 1.0)


def test_other_zarr_folders_are_left_to_other_readers(tmp_path):
    zarr.create_array(store=str(tmp_path / "plain.zarr"), shape=(10, 10), dtype="uint8")
    assert get_reader(str(tmp_path / "plain.zarr")) is None
    assert get_reader(str(tmp_path / "missing.zarr")) is None
    assert get_reader(str(tmp_path / "image.png")) is None
