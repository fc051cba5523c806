"""Colour (RGB) export: VL Microscopic Image and Secondary Capture DICOM (dciodvfy-valid, pixels byte-identical to
the sampler's PNGs), RGB PNG and RGB24 NIfTI, one-line refusals of a colour/grey mismatch, and the Orthanc round trip
of RGB files (C-STORE and STOW-RS)."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from PIL import Image
from test_dicom_writer import DCIODVFY_SYNTHETIC_LINE, PROVENANCE, UID_ROOT, read_manifest

from medgen.export.dicom_writer import IOD_CHANNELS, IODS, SyntheticStudy, export_images, write_dicom
from medgen.export.pacs import DicomwebClient, DimseClient, send

REPO = Path(__file__).resolve().parents[2]
COLOUR_IODS = sorted(k for k, v in IOD_CHANNELS.items() if 3 in v)


def png_pixels(samples_dir: Path, rel: str) -> np.ndarray:
    return np.asarray(Image.open(samples_dir / rel))


def lines_of(samples_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (samples_dir / "samples.jsonl").read_text().splitlines()]


def medgen(*args: object) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "medgen.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=REPO, env={**os.environ, "PYTHONUNBUFFERED": "1"}, timeout=600)  # fmt: skip


def test_colour_iods_are_vl_microscopic_and_secondary_capture():
    assert COLOUR_IODS == ["sc", "vlm"]
    assert IODS["vlm"][:2] == ("1.2.840.10008.5.1.4.1.1.77.1.2", "GM")
    assert [k for k, v in IOD_CHANNELS.items() if 1 in v] == ["sc", "cr", "mr"]


@pytest.mark.parametrize("iod", COLOUR_IODS)
def test_colour_export_attributes_and_pixels(colour_samples_dir, tmp_path, iod):
    summary = export_images(colour_samples_dir, tmp_path / "out", fmt="dicom", iod=iod, uid_root=UID_ROOT)
    assert summary["written"] == 4 and summary["errors"] == []
    for row in read_manifest(tmp_path / "out"):
        ds = pydicom.dcmread(tmp_path / "out" / row["file"])
        assert (ds.SOPClassUID, ds.Modality) == IODS[iod][:2]
        assert (ds.PhotometricInterpretation, ds.SamplesPerPixel, ds.PlanarConfiguration) == ("RGB", 3, 0)
        assert (ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation) == (8, 8, 7, 0)
        assert "WindowCenter" not in ds and "VOILUTFunction" not in ds  # a VOI window is for grey only
        assert ds[0x0008, 0x001C].value == "YES" and list(ds.ImageType)[:2] == ["DERIVED", "SECONDARY"]
        assert str(ds.PatientName).startswith("SYNTHETIC^") and ds.SOPInstanceUID.startswith(UID_ROOT + ".")
        assert ds.ImageComments.startswith(f"class={row['class']};")
        # pixel data is the PNG's bytes (class 0 via its float .npy copy): R1G1B1R2G2B2...
        assert ds.PixelData == png_pixels(colour_samples_dir, row["source"]).tobytes()
        np.testing.assert_array_equal(ds.pixel_array, png_pixels(colour_samples_dir, row["source"]))
        if iod == "vlm":  # Acquisition Context (Type 2) and a synthetic Specimen module
            assert ds.AcquisitionContextSequence == [] and ds.ContainerIdentifier
            specimen = ds.SpecimenDescriptionSequence[0]
            assert pydicom.uid.UID(specimen.SpecimenUID).is_valid and specimen.SpecimenIdentifier
        else:
            assert ds.ConversionType == "SYN"


def test_colour_uids_are_deterministic_and_the_default_iod_is_vl_microscopic(colour_samples_dir, tmp_path):
    first = export_images(colour_samples_dir, tmp_path / "a", fmt="dicom")
    again = export_images(colour_samples_dir, tmp_path / "b", fmt="dicom")
    uids = [[pydicom.dcmread(p).SOPInstanceUID for p in s["files"]] for s in (first, again)]
    assert uids[0] == uids[1] and len(set(uids[0])) == 4
    assert first["study"].series_instance_uid == again["study"].series_instance_uid
    assert pydicom.dcmread(first["files"][0]).SOPClassUID == IODS["vlm"][0]
    sc = export_images(colour_samples_dir, tmp_path / "c", fmt="dicom", iod="sc")
    assert sc["study"].series_instance_uid != first["study"].series_instance_uid  # another IOD, another series


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dicom3tools not installed")
@pytest.mark.parametrize("iod", COLOUR_IODS)
def test_colour_dciodvfy_has_no_errors_except_unknown_synthetic_data_tag(colour_samples_dir, tmp_path, iod, capsys):
    path = export_images(colour_samples_dir, tmp_path / "out", fmt="dicom", iod=iod)["files"][0]
    out = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
    lines = (out.stdout + out.stderr).splitlines()
    with capsys.disabled():
        print(f"\n--- dciodvfy RGB {iod} ---\n" + "\n".join(lines))
    assert ("VLMicroscopicImage" if iod == "vlm" else "SCImage") in lines
    assert DCIODVFY_SYNTHETIC_LINE in lines
    assert [line for line in lines if line.startswith("Error") and line != DCIODVFY_SYNTHETIC_LINE] == []


@pytest.mark.skipif(shutil.which("dcmdump") is None, reason="dcmtk not installed")
def test_dcmdump_reads_colour_file(colour_samples_dir, tmp_path):
    path = export_images(colour_samples_dir, tmp_path / "out", fmt="dicom")["files"][0]
    out = subprocess.run(["dcmdump", "-E", str(path)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "E:" not in out.stderr, out.stderr
    assert "(0028,0004) CS [RGB]" in out.stdout and "=VLMicroscopicImageStorage" in out.stdout


def test_write_dicom_refuses_a_colour_grey_mismatch(tmp_path):
    kw = {"study": SyntheticStudy(), "instance_number": 1, "class_name": "x", "provenance": PROVENANCE}
    rgb = np.random.default_rng(0).uniform(0, 1, (8, 8, 3))
    for iod in ("cr", "mr"):
        with pytest.raises(ValueError, match=f"RGB colour .3 channels., but --iod {iod} .* takes grey only; give "
                           r"--iod sc \(Secondary Capture Image\) or vlm"):
            write_dicom(rgb, tmp_path / "a.dcm", iod=iod, pixel_spacing=(1, 1), **kw)
    with pytest.raises(ValueError, match="grey .1 channel., but --iod vlm .* takes RGB colour only"):
        write_dicom(rgb[..., 0], tmp_path / "a.dcm", iod="vlm", **kw)
    with pytest.raises(ValueError, match="RGB image"):
        write_dicom(np.zeros((8, 8, 4)), tmp_path / "a.dcm", iod="vlm", **kw)
    assert not list(tmp_path.iterdir())


def test_png_and_nifti_keep_colour(colour_samples_dir, tmp_path):
    export_images(colour_samples_dir, tmp_path / "png", fmt="png")
    export_images(colour_samples_dir, tmp_path / "nii", fmt="nifti", pixel_spacing=(0.5, 0.25))
    for png_row, nii_row in zip(read_manifest(tmp_path / "png"), read_manifest(tmp_path / "nii"), strict=True):
        source = png_pixels(colour_samples_dir, png_row["source"])
        png = Image.open(tmp_path / "png" / png_row["file"])
        assert png.mode == "RGB"
        np.testing.assert_array_equal(np.asarray(png), source)
        path = tmp_path / "nii" / nii_row["file"]
        nii = nib.load(path)  # NIfTI RGB24 (datatype 128), x = columns, y = rows
        assert int(nii.header["datatype"]) == 128 and nii.shape == (64, 64, 1)
        assert nii.header.get_zooms()[:2] == (0.25, 0.5)
        data = np.asanyarray(nii.dataobj)[:, :, 0].T
        np.testing.assert_array_equal(np.stack([data["R"], data["G"], data["B"]], -1), source)
        image = sitk.ReadImage(str(path))  # what ITK-based viewers (3D Slicer, ITK-SNAP) read: 3 components
        assert image.GetNumberOfComponentsPerPixel() == 3
        np.testing.assert_array_equal(sitk.GetArrayFromImage(image)[0], source)


def test_cli_colour_grey_mismatch_is_one_line_and_exit_2(colour_samples_dir, samples_dir, tmp_path):
    cases = {
        "RGB as CR": ([colour_samples_dir, "--iod", "cr"], "the samples are RGB colour (3 channels), but --iod cr "
                      "(Computed Radiography Image) takes grey only; give --iod sc (Secondary Capture Image) or vlm"),
        "RGB as MR": ([colour_samples_dir, "--iod", "mr", "--field-of-view-mm", "0.1"], "--iod mr (MR Image) takes "
                      "grey only; give --iod sc"),
        "grey as VL": ([samples_dir, "--iod", "vlm"], "the samples are grey (1 channel), but --iod vlm (VL "
                       "Microscopic Image) takes RGB colour only; give --iod sc (Secondary Capture Image), cr"),
        "RGB as png16": ([colour_samples_dir, "--format", "png16"], "--format png16 is grey only (16-bit PNG); "
                         "give --format png"),
    }  # fmt: skip
    for n, (name, (args, message)) in enumerate(cases.items()):
        out = tmp_path / f"o{n}"
        run = medgen("export", *args, "--out", out)
        assert run.returncode == 2, (name, run.stdout, run.stderr)
        errors = run.stderr.strip().splitlines()
        assert len(errors) == 1 and errors[0].startswith("error: ") and message in errors[0], (name, errors)
        assert str(args[0] / "samples.jsonl") in errors[0]  # names the file
        assert not out.exists()  # stopped before writing anything
    ok = medgen("export", colour_samples_dir, "--out", tmp_path / "ok")
    assert ok.returncode == 0 and "exported 4 dicom file(s)" in ok.stdout, ok.stderr


# --- real Orthanc: RGB files stored and read back byte-identical ----------------------------------------------------


@pytest.fixture
def colour_series(colour_samples_dir, tmp_path):
    summary = export_images(colour_samples_dir, tmp_path / "dicom", fmt="dicom", iod="vlm")
    return summary, {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID: p for p in summary["files"]}


@pytest.mark.slow
def test_orthanc_c_store_round_trip_of_rgb_is_byte_identical(orthanc, colour_series, capsys):
    summary, by_uid = colour_series
    study = summary["study"]
    results = send(summary["files"], f"dimse://{orthanc.aet}@127.0.0.1:{orthanc.dicom_port}")
    assert [r.status for r in results] == ["sent"] * 4, [r.detail for r in results]
    client = DimseClient(orthanc.aet, "127.0.0.1", orthanc.dicom_port, calling_aet=orthanc.scu_aet)
    got = client.get({"StudyInstanceUID": study.study_instance_uid, "SeriesInstanceUID": study.series_instance_uid})
    assert sorted(ds.SOPInstanceUID for ds in got) == sorted(by_uid)
    for ds in got:
        sent = pydicom.dcmread(by_uid[ds.SOPInstanceUID])
        assert (ds.PhotometricInterpretation, ds.SamplesPerPixel, ds.SOPClassUID) == ("RGB", 3, IODS["vlm"][0])
        assert ds.PixelData == sent.PixelData  # byte-identical
        np.testing.assert_array_equal(ds.pixel_array, sent.pixel_array)
    uid = next(iter(by_uid))
    raw = orthanc.rest(f"/instances/{orthanc.rest('/tools/lookup', method='POST', data=uid).json()[0]['ID']}/file")
    assert pydicom.dcmread(io.BytesIO(raw.content)).PixelData == pydicom.dcmread(by_uid[uid]).PixelData
    with capsys.disabled():
        print(f"\nC-STORE/C-GET RGB: {len(got)} instance(s), {sum(len(ds.PixelData) for ds in got)} pixel bytes "
              "read back, all byte-identical")


@pytest.mark.slow
def test_orthanc_stow_rs_round_trip_of_rgb_is_byte_identical(orthanc, colour_series, monkeypatch, capsys):
    summary, by_uid = colour_series
    study = summary["study"]
    monkeypatch.setenv("MEDGEN_PACS_USER", orthanc.user)
    monkeypatch.setenv("MEDGEN_PACS_PASSWORD", orthanc.password)
    results = send(summary["files"], f"dicomweb://127.0.0.1:{orthanc.http_port}/dicom-web")
    assert [r.status for r in results] == ["sent"] * 4, [r.detail for r in results]
    web = DicomwebClient(f"{orthanc.url}/dicom-web", orthanc.auth)
    total = 0
    for uid, path in by_uid.items():
        ds = web.retrieve(study.study_instance_uid, study.series_instance_uid, uid)
        assert ds.PhotometricInterpretation == "RGB" and ds.PixelData == pydicom.dcmread(path).PixelData
        total += len(ds.PixelData)
    with capsys.disabled():
        print(f"\nSTOW-RS/WADO-RS RGB: {len(by_uid)} instance(s), {total} pixel bytes read back, all byte-identical")
