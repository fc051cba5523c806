"""index_dicom_tree on a messy tree: nested folders, no extensions, DICOMDIR, junk and broken files."""

from __future__ import annotations

import csv
import shutil
import warnings
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file

from medgen.data.dicom_index import index_dicom_tree

warnings.filterwarnings("ignore", category=UserWarning, module="pydicom")


def tf(name: str) -> Path:
    path = get_testdata_file(name)
    if path is None:
        pytest.skip(f"pydicom test file {name} not available")
    return Path(path)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """root/NORMAL, root/PNEUMONIA with good slices (some without extension, nested) and every kind of bad file."""
    root = tmp_path / "tree"
    normal, pneu = root / "NORMAL", root / "PNEUMONIA" / "patient1" / "series2"
    normal.mkdir(parents=True)
    pneu.mkdir(parents=True)
    shutil.copy(tf("CT_small.dcm"), normal / "ct_small.dcm")
    shutil.copy(tf("MR_small.dcm"), normal / "IM000001")  # no extension
    shutil.copy(tf("MR_small_RLE.dcm"), pneu / "IM000002")
    shutil.copy(tf("RG3_UNCR.dcm"), pneu / "chest.DCM")
    # junk and broken files
    (normal / "README.txt").write_text("notes\n")
    (normal / "thumb.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 64)
    (normal / "empty").touch()
    (normal / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (pneu / "corrupt.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\xff" * 300)
    data = tf("CT_small.dcm").read_bytes()
    (pneu / "truncated.dcm").write_bytes(data[: len(data) * 2 // 3])
    shutil.copy(tf("rtplan.dcm"), pneu / "rtplan")  # no PixelData
    shutil.copy(tf("SC_rgb.dcm"), pneu / "rgb.dcm")  # colour
    shutil.copy(tf("emri_small.dcm"), pneu / "multiframe.dcm")
    shutil.copy(tf("MR_small.dcm"), root / "at_root.dcm")  # no class folder
    return root


def test_folder_labels_and_per_file_errors(tree: Path):
    items, summary = index_dicom_tree(tree)
    got = {Path(i["image"]).relative_to(tree).as_posix(): i["label_name"] for i in items}
    assert got == {
        "NORMAL/ct_small.dcm": "NORMAL",
        "NORMAL/IM000001": "NORMAL",
        "PNEUMONIA/patient1/series2/IM000002": "PNEUMONIA",
        "PNEUMONIA/patient1/series2/chest.DCM": "PNEUMONIA",
    }
    assert all(Path(i["image"]).is_absolute() and set(i) == {"image", "label_name"} for i in items)
    skipped = summary["skipped"]
    assert skipped["not_dicom"] == 3 and skipped["hidden"] == 1
    assert skipped["no_pixel_data"] == 1 and skipped["colour"] == 1 and skipped["multi_frame"] == 1
    assert skipped["no_label"] == 1
    assert skipped.get("corrupt", 0) + skipped.get("truncated", 0) + skipped.get("no_pixel_data", 0) == 3
    assert summary["indexed"] == 4
    errors = dict(summary["errors"])
    assert len(errors) == sum(skipped.values()) - skipped["hidden"]
    for path, message in errors.items():
        assert message.startswith(path)
    assert "multi-frame" in errors[str(tree / "PNEUMONIA/patient1/series2/multiframe.dcm")]


def test_check_pixels_decodes_too(tree: Path):
    items, summary = index_dicom_tree(tree, check_pixels=True)
    assert len(items) == 4 and summary["indexed"] == 4


def test_csv_labels_by_sop_instance_uid(tree: Path, tmp_path: Path):
    uid = pydicom.dcmread(tree / "NORMAL/ct_small.dcm", stop_before_pixels=True).SOPInstanceUID
    rg3 = pydicom.dcmread(tree / "PNEUMONIA/patient1/series2/chest.DCM", stop_before_pixels=True).SOPInstanceUID
    labels = tmp_path / "labels.csv"
    with open(labels, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["SOPInstanceUID", "finding"])
        w.writerows([[uid, "nodule"], [rg3, "effusion"]])
    items, summary = index_dicom_tree(tree, labels_csv=labels, label_column="finding")
    got = {Path(i["image"]).name: i["label_name"] for i in items}
    # MR_small and MR_small_RLE share a SOPInstanceUID not in the CSV; at_root.dcm too
    assert got == {"ct_small.dcm": "nodule", "chest.DCM": "effusion"}
    assert summary["skipped"]["no_label"] == 3


def test_csv_labels_by_relative_or_absolute_path(tree: Path, tmp_path: Path):
    labels = tmp_path / "labels.csv"
    with open(labels, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["file", "label"])
        w.writerow(["NORMAL/IM000001", "a"])
        w.writerow([str(tree / "at_root.dcm"), "b"])
    items, _ = index_dicom_tree(tree, labels_csv=labels)
    assert {Path(i["image"]).name: i["label_name"] for i in items} == {"IM000001": "a", "at_root.dcm": "b"}


def test_csv_without_key_column_is_refused(tree: Path, tmp_path: Path):
    labels = tmp_path / "labels.csv"
    labels.write_text("name,label\nx,1\n")
    with pytest.raises(ValueError, match="no key column"):
        index_dicom_tree(tree, labels_csv=labels)
    with pytest.raises(ValueError, match="no column 'diagnosis'"):
        index_dicom_tree(tree, labels_csv=labels, label_column="diagnosis")


def test_dicomdir_is_followed_and_missing_references_reported(tmp_path: Path):
    root = tmp_path / "media"
    shutil.copytree(tf("DICOMDIR").parent, root / "DISK1")
    dicomdir = pydicom.dcmread(root / "DISK1" / "DICOMDIR")
    refs = [r.ReferencedFileID for r in dicomdir.DirectoryRecordSequence if "ReferencedFileID" in r]
    victim = root.joinpath("DISK1", *refs[0])
    victim.unlink()
    items, summary = index_dicom_tree(root)
    assert summary["skipped"]["dicomdir"] >= 1
    assert any("referenced by" in m and "missing" in m for _, m in summary["errors"])
    assert len(items) >= 10 and {i["label_name"] for i in items} == {"DISK1"}
    assert len({i["image"] for i in items}) == len(items)  # walked and DICOMDIR-listed files not doubled


def test_not_a_directory(tmp_path: Path):
    with pytest.raises(NotADirectoryError):
        index_dicom_tree(tmp_path / "nope")
