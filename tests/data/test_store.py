"""The corrections store: an nnU-Net v2 raw folder with the ignore label, one case per scan."""

import json

import numpy as np
import pytest

nib = pytest.importorskip("nibabel")

from napari_fmbff.data.datasets import find_pairs  # noqa: E402
from napari_fmbff.data.store import (  # noqa: E402
    IGNORE,
    STORE_DIR_ENV,
    StoreError,
    default_store_dir,
    identity_of,
    open_store,
)


def volume(seed=0, shape=(5, 40, 48)):
    rng = np.random.default_rng(seed)
    image = rng.integers(-1000, 1000, shape).astype(np.int16)  # HU
    labels = np.zeros(shape, np.int32)
    labels[:, 10:20, 12:30] = 3  # a lesion id, not 1
    return image, labels


def test_default_folder_honours_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv(STORE_DIR_ENV, str(tmp_path / "mine"))
    assert default_store_dir() == tmp_path / "mine"
    monkeypatch.delenv(STORE_DIR_ENV)
    assert default_store_dir().name == "store"


def test_a_case_in_nnunet_v2_layout_with_the_ignore_label(tmp_path):
    image, labels = volume()
    store = open_store(tmp_path / "store")
    assert not (tmp_path / "store").exists()  # opening writes nothing
    intensity = {"setting": {"mode": "fixed", "low": -1000, "high": 400}, "describe": "lung"}
    case = store.add_case(image, labels, [1, 3], source="/data/lung1.nii.gz", model="starter",
                          intensity=intensity, spacing=(2.5, 0.7, 0.7))
    root = tmp_path / "store"
    meta = json.loads((root / "dataset.json").read_text())
    assert meta["labels"] == {"background": 0, "lesion": 1, "ignore": 2}
    assert meta["numTraining"] == 1 and meta["file_ending"] == ".nii.gz"
    assert meta["channel_names"] == {"0": "image"}
    img = nib.load(root / "imagesTr" / f"{case}_0000.nii.gz")
    lab = nib.load(root / "labelsTr" / f"{case}.nii.gz")
    assert img.get_data_dtype() == np.int16  # the intensities as they were (HU)
    np.testing.assert_array_equal(np.asarray(img.dataobj).transpose(2, 1, 0), image)
    np.testing.assert_allclose(img.header.get_zooms(), (0.7, 0.7, 2.5))
    stored = np.asarray(lab.dataobj).transpose(2, 1, 0)
    assert (stored[[0, 2, 4]] == IGNORE).all()  # uncorrected slices: ignore, not background
    np.testing.assert_array_equal(stored[[1, 3]], (labels[[1, 3]] > 0).astype(np.uint8))
    record = json.loads((root / "fmbff_store.json").read_text())["cases"][case]
    assert record["model"] == "starter" and record["intensity"] == intensity
    assert record["corrected_slices"] == [1, 3] and record["source"] == "/data/lung1.nii.gz"
    assert record["identity"].startswith("sha256:") and record["added"]
    # fmbff train's nnU-Net reader pairs it as it is.
    found = find_pairs(root)
    assert found.layout == "nnU-Net / MSD" and len(found.pairs) == 1
    back, back_labels, rec = open_store(root).read_case(case)
    np.testing.assert_array_equal(back, image)
    assert back_labels.shape == labels.shape and rec.corrected_slices == [1, 3]


def test_the_same_scan_is_updated_not_duplicated(tmp_path):
    image, labels = volume()
    store = open_store(tmp_path)
    first = store.add_case(image, labels, [1])
    labels2 = labels.copy()
    labels2[3] = 0
    second = store.add_case(image, labels2, [3, 4])
    assert [c.id for c in store.cases()] == [second] and first != second
    case = store.case(second)
    assert case.slices == [1, 3, 4]  # the earlier correction stays
    _, stored, _ = store.read_case(second)
    assert stored[1].any() and not stored[3].any() and (stored[[0, 2]] == IGNORE).all()
    assert not list((tmp_path / "imagesTr").glob(f"{first}_*"))  # the old files are gone
    assert store.summary() == "1 case, 3 corrected slices"
    other = store.add_case(volume(seed=1)[0], labels, [2])
    assert [c.id for c in store.cases()] == [second, other] and store.newest == other


#: A record as the code before the typed record (``data/store_record.py``) wrote it: one case,
#: one model promoted by hand and one decided by the gate, a lost case, a pending id, and a
#: key of a later version (kept as it is).
OLD_RECORD = {
    "format": "napari-fmbff-store/1", "created": "2031-01-02T03:04:05+00:00", "next": 4,
    "cases": {"lung1_003": {
        "identity": "sha256:0123456789abcdef0123456789abcdef", "name": "lung1.nii.gz",
        "source": "/data/lung1.nii.gz", "added": "2031-01-02T03:04:05+00:00",
        "updated": "2031-01-03T03:04:05+00:00", "model": "starter",
        "intensity": {"setting": {"mode": "fixed", "low": -1000, "high": 400},
                      "describe": "lung"},
        "corrected_slices": [1, 3], "shape": [5, 40, 48], "dtype": "int16", "is_2d": False,
        "spacing": [2.5, 0.7, 0.7], "series_uid": None, "modality": None}},
    "pending": ["lung1_002"],
    "models": [
        {"path": "/models/day1.safetensors", "name": "day1", "base": "starter",
         "cases": ["lung1_001"], "slices": 1, "trained": "2031-01-02T04:00:00+00:00",
         "promoted": True},
        {"path": "/models/day2.safetensors", "name": "day2", "base": "/models/day1.safetensors",
         "cases": ["lung1_003"], "slices": 2, "trained": "2031-01-03T04:00:00+00:00",
         "promoted": False, "gate": {"latest": "/models/day1.safetensors", "cases": [],
                                     "dice": 0.5, "latest_dice": 0.6}}],
    "channel_names": {"0": "image"},
    "lost": [{"id": "lung1_001", "name": "lung1.nii.gz",
              "identity": "sha256:0123456789abcdef0123456789abcdef",
              "missing": "lung1_001_0000.nii.gz", "dropped": "2031-01-03T00:00:00+00:00"}],
    "later_key": {"kept": True},
}


def test_a_record_written_before_the_typed_record_round_trips_unchanged(tmp_path):
    from napari_fmbff.data.store_record import StoreRecord

    record = StoreRecord.from_json(json.loads(json.dumps(OLD_RECORD)))
    assert record.cases["lung1_003"].corrected_slices == [1, 3]
    assert [m.promoted for m in record.models] == [True, False] and record.models[0].gate is None
    assert json.dumps(record.to_json(), indent=1) == json.dumps(OLD_RECORD, indent=1)  # in order
    # An old store opens, and a change writes back every other key as it was.
    image, labels = volume()
    case = open_store(tmp_path).add_case(image, labels, [1, 3], source="/data/lung1.nii.gz")
    old = json.loads(json.dumps(OLD_RECORD).replace("lung1_003", case))
    (tmp_path / "fmbff_store.json").write_text(json.dumps(old, indent=1))
    store = open_store(tmp_path)
    assert [c.id for c in store.cases()] == [case] and store.case(case).entry.model == "starter"
    store.record_model(tmp_path / "day3.safetensors", base="starter")
    written = json.loads((tmp_path / "fmbff_store.json").read_text())
    assert written["models"][:2] == old["models"] and written["models"][2]["name"] == "day3"
    assert "gate" not in written["models"][2]
    assert {k: v for k, v in written.items() if k not in ("models", "pending")} == \
        {k: v for k, v in old.items() if k not in ("models", "pending")}


def test_dicom_identity_from_the_series_uid():
    image = np.zeros((3, 8, 8), np.int16)
    meta = {"format": "dicom", "series_uid": "1.2.3", "n_slices": 3}
    assert identity_of(image, meta) == "dicom:1.2.3"
    assert identity_of(image + 1, meta) == "dicom:1.2.3"  # same series, whatever the pixels
    single = {"format": "dicom", "series_uid": "1.2.3", "n_slices": 1}
    assert identity_of(image[0], {**single, "sop_instance_uids": ["9.9"]}) == "dicom:1.2.3/9.9"
    assert identity_of(image[0], single) != identity_of(image[0] + 1, single)
    assert identity_of(image) == identity_of(image.copy()) != identity_of(image + 1)


def test_2d_rgb_images_are_one_slice_cases(tmp_path):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)
    labels = np.zeros((40, 48), np.uint8)
    labels[5:15, 5:15] = 1
    store = open_store(tmp_path)
    case = store.add_case(image, labels, [], rgb=True, source="polyp.png")
    assert sorted(p.name for p in (tmp_path / "imagesTr").iterdir()) == [
        f"{case}_000{c}.nii.gz" for c in range(3)]
    assert json.loads((tmp_path / "dataset.json").read_text())["channel_names"] == {
        "0": "R", "1": "G", "2": "B"}
    back, back_labels, _ = store.read_case(case)
    np.testing.assert_array_equal(back, image)
    np.testing.assert_array_equal(back_labels, labels)
    (plane, mask, cid, z), = list(store.training_slices())
    np.testing.assert_array_equal(plane, image)
    assert cid == case and z == 0 and mask.dtype == np.uint8 and mask.sum() == 100
    with pytest.raises(StoreError, match="RGB images and this image is grey"):
        store.add_case(image[..., 0], labels, [])


def test_training_slices_read_only_the_labelled_slices(tmp_path):
    store = open_store(tmp_path)
    a = store.add_case(*volume(0), [1, 3])
    b = store.add_case(*volume(1), [0])
    got = [(s.case, s.z) for s in store.training_slices()]
    assert got == [(a, 1), (a, 3), (b, 0)]
    first = next(iter(store.training_slices()))
    assert first.image.shape == (40, 48) and set(np.unique(first.mask)) == {0, 1}


def test_remove_case_and_latest_model_lineage(tmp_path):
    store = open_store(tmp_path / "s")
    a = store.add_case(*volume(0), [1])
    model = tmp_path / "m.safetensors"
    model.write_bytes(b"x")
    store.record_model(model, base="starter")
    assert store.latest_model == model.resolve()
    b = store.add_case(*volume(1), [2])
    assert store.latest_model == model.resolve()  # trained on a subset of the store: still ok
    store.remove_case(a)
    assert [c.id for c in store.cases()] == [b]
    assert store.latest_model is None  # it learned a removed case
    assert not list((tmp_path / "s" / "labelsTr").glob(f"{a}*"))
    store.remove_case(b)  # the last case: an empty store
    assert store.cases() == [] and list(store.training_slices()) == []
    assert json.loads((tmp_path / "s" / "dataset.json").read_text())["numTraining"] == 0
    with pytest.raises(StoreError, match="no case"):
        store.remove_case(b)


def test_a_discarded_case_leaves_the_store_as_it_was(tmp_path):
    store = open_store(tmp_path)
    store.add_case(*volume(0), [1])
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    pending = store.stage_case(*volume(1), [2])
    assert len(store.cases()) == 1  # not part of the store until committed
    pending.discard()
    after = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert after == before


def test_a_foreign_nnunet_folder_opens_read_only(tmp_path):
    image, labels = volume()
    (tmp_path / "imagesTr").mkdir()
    (tmp_path / "labelsTr").mkdir()
    eye = np.eye(4)
    nib.save(nib.Nifti1Image(image.transpose(2, 1, 0), eye), tmp_path / "imagesTr" / "c1_0000.nii.gz")
    sparse = np.full(labels.shape, 2, np.uint8)
    sparse[2] = labels[2] > 0
    sparse[3, :5] = 0  # partly annotated: skipped (no per-pixel ignore in training)
    nib.save(nib.Nifti1Image(sparse.transpose(2, 1, 0), eye), tmp_path / "labelsTr" / "c1.nii.gz")
    (tmp_path / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "CT"}, "labels": {"background": 0, "tumour": 1, "ignore": 2},
        "numTraining": 1, "file_ending": ".nii.gz"}))
    store = open_store(tmp_path)
    assert store.read_only and [c.id for c in store.cases()] == ["c1"]
    assert [s.z for s in store.training_slices()] == [2] and store.skipped_partial == 1
    with pytest.raises(StoreError, match="never writes into it"):
        store.add_case(image, labels, [1])


def test_a_dicom_scan_is_one_case_however_often_it_is_added(tmp_path):
    pydicom = pytest.importorskip("pydicom")
    from pydicom.data import get_testdata_file

    from napari_fmbff.data.medical import read_volume, source_record

    path = get_testdata_file("CT_small.dcm")
    volume = read_volume(path)
    meta = source_record(volume)
    uid = str(pydicom.dcmread(path).SeriesInstanceUID)
    sop = str(pydicom.dcmread(path).SOPInstanceUID)
    identity = identity_of(volume.data[0], meta)
    assert identity == f"dicom:{uid}/{sop}"   # the reader records the slice's SOP UID
    store = open_store(tmp_path)
    labels = np.zeros(volume.data.shape, np.uint8)
    labels[0, 40:60, 40:60] = 1
    store.add_case(volume.data, labels, [0], source_meta=meta)
    store.add_case(volume.data, labels, [0], source_meta=meta)
    (case,) = store.cases()
    assert case.entry.series_uid == uid and case.entry.modality == "CT"
    assert json.loads((tmp_path / "dataset.json").read_text())["channel_names"] == {"0": "CT"}
    img = nib.load(tmp_path / "imagesTr" / f"{case.id}_0000.nii.gz")
    np.testing.assert_allclose(img.affine[:3, 3], volume.ras_affine[:3, 3])  # the scan's place


def test_one_store_per_kind_of_image_under_the_store_folder(tmp_path):
    from napari_fmbff.data.store import open_store_for
    from napari_fmbff.training.store_training import is_store

    folder = tmp_path / "store"
    grey, rgb = open_store_for(folder), open_store_for(folder, rgb=True)
    assert (grey.path, rgb.path) == (folder / "grey", folder / "rgb")
    assert (grey.kind, rgb.kind) == ("grey", "rgb") and "(grey images)" in grey.describe()
    grey.add_case(*volume(0), [1])
    colour = np.random.default_rng(0).integers(0, 255, (40, 48, 3), dtype=np.uint8)
    rgb.add_case(colour, np.ones((40, 48), np.uint8), [], rgb=True)  # no "one kind" refusal
    assert [len(open_store_for(folder, rgb=k).cases()) for k in (False, True)] == [1, 1]
    assert open_store_for(folder, rgb=True).kind == "rgb"
    # The folder itself is no store: naming it says which to give (fmbff train FOLDER).
    assert is_store(folder)
    with pytest.raises(StoreError, match="one corrections store per kind .* give one"):
        open_store(folder)
    (folder / "notes.txt").write_text("mine")
    with pytest.raises(StoreError, match="holds other files"):
        open_store_for(folder)


def test_an_earlier_layout_store_is_read_in_place(tmp_path):
    """A store made before one store per kind (its record at the top of the folder) serves
    its own kind where it is; the other kind gets its own folder beside it; nothing moves."""
    from napari_fmbff.data.store import open_store_for

    folder = tmp_path / "store"
    old = open_store(folder)
    case = old.add_case(*volume(0), [1])
    before = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    grey = open_store_for(folder)
    assert grey.path == folder and [c.id for c in grey.cases()] == [case]
    rgb = open_store_for(folder, rgb=True)
    assert rgb.path == folder / "rgb" and rgb.cases() == []
    colour = np.random.default_rng(0).integers(0, 255, (40, 48, 3), dtype=np.uint8)
    rgb.add_case(colour, np.ones((40, 48), np.uint8), [], rgb=True)
    after = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    assert {p: after[p] for p in before} == before  # the grey store as it was
    assert [c.id for c in open_store_for(folder).cases()] == [case]
    assert len(open_store_for(folder, rgb=True).cases()) == 1


def test_the_store_and_the_command_line_read_one_os_error_table(tmp_path, monkeypatch):
    """One home for what an OSError means and what to do (``_files.OS_ERROR_HINTS``): the
    store's write errors and the command line's one-line errors both say it, each in its own
    words for "elsewhere"."""
    import errno

    from napari_fmbff import _files
    from napari_fmbff.cli._common import one_line
    from napari_fmbff.data.store import StoreError, _writing

    full = OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "x"))

    def store_says(err):
        with pytest.raises(StoreError) as caught, _writing(tmp_path):
            raise err
        return str(caught.value)

    assert ("the disk is full: free some space or choose a store folder you can write to"
            in store_says(full))
    assert one_line(full).endswith("(the disk is full: free some space or write elsewhere)")
    monkeypatch.setitem(_files.OS_ERROR_HINTS, errno.ENOSPC, ("out of room", "{elsewhere}"))
    assert "out of room: choose a store folder you can write to" in store_says(full)
    assert one_line(full).endswith("(out of room: write elsewhere)")


def test_a_case_says_how_many_slices_of_each_kind_it_holds(tmp_path):
    """Lesion slices, accepted lesion-free slices (background) and unreviewed ones (ignore):
    what the store dock lists for each case; a slice corrected again changes kind."""
    image, labels = volume()
    labels[3] = 0  # slice 3 reviewed and lesion-free
    store = open_store(tmp_path)
    case = store.add_case(image, labels, [1, 2, 3], source="/data/lung1.nii.gz")
    entry = store.case(case).entry
    assert entry.lesion_free == [3]
    assert entry.slice_kinds() == {"lesion": 2, "lesion_free": 1, "unreviewed": 2}
    assert store.case(case).describe() == \
        f"{case} (lung1.nii.gz: 2 lesion, 1 lesion-free, 2 unreviewed slice(s))"
    record = json.loads((tmp_path / "fmbff_store.json").read_text())["cases"][case]
    assert record["lesion_free"] == [3]
    labels2 = labels.copy()
    labels2[2] = 0  # the second look: slice 2 holds no lesion after all
    again = store.add_case(image, labels2, [2, 4])
    assert store.case(again).entry.slice_kinds() == \
        {"lesion": 2, "lesion_free": 2, "unreviewed": 1}  # 1 and 4; 2 and 3; 0
    # A case of an older record (no lesion_free) says what it knows: its corrected slices.
    old = json.loads(json.dumps(OLD_RECORD))["cases"]["lung1_003"]
    from napari_fmbff.data.store import Case
    from napari_fmbff.data.store_record import CaseEntry

    assert CaseEntry.from_json(old).slice_kinds() is None
    assert Case("lung1_003", CaseEntry.from_json(old)).describe() == \
        "lung1_003 (lung1.nii.gz, 2 corrected slices)"
