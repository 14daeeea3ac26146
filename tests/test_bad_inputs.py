"""Bad inputs and faults, tried as a careless user and an unlucky machine would (issue 12).

Each case asserts the promise: exit code 2 (1 only where documented) and ONE error line that
names the file and says what to do, never a traceback; the user's files byte for byte as
before; nothing half-written under an output's real name; nothing ever unpickled.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile

from conftest import tiny_config
from napari_fmbff import (
    FMBFFNet,
    ModelConfig,
    ModelLoadError,
    Normalization,
    Segmenter,
    load_model,
    save_model,
)
from napari_fmbff.cli import main
from napari_fmbff.jobs.large_outputs import HOLD_AFTER_CHUNKS

# ---- helpers ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    """A tiny model (tile 64) outside every folder a case snapshots."""
    import torch

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("model")
    return save_model(FMBFFNet(tiny_config()).eval(), folder / "tiny.safetensors",
                      metadata={"tile_size": 64})


@pytest.fixture(autouse=True)
def _private_models(models_dir):
    return models_dir


def png(path, shape=(40, 50, 3), seed=0):
    import imageio.v3 as iio

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    iio.imwrite(path, np.random.default_rng(seed).integers(0, 255, shape, dtype=np.uint8))
    return path


def tif(path, array):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(path, array)
    return path


def dataset(root, n=2, size=64, shape=None):
    """images/ + masks/ (Kvasir layout) of n noisy images with a square lesion each."""
    root = Path(root)
    for k in range(n):
        png(root / "images" / f"s{k}.png", shape or (size, size, 3), seed=k)
        mask = np.zeros((shape or (size, size))[:2], np.uint8)
        mask[size // 4: size // 2, size // 4: size // 2] = 255
        import imageio.v3 as iio

        (root / "masks").mkdir(parents=True, exist_ok=True)
        iio.imwrite(root / "masks" / f"s{k}.png", mask)
    return root


def snapshot(root, skip=()):
    """Every file under root -> its bytes (named pipes and folders left out)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(Path(root).rglob("*"))
            if p.is_file() and not any(s in p.parts for s in skip)}


def cli(args, capsys):
    try:
        rc = main([str(a) for a in args])
    except SystemExit as exc:  # argparse: usage + one error line
        rc = exc.code
    return rc, capsys.readouterr().err


def assert_refused(rc, err, command, names=(), says=(), code=2, alone=False):
    """Exit ``code``; exactly one error line, the last one, naming ``names`` and saying
    ``says``; no traceback. ``alone``: nothing else on stderr (no progress lines)."""
    assert rc == code, err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith(f"fmbff {command}: error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], err
    if alone:
        assert len(lines) == 1, err
    for name in names:
        assert str(name) in errors[0], err
    for text in says:
        assert text.lower() in errors[0].lower(), err
    return errors[0]


MARKER = Path("/tmp") / f"fmbff-pwned-{os.getpid()}"


class _Evil:
    """Unpickling this runs a command that creates MARKER."""

    def __reduce__(self):
        return (os.system, (f"touch {MARKER}",))


def malicious_pt(path, payload=None):
    import torch

    MARKER.unlink(missing_ok=True)
    torch.save(payload or {"epoch": _Evil(), "weight": _Evil()}, path)
    return path


def rewrite_model(src, dst, **meta_changes):
    """A copy of the checkpoint ``src`` with some metadata strings replaced."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(src), "pt") as fh:
        meta = dict(fh.metadata())
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    meta.update(meta_changes)
    save_file(tensors, str(dst), metadata=meta)
    return dst


# ---- bad model files (used by the CLI, load_model and segment) -------------------------------


def _foreign(path, good):
    import torch
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(3)}, str(path), metadata={"format": "pt"})
    return path


BAD_MODELS = {
    # id: (file name, maker(path, good model) -> path, text the error must say)
    "garbage": ("bad.safetensors", lambda p, g: p.write_bytes(b"not a model") and p, "not a readable"),
    "empty": ("empty.safetensors", lambda p, g: p.write_bytes(b"") and p, "not a readable"),
    "truncated": ("cut.safetensors",
                  lambda p, g: p.write_bytes(g.read_bytes()[: g.stat().st_size // 2]) and p,
                  "could not be read"),
    "huge-header": ("huge.safetensors",
                    lambda p, g: p.write_bytes(struct.pack("<Q", 10**12) + b"{}") and p,
                    "implausible"),
    "header-not-json": ("nojson.safetensors",
                        lambda p, g: p.write_bytes(struct.pack("<Q", 5) + b"xxxxx") and p,
                        "not a readable"),
    "foreign-safetensors": ("foreign.safetensors", _foreign, "not an FM-BFF-Net checkpoint"),
    "std-zero": ("std0.safetensors", lambda p, g: rewrite_model(g, p, normalization=json.dumps(
        {"mode": "auto", "low": 1, "high": 99, "mean": [0.5] * 3, "std": [0, 0.5, 0.5]})),
        "damaged metadata"),
    "heads-zero": ("heads0.safetensors", lambda p, g: rewrite_model(g, p, config=json.dumps(
        {**tiny_config().to_dict(), "transformer_heads": 0})), "config"),
    "config-a-list": ("cfglist.safetensors", lambda p, g: rewrite_model(g, p, config="[1, 2]"),
                      "damaged metadata"),
    "config-not-json": ("cfgbad.safetensors", lambda p, g: rewrite_model(g, p, config="{oops"),
                        "damaged metadata"),
    "tile-zero": ("tile0.safetensors", lambda p, g: rewrite_model(g, p, tile_size="0"),
                  "damaged metadata"),
    "other-architecture": ("arch.safetensors", lambda p, g: rewrite_model(g, p, config=json.dumps(
        {**tiny_config().to_dict(), "decoder_channels": [64, 32, 16, 8]})), "do not match"),
    "malicious-pickle-pt": ("evil.pt", lambda p, g: malicious_pt(p), "refused"),
    "garbage-pt": ("junk.pt", lambda p, g: p.write_bytes(b"junk") and p, "refused"),
    "pt-not-a-state-dict": ("list.pt", lambda p, g: malicious_pt(p, [1, 2]), "state dict"),
    "unsupported-suffix": ("model.onnx", lambda p, g: p.write_bytes(b"onnx") and p,
                           "unsupported"),
}


@pytest.fixture(params=list(BAD_MODELS), ids=list(BAD_MODELS))
def bad_model(request, tmp_path, model_file):
    name, make, says = BAD_MODELS[request.param]
    folder = tmp_path / "models-given"
    folder.mkdir()
    path = folder / name
    make(path, model_file)
    yield path, says
    assert not MARKER.exists(), "a pickle was unpickled"


def test_load_model_refuses_a_bad_model_file_naming_it(bad_model):
    path, says = bad_model
    before = path.read_bytes()
    with pytest.raises(ModelLoadError) as info:
        load_model(path)
    assert path.name in str(info.value) and says.lower() in str(info.value).lower()
    assert path.read_bytes() == before


def test_fmbff_info_refuses_a_bad_model_file_in_one_line(bad_model, capsys):
    path, says = bad_model
    before = snapshot(path.parent)
    rc, err = cli(["info", "--model", path], capsys)
    assert_refused(rc, err, "info", names=[path.name], says=[says], alone=True)
    assert snapshot(path.parent) == before


@pytest.mark.parametrize("name", ["../../x", "/etc/passwd", "..", "", "no such model",
                                  "x" * 300, "nul\0byte"],
                         ids=["parent-path", "system-file", "dot-dot", "empty", "spaces",
                              "too-long", "nul-byte"])
def test_hostile_or_unknown_model_names_are_refused(name, capsys):
    with pytest.raises(ModelLoadError):
        load_model(name)
    rc, err = cli(["info", "--model", name], capsys)
    assert_refused(rc, err, "info", alone=True)


# ---- fmbff segment ---------------------------------------------------------------------------


def _seg_case(t):
    """The common layout: in/a.png, an out folder to be."""
    return png(t / "in" / "a.png")


def _truncated(path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data[: len(data) // 2])
    return path


def _zarr_group(path):
    import zarr

    zarr.open_group(str(path), mode="w")
    return path


def _pipe(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    os.mkfifo(path)
    return path


SEGMENT_INPUTS = {
    # id: (maker(t) -> input path or pattern, names in the error, says, alone)
    "missing-file": (lambda t: t / "nope.png", ["nope.png"], ["no such file"], True),
    "empty-folder": (lambda t: (t / "empty").mkdir() or t / "empty", ["empty"], ["no images"], True),
    "folder-named-png": (lambda t: (t / "d.png").mkdir() or t / "d.png", ["d.png"], ["no images"],
                         True),
    "glob-matches-nothing": (lambda t: f"{t}/*.jpg", ["*.jpg"], ["matches no images"], True),
    "garbage-png": (lambda t: (t / "bad.png").write_bytes(b"garbage") and t / "bad.png",
                    ["bad.png"], ["cannot read image"], False),
    "zero-byte-png": (lambda t: (t / "zero.png").write_bytes(b"") or t / "zero.png",
                      ["zero.png"], ["cannot read image"], False),
    "truncated-png": (lambda t: _truncated(t / "cut.png", png(t / "src" / "c.png",
                                                             (200, 200, 3)).read_bytes()),
                      ["cut.png"], ["cannot read image"], False),
    "text-as-tif": (lambda t: (t / "x.tif").write_text("hello") and t / "x.tif", ["x.tif"],
                    ["cannot read"], True),
    "truncated-tif": (lambda t: _truncated(t / "cut.tif", tif(
        t / "src" / "c.tif", np.random.default_rng(0).random((300, 300), np.float32)).read_bytes()),
        ["cut.tif"], ["cannot read"], False),
    "all-nan-tif": (lambda t: tif(t / "nan.tif", np.full((40, 40), np.nan, np.float32)),
                    ["nan.tif"], ["no finite values"], False),
    "all-inf-tif": (lambda t: tif(t / "inf.tif", np.full((40, 40), np.inf, np.float32)),
                    ["inf.tif"], ["no finite values"], False),
    "complex-tif": (lambda t: tif(t / "cplx.tif", np.ones((40, 40), np.complex64)), ["cplx.tif"],
                    ["pixel type"], False),
    "five-channel-tif": (lambda t: tif(t / "c5.tif", np.ones((40, 40, 5), np.uint8)),
                         ["c5.tif"], ["channels"], False),
    "one-pixel-wide-stack": (lambda t: tif(t / "thin.tif", np.ones((40, 40, 2, 2), np.uint8)),
                             ["thin.tif"], ["2 x 2 px"], False),
    "empty-zarr-folder": (lambda t: (t / "e.zarr").mkdir() or t / "e.zarr", ["e.zarr"],
                          ["cannot open"], False),
    "broken-zarr-json": (lambda t: (t / "b.zarr").mkdir() or (t / "b.zarr" / "zarr.json")
                         .write_text("{oops") and t / "b.zarr", ["b.zarr"], ["cannot open"], False),
    "zarr-group-without-image": (lambda t: _zarr_group(t / "g.zarr"), ["g.zarr"],
                                 ["multiscales"], False),
    "named-pipe-by-name": (lambda t: _pipe(t / "p.png"), ["p.png"], ["not a regular file"], True),
}


@pytest.mark.parametrize("case", list(SEGMENT_INPUTS), ids=list(SEGMENT_INPUTS))
def test_segment_bad_input(case, tmp_path, model_file, capsys):
    make, names, says, alone = SEGMENT_INPUTS[case]
    source = make(tmp_path)
    before = snapshot(tmp_path)
    rc, err = cli(["segment", source, "-m", model_file, "-o", tmp_path / "out"], capsys)
    assert_refused(rc, err, "segment", names=names, says=says, alone=alone)
    assert "--resume" not in err  # nothing was started, nothing to resume
    assert snapshot(tmp_path) == before
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def _existing(t, name, content=b"precious"):
    (t / "out").mkdir(exist_ok=True)
    (t / "out" / name).write_bytes(content)


SEGMENT_OUTPUTS = {
    # id: (setup(t) -> (inputs, out, extra args), names, says)
    "out-is-a-file": (lambda t: ([_seg_case(t)], (t / "f.txt").write_text("x") and t / "f.txt",
                                 []), ["f.txt"], ["is a file"]),
    "out-under-a-file": (lambda t: ([_seg_case(t)], (t / "f.txt").write_text("x") and
                                    t / "f.txt" / "sub", []), ["f.txt"], ["not a folder"]),
    "out-onto-the-inputs": (lambda t: ([t / "in"], t / "in", [_seg_case(t)][:0]),
                            ["a.png"], ["one of the inputs"]),
    "out-onto-the-inputs-overwrite": (lambda t: ([t / "in"], t / "in",
                                                 ["--overwrite"] + [_seg_case(t)][:0]),
                                      ["a.png"], ["one of the inputs"]),
    "existing-mask": (lambda t: ([_seg_case(t)], t / "out", [_existing(t, "a.png")][:0]),
                      ["a.png"], ["--overwrite"]),
    "existing-probabilities": (lambda t: ([_seg_case(t)], t / "out", ["--probabilities"]
                                          + [_existing(t, "a_prob.tif")][:0]),
                               ["a_prob.tif"], ["--overwrite"]),
    "existing-labels-tif": (lambda t: ([_seg_case(t)], t / "out", ["--labels"]
                                       + [_existing(t, "a.tif")][:0]), ["a.tif"], ["--overwrite"]),
    "two-inputs-one-name": (lambda t: ([_seg_case(t), tif(t / "in" / "a.tif", np.ones((40, 40),
                                                                                      np.uint8))],
                                       t / "out", []), ["a.png"], ["collide"]),
    "model-missing": (lambda t: ([_seg_case(t)], t / "out", ["-m", t / "none.safetensors"]),
                      ["none.safetensors"], ["no model"]),
    "model-is-a-folder": (lambda t: ([_seg_case(t)], t / "out", ["-m", t / "in"]), [],
                          ["no model"]),
    "model-hostile-name": (lambda t: ([_seg_case(t)], t / "out", ["-m", "../../x"]), ["../../x"],
                           ["no model"]),
    "model-garbage": (lambda t: ([_seg_case(t)], t / "out", ["-m", (t / "g.safetensors")
                      .write_bytes(b"zz") and t / "g.safetensors"]), ["g.safetensors"],
                      ["not a readable"]),
    "tile-size-not-a-multiple-of-32": (lambda t: ([_seg_case(t)], t / "out",
                                                  ["--tile-size", "500"]), [], ["multiple of 32"]),
    "workers-and-scheduler": (lambda t: ([_seg_case(t)], t / "out",
                                         ["--workers", "2", "--scheduler", "tcp://127.0.0.1:1"]),
                              [], ["not both"]),
}


@pytest.mark.parametrize("case", list(SEGMENT_OUTPUTS), ids=list(SEGMENT_OUTPUTS))
def test_segment_refuses_before_the_model_loads(case, tmp_path, model_file, capsys):
    setup, names, says = SEGMENT_OUTPUTS[case]
    inputs, out, extra = setup(tmp_path)
    before = snapshot(tmp_path)
    args = ["segment", *inputs, "-o", out, *extra]
    if "-m" not in extra:
        args += ["-m", model_file]
    started = time.monotonic()
    rc, err = cli(args, capsys)
    assert_refused(rc, err, "segment", names=names, says=says, alone=True)
    assert time.monotonic() - started < 5  # said at once, not after the model ran
    assert snapshot(tmp_path) == before


SEGMENT_OPTIONS = [
    ("--tile-size", "0"), ("--tile-size", "big"), ("--overlap", "1"), ("--overlap", "-0.1"),
    ("--overlap", "nan"), ("--batch-size", "0"), ("--threshold", "1.5"),
    ("--threshold", "-0.1"), ("--min-size", "-1"), ("--min-size", "1.5"), ("--chunk", "100"),
    ("--chunk", "0"), ("--device", "tpu"), ("--precision", "fp8"), ("--blend", "box"),
    ("--workers", "0"), ("--overwirte", None),
]


@pytest.mark.parametrize("option,value", SEGMENT_OPTIONS,
                         ids=[f"{o}={v}" for o, v in SEGMENT_OPTIONS])
def test_segment_bad_option_shows_the_sub_command_usage(option, value, tmp_path, capsys):
    args = ["segment", _seg_case(tmp_path), "-o", tmp_path / "out", option]
    rc, err = cli(args + ([value] if value is not None else []), capsys)
    assert_refused(rc, err, "segment", names=[option])
    assert "usage: fmbff segment" in err
    assert not (tmp_path / "out").exists()


def test_segment_on_a_missing_gpu_is_refused_before_the_model(tmp_path, model_file, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    rc, err = cli(["segment", _seg_case(tmp_path), "-m", model_file, "-o", tmp_path / "out",
                   "--device", "cuda"], capsys)
    assert_refused(rc, err, "segment", says=["no CUDA GPU", "use 'auto' or 'cpu'"], alone=True)


def test_a_named_pipe_in_a_folder_is_skipped_with_a_warning(tmp_path, model_file, capsys):
    _seg_case(tmp_path)
    _pipe(tmp_path / "in" / "x.png")
    rc, err = cli(["segment", tmp_path / "in", "-m", model_file, "-o", tmp_path / "out"], capsys)
    assert rc == 0 and "x.png: skipped, not a regular file" in err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.png"]


def test_a_bad_file_in_a_folder_stops_with_its_name_and_keeps_the_others(tmp_path, model_file,
                                                                         capsys):
    _seg_case(tmp_path)
    (tmp_path / "in" / "b.png").write_bytes(b"broken")
    before = snapshot(tmp_path / "in")
    rc, err = cli(["segment", tmp_path / "in", "-m", model_file, "-o", tmp_path / "out"], capsys)
    assert_refused(rc, err, "segment", names=["b.png"], says=["cannot read image"])
    assert snapshot(tmp_path / "in") == before
    # Nothing half-written: a finished mask or nothing, and no temporary files.
    assert [p.name for p in (tmp_path / "out").iterdir()] in ([], ["a.png"])


# ---- fmbff train -----------------------------------------------------------------------------


def _cfg(t, content):
    path = t / "cfg.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return path


TINY = tiny_config().to_dict()

TRAIN_CASES = {
    # id: (setup(t) -> extra args (data at t/data, out t/m.safetensors), names, says)
    "data-missing": (lambda t: ["--data", t / "nodata"], ["nodata"], ["no such folder"]),
    "data-without-layout": (lambda t: ["--data", (t / "odd").mkdir() or
                                       (t / "odd" / "x.txt").write_text("x") and t / "odd"],
                            ["odd"], ["no known layout"]),
    "images-without-masks": (lambda t: [png(t / "data" / "images" / "a.png"),
                                        png(t / "data" / "masks" / "b.png", (40, 50))][:0],
                             [], ["no image has a mask"]),
    "mask-of-another-shape": (lambda t: [png(t / "data" / "images" / "a.png"),
                                         png(t / "data" / "masks" / "a.png", (30, 50))][:0],
                              ["a.png"], ["mask is"]),
    "unreadable-image": (lambda t: [dataset(t / "data"), (t / "data" / "images" / "s1.png")
                                    .write_bytes(b"junk")][:0], ["s1.png"], ["cannot read"]),
    "one-1x1-image": (lambda t: [png(t / "data" / "images" / "a.png", (1, 1, 3)),
                                 png(t / "data" / "masks" / "a.png", (1, 1))][:0],
                      ["a.png"], ["too small"]),
    "all-nan-image": (lambda t: [tif(t / "data" / "images" / "a.tif",
                                     np.full((64, 64), np.nan, np.float32)),
                                 png(t / "data" / "masks" / "a.png", (64, 64))][:0],
                      ["a.tif"], ["no finite values"]),
    "out-not-safetensors": (lambda t: ["--out", t / "m.pt"], ["m.pt"], [".safetensors"]),
    "out-exists": (lambda t: [(t / "m.safetensors").write_bytes(b"mine")][:0], ["m.safetensors"],
                   ["--overwrite"]),
    "log-exists": (lambda t: [(t / "m.log.csv").write_bytes(b"mine")][:0], ["m.log.csv"],
                   ["--overwrite"]),
    "loss-plot-exists": (lambda t: [(t / "m.loss.png").write_bytes(b"mine")][:0],
                         ["m.loss.png"], ["--overwrite"]),
    "out-under-a-file": (lambda t: ["--out", (t / "f").write_text("x") and
                                    t / "f" / "m.safetensors"], ["f"], ["not a folder"]),
    "config-missing": (lambda t: ["--config", t / "none.json"], ["none.json"], ["json"]),
    "config-not-json": (lambda t: ["--config", _cfg(t, "{oops")], ["cfg.json"], ["json"]),
    "config-a-json-list": (lambda t: ["--config", _cfg(t, [1, 2])], ["cfg.json"], ["object"]),
    "config-heads-zero": (lambda t: ["--config", _cfg(t, {**TINY, "transformer_heads": 0})],
                          ["cfg.json"], ["transformer_heads"]),
    "config-unknown-field": (lambda t: ["--config", _cfg(t, {**TINY, "layers": 3})],
                             ["cfg.json"], ["unknown"]),
    "config-string-for-a-number": (lambda t: ["--config", _cfg(t, {**TINY,
                                                                   "transformer_dim": "32"})],
                                   ["cfg.json"], ["transformer_dim"]),
    "config-dim-not-divisible": (lambda t: ["--config", _cfg(t, {**TINY, "transformer_dim": 30})],
                                 ["cfg.json"], ["divisible"]),
    "init-missing": (lambda t: ["--init", t / "none.safetensors"], ["none.safetensors"],
                     ["no model"]),
    "init-garbage": (lambda t: ["--init", (t / "g.safetensors").write_bytes(b"x") and
                                t / "g.safetensors"], ["g.safetensors"], ["not a readable"]),
    "init-malicious-pickle": (lambda t: ["--init", malicious_pt(t / "evil.pt")], ["evil.pt"],
                              ["refused"]),
    "resume-missing": (lambda t: ["--resume", "--config", _cfg(t, TINY)], ["m.resume.pt"],
                       ["not found"]),
    "resume-malicious-pickle": (lambda t: ["--resume", "--config", _cfg(t, TINY),
                                           malicious_pt(t / "m.resume.pt")][:-1],
                                ["m.resume.pt"], ["refused", "delete it"]),
    "resume-garbage": (lambda t: ["--resume", "--config", _cfg(t, TINY), (t / "m.resume.pt")
                                  .write_bytes(b"junk")][:-1], ["m.resume.pt"], ["delete it"]),
    "resume-not-a-state": (lambda t: ["--resume", "--config", _cfg(t, TINY),
                                      malicious_pt(t / "m.resume.pt", [1, 2])][:-1],
                           ["m.resume.pt"], ["delete it"]),
    "encoder-init-garbage": (lambda t: ["--config", _cfg(t, TINY), "--encoder-init",
                                        (t / "e.safetensors").write_bytes(b"x") and
                                        t / "e.safetensors"], ["e.safetensors"], ["readable"]),
    "tile-size-not-a-multiple-of-32": (lambda t: ["--config", _cfg(t, TINY), "--tile-size", "100"],
                                       [], ["multiple of 32"]),
}


@pytest.mark.parametrize("case", list(TRAIN_CASES), ids=list(TRAIN_CASES))
def test_train_refuses_before_training(case, tmp_path, capsys):
    setup, names, says = TRAIN_CASES[case]
    extra = setup(tmp_path)
    if not (tmp_path / "data").exists() and "--data" not in extra:
        dataset(tmp_path / "data")
    data = tmp_path / "data"
    if "--data" in extra:
        k = extra.index("--data")
        data, extra = extra[k + 1], extra[:k] + extra[k + 2:]
    out = [] if "--out" in extra else ["--out", tmp_path / "m.safetensors"]
    before = snapshot(tmp_path)
    rc, err = cli(["train", data, *out, "--epochs", "1", "--device", "cpu", *extra], capsys)
    assert_refused(rc, err, "train", names=names, says=says)
    assert "epochs" not in err  # refused before any training
    assert snapshot(tmp_path) == before
    assert not MARKER.exists()


TRAIN_OPTIONS = [("--epochs", "0"), ("--batch-size", "0"), ("--val-fraction", "1"),
                 ("--lr", "fast"), ("--encoder-weights", "web"), ("--device", "tpu"),
                 ("--patience", "-1")]


@pytest.mark.parametrize("option,value", TRAIN_OPTIONS,
                         ids=[f"{o}={v}" for o, v in TRAIN_OPTIONS])
def test_train_bad_option(option, value, tmp_path, capsys):
    rc, err = cli(["train", dataset(tmp_path / "data"), "--out", tmp_path / "m.safetensors",
                   option, value], capsys)
    assert_refused(rc, err, "train", names=[option])
    assert "usage: fmbff train" in err and not (tmp_path / "m.safetensors").exists()


def test_train_with_empty_masks_says_so(tmp_path, capsys):
    data = dataset(tmp_path / "data")
    for mask in (data / "masks").iterdir():
        import imageio.v3 as iio

        iio.imwrite(mask, np.zeros((64, 64), np.uint8))
    before = snapshot(tmp_path)
    rc, err = cli(["train", data, "--out", tmp_path / "m.safetensors", "--epochs", "1",
                   "--config", _cfg(tmp_path, TINY), "--device", "cpu"], capsys)
    assert_refused(rc, err, "train", says=["no lesion pixels"])
    assert snapshot(tmp_path) == {**before, "cfg.json": (tmp_path / "cfg.json").read_bytes()}


# ---- fmbff evaluate --------------------------------------------------------------------------


EVALUATE_CASES = {
    # id: (setup(t) -> extra args, names, says); data at t/data
    "data-missing": (lambda t: ["--data", t / "nodata"], ["nodata"], ["no such folder"]),
    "csv-is-a-folder": (lambda t: ["--csv", (t / "res").mkdir() or t / "res"], ["res"],
                        ["folder"]),
    "csv-exists": (lambda t: ["--csv", (t / "r.csv").write_bytes(b"mine") and t / "r.csv"],
                   ["r.csv"], ["--overwrite"]),
    "csv-is-an-input-image": (lambda t: ["--csv", t / "data" / "images" / "s0.png"],
                              ["s0.png"], ["--overwrite"]),
    "csv-under-a-file": (lambda t: ["--csv", (t / "f").write_text("x") and t / "f" / "r.csv"],
                         ["f"], ["not a folder"]),
    "model-missing": (lambda t: ["-m", t / "none.safetensors"], ["none.safetensors"],
                      ["no model"]),
    "model-garbage": (lambda t: ["-m", (t / "g.safetensors").write_bytes(b"x") and
                                 t / "g.safetensors"], ["g.safetensors"], ["not a readable"]),
    "all-nan-image": (lambda t: ["--data", tif(t / "nd" / "images" / "a.tif",
                                               np.full((64, 64), np.nan, np.float32)).parent.parent,
                                 png(t / "nd" / "masks" / "a.png", (64, 64))][:2],
                      ["a.tif"], ["no finite values"]),
    "threshold-out-of-range": (lambda t: ["--threshold", "2"], ["--threshold"], []),
}


@pytest.mark.parametrize("case", list(EVALUATE_CASES), ids=list(EVALUATE_CASES))
def test_evaluate_refuses_before_evaluating(case, tmp_path, model_file, capsys):
    setup, names, says = EVALUATE_CASES[case]
    dataset(tmp_path / "data")
    extra = setup(tmp_path)
    data = tmp_path / "data"
    if "--data" in extra:
        k = extra.index("--data")
        data, extra = extra[k + 1], extra[:k] + extra[k + 2:]
    model = [] if "-m" in extra else ["-m", model_file]
    before = snapshot(tmp_path)
    rc, err = cli(["evaluate", data, *model, "--device", "cpu", *extra], capsys)
    assert_refused(rc, err, "evaluate", names=names, says=says)
    assert "dice" not in capsys.readouterr().out.lower()  # refused before evaluating
    assert snapshot(tmp_path) == before


# ---- fmbff info, make-data, demo -------------------------------------------------------------


MISC_CASES = {
    # id: (args(t), command, names, says, alone)
    "info-unknown-encoder": (lambda t: ["info", "--encoder", "no_such_net"], "info",
                             ["no_such_net"], ["timm"], True),
    "info-size-zero": (lambda t: ["info", "--size", "0"], "info", ["--size"], [], False),
    "make-data-size-reversed": (lambda t: ["make-data", "--size", "512-256", "-o", t / "d"],
                                "make-data", ["512-256"], ["MIN-MAX"], True),
    "make-data-size-words": (lambda t: ["make-data", "--size", "big", "-o", t / "d"],
                             "make-data", ["big"], ["MIN-MAX"], True),
    "make-data-size-zero": (lambda t: ["make-data", "--size", "0", "-o", t / "d"], "make-data",
                            ["--size"], ["64 px"], True),
    "make-data-size-too-small": (lambda t: ["make-data", "--size", "16-32", "-o", t / "d"],
                                 "make-data", ["16-32"], ["64 px"], True),
    "make-data-n-zero": (lambda t: ["make-data", "-n", "0", "-o", t / "d"], "make-data",
                         ["-n"], [], False),
    "make-data-out-is-a-file": (lambda t: ["make-data", "-n", "1", "--size", "64", "-o",
                                           (t / "f").write_text("x") and t / "f"],
                                "make-data", ["f"], ["file"], True),
    "make-data-out-under-a-file": (lambda t: ["make-data", "-n", "1", "--size", "64", "-o",
                                              (t / "f").write_text("x") and t / "f" / "d"],
                                   "make-data", ["f"], ["not a folder"], True),
    "make-data-images-not-empty": (lambda t: ["make-data", "-n", "1", "--size", "64", "-o",
                                              png(t / "d" / "images" / "mine.png").parent.parent],
                                   "make-data", ["images"], ["new folder"], True),
    "make-data-unknown-look": (lambda t: ["make-data", "--look", "mri", "-o", t / "d"],
                               "make-data", ["--look"], [], False),
    "demo-missing-model": (lambda t: ["demo", "--headless", "-m", t / "none.safetensors", "-o",
                                      t / "demo"], "demo", ["none.safetensors"], ["no model"],
                           True),
    "demo-unknown-look": (lambda t: ["demo", "--headless", "--look", "mri"], "demo", ["--look"],
                          [], False),
    "no-command": (lambda t: [], "", [], [], False),
    "unknown-command": (lambda t: ["segmnet"], "", [], [], False),
}


@pytest.mark.parametrize("case", list(MISC_CASES), ids=list(MISC_CASES))
def test_info_make_data_and_demo_refuse_in_one_line(case, tmp_path, capsys):
    make, command, names, says, alone = MISC_CASES[case]
    args = make(tmp_path)
    before = snapshot(tmp_path)
    rc, err = cli(args, capsys)
    if not command:  # top-level usage errors come from argparse itself
        assert rc == 2 and "Traceback" not in err and err.strip().splitlines()[-1].startswith(
            "fmbff: error:")
    else:
        assert_refused(rc, err, command, names=names, says=says, alone=alone)
    assert snapshot(tmp_path) == before
    assert not (tmp_path / "d" / "masks").exists()


# ---- the Python API --------------------------------------------------------------------------


SEGMENTER_SETTINGS = [dict(tile_size=500), dict(tile_size=0), dict(overlap=1.0),
                      dict(overlap=-0.5), dict(batch_size=0), dict(device="tpu"),
                      dict(precision="fp8")]


@pytest.mark.parametrize("settings", SEGMENTER_SETTINGS,
                         ids=[f"{k}={v}" for s in SEGMENTER_SETTINGS for k, v in s.items()])
def test_segmenter_refuses_bad_settings(settings, model_file):
    with pytest.raises(ValueError):
        Segmenter(model_file, **settings)


def test_segmenter_names_a_missing_model(tmp_path):
    with pytest.raises(ModelLoadError, match="none.safetensors"):
        Segmenter(tmp_path / "none.safetensors")


@pytest.fixture(scope="module")
def segmenter(model_file):
    return Segmenter(model_file, device="cpu", tile_size=64)


BAD_ARRAYS = {
    "empty": (np.zeros((0, 0), np.uint8), "empty"),
    "one-dimensional": (np.zeros(40, np.uint8), "expected a 2D image"),
    "stack-of-four-dims": (np.zeros((2, 2, 40, 40), np.uint8), "expected a 2D image"),
    "five-channels": (np.zeros((40, 40, 5), np.uint8), "expected a 2D image"),
    "complex": (np.ones((40, 40), np.complex64), "pixel type"),
    "strings": (np.full((40, 40), "a"), "pixel type"),
    "objects": (np.full((40, 40), None, object), "pixel type"),
    "all-nan": (np.full((40, 40), np.nan, np.float32), "no finite values"),
    "all-inf": (np.full((40, 40), -np.inf, np.float64), "no finite values"),
}


@pytest.mark.parametrize("case", list(BAD_ARRAYS), ids=list(BAD_ARRAYS))
def test_predict_proba_refuses_bad_arrays(case, segmenter):
    image, says = BAD_ARRAYS[case]
    before = image.copy()
    with pytest.raises(ValueError, match=says):
        segmenter.predict_proba(image)
    np.testing.assert_array_equal(image, before)


@pytest.mark.parametrize("out", [np.zeros((40, 50), np.uint8), np.zeros((40, 50), bool),
                                 np.zeros((40, 50), np.int32), np.zeros((50, 40), np.float32),
                                 np.zeros((40, 50, 1), np.float32)],
                         ids=["uint8", "bool", "int32", "transposed", "extra-axis"])
def test_predict_proba_refuses_a_wrong_out_array(out, segmenter, rng):
    before = out.copy()
    with pytest.raises(ValueError, match="out"):
        segmenter.predict_proba(rng.integers(0, 255, (40, 50), dtype=np.uint8), out=out)
    np.testing.assert_array_equal(out, before)


def test_save_model_refuses_what_would_lose_a_file(tmp_path, model_file):
    net = load_model(model_file)
    with pytest.raises(ValueError, match="safetensors"):
        save_model(net, tmp_path / "m.pt")
    (tmp_path / "m.safetensors").write_bytes(b"mine")
    with pytest.raises(FileExistsError, match="m.safetensors"):
        save_model(net, tmp_path / "m.safetensors")
    (tmp_path / "f").write_text("x")
    with pytest.raises(NotADirectoryError):
        save_model(net, tmp_path / "f" / "m.safetensors")
    assert snapshot(tmp_path) == {"m.safetensors": b"mine", "f": b"x"}


CONFIG_CASES = {
    "heads-zero": dict(transformer_heads=0), "heads-negative": dict(transformer_heads=-4),
    "dim-not-divisible": dict(transformer_dim=30), "dim-fraction": dict(transformer_dim=32.5),
    "depth-a-string": dict(transformer_depth="1"), "depth-bool": dict(transformer_depth=True),
    "three-decoder-stages": dict(decoder_channels=(32, 16, 8)),
    "decoder-a-string": dict(decoder_channels="32,16,16,8"),
    "decoder-zero": dict(decoder_channels=(32, 16, 0, 8)),
    "fmcab-a-string": dict(fmcab="yes"), "dropout-one": dict(dropout=1.0),
    "mlp-ratio-zero": dict(mlp_ratio=0), "encoder-empty": dict(encoder=""),
    "encoder-weights-url": dict(encoder_weights="http://x"), "refine-convs-three": dict(refine_convs=3),
    "extra-a-list": dict(extra=[1]),
}


@pytest.mark.parametrize("case", list(CONFIG_CASES), ids=list(CONFIG_CASES))
def test_model_config_validates_every_field(case):
    field = next(iter(CONFIG_CASES[case]))
    with pytest.raises(ValueError, match=field):
        tiny_config(**CONFIG_CASES[case])


@pytest.mark.parametrize("value", [[1, 2], "text", None, {"layers": 3}],
                         ids=["a-list", "a-string", "null", "unknown-field"])
def test_model_config_from_dict_refuses_what_is_not_a_config(value):
    with pytest.raises(ValueError):
        ModelConfig.from_dict(value)


NORMALIZATION_CASES = {
    "std-zero": dict(std=(0.0, 0.5, 0.5)), "std-negative": dict(std=(-1.0, 0.5, 0.5)),
    "mean-nan": dict(mean=(float("nan"), 0.5, 0.5)), "mean-two-values": dict(mean=(0.5, 0.5)),
    "unknown-mode": dict(mode="zscore"), "low-above-high": dict(low=99.0, high=1.0),
    "fixed-empty-range": dict(mode="fixed", low=5.0, high=5.0),
    "low-nan": dict(mode="fixed", low=float("nan"), high=1.0),
    "high-infinite": dict(mode="minmax", high=float("inf")),
}


@pytest.mark.parametrize("case", list(NORMALIZATION_CASES), ids=list(NORMALIZATION_CASES))
def test_normalization_validates_every_field(case):
    with pytest.raises(ValueError):
        Normalization(**NORMALIZATION_CASES[case])


# ---- faults: disk full, read-only, interrupted -----------------------------------------------


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB tmpfs at tmp_path/disk (root only), unmounted afterwards."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    disk = tmp_path / "disk"
    disk.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)],
                          capture_output=True, text=True)
    if proc.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)


def fill(disk):
    """Fill ``disk`` up to the last byte."""
    fd = os.open(disk / "filler", os.O_WRONLY | os.O_CREAT)
    try:
        for size in (65536, 4096, 1):
            try:
                while True:
                    os.write(fd, b"\0" * size)
            except OSError:
                pass
    finally:
        os.close(fd)


def read_only(disk):
    subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)


FAULTS = {"disk-full": (fill, ["No space left", "free some space"]),
          "read-only": (read_only, ["Read-only", "write elsewhere"])}


@pytest.mark.parametrize("fault", list(FAULTS), ids=list(FAULTS))
@pytest.mark.parametrize("command", ["segment", "evaluate-csv", "make-data", "save_model"])
def test_writing_onto_a_full_or_read_only_disk(command, fault, small_disk, tmp_path,
                                               model_file, capsys):
    break_it, says = FAULTS[fault]
    (small_disk / "out").mkdir()
    dataset(tmp_path / "data")
    break_it(small_disk)
    before = snapshot(tmp_path, skip=("disk",))
    on_disk = snapshot(small_disk)
    out = small_disk / "out"
    if command == "save_model":
        with pytest.raises(OSError):
            save_model(load_model(model_file), out / "m.safetensors")
    else:
        args = {"segment": ["segment", tmp_path / "data" / "images" / "s0.png", "-m", model_file,
                            "-o", out],
                "evaluate-csv": ["evaluate", tmp_path / "data", "-m", model_file, "--csv",
                                 out / "r.csv", "--device", "cpu"],
                "make-data": ["make-data", "-n", "1", "--size", "64", "-o", out / "d"]}[command]
        rc, err = cli(args, capsys)
        assert_refused(rc, err, command.split("-csv")[0], names=[out], says=says)
    assert snapshot(tmp_path, skip=("disk",)) == before
    assert snapshot(small_disk) == on_disk  # no output, no temporary file left behind


@pytest.fixture(scope="module")
def large_job(tmp_path_factory, model_file):
    """A TIFF run as a large (zarr, chunked) job, and the uninterrupted result."""
    import zarr

    root = tmp_path_factory.mktemp("large")
    image = tif(root / "slide.tif",
                np.random.default_rng(1).integers(0, 255, (256, 384, 3), dtype=np.uint8))
    # 4 x 6 chunks of one 64 px tile each (no overlap): quick, yet long enough to interrupt.
    args = ["segment", str(image), "-m", str(model_file), "--zarr", "--chunk", "64",
            "--tile-size", "64", "--overlap", "0", "--probabilities", "--device", "cpu"]
    assert main(args + ["-o", str(root / "ref")]) == 0
    ref = {name: zarr.open_group(str(root / "ref" / name), mode="r")["0"][:]
           for name in ("slide.zarr", "slide_prob.zarr")}
    return args, ref


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["SIGINT", "SIGKILL"])
def test_interrupted_large_job_resumes_to_the_same_result(sig, large_job, tmp_path, capsys):
    import zarr

    args, ref = large_job
    out = tmp_path / "out"
    done = out / ".slide.zarr.partial" / "done"
    # The job stands still after its first chunk until the signal comes (a test-only hook), so
    # the signal always finds it running, on a fast machine as on a busy one.
    env = {**os.environ, "PYTHONUNBUFFERED": "1", HOLD_AFTER_CHUNKS: "1"}
    # A shell that starts jobs in the background hands them SIGINT ignored, and Python then
    # never turns SIGINT into KeyboardInterrupt: the child gets the default back, as a
    # terminal's Ctrl-C would find it.
    proc = subprocess.Popen([sys.executable, "-m", "napari_fmbff.cli", *args, "-o", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 120
        while not (done.is_dir() and len(list(done.iterdir())) >= 1):
            assert proc.poll() is None, proc.communicate()[1]
            assert time.monotonic() < deadline, "the large job did not start"
            time.sleep(0.01)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    n_done = len(list(done.iterdir()))
    assert n_done < 24, "finished before the signal"
    if sig == signal.SIGINT:
        assert proc.returncode == 130 and "Traceback" not in err and "--resume" in err
    else:
        assert proc.returncode == -signal.SIGKILL
    assert not (out / "slide.zarr").exists() and not (out / "slide_prob.zarr").exists()
    rc, err = cli([*args, "-o", out], capsys)  # neither --resume nor --overwrite: refused
    assert_refused(rc, err, "segment", names=[".slide.zarr.partial"], says=["--resume"])
    assert len([line for line in err.splitlines() if "--resume" in line]) == 1
    rc, _ = cli([*args, "-o", out, "--resume"], capsys)
    assert rc == 0
    for name, expected in ref.items():
        np.testing.assert_array_equal(zarr.open_group(str(out / name), mode="r")["0"][:],
                                      expected)
    assert sorted(p.name for p in out.iterdir()) == ["slide.zarr", "slide_prob.zarr"]


def test_a_malicious_resume_file_for_a_large_job_is_refused(large_job, tmp_path, capsys):
    """A job.json that is not ours: refused with its name, nothing run or replaced."""
    args, _ = large_job
    out = tmp_path / "out"
    work = out / ".slide.zarr.partial"
    (work / "done").mkdir(parents=True)
    (work / "job.json").write_text("[1, 2")
    before = snapshot(tmp_path)
    rc, err = cli([*args, "-o", out, "--resume"], capsys)
    assert_refused(rc, err, "segment", names=["job.json"], says=["--overwrite"])
    assert snapshot(tmp_path) == before


# ---- the widgets -----------------------------------------------------------------------------

needs_napari = pytest.mark.skipif(importlib.util.find_spec("napari") is None,
                                  reason="the widgets need napari")


@pytest.fixture
def notified(monkeypatch):
    seen = []
    for module in ("napari_fmbff._widgets._segment", "napari_fmbff._widgets._finetune"):
        monkeypatch.setattr(f"{module}.show_error", lambda msg: seen.append(msg))
    return seen


def _layers(viewer):
    return [(layer.name, np.asarray(layer.data).copy()) for layer in viewer.layers]


def _same_layers(viewer, before):
    now = _layers(viewer)
    assert [n for n, _ in now] == [n for n, _ in before]
    for (_, a), (_, b) in zip(now, before):
        np.testing.assert_array_equal(a, b)


WIDGET_CASES = {
    "no-image-layer": (None, "tiny", "no image layer"),
    "corrupt-model": (np.zeros((40, 50), np.uint8), "broken", "broken"),
    "all-nan-image": (np.full((40, 50), np.nan, np.float32), "tiny", "no finite values"),
}


@needs_napari
@pytest.mark.parametrize("case", list(WIDGET_CASES), ids=list(WIDGET_CASES))
def test_segment_widget_notifies_and_keeps_the_layers(case, make_napari_viewer, qtbot, notified,
                                                      models_dir, model_file):

    image, model, says = WIDGET_CASES[case]
    (models_dir / "tiny.safetensors").write_bytes(model_file.read_bytes())
    (models_dir / "broken.safetensors").write_bytes(b"not a model")
    viewer = make_napari_viewer()
    if image is not None:
        viewer.add_image(image, name="scan")
    _dock, widget = viewer.window.add_plugin_dock_widget("napari-fmbff", "Segment")
    widget.refresh_models()
    widget.model.value = model
    widget.tile_size.value = 64
    before = _layers(viewer)
    worker = widget.run()
    if worker is not None:
        qtbot.waitUntil(lambda: widget._worker is None, timeout=60_000)
    qtbot.waitUntil(lambda: bool(notified), timeout=10_000)
    assert says in notified[-1] and "Traceback" not in notified[-1]
    _same_layers(viewer, before)


@needs_napari
def test_finetune_widget_without_labels_notifies_and_keeps_the_layers(make_napari_viewer,
                                                                      notified, models_dir,
                                                                      model_file):

    (models_dir / "tiny.safetensors").write_bytes(model_file.read_bytes())
    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((64, 64), np.uint8), name="scan")
    _dock, widget = viewer.window.add_plugin_dock_widget("napari-fmbff", "Fine-tune")
    before = _layers(viewer)
    assert widget.run() is None
    assert notified and "Traceback" not in notified[-1]
    _same_layers(viewer, before)
    assert not list(models_dir.glob("*.log.csv"))


# ---- issue 21: the command line's last holes (a 2-channel training image, a broken sidecar, --
# ---- a named pipe in a data folder, FMBFF_MODELS_DIR at a file) ------------------------------


@pytest.mark.parametrize("suffix", [".tif", ".png"])
def test_train_names_an_image_with_two_channels(suffix, tmp_path, capsys):
    import imageio.v3 as iio

    data = dataset(tmp_path / "data", n=3)
    (data / "images" / "s1.png").unlink()
    two = np.random.default_rng(0).integers(0, 255, (64, 64, 2), dtype=np.uint8)
    iio.imwrite(data / "images" / f"s1{suffix}", two)
    before = snapshot(tmp_path)
    rc, err = cli(["train", data, "-o", tmp_path / "m.safetensors", "--epochs", "1",
                   "--device", "cpu"], capsys)
    assert_refused(rc, err, "train", names=[f"s1{suffix}"],
                   says=["2 channels", "give a grey, RGB or RGBA image"])
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("sidecar", ["{broken", "[1, 2]"], ids=["not-json", "not-an-object"])
def test_info_names_a_broken_sidecar_of_plain_weights(sidecar, tmp_path, capsys):
    import torch

    weights = tmp_path / "sd.pt"
    torch.save(FMBFFNet(tiny_config()).state_dict(), weights)
    (tmp_path / "sd.json").write_text(sidecar)
    rc, err = cli(["info", "-m", weights], capsys)
    assert_refused(rc, err, "info", names=[tmp_path / "sd.json"],
                   says=["repair it, or remove it"], alone=True)


def test_a_named_pipe_in_a_data_folder_is_skipped_with_a_warning(tmp_path, model_file, capsys):
    data = dataset(tmp_path / "data", n=2)
    _pipe(data / "images" / "x.png")
    rc, err = cli(["evaluate", data, "-m", model_file, "--device", "cpu"], capsys)
    assert rc == 0, err
    said = [line for line in err.splitlines() if "x.png" in line]
    assert len(said) == 1 and "skipped, not a regular file" in said[0], err
    assert said[0].startswith("fmbff: warning: ") and "named pipe" in said[0]


def test_models_dir_at_a_file_says_what_it_should_be(tmp_path, monkeypatch, capsys):
    from napari_fmbff.model.registry import unique_model_path

    (tmp_path / "models.txt").write_text("not a folder")
    monkeypatch.setenv("FMBFF_MODELS_DIR", str(tmp_path / "models.txt"))
    rc, err = cli(["info", "--list"], capsys)
    assert_refused(rc, err, "info", names=["FMBFF_MODELS_DIR", "models.txt"],
                   says=["an existing folder or one that can be created"], alone=True)
    with pytest.raises(ValueError, match="FMBFF_MODELS_DIR=.*models.txt: a file is in the way"):
        unique_model_path("tuned")
    monkeypatch.setenv("FMBFF_MODELS_DIR", str(tmp_path / "models.txt" / "sub"))
    with pytest.raises(ValueError, match="an existing folder or one that can be created"):
        unique_model_path("tuned")
    assert (tmp_path / "models.txt").read_text() == "not a folder"


# ---- issue 21: segment's inputs (inference / jobs) --------------------------------------------


@pytest.mark.parametrize("layout", [dict(metadata={"axes": "CYX"}),
                                    dict(photometric="minisblack", planarconfig="separate")],
                         ids=["CYX", "planar-samples"])
def test_segment_refuses_a_two_channel_tiff_stored_channels_first(layout, tmp_path, model_file,
                                                                  capsys):
    source = tmp_path / "in" / "two.tif"
    source.parent.mkdir()
    tifffile.imwrite(source, np.random.default_rng(0).integers(0, 255, (2, 40, 50), np.uint8),
                     **layout)
    before = snapshot(tmp_path / "in")
    rc, err = cli(["segment", source, "-m", model_file, "-o", tmp_path / "out"], capsys)
    assert_refused(rc, err, "segment", names=[source],
                   says=["2 channels stored first", "save one channel"])
    assert snapshot(tmp_path / "in") == before
    assert not list((tmp_path / "out").glob("two*"))


def test_segmenter_predict_proba_takes_a_nested_list(segmenter):
    nested = [[1, 2, 3], [4, 5, 6]]
    prob = segmenter.predict_proba(nested)
    assert prob.shape == (2, 3) and prob.dtype == np.float32
    np.testing.assert_array_equal(prob, segmenter.predict_proba(np.asarray(nested)))
    np.testing.assert_array_equal(segmenter.segment(nested), segmenter.segment(np.asarray(nested)))


def test_segmenter_refuses_a_ragged_list_in_one_line(segmenter):
    with pytest.raises(ValueError, match="cannot make an image of this list") as err:
        segmenter.predict_proba([[1, 2], [3]])
    assert "\n" not in str(err.value)


# ---- issue 22: prompts and review in the Segment widget ------------------------------------
# A bad box or click, prompts on a 3D display, review of a 2D image or without a whole-stack
# result: one notification each, and no layer changes (the prompt layers hold what the user
# drew; nothing else is written, and no labels layer is made).


def _rect(corners, z=None):
    (y0, x0), (y1, x1) = corners
    square = [[y0, x0], [y0, x1], [y1, x1], [y1, x0]]
    return np.array([([z] if z is not None else []) + v for v in square], float)


PROMPT_CASES = {  # image shape, "box" or "click", its data, what the line says
    "box-outside": ((40, 50), "box", _rect(((5, 60), (20, 80))), "outside the 50 x 40 image"),
    "box-zero-area": ((40, 50), "box", _rect(((5, 10), (5, 30))), "zero area"),
    "box-beyond-the-stack": ((3, 40, 50), "box", _rect(((5, 5), (20, 20)), z=7),
                             "outside the image (slice 7"),
    "click-outside": ((40, 50), "click", [20, 70], "outside the 50 x 40 image"),
    "click-beyond-the-stack": ((3, 40, 50), "click", [-2, 20, 20], "outside the image"),
    "box-on-a-3d-display": ((3, 40, 50), "box", _rect(((5, 5), (20, 20)), z=1),
                            "switch to 2D: prompts are answered on the displayed slice"),
    "click-on-a-3d-display": ((3, 40, 50), "click", [1, 20, 20], "switch to 2D"),
}


def _not_prompts(viewer):
    return [(name, data) for name, data in _layers(viewer)
            if not name.endswith((" prompts", " clicks"))]


@needs_napari
@pytest.mark.parametrize("case", list(PROMPT_CASES), ids=list(PROMPT_CASES))
def test_bad_prompts_notify_once_and_change_nothing(case, make_napari_viewer, prompt_notified):

    shape, kind, data, says = PROMPT_CASES[case]
    viewer = make_napari_viewer()
    viewer.add_image(np.random.default_rng(0).integers(0, 255, shape, np.uint8), name="scan")
    _dock, widget = viewer.window.add_plugin_dock_widget("napari-fmbff", "Segment")
    boxes, clicks = widget.prompts.add_prompt_layers()
    if "3d-display" in case:
        viewer.dims.ndisplay = 3
    before = _not_prompts(viewer)
    if kind == "box":
        boxes.add_rectangles(data)
    else:
        clicks.add(data)
    assert len(prompt_notified) == 1, prompt_notified
    assert says in prompt_notified[0] and prompt_notified[0].startswith("napari-fmbff: ")
    assert "Traceback" not in prompt_notified[0] and "\n" not in prompt_notified[0]
    after = _not_prompts(viewer)
    assert [n for n, _ in after] == [n for n, _ in before]
    for (_, a), (_, b) in zip(after, before):
        np.testing.assert_array_equal(a, b)


@needs_napari
@pytest.mark.parametrize("case", ["2d-image", "current-slice-only", "never-segmented"])
def test_review_without_a_ranked_stack_notifies_and_changes_nothing(
        case, make_napari_viewer, qtbot, prompt_notified, models_dir, model_file):

    (models_dir / "tiny.safetensors").write_bytes(model_file.read_bytes())
    viewer = make_napari_viewer()
    shape = (40, 50) if case == "2d-image" else (3, 40, 50)
    viewer.add_image(np.random.default_rng(0).integers(0, 255, shape, np.uint8), name="scan")
    _dock, widget = viewer.window.add_plugin_dock_widget("napari-fmbff", "Segment")
    if case == "current-slice-only":
        widget.refresh_models()
        widget.model.value, widget.tile_size.value = "tiny", 64
        widget.run()
        qtbot.waitUntil(lambda: widget._worker is None, timeout=60_000)
        assert "whole stack" in widget.review.uncertainty.value
    before, step = _layers(viewer), viewer.dims.current_step
    assert widget.review.next_slice_to_check() is None
    said = {"2d-image": "2D image", "current-slice-only": "run Segment on the whole stack first",
            "never-segmented": "run Segment on the whole stack first"}[case]
    assert len(prompt_notified) == 1 and said in prompt_notified[0]
    if case != "current-slice-only":  # a stack with a result may be accepted slice by slice
        assert widget.review.accept_slice() is None
        assert len(prompt_notified) == 2 and "\n" not in prompt_notified[1]
    _same_layers(viewer, before)
    assert viewer.dims.current_step == step


# ---- issue 22: Propagate through the volume (the Fine-tune dock) ------------------------------
# Each refusal is one notification before anything runs: no layer changes, no model is saved.

def _propagate_viewer(viewer, case):
    """A viewer set up for one bad Propagate: the image, and Segment's output layer (made as
    the Segment widget makes it) with the user's edits the case needs."""
    from napari_fmbff._widgets._common import IMAGE_TAG, OUTPUT_TAG
    from napari_fmbff._widgets._proposal import proposal_of

    shape = {"one-slice": (1, 32, 32), "2d-image": (32, 32)}.get(case, (4, 32, 32))
    image = viewer.add_image(np.full(shape, 50, np.uint8), name="scan")
    if case in ("no-output", "2d-image"):
        return image
    out = viewer.add_labels(np.zeros(shape, np.int32), name="scan fmbff",
                            metadata={OUTPUT_TAG: "labels", IMAGE_TAG: "scan"})
    edited = proposal_of(out).edited
    if case == "every-slice-corrected":
        edited[:] = True
    elif case in ("one-slice", "wrong-shape"):
        edited[0] = True
    if case == "wrong-shape":
        viewer.add_labels(np.ones((4, 16, 16), np.int32), name="mine")
    return image


PROPAGATE_CASES = {
    "no-output": "no Segment output layer",
    "no-slice-corrected": "not corrected or accepted",
    "every-slice-corrected": "every one of the 4 slices",
    "wrong-shape": "have shape (4, 16, 16)",
    "one-slice": "one slice has nothing to propagate",
    "2d-image": "needs a stack",
}


@needs_napari
@pytest.mark.parametrize("case", list(PROPAGATE_CASES), ids=list(PROPAGATE_CASES))
def test_propagate_widget_refuses_in_one_line_and_changes_nothing(case, make_napari_viewer,
                                                                   notified, models_dir,
                                                                   model_file):

    (models_dir / "tiny.safetensors").write_bytes(model_file.read_bytes())
    viewer = make_napari_viewer()
    image = _propagate_viewer(viewer, case)
    _dock, widget = viewer.window.add_plugin_dock_widget("napari-fmbff", "Fine-tune")
    widget.image.value = image
    widget.model.value = "tiny"
    if case == "wrong-shape":
        widget.labels_layer.value = viewer.layers["mine"]
    before, files = _layers(viewer), sorted(models_dir.iterdir())
    assert widget.propagate() is None
    assert len(notified) == 1 and PROPAGATE_CASES[case] in notified[0], notified
    assert "\n" not in notified[0] and "Traceback" not in notified[0]
    _same_layers(viewer, before)
    assert sorted(models_dir.iterdir()) == files


# ---- issue 23: saving Labels (NIfTI / DICOM SEG writers) -------------------------------------
# Each refusal is one line raised by the writer (napari's save dialog shows it as a
# notification); nothing is written.

def _writer_case(viewer, case, tmp_path):
    """(the labels layer to save, the file to save it as) for one bad save."""
    from test_writers import NIB_DATA, dicom_series

    if case == "no-geometry":
        viewer.add_image(np.zeros((3, 32, 32), np.uint8), name="plain")
        return viewer.add_labels(np.ones((3, 32, 32), np.int32), name="x"), "x.nii.gz"
    if case == "seg-of-nifti":
        image, = viewer.open(str(NIB_DATA / "anatomical.nii"), plugin="napari-fmbff")
        shape = image.data.shape
        return viewer.add_labels(np.ones(shape, np.int32), name="x", scale=image.scale), "x.dcm"
    image, = viewer.open(str(dicom_series(tmp_path / "series") / "0.dcm"), plugin="napari-fmbff")
    if case == "other-shape-own-scan":  # a layer that carries the scan's record (as Segment's)
        return viewer.add_labels(np.ones((3, 64, 64), np.int32), name="x", metadata={
            "napari_fmbff_source": image.metadata["napari_fmbff_source"]}), "x.nii.gz"
    return viewer.add_labels(np.ones((3, 64, 64), np.int32), name="x"), "x.dcm"


WRITER_CASES = {
    "no-geometry": "labels 'x' have no scan geometry: they were not made on a DICOM / NIfTI "
                   "image opened with napari-fmbff",
    "seg-of-nifti": "is a NIfTI file, not a DICOM series",
    "other-shape-own-scan": "have shape (3, 64, 64) but the scan",
    "other-shape": "have shape (3, 64, 64), which is no scan's shape",
}


@needs_napari
@pytest.mark.parametrize("case", list(WRITER_CASES), ids=list(WRITER_CASES))
def test_saving_labels_refuses_in_one_line_and_writes_nothing(case, make_napari_viewer,
                                                               tmp_path):
    from napari_fmbff._widgets._writers import NotSaved

    viewer = make_napari_viewer()
    labels, name = _writer_case(viewer, case, tmp_path)
    viewer.layers.selection.active = labels
    out = tmp_path / "out"
    with pytest.raises(NotSaved) as err:
        viewer.layers.save(str(out / name), selected=True)
    assert WRITER_CASES[case] in str(err.value) and "\n" not in str(err.value)
    assert not out.exists() or list(out.iterdir()) == []


# ---- issue 23: RTSTRUCT in (data/rtstruct.py, the reader, find_pairs) -------------------------
# An RTSTRUCT whose series is missing, one drawn off the series' slice planes, one of several
# ROIs without --roi (or with a --roi that names none): one line naming the RTSTRUCT, for
# fmbff train / evaluate (exit 2, the data folder as it was) and for napari (no layer).

def _rtstruct_case(root, case):
    """root/patient7/CT/ (a 6-slice series, 2.5 mm apart) and root/patient7/RS.dcm (rt-utils),
    broken as ``case`` says. Returns the RTSTRUCT."""
    pytest.importorskip("rt_utils")
    import shutil

    import pydicom

    from dicom_files import ct_series, write_rtstruct

    series = ct_series(Path(root) / "patient7" / "CT")
    mask = np.zeros((6, 128, 128), bool)
    mask[2:4, 40:70, 40:80] = True
    rois = {"GTV": mask, **({"Body": np.ones_like(mask)} if case != "off-plane" else {})}
    rs = write_rtstruct(series, Path(root) / "patient7" / "RS.dcm", rois)
    if case == "series-missing":
        shutil.rmtree(series)
    if case == "off-plane":  # 20 mm up: past the series' last slice (a contour between two
        # slices is on the nearer one, as other readers take it; off means over half a slice)
        ds = pydicom.dcmread(rs)
        for contour in ds.ROIContourSequence[0].ContourSequence:
            xyz = np.asarray(contour.ContourData, float).reshape(-1, 3)
            xyz[:, 2] += 20.0
            contour.ContourData = [f"{v:.4f}" for v in xyz.ravel()]
        ds.save_as(rs)
    return rs


RTSTRUCT_CASES = {
    "series-missing": ((), ["SeriesInstanceUID", "put the series' .dcm files beside it"]),
    "off-plane": (("--roi", "GTV"), ["'GTV'", "12.5 mm from the nearest slice",
                                     "export the RTSTRUCT against this series"]),
    "no-roi-given": ((), ["2 ROIs ('GTV', 'Body')", "--roi NAME"]),
    "roi-names-none": (("--roi", "PTV*"), ["no ROI matches --roi PTV*", "'Body'"]),
}


@pytest.mark.parametrize("command", ["train", "evaluate"])
@pytest.mark.parametrize("case", list(RTSTRUCT_CASES), ids=list(RTSTRUCT_CASES))
def test_an_rtstruct_that_cannot_be_a_mask_is_one_line(case, command, tmp_path, model_file,
                                                       capsys):
    rs = _rtstruct_case(tmp_path / "data", case.replace("no-roi-given", "").replace(
        "roi-names-none", ""))
    options, says = RTSTRUCT_CASES[case]
    before = snapshot(tmp_path / "data")
    rest = (["-o", tmp_path / "m.safetensors", "--epochs", "1", "--device", "cpu"]
            if command == "train" else ["-m", model_file, "--device", "cpu"])
    rc, err = cli([command, tmp_path / "data", *options, *rest], capsys)
    assert_refused(rc, err, command, names=[rs], says=says)
    assert snapshot(tmp_path / "data") == before
    assert not (tmp_path / "m.safetensors").exists()


@needs_napari
def test_napari_refuses_an_rtstruct_whose_series_is_missing_in_one_line(make_napari_viewer,
                                                                       tmp_path):
    rs = _rtstruct_case(tmp_path, "series-missing")
    viewer = make_napari_viewer()
    with pytest.raises(Exception) as caught:  # napari shows a reader's error as a notification
        viewer.open(str(rs), plugin="napari-fmbff")
    chain, err = [], caught.value
    while err is not None:
        chain.append(str(err))
        err = err.__cause__
    ours = [text for text in chain if "put the series' .dcm files beside it" in text]
    assert ours and str(rs) in ours[0] and "\n" not in ours[0], chain
    assert len(viewer.layers) == 0


# ---- issue 23: the corrections store (data/store.py, fmbff train STORE, propagate --store) ----


def _store_scan(path, seed=0, shape=(4, 64, 64)):
    """A NIfTI volume with its partial labels (slice 1), for fmbff propagate --store."""
    import nibabel as nib

    rng = np.random.default_rng(seed)
    volume = rng.integers(0, 200, shape).astype(np.int16)
    labels = np.zeros(shape, np.uint8)
    labels[1, 20:40, 20:40] = 1
    path.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(volume.transpose(2, 1, 0), np.eye(4)), str(path / "ct.nii.gz"))
    nib.save(nib.Nifti1Image(labels.transpose(2, 1, 0), np.eye(4)), str(path / "seg.nii.gz"))
    return volume, labels


def _propagate_into(store, tmp_path, model_file):
    _store_scan(tmp_path / "in")
    return ["propagate", tmp_path / "in" / "ct.nii.gz", "--labels", tmp_path / "in" / "seg.nii.gz",
            "-o", tmp_path / "out", "--model", model_file, "--epochs", "1", "--store", store]


def _a_store_with_one_case(folder):
    from napari_fmbff.data.store import open_store

    store = open_store(folder)
    volume, labels = _store_scan(folder.parent / "first", seed=3)
    store.add_case(volume, labels, [1], source="first")
    return store


def test_store_folder_that_is_a_file_or_holds_other_files_is_one_line(tmp_path, model_file,
                                                                       capsys):
    (tmp_path / "store.txt").write_text("notes")
    rc, err = cli(_propagate_into(tmp_path / "store.txt", tmp_path, model_file), capsys)
    assert_refused(rc, err, "propagate", names=["store.txt"], says=["a file is in the way"])
    assert (tmp_path / "store.txt").read_text() == "notes"
    other = tmp_path / "papers"
    other.mkdir()
    (other / "thesis.pdf").write_bytes(b"%PDF")
    rc, err = cli(_propagate_into(other, tmp_path, model_file), capsys)
    assert_refused(rc, err, "propagate", names=["papers", "thesis.pdf"],
                   says=["not a corrections store", "empty folder"])
    assert sorted(p.name for p in other.iterdir()) == ["thesis.pdf"]
    assert not (tmp_path / "out").exists()


def test_store_on_a_full_disk_is_one_line_and_left_as_it_was(tmp_path, model_file, capsys,
                                                             monkeypatch):
    import errno

    import nibabel as nib

    store = _a_store_with_one_case(tmp_path / "store")
    before = snapshot(store.path)

    def full(*_args, **_kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    args = _propagate_into(store.path, tmp_path, model_file)
    monkeypatch.setattr(nib, "save", full)
    rc, err = cli(args, capsys)
    assert_refused(rc, err, "propagate", names=[store.path],
                   says=["disk is full", "left as it was"])
    assert snapshot(store.path) == before


def test_store_on_a_read_only_disk_is_one_line(small_disk, tmp_path, model_file, capsys):
    store = _a_store_with_one_case(small_disk / "store")
    before = snapshot(store.path)
    read_only(small_disk)
    rc, err = cli(_propagate_into(store.path, tmp_path, model_file), capsys)
    assert_refused(rc, err, "propagate", names=[store.path],
                   says=["read-only", "store folder you can write to"])
    assert snapshot(store.path) == before


def test_same_uid_different_shapes_is_one_line(tmp_path):
    from napari_fmbff.data.store import StoreError, open_store

    store = open_store(tmp_path / "store")
    meta = {"format": "dicom", "series_uid": "1.2.840.1", "n_slices": 4}
    store.add_case(np.zeros((4, 32, 32), np.int16), np.ones((4, 32, 32), np.uint8), [0],
                   source_meta=meta)
    before = snapshot(store.path)
    with pytest.raises(StoreError) as info:
        store.add_case(np.zeros((4, 32, 40), np.int16), np.ones((4, 32, 40), np.uint8), [0],
                       source_meta=meta)
    text = str(info.value)
    assert "\n" not in text and "1.2.840.1" in text and "(4, 32, 32)" in text
    assert "(4, 32, 40)" in text and "remove case" in text
    assert snapshot(store.path) == before


def test_removing_the_last_case_then_training_on_the_empty_store(tmp_path, model_file, capsys):
    store = _a_store_with_one_case(tmp_path / "store")
    (case,) = store.cases()
    store.remove_case(case.id)
    assert store.cases() == [] and "0 cases" in store.summary()
    rc, err = cli(["train", store.path, "--out", tmp_path / "m.safetensors", "--init",
                   model_file, "--epochs", "1", "--device", "cpu"], capsys)
    assert_refused(rc, err, "train", names=[store.path], says=["no corrected slice yet"])
    assert not (tmp_path / "m.safetensors").exists()
