"""``estimated_time_seconds`` from the measured cost per denoising step per image: a start-up calibration before a
bundle's first job, then the finished jobs' own figures, kept in the job store across restarts.

Nothing here compares a duration with a fixed threshold: each estimate is compared with the measured duration of a
job that ran on the same server."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from serve_harness import ARTIFACTS, Server, make_key, wait_for

pytestmark = pytest.mark.slow

JOB = {"bundle": "cxr", "class_label": "PNEUMONIA", "num_images": 4, "seed": 1, "steps": 40}


def rate(client) -> float:
    (model,) = client.get("/api/v1/models").json()["models"]
    return model["seconds_per_image_step"]


def test_estimate_follows_the_measured_cost_per_step(tmp_path: Path, micro_weights: Path) -> None:
    server = Server(tmp_path / "state", micro_weights).start()
    figures: dict = {}
    try:
        key = make_key(server.data_dir, "timer", max_jobs=1)
        with server.client(key) as client:
            figures["calibrated_seconds_per_image_step"] = rate(client)
            assert figures["calibrated_seconds_per_image_step"] > 0  # measured at start-up, before any job
            first = client.post("/api/v1/generate", json=JOB).json()
            done = wait_for(client, first["job_id"], ("succeeded", "failed"))
            assert done["status"] == "succeeded", done.get("error")
            figures["first_estimate"] = first["estimated_time_seconds"]
            figures["first_duration"] = done["metrics"]["total_seconds"]
            # the first job's own figures replace the calibration
            assert rate(client) == pytest.approx(done["metrics"]["seconds_per_image_step"], rel=1e-3)

            # a similar job: the same work split differently
            similar = client.post("/api/v1/generate", json={**JOB, "num_images": 2, "steps": 80, "seed": 9}).json()
            figures["second_estimate"] = similar["estimated_time_seconds"]
            assert 0.5 <= similar["estimated_time_seconds"] / figures["first_duration"] <= 2.0, figures
            again = wait_for(client, similar["job_id"], ("succeeded", "failed"))
            assert again["status"] == "succeeded", again.get("error")
            figures["second_duration"] = again["metrics"]["total_seconds"]
            figures["second_rate"] = again["metrics"]["seconds_per_image_step"]

            # guidance runs the network twice per step, and more images or steps cost more
            cost = {}
            changes = {"base": {"guidance_scale": 1.0}, "guided": {"guidance_scale": 3.0},
                       "double": {"guidance_scale": 1.0, "steps": 80}}
            for name, change in changes.items():
                job = client.post("/api/v1/generate", json={**JOB, **change}).json()
                cost[name] = job["estimated_time_seconds"]
                assert client.delete(f"/api/v1/jobs/{job['job_id']}").status_code == 202
                wait_for(client, job["job_id"], ("cancelled", "succeeded", "failed"))
            assert cost["guided"] > 1.5 * cost["base"] and cost["double"] > 1.5 * cost["base"], cost
            figures["kept_seconds_per_image_step"] = rate(client)
        server.stop()
        # kept in the job store: a restarted server estimates the same, without calibrating again
        server.start()
        with server.client(key) as client:
            assert rate(client) == figures["kept_seconds_per_image_step"]
    finally:
        server.stop()
    figures["first_estimate_over_duration"] = round(figures["first_estimate"] / figures["first_duration"], 2)
    figures["second_estimate_over_first_duration"] = round(figures["second_estimate"] / figures["first_duration"], 2)
    figures["second_estimate_over_second_duration"] = round(figures["second_estimate"] / figures["second_duration"], 2)
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "serve_estimate.json").write_text(json.dumps(figures, indent=1))
    print("estimate:", json.dumps(figures))
