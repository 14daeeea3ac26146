"""Long jobs as generators: the one progress event, the one cancel token, and the drivers
every long job goes through (``drain``, ``relay``, ``until_cancelled``)."""

import pytest

from napari_fmbff.inference.progress import Cancel, Progress, drain, relay, until_cancelled


def job(n, log):
    """A job as they all are here: yields progress, returns its result, cleans up when closed."""
    try:
        for k in range(n):
            yield k
        return "done"
    finally:
        log.append("closed")


def test_drain_returns_the_result_and_passes_every_item_on():
    seen, log = [], []
    assert drain(job(3, log), seen.append) == "done"
    assert seen == [0, 1, 2] and log == ["closed"]
    assert drain(job(2, log)) == "done"


def test_relay_changes_each_item_and_returns_the_result():
    log = []

    def outer():
        result = yield from relay(job(3, log), lambda k: ("step", k))
        return result.upper()

    seen = []
    assert drain(outer(), seen.append) == "DONE"
    assert seen == [("step", 0), ("step", 1), ("step", 2)]


def test_closing_a_relay_closes_what_it_relays():
    log = []
    gen = relay(job(5, log), str)
    assert next(gen) == "0"
    gen.close()
    assert log == ["closed"]


def test_errors_pass_through_a_relay():
    def broken():
        yield 1
        raise KeyError("lost")

    with pytest.raises(KeyError, match="lost"):
        drain(relay(broken(), str))


def test_until_cancelled_passes_a_job_on_and_closes_it_once_cancelled():
    log, stop = [], Cancel()
    assert drain(until_cancelled(job(3, log), stop)) == "done"
    seen = []
    gen = until_cancelled(job(5, log), stop)
    for item in gen:
        seen.append(item)
        if item == 1:
            stop.set()
    assert seen == [0, 1] and log == ["closed", "closed"]
    stop.clear()
    assert not stop.is_set()


def test_a_cancelled_job_returns_none_and_its_next_item_is_not_passed_on():
    stop, log = Cancel(), []

    def steps():
        try:
            yield 0
            stop.set()  # cancelled while this step runs (from another thread, say)
            yield 1
            return "done"
        finally:
            log.append("closed")

    seen = []
    assert drain(until_cancelled(steps(), stop), seen.append) is None
    assert seen == [0] and log == ["closed"]


def test_a_cancel_after_a_deadline_sets_itself():
    assert Cancel.after(0).is_set()
    assert not Cancel.after(3600).is_set()
    assert not Cancel().is_set()


def test_progress_counts_the_step_under_way_through_its_detail():
    tiles = Progress("tiles", 4, 16)
    assert tiles.fraction == 0.25
    slices = Progress("slices", 1, 2, tiles)
    assert slices.fraction == (1 + 0.25) / 2
    assert Progress("train", 3, 10, detail="an event").fraction == 0.3
    assert Progress("slices", 0, 0).fraction == 1.0
