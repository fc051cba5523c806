"""A colour (RGB) model served next to a grey one: channels in /api/v1/models, RGB PNG results and previews, RGB
DICOM (VL Microscopic Image or Secondary Capture), 422 with one line for a DICOM IOD the model's images do not fit,
and the web page showing the colour images, in headless chromium."""

from __future__ import annotations

import io
import json
import shutil
import zipfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from serve_harness import ARTIFACTS, Page, Server, make_key, wait_for

pytestmark = pytest.mark.slow

JOB = {"bundle": "rgb", "class_label": "PNEUMONIA", "num_images": 2, "seed": 5, "steps": 2}
VLM = "1.2.840.10008.5.1.4.1.1.77.1.2"
SC = "1.2.840.10008.5.1.4.1.1.7"


def fit_colour_gate(folder: Path, size: int = 16) -> None:
    """A gate beside the weights over a (seeded, untrained) 3-channel domain network, as ``medgen fit-gate`` writes
    it for a colour data set."""
    import torch

    from medgen.metrics.classifier import build_classifier, save_classifier
    from medgen.metrics.features import DomainFeatures
    from medgen.metrics.quality_gate import QualityGate

    torch.manual_seed(0)
    weights = save_classifier(build_classifier(2, in_channels=3).eval(), folder / "domain_classifier.pt",
                              ["NORMAL", "PNEUMONIA"], size)
    reference = np.random.default_rng(0).uniform(0, 1, (24, 3, size, size)).astype(np.float32)
    QualityGate(k=3).fit(DomainFeatures(weights)(reference)).save(folder / "quality_gate.npz")
    (folder / "quality_gate.npz.json").write_text(json.dumps({"features": "domain", "size": size}))


@pytest.fixture(scope="module")
def colour_server(tmp_path_factory: pytest.TempPathFactory, colour_weights: Path,
                  micro_weights: Path) -> Iterator[Server]:
    """``rgb`` and ``rgb_gated`` (3 channels; the second with a colour quality gate) and ``grey`` (1 channel), all
    the micro cxr_ddpm config."""
    gated = tmp_path_factory.mktemp("rgb_gated")
    shutil.copy(colour_weights, gated / "model.pt")
    fit_colour_gate(gated)
    srv = Server(tmp_path_factory.mktemp("serve_rgb"),
                 {"rgb": colour_weights, "rgb_gated": gated / "model.pt", "grey": micro_weights},
                 extra=("--override=rgb:channels=3", "--override=rgb_gated:channels=3")).start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def key(colour_server: Server) -> str:
    return make_key(colour_server.data_dir, "carol", 4)


def run_job(client: httpx.Client, **changes) -> tuple[dict, zipfile.ZipFile]:
    response = client.post("/api/v1/generate", json={**JOB, **changes})
    assert response.status_code == 202, response.text
    info = wait_for(client, response.json()["job_id"], ("succeeded", "failed"))
    assert info["status"] == "succeeded", info.get("error")
    return info, zipfile.ZipFile(io.BytesIO(client.get(info["result_url"]).content))


def is_colour(rgb: np.ndarray) -> bool:
    """An RGB array whose channels differ somewhere (not grey stored as RGB)."""
    return rgb.ndim == 3 and rgb.shape[-1] == 3 and bool((rgb[..., 0] != rgb[..., 1]).any())


def test_models_report_channels_and_the_dicom_iods_that_fit(colour_server: Server, key: str) -> None:
    with colour_server.client(key) as client:
        models = {m["name"]: m for m in client.get("/api/v1/models").json()["models"]}
    assert (models["rgb"]["channels"], models["rgb"]["dicom_iods"]) == (3, ["sc", "vlm"])
    assert (models["grey"]["channels"], models["grey"]["dicom_iods"]) == (1, ["sc", "cr", "mr"])


def test_colour_jobs_give_rgb_pngs_and_previews(colour_server: Server, key: str) -> None:
    with colour_server.client(key) as client:
        info, archive = run_job(client)
        pngs = sorted(n for n in archive.namelist() if n.endswith(".png") and not n.startswith("grid"))
        assert len(pngs) == 2
        for name in pngs:
            image = Image.open(io.BytesIO(archive.read(name)))
            assert (image.mode, image.size) == ("RGB", (16, 16)) and is_colour(np.asarray(image))
        previews = client.get(info["images_url"]).json()
        for preview in previews:
            image = Image.open(io.BytesIO(client.get(preview["url"]).content))
            assert image.mode == "RGB" and is_colour(np.asarray(image))
        _, grey = run_job(client, bundle="grey", class_label="NORMAL")  # the grey model stays grey
        name = next(n for n in grey.namelist() if n.endswith(".png") and not n.startswith("grid"))
        assert Image.open(io.BytesIO(grey.read(name))).mode == "L"


def test_quality_check_scores_the_colour_images(colour_server: Server, key: str) -> None:
    with colour_server.client(key) as client:
        info, archive = run_job(client, bundle="rgb_gated", quality_check=True)
    quality = info["metrics"]["quality"]
    assert quality["passed"] + quality["failed"] == 2
    scores = json.loads(archive.read("quality.json"))["images"]
    assert len(scores) == 2 and all(np.isfinite(s["realism_score"]) for s in scores)


@pytest.mark.parametrize(("options", "sop_class"), [({}, VLM), ({"iod": "vlm"}, VLM), ({"iod": "sc"}, SC)])
def test_colour_dicom_jobs_write_rgb(colour_server: Server, key: str, options: dict, sop_class: str) -> None:
    import pydicom

    with colour_server.client(key) as client:
        info, archive = run_job(client, output_format="dicom", **options)
    names = sorted(n for n in archive.namelist() if n.endswith(".dcm"))
    assert len(names) == 2
    for name in names:
        ds = pydicom.dcmread(io.BytesIO(archive.read(name)))
        assert ds.SOPClassUID == sop_class and ds.SyntheticData == "YES"
        assert (ds.PhotometricInterpretation, ds.SamplesPerPixel, ds.BitsAllocated) == ("RGB", 3, 8)
        assert is_colour(ds.pixel_array) and ds.pixel_array.shape == (16, 16, 3)


@pytest.mark.parametrize(("changes", "field", "message", "allowed"), [
    ({"iod": "cr"}, "iod", "bundle rgb makes images that are RGB colour (3 channels), but iod cr (Computed "
     "Radiography Image) takes grey only; give iod sc (Secondary Capture Image) or vlm (VL Microscopic Image)",
     ["sc", "vlm"]),
    ({"iod": "mr", "field_of_view_mm": 240}, "iod", "but iod mr (MR Image) takes grey only", ["sc", "vlm"]),
    ({"bundle": "grey", "class_label": "NORMAL", "iod": "vlm"}, "iod", "bundle grey makes images that are grey (1 "
     "channel), but iod vlm (VL Microscopic Image) takes RGB colour only; give iod sc (Secondary Capture Image), cr "
     "(Computed Radiography Image) or mr (MR Image)", ["sc", "cr", "mr"]),
    ({"bits": 12}, "bits", "bundle rgb makes RGB colour images, written as 8 bits a channel", None),
])  # fmt: skip
def test_an_iod_the_images_do_not_fit_is_a_422_with_one_line(colour_server: Server, key: str, changes: dict,
                                                            field: str, message: str, allowed: list | None) -> None:
    with colour_server.client(key) as client:
        response = client.post("/api/v1/generate", json={**JOB, "output_format": "dicom", **changes})
    assert response.status_code == 422, response.text
    (detail,) = response.json()["detail"]
    assert detail["loc"] == ["body", field] and message in detail["msg"] and "\n" not in detail["msg"], detail
    assert detail.get("allowed") == allowed


def test_the_page_shows_colour_images(colour_server: Server, key: str, browser: tuple[Page, Path]) -> None:
    page, _ = browser
    page.call("Page.navigate", url=f"{colour_server.url}/ui")
    page.wait("document.readyState === 'complete' && !!document.getElementById('generate')")
    page.set_value("api-key", key, "input")
    page.click("save-key")
    page.wait("document.getElementById('bundle').options.length === 3")
    page.set_value("bundle", "rgb")
    page.wait("document.body.dataset.channels === '3'")
    assert page.js("document.getElementById('model-kind').textContent").startswith("RGB colour images, 16×16 px")
    assert "rgb (colour)" in page.js("[...document.getElementById('bundle').options].map(o => o.text).join('|')")
    page.set_value("num_images", 2, "input")
    page.set_value("steps", 2)
    page.click("generate")
    page.wait("document.body.dataset.gallery === '2'")
    page.wait("[...document.querySelectorAll('#gallery img')].every(i => i.complete && i.naturalWidth === 16)")
    # the pixels the page drew: some differ between red and green (a grey picture has R = G = B everywhere)
    differing = page.js("""[...document.querySelectorAll('#gallery img')].map(img => {
        const c = document.createElement('canvas'); c.width = img.naturalWidth; c.height = img.naturalHeight;
        const g = c.getContext('2d'); g.drawImage(img, 0, 0);
        const d = g.getImageData(0, 0, c.width, c.height).data; let n = 0;
        for (let i = 0; i < d.length; i += 4) if (d[i] !== d[i + 1] || d[i + 1] !== d[i + 2]) n++;
        return n; })""")
    assert len(differing) == 2 and all(n > 0 for n in differing), differing
    assert page.screenshot(ARTIFACTS / "serve_ui_colour.png").stat().st_size > 5000
    page.set_value("bundle", "grey")
    page.wait("document.body.dataset.channels === '1'")
    assert page.js("document.getElementById('model-kind').textContent").startswith("grey images")
