"""The REST API through HTTP against a live uvicorn: auth, validation, jobs, results, cancel, limits, metrics, load."""

from __future__ import annotations

import asyncio
import io
import json
import re
import statistics
import subprocess
import sys
import time
import zipfile

import httpx
import pytest
from serve_harness import ARTIFACTS, REPO, Server, wait_for

pytestmark = pytest.mark.slow

GOOD = {"bundle": "cxr", "class_label": "PNEUMONIA", "num_images": 2, "seed": 7, "steps": 3}


def submit(client: httpx.Client, **changes) -> dict:
    response = client.post("/api/v1/generate", json={**GOOD, **changes})
    assert response.status_code == 202, response.text
    return response.json()


def long_job(client: httpx.Client) -> str:
    """A job that runs long enough to be caught running, then wait until it is."""
    job = submit(client, steps=1000, num_images=1)
    wait_for(client, job["job_id"], ("running",))
    return job["job_id"]


def test_healthz_needs_no_key_and_everything_else_does(server: Server, keys: dict[str, str]) -> None:
    with server.client() as anon:
        assert anon.get("/healthz").json()["status"] == "ok"
        for method, path in [
            ("GET", "/api/v1/models"),
            ("GET", "/metrics"),
            ("POST", "/api/v1/generate"),
            ("GET", "/api/v1/jobs/" + "0" * 32),
            ("DELETE", "/api/v1/jobs/" + "0" * 32),
            ("GET", "/api/v1/jobs/" + "0" * 32 + "/result"),
        ]:
            response = anon.request(method, path, json=GOOD if method == "POST" else None)
            assert response.status_code == 401, (method, path, response.text)
            assert "API key" in response.json()["detail"]
    with server.client("mg_not-a-real-key") as wrong:
        assert wrong.get("/api/v1/models").status_code == 401
    with server.client(keys["alice"], bearer=True) as bearer:
        assert bearer.get("/api/v1/models").status_code == 200


def test_models_lists_bundles_classes_and_limits(server: Server, keys: dict[str, str]) -> None:
    with server.client(keys["alice"]) as client:
        data = client.get("/api/v1/models").json()
    model = next(m for m in data["models"] if m["name"] == "cxr")
    assert model["classes"] == ["NORMAL", "PNEUMONIA"]
    assert model["image_size"] == [16, 16]
    assert {"ddim", "ddpm"} <= set(model["samplers"])
    assert data["limits"]["max_images"] == 8
    # what a job that leaves them out gets: cxr_ddpm's inference.yaml, as `medgen sample` uses it
    assert model["defaults"] == {"sampler": "dpmpp2m", "steps": 20, "guidance_scale": 1.5, "guidance_interval": None}
    gated = next(m for m in data["models"] if m["name"] == "cxr_gated")  # its inference.yaml's interval, overridden
    assert gated["defaults"]["guidance_interval"] == [0.0, 11.0]
    assert model["samplers"][0] == "dpmpp2m"


def test_a_job_without_sampling_settings_samples_as_the_bundle_does(server: Server, keys: dict[str, str]) -> None:
    request = {k: v for k, v in GOOD.items() if k != "steps"}
    with server.client(keys["alice"]) as client:
        created = client.post("/api/v1/generate", json=request)
        assert created.status_code == 202, created.text
        info = wait_for(client, created.json()["job_id"], ("succeeded", "failed"))
        null = client.post("/api/v1/generate", json={**request, "guidance_scale": None})
    assert info["status"] == "succeeded", info
    assert {k: info["request"][k] for k in ("sampler", "steps", "guidance_scale")} == \
        {"sampler": "dpmpp2m", "steps": 20, "guidance_scale": 1.5}
    assert null.status_code == 422 and "leave it out" in null.text


@pytest.mark.parametrize(
    ("change", "field", "allowed"),
    [
        ({"bundle": "brain_mri"}, "bundle", ["cxr", "cxr_gated"]),
        ({"class_label": "COVID"}, "class_label", ["NORMAL", "PNEUMONIA"]),
        ({"sampler": "euler"}, "sampler", ["ddim", "ddpm"]),
        ({"num_images": 9}, "num_images", None),
        ({"num_images": 0}, "num_images", None),
        ({"seed": -1}, "seed", None),
        ({"seed": 2**31}, "seed", None),
        ({"steps": 0}, "steps", None),
        ({"output_format": "jpeg"}, "output_format", None),
        ({"path": "../../etc/passwd"}, "path", None),
    ],
)
def test_bad_requests_get_422_naming_the_field_and_allowed_values(
    server: Server, keys: dict[str, str], change: dict, field: str, allowed: list[str] | None
) -> None:
    with server.client(keys["alice"]) as client:
        response = client.post("/api/v1/generate", json={**GOOD, **change})
    assert response.status_code == 422, response.text
    (error,) = [e for e in response.json()["detail"] if e["loc"][-1] == field]
    if allowed is not None:
        assert set(allowed) <= set(error["allowed"]), error


def test_quality_check_without_a_fitted_gate_is_refused_clearly(server: Server, keys: dict[str, str]) -> None:
    with server.client(keys["alice"]) as client:
        response = client.post("/api/v1/generate", json={**GOOD, "quality_check": True})
    assert response.status_code == 422
    assert "quality gate" in response.json()["detail"][0]["msg"]


def test_job_ids_from_requests_never_reach_the_filesystem(server: Server, keys: dict[str, str]) -> None:
    with server.client(keys["alice"]) as client:
        for bad in ["..%2F..%2Fserve.db", "../serve.db", "a" * 31, "A" * 32, "0" * 32 + "/../../serve.db"]:
            response = client.get(f"/api/v1/jobs/{bad}/result")
            assert response.status_code in (404, 422), (bad, response.status_code)
            assert not response.content.startswith(b"SQLite")


def test_generate_poll_download_png(server: Server, keys: dict[str, str]) -> None:
    with server.client(keys["alice"]) as client:
        created = submit(client, num_images=3)
        assert created["status"] == "queued"
        assert created["status_url"] == f"/api/v1/jobs/{created['job_id']}"
        assert created["estimated_time_seconds"] > 0
        info = wait_for(client, created["job_id"], ("succeeded", "failed"))
        assert info["status"] == "succeeded", info
        assert info["progress"] == 100
        assert info["metrics"]["images"] == 3 and info["metrics"]["generation_seconds"] > 0
        result = client.get(info["result_url"])
        images = client.get(info["images_url"]).json()
        first = client.get(images[0]["url"])
    assert result.status_code == 200 and result.headers["content-type"] == "application/zip"
    archive = zipfile.ZipFile(io.BytesIO(result.content))
    pngs = sorted(n for n in archive.namelist() if n.startswith("PNEUMONIA/") and n.endswith(".png"))
    assert pngs == ["PNEUMONIA/000007.png", "PNEUMONIA/000008.png", "PNEUMONIA/000009.png"]
    records = [json.loads(line) for line in archive.read("samples.jsonl").decode().splitlines()]
    assert [(r["class"], r["seed"], r["steps"]) for r in records] == [("PNEUMONIA", s, 3) for s in (7, 8, 9)]
    assert [i["seed"] for i in images] == [7, 8, 9]
    assert first.headers["content-type"] == "image/png" and first.content.startswith(b"\x89PNG")


def test_dicom_output_is_synthetic_dicom(server: Server, keys: dict[str, str]) -> None:
    pydicom = pytest.importorskip("pydicom")
    with server.client(keys["alice"]) as client:
        info = wait_for(
            client, submit(client, output_format="dicom", class_label="NORMAL")["job_id"], ("succeeded", "failed")
        )
        assert info["status"] == "succeeded", info
        archive = zipfile.ZipFile(io.BytesIO(client.get(info["result_url"]).content))
    dcm = sorted(n for n in archive.namelist() if n.endswith(".dcm"))
    assert len(dcm) == 2 and "samples.jsonl" in archive.namelist()
    ds = pydicom.dcmread(io.BytesIO(archive.read(dcm[0])))
    assert ds.SyntheticData == "YES"
    assert (ds.Rows, ds.Columns) == (16, 16)


def test_results_are_private_to_the_key_that_made_them(server: Server, keys: dict[str, str]) -> None:
    with server.client(keys["alice"]) as alice, server.client(keys["bob"]) as bob:
        job_id = submit(alice)["job_id"]
        wait_for(alice, job_id, ("succeeded",))
        for path in ["", "/result", "/images", "/images/0"]:
            assert bob.get(f"/api/v1/jobs/{job_id}{path}").status_code == 404
        assert bob.delete(f"/api/v1/jobs/{job_id}").status_code == 404
        assert alice.get(f"/api/v1/jobs/{job_id}/result").status_code == 200


def test_cancel_a_running_job_and_a_queued_one(server: Server, keys: dict[str, str]) -> None:
    with server.client(keys["alice"]) as client:
        running = long_job(client)
        queued = submit(client)["job_id"]
        assert client.get(f"/api/v1/jobs/{queued}").json()["status"] == "queued"
        assert client.delete(f"/api/v1/jobs/{queued}").json()["status"] == "cancelled"
        response = client.delete(f"/api/v1/jobs/{running}")
        assert response.status_code == 202 and response.json()["cancel_requested"]
        info = wait_for(client, running, ("cancelled", "failed", "succeeded"), timeout=300)
        assert info["status"] == "cancelled" and info["progress"] < 100
        assert client.get(f"/api/v1/jobs/{running}/result").status_code == 409
        assert client.delete(f"/api/v1/jobs/{running}").status_code == 409
        # the worker goes on with the next job
        assert wait_for(client, submit(client)["job_id"], ("succeeded", "failed"))["status"] == "succeeded"


def test_per_key_limit_on_active_jobs(server: Server, keys: dict[str, str]) -> None:
    with server.client(keys["solo"]) as solo, server.client(keys["bob"]) as bob:
        first = submit(solo, steps=1000, num_images=1)["job_id"]
        response = solo.post("/api/v1/generate", json=GOOD)
        assert response.status_code == 429 and "limit" in response.json()["detail"]
        assert bob.post("/api/v1/generate", json=GOOD).status_code == 202  # other keys are not held back
        solo.delete(f"/api/v1/jobs/{first}")
        wait_for(solo, first, ("cancelled",))
        assert solo.post("/api/v1/generate", json=GOOD).status_code == 202


def test_fifty_concurrent_status_polls_while_a_job_runs(server: Server, keys: dict[str, str]) -> None:
    with server.client(keys["bob"]) as client:
        job_id = long_job(client)

    async def poll_all() -> list[tuple[int, float]]:
        async with httpx.AsyncClient(
            base_url=server.url, headers={"X-API-Key": keys["bob"]}, timeout=30, limits=httpx.Limits(max_connections=50)
        ) as aclient:

            async def one() -> tuple[int, float]:
                t0 = time.perf_counter()
                response = await aclient.get(f"/api/v1/jobs/{job_id}")
                return response.status_code, time.perf_counter() - t0

            return await asyncio.gather(*[one() for _ in range(50)])

    t0 = time.perf_counter()
    results = asyncio.run(poll_all())
    wall = time.perf_counter() - t0
    with server.client(keys["bob"]) as client:
        still = client.get(f"/api/v1/jobs/{job_id}").json()
        client.delete(f"/api/v1/jobs/{job_id}")
    assert [code for code, _ in results] == [200] * 50
    assert still["status"] == "running"  # the polls ran while it generated
    latencies = sorted(s for _, s in results)
    figures = {
        "requests": 50,
        "errors": 0,
        "wall_seconds": round(wall, 3),
        "p50_ms": round(1000 * statistics.median(latencies), 1),
        "p95_ms": round(1000 * latencies[int(0.95 * 49)], 1),
        "max_ms": round(1000 * latencies[-1], 1),
    }
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "serve_load.json").write_text(json.dumps(figures, indent=1))
    print("load:", figures)


def test_metrics_in_prometheus_text(server: Server, keys: dict[str, str]) -> None:
    with server.client(keys["alice"]) as client:
        wait_for(client, submit(client)["job_id"], ("succeeded",))
        response = client.get("/metrics")
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    values = {}
    for line in response.text.splitlines():
        if not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            values[name] = float(value)
    assert values['medgen_jobs{status="succeeded"}'] >= 1
    assert values["medgen_images_generated_total"] >= 2
    for q in ("0.5", "0.95", "0.99"):
        assert values[f'medgen_generation_latency_seconds{{quantile="{q}"}}'] > 0
    assert re.search(r"^# TYPE medgen_generation_latency_seconds summary$", response.text, re.M)


def test_create_key_command_prints_a_key_that_is_stored_only_hashed(server: Server) -> None:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "medgen.serve",
            "create-key",
            "carol",
            "--data-dir",
            str(server.data_dir),
            "--max-jobs",
            "2",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    key = out.stdout.strip()
    assert key.startswith("mg_") and "only its hash" in out.stderr
    assert key.encode() not in (server.data_dir / "serve.db").read_bytes()
    with server.client(key) as client:
        assert client.get("/api/v1/models").json()["limits"]["max_active_jobs"] == 2


def test_openapi_docs_are_served(server: Server) -> None:
    with server.client() as anon:
        assert anon.get("/docs").status_code == 200
        assert "/api/v1/generate" in anon.get("/openapi.json").json()["paths"]
