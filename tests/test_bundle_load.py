"""The bundle, zipped as the Model Zoo ships it, downloads and loads with ``monai.bundle`` and generates images."""

from __future__ import annotations

import shutil
import warnings
import zipfile
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser, download, load

from medgen.bundles import run_bundle

REPO = Path(__file__).resolve().parent.parent
BUNDLE = REPO / "bundles" / "cxr_ddpm"
SMALL = {"unet_channels": [8, 16], "attention_levels": [False, True], "num_res_blocks": 1, "image_size": 16}


def small_network() -> torch.nn.Module:
    """The bundle's ``network_def`` at a toy size (weights only need to match the config they are loaded with)."""
    parser = ConfigParser()
    parser.read_config(str(BUNDLE / "configs" / "inference.yaml"))
    for key, value in SMALL.items():
        parser[key] = value
    parser["network_def#num_head_channels"] = 8
    parser["network_def#norm_num_groups"] = 8
    return parser.get_parsed_content("network_def")


@pytest.fixture(scope="module")
def bundle_zip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``cxr_ddpm.zip`` with a top folder ``cxr_ddpm/`` and a small half-precision ``models/model.pt``."""
    root = tmp_path_factory.mktemp("zoo")
    staged = root / "stage" / "cxr_ddpm"
    shutil.copytree(BUNDLE, staged, ignore=shutil.ignore_patterns("runs", "*.pt", "*.ts", "*.onnx"))
    torch.manual_seed(0)
    torch.save({k: v.half() for k, v in small_network().state_dict().items()}, staged / "models" / "model.pt")
    archive = root / "cxr_ddpm_v0.1.0.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(staged.rglob("*")):
            zf.write(path, path.relative_to(staged.parent).as_posix())
    return archive


def test_download_from_a_local_zip_and_load_the_weights(bundle_zip: Path, tmp_path: Path) -> None:
    download(name="cxr_ddpm", bundle_dir=str(tmp_path), url=bundle_zip.resolve().as_uri(), progress=False)
    extracted = tmp_path / "cxr_ddpm"
    assert (extracted / "configs" / "metadata.json").is_file() and (extracted / "models" / "model.pt").is_file()

    # monai.bundle.load builds the network only from configs/<workflow_type>.json; with YAML configs it returns
    # the state dict, so the network is built from inference.yaml and given as `model`
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        state = load(name="cxr_ddpm", bundle_dir=str(tmp_path), workflow_type="inference", device="cpu")
    assert isinstance(state, dict) and any("inference.json" in str(w.message) for w in caught)
    network = load(name="cxr_ddpm", model=small_network(), bundle_dir=str(tmp_path), device="cpu")
    for key, value in network.state_dict().items():
        assert torch.equal(value, state[key].float()), key


@pytest.mark.slow
def test_the_downloaded_bundle_generates_images(bundle_zip: Path, tmp_path: Path) -> None:
    download(name="cxr_ddpm", bundle_dir=str(tmp_path), url=bundle_zip.resolve().as_uri(), progress=False)
    out = tmp_path / "samples"
    overrides = {**SMALL, "network_def#num_head_channels": 8, "network_def#norm_num_groups": 8,
                 "output_dir": str(out), "per_class": 1, "num_inference_steps": 2, "precision": "fp32",
                 "device": "$torch.device('cpu')"}
    run_bundle(tmp_path / "cxr_ddpm", "inference", "inference", overrides)
    images = sorted(p.relative_to(out).parent.as_posix() for p in out.rglob("*.png") if not p.name.startswith("grid"))
    assert images == ["NORMAL", "PNEUMONIA"]
    assert len((out / "samples.jsonl").read_text().splitlines()) == 2


@pytest.mark.slow
def test_the_bundle_command_works_from_any_folder(tmp_path: Path) -> None:
    """``bundle_root`` is the folder above the config file, not the current folder: a copy of the bundle elsewhere,
    run from a third folder, reads its own weights and writes into itself."""
    import subprocess
    import sys

    copy = tmp_path / "copied" / "cxr_ddpm"
    shutil.copytree(BUNDLE, copy, ignore=shutil.ignore_patterns("runs"))
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    done = subprocess.run([sys.executable, "-m", "monai.bundle", "run", "inference", "--config_file",
                           str(copy / "configs" / "inference.yaml"), "--per_class", "1", "--sampler", "dpmpp2m",
                           "--num_inference_steps", "1"], cwd=cwd, capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stderr[-3000:]
    assert sorted(p.parent.name for p in (copy / "runs" / "samples").glob("*/*.png")) == ["NORMAL", "PNEUMONIA"]
    assert not any(cwd.iterdir())
