"""Propagate from the Plugins-menu dock leaves a CPU to the napari window's own threads.

The window (Qt's main thread, the canvas, software OpenGL) runs in the same process as the
worker, so the free-CPU count read from the system does not see it; with every core given to
torch, each time the window ran, torch's threads waited for the one it displaced. The count
is checked, not the time (no timed tests; benchmarks/widget_vs_cli.py measures it).
"""

import threading

import pytest

pytest.importorskip("napari")

from test_propagate_widget import (  # noqa: E402
    WAIT_MS,
    corrected_viewer,
    docked_propagate_widget,
)


def test_propagate_worker_keeps_a_cpu_free_for_the_window(make_napari_viewer, qtbot,
                                                         tiny_model, monkeypatch):
    import torch

    from napari_fmbff.inference import runtime

    viewer, _seg, _labels = corrected_viewer(make_napari_viewer, qtbot)
    tune = docked_propagate_widget(viewer)
    # An idle 8-CPU machine, and torch's thread setting recorded rather than applied.
    monkeypatch.setattr(runtime, "_cpus_busy_elsewhere", lambda: 0.0)
    monkeypatch.setattr(runtime.os, "sched_getaffinity", lambda pid: set(range(8)),
                        raising=False)
    chosen = []
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    monkeypatch.setattr(torch, "set_num_threads",
                        lambda n: chosen.append((threading.current_thread().name, n)))
    tune.propagate_button.native.click()
    assert tune._worker is not None
    qtbot.waitUntil(lambda: tune._worker is None, timeout=WAIT_MS)
    assert "Propagated" in tune.status.value
    assert chosen and all(n == 7 for _, n in chosen), chosen
    assert threading.current_thread().name not in {name for name, _ in chosen}
