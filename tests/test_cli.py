import subprocess
import sys

import numpy as np
import pytest
import tifffile

from napari_fmbff.cli import main
from napari_fmbff.data.image_io import read_image, write_image


@pytest.fixture
def images(tmp_path, rng):
    folder = tmp_path / "in"
    folder.mkdir()
    write_image(folder / "a.png", rng.integers(0, 255, (70, 90, 3), dtype=np.uint8))
    tifffile.imwrite(folder / "b.tif", rng.integers(0, 4000, (50, 64), dtype=np.uint16))
    return folder


def test_segment_a_folder_writes_one_mask_per_input(tiny_model, images, tmp_path, capsys):
    out = tmp_path / "out"
    rc = main(["segment", str(images), "--model", tiny_model, "--out", str(out),
               "--probabilities", "--tile-size", "64"])
    assert rc == 0
    a, b = read_image(out / "a.png"), read_image(out / "b.png")
    assert a.shape == (70, 90) and b.shape == (50, 64)
    assert set(np.unique(a)) <= {0, 255}
    prob = tifffile.imread(out / "a_prob.tif")
    assert prob.dtype == np.float32 and prob.shape == (70, 90)
    # Same threshold as written: the mask is the probability cut at 0.5.
    np.testing.assert_array_equal(a > 0, prob >= 0.5)


def test_segment_labels_and_glob(tiny_model, images, tmp_path):
    out = tmp_path / "out"
    assert main(["segment", str(images / "*.tif"), "-m", tiny_model, "-o", str(out), "--labels"]) == 0
    assert [p.name for p in out.iterdir()] == ["b.tif"]
    assert tifffile.imread(out / "b.tif").dtype == np.uint16


def test_segment_refuses_to_overwrite(tiny_model, images, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "a.png").write_bytes(b"precious")
    rc = main(["segment", str(images / "a.png"), "-m", tiny_model, "-o", str(out)])
    assert rc == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (out / "a.png").read_bytes() == b"precious"


@pytest.mark.parametrize("args,message", [
    (["segment", "nope.png", "-o", "x"], "no such file"),
    (["segment", "{images}/a.png", "-m", "no-such-model", "-o", "x"], "no model"),
    (["info", "--model", "/nonexistent.safetensors"], "no model"),
])
def test_bad_input_is_one_line_exit_2(args, message, images, tiny_model, capsys):
    args = [a.format(images=images) for a in args]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_unreadable_image_is_one_line(tiny_model, tmp_path, capsys):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"garbage")
    assert main(["segment", str(bad), "-m", tiny_model, "-o", str(tmp_path / "o")]) == 2
    assert "cannot read image" in capsys.readouterr().err


def test_bad_option_exits_2_without_traceback():
    proc = subprocess.run([sys.executable, "-m", "napari_fmbff.cli", "segment", "x.png",
                           "-o", "o", "--overlap", "2"], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "must be in [0, 1)" in proc.stderr and "Traceback" not in proc.stderr


def test_info_reports_params_flops_and_modules(tiny_model, capsys):
    assert main(["info", "--model", tiny_model, "--size", "64"]) == 0
    out = capsys.readouterr().out
    assert "parameters" in out and "GFLOPs @ 64" in out
    assert "fmcab, aggregate_skips, vitm, biffm" in out
    assert main(["info", "--list"]) == 0
    assert "tiny" in capsys.readouterr().out


@pytest.mark.parametrize("command", ["segment", "info"])
def test_help_for_every_command(command):
    proc = subprocess.run([sys.executable, "-m", "napari_fmbff.cli", command, "--help"],
                          capture_output=True, text=True)
    assert proc.returncode == 0 and "usage: fmbff" in proc.stdout


@pytest.fixture
def big_tiff(tmp_path, rng, monkeypatch):
    """A tiled TIFF over the 'large' pixel count (lowered for the test)."""
    monkeypatch.setattr("napari_fmbff.data.image_io.LARGE_IMAGE_PIXELS", 100 * 100)
    image = rng.integers(0, 255, (150, 230, 3), dtype=np.uint8)
    path = tmp_path / "slide.tif"
    tifffile.imwrite(path, image, tile=(64, 64))
    return path, image


def test_large_tiff_becomes_a_chunked_zarr_equal_to_the_whole_objects(tiny_model, big_tiff,
                                                                       tmp_path):
    import zarr

    from napari_fmbff import Segmenter

    path, image = big_tiff
    out = tmp_path / "out"
    assert main(["segment", str(path), "-m", tiny_model, "-o", str(out), "--tile-size", "64",
                 "--chunk", "64", "--probabilities"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["slide.zarr", "slide_prob.zarr"]
    mask = zarr.open_group(str(out / "slide.zarr"), mode="r")["0"]
    prob = zarr.open_group(str(out / "slide_prob.zarr"), mode="r")["0"]
    assert mask.shape == (150, 230) and mask.dtype == np.uint8 and mask.chunks == (64, 64)
    whole = Segmenter(tiny_model, device="cpu", tile_size=64).predict_proba(image)
    np.testing.assert_allclose(prob[:], whole, atol=1e-5)
    np.testing.assert_array_equal(mask[:], whole >= 0.5)
    # The same provenance keys as every other output, from the segmenter that ran it.
    from napari_fmbff.model.checkpoint import file_sha256
    from napari_fmbff.model.registry import resolve_model_path

    record = dict(zarr.open_group(str(out / "slide.zarr"), mode="r").attrs)["napari_fmbff"]
    assert record["model_sha256"] == file_sha256(resolve_model_path(tiny_model))
    assert record["intensity"]["mode"] and record["blend"] and record["device"] == "cpu"
    assert record["threshold"] == 0.5 and record["date"]


@pytest.mark.parametrize("labels", [True, False])
def test_large_input_labels_holes_and_min_size_match_the_ordinary_path(
        tiny_model, big_tiff, tmp_path, monkeypatch, labels):
    import zarr

    from conftest import same_partition
    from napari_fmbff import Segmenter

    path, image = big_tiff
    # An untrained network: cut where its map holds many objects of many sizes.
    prob = Segmenter(tiny_model, device="cpu", tile_size=64).predict_proba(image)
    threshold = f"{np.quantile(prob, 0.6):.6f}"
    opts = ["-m", tiny_model, "--tile-size", "64", "--threshold", threshold, "--min-size", "15",
            "--fill-holes"] + (["--labels"] if labels else [])
    assert main(["segment", str(path), "-o", str(tmp_path / "big"), "--chunk", "64", *opts]) == 0
    monkeypatch.setattr("napari_fmbff.data.image_io.LARGE_IMAGE_PIXELS", 10**9)  # ordinary path
    assert main(["segment", str(path), "-o", str(tmp_path / "small"), *opts]) == 0
    big = zarr.open_group(str(tmp_path / "big" / "slide.zarr"), mode="r")["0"][:]
    small = read_image(tmp_path / "small" / ("slide.tif" if labels else "slide.png"))
    assert big.dtype == (np.uint32 if labels else np.uint8)
    if labels:
        assert big.max() == small.max() > 1 and same_partition(big, small)
    else:
        np.testing.assert_array_equal(big, small > 0)
    assert [p.name for p in (tmp_path / "big").iterdir()] == ["slide.zarr"]  # no scratch left


def test_zarr_input_and_existing_zarr_output_is_kept(tiny_model, tmp_path, rng, capsys):
    import zarr

    src = zarr.create_array(store=str(tmp_path / "scan.zarr"), shape=(80, 96), dtype="uint16",
                            chunks=(32, 32))
    src[:] = rng.integers(0, 4000, (80, 96), dtype=np.uint16)
    out = tmp_path / "out"
    args = ["segment", str(tmp_path / "scan.zarr"), "-m", tiny_model, "-o", str(out),
            "--chunk", "64"]
    assert main(args) == 0
    first = zarr.open_group(str(out / "scan.zarr"), mode="r")["0"][:]
    assert first.shape == (80, 96) and set(np.unique(first)) <= {0, 1}
    zarr.open_group(str(out / "scan.zarr"), mode="r+")["0"][:] = 9  # the user's edits
    assert main(args) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (zarr.open_group(str(out / "scan.zarr"), mode="r")["0"][:] == 9).all()
    assert main(args + ["--overwrite"]) == 0
    np.testing.assert_array_equal(zarr.open_group(str(out / "scan.zarr"), mode="r")["0"][:], first)
    assert [p.name for p in out.iterdir()] == ["scan.zarr"]  # no temporary leftovers


def test_interrupted_large_run_resumes_where_it_stopped(tiny_model, big_tiff, tmp_path,
                                                        monkeypatch, capsys):
    import zarr

    import napari_fmbff.inference.chunked as chunked

    path, _ = big_tiff
    out = tmp_path / "out"
    args = ["segment", str(path), "-m", tiny_model, "-o", str(out), "--chunk", "64",
            "--tile-size", "64", "--probabilities"]
    assert main(args[:5] + [str(tmp_path / "ref")] + args[6:]) == 0  # uninterrupted reference
    real, calls, crash = chunked.segment_chunk, [], [True]

    def flaky(*a, **kw):  # 3 x 4 = 12 chunks; the run "crashes" during the 6th
        calls.append(1)
        if crash[0] and len(calls) == 6:
            raise KeyboardInterrupt
        return real(*a, **kw)

    monkeypatch.setattr(chunked, "segment_chunk", flaky)
    assert main(args) == 130
    assert "--resume" in capsys.readouterr().err
    assert not (out / "slide.zarr").exists() and (out / ".slide.zarr.partial").is_dir()
    assert main(args) == 2  # neither resumed nor overwritten: refused, partial kept
    assert "--resume" in capsys.readouterr().err
    assert main(args + ["--resume", "--threshold", "0.7"]) == 2
    assert "other settings" in capsys.readouterr().err
    calls.clear()
    crash[0] = False
    assert main(args + ["--resume"]) == 0
    assert len(calls) == 12 - 5  # only the chunks not done before
    def read(folder, name):
        return zarr.open_group(str(folder / name), mode="r")["0"][:]

    np.testing.assert_array_equal(read(out, "slide.zarr"), read(tmp_path / "ref", "slide.zarr"))
    # the probabilities to float rounding: a run uses the CPU threads free when it starts,
    # and another thread count sums in another order
    np.testing.assert_allclose(read(out, "slide_prob.zarr"),
                               read(tmp_path / "ref", "slide_prob.zarr"), rtol=0, atol=1e-6)
    assert sorted(p.name for p in out.iterdir()) == ["slide.zarr", "slide_prob.zarr"]


@pytest.mark.parametrize("fails_at,hint", [(1, False), (2, True)], ids=["first", "second"])
def test_a_full_disk_says_resume_only_when_finished_chunks_are_kept(
        fails_at, hint, tiny_model, big_tiff, tmp_path, monkeypatch, capsys):
    """The --resume hint after a failed large run: only where a finished chunk is on disk
    (a disk full on the first chunk leaves an empty working folder: nothing to resume)."""
    import errno

    import napari_fmbff.inference.chunked as chunked

    path, _ = big_tiff
    real, calls = chunked.segment_chunk, []

    def full(*a, **kw):
        calls.append(1)
        if len(calls) == fails_at:
            raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "out"))
        return real(*a, **kw)

    monkeypatch.setattr(chunked, "segment_chunk", full)
    assert main(["segment", str(path), "-m", tiny_model, "-o", str(tmp_path / "out"), "--zarr",
                 "--chunk", "64", "--tile-size", "64"]) == 2
    err = capsys.readouterr().err
    assert "No space left" in err and "Traceback" not in err
    done = tmp_path / "out" / ".slide.zarr.partial" / "done"
    assert len(list(done.iterdir())) == fails_at - 1
    assert ("--resume" in err) is hint


def test_ome_zarr_output_records_pixel_size_and_provenance(tiny_model, tmp_path, rng):
    import zarr

    from conftest import write_ome_zarr

    image = rng.integers(0, 255, (1, 3, 1, 90, 120), dtype=np.uint8)  # t c z y x
    write_ome_zarr(tmp_path / "img.ome.zarr", image, scale=(1, 1, 1, 0.5, 0.25))
    out = tmp_path / "out"
    assert main(["segment", str(tmp_path / "img.ome.zarr"), "-m", tiny_model, "-o", str(out),
                 "--chunk", "64", "--labels"]) == 0
    group = zarr.open_group(str(out / "img.zarr"), mode="r")
    info, ome = group.attrs["napari_fmbff"], group.attrs["ome"]
    assert group["0"].shape == (90, 120) and info["kind"] == "labels"
    scale = ome["multiscales"][0]["datasets"][0]["coordinateTransformations"][0]["scale"]
    assert scale == [0.5, 0.25] and info["model_file"].endswith("tiny.safetensors")


def test_stacks_are_segmented_plane_by_plane_into_a_multipage_tiff(tiny_model, tmp_path, rng):
    from napari_fmbff import Segmenter

    stack = rng.integers(0, 4000, (4, 70, 90), dtype=np.uint16)  # a small CT series
    tifffile.imwrite(tmp_path / "ct.tif", stack, photometric="minisblack")
    colour = rng.integers(0, 255, (3, 60, 80), dtype=np.uint8)  # CYX: one RGB image
    tifffile.imwrite(tmp_path / "rgb.tif", colour, photometric="rgb", planarconfig="separate",
                     metadata={"axes": "CYX"})
    out = tmp_path / "out"
    assert main(["segment", str(tmp_path / "ct.tif"), str(tmp_path / "rgb.tif"), "-m",
                 tiny_model, "-o", str(out), "--probabilities"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["ct.tif", "ct_prob.tif", "rgb.png",
                                                     "rgb_prob.tif"]
    masks, probs = read_image(out / "ct.tif"), read_image(out / "ct_prob.tif")
    assert masks.shape == probs.shape == (4, 70, 90)
    seg = Segmenter(tiny_model, device="cpu")
    np.testing.assert_allclose(probs[2], seg.predict_proba(stack[2]), atol=1e-6)
    np.testing.assert_array_equal(masks > 0, probs >= 0.5)
    assert read_image(out / "rgb.png").shape == (60, 80)


def test_zarr_stack_is_segmented_plane_by_plane_into_a_zarr_stack(tiny_model, tmp_path, rng):
    import zarr

    from conftest import same_partition
    from napari_fmbff import Segmenter
    from napari_fmbff.inference.postprocess import labels_from_proba

    # z y x (5 planes: a plain array with 3 or 4 leading planes would read as colour), each
    # plane normalised on its own.
    data = rng.integers(0, 4000, (5, 100, 90), dtype=np.uint16)
    data[1] //= 8
    src = zarr.create_array(store=str(tmp_path / "ct.zarr"), shape=data.shape, dtype="uint16",
                            chunks=(1, 64, 64))
    src[:] = data
    seg = Segmenter(tiny_model, device="cpu", tile_size=64)
    probs = [seg.predict_proba(plane) for plane in data]
    threshold = f"{np.quantile(probs[0], 0.6):.6f}"
    out = tmp_path / "out"
    assert main(["segment", str(tmp_path / "ct.zarr"), "-m", tiny_model, "-o", str(out),
                 "--tile-size", "64", "--chunk", "64", "--probabilities", "--labels",
                 "--per-slice-labels", "--min-size", "4", "--threshold", threshold]) == 0
    labels = zarr.open_group(str(out / "ct.zarr"), mode="r")["0"]
    prob = zarr.open_group(str(out / "ct_prob.zarr"), mode="r")["0"]
    assert labels.shape == prob.shape == (5, 100, 90) and labels.chunks[0] == 1
    for k in range(5):
        np.testing.assert_allclose(prob[k], probs[k], atol=1e-5)
        expected = labels_from_proba(probs[k], float(threshold), min_size=4)
        assert same_partition(labels[k], expected)
    assert labels[0].max() > 1


def test_pipelined_files_equal_one_by_one_and_stop_at_a_bad_file(tiny_model, tmp_path, rng):
    from napari_fmbff import Segmenter
    from napari_fmbff.inference.postprocess import Postprocess
    from napari_fmbff.jobs.files import (
        FileJob,
        iter_segment_files,
        segment_file,
    )

    seg, post = Segmenter(tiny_model, device="cpu"), Postprocess(labels=True)
    sources = []
    for k in range(5):
        sources.append(tmp_path / f"in{k}.png")
        write_image(sources[-1], rng.integers(0, 255, (60 + 7 * k, 50, 3), dtype=np.uint8))
    jobs = {mode: [FileJob.plan(p, tmp_path / mode, post, True) for p in sources]
            for mode in ("one", "piped")}
    for job in jobs["one"]:
        segment_file(seg, job, post)
    assert len(list(iter_segment_files(seg, jobs["piped"], post))) == 5
    for a, b in zip(jobs["one"], jobs["piped"]):
        np.testing.assert_array_equal(read_image(a.target), read_image(b.target))
        np.testing.assert_array_equal(read_image(a.prob_target), read_image(b.prob_target))
    sources[2].write_bytes(b"broken")
    again = [FileJob.plan(p, tmp_path / "again", post, False) for p in sources]
    with pytest.raises(ValueError, match="in2.png"):
        list(iter_segment_files(seg, again, post))
    assert (tmp_path / "again" / "in1.tif").exists()


def test_train_init_that_learns_nothing_saves_nothing(tiny_model, tmp_path, capsys):
    """A fine-tune no epoch of which beats the base on held-out images: no file, exit 1."""
    from conftest import disks
    from napari_fmbff.data.datasets import write_dataset

    data = write_dataset(tmp_path / "data", disks(12))
    out = tmp_path / "same.safetensors"
    rc = main(["train", str(data), "--init", "tiny", "--out", str(out), "--epochs", "1",
               "--lr", "1e-12", "--tile-size", "64", "--batch-size", "4", "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 1 and not out.exists() and not (tmp_path / "same.log.csv").exists()
    assert "did not change the model" in err and "Nothing was saved" in err
