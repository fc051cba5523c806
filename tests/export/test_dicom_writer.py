"""Synthetic DICOM output: required attributes, pixel round trip, dciodvfy/dcmdump validity, folder export."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from PIL import Image

from medgen.data.dicom import read_dicom_image
from medgen.export.cli_commands import export_command
from medgen.export.dicom_writer import IOD_CHANNELS, IODS, SyntheticStudy, export_images, write_dicom

PROVENANCE = {"checkpoint_sha256": "ab" * 32, "seed": 7, "sampler": "ddim", "steps": 50, "guidance_scale": 2.5}
UID_ROOT = "1.2.826.0.1.3680043.8.498"
GREY_IODS = sorted(k for k, v in IOD_CHANNELS.items() if 1 in v)  # colour: test_dicom_colour.py
DCIODVFY_SYNTHETIC_LINE = (
    "Error - Attribute with an even group number is not a recognized standard attribute - (0x0008,0x001c)  ? "
)


def ramp(h: int = 48, w: int = 40) -> np.ndarray:
    yy, xx = np.mgrid[:h, :w]
    return ((yy * w + xx) / (h * w - 1)).astype(np.float32)


def write(tmp_path: Path, iod: str = "sc", bits: int = 16, study: SyntheticStudy | None = None, n: int = 1) -> Path:
    study = study or SyntheticStudy(uid_root=UID_ROOT)
    return write_dicom(ramp(), tmp_path / f"{iod}{bits}_{n}.dcm", iod=iod, study=study, instance_number=n,
                       class_name="PNEUMONIA", provenance=PROVENANCE, bits=bits, pixel_spacing=(0.5, 0.5),
                       body_part="HEAD" if iod == "mr" else "CHEST")  # fmt: skip


@pytest.mark.parametrize("iod", GREY_IODS)
@pytest.mark.parametrize("bits", [12, 16])
def test_required_attributes(tmp_path, iod, bits):
    study = SyntheticStudy(uid_root=UID_ROOT, patient_name="SYNTH^ONE", patient_id="SYN-1")
    ds = pydicom.dcmread(write(tmp_path, iod, bits, study))
    assert ds.SOPClassUID == IODS[iod][0] and ds.Modality == IODS[iod][1]
    assert ds[0x0008, 0x001C].value == "YES"
    assert list(ds.ImageType)[:2] == ["DERIVED", "SECONDARY"]
    assert ds.BurnedInAnnotation == "NO" and ds.PhotometricInterpretation == "MONOCHROME2"
    assert (ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation) == (16, bits, bits - 1, 0)
    assert float(ds.WindowCenter) == 2 ** (bits - 1) and float(ds.WindowWidth) == 2**bits
    assert ds.BodyPartExamined == ("HEAD" if iod == "mr" else "CHEST")
    assert list(ds.PixelSpacing) == [0.5, 0.5] and "pixel_spacing=0.5\\0.5 mm over 48x40 px" in ds.ImageComments
    assert ds.get("ViewPosition", "") == ""  # nobody said which view (CR: Type 2, present and empty)
    assert (ds.PatientName, ds.PatientID) == ("SYNTH^ONE", "SYN-1")
    assert ds.StudyInstanceUID == study.study_instance_uid and ds.SeriesInstanceUID == study.series_instance_uid
    for uid in (ds.SOPInstanceUID, ds.StudyInstanceUID, ds.SeriesInstanceUID):
        assert uid.startswith(UID_ROOT + ".") and pydicom.uid.UID(uid).is_valid
    assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    assert ds.ImageComments.startswith("class=PNEUMONIA;")
    for key, value in PROVENANCE.items():
        assert f"{key}={value}" in ds.ImageComments and f"{key}={value}" in ds.DerivationDescription
    contrib = ds.ContributingEquipmentSequence[0]
    assert "ab" * 32 in contrib.ContributionDescription and contrib.SoftwareVersions.startswith("medgen")
    assert "PatientBirthDate" in ds and ds.PatientBirthDate == ""
    assert not list(tmp_path.glob(".*.tmp"))  # atomic write left no temp file


def test_pixels_round_trip_through_reader(tmp_path):
    for iod, bits in [("sc", 16), ("cr", 12), ("mr", 16)]:
        img, meta = read_dicom_image(write(tmp_path, iod, bits))
        np.testing.assert_allclose(img, ramp(), atol=0.5 / (2**bits - 1) + 1e-6)
        assert meta["window_source"] == "header"


def test_uint16_input_keeps_values_and_gets_its_own_window(tmp_path):
    raw = (np.arange(30 * 20).reshape(30, 20) + 100).astype(np.uint16)
    path = write_dicom(raw, tmp_path / "u16.dcm", study=SyntheticStudy(), instance_number=1, class_name="x",
                       provenance={}, bits=12)  # fmt: skip
    ds = pydicom.dcmread(path)
    np.testing.assert_array_equal(ds.pixel_array, raw)
    lo, hi = 100, 100 + 599
    assert float(ds.WindowCenter) == (lo + hi + 1) / 2 and float(ds.WindowWidth) == hi - lo + 1
    with pytest.raises(ValueError, match="do not fit 12 bits"):
        write_dicom(raw * 10, tmp_path / "big.dcm", study=SyntheticStudy(), instance_number=1, class_name="x",
                    provenance={}, bits=12)  # fmt: skip
    assert not (tmp_path / "big.dcm").exists()


def test_uids_one_study_and_series_per_run_fresh_instance(tmp_path):
    run1 = SyntheticStudy()
    a, b = (pydicom.dcmread(write(tmp_path, "sc", 16, run1, n)) for n in (1, 2))
    c = pydicom.dcmread(write(tmp_path / "other", "sc", 16, SyntheticStudy(), 1))
    assert a.StudyInstanceUID == b.StudyInstanceUID and a.SeriesInstanceUID == b.SeriesInstanceUID
    assert a.SOPInstanceUID != b.SOPInstanceUID
    assert c.StudyInstanceUID != a.StudyInstanceUID and c.PatientID != a.PatientID  # default patient per run
    assert a.SOPInstanceUID.startswith("2.25.")  # no root configured: UUID-derived UIDs


def test_bad_input_is_refused(tmp_path):
    study = SyntheticStudy()
    kw = {"study": study, "instance_number": 1, "class_name": "x", "provenance": {}}
    with pytest.raises(ValueError, match="2D"):
        write_dicom(np.zeros((2, 4, 4)), tmp_path / "a.dcm", **kw)
    with pytest.raises(ValueError, match="NaN"):
        write_dicom(np.full((4, 4), np.nan), tmp_path / "a.dcm", **kw)
    with pytest.raises(ValueError, match="unknown iod"):
        write_dicom(np.zeros((4, 4)), tmp_path / "a.dcm", iod="ct", **kw)
    with pytest.raises(ValueError, match="bits"):
        write_dicom(np.zeros((4, 4)), tmp_path / "a.dcm", bits=8, **kw)
    assert not list(tmp_path.iterdir())


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dicom3tools not installed")
@pytest.mark.parametrize("iod", GREY_IODS)
def test_dciodvfy_has_no_errors_except_unknown_synthetic_data_tag(tmp_path, iod, capsys):
    path = write(tmp_path, iod, 12 if iod == "cr" else 16)
    out = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
    lines = (out.stdout + out.stderr).splitlines()
    with capsys.disabled():
        print(f"\n--- dciodvfy {iod} ---\n" + "\n".join(lines))
    assert DCIODVFY_SYNTHETIC_LINE in lines  # proves the tag is there and the filter is the exact line
    errors = [line for line in lines if line.startswith("Error") and line != DCIODVFY_SYNTHETIC_LINE]
    assert errors == []


@pytest.mark.skipif(shutil.which("dcmdump") is None, reason="dcmtk not installed")
@pytest.mark.parametrize("iod", GREY_IODS)
def test_dcmdump_reads_file(tmp_path, iod):
    out = subprocess.run(["dcmdump", "-E", str(write(tmp_path, iod))], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "(0008,001c) CS [YES]" in out.stdout and "DERIVED\\SECONDARY" in out.stdout
    assert "E:" not in out.stderr


# --- export of a sampler folder -------------------------------------------------------------------------------------


def read_manifest(out: Path) -> list[dict]:
    with open(out / "manifest.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_export_dicom_series_with_manifest(samples_dir, tmp_path):
    summary = export_images(samples_dir, tmp_path / "out", fmt="dicom", iod="cr", uid_root=UID_ROOT,
                            patient_name="SYNTH^TEST", patient_id="SYN-T")  # fmt: skip
    lines = [json.loads(x) for x in (samples_dir / "samples.jsonl").read_text().splitlines()]
    rows = read_manifest(tmp_path / "out")
    assert summary["written"] == len(lines) == len(rows) and summary["errors"] == []
    series = set()
    for row in rows:
        line = lines[int(row["line"]) - 1]
        assert row["source"] == line["file"] and row["class"] == line["class"] and row["seed"] == str(line["seed"])
        ds = pydicom.dcmread(tmp_path / "out" / row["file"])
        assert ds.SOPInstanceUID == row["sop_instance_uid"] and ds.PatientName == "SYNTH^TEST"
        assert f"class={line['class']}" in ds.ImageComments and f"seed={line['seed']}" in ds.ImageComments
        series.add(ds.SeriesInstanceUID)
    assert len(series) == 1


def test_export_uses_npy_float_copy_when_present(samples_dir, tmp_path):
    rec = json.loads((samples_dir / "samples.jsonl").read_text().splitlines()[0])
    npy = (samples_dir / rec["file"]).with_suffix(".npy")
    assert npy.is_file()
    np.save(npy, np.full((1, 64, 64), 0.25, np.float32))  # differs from the PNG
    export_images(samples_dir, tmp_path / "out", fmt="dicom")
    row = read_manifest(tmp_path / "out")[0]
    img, _ = read_dicom_image(tmp_path / "out" / row["file"])
    np.testing.assert_allclose(img, 0.25, atol=1e-4)


def test_export_png_png16_and_nifti(samples_dir, tmp_path):
    rel = json.loads((samples_dir / "samples.jsonl").read_text().splitlines()[-1])["file"]  # PNG-only sample
    source = np.asarray(Image.open(samples_dir / rel))
    export_images(samples_dir, tmp_path / "png", fmt="png")
    export_images(samples_dir, tmp_path / "png16", fmt="png16")
    export_images(samples_dir, tmp_path / "nii", fmt="nifti", pixel_spacing=(0.5, 0.25))
    png8 = Image.open(tmp_path / "png" / rel)
    assert png8.mode == "L"
    np.testing.assert_array_equal(np.asarray(png8), source)
    png16 = np.asarray(Image.open(tmp_path / "png16" / rel))
    assert png16.dtype.itemsize == 2 or png16.max() > 255
    np.testing.assert_array_equal(png16.astype(np.int64), source.astype(np.int64) * 257)
    nii_rel = read_manifest(tmp_path / "nii")[-1]["file"]
    assert nii_rel.endswith(".nii.gz")
    nii = nib.load(tmp_path / "nii" / nii_rel)
    assert nii.shape == (64, 64, 1) and nii.header.get_zooms()[:2] == (0.25, 0.5)
    np.testing.assert_allclose(nii.get_fdata()[:, :, 0].T, source / 255.0, atol=1e-6)


def test_export_goes_on_after_a_bad_line(samples_dir, tmp_path):
    with open(samples_dir / "samples.jsonl", "a") as f:
        f.write('{"file": "NORMAL/missing.png", "class": "NORMAL", "seed": 99}\n{not json\n')
    summary = export_images(samples_dir, tmp_path / "out", fmt="png")
    assert summary["written"] == 4 and len(summary["errors"]) == 1 and summary["errors"][0][0] == 6
    assert summary["left_out"] == [(5, f"{samples_dir / 'samples.jsonl'}:5: NORMAL/missing.png is not in the samples "
                                       "folder (deleted): left out")]  # a deleted image is not an error
    assert export_command(samples_dir, tmp_path / "out2", fmt="png") == 1  # errors -> non-zero exit
    assert export_command(tmp_path / "nowhere", tmp_path / "out3") == 2


def test_export_command_ok(samples_dir, tmp_path, capsys):
    assert export_command(samples_dir, tmp_path / "out", fmt="dicom", iod="mr", bits=12, field_of_view_mm=240,
                          body_part="HEAD") == 0  # fmt: skip
    assert "exported 4 dicom file(s)" in capsys.readouterr().out


def test_an_export_into_a_folder_another_export_left_files_in_is_refused(samples_dir, tmp_path, capsys):
    """What an earlier export of other samples left would be mixed in with this one (and sent with it by `medgen send
    out/`): refused before anything is written. The same export again, or after more sampling, goes on."""
    from tests.export.conftest import make_samples_dir

    out = tmp_path / "out"
    assert export_command(samples_dir, out, fmt="dicom") == 0
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    fewer = make_samples_dir(tmp_path / "fewer", per_class=1)  # NORMAL/000000_s0, PNEUMONIA/000001_s1: 3 left over
    assert export_command(fewer, out, fmt="dicom") == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"error: {out} holds 3 file(s) this export does not write (NORMAL/000001_s1.dcm, ...), left by another "
        "export or of images since deleted from the samples folder: they would be mixed with these and sent with "
        "them; write to another folder (--out DIR) or move them away"]
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == before  # untouched
    assert export_command(samples_dir, out, fmt="png") == 2  # the DICOM files are not the PNG export's
    assert export_command(samples_dir, out, fmt="dicom") == 0  # the same export again
    # the samples folder after more sampling: its images and one more
    more = Path(shutil.copytree(samples_dir, tmp_path / "more"))
    shutil.copy(more / "NORMAL" / "000000_s0.png", more / "NORMAL" / "000009_s9.png")
    with (more / "samples.jsonl").open("a") as f:
        f.write(json.dumps({"file": "NORMAL/000009_s9.png", "class": "NORMAL", "label": 0, "seed": 9}) + "\n")
    assert export_command(more, out, fmt="dicom") == 0 and len(read_manifest(out)) == 5


def test_an_image_deleted_from_the_samples_folder_is_not_exported(samples_dir, tmp_path, capsys):
    """A reviewer deletes an implausible image (its PNG): it is left out of the export, float copy or not, without
    an error, and its DICOM from an earlier export of the folder is not left beside the others (refused)."""
    culled = Path(shutil.copytree(samples_dir, tmp_path / "culled"))
    earlier = tmp_path / "earlier"
    assert export_command(culled, earlier, fmt="dicom") == 0
    (culled / "NORMAL" / "000001_s1.png").unlink()  # its float copy NORMAL/000001_s1.npy stays
    assert (culled / "NORMAL" / "000001_s1.npy").is_file()
    capsys.readouterr()
    out = tmp_path / "out"
    assert export_command(culled, out, fmt="dicom") == 0
    printed = capsys.readouterr()
    assert printed.err == ""
    assert (f"exported 3 dicom file(s) to {out}, 0 error(s), 1 image(s) deleted from the samples folder left out"
            in printed.out)
    assert sorted(row["source"] for row in read_manifest(out)) == [
        "NORMAL/000000_s0.png", "PNEUMONIA/000002_s2.png", "PNEUMONIA/000003_s3.png"]
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.dcm")) == [
        "NORMAL/000000_s0.dcm", "PNEUMONIA/000002_s2.dcm", "PNEUMONIA/000003_s3.dcm"]
    assert export_command(culled, earlier, fmt="dicom") == 2
    assert "holds 1 file(s) this export does not write (NORMAL/000001_s1.dcm)" in capsys.readouterr().err
