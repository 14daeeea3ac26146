"""`fmbff segment` spread over dask.distributed workers (a LocalCluster of 2 CPU processes)."""

import numpy as np
import pytest
import zarr

from napari_fmbff.cli import main
from napari_fmbff.data.image_io import read_image, write_image

pytest.importorskip("distributed")


@pytest.fixture
def inputs(tmp_path, rng, tiny_model):
    folder = tmp_path / "in"
    folder.mkdir()
    for k in range(3):
        write_image(folder / f"img{k}.png", rng.integers(0, 255, (70, 90, 3), dtype=np.uint8))
    # A "large" image: zarr inputs are always segmented chunk by chunk.
    scan = zarr.create_array(store=str(folder / "scan.zarr"), shape=(150, 200),
                             dtype="uint16", chunks=(64, 64))
    scan[:] = rng.integers(0, 4000, (150, 200), dtype=np.uint16)
    return folder


def level0(path):
    """The full-resolution array of an OME-Zarr result (the group's dataset "0")."""
    return zarr.open_group(str(path), mode="r")["0"]


def _outputs(folder):
    return {p.name: (level0(p)[:] if p.suffix == ".zarr" else read_image(p))
            for p in sorted(folder.iterdir())}


def test_two_local_workers_write_what_one_process_writes(inputs, tmp_path):
    common = [str(inputs), "-m", "tiny", "--chunk", "64", "--tile-size", "64", "--probabilities"]
    assert main(["segment", *common, "-o", str(tmp_path / "local")]) == 0
    assert main(["segment", *common, "-o", str(tmp_path / "dask"), "--workers", "2"]) == 0
    local, dask = _outputs(tmp_path / "local"), _outputs(tmp_path / "dask")
    assert sorted(dask) == ["img0.png", "img0_prob.tif", "img1.png", "img1_prob.tif",
                            "img2.png", "img2_prob.tif", "scan.zarr", "scan_prob.zarr"]
    for name in local:
        np.testing.assert_allclose(dask[name], local[name], atol=1e-5, err_msg=name)
    assert (dask["scan.zarr"] == (dask["scan_prob.zarr"] >= 0.5)).all()


def test_scheduler_address_and_a_failing_input(inputs, tmp_path, capsys):
    from distributed import LocalCluster

    (inputs / "broken.png").write_bytes(b"not a png")  # fails on a worker
    out = tmp_path / "out"
    with LocalCluster(n_workers=1, processes=False, dashboard_address=None) as cluster:
        rc = main(["segment", str(inputs), "-m", "tiny", "-o", str(out), "--chunk", "64",
                   "--scheduler", cluster.scheduler_address])
    assert rc == 2
    err = capsys.readouterr().err
    assert "broken.png" in err and "cannot read image" in err and "Traceback" not in err
    # Completed ordinary masks may stay; a half-done zarr stays hidden (for --resume) and
    # nothing appears under its real name.
    assert not (out / "scan.zarr").exists()
    assert {p.name for p in out.glob(".*")} <= {".scan.zarr.partial"}


def test_workers_and_scheduler_together_are_refused(inputs, tmp_path, capsys):
    assert main(["segment", str(inputs), "-m", "tiny", "-o", str(tmp_path / "o"),
                 "--workers", "2", "--scheduler", "tcp://127.0.0.1:1"]) == 2
    assert "not both" in capsys.readouterr().err


def test_each_worker_takes_its_own_gpu(monkeypatch):
    import torch

    from napari_fmbff.jobs import cluster

    class Worker:
        name = 5

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setattr("distributed.get_worker", lambda: Worker)
    assert cluster._worker_device("auto") == "cuda:1"
    assert cluster._worker_device("cpu") == "cpu"
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert cluster._worker_device("auto") == "auto"  # one GPU: every worker shares it
    assert cluster.cpu_threads_per_worker(64) == 1


def test_labels_of_a_large_image_on_a_cluster(inputs, tmp_path):
    from distributed import LocalCluster

    from conftest import same_partition
    from napari_fmbff import Segmenter

    scan = inputs / "scan.zarr"
    # An untrained network: cut where its map holds many objects.
    prob = Segmenter("tiny", device="cpu", tile_size=64).predict_proba(zarr.open_array(str(scan))[:])
    common = [str(scan), "-m", "tiny", "--chunk", "64", "--tile-size", "64", "--labels",
              "--min-size", "3", "--threshold", f"{np.quantile(prob, 0.6):.6f}"]
    assert main(["segment", *common, "-o", str(tmp_path / "local")]) == 0
    with LocalCluster(n_workers=2, processes=False, dashboard_address=None) as cluster:
        assert main(["segment", *common, "-o", str(tmp_path / "dask"),
                     "--scheduler", cluster.scheduler_address]) == 0
    local = level0(tmp_path / "local" / "scan.zarr")[:]
    dask = level0(tmp_path / "dask" / "scan.zarr")[:]
    assert dask.dtype == np.uint32 and local.max() > 1 and same_partition(dask, local)
    assert sorted(p.name for p in (tmp_path / "dask").iterdir()) == ["scan.zarr"]


def test_a_run_interrupted_here_resumes_on_a_cluster(inputs, tmp_path, monkeypatch):
    from distributed import LocalCluster

    import napari_fmbff.inference.chunked as chunked

    scan = str(inputs / "scan.zarr")
    args = ["segment", scan, "-m", "tiny", "--chunk", "64", "--tile-size", "64"]
    assert main([*args, "-o", str(tmp_path / "ref")]) == 0
    real, calls = chunked.segment_chunk, []

    def flaky(*a, **kw):  # 3 x 4 chunks; stop during the 4th
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return real(*a, **kw)

    monkeypatch.setattr(chunked, "segment_chunk", flaky)
    out = tmp_path / "out"
    assert main([*args, "-o", str(out)]) == 130
    monkeypatch.setattr(chunked, "segment_chunk", real)
    done = len(list((out / ".scan.zarr.partial" / "done").iterdir()))
    assert done == 3
    with LocalCluster(n_workers=2, processes=False, dashboard_address=None) as cluster:
        assert main([*args, "-o", str(out), "--resume", "--scheduler",
                     cluster.scheduler_address]) == 0
    np.testing.assert_array_equal(level0(out / "scan.zarr")[:],
                                  level0(tmp_path / "ref" / "scan.zarr")[:])
    assert [p.name for p in out.iterdir()] == ["scan.zarr"]


def test_a_zarr_stack_on_a_cluster_equals_the_local_run(inputs, tmp_path, rng):
    """3D labels and one intensity range for the stack ("volume"), on workers as here; the
    cluster's outputs record the provenance every other output has."""
    from distributed import LocalCluster

    from conftest import same_partition
    from napari_fmbff.inference.postprocess import Postprocess, label_volume
    from napari_fmbff.inference.segmenter import SegmentSettings
    from napari_fmbff.jobs.files import SegmenterSpec, predict_job
    from napari_fmbff.model.registry import resolve_model_path

    data = rng.integers(0, 4000, (5, 70, 80), dtype=np.uint16)
    data[2] //= 8
    stack = zarr.create_array(store=str(tmp_path / "ct.zarr"), shape=(5, 70, 80),
                              dtype="uint16", chunks=(1, 64, 64))
    stack[:] = data
    # An untrained network: cut where its map (in memory, the same settings) holds objects.
    seg = SegmenterSpec(str(resolve_model_path("tiny")), SegmentSettings(tile_size=64),
                        normalize="volume").build(device="cpu")
    _, probs = predict_job(seg, data, False, Postprocess(), with_probs=True)
    common = [str(tmp_path / "ct.zarr"), "-m", "tiny", "--chunk", "32", "--tile-size", "64",
              "--probabilities", "--labels", "--normalize", "volume",
              "--threshold", f"{np.quantile(probs, 0.6):.6f}"]
    assert main(["segment", *common, "-o", str(tmp_path / "local")]) == 0
    with LocalCluster(n_workers=2, processes=False, dashboard_address=None) as cluster:
        assert main(["segment", *common, "-o", str(tmp_path / "dask"), "--scheduler",
                     cluster.scheduler_address]) == 0
    for name in ("ct.zarr", "ct_prob.zarr"):
        here = level0(tmp_path / "local" / name)[:]
        there = level0(tmp_path / "dask" / name)[:]
        assert here.shape[0] == 5
        np.testing.assert_allclose(there, here, atol=1e-6)
    labels = level0(tmp_path / "dask" / "ct.zarr")[:]
    np.testing.assert_allclose(level0(tmp_path / "dask" / "ct_prob.zarr")[:], probs, atol=1e-5)
    threshold = float(common[-1])
    assert labels.max() > 1 and same_partition(labels, label_volume(probs >= threshold))
    info = zarr.open_group(str(tmp_path / "dask" / "ct.zarr"), mode="r").attrs["napari_fmbff"]
    assert info["kind"] == "labels" and info["objects"] == "labels, 3D in stacks"
    assert info["model_file"].endswith("tiny.safetensors") and len(info["model_sha256"]) == 64
    assert info["intensity"]["scope"] == "volume" and info["device"] == "cpu"
    assert {"tile_size", "overlap", "threshold", "package_version", "date"} <= set(info)
