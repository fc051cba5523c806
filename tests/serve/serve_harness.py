"""Helpers to run a live ``medgen serve`` (uvicorn in a subprocess, on a free 127.0.0.1 port) over a micro
cxr_ddpm model.

The model has the bundle's real config with small overrides and untrained weights: the service is under test,
not the images, and sampling then takes a fraction of a second per step on a loaded CPU.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[2]
BUNDLE = REPO / "bundles" / "cxr_ddpm"
ARTIFACTS = REPO / "test-artifacts"
MICRO = {
    "unet_channels": "[32,32]",
    "attention_levels": "[false,false]",
    "num_res_blocks": "1",
    "image_size": "16",
    "precision": "fp32",
}


CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
#: chromium resolves no host name but 127.0.0.1, as on a machine with no network
OFFLINE = "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``python -m medgen.serve`` as a child process; ``url``, ``client(key)``, ``stop()``, ``kill()``."""

    def __init__(self, data_dir: Path, weights: Path | dict[str, Path], extra: tuple[str, ...] = ()) -> None:
        """``weights``: one file (served as bundle ``cxr``) or ``{bundle name: weights}``, all on the MICRO config."""
        self.data_dir, self.extra = data_dir, extra
        self.weights = weights if isinstance(weights, dict) else {"cxr": weights}
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        self.log = data_dir / f"server-{self.port}.log"

    def start(self, timeout: float = 600.0) -> Server:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        cmd = [
            sys.executable,
            "-m",
            "medgen.serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--data-dir",
            str(self.data_dir),
            "--no-discover",
            "--max-images",
            "8",
            "--queue-size",
            "4",
        ]
        for name, weights in self.weights.items():
            cmd += ["--bundle", f"{name}={BUNDLE}", "--ckpt", f"{name}={weights}"]
            cmd += [f"--override={name}:{k}={v}" for k, v in MICRO.items()]
        cmd += self.extra
        env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=open(self.log, "ab"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.3)
        self.kill()
        raise RuntimeError(f"server did not answer /healthz in {timeout} s:\n{self.log.read_text()[-3000:]}")

    def client(self, key: str | None = None, bearer: bool = False) -> httpx.Client:
        headers = {} if key is None else ({"Authorization": f"Bearer {key}"} if bearer else {"X-API-Key": key})
        return httpx.Client(base_url=self.url, headers=headers, timeout=30)

    def stop(self) -> None:
        """SIGTERM, as a service manager would (uvicorn shuts down gracefully)."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.kill()

    def kill(self) -> None:
        """SIGKILL: a crash, with no chance to clean up."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)


def make_key(data_dir: Path, name: str, max_jobs: int = 4) -> str:
    from medgen.serve.auth import create_key
    from medgen.serve.jobs import SQLiteJobStore

    return create_key(SQLiteJobStore(data_dir / "serve.db"), name, max_jobs)


def wait_for(client: httpx.Client, job_id: str, states: tuple[str, ...], timeout: float = 900.0) -> dict:
    """Poll a job until its status is one of ``states``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info = client.get(f"/api/v1/jobs/{job_id}").json()
        if info["status"] in states:
            return info
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} still {info['status']} after {timeout} s: {info}")


def fit_gate(folder: Path, size: int = 16) -> None:
    """A gate beside the weights, as ``medgen fit-gate`` writes it, over a (seeded, untrained) domain network."""
    import numpy as np
    import torch

    from medgen.metrics.classifier import build_classifier, save_classifier
    from medgen.metrics.features import DomainFeatures
    from medgen.metrics.quality_gate import QualityGate

    torch.manual_seed(0)
    weights = save_classifier(
        build_classifier(2).eval(), folder / "domain_classifier.pt", ["NORMAL", "PNEUMONIA"], size
    )
    reference = np.random.default_rng(0).uniform(0, 1, (24, 1, size, size)).astype(np.float32)
    QualityGate(k=3).fit(DomainFeatures(weights)(reference)).save(folder / "quality_gate.npz")
    (folder / "quality_gate.npz.json").write_text(json.dumps({"features": "domain", "size": size}))


class Page:
    """Just enough CDP: evaluate JavaScript, wait for a condition, take a screenshot."""

    def __init__(self, ws_url: str) -> None:
        import websocket

        self.ws = websocket.create_connection(ws_url, timeout=60, suppress_origin=True)
        self.next_id = 0

    def call(self, method: str, **params: Any) -> dict:
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv())
            if message.get("id") == self.next_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message["result"]

    def js(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait(self, expression: str, timeout: float = 300.0) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = self.js(expression)
            if value:
                return value
            time.sleep(0.2)
        status = self.js("(document.getElementById('status') || document.body).textContent.slice(0, 300)")
        raise AssertionError(f"timed out waiting for {expression!r}; page status: {status!r}")

    def set_value(self, element_id: str, value: Any, event: str = "change") -> None:
        self.js(
            f"(() => {{ const e = document.getElementById({element_id!r}); e.value = {json.dumps(str(value))};"
            f" e.dispatchEvent(new Event({event!r}, {{bubbles: true}})); }})()"
        )

    def click(self, element_id: str) -> None:
        self.js(f"document.getElementById({element_id!r}).click()")

    def screenshot(self, path: Path) -> Path:
        data = self.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)["data"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))
        return path
