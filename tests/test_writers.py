"""Labels saved in the clinic's formats (issue 23, item 4), files read back with the field's
own readers: nibabel (NIfTI), pydicom + highdicom (DICOM SEG), zarr (OME-Zarr).

The scans are built as tests/data/test_medical.py builds them: slices of pydicom's own
CT_small.dcm at new positions (here also with their own SOP Instance UIDs, as every real
series has), and nibabel's anatomical.nii."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom")
nib = pytest.importorskip("nibabel")
hd = pytest.importorskip("highdicom")

from napari_fmbff._reader import read_medical  # noqa: E402
from napari_fmbff.data.dicom_seg import write_dicom_seg  # noqa: E402
from napari_fmbff.jobs.saved_labels import (  # noqa: E402
    SOURCE_KEY,
    ome_geometry,
    provenance_of,
    save_nifti,
    save_ome_zarr,
    scan_labels,
)

NIB_DATA = Path(nib.__file__).parent / "tests" / "data"


def dicom_series(folder, n=3, step=5.0, names=None) -> Path:
    """``n`` slices of CT_small.dcm, ``step`` mm apart, one series, each with its own SOP
    Instance UID; file names run against the anatomy when ``names`` says so. Returns the
    folder."""
    from pydicom.data import get_testdata_file
    from pydicom.uid import generate_uid

    src = Path(get_testdata_file("CT_small.dcm"))
    first = pydicom.dcmread(src)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    series = generate_uid()
    for k, name in enumerate(names or [f"{k}.dcm" for k in range(n)]):
        s = pydicom.dcmread(src)
        s.ImagePositionPatient = [float(v) for v in first.ImagePositionPatient[:2]] + \
            [float(first.ImagePositionPatient[2]) + step * k]
        s.SeriesInstanceUID, s.SOPInstanceUID, s.InstanceNumber = series, generate_uid(), k + 1
        s.save_as(folder / name)
    return folder


def opened(path):
    """(image data, the layer's scan record) as napari-fmbff's reader opens ``path``."""
    (data, meta, _), = read_medical(str(path))
    return data, meta["metadata"][SOURCE_KEY]


def some_labels(shape, values=(3, 7)) -> np.ndarray:
    labels = np.zeros(shape, np.int32)
    labels[..., 10:30, 20:50] = values[0]
    if labels.ndim == 3:
        labels[-1, 60:90, 70:100] = values[1]
    return labels


# ---- NIfTI -----------------------------------------------------------------------------------

def test_nifti_of_a_dicom_series_is_what_fmbff_segment_writes(tmp_path, tiny_model, capsys):
    from napari_fmbff.cli import main

    folder = dicom_series(tmp_path / "series", names=["c.dcm", "a.dcm", "b.dcm"])
    assert main(["segment", str(folder), "-m", tiny_model, "-o", str(tmp_path / "cli"),
                 "--tile-size", "64", "--device", "cpu", "--threshold", "0.3"]) == 0, \
        capsys.readouterr().err
    cli = nib.load(str(tmp_path / "cli" / "series.nii.gz"))
    voxels = np.transpose(np.asarray(cli.dataobj), (2, 1, 0))  # as napari holds them: (z, y, x)
    voxels[1, 5:9, 5:9] = 2  # whatever the tiny model found, something to compare
    image, record = opened(folder / "a.dcm")
    out = save_nifti(tmp_path / "saved.nii.gz", scan_labels(voxels, record, image.shape),
                     record, provenance_of(record, {"model": "tiny"}, "series fmbff"))
    saved = nib.load(str(out[0]))
    np.testing.assert_array_equal(saved.affine, cli.affine)
    np.testing.assert_array_equal(np.transpose(np.asarray(saved.dataobj), (2, 1, 0)), voxels)
    assert saved.header.get_zooms() == cli.header.get_zooms()
    sidecar = json.loads(out[1].read_text())
    assert out[1].name == "saved.json" and sidecar["model"] == "tiny"
    assert sidecar["source"] == str(folder) and sidecar["package_version"]


def test_nifti_of_a_nifti_scan_keeps_its_affine_and_one_slice_scans_work(tmp_path):
    image, record = opened(NIB_DATA / "anatomical.nii")
    labels = some_labels(image.shape)
    out = save_nifti(tmp_path / "mr.nii", scan_labels(labels, record, image.shape), record,
                     provenance_of(record, None))
    saved = nib.load(str(out[0]))
    np.testing.assert_allclose(saved.affine, nib.load(str(NIB_DATA / "anatomical.nii")).affine)
    np.testing.assert_array_equal(np.transpose(np.asarray(saved.dataobj), (2, 1, 0)), labels)
    # A one-slice scan opens as a 2D image; its 2D labels get their slice back.
    one = dicom_series(tmp_path / "one", n=1)
    image, record = opened(one / "0.dcm")
    assert image.ndim == 2
    labels = some_labels(image.shape)
    out = save_nifti(tmp_path / "one.nii.gz", scan_labels(labels, record, image.shape), record,
                     provenance_of(record, None))
    assert nib.load(str(out[0])).shape == (128, 128, 1)
    with pytest.raises(ValueError, match=r"shape \(64, 64\) but the scan .* has \(1, 128, 128\)"):
        scan_labels(np.zeros((64, 64)), record, image.shape)


# ---- DICOM SEG -------------------------------------------------------------------------------

def test_dicom_seg_references_the_series_in_its_z_order(tmp_path):
    folder = dicom_series(tmp_path / "series", names=["c.dcm", "a.dcm", "b.dcm"])
    image, record = opened(folder / "b.dcm")
    labels = some_labels(image.shape)
    path = write_dicom_seg(tmp_path / "seg.dcm", labels, record,
                           {"model": "tiny", "package_version": "9.9", "threshold": 0.5})
    # The slices in Z order are c, a, b (c.dcm is the lowest): their UIDs, in that order.
    uids = [str(pydicom.dcmread(folder / n).SOPInstanceUID) for n in ("c.dcm", "a.dcm", "b.dcm")]
    seg = hd.seg.segread(str(path))
    assert seg.number_of_segments == 2
    assert [seg.get_segment_description(k).segment_label for k in (1, 2)] == ["label 3",
                                                                             "label 7"]
    assert {uid for _, _, uid in seg.get_source_image_uids()} == set(uids)
    pixels = seg.get_pixels_by_source_instance(source_sop_instance_uids=uids,
                                               combine_segments=True, relabel=False)
    np.testing.assert_array_equal(np.array([0, 3, 7])[pixels], labels)
    ds = pydicom.dcmread(path)
    assert ds.SeriesInstanceUID != record["series_uid"] and ds.Modality == "SEG"
    assert str(ds.ContentCreatorName).rstrip("^") == "napari-fmbff" and ds.SoftwareVersions == "napari-fmbff 9.9"
    algorithm = ds.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0]
    assert algorithm.AlgorithmName == "FM-BFF-Net" and algorithm.AlgorithmVersion == "tiny"
    assert ds.SegmentSequence[0].SegmentAlgorithmType == "SEMIAUTOMATIC"
    # Never over a file unless asked; the file stays as it was.
    before = path.read_bytes()
    with pytest.raises(FileExistsError):
        write_dicom_seg(path, labels, record, {})
    assert path.read_bytes() == before
    # Hand-made labels (no model): MANUAL, and a one-slice scan's 2D labels.
    one = dicom_series(tmp_path / "one", n=1)
    image, record = opened(one / "0.dcm")
    path = write_dicom_seg(tmp_path / "one.dcm", some_labels(image.shape), record)
    ds = pydicom.dcmread(path)
    assert ds.SegmentSequence[0].SegmentAlgorithmType == "MANUAL" and ds.NumberOfFrames == 1


def test_dicom_seg_refusals_say_why_in_one_line(tmp_path):
    _, nifti = opened(NIB_DATA / "anatomical.nii")
    folder = dicom_series(tmp_path / "series")
    image, record = opened(folder / "0.dcm")
    cases = [
        (some_labels((4, 5, 6)), nifti, "not a DICOM series"),
        (np.zeros(image.shape, np.int32), record, "labels are empty"),
        (some_labels((3, 64, 64)), record, r"shape \(3, 64, 64\) but the series"),
    ]
    for labels, rec, message in cases:
        with pytest.raises(ValueError, match=message) as err:
            write_dicom_seg(tmp_path / "x.dcm", labels, rec)
        assert "\n" not in str(err.value)
    (folder / "1.dcm").unlink()  # the series changed since it was opened
    with pytest.raises(ValueError, match="changed since it was opened"):
        write_dicom_seg(tmp_path / "x.dcm", some_labels(image.shape), record)
    assert not (tmp_path / "x.dcm").exists()


# ---- OME-Zarr --------------------------------------------------------------------------------

def test_ome_zarr_labels_as_fmbff_segment_writes_them(tmp_path, tiny_model, rng):
    import tifffile
    import zarr

    from napari_fmbff._reader import read_result
    from napari_fmbff.cli import main

    tifffile.imwrite(tmp_path / "vol.tif", rng.integers(0, 255, (3, 64, 64), dtype=np.uint8),
                     imagej=True, metadata={"axes": "ZYX"})
    assert main(["segment", str(tmp_path / "vol.tif"), "-m", tiny_model, "-o",
                 str(tmp_path / "cli"), "--zarr", "--labels", "--chunk", "64"]) == 0
    cli = zarr.open_group(str(tmp_path / "cli" / "vol.zarr"), mode="r")
    labels = some_labels((3, 64, 64))
    geometry = ome_geometry(3, (2.5, 0.5, 0.5), (0, 10, 0), [None, "millimeter", "millimeter"])
    out, = save_ome_zarr(tmp_path / "saved.zarr", labels, geometry, {"model": "tiny"})
    ours = zarr.open_group(str(out), mode="r")
    assert set(ours.attrs["ome"]) == set(cli.attrs["ome"]) and ours.attrs["ome"]["version"] == "0.5"
    assert "image-label" in ours.attrs["ome"] and ours.attrs["napari_fmbff"]["kind"] == "labels"
    axes = ours.attrs["ome"]["multiscales"][0]["axes"]
    assert [a["name"] for a in axes] == ["z", "y", "x"] and axes[1]["unit"] == "millimeter"
    transforms = ours.attrs["ome"]["multiscales"][0]["datasets"][0]["coordinateTransformations"]
    assert transforms == [{"type": "scale", "scale": [2.5, 0.5, 0.5]},
                          {"type": "translation", "translation": [0.0, 10.0, 0.0]}]
    assert ours["0"].dtype == cli["0"].dtype == np.uint32
    assert ours["0"].metadata.dimension_names == cli["0"].metadata.dimension_names
    np.testing.assert_array_equal(ours["0"][:], labels)
    # napari-fmbff's own reader opens it as Labels at its pixel size.
    (data, meta, kind), = read_result(str(out / "zarr.json"))
    assert kind == "labels" and meta["scale"] == (2.5, 0.5, 0.5)
    # Saved again (the user corrected more): our own group is replaced, atomically.
    labels[0, 0, 0] = 9
    save_ome_zarr(out, labels, geometry, {}, overwrite=True)
    assert zarr.open_group(str(out), mode="r")["0"][0, 0, 0] == 9
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    # A folder of other files is never replaced, asked or not.
    other = tmp_path / "notes.zarr"
    other.mkdir()
    (other / "mine.txt").write_text("keep")
    with pytest.raises(FileExistsError, match="choose another name"):
        save_ome_zarr(other, labels, geometry, {}, overwrite=True)
    assert (other / "mine.txt").read_text() == "keep"


def test_a_dicom_seg_opens_back_as_labels_on_its_series(tmp_path):
    from napari_fmbff._reader import get_medical_reader, read_medical

    folder = dicom_series(tmp_path / "series", names=["c.dcm", "a.dcm", "b.dcm"])
    image, record = opened(folder / "b.dcm")
    labels = some_labels(image.shape)
    # Saved inside the series folder, as a PACS export often lays it out.
    path = write_dicom_seg(folder / "seg.dcm", labels, record, {"model": "tiny"})
    [(data, meta, kind)] = read_medical(str(path))
    assert kind == "labels" and get_medical_reader(str(path)) is not None
    np.testing.assert_array_equal(data, labels)   # napari values back, on the series' Z order
    assert meta["metadata"]["napari_fmbff_source"]["series_uid"] == record["series_uid"]
    assert meta["metadata"]["napari_fmbff_segments"] == {3: "label 3", 7: "label 7"}
    # The SEG beside the slices does not disturb the series itself.
    [(again, _, kind)] = read_medical(str(folder / "a.dcm"))
    assert kind == "image" and again.shape == image.shape


def test_a_dicom_seg_without_its_series_opens_on_its_own_grid_and_says_so(tmp_path):
    """Issue 28, item 8b: the SEG alone (no series in or beside its folder) opens on the grid
    of its own geometry, the same grid as its series', and a warning says so."""
    from napari_fmbff._reader import read_medical

    folder = dicom_series(tmp_path / "series", names=["c.dcm", "a.dcm", "b.dcm"])
    image, record = opened(folder / "b.dcm")
    labels = some_labels(image.shape)
    labels[1] = 0  # an empty slice between two: the SEG holds no frame of it
    path = write_dicom_seg(tmp_path / "elsewhere" / "seg.dcm", labels, record)
    moved = tmp_path / "other" / "patient" / "seg.dcm"   # no series in or beside its folder
    moved.parent.mkdir(parents=True)
    path.rename(moved)
    with pytest.warns(UserWarning, match="not beside it, so it opened on the SEG's own grid"):
        [(data, meta, kind)] = read_medical(str(moved))
    assert kind == "labels"
    np.testing.assert_array_equal(data, labels)  # every voxel where it was, the gap kept
    (_, image_meta, _), = read_medical(str(folder / "b.dcm"))
    np.testing.assert_allclose(meta["scale"], image_meta["scale"])
    own = meta["metadata"][SOURCE_KEY]
    np.testing.assert_allclose(own["affine"], record["affine"], atol=1e-4)
    # Saved as NIfTI from its own grid, the labels land where the series' labels land.
    mine, _ = save_nifti(tmp_path / "own.nii.gz", scan_labels(data, own), own,
                         provenance_of(own, None))
    theirs, _ = save_nifti(tmp_path / "series.nii.gz", labels, record, provenance_of(record, None))
    np.testing.assert_allclose(nib.load(mine).affine, nib.load(theirs).affine, atol=1e-4)
    # A DICOM SEG needs the series to reference: one line saying what to do.
    with pytest.raises(ValueError, match="put the series' .dcm files beside the SEG") as err:
        write_dicom_seg(tmp_path / "again.dcm", data, own)
    assert "\n" not in str(err.value)


def test_dicom_seg_has_one_segment_per_class_named_as_the_labels_are(tmp_path):
    """Issue 28, item 8c: a model's objects (ids 2, 5, 71) are one segment "lesion"; labels
    that came with names (an RTSTRUCT's ROIs) one segment per name; ids without a name keep
    "label N". Read back, each segment's name comes with it."""
    from napari_fmbff._reader import read_medical
    from napari_fmbff.data.dicom_seg import LESION

    folder = dicom_series(tmp_path / "series")
    image, record = opened(folder / "0.dcm")
    objects = np.zeros(image.shape, np.int32)
    objects[0, 10:20, 10:20], objects[1, 40:50, 40:50], objects[2, 60:70, 60:70] = 2, 5, 71
    path = write_dicom_seg(folder / "model.dcm", objects, record, {"model": "tiny"}, classes=LESION)
    seg = hd.seg.segread(str(path))
    assert seg.number_of_segments == 1
    assert seg.get_segment_description(1).segment_label == "lesion"
    [(data, meta, _)] = read_medical(str(path))
    np.testing.assert_array_equal(data, objects > 0)
    assert meta["metadata"]["napari_fmbff_segments"] == {1: "lesion"}

    rois = np.zeros(image.shape, np.int32)
    rois[:, 10:30, 10:30], rois[:, 60:90, 60:90], rois[1, 100:110, 100:110] = 1, 2, 3
    path = write_dicom_seg(folder / "rois.dcm", rois, record, classes={1: "GTV", 2: "Lung"})
    seg = hd.seg.segread(str(path))
    assert [seg.get_segment_description(k).segment_label for k in (1, 2, 3)] == \
        ["GTV", "Lung", "label 3"]
    ds = pydicom.dcmread(path)
    assert ds.SegmentSequence[1].SegmentedPropertyTypeCodeSequence[0].CodeMeaning == "Tissue"
    [(data, meta, _)] = read_medical(str(path))
    np.testing.assert_array_equal(data, rois)
    assert meta["metadata"]["napari_fmbff_segments"] == {1: "GTV", 2: "Lung", 3: "label 3"}


# ---- a saved NIfTI opened again ---------------------------------------------------------------

def test_a_saved_nifti_reopens_as_labels_on_its_scan(tmp_path):
    """Issue 28, item 8a: labels saved as NIfTI with napari-fmbff's sidecar open as Labels on
    the scan they were drawn on (its DICOM record, so they save as a DICOM SEG again), with how
    they were made; without the sidecar the NIfTI's label intent still says labels."""
    folder = dicom_series(tmp_path / "series")
    image, record = opened(folder / "0.dcm")
    labels = some_labels(image.shape)
    nii, sidecar = save_nifti(tmp_path / "out" / "mask.nii.gz", labels, record,
                              provenance_of(record, {"model": "tiny"}, "series fmbff"))
    [(data, meta, kind)] = read_medical(str(nii))
    assert kind == "labels"
    np.testing.assert_array_equal(data, labels)
    assert meta["metadata"][SOURCE_KEY] == record
    assert meta["metadata"]["napari_fmbff"]["model"] == "tiny"
    write_dicom_seg(tmp_path / "again.dcm", data, meta["metadata"][SOURCE_KEY])
    sidecar.unlink()
    [(data, meta, kind)] = read_medical(str(nii))
    assert kind == "labels" and "intent" in meta["metadata"]["napari_fmbff_opened_as_labels"]
    assert meta["metadata"][SOURCE_KEY]["format"] == "nifti"


def test_an_integer_mask_beside_its_scan_opens_as_labels(tmp_path):
    """Issue 28, item 8a, the rule for NIfTI files other tools wrote: an integer mask (ids >= 0,
    few of them, mostly background) beside a NIfTI on the same grid that is not such a mask
    (its scan) is Labels; the scan, a mask alone and two co-registered 8-bit images are
    Images."""
    import shutil

    scan = tmp_path / "case" / "t1.nii"
    scan.parent.mkdir()
    shutil.copy(NIB_DATA / "anatomical.nii", scan)
    img = nib.load(str(scan))
    mask = np.zeros(img.shape[:3], np.uint8)
    mask[10:20, 10:20, 5:10], mask[30:40, 30:40, 10:15] = 1, 2
    nib.save(nib.Nifti1Image(mask, img.affine), str(tmp_path / "case" / "t1_seg.nii.gz"))
    [(data, meta, kind)] = read_medical(str(tmp_path / "case" / "t1_seg.nii.gz"))
    assert kind == "labels" and "t1.nii" in meta["metadata"]["napari_fmbff_opened_as_labels"]
    np.testing.assert_array_equal(data, np.transpose(mask, (2, 1, 0)))
    assert read_medical(str(scan))[0][2] == "image"
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(tmp_path / "case" / "t1_seg.nii.gz", alone / "mask.nii.gz")
    assert read_medical(str(alone / "mask.nii.gz"))[0][2] == "image"
    # Two 8-bit images of the same grid, each mostly background: neither is the other's mask.
    pair = tmp_path / "pair"
    pair.mkdir()
    rng = np.random.default_rng(0)
    for name in ("t1.nii.gz", "t2.nii.gz"):
        voxels = np.zeros(img.shape[:3], np.uint8)
        voxels[5:25, 5:25, 2:12] = rng.integers(1, 255, (20, 20, 10))
        nib.save(nib.Nifti1Image(voxels, img.affine), str(pair / name))
    assert read_medical(str(pair / "t2.nii.gz"))[0][2] == "image"


# ---- provenance: the model file that made the pixels --------------------------------------

def test_a_propagation_record_names_its_own_model_file_hash_and_time(tmp_path, tiny_net,
                                                                    models_dir):
    """Issue 28, item 6: the record a propagation leaves on the layer names the model file it
    saved, that file's SHA-256 and the run's time (Segment's run kept as the previous run);
    a record whose model was changed without its file is not repeated as that model's."""
    import datetime
    import hashlib

    from napari_fmbff import save_model
    from napari_fmbff.jobs.saved_labels import checked_run, run_record

    save_model(tiny_net, models_dir / "starter2.safetensors")
    fine = save_model(tiny_net, models_dir / "day1.safetensors", metadata={"note": "tuned"})
    sha = hashlib.sha256(Path(fine).read_bytes()).hexdigest()
    segment = {"model": "starter2", "model_file": str(models_dir / "starter2.safetensors"),
               "model_sha256": "a" * 64, "date": "2020-01-01T00:00:00+00:00", "threshold": 0.4}
    when = datetime.datetime(2031, 5, 6, 7, 8, 9, tzinfo=datetime.timezone.utc)
    record = run_record(fine, segment, when=when, base="starter2", learned=True,
                        slices_labelled=[1], propagated=True)
    assert (record["model"], record["model_file"], record["model_sha256"]) == \
        ("day1", str(fine), sha)
    assert record["date"] == "2031-05-06T07:08:09+00:00" and record["threshold"] == 0.4
    assert record["base_model"] == "starter2" and record["base_model_file"].endswith(
        "starter2.safetensors") and len(record["base_model_sha256"]) == 64
    assert record["previous_run"] == {k: segment[k] for k in
                                      ("model", "model_file", "model_sha256", "date")}
    saved = provenance_of({}, record)
    assert saved["model_file"] == str(fine) and saved["model_sha256"] == sha
    # The record Propagate left before: its own model's name with Segment's file and time.
    stale = checked_run({**segment, "model": "day1", "propagated": True})
    assert stale["model"] == "day1" and stale["model_file"] is None
    assert stale["model_sha256"] is None and stale["date"] is None
    assert "day1" in stale["provenance_note"] and stale["unverified_run"]["model_sha256"] == "a" * 64
