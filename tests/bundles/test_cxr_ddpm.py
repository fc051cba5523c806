"""The cxr_ddpm bundle run exactly as a user runs it: ``python -m monai.bundle run ...`` on real chest X-rays."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
TRAIN = "bundles/cxr_ddpm/configs/train.yaml"
INFER = "bundles/cxr_ddpm/configs/inference.yaml"
TINY = [
    "--image_size",
    "32",
    "--unet_channels",
    "[32,32,32,32]",
    "--attention_levels",
    "[False,False,False,True]",
    "--num_res_blocks",
    "1",
]

pytestmark = pytest.mark.slow


def bundle_cmd(run_id: str, config: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "monai.bundle", "run", run_id, "--config_file", config, *args]


def run(cmd: list[str], timeout: int = 1200) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def train_args(data: Path, out: Path, epochs: int, *extra: str) -> list[str]:
    return [
        "--dataset_dir",
        str(data),
        "--output_dir",
        str(out),
        "--model_path",
        str(out / "model.pt"),
        "--max_items_per_class",
        "4",
        "--batch_size",
        "4",
        "--max_epochs",
        str(epochs),
        "--checkpoint_interval",
        "1",
        "--sample_interval",
        "1",
        "--samples_per_class_in_grid",
        "2",
        "--num_workers",
        "0",
        *TINY,
        *extra,
    ]


@pytest.fixture(scope="module")
def trained(kermany, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("train")
    run(bundle_cmd("training", TRAIN, *train_args(kermany, out, 2)))
    return out


def test_training_writes_checkpoints_weights_grid_and_loss(trained):
    assert sorted(p.name for p in (trained / "checkpoints").glob("checkpoint_epoch=*.pt")) == [
        "checkpoint_epoch=1.pt",
        "checkpoint_epoch=2.pt",
    ]
    ckpt = torch.load(trained / "checkpoints" / "checkpoint_epoch=2.pt", map_location="cpu", weights_only=True)
    assert {"model", "ema", "optimizer", "trainer"} <= set(ckpt)
    assert ckpt["trainer"]["iteration"] == 2 * 2 and ckpt["trainer"]["max_epochs"] == 2  # 8 images, batch 4
    # EMA weights are kept beside the raw weights, and differ from them
    key = "out.2.conv.weight" if "out.2.conv.weight" in ckpt["model"] else next(iter(ckpt["model"]))
    assert not torch.equal(ckpt["model"][key], ckpt["ema"][key])
    weights = torch.load(trained / "model.pt", map_location="cpu", weights_only=True)
    assert weights[key].dtype == torch.float16  # the shipped model.pt is stored in half precision
    losses = [json.loads(x) for x in (trained / "loss.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in losses] == [1, 2] and all(np.isfinite(r["loss"]) for r in losses)
    assert Image.open(trained / "training_curves.png").size[0] > 300  # the loss curve, redrawn every epoch
    grid = Image.open(trained / "grids" / "grid_epoch_0002.png")
    assert grid.size[0] > 2 * 32 and grid.size[1] >= 2 * 32  # 2 classes x 2 images
    datalist = json.loads((trained / "datalist.json").read_text())
    assert datalist["classes"] == ["NORMAL", "PNEUMONIA"] and len(datalist["training"]) == 8


def test_inference_writes_images_grids_and_metadata(trained, tmp_path):
    out = tmp_path / "samples"
    run(
        bundle_cmd(
            "inference",
            INFER,
            "--ckpt_path",
            str(trained / "model.pt"),
            "--output_dir",
            str(out),
            "--per_class",
            "2",
            "--num_inference_steps",
            "5",
            "--seed",
            "7",
            *TINY,
        )
    )
    records = [json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines()]
    assert [(r["class"], r["seed"]) for r in records] == [
        ("NORMAL", 7),
        ("NORMAL", 8),
        ("PNEUMONIA", 9),
        ("PNEUMONIA", 10),
    ]
    for r in records:
        assert {"sampler", "steps", "guidance_scale", "checkpoint_sha256", "timestamp"} <= set(r)
        # the bundle's sampler and guidance scale, the steps asked for; weights of its own: no guide, so
        # classifier-free guidance at that scale
        assert (r["sampler"], r["steps"], r["guidance_scale"]) == ("dpmpp2m", 5, 1.5)
        assert "guide_sha256" not in r
        assert len(r["checkpoint_sha256"]) == 64
        image = np.asarray(Image.open(out / r["file"]))
        assert image.shape == (32, 32) and image.dtype == np.uint8
    assert (out / "grid_NORMAL.png").is_file() and (out / "grid_PNEUMONIA.png").is_file()


def test_cli_sample_is_seeded_and_class_selectable(trained, tmp_path):
    from medgen.cli import main

    args = [
        "sample",
        "cxr_ddpm",
        "--per-class",
        "2",
        "--class",
        "PNEUMONIA",
        "--seed",
        "3",
        "--steps",
        "4",
        "--ckpt",
        str(trained / "model.pt"),
        *TINY,
    ]
    assert main([*args, "--out", str(tmp_path / "a")]) == 0
    assert main([*args, "--out", str(tmp_path / "b")]) == 0
    a = sorted((tmp_path / "a" / "PNEUMONIA").glob("*.png"))
    assert [p.name for p in a] == ["000003.png", "000004.png"]
    assert not (tmp_path / "a" / "NORMAL").exists()
    for p in a:  # same seed, same image
        assert np.array_equal(np.asarray(Image.open(p)), np.asarray(Image.open(tmp_path / "b" / "PNEUMONIA" / p.name)))
    assert main([*args, "--class", "COVID", "--out", str(tmp_path / "c")]) == 2


def test_resume_after_interrupted_run(kermany, tmp_path):
    out = tmp_path / "run"
    cmd = bundle_cmd("training", TRAIN, *train_args(kermany, out, 6))
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first = out / "checkpoints" / "checkpoint_epoch=1.pt"
    deadline = time.time() + 900
    while not first.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)  # a crash: no clean shutdown
    proc.wait()
    assert first.exists()
    done = max(int(p.stem.split("=")[1]) for p in (out / "checkpoints").glob("checkpoint_epoch=*.pt"))
    assert done < 6
    resumed = run(bundle_cmd("training", TRAIN, *train_args(kermany, out, 6)))
    log = resumed.stdout + resumed.stderr
    assert f"resumed from {out / 'checkpoints'}" in log and f"at epoch {done}" in log
    ckpt = torch.load(out / "checkpoints" / "checkpoint_epoch=6.pt", map_location="cpu", weights_only=True)
    assert ckpt["trainer"]["iteration"] == 6 * 2  # 8 images / batch 4


def test_time_limit_stops_cleanly_and_the_next_run_continues(kermany, tmp_path):
    out = tmp_path / "run"
    stopped = run(bundle_cmd("training", TRAIN, *train_args(kermany, out, 1000, "--time_limit", "8")))
    log = stopped.stdout + stopped.stderr
    assert "Reached the time limit: 8 sec" in log
    final = torch.load(out / "checkpoints" / "checkpoint_final.pt", map_location="cpu", weights_only=True)
    iterations = final["trainer"]["iteration"]
    assert 0 < iterations < 1000 * 2 and (out / "model.pt").is_file()
    losses = [json.loads(x) for x in (out / "loss.jsonl").read_text().splitlines()]
    assert losses[-1]["iteration"] == iterations  # the epoch the limit stopped in has its line (2 iterations an epoch)
    assert losses[-1].get("partial", False) == bool(iterations % 2)
    resumed = run(bundle_cmd("training", TRAIN, *train_args(kermany, out, iterations // 2 + 2)))
    log = resumed.stdout + resumed.stderr
    assert f"resumed from {out / 'checkpoints' / 'checkpoint_final.pt'}" in log
    again = torch.load(out / "checkpoints" / "checkpoint_final.pt", map_location="cpu", weights_only=True)
    assert again["trainer"]["iteration"] == (iterations // 2 + 2) * 2
    losses = [json.loads(x) for x in (out / "loss.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in losses] == list(range(1, iterations // 2 + 3))  # whole epochs, the cut one completed
    assert not any(r.get("partial") for r in losses)


def test_bad_input_gives_one_clear_line(tmp_path, small_cxr_tree):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for args, expected in (
        (["--dataset_dir", str(tmp_path / "nowhere")], "data directory"),
        (["--dataset_dir", str(tmp_path), "--image_size", "big"], "'image_size' must be a positive integer"),
        (["--dataset_dir", str(small_cxr_tree), "--classes", "[NORMAL,COVID]"], "['COVID'] not found"),
        # a handful of images and batches of 16: no iteration at all, so no weights either
        (["--dataset_dir", str(small_cxr_tree), "--batch_size", "16", *TINY],
         "usable training image(s) make no full batch of 16"),
    ):
        proc = subprocess.run(
            bundle_cmd("training", TRAIN, *args, "--output_dir", str(tmp_path / "o")),
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=600,
            env=env,
        )
        assert proc.returncode != 0
        assert expected in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-2000:]
        assert not (tmp_path / "o" / "model.pt").exists()


def test_init_weights_fine_tunes_from_a_trained_model(kermany, trained, tmp_path):
    out = tmp_path / "finetune"
    # a negligible learning rate (0 is refused): the weights written after an epoch are the ones we started from
    run(bundle_cmd("training", TRAIN, *train_args(kermany, out, 1, "--init_weights", str(trained / "model.pt"),
                                                   "--learning_rate", "1e-9", "--sample_interval", "5")))
    start = torch.load(trained / "model.pt", map_location="cpu", weights_only=True)
    after = torch.load(out / "model.pt", map_location="cpu", weights_only=True)
    assert start.keys() == after.keys()
    assert all(torch.allclose(start[k].float(), after[k].float(), atol=1e-4) for k in start)


def test_edm_recipe_trains_a_fixed_compute_and_samples_like_any_model(kermany, tmp_path, monkeypatch):
    """An EDM-preconditioned, log-normal, warm-up + cosine run stops at max_iterations; its weights say what they are
    and sample through the ordinary inference config with both solvers and guidance."""
    out = tmp_path / "edm"
    recipe = ["--preconditioning", "edm", "--timestep_sampling", "lognormal", "--lr_schedule", "cosine",
              "--lr_warmup_iters", "2", "--max_iterations", "3"]
    run(bundle_cmd("training", TRAIN, *train_args(kermany, out, 5, *recipe)))
    ckpt = torch.load(out / "checkpoints" / "checkpoint_final.pt", map_location="cpu", weights_only=True)
    assert ckpt["trainer"]["iteration"] == 3  # 5 epochs of 2 iterations asked, 3 iterations of compute given
    assert ckpt["lr_scheduler"]["last_epoch"] == 3
    meta = json.loads((out / "model.json").read_text())
    assert meta["config"]["preconditioning"] == "edm"
    for sampler in ("dpmpp2m", "ddim"):
        samples = tmp_path / f"samples_{sampler}"
        run(bundle_cmd("inference", INFER, "--ckpt_path", str(out / "model.pt"), "--output_dir", str(samples),
                       "--per_class", "1", "--num_inference_steps", "4", "--sampler", sampler,
                       "--guidance_scale", "1.5"))
        records = [json.loads(x) for x in (samples / "samples.jsonl").read_text().splitlines()]
        assert len(records) == 2
        image = np.asarray(Image.open(samples / records[0]["file"]))
        assert image.shape == (32, 32) and 0 < image.std()  # a finite, non-constant image

    # exported (TorchScript and ONNX) with its preconditioning: the file predicts epsilon, as onnx_sampling reads it
    from monai.bundle import ConfigParser
    from monai.networks.schedulers import DDPMScheduler

    from medgen.diffusion.objectives import EDMPreconditioning, PreconditionedNetwork
    from medgen.diffusion.sample_run import load_weights
    from medgen.networks.export import export_bundle

    exported = export_bundle(REPO / "bundles" / "cxr_ddpm", out / "model.pt", tmp_path / "export")
    assert exported["model.ts max_abs_diff"] < 1e-4 and exported["model.onnx max_abs_diff"] < 1e-4
    parser = ConfigParser()
    parser.read_config(str(REPO / INFER))
    parser.update({"bundle_root": str(REPO / "bundles" / "cxr_ddpm"), "ckpt_path": str(out / "model.pt")})
    raw = load_weights(parser.get_parsed_content("network_def"), out / "model.pt").float().eval()
    epsilon = PreconditionedNetwork(raw, EDMPreconditioning(DDPMScheduler(num_train_timesteps=1000))).eval()
    x, t, y = torch.randn(2, 1, 32, 32), torch.tensor([10, 900]), torch.tensor([0, 1])
    traced = torch.jit.load(exported["model.ts"])
    with torch.no_grad():
        assert torch.allclose(traced(x, t, y), epsilon(x, t, class_labels=y), atol=1e-4)
        assert not torch.allclose(traced(x, t, y), raw(x, t, class_labels=y), atol=1e-2)

    # each file names the weights it came from, and by default sits beside them, never beside the bundle's own
    import onnx
    from monai.data import load_net_with_metadata

    from medgen.networks.weights_meta import sha256_of

    sha = sha256_of(out / "model.pt")
    props = {p.key: p.value for p in onnx.load(exported["model.onnx"]).metadata_props}
    assert (props["medgen.weights_file"], props["medgen.weights_sha256"]) == ("model.pt", sha)
    assert load_net_with_metadata(exported["model.ts"])[1]["medgen.weights_sha256"] == sha
    from medgen.onnx_sampling import OnnxDDIMSampler  # and the file samples on its own, its extra metadata aside

    images = OnnxDDIMSampler(exported["model.onnx"]).sample([0, 1], [3, 4], num_inference_steps=3)
    assert images.shape[:2] == (2, 1) and np.isfinite(images).all()  # at the bundle's stated size
    shipped = {p.name: p.stat().st_mtime_ns for p in (REPO / "bundles" / "cxr_ddpm" / "models").iterdir()}
    beside = export_bundle(REPO / "bundles" / "cxr_ddpm", out / "model.pt", formats=["onnx"])
    assert Path(beside["model.onnx"]) == out / "model.onnx"
    assert {p.name: p.stat().st_mtime_ns for p in (REPO / "bundles" / "cxr_ddpm" / "models").iterdir()} == shipped

    # an export that fails leaves the earlier file whole
    before = (out / "model.onnx").read_bytes()

    def broken(*_args, **_kwargs):
        raise RuntimeError("exporter failed")

    monkeypatch.setattr(torch.onnx, "export", broken)
    with pytest.raises(RuntimeError, match="exporter failed"):
        export_bundle(REPO / "bundles" / "cxr_ddpm", out / "model.pt", formats=["onnx"])
    assert (out / "model.onnx").read_bytes() == before
    assert sorted(p.name for p in out.iterdir() if "onnx" in p.name) == ["model.onnx"]
