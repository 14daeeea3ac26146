"""A prompt's answer merged into a labels plane, the network's prompt path on one plane, and
the one holder of the loaded prompt engines."""

import numpy as np
import pytest

from conftest import tiny_config
from napari_fmbff.inference.prompting import add_object, answer_click, network_mask


def test_add_object_writes_only_background_and_never_protected_pixels():
    labels = np.zeros((6, 6), np.int32)
    labels[0, :] = 2
    mask = np.zeros((6, 6), bool)
    mask[:3, :3] = True
    protected = np.zeros((6, 6), bool)
    protected[2, 2] = True
    out = add_object(labels, mask, 5, protected)
    assert (out[0] == 2).all()  # another object keeps its pixels
    assert (out[1:3, :3][~protected[1:3, :3]] == 5).all() and out[2, 2] == 0
    assert labels.max() == 2  # the input is not changed


def test_clicks_grow_make_and_cut():
    labels = np.zeros((8, 8), np.int32)
    labels[2:4, 2:4] = 3
    region = np.zeros((8, 8), bool)
    region[2:6, 2:6] = True
    grown, label = answer_click(labels, region, 2, 2, True, 9)
    assert label == 3 and (grown[region] == 3).all()
    made, label = answer_click(labels, region, 5.2, 4.8, True, 9)  # pixel (5, 5): background
    assert label == 9 and (made[region & (labels == 0)] == 9).all() and (made[2:4, 2:4] == 3).all()
    protected = np.zeros((8, 8), bool)
    protected[3, 3] = True
    cut, label = answer_click(grown, region, 3, 3, False, 9, protected)
    assert label == 3 and cut[3, 3] == 3 and cut.sum() == 3
    same, label = answer_click(labels, region, 7, 7, False, 9)
    assert label == 0 and np.array_equal(same, labels)


def test_network_mask_answers_with_a_promptable_network_and_refuses_one_without():
    import torch

    from napari_fmbff import FMBFFNet

    torch.manual_seed(0)
    plane = np.zeros((40, 50), np.uint8)
    plane[10:30, 15:35] = 200
    with pytest.raises(ValueError, match="no trained prompt path"):
        network_mask(FMBFFNet(tiny_config()).eval(), plane, box=(15, 10, 34, 29))
    net = FMBFFNet(tiny_config(prompts=True)).eval()
    with torch.no_grad():  # a prompt path that says "foreground inside the box"
        net.prompt_conv.weight[:, 0] = 5.0
    out = network_mask(net, plane, box=(15, 10, 34, 29))
    assert out.shape == (40, 50) and out.dtype == bool
    out = network_mask(net, plane, click=(25, 20, True))
    assert out.shape == (40, 50)
    with pytest.raises(ValueError, match="outside"):
        network_mask(net, plane, click=(80, 20, True))


def test_the_network_engine_loads_a_model_file_once_and_again_when_it_changes(tmp_path,
                                                                               monkeypatch):
    import os

    import napari_fmbff.model.checkpoint as checkpoint
    from napari_fmbff import FMBFFNet, save_model
    from napari_fmbff.inference import prompt_service, prompting

    path = tmp_path / "promptable.safetensors"
    save_model(FMBFFNet(tiny_config(prompts=True)).eval(), path, metadata={"tile_size": 64})
    loads = []
    real = checkpoint.load_model
    monkeypatch.setattr(checkpoint, "load_model", lambda p, *a: loads.append(p) or real(p, *a))
    monkeypatch.setattr(prompt_service, "engines", prompt_service.LoadedEngines())
    plane = np.zeros((40, 50), np.uint8)
    plane[10:30, 15:35] = 200
    network_mask(str(path), plane, box=(15, 10, 34, 29))
    network_mask(str(path), plane, click=(25, 20, True))
    assert len(loads) == 1  # every further box or click: the kept network
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # the file was replaced
    network_mask(str(path), plane, box=(15, 10, 34, 29))
    assert len(loads) == 2
    assert prompting.has_prompt_path(str(path)) and not prompting.has_prompt_path(None)


def test_loaded_engines_keep_the_last_used_and_reload_a_new_version():
    from napari_fmbff.inference.prompt_service import LoadedEngines

    kept, loads = LoadedEngines(size=2), []

    def load(name):
        return lambda: loads.append(name) or object()

    a = kept.get("network", "a", "cpu", load("a"), version=1)
    assert kept.get("network", "a", "cpu", load("a"), version=1) is a and loads == ["a"]
    assert kept.holds("network", "a", "cpu", 1) and not kept.holds("network", "a", "cuda", 1)
    kept.get("litemedsam", None, "cpu", load("sam"))
    kept.get("network", "a", "cpu", load("a"), version=1)  # "a" used last: "sam" goes next
    kept.get("network", "b", "cpu", load("b"), version=1)
    assert len(kept) == 2 and not kept.holds("litemedsam", None, "cpu")
    assert kept.get("network", "a", "cpu", load("a"), version=2) is not a  # a new file version
    assert loads == ["a", "sam", "b", "a"] and len(kept) == 2


def test_loaded_engines_load_a_key_once_when_two_threads_ask_at_once():
    import threading
    import time

    from napari_fmbff.inference.prompt_service import LoadedEngines

    kept, loads, got = LoadedEngines(), [], []

    def slow():
        loads.append(1)
        time.sleep(0.2)
        return object()

    threads = [threading.Thread(target=lambda: got.append(
        kept.get("litemedsam", None, "cpu", slow))) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(loads) == 1 and got[0] is got[1]


def test_prompt_mask_answers_by_the_engine_named():
    from napari_fmbff.inference.box import otsu_at_click, otsu_in_box
    from napari_fmbff.inference.prompting import prompt_mask

    plane = np.zeros((40, 50), np.uint8)
    plane[10:30, 15:35] = 200
    box = (12, 8, 37, 32)
    np.testing.assert_array_equal(prompt_mask("otsu", plane, box=box), otsu_in_box(plane, box))
    clicked = prompt_mask("litemedsam", plane, click=(25, 20, True))  # clicks: Otsu's
    np.testing.assert_array_equal(clicked, otsu_at_click(plane, 25, 20))
