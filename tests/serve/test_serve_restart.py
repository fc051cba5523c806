"""A restart loses nothing: finished results stay downloadable, interrupted jobs are failed-and-retryable."""

from __future__ import annotations

from pathlib import Path

import pytest
from serve_harness import Server, make_key, wait_for

from medgen.serve.jobs import SQLiteJobStore

pytestmark = pytest.mark.slow

JOB = {"bundle": "cxr", "class_label": "NORMAL", "num_images": 2, "seed": 3, "steps": 3}


def test_results_and_interrupted_jobs_survive_restarts(tmp_path: Path, micro_weights: Path) -> None:
    data_dir = tmp_path / "state"
    server = Server(data_dir, micro_weights).start()
    key = make_key(data_dir, "alice")
    try:
        with server.client(key) as client:
            done = client.post("/api/v1/generate", json=JOB).json()["job_id"]
            wait_for(client, done, ("succeeded",))
            zipped = client.get(f"/api/v1/jobs/{done}/result").content
            crashed = client.post("/api/v1/generate", json={**JOB, "steps": 1000}).json()["job_id"]
            waiting = client.post("/api/v1/generate", json=JOB).json()["job_id"]
            wait_for(client, crashed, ("running",))
    finally:
        server.kill()  # a crash: no shutdown handler runs

    server = Server(data_dir, micro_weights).start()
    try:
        with server.client(key) as client:
            assert client.get(f"/api/v1/jobs/{done}").json()["status"] == "succeeded"
            assert client.get(f"/api/v1/jobs/{done}/result").content == zipped
            for job_id in (crashed, waiting):
                info = client.get(f"/api/v1/jobs/{job_id}").json()
                assert info["status"] == "failed" and info["retryable"], info
                assert "interrupted" in info["error"]
            retry = client.post(f"/api/v1/jobs/{waiting}/retry")
            assert retry.status_code == 202
            again = wait_for(client, retry.json()["job_id"], ("succeeded", "failed"))
            assert again["status"] == "succeeded" and again["retry_of"] == waiting
            assert again["request"] == client.get(f"/api/v1/jobs/{waiting}").json()["request"]
            assert client.post(f"/api/v1/jobs/{done}/retry").status_code == 409
            running = client.post("/api/v1/generate", json={**JOB, "steps": 1000}).json()["job_id"]
            wait_for(client, running, ("running",))
    finally:
        server.stop()  # graceful: the running job is interrupted and says so, in the store

    job = SQLiteJobStore(data_dir / "serve.db").get_job(running)
    assert job.status == "failed" and job.retryable and "interrupted" in job.error, job
