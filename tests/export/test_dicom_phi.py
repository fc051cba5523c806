"""Nothing from a real header reaches an exported file. Real chest X-rays are wrapped in DICOMs that carry a
patient's name, MRN, birth date, institution, referring physician, accession number and study text; a model is
trained on them, samples are made and exported as SC, CR and MR (by ``medgen export`` and by the bundle's own
exporter); not one of those strings, nor a source UID, appears in any exported file's bytes, in pydicom's reading
of it or in ``dcmdump``'s, and each file passes ``dciodvfy``."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from synthetic_dicom import dicom_file

from medgen.export.dicom_writer import export_images

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}
TIMEOUT = 900
TINY = ["--image_size", "32", "--unet_channels", "[8,16]", "--attention_levels", "[False,False]",
        "--num_res_blocks", "1", "--norm_num_groups", "8", "--network_def#num_head_channels", "8"]
DCIODVFY_SYNTHETIC_LINE = (
    "Error - Attribute with an even group number is not a recognized standard attribute - (0x0008,0x001c)  ? "
)
PHI = {
    "PatientName": "HOLLOWAY^MARGARET^ANN",
    "PatientBirthDate": "19470312",
    "PatientAddress": "14 QUARRY LANE SPRINGFIELD",
    "PatientTelephoneNumbers": "5550142377",
    "OtherPatientIDs": "NHS4857731902",
    "InstitutionName": "ST BARNABAS GENERAL HOSPITAL",
    "InstitutionAddress": "200 INFIRMARY ROAD",
    "ReferringPhysicianName": "OKONKWO^CHIDI",
    "PerformingPhysicianName": "VANTERPOOL^ROSALIND",
    "OperatorsName": "KESTEVEN^DORIS",
    "AccessionNumber": "ACC88231907",
    "StudyID": "ST77120",
    "StudyDate": "20190514",
    "StudyDescription": "THORAX PA HOLLOWAY FOLLOWUP",
    "SeriesDescription": "PORTABLE WARD7B",
    "StationName": "RADRM3XR",
}


def phi_strings(tree: Path) -> list[str]:
    """Every identifying string in the real headers: the values above (and their parts), each MRN, the UIDs."""
    found = set()
    for value in PHI.values():
        found.add(value)
        found.update(part for part in value.replace("^", " ").split() if len(part) >= 5)
    for path in tree.rglob("*.dcm"):
        ds = pydicom.dcmread(path)
        found.update([str(ds.PatientID), str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID),
                      str(ds.SOPInstanceUID)])
    return sorted(found)


def leaks(data: str | bytes, strings: list[str]) -> list[str]:
    text = data.decode("latin-1") if isinstance(data, bytes) else data
    return [s for s in strings if s.upper() in text.upper()]


@pytest.fixture(scope="module")
def phi_tree(kermany: Path, tmp_path_factory) -> Path:
    """4 real chest X-rays per class as DICOM files named by MRN, their headers full of a patient's details."""
    root = tmp_path_factory.mktemp("phi") / "hospital_export"
    for label in ("NORMAL", "PNEUMONIA"):
        (root / label).mkdir(parents=True)
        for i, src in enumerate(sorted((kermany / "train" / label).glob("*.jpeg"))[:4]):
            pixels = np.asarray(Image.open(src).convert("L").resize((64, 64)), dtype=np.uint16) * 16
            mrn = f"MRN{label[:2]}{i:05d}"
            dicom_file(root / label / f"{mrn}.dcm", pixels, modality="CR", header={**PHI, "PatientID": mrn})
    return root


def medgen(*args: str) -> subprocess.CompletedProcess:
    run = subprocess.run([sys.executable, "-m", "medgen.cli", *args], capture_output=True, text=True, cwd=REPO,
                         env=ENV, timeout=TIMEOUT)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return run


@pytest.fixture(scope="module")
def exported(phi_tree: Path, tmp_path_factory) -> dict[str, Path]:
    """Train a tiny model on the PHI tree, sample 2 per class (the bundle exporting MR), export SC and 12-bit CR."""
    work = tmp_path_factory.mktemp("phi_run")
    medgen("train", "cxr_ddpm", "--dataset-dir", str(phi_tree), "--output_dir", str(work / "run"), "--batch_size", "2",
           "--max_epochs", "1", "--num_workers", "0", "--sample_interval", "5", "--samples_per_class_in_grid", "1",
           *TINY)
    samples = work / "samples"
    medgen("sample", "cxr_ddpm", "--ckpt", str(work / "run" / "model.pt"), "--out", str(samples), "--per-class", "2",
           "--steps", "3", "--export_format", "dicom", "--dicom_iod", "mr")
    medgen("export", str(samples), "--out", str(work / "sc"), "--iod", "sc")
    medgen("export", str(samples), "--out", str(work / "cr"), "--iod", "cr", "--bits", "12")
    return {"mr": samples / "export_dicom", "sc": work / "sc", "cr": work / "cr"}


def test_the_inputs_really_carry_phi(phi_tree):
    """The search is not vacuous: in a source file it finds every value, that file's MRN and its UIDs."""
    strings = phi_strings(phi_tree)
    source = next(phi_tree.rglob("*.dcm"))
    ds = pydicom.dcmread(source)
    own = {str(ds.PatientID), str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID)}
    others = {s for s in strings if s.startswith("MRN") or "." in s} - own
    assert set(leaks(source.read_bytes(), strings)) == set(strings) - others
    assert len(strings) > 40


@pytest.mark.slow
@pytest.mark.parametrize("iod", ["sc", "cr", "mr"])
def test_no_header_value_reaches_an_exported_file(exported, phi_tree, iod, capsys):
    strings = phi_strings(phi_tree)
    folder = exported[iod]
    dicoms = sorted(folder.rglob("*.dcm"))
    assert len(dicoms) == 4
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):  # the DICOMs and manifest.csv
        assert leaks(path.read_bytes(), strings) == [], path
    for path in dicoms:
        ds = pydicom.dcmread(path)
        assert ds[0x0008, 0x001C].value == "YES" and str(ds.PatientName).startswith("SYNTHETIC^")
        values = [f"{elem.keyword}={elem.value}" for elem in ds.iterall() if elem.keyword != "PixelData"]
        values += [f"{elem.keyword}={elem.value}" for elem in ds.file_meta.iterall()]
        assert leaks("\n".join(values), strings) == [], path
        if shutil.which("dcmdump"):
            dump = subprocess.run(["dcmdump", "+L", str(path)], capture_output=True, text=True, timeout=60)
            assert dump.returncode == 0 and "PatientName" in dump.stdout
            assert leaks(dump.stdout, strings) == [], path
    if shutil.which("dciodvfy"):
        out = subprocess.run(["dciodvfy", str(dicoms[0])], capture_output=True, text=True, timeout=60)
        lines = (out.stdout + out.stderr).splitlines()
        with capsys.disabled():
            print(f"\n--- dciodvfy {iod} ({dicoms[0].name}) ---\n" + "\n".join(lines))
        assert DCIODVFY_SYNTHETIC_LINE in lines
        assert [line for line in lines if line.startswith("Error") and line != DCIODVFY_SYNTHETIC_LINE] == []


def test_samples_pointing_at_phi_sources_export_none_of_it(phi_tree, samples_dir, tmp_path):
    """A samples.jsonl that names the real DICOMs (as an image, through a symlink, in extra fields) exports the
    good lines, refuses the others, and no header value appears in the output."""
    strings = phi_strings(phi_tree)
    sources = sorted(phi_tree.rglob("*.dcm"))
    shutil.copy(sources[0], samples_dir / "NORMAL" / "copied.png")  # a DICOM under an image name
    (samples_dir / "NORMAL" / "linked.png").symlink_to(sources[1])
    index = samples_dir / "samples.jsonl"
    records = [json.loads(line) for line in index.read_text().splitlines()]
    for record in records:  # extra fields a careless pipeline might add: they are not exported
        record.update(source_dicom=str(sources[2]), patient=PHI["PatientName"], accession=PHI["AccessionNumber"])
    records += [{**records[0], "file": "NORMAL/copied.png"}, {**records[0], "file": "NORMAL/linked.png"},
                {**records[0], "file": str(sources[3])}]
    index.write_text("".join(json.dumps(r) + "\n" for r in records))
    for iod in ("sc", "cr", "mr"):
        summary = export_images(samples_dir, tmp_path / iod, iod=iod, field_of_view_mm=240 if iod == "mr" else None)
        assert summary["written"] == 4 and [n for n, _ in summary["errors"]] == [5, 6, 7]
        for path in (tmp_path / iod).rglob("*"):
            if path.is_file():
                assert leaks(path.read_bytes(), strings) == [], path
