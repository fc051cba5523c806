"""Fixtures for export/PACS tests: a sampler-style samples folder and a real Orthanc started on free ports."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
KERMANY = Path("/work/shared/data/chest_xray_kermany_224/test")
ORTHANC = shutil.which("Orthanc") or "/usr/sbin/Orthanc"
DICOMWEB_PLUGINS = ["/usr/share/orthanc/plugins/libOrthancDicomWeb.so", "/usr/lib/orthanc/libOrthancDicomWeb.so.1.7"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


#: teaches Orthanc 1.10's dictionary SyntheticData (0008,001C), as docs/dicom.md tells a PACS administrator
ORTHANC_DICTIONARY = {"0008,001c": ["CS", "SyntheticData", 1, 1]}


def make_samples_dir(root: Path, per_class: int = 2, with_npy: bool = True, size: int = 64, **fields) -> Path:
    """A folder as the sampler writes it: samples.jsonl + 8-bit grey PNGs (+ .npy float copies for class 0);
    ``fields`` are added to every line (e.g. ``checkpoint``/``checkpoint_sha256`` of real weights)."""
    root.mkdir(parents=True, exist_ok=True)
    lines = []
    for label, cls in enumerate(["NORMAL", "PNEUMONIA"]):
        sources = sorted((KERMANY / cls).glob("*.jpeg"))[:per_class] if (KERMANY / cls).is_dir() else []
        for i in range(per_class):
            if i < len(sources):
                grey = np.asarray(Image.open(sources[i]).convert("L").resize((size, size)))
            else:  # data set absent: a smooth synthetic picture instead
                yy, xx = np.mgrid[:size, :size]
                grey = ((np.sin(xx / (5 + i)) * np.cos(yy / 7) + 1) * 127).astype(np.uint8)
            rel = f"{cls}/{len(lines):06d}_s{len(lines)}.png"
            (root / cls).mkdir(exist_ok=True)
            Image.fromarray(grey).save(root / rel)
            if with_npy and label == 0:
                np.save((root / rel).with_suffix(".npy"), (grey.astype(np.float32) / 255.0)[None])
            lines.append({"file": rel, "class": cls, "label": label, "seed": len(lines), "sampler": "ddim",
                          "steps": 50, "guidance_scale": 1.0, "checkpoint_sha256": "0f" * 32,
                          "timestamp": "2026-11-26T00:00:00Z", **fields})  # fmt: skip
    (root / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    return root


@pytest.fixture
def unused_port() -> int:
    return free_port()


@pytest.fixture
def samples_dir(tmp_path: Path) -> Path:
    """Samples of weights of their own (a fresh checkpoint sha256), so their UIDs are theirs alone in a PACS."""
    return make_samples_dir(tmp_path / "samples", checkpoint_sha256=secrets.token_hex(32))


@dataclass
class Orthanc:
    http_port: int
    dicom_port: int
    aet: str
    user: str
    password: str
    scu_aet: str
    log: Path
    nostore_aet: str = "NOSTORE"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def auth(self) -> tuple[str, str]:
        return self.user, self.password

    def rest(self, path: str, **kwargs) -> requests.Response:
        r = requests.request(kwargs.pop("method", "GET"), self.url + path, auth=self.auth, timeout=10, **kwargs)
        r.raise_for_status()
        return r


@pytest.fixture(scope="session")
def orthanc(tmp_path_factory: pytest.TempPathFactory):
    """A real Orthanc on free 127.0.0.1 ports: auth on, no remote access, DICOMweb, own storage; stopped after.

    As a PACS administrator sets it up: the called AE title checked, C-STORE only from the declared modality
    (``scu_aet``; ``nostore_aet`` is declared without store rights; any other calling AE is unknown), and the
    dictionary entry for SyntheticData.
    """
    if not Path(ORTHANC).exists():
        pytest.skip("Orthanc not installed (apt-get install orthanc orthanc-dicomweb)")
    plugin = next((p for p in DICOMWEB_PLUGINS if Path(p).exists()), None)
    work = tmp_path_factory.mktemp("orthanc")
    http_port = free_port()
    dicom_port = next(p for p in iter(free_port, None) if p != http_port)  # the OS may hand the same port twice
    o = Orthanc(http_port, dicom_port, "ORTHANC", "medgen", "test-only-password", "MEDGEN", work / "orthanc.log")
    config = {
        "Name": "medgen-test",
        "StorageDirectory": str(work / "db"),
        "IndexDirectory": str(work / "db"),
        "HttpPort": o.http_port,
        "DicomPort": o.dicom_port,
        "DicomAet": o.aet,
        "DicomCheckCalledAet": True,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": True,
        "RegisteredUsers": {o.user: o.password},
        "DicomAlwaysAllowStore": False,
        "DicomAlwaysAllowEcho": False,
        "DicomModalities": {
            "medgen": {"AET": o.scu_aet, "Host": "127.0.0.1", "Port": free_port()},
            "nostore": {"AET": o.nostore_aet, "Host": "127.0.0.1", "Port": free_port(), "AllowStore": False},
        },
        "Dictionary": ORTHANC_DICTIONARY,
        "Plugins": [plugin] if plugin else [],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
        "StorageCompression": False,
        "SaveJobs": False,
        "HttpTimeout": 10,
        "StableAge": 1,
    }
    (work / "orthanc.json").write_text(json.dumps(config, indent=1))
    with open(o.log, "w") as log:
        proc = subprocess.Popen([ORTHANC, str(work / "orthanc.json")], stdout=log, stderr=subprocess.STDOUT, cwd=work)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if requests.get(o.url + "/system", auth=o.auth, timeout=1).ok:
                    break
            except requests.ConnectionError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"Orthanc did not start; log:\n{o.log.read_text()[-3000:]}")
            time.sleep(0.1)
        yield o
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


BLOOD_CELLS = Path(os.environ.get("MEDGEN_TEST_DATA", "/work/shared/data")) / "blood_cells_pbc"


def make_colour_samples_dir(root: Path, per_class: int = 2, size: int = 64, with_npy: bool = True, **fields) -> Path:
    """A folder as the sampler writes it for a 3-channel bundle: samples.jsonl + 8-bit RGB PNGs (real blood-cell
    images resized, or a smooth colour picture when the data set is absent) + (3, H, W) float copies for class 0."""
    root.mkdir(parents=True, exist_ok=True)
    lines = []
    for label, cls in enumerate(["basophil", "eosinophil"]):
        sources = sorted((BLOOD_CELLS / cls).glob("*.jpg"))[:per_class] if (BLOOD_CELLS / cls).is_dir() else []
        for i in range(per_class):
            if i < len(sources):
                rgb = np.asarray(Image.open(sources[i]).convert("RGB").resize((size, size)))
            else:
                yy, xx = np.mgrid[:size, :size]
                rgb = np.stack([(np.sin(xx / (4 + i)) + 1) * 127, (np.cos(yy / 6) + 1) * 127,
                                (xx + yy) * 255 / (2 * size)], -1).astype(np.uint8)
            rel = f"{cls}/{len(lines):06d}.png"
            (root / cls).mkdir(exist_ok=True)
            Image.fromarray(rgb).save(root / rel)
            if with_npy and label == 0:
                np.save((root / rel).with_suffix(".npy"), np.moveaxis(rgb.astype(np.float32) / 255.0, -1, 0))
            lines.append({"file": rel, "class": cls, "label": label, "seed": len(lines), "sampler": "ddim",
                          "steps": 50, "guidance_scale": 1.0, "checkpoint_sha256": "c0" * 32,
                          "timestamp": "2026-11-26T00:00:00Z", **fields})  # fmt: skip
    (root / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    return root


@pytest.fixture
def colour_samples_dir(tmp_path: Path) -> Path:
    """Colour samples of weights of their own (a fresh checkpoint sha256)."""
    return make_colour_samples_dir(tmp_path / "colour", checkpoint_sha256=secrets.token_hex(32))
