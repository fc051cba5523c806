"""The score bundle (brain_mri_score, Langevin sampling) behind a live server: its own samplers, the start-up
calibration, a job with the bundle's default sampler, and MR DICOM output with a pixel spacing."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import pytest
import yaml
from serve_harness import REPO, Server, make_key, wait_for

pytestmark = pytest.mark.slow

BRAIN = REPO / "bundles" / "brain_mri_score"
MICRO = {"unet_channels": "[32,32]", "attention_levels": "[false,false]", "num_res_blocks": "1", "image_size": "16",
         "norm_num_groups": "8", "num_levels": "100", "precision": "fp32"}


def micro_brain_weights(folder: Path) -> Path:
    import torch
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(BRAIN / "configs" / "inference.yaml"))
    parser.update({"bundle_root": str(BRAIN), "ckpt_path": str(folder / "none.pt"),
                   **{k: yaml.safe_load(v) for k, v in MICRO.items()}})
    torch.manual_seed(0)
    path = folder / "model.pt"
    torch.save(parser.get_parsed_content("network_def").state_dict(), path)
    return path


def test_score_bundle_serves_with_its_own_samplers(tmp_path: Path) -> None:
    pydicom = pytest.importorskip("pydicom")
    weights = micro_brain_weights(tmp_path)
    extra = ("--max-images", "64", "--bundle", f"brain={BRAIN}", "--ckpt", f"brain={weights}",
             *(f"--override=brain:{k}={v}" for k, v in MICRO.items()))
    server = Server(tmp_path / "state", {}, extra=extra).start()
    try:
        key = make_key(server.data_dir, "mri")
        with server.client(key) as client:
            (model,) = client.get("/api/v1/models").json()["models"]
            assert model["available"] and model["samplers"] == ["dpmpp2m", "pc", "als", "reverse"]
            assert model["seconds_per_image_step"] > 0
            job = {"bundle": "brain", "class_label": model["classes"][0], "num_images": 2, "steps": 3}
            refused = client.post("/api/v1/generate", json={**job, "sampler": "ddim"})
            assert refused.status_code == 422 and refused.json()["detail"][0]["allowed"] == model["samplers"]
            created = client.post("/api/v1/generate", json={**job, "output_format": "dicom", "iod": "mr",
                                                            "field_of_view_mm": 240}).json()
            assert created["estimated_time_seconds"] > 0
            info = wait_for(client, created["job_id"], ("succeeded", "failed"))
            assert info["status"] == "succeeded", info.get("error")
            assert info["request"]["sampler"] == "dpmpp2m"  # the bundle's inference.yaml default
            archive = zipfile.ZipFile(io.BytesIO(client.get(info["result_url"]).content))

            # the estimate counts network passes: over 100 levels pc runs 100 corrector + 99 predictor steps, dpmpp2m
            # 99 ODE steps (+ 1 final denoising each), so a pc job costs 100 passes per image more, not the same
            # (unguided here: guidance, the bundle's default, doubles both)
            rate = client.get("/api/v1/models").json()["models"][0]["seconds_per_image_step"]
            estimates = {}
            for sampler in ("pc", "dpmpp2m"):
                queued = client.post("/api/v1/generate", json={**job, "num_images": 64, "steps": 100,
                                                                "sampler": sampler, "guidance_scale": 1.0}).json()
                assert "estimated_time_seconds" in queued, queued
                estimates[sampler] = queued["estimated_time_seconds"]
                assert client.delete(f"/api/v1/jobs/{queued['job_id']}").status_code == 202
                wait_for(client, queued["job_id"], ("cancelled", "succeeded", "failed"))
            extra_passes = rate * 64 * 100
            assert estimates["pc"] - estimates["dpmpp2m"] == pytest.approx(extra_passes, abs=0.25), (estimates, rate)
            assert extra_passes > 1.0, rate
    finally:
        server.stop()
    files = [pydicom.dcmread(io.BytesIO(archive.read(n))) for n in archive.namelist() if n.endswith(".dcm")]
    assert len(files) == 2
    for ds in files:
        assert (ds.Modality, ds.SOPClassUID) == ("MR", "1.2.840.10008.5.1.4.1.1.4")
        assert [float(v) for v in ds.PixelSpacing] == [15.0, 15.0]
