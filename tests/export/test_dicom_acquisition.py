"""What an export claims about acquisition (pixel spacing and its origin, body part, view) and its UIDs (derived
from what the images are, so a second export of the same images has the same UIDs)."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
from pathlib import Path

import pydicom
import pytest

from medgen.export.cli_commands import export_command
from medgen.export.dicom_writer import export_images
from medgen.networks.weights_meta import write_sidecar
from tests.export.conftest import make_samples_dir

REPO = Path(__file__).resolve().parents[2]
CXR_WEIGHTS = REPO / "bundles" / "cxr_ddpm" / "models" / "model.pt"
DCIODVFY_SYNTHETIC_LINE = (
    "Error - Attribute with an even group number is not a recognized standard attribute - (0x0008,0x001c)  ? "
)


def first(summary: dict) -> pydicom.Dataset:
    return pydicom.dcmread(summary["files"][0], stop_before_pixels=True)


def uids(out: Path) -> dict[str, tuple[str, str, str]]:
    with open(out / "manifest.csv", newline="") as f:
        return {r["source"]: (r["sop_instance_uid"], r["series_instance_uid"], r["study_instance_uid"])
                for r in csv.DictReader(f)}


@pytest.fixture
def cxr_samples(tmp_path) -> Path:
    """Samples as `medgen sample cxr_ddpm` records them: the shipped weights' path and sha256 on every line."""
    if not CXR_WEIGHTS.is_file():
        pytest.skip("bundles/cxr_ddpm/models/model.pt not present")
    sha = json.loads(CXR_WEIGHTS.with_suffix(".json").read_text())["weights_sha256"]
    return make_samples_dir(tmp_path / "cxr", checkpoint=str(CXR_WEIGHTS), checkpoint_sha256=sha)


@pytest.fixture
def brain_samples(tmp_path) -> Path:
    """128-px samples of weights whose metadata says brain_mri_score (a weights file with its sidecar)."""
    weights = tmp_path / "brain" / "model.pt"
    weights.parent.mkdir()
    weights.write_bytes(b"brain weights stand-in")
    write_sidecar(weights, {"bundle": "brain_mri_score", "image_size": 128, "classes": ["glioma", "notumor"]})
    return make_samples_dir(tmp_path / "brain_samples", size=128, checkpoint=str(weights),
                            checkpoint_sha256="b" * 64)  # fmt: skip


# --- pixel spacing, view and body part ------------------------------------------------------------------------------


def test_cxr_bundle_samples_get_the_nominal_spacing_ap_view_and_chest(cxr_samples, tmp_path):
    cr = first(export_images(cxr_samples, tmp_path / "cr", iod="cr"))
    assert list(cr.ImagerPixelSpacing) == list(cr.PixelSpacing) == [4.6875, 4.6875]  # 300 mm / 64 px, not 1.0
    assert cr.ViewPosition == "AP" and cr.BodyPartExamined == "CHEST" and list(cr.PatientOrientation) == ["L", "F"]
    assert "pixel_spacing=4.6875\\4.6875 mm over 64x64 px, nominal: Kermany" in cr.ImageComments
    assert "field of view 300 mm" in cr.ImageComments and "field of view 300 mm" in cr.DerivationDescription
    sc = first(export_images(cxr_samples, tmp_path / "sc", iod="sc"))
    assert list(sc.NominalScannedPixelSpacing) == list(sc.PixelSpacing) == [4.6875, 4.6875]
    assert "ViewPosition" not in sc  # no such attribute in Secondary Capture


def test_samples_without_a_known_source_claim_no_spacing_view_or_body_part(samples_dir, tmp_path):
    ds = first(export_images(samples_dir, tmp_path / "cr", iod="cr"))
    for keyword in ("PixelSpacing", "ImagerPixelSpacing", "BodyPartExamined"):
        assert keyword not in ds
    assert ds.ViewPosition == "" and ds.PatientOrientation == ""  # Type 2: present, empty
    assert "pixel_spacing=unknown" in ds.ImageComments


def test_spacing_from_the_user_or_the_samples_record(samples_dir, tmp_path):
    ds = first(export_images(samples_dir, tmp_path / "fov", iod="cr", field_of_view_mm=350, view_position="PA"))
    assert list(ds.ImagerPixelSpacing) == [5.46875, 5.46875] and ds.ViewPosition == "PA"
    assert "given by the user (--field-of-view-mm)" in ds.ImageComments
    ds = first(export_images(samples_dir, tmp_path / "px", iod="sc", pixel_spacing=(0.7,)))
    assert list(ds.PixelSpacing) == [0.7, 0.7] and "given by the user (--pixel-spacing)" in ds.ImageComments
    index = samples_dir / "samples.jsonl"
    lines = [json.loads(x) for x in index.read_text().splitlines()]
    lines[0].update(source_pixel_spacing=[0.1, 0.12], source_size=[2000, 1600])  # a DICOM source, 2000x1600 px
    lines[1]["pixel_spacing"] = [0.3, 0.4]
    index.write_text("".join(json.dumps(x) + "\n" for x in lines))
    summary = export_images(samples_dir, tmp_path / "rec", iod="mr")
    a, b = (pydicom.dcmread(f, stop_before_pixels=True) for f in summary["files"][:2])
    assert [float(v) for v in a.PixelSpacing] == [3.125, 3.0]  # 0.1 * 2000 / 64, 0.12 * 1600 / 64
    assert "source spacing 0.1\\0.12 mm x source size 2000x1600 / image size" in a.ImageComments
    assert [float(v) for v in b.PixelSpacing] == [0.3, 0.4] and "recorded in samples.jsonl" in b.ImageComments


def test_brain_bundle_mr_export_says_head_and_no_chest(brain_samples, tmp_path):
    mr = pydicom.dcmread(export_images(brain_samples, tmp_path / "mr", iod="mr")["files"][0])
    assert mr.BodyPartExamined == "HEAD" and [float(v) for v in mr.PixelSpacing] == [1.875, 1.875]  # 240 mm / 128
    assert "ViewPosition" not in mr and "PatientOrientation" not in mr
    assert "CHEST" not in str(mr) and "Nickparvar" in mr.ImageComments
    cr = first(export_images(brain_samples, tmp_path / "cr", iod="cr"))
    assert cr.BodyPartExamined == "HEAD" and cr.ViewPosition == "" and cr.PatientOrientation == ""


def test_mr_without_any_spacing_is_refused_before_writing(samples_dir, tmp_path, capsys):
    assert export_command(samples_dir, tmp_path / "out", iod="mr") == 2
    err = capsys.readouterr().err
    assert "samples.jsonl: the samples record no pixel spacing and MR requires one" in err
    assert "--field-of-view-mm" in err and not (tmp_path / "out").exists()


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dicom3tools not installed")
def test_dciodvfy_accepts_the_bundle_exports(cxr_samples, brain_samples, tmp_path, capsys):
    files = {
        "cxr cr": export_images(cxr_samples, tmp_path / "cr", iod="cr", bits=12)["files"][0],
        "cxr sc": export_images(cxr_samples, tmp_path / "sc", iod="sc")["files"][0],
        "brain mr": export_images(brain_samples, tmp_path / "mr", iod="mr")["files"][0],
    }
    for name, path in files.items():
        out = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
        lines = (out.stdout + out.stderr).splitlines()
        with capsys.disabled():
            print(f"\n--- dciodvfy {name} ---\n" + "\n".join(lines))
        assert DCIODVFY_SYNTHETIC_LINE in lines
        assert [line for line in lines if line.startswith("Error") and line != DCIODVFY_SYNTHETIC_LINE] == []


# --- UIDs derived from what the images are --------------------------------------------------------------------------


def test_two_exports_of_the_same_samples_have_the_same_uids(samples_dir, tmp_path):
    a = export_images(samples_dir, tmp_path / "a", iod="cr")
    b = export_images(samples_dir, tmp_path / "b", iod="cr")
    assert uids(tmp_path / "a") == uids(tmp_path / "b") and len(uids(tmp_path / "a")) == 4
    assert len({u[0] for u in uids(tmp_path / "a").values()}) == 4  # one SOPInstanceUID per image
    assert (first(a).PatientID, first(a).PatientName) == (first(b).PatientID, first(b).PatientName)
    for uid in (u for row in uids(tmp_path / "a").values() for u in row):
        assert uid.startswith("2.25.") and len(uid) <= 64 and pydicom.uid.UID(uid).is_valid


def test_seed_class_iod_weights_and_root_each_change_the_uid(samples_dir, tmp_path):
    export_images(samples_dir, tmp_path / "base", iod="cr")
    base = uids(tmp_path / "base")
    index = samples_dir / "samples.jsonl"
    original = index.read_text()
    lines = [json.loads(x) for x in original.splitlines()]
    lines[0]["seed"] = 1000  # another seed
    lines[1]["class"] = "PNEUMONIA"  # another class
    index.write_text("".join(json.dumps(x) + "\n" for x in lines))
    export_images(samples_dir, tmp_path / "changed", iod="cr")
    changed = uids(tmp_path / "changed")
    sources = [x["file"] for x in lines]
    assert changed[sources[0]][0] != base[sources[0]][0] and changed[sources[1]][0] != base[sources[1]][0]
    assert [changed[s][0] for s in sources[2:]] == [base[s][0] for s in sources[2:]]  # the others unchanged
    index.write_text(original)
    export_images(samples_dir, tmp_path / "sc", iod="sc")
    sc = uids(tmp_path / "sc")
    assert all(sc[s][0] != base[s][0] and sc[s][1] != base[s][1] for s in sources)  # IOD: other instances, series
    assert all(sc[s][2] == base[s][2] for s in sources)  # ... in the same study
    index.write_text(original.replace(lines[0]["checkpoint_sha256"], "e" * 64))  # other weights
    export_images(samples_dir, tmp_path / "weights", iod="cr")
    other = uids(tmp_path / "weights")
    assert all(other[s][0] != base[s][0] and other[s][2] != base[s][2] for s in sources)
    index.write_text(original)
    root = "1.2.826.0.1.3680043.10.1234.5678.9012.3456.7890.12"  # 50 characters
    export_images(samples_dir, tmp_path / "root", iod="cr", uid_root=root)
    rooted = uids(tmp_path / "root")
    for s in sources:
        for uid in rooted[s]:
            assert uid.startswith(root + ".") and len(uid) <= 64 and pydicom.uid.UID(uid).is_valid
    export_images(samples_dir, tmp_path / "root2", iod="cr", uid_root=root)
    assert uids(tmp_path / "root2") == rooted


def test_samples_without_weights_sha_get_uids_from_their_pixels(tmp_path):
    samples = make_samples_dir(tmp_path / "s", checkpoint_sha256=None)
    export_images(samples, tmp_path / "a", iod="sc")
    export_images(samples, tmp_path / "b", iod="sc")
    assert uids(tmp_path / "a") == uids(tmp_path / "b")
    assert len({u[0] for u in uids(tmp_path / "a").values()}) == 4


def test_a_bad_uid_root_is_refused_in_one_line(samples_dir, tmp_path, capsys):
    assert export_command(samples_dir, tmp_path / "out", uid_root="1.2.abc") == 2
    err = capsys.readouterr().err
    assert err.startswith("error: UID root '1.2.abc' is not usable") and "--uid-root" in err
