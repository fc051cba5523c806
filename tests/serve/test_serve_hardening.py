"""The service under hostile input and unlucky operation, through HTTP against live uvicorn servers: numbers that
are not finite, bodies over the limit, echoed input, security headers, owner-only state, key revocation on a
running server, unusable weights, retention and start-up cleanup, and nothing of the server's paths in what a
client receives."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import io
import json
import re
import shutil
import socket
import stat
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from serve_harness import REPO, Server, make_key, wait_for

from medgen.serve.jobs import Job, SQLiteJobStore

pytestmark = pytest.mark.slow

GOOD = {"bundle": "cxr", "class_label": "PNEUMONIA", "num_images": 2, "seed": 7, "steps": 3}
NUMBERS = ("num_images", "seed", "steps", "guidance_scale")
STATIC = REPO / "medgen" / "serve" / "static"


def post_raw(client, text: str):
    return client.post("/api/v1/generate", content=text.encode(), headers={"Content-Type": "application/json"})


def with_token(field: str, token: str) -> str:
    """The GOOD body with ``field`` set to a raw JSON token (``NaN`` and ``Infinity`` are not valid JSON numbers,
    but Python's parser, and so the server's, reads them)."""
    return json.dumps({**GOOD, field: "@@"}).replace('"@@"', token)


def the_error(response, field: str) -> dict:
    assert response.status_code == 422, (field, response.status_code, response.text[:300])
    errors = [e for e in response.json()["detail"] if e["loc"][-1] == field]
    assert len(errors) == 1, response.text
    return errors[0]


@pytest.mark.parametrize("field", NUMBERS)
def test_non_finite_and_out_of_range_numbers_get_422_naming_the_field(server: Server, keys: dict[str, str],
                                                                      field: str) -> None:
    tokens = ["NaN", "Infinity", "-Infinity", "1e400", "-1e400", "1e308", "-1", "99999999999999999999999999"]
    with server.client(keys["alice"]) as client:
        for token in tokens:
            the_error(post_raw(client, with_token(field, token)), field)


@pytest.mark.parametrize("field", NUMBERS)
def test_numbers_of_the_wrong_type_get_422_naming_the_field(server: Server, keys: dict[str, str], field: str) -> None:
    tokens = ["true", "null", '"4"', "[4]", '{"n": 4}', '"NaN"']
    if field != "guidance_scale":
        tokens.append("2.5")
    with server.client(keys["alice"]) as client:
        for token in tokens:
            the_error(post_raw(client, with_token(field, token)), field)


def test_errors_echo_only_a_short_prefix_of_the_input(server: Server, keys: dict[str, str]) -> None:
    long = "x" * 60_000  # under the body limit, so it reaches validation
    with server.client(keys["alice"]) as client:
        for body in [{**GOOD, "class_label": long}, {**GOOD, "bundle": long}, {**GOOD, long: 1},
                     {**GOOD, "sampler": long}, {**GOOD, "class_label": "y" * 99}]:
            response = client.post("/api/v1/generate", json=body)
            assert response.status_code == 422, response.text[:200]
            assert len(response.content) < 1000, len(response.content)
            assert "x" * 41 not in response.text and "y" * 41 not in response.text
        huge = client.post("/api/v1/generate", json={**GOOD, "class_label": "z" * 10_000_000})
        assert huge.status_code == 413 and len(huge.content) < 500


def raw_http(port: int, head: bytes, body: bytes = b"") -> tuple[int, bytes]:
    """Send ``head`` and as much of ``body`` as the server takes; return the status and the response head."""
    with socket.create_connection(("127.0.0.1", port), timeout=120) as sock:
        try:
            sock.sendall(head + body)
        except OSError:
            pass  # the server may answer and close before taking it all
        data = b""
        while b"\r\n\r\n" not in data:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            data += chunk
    return int(data.split(b" ", 2)[1]), data


def test_body_limit_is_enforced_before_the_body_is_read_and_before_the_key_check(server: Server) -> None:
    # 200 MB announced, 1 KB sent, no key: the answer is 413, so the server neither waited for the body nor
    # checked the key first
    head = (b"POST /api/v1/generate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Content-Length: 200000000\r\n\r\n")
    code, response = raw_http(server.port, head, b"{" + b" " * 1023)
    assert code == 413, response
    assert b"x-frame-options: deny" in response.lower()
    # without Content-Length (chunked) the body is counted as it arrives and cut at the limit
    chunk = b" " * 8192
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(10)) + b"0\r\n\r\n"
    head = (b"POST /api/v1/generate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n")
    code, response = raw_http(server.port, head, chunked)
    assert code == 413, response


def test_html_has_a_strict_policy_and_no_inline_script_or_style(server: Server) -> None:
    with server.client() as anon:
        page = anon.get("/ui")
        script = anon.get("/ui/static/app.js")
        docs = anon.get("/docs")
        api = anon.get("/healthz")
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "style-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
    for response in (page, script, docs, api):
        assert response.headers["x-frame-options"] == "DENY"
        assert response.headers["x-content-type-options"] == "nosniff"
    html = page.text
    assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", html), "inline <script>"
    assert "<style" not in html and not re.search(r"\sstyle=", html) and not re.search(r"\son[a-z]+=", html)
    # the API docs page allows exactly its one inline script, by hash, and nothing inline otherwise
    docs_csp = docs.headers["content-security-policy"]
    assert docs.status_code == 200 and "unsafe-inline" not in docs_csp and "frame-ancestors 'none'" in docs_csp
    for code in re.findall(r"<script>(.*?)</script>", docs.text, re.S):
        digest = base64.b64encode(hashlib.sha256(code.encode()).digest()).decode()
        assert f"'sha256-{digest}'" in docs_csp


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def test_state_is_owner_only_and_clients_see_hashes_and_versions_never_paths(
    server: Server, keys: dict[str, str], micro_weights: Path
) -> None:
    sha = hashlib.sha256(micro_weights.read_bytes()).hexdigest()
    with server.client(keys["alice"]) as client:
        models = client.get("/api/v1/models")
        cxr = next(m for m in models.json()["models"] if m["name"] == "cxr")
        info = wait_for(client, client.post("/api/v1/generate", json=GOOD).json()["job_id"], ("succeeded", "failed"))
        zipped = client.get(info["result_url"]).content
        dicom = wait_for(client, client.post("/api/v1/generate", json={**GOOD, "output_format": "dicom"}).json()[
            "job_id"], ("succeeded", "failed"))
        dicom_zip = zipfile.ZipFile(io.BytesIO(client.get(dicom["result_url"]).content))
    assert cxr["weights_sha256"] == sha and cxr["version"]
    assert info["metrics"]["checkpoint_sha256"] == sha and info["metrics"]["bundle_version"] == cxr["version"]
    archive = zipfile.ZipFile(io.BytesIO(zipped))
    records = [json.loads(line) for line in archive.read("samples.jsonl").decode().splitlines()]
    assert all("checkpoint" not in r and r["checkpoint_sha256"] == sha and r["bundle"] == "cxr"
               and r["bundle_version"] == cxr["version"] for r in records)
    members = [a.read(n) for a in (archive, dicom_zip) for n in a.namelist()]
    assert len(members) >= 8 and any(m.startswith(b"\0" * 128 + b"DICM") for m in members)
    everything = models.text + json.dumps(info) + json.dumps(dicom) + b"".join(members).decode("latin-1")
    for path in (micro_weights, micro_weights.parent, server.data_dir, REPO):
        assert str(path) not in everything, path

    data = server.data_dir
    jobs = [data / "results" / info["job_id"], data / "results" / dicom["job_id"]]
    files = [data / "serve.db", data / "serve.db-wal", data / "serve.db-shm",
             *(p for job in jobs for p in job.rglob("*") if p.is_file())]
    folders = [data, data / "results", *jobs, *(p for job in jobs for p in job.rglob("*") if p.is_dir())]
    assert len(files) >= 10 and any(p.suffix == ".dcm" for p in files)
    assert {str(p.relative_to(data)): oct(mode(p)) for p in files if mode(p) != 0o600} == {}
    assert {str(p.relative_to(data)): oct(mode(p)) for p in folders if mode(p) != 0o700} == {}


def serve_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "medgen.serve", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=600)


def test_a_revoked_key_gets_401_at_once_on_the_running_server(server: Server) -> None:
    data = str(server.data_dir)
    key = serve_cli("create-key", "dora", "--data-dir", data).stdout.strip()
    with server.client(key) as client:
        assert client.get("/api/v1/models").status_code == 200
        listed = serve_cli("list-keys", "--data-dir", data)
        assert re.search(r"\sdora\s+4\s+\S+\s+active$", listed.stdout, re.M), listed.stdout
        assert key not in listed.stdout and key not in listed.stderr
        revoked = serve_cli("revoke-key", "dora", "--data-dir", data)
        assert revoked.returncode == 0 and "revoked key" in revoked.stderr, revoked.stderr
        response = client.get("/api/v1/models")
        assert response.status_code == 401 and response.json()["detail"] == "invalid API key"
    assert re.search(r"\sdora\s+4\s+\S+\s+revoked$", serve_cli("list-keys", "--data-dir", data).stdout, re.M)
    unknown = serve_cli("revoke-key", "nobody", "--data-dir", data)
    assert unknown.returncode == 2 and "no key with id or name 'nobody'" in unknown.stderr


@pytest.fixture(scope="module")
def odd_server(tmp_path_factory: pytest.TempPathFactory, micro_weights: Path) -> Iterator[tuple[Server, str]]:
    """A server over a good bundle, a truncated weights file and a missing one, started on a data folder that
    holds an expired result, a recent one and the folders of jobs cut short by a crash."""
    root = tmp_path_factory.mktemp("odd")
    truncated = root / "truncated" / "model.pt"
    truncated.parent.mkdir()
    truncated.write_bytes(micro_weights.read_bytes()[:2000])
    data = root / "state"
    store = SQLiteJobStore(data / "serve.db")
    key = make_key(data, "erin")
    key_id = store.list_keys()[0].id
    now = dt.datetime.now(dt.timezone.utc)
    for job_id, state, age in [("1" * 32, "succeeded", 40), ("2" * 32, "succeeded", 2), ("3" * 32, "running", None)]:
        finished = (now - dt.timedelta(days=age)).isoformat(timespec="milliseconds") if age else None
        store.add_job(Job(id=job_id, key_id=key_id, request={**GOOD, "sampler": "ddim", "guidance_scale": 1.0,
                                                             "output_format": "png", "quality_check": False},
                          status=state, finished_at=finished, result="result.zip" if age else None))
        (data / "results" / job_id).mkdir(parents=True)
        (data / "results" / job_id / "result.zip").write_bytes(b"PK")
    (data / "results" / ("9" * 32)).mkdir()  # a folder no job owns
    server = Server(data, {"cxr": micro_weights, "cxr_truncated": truncated, "cxr_missing": root / "gone.pt"},
                    extra=("--retention-days", "30")).start()
    yield server, key
    server.stop()
    shutil.rmtree(root, ignore_errors=True)


def test_unusable_weights_make_their_bundle_unavailable_with_a_reason(odd_server: tuple[Server, str]) -> None:
    server, key = odd_server
    with server.client() as anon:
        health = anon.get("/healthz").json()
    assert health["status"] == "degraded" and health["unavailable_bundles"] == ["cxr_missing", "cxr_truncated"]
    with server.client(key) as client:
        models = {m["name"]: m for m in client.get("/api/v1/models").json()["models"]}
        refused = client.post("/api/v1/generate", json={**GOOD, "bundle": "cxr_truncated"})
        served = wait_for(client, client.post("/api/v1/generate", json=GOOD).json()["job_id"], ("succeeded", "failed"))
    assert models["cxr"]["available"] and served["status"] == "succeeded"  # the others keep serving
    assert not models["cxr_truncated"]["available"] and "truncated" in models["cxr_truncated"]["unavailable_reason"]
    assert not models["cxr_missing"]["available"] and "missing" in models["cxr_missing"]["unavailable_reason"]
    assert refused.status_code == 503 and "truncated" in refused.json()["detail"]
    for text in (json.dumps(models), refused.text):
        assert str(server.data_dir.parent) not in text and "Traceback" not in text


def test_start_up_removes_interrupted_folders_and_results_past_retention(odd_server: tuple[Server, str]) -> None:
    server, key = odd_server
    results = server.data_dir / "results"
    assert not (results / ("1" * 32)).exists() and not (results / ("3" * 32)).exists()
    assert not (results / ("9" * 32)).exists() and (results / ("2" * 32)).is_dir()
    with server.client(key) as client:
        expired = client.get(f"/api/v1/jobs/{'1' * 32}")
        gone = client.get(f"/api/v1/jobs/{'1' * 32}/result")
        kept = client.get(f"/api/v1/jobs/{'2' * 32}")
    assert expired.json()["status"] == "succeeded" and expired.json()["result_url"] is None
    assert gone.status_code == 410 and "30 day" in gone.json()["detail"]
    assert kept.json()["result_url"] == f"/api/v1/jobs/{'2' * 32}/result"
