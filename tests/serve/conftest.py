"""Fixtures: micro cxr_ddpm weights, a live server for a test module, and API keys on it."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from serve_harness import BUNDLE, MICRO, Server, fit_gate, make_key


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
    """One live server for the session: ``cxr`` (no quality gate) and ``cxr_gated`` (the same weights, a gate)."""
    gated = tmp_path_factory.mktemp("gated")
    shutil.copy(micro_weights, gated / "model.pt")
    fit_gate(gated)
    srv = Server(tmp_path_factory.mktemp("serve"), {"cxr": micro_weights, "cxr_gated": gated / "model.pt"}).start()
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def keys(server: Server) -> dict[str, str]:
    return {
        "alice": make_key(server.data_dir, "alice", 4),
        "bob": make_key(server.data_dir, "bob", 4),
        "solo": make_key(server.data_dir, "solo", 1),
    }
