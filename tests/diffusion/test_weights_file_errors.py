"""Unusable weights (missing, truncated, damaged, not PyTorch's, another network's) stop loading with one line that
names the file and the problem: in Python (``WeightsFileError``), in ``medgen sample`` (exit 2) and under
``python -m monai.bundle run inference``, never a PyTorch traceback."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from medgen.diffusion.sample_run import check_weights_file, load_weights, verify_weights
from medgen.networks import ConditionalDiffusionUNet
from medgen.networks.weights_meta import MissingWeightsError, WeightsFileError

REPO = Path(__file__).resolve().parents[2]
BUNDLE_WEIGHTS = REPO / "bundles" / "cxr_ddpm" / "models" / "model.pt"
ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}


def tiny(channels: tuple[int, int] = (8, 16)) -> ConditionalDiffusionUNet:
    return ConditionalDiffusionUNet(channels=channels, attention_levels=(False, False), num_res_blocks=1,
                                    num_head_channels=8, norm_num_groups=8)


@pytest.fixture
def weights(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    path = tmp_path / "model.pt"
    torch.save(tiny().state_dict(), path)
    return path


def problem(path: Path, network: torch.nn.Module | None = None) -> WeightsFileError:
    with pytest.raises(WeightsFileError) as info:
        load_weights(network or tiny(), path)
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{path}: ")
    return info.value


def test_good_weights_load_exactly(weights):
    net = load_weights(tiny(), weights)
    saved = torch.load(weights, weights_only=True)
    assert all(torch.equal(saved[k], v) for k, v in net.state_dict().items())
    assert check_weights_file(weights) == weights


def test_training_checkpoint_loads_its_ema(weights, tmp_path):
    ema = {k: v + 1 if v.is_floating_point() else v for k, v in torch.load(weights, weights_only=True).items()}
    torch.save({"model": torch.load(weights, weights_only=True), "ema": ema, "trainer": {"iteration": 3}},
               tmp_path / "checkpoint_final.pt")
    net = load_weights(tiny(), tmp_path / "checkpoint_final.pt")
    assert all(torch.equal(ema[k], v) for k, v in net.state_dict().items())
    torch.save({"model": ema, "optimizer": {}}, tmp_path / "checkpoint_epoch=1.pt")  # no EMA: its model
    net = load_weights(tiny(), tmp_path / "checkpoint_epoch=1.pt")
    assert all(torch.equal(ema[k], v) for k, v in net.state_dict().items())


def test_missing_file(tmp_path):
    with pytest.raises(MissingWeightsError) as info:
        load_weights(tiny(), tmp_path / "nowhere.pt")
    assert isinstance(info.value, FileNotFoundError) and info.value.reason == "missing"
    assert str(info.value).startswith(f"{tmp_path / 'nowhere.pt'}: missing (no such file); train the bundle first")


@pytest.mark.parametrize("keep", [0.5, 0.99])
def test_truncated_file(weights, keep):
    data = weights.read_bytes()
    weights.write_bytes(data[: int(len(data) * keep)])
    err = problem(weights)
    assert err.reason == "truncated or damaged"
    assert str(err) == (f"{weights}: truncated or damaged ({int(len(data) * keep)} bytes; the end of its zip archive "
                        "is missing); copy the file again (compare its sha256 with model.json) or retrain")


def test_damaged_record_fails_its_crc(weights):
    with zipfile.ZipFile(weights) as z:
        info = max(z.infolist(), key=lambda i: i.file_size)  # the largest tensor
    data = bytearray(weights.read_bytes())
    local = info.header_offset  # local header: 30 bytes, then the name and the (padding) extra field
    name_len, extra_len = (int.from_bytes(data[local + i:local + i + 2], "little") for i in (26, 28))
    start = local + 30 + name_len + extra_len + info.file_size // 2
    data[start:start + 8] = bytes(8) if any(data[start:start + 8]) else b"\xff" * 8
    weights.write_bytes(bytes(data))
    err = problem(weights)
    assert err.reason == "truncated or damaged" and f"record {info.filename} fails its CRC check" in str(err)


@pytest.mark.parametrize("content", [b"version https://git-lfs.github.com/spec/v1\noid sha256:ab\n", b"", b"<html>"])
def test_not_a_pytorch_file(tmp_path, content):
    path = tmp_path / "model.pt"
    path.write_bytes(content)
    err = problem(path)
    assert err.reason == "not a PyTorch weights file" and "not a zip archive" in str(err)


def test_zip_that_is_not_pytorch(tmp_path):
    path = tmp_path / "model.pt"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("readme.txt", "weights are elsewhere")
    assert problem(path).reason == "not a PyTorch weights file"


def test_tensor_instead_of_state_dict(tmp_path):
    path = tmp_path / "model.pt"
    torch.save(torch.zeros(3), path)
    err = problem(path)
    assert err.reason == "not a PyTorch weights file" and "it is not a checkpoint dictionary" in str(err)


def test_weights_of_another_network_name_the_keys(weights):
    err = problem(weights, tiny((16, 32)))
    assert err.reason == "weights of another network"
    assert "shape mismatches (file vs network): conv_in.conv.weight [8, 1, 3, 3] vs [16, 1, 3, 3]" in str(err)
    state = torch.load(weights, weights_only=True)
    del state["out.2.conv.bias"]
    state["extra.weight"] = torch.zeros(1)
    torch.save(state, weights)
    err = problem(weights)
    assert "1 missing keys: out.2.conv.bias; 1 unexpected keys: extra.weight" in str(err)
    with pytest.raises(WeightsFileError, match="no entry 'ema'"):
        verify_weights(tiny(), weights, key="ema")


# --- the commands: one line, exit 2, no traceback --------------------------------------------------------------------


@pytest.fixture(scope="module")
def truncated_bundle_weights(tmp_path_factory) -> Path:
    if not BUNDLE_WEIGHTS.is_file():
        pytest.skip(f"{BUNDLE_WEIGHTS} not present")
    path = tmp_path_factory.mktemp("weights") / "model.pt"
    path.write_bytes(BUNDLE_WEIGHTS.read_bytes()[: BUNDLE_WEIGHTS.stat().st_size // 2])
    return path


def assert_one_line(run: subprocess.CompletedProcess, path: Path) -> None:
    print(run.stdout[-2000:] + run.stderr[-2000:])
    assert "Traceback" not in run.stderr and "PytorchStreamReader" not in run.stderr
    errors = [line for line in run.stderr.splitlines() if "error" in line.lower()]
    assert errors == [f"medgen: error: {path}: truncated or damaged ({path.stat().st_size} bytes; the end of its zip "
                      "archive is missing); copy the file again (compare its sha256 with model.json) or retrain"]


@pytest.mark.slow
def test_medgen_sample_with_truncated_weights_prints_one_line_and_exits_2(truncated_bundle_weights, tmp_path):
    run = subprocess.run([sys.executable, "-m", "medgen.cli", "sample", "cxr_ddpm", "--ckpt",
                          str(truncated_bundle_weights), "--out", str(tmp_path / "samples"), "--per-class", "1",
                          "--steps", "2"], capture_output=True, text=True, cwd=REPO, env=ENV, timeout=900)
    assert run.returncode == 2
    assert_one_line(run, truncated_bundle_weights)
    assert not (tmp_path / "samples" / "samples.jsonl").exists()


@pytest.mark.slow
@pytest.mark.parametrize("bundle", ["cxr_ddpm", "brain_mri_score"])
def test_monai_bundle_run_with_truncated_weights_prints_one_line(truncated_bundle_weights, tmp_path, bundle):
    run = subprocess.run([sys.executable, "-m", "monai.bundle", "run", "inference", "--config_file",
                          f"bundles/{bundle}/configs/inference.yaml", "--ckpt_path", str(truncated_bundle_weights),
                          "--output_dir", str(tmp_path / "samples"), "--per_class", "1"],
                         capture_output=True, text=True, cwd=REPO, env=ENV, timeout=900)
    assert run.returncode != 0
    assert_one_line(run, truncated_bundle_weights)


def test_truncated_domain_classifier_names_the_file(tmp_path):
    """Evaluation's feature network goes through the same check."""
    from medgen.metrics.classifier import build_classifier, load_classifier, save_classifier

    path = save_classifier(build_classifier(2), tmp_path / "domain_classifier.pt", ["a", "b"], 64)
    assert load_classifier(path)[1:] == (["a", "b"], 64)
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(WeightsFileError, match=f"^{path}: truncated or damaged"):
        load_classifier(path)


def test_fine_tuning_keeps_the_objective_the_weights_learned():
    """cxr_ddpm trains with EDM preconditioning by default; its shipped weights predict plain epsilon: starting a
    default training from them is refused in one line that says which keys to give, and those keys load them."""
    from medgen.diffusion.sample_run import load_init_weights, objective_of

    shipped = BUNDLE_WEIGHTS
    own = objective_of(shipped)
    assert own == {"prediction_type": "epsilon", "preconditioning": "none", "timestep_sampling": "uniform",
                   "loss_weighting": "none"}
    with pytest.raises(SystemExit) as refused:
        load_init_weights(ConditionalDiffusionUNet(num_classes=2), shipped, "epsilon", "edm")
    message = str(refused.value)
    assert len(message.splitlines()) == 1 and str(shipped) in message
    assert "preconditioning none (weights) vs edm (config)" in message
    assert "--preconditioning none --timestep_sampling uniform" in message
    network = load_init_weights(ConditionalDiffusionUNet(num_classes=2), shipped, own["prediction_type"],
                                own["preconditioning"])
    assert torch.equal(network.state_dict()["out.2.conv.weight"].half(),
                       torch.load(shipped, weights_only=True)["out.2.conv.weight"])
