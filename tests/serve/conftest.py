"""Fixtures: micro cxr_ddpm weights, a live server for a test module, API keys on it, and a browser."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from serve_harness import BUNDLE, CHROMIUM, MICRO, OFFLINE, Page, Server, fit_gate, free_port, make_key


@pytest.fixture(scope="session")
def micro_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Weights for cxr_ddpm's ``network_def`` under the MICRO overrides, built from the bundle config."""
    import torch
    import yaml
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(BUNDLE / "configs" / "inference.yaml"))
    parser.update({"bundle_root": str(BUNDLE), **{k: yaml.safe_load(v) for k, v in MICRO.items()}})
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("micro") / "model.pt"
    torch.save(parser.get_parsed_content("network_def").state_dict(), path)
    return path


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory, micro_weights: Path) -> Iterator[Server]:
    """One live server for the session: ``cxr`` (no quality gate) and ``cxr_gated`` (the same weights, a gate, and
    guidance on the steps with noise level <= 11 only, as a bundle's ``guidance_interval`` sets it)."""
    gated = tmp_path_factory.mktemp("gated")
    shutil.copy(micro_weights, gated / "model.pt")
    fit_gate(gated)
    srv = Server(tmp_path_factory.mktemp("serve"), {"cxr": micro_weights, "cxr_gated": gated / "model.pt"},
                 extra=("--override=cxr_gated:guidance_interval=[0, 11]",)).start()
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def keys(server: Server) -> dict[str, str]:
    return {
        "alice": make_key(server.data_dir, "alice", 4),
        "bob": make_key(server.data_dir, "bob", 4),
        "solo": make_key(server.data_dir, "solo", 1),
    }


@pytest.fixture()
def browser(tmp_path: Path) -> Iterator[tuple[Page, Path]]:
    """Headless Debian chromium, offline (it resolves no host but 127.0.0.1), driven over CDP; and its downloads."""
    if not Path(CHROMIUM).exists():
        pytest.skip("chromium is not installed")
    port = free_port()
    proc = subprocess.Popen(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            OFFLINE,
            f"--remote-debugging-port={port}",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--window-size=1100,1000",
            "about:blank",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                targets = httpx.get(f"http://127.0.0.1:{port}/json", timeout=2).json()
                ws_url = next(t["webSocketDebuggerUrl"] for t in targets if t["type"] == "page")
                break
            except (httpx.TransportError, StopIteration, ValueError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.3)
        page = Page(ws_url)
        downloads = tmp_path / "downloads"
        downloads.mkdir()
        page.call("Browser.setDownloadBehavior", behavior="allow", downloadPath=str(downloads))
        yield page, downloads
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="session")
def colour_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Untrained weights of cxr_ddpm's ``network_def`` under the MICRO overrides with 3 image channels (RGB): the
    colour model the service tests serve with ``--override NAME:channels=3`` (see ``COLOUR``)."""
    import torch
    import yaml
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(BUNDLE / "configs" / "inference.yaml"))
    parser.update({"bundle_root": str(BUNDLE), **{k: yaml.safe_load(v) for k, v in MICRO.items()}, "channels": 3})
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("micro_rgb") / "model.pt"
    torch.save(parser.get_parsed_content("network_def").state_dict(), path)
    return path
