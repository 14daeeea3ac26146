"""The generator drivers every long job goes through: ``drain`` and ``relay``."""

import pytest

from napari_fmbff.inference.runtime import drain, relay


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
