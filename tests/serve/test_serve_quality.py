"""quality_check=true scores every image with the bundle's fitted quality gate (``medgen fit-gate``) and reports it."""

from __future__ import annotations

import io
import json
import zipfile

import pytest
from serve_harness import Server, wait_for

pytestmark = pytest.mark.slow


def test_quality_check_scores_each_image(server: Server, keys: dict[str, str]) -> None:
    with server.client(keys["alice"]) as client:
        available = {m["name"]: m["quality_check"] for m in client.get("/api/v1/models").json()["models"]}
        assert available == {"cxr": False, "cxr_gated": True}
        job = client.post(
            "/api/v1/generate",
            json={"bundle": "cxr_gated", "class_label": "NORMAL", "num_images": 3, "steps": 2, "quality_check": True},
        ).json()
        info = wait_for(client, job["job_id"], ("succeeded", "failed"))
        assert info["status"] == "succeeded", info
        quality = info["metrics"]["quality"]
        assert quality["passed"] + quality["failed"] == 3 and quality["threshold"] > 0
        archive = zipfile.ZipFile(io.BytesIO(client.get(info["result_url"]).content))
    scores = json.loads(archive.read("quality.json"))["images"]
    assert [s["seed"] for s in scores] == [0, 1, 2]
    assert all(s["passed"] == (s["realism_score"] <= quality["threshold"]) for s in scores)
