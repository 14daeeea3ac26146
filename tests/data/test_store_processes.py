"""The corrections store shared by processes (issue 28, item 4): two writers at once both land
whole; a live writer's pending case is never removed by another; a dead writer's is; a case
whose files are gone is dropped on open with one warning, never a dead end."""

import json
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest

nib = pytest.importorskip("nibabel")

from store_writer import case_volume  # noqa: E402

from napari_fmbff.data.store import StoreWarning, open_store  # noqa: E402

WRITER = Path(__file__).with_name("store_writer.py")


def writer(store, seed, name, *steps):
    """A second process running ``store_writer.py``'s steps on ``store``."""
    return subprocess.Popen([sys.executable, str(WRITER), str(store), str(seed), name,
                             *map(str, steps)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def finish(proc, timeout=240):
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def wait_for(path: Path, proc, timeout=180.0) -> None:
    end = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < end, f"no {path.name} from the writer"
        time.sleep(0.05)


def image_files(store_path: Path) -> list[str]:
    return sorted(p.name for p in (store_path / "imagesTr").iterdir())


def assert_whole(store, names):
    """The store holds exactly ``names``' cases, each with its files, nothing pending."""
    assert sorted(c.name for c in store.cases()) == sorted(names)
    assert store.record.pending == [] and store.repairs == []
    assert image_files(store.path) == sorted(f"{c.id}_0000.nii.gz" for c in store.cases())
    for case in store.cases():
        _, labels, _ = store.read_case(case.id)
        assert labels[1].any() and case.slices == [1]
    meta = json.loads((store.path / "dataset.json").read_text())
    assert meta["numTraining"] == len(names)


def test_two_writers_at_once_both_land_whole(tmp_path):
    """Both open the store, both stage, both commit: the record each commits is the one on
    disk under the lock, not the one it read when it opened."""
    store, s = tmp_path / "store", tmp_path
    a = writer(store, 1, "p1", "open", f"signal:{s / 'a-open'}", f"wait:{s / 'b-open'}",
               "stage", f"signal:{s / 'a-staged'}", f"wait:{s / 'b-staged'}", "commit")
    b = writer(store, 2, "p2", "open", f"signal:{s / 'b-open'}", f"wait:{s / 'a-open'}",
               "stage", f"signal:{s / 'b-staged'}", f"wait:{s / 'a-staged'}", "commit")
    for proc in (a, b):
        rc, _out, err = finish(proc)
        assert rc == 0, err
    assert_whole(open_store(store), ["p1", "p2"])


def test_a_live_writers_pending_case_is_never_removed_by_another(tmp_path):
    store, go = tmp_path / "store", tmp_path / "go"
    a = writer(store, 1, "p1", "open", "stage", f"signal:{tmp_path / 'staged'}", f"wait:{go}",
               "commit")
    wait_for(tmp_path / "staged", a)
    here = open_store(store)
    assert here.cases() == [] and len(here.record.pending) == 1
    staged = image_files(store)
    here.add_case(*case_volume(2), [1], name="p2")  # its write tidies stale pending cases
    assert set(staged) <= set(image_files(store))  # the other writer's files are still there
    go.touch()
    rc, _out, err = finish(a)
    assert rc == 0, err
    assert_whole(open_store(store), ["p1", "p2"])


def test_a_dead_writers_pending_case_is_removed_by_the_next_write(tmp_path):
    store = tmp_path / "store"
    rc, _out, err = finish(writer(store, 1, "p1", "open", "stage", "crash"))
    assert rc == 3, err
    here = open_store(store)
    assert here.cases() == [] and len(here.record.pending) == 1 and image_files(store)
    here.add_case(*case_volume(2), [1], name="p2")
    assert_whole(open_store(store), ["p2"])


def test_a_case_whose_files_are_gone_is_dropped_on_open_with_one_warning(tmp_path):
    store = open_store(tmp_path / "store")
    a = store.add_case(*case_volume(1), [1], name="p1")
    b = store.add_case(*case_volume(2), [1], name="p2")
    model = tmp_path / "m.safetensors"
    model.write_bytes(b"x")
    store.record_model(model)
    (store.path / "labelsTr" / f"{a}.nii.gz").unlink()  # another program deleted it
    with pytest.warns(StoreWarning) as caught:
        opened = open_store(store.path)
    (warned,) = caught
    text = str(warned.message)
    assert a in text and "p1" in text and "dropped" in text and "\n" not in text
    assert opened.repairs == [text] and [c.id for c in opened.cases()] == [b]
    assert opened.latest_model == model.resolve()  # lost files do not unlearn a model
    # Written back: the next open says nothing, the record remembers, training reads the rest.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = open_store(store.path)
    assert [c.id for c in again.cases()] == [b] and again.record.lost[0]["id"] == a
    assert json.loads((store.path / "dataset.json").read_text())["numTraining"] == 1
    assert [s.case for s in again.training_slices()] == [b]
    assert not list((store.path / "imagesTr").glob(f"{a}_*"))  # no half case left behind
    again.add_case(*case_volume(3), [0], name="p3")  # not a dead end


def test_files_gone_while_open_are_one_line_never_a_raw_error(tmp_path):
    store = open_store(tmp_path / "store")
    a = store.add_case(*case_volume(1), [1], name="p1")
    b = store.add_case(*case_volume(2), [1], name="p2")
    for path in (store.path / "imagesTr").glob(f"{a}_*"):
        path.unlink()
    with pytest.warns(StoreWarning):
        assert [s.case for s in store.training_slices()] == [b]
    assert [c.id for c in open_store(store.path).cases()] == [b]
    with pytest.warns(StoreWarning):
        again = open_store(tmp_path / "store")
        (again.path / "labelsTr" / f"{b}.nii.gz").unlink()
        with pytest.raises(ValueError, match=f"case {b}'s files are gone"):
            again.read_case(b)
    assert again.cases() == [] and open_store(tmp_path / "store").cases() == []
