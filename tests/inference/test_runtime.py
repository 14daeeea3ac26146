"""Where a network runs: torch's CPU threads fitted to the free CPUs."""

import pytest


def test_cpu_threads_follow_the_free_cpus_or_the_setting(monkeypatch):
    import torch

    from napari_fmbff.inference import runtime

    before = torch.get_num_threads()
    try:
        monkeypatch.setattr(runtime, "_cpus_busy_elsewhere", lambda: 1.2)
        monkeypatch.setattr(runtime.os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
        assert runtime.fit_cpu_threads() == 1 and torch.get_num_threads() == 1
        monkeypatch.setattr(runtime, "_cpus_busy_elsewhere", lambda: 0.1)
        assert runtime.fit_cpu_threads() == 2
        monkeypatch.setenv(runtime.THREADS_ENV, "3")
        assert runtime.fit_cpu_threads() == 3
        monkeypatch.setenv(runtime.THREADS_ENV, "many")
        with pytest.raises(ValueError, match="FMBFF_THREADS='many'"):
            runtime.fit_cpu_threads()
        monkeypatch.delenv(runtime.THREADS_ENV)
        monkeypatch.setattr(runtime, "_fixed_threads", 1)
        assert runtime.fit_cpu_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_a_widget_worker_keeps_a_cpu_free_for_the_window(monkeypatch):
    import threading

    import torch

    from napari_fmbff.inference import runtime

    before = torch.get_num_threads()
    monkeypatch.setattr(runtime, "_cpus_busy_elsewhere", lambda: 0.0)
    monkeypatch.setattr(runtime.os, "sched_getaffinity", lambda pid: set(range(8)),
                        raising=False)
    seen = {}

    def worker():
        with runtime.cpus_kept_free(1):
            seen["kept"] = runtime.fit_cpu_threads()
        seen["after"] = runtime.fit_cpu_threads()

    try:
        thread = threading.Thread(target=worker)
        thread.start()
        with runtime.cpus_kept_free(1):
            thread.join()
            monkeypatch.setattr(runtime.os, "sched_getaffinity", lambda pid: {0, 1},
                                raising=False)
            assert runtime.fit_cpu_threads() == 2  # 2 CPUs: both still used
        assert seen == {"kept": 7, "after": 8}
        monkeypatch.setattr(runtime.os, "sched_getaffinity", lambda pid: set(range(8)),
                            raising=False)
        assert runtime.fit_cpu_threads() == 8  # another thread's setting is its own
        monkeypatch.setattr(runtime, "_fixed_threads", 5)
        with runtime.cpus_kept_free(1):
            assert runtime.fit_cpu_threads() == 5  # a fixed number stays
    finally:
        torch.set_num_threads(before)


def test_busy_cpus_are_read_from_the_system():
    from napari_fmbff.inference import runtime

    busy = runtime._cpus_busy_elsewhere(0.05)
    assert busy is None or 0 <= busy <= (runtime.os.cpu_count() or 1)
