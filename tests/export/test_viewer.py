"""A viewer sees it: Orthanc's built-in explorer, rendered by headless chromium, shows a stored synthetic instance."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image

from medgen.export.dicom_writer import export_images
from medgen.export.pacs import send

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARTIFACTS = REPO / "test-artifacts"


def chromium(url: str, *args: str) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory() as profile:  # its own profile: another chromium (another test worker) may run
        cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-dev-shm-usage", "--virtual-time-budget=8000", "--window-size=1280,1000",
               f"--user-data-dir={profile}", *args, url]  # fmt: skip
        return subprocess.run(cmd, capture_output=True, text=True, timeout=90)


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed")
def test_orthanc_explorer_shows_the_synthetic_instance(orthanc, samples_dir, tmp_path):
    summary = export_images(samples_dir, tmp_path / "dicom", fmt="dicom", iod="cr", patient_name="SYNTHETIC^VIEWER",
                            body_part="CHEST")  # fmt: skip
    results = send(summary["files"], f"dimse://{orthanc.aet}@127.0.0.1:{orthanc.dicom_port}")
    assert {r.status for r in results} == {"sent"}
    ds = pydicom.dcmread(summary["files"][0], stop_before_pixels=True)
    orthanc_id = orthanc.rest("/tools/lookup", method="POST", data=ds.SOPInstanceUID).json()[0]["ID"]
    # credentials in the URL: chromium answers Orthanc's basic-auth challenge for the page and its XHRs
    base = f"http://{orthanc.user}:{orthanc.password}@127.0.0.1:{orthanc.http_port}"
    page = f"{base}/app/explorer.html#instance?uuid={orthanc_id}"

    dom = chromium(page, "--dump-dom").stdout
    assert ds.SOPInstanceUID in dom, dom[-2000:]
    assert "SYNTHETIC^VIEWER" in dom and "class=NORMAL" in dom and "CHEST" in dom

    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "orthanc_explorer_instance.png"
    shot.unlink(missing_ok=True)
    chromium(page, f"--screenshot={shot}")
    assert shot.is_file() and shot.stat().st_size > 10_000
    grey = np.asarray(Image.open(shot).convert("L"), dtype=np.float32)
    assert grey.std() > 10  # a rendered page, not a blank one

    preview = ARTIFACTS / "orthanc_instance_preview.png"  # Orthanc rendering the pixel data itself
    preview.unlink(missing_ok=True)
    chromium(f"{base}/instances/{orthanc_id}/preview", f"--screenshot={preview}")
    rendered = np.asarray(Image.open(preview).convert("L"))
    assert (rendered > 80).sum() > 0.3 * 64 * 64  # the 64x64 chest image is drawn on the dark page
