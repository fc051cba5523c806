"""A latent bundle (brain_mri_ldm, its shipped autoencoder and diffusion weights) behind a live server: listed with
its image size (not the latent size), a job sampled on latents and decoded, PNG and MR DICOM results at 128 px."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from serve_harness import REPO, Server, make_key, wait_for

pytestmark = pytest.mark.slow

BRAIN_LDM = REPO / "bundles" / "brain_mri_ldm"


def test_latent_bundle_serves_decoded_images(tmp_path: Path) -> None:
    pydicom = pytest.importorskip("pydicom")
    if not (BRAIN_LDM / "models" / "model.pt").is_file():
        pytest.fail("bundles/brain_mri_ldm/models/model.pt is missing: the bundle ships its weights")
    server = Server(tmp_path / "state", {}, extra=("--bundle", f"brain={BRAIN_LDM}")).start()
    try:
        key = make_key(server.data_dir, "mri")
        with server.client(key) as client:
            (model,) = client.get("/api/v1/models").json()["models"]
            assert model["available"], model
            assert (model["classes"], model["image_size"], model["channels"]) == (["notumor", "tumor"], [128, 128], 1)
            assert "dpmpp2m" in model["samplers"] and "ddim" in model["samplers"]
            job = {"bundle": "brain", "class_label": "tumor", "num_images": 2, "seed": 3, "steps": 4}
            results = {}
            for fmt, options in (("png", {}), ("dicom", {"iod": "mr", "field_of_view_mm": 240})):
                created = client.post("/api/v1/generate", json={**job, "output_format": fmt, **options}).json()
                info = wait_for(client, created["job_id"], ("succeeded", "failed"))
                assert info["status"] == "succeeded", info.get("error")
                results[fmt] = zipfile.ZipFile(io.BytesIO(client.get(info["result_url"]).content))
    finally:
        server.stop()
    pngs = [np.asarray(Image.open(io.BytesIO(results["png"].read(n))))
            for n in results["png"].namelist() if n.endswith(".png") and "grid" not in n]
    assert len(pngs) == 2 and all(p.shape == (128, 128) for p in pngs)
    assert pngs[0].std() > 5 and not np.array_equal(pngs[0], pngs[1])  # decoded images, two seeds
    files = [pydicom.dcmread(io.BytesIO(results["dicom"].read(n)))
             for n in results["dicom"].namelist() if n.endswith(".dcm")]
    assert len(files) == 2
    for ds in files:
        assert (ds.Modality, ds.Rows, ds.Columns) == ("MR", 128, 128)
        assert [float(v) for v in ds.PixelSpacing] == [1.875, 1.875]
