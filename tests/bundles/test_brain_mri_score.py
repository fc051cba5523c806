"""The brain_mri_score bundle as a user runs it (``python -m monai.bundle run ...``) on real brain MRI slices, and the
pieces only it uses: the class merge and the score diagnostics."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from medgen.data.class_map import merge_classes
from medgen.data.datalist import DatalistError
from medgen.diffusion.ncsn import NCSNScheduler
from medgen.diffusion.score_diagnostics import compare_spectra, dsm_loss_per_sigma, radial_power_spectrum

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "bundles" / "brain_mri_score" / "configs"
TRAIN, INFER, EVAL = (f"bundles/brain_mri_score/configs/{n}.yaml" for n in ("train", "inference", "evaluate"))
TINY = [
    "--image_size",
    "32",
    "--sigma_max",
    "40",
    "--unet_channels",
    "[16,32,32]",
    "--attention_levels",
    "[False,False,True]",
    "--num_res_blocks",
    "1",
    "--norm_num_groups",
    "8",
]


# ---- the class merge ------------------------------------------------------------------------------------------
def _datalist():
    classes = ["glioma", "meningioma", "notumor", "pituitary"]
    items = [{"image": f"{c}_{i}.jpg", "label": k} for k, c in enumerate(classes) for i in range(3)]
    return {"classes": classes, "training": items, "test": items[:4]}


def test_merge_classes_renumbers_labels_in_class_map_order():
    merged = merge_classes(_datalist(), {"notumor": ["notumor"], "tumor": ["glioma", "meningioma", "pituitary"]})
    assert merged["classes"] == ["notumor", "tumor"]
    labels = {it["image"]: it["label"] for it in merged["training"]}
    assert labels["notumor_0.jpg"] == 0 and labels["glioma_2.jpg"] == 1 and labels["pituitary_1.jpg"] == 1
    assert {it["source_class"] for it in merged["training"] if it["label"] == 1} == {
        "glioma",
        "meningioma",
        "pituitary",
    }
    assert len(merged["training"]) == 12 and len(merged["test"]) == 4


def test_merge_classes_can_drop_classes_and_trim_each_merged_class():
    merged = merge_classes(
        _datalist(), {"notumor": ["notumor"], "tumor": ["glioma", "pituitary"]}, max_items_per_class=2
    )
    assert sorted(it["label"] for it in merged["training"]) == [0, 0, 1, 1]
    assert not any(it["source_class"] == "meningioma" for it in merged["training"])
    assert merge_classes(_datalist(), None) == _datalist()


def test_merge_classes_names_the_bad_class_and_the_fix():
    with pytest.raises(DatalistError, match="'astrocytoma', which is not a class of the data"):
        merge_classes(_datalist(), {"tumor": ["astrocytoma"]})
    with pytest.raises(DatalistError, match="in two class_map groups"):
        merge_classes(_datalist(), {"a": ["glioma"], "b": ["glioma"]})


# ---- the diagnostics ------------------------------------------------------------------------------------------
class GaussianScore(nn.Module):
    def forward(self, x, sigma, class_labels=None):
        return -x / (1.0 + sigma.view(-1, 1, 1, 1) ** 2)


def test_loss_per_sigma_of_the_exact_score_is_its_known_minimum():
    # data N(0, 1): the best possible DSM loss at sigma is s^2 / (s^2 + sigma^2) = 1 / (1 + sigma^2)
    sched = NCSNScheduler(5, sigma_max=4.0, sigma_min=0.25)
    images = torch.randn(64, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    rows = dsm_loss_per_sigma(GaussianScore(), sched, images, torch.zeros(64, dtype=torch.long), precision="fp32")
    assert [r["level"] for r in rows] == [0, 1, 2, 3, 4]
    for r in rows:
        assert r["loss"] == pytest.approx(1 / (1 + r["sigma"] ** 2), rel=0.03)
        assert r["per_class"][0] == pytest.approx(r["loss"])


def test_radial_spectrum_is_flat_for_white_noise_and_falls_for_smooth_images():
    noise = torch.randn(32, 1, 64, 64, generator=torch.Generator().manual_seed(0))
    flat = radial_power_spectrum(noise)
    assert len(flat) == 33 and np.allclose(flat[1:], 1.0, rtol=0.15)
    smooth = torch.nn.functional.avg_pool2d(noise, 5, stride=1, padding=2)
    result = compare_spectra(noise, smooth)
    assert result["samples"][30] < 0.05 * result["real"][30]  # smoothing removes high frequencies
    assert result["mean_abs_log10_ratio_high"] > result["mean_abs_log10_ratio_low"]


def test_metadata_is_valid_against_the_model_zoo_schema():
    schema = REPO.parent / "shared" / "schemas" / "meta_schema_20240725.json"
    if not schema.is_file():
        pytest.skip(f"no schema at {schema}")
    import jsonschema

    jsonschema.validate(json.loads((CONFIGS / "metadata.json").read_text()), json.loads(schema.read_text()))
    assert (CONFIGS.parent / "LICENSE").is_file() and (CONFIGS.parent / "docs" / "data_license.txt").is_file()


# ---- the bundle, end to end on real images --------------------------------------------------------------------
def bundle(run_id: str, config: str, *args: str, runs_dir: Path | None = None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "monai.bundle", "run", run_id, "--config_file", config, *args]
    env = {**os.environ, **({"MEDGEN_RUNS_DIR": str(runs_dir)} if runs_dir else {})}
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def brain_mri(shared_data: Path) -> Path:
    root = shared_data / "brain_tumor_mri_224"
    if not root.is_dir():
        pytest.skip(f"no brain MRI set at {root}")
    return root


@pytest.mark.slow
@pytest.mark.integration
def test_train_sample_and_evaluate_through_the_bundle_configs(brain_mri, tmp_path):
    shipped = {p.name: p.stat().st_mtime_ns for p in (CONFIGS.parent / "models").iterdir()}
    bundle(
        "training",
        TRAIN,
        "--dataset_dir",
        str(brain_mri),
        "--max_items_per_class",
        "4",
        "--batch_size",
        "8",
        "--max_epochs",
        "1",
        "--samples_per_class_in_grid",
        "1",
        "--grid_inference_steps",
        "2",
        "--num_workers",
        "0",
        *TINY,
        runs_dir=tmp_path / "runs",
    )
    # the run got its own folder under MEDGEN_RUNS_DIR; the bundle's models/ is untouched
    (out,) = (tmp_path / "runs" / "brain_mri_score").iterdir()
    assert {p.name: p.stat().st_mtime_ns for p in (CONFIGS.parent / "models").iterdir()} == shipped
    meta = json.loads((out / "model.json").read_text())
    assert meta["classes"] == ["notumor", "tumor"] and meta["image_size"] == 32
    assert meta["sigmas"]["sigma_max"] == 40 and meta["config"]["norm_num_groups"] == 8
    assert json.loads((out / "run.json").read_text())["fingerprint"]["classes"] == ["notumor", "tumor"]
    datalist = json.loads((out / "datalist.json").read_text())
    assert datalist["classes"] == ["notumor", "tumor"] and len(datalist["training"]) == 8
    assert sorted(it["label"] for it in datalist["training"]) == [0] * 4 + [1] * 4
    weights = torch.load(out / "model.pt", map_location="cpu", weights_only=True)
    assert any(k.startswith("unet.") for k in weights)
    assert (out / "checkpoints" / "checkpoint_final.pt").is_file()
    assert np.isfinite(json.loads((out / "loss.jsonl").read_text().splitlines()[0])["loss"])
    assert Image.open(out / "grids" / "grid_epoch_0001.png").size[1] >= 2 * 32

    samples = tmp_path / "samples"
    bundle(
        "inference",
        INFER,
        "--ckpt_path",
        str(out / "model.pt"),
        "--output_dir",
        str(samples),
        "--per_class",
        "1",
        "--num_inference_steps",
        "3",
        "--seed",
        "3",
    )  # no size, noise-level or network overrides: the weights' model.json supplies them
    records = [json.loads(x) for x in (samples / "samples.jsonl").read_text().splitlines()]
    assert [(r["class"], r["seed"], r["sampler"], r["steps"]) for r in records] == [
        ("notumor", 3, "dpmpp2m", 3),
        ("tumor", 4, "dpmpp2m", 3),
    ]
    image = np.load(samples / "tumor" / "000004.npy")
    assert image.shape == (1, 32, 32) and image.min() >= -1.0 and image.max() <= 1.0
    assert (samples / "grid_tumor.png").is_file()

    evaluation = tmp_path / "evaluate"
    bundle(
        "evaluate",
        f"['{INFER}','{EVAL}']",
        "--dataset_dir",
        str(brain_mri),
        "--ckpt_path",
        str(out / "model.pt"),
        "--eval_dir",
        str(evaluation),
        "--samples_dir",
        str(samples),
        "--max_items_per_class",
        "2",
        "--num_eval_levels",
        "3",
    )
    loss = json.loads((evaluation / "dsm_loss_per_sigma.json").read_text())
    assert loss["num_images"] == 4 and len(loss["rows"]) == 3
    assert loss["rows"][0]["sigma"] == pytest.approx(40.0) and loss["rows"][-1]["sigma"] == pytest.approx(0.01)
    spectrum = json.loads((evaluation / "spectrum.json").read_text())
    assert spectrum["num_samples"] == 2 and len(spectrum["real"]) == 17
    assert (evaluation / "spectrum.png").is_file() and (evaluation / "dsm_loss_per_sigma.png").is_file()


@pytest.mark.slow
def test_evaluate_the_shipped_weights_from_another_folder(brain_mri, tmp_path):
    """The model card's evaluate command as a user runs it: the shipped weights (no --ckpt_path), any folder."""
    small = tmp_path / "brain_small"  # 2 real slices per folder, linked: indexing the whole set is not the point
    for split in ("Training", "Testing"):
        for folder in sorted((brain_mri / split).iterdir()):
            (small / split / folder.name).mkdir(parents=True)
            for image in sorted(folder.iterdir())[:2]:
                (small / split / folder.name / image.name).symlink_to(image)
    evaluation = tmp_path / "evaluate"
    cmd = [sys.executable, "-m", "monai.bundle", "run", "evaluate", "--config_file",
           f"['{REPO / INFER}','{REPO / EVAL}']", "--dataset_dir", str(small), "--eval_dir", str(evaluation),
           "--max_items_per_class", "2", "--num_eval_levels", "3", "--per_class", "1", "--num_inference_steps", "2"]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    loss = json.loads((evaluation / "dsm_loss_per_sigma.json").read_text())
    shipped = json.loads((CONFIGS.parent / "models" / "model.json").read_text())
    assert loss["num_images"] == 4 and len(loss["rows"]) == 3
    assert loss["rows"][0]["sigma"] == pytest.approx(shipped["sigmas"]["sigma_max"])


def test_the_shipped_weights_sample_with_the_shipped_guide_unless_told_otherwise(tmp_path):
    """The model card's default: autoguidance by models/model_guide.pt at the bundle's scale, recorded per image;
    --guide_path none gives classifier-free guidance at the same scale, and another folder of images."""
    models = CONFIGS.parent / "models"
    guide_sha = json.loads((models / "model_guide.json").read_text())["weights_sha256"]
    records = {}
    for name, extra in (("default", []), ("cfg", ["--guide_path", "none"])):
        out = tmp_path / name
        cmd = [sys.executable, "-m", "monai.bundle", "run", "inference", "--config_file", str(REPO / INFER),
               "--per_class", "1", "--num_inference_steps", "3", "--output_dir", str(out), *extra]
        proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        records[name] = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert [r["class"] for r in records["default"]] == ["notumor", "tumor"]
    assert {(r["guide_sha256"], r["guidance_scale"]) for r in records["default"]} == {(guide_sha, 1.5)}
    assert all("guide_sha256" not in r and r["guidance_scale"] == 1.5 for r in records["cfg"])
    first = records["default"][0]["file"]
    assert (tmp_path / "default" / first).read_bytes() != (tmp_path / "cfg" / first).read_bytes()


@pytest.mark.slow
def test_fine_tuning_starts_from_the_shipped_weights_with_edm_noise_levels_and_a_cosine_lr(brain_mri, tmp_path):
    shipped = CONFIGS.parent / "models" / "model.pt"
    config = json.loads(shipped.with_suffix(".json").read_text())["config"]
    network = ["--unet_channels", json.dumps(config["unet_channels"]), "--attention_levels",
               json.dumps(config["attention_levels"]).replace("false", "False").replace("true", "True"),
               "--num_res_blocks", str(config["num_res_blocks"]), "--norm_num_groups", str(config["norm_num_groups"])]
    common = ["--dataset_dir", str(brain_mri), "--max_items_per_class", "4", "--batch_size", "4", "--max_iterations",
              "2", "--image_size", "32", "--samples_per_class_in_grid", "1", "--grid_inference_steps", "2",
              "--num_workers", "0", *network]
    # a learning rate of 1e-12: the run's weights are the shipped ones, so they were loaded, not a fresh network;
    # its cosine schedule spans the run's 2 iterations, so it ends at lr_final_factor x the learning rate
    bundle("training", TRAIN, *common, "--init_weights", str(shipped), "--timestep_sampling", "lognormal",
           "--learning_rate", "1e-12", "--lr_schedule", "cosine", "--lr_total_iters", "2", "--lr_final_factor", "0.1",
           "--run_name", "ft", runs_dir=tmp_path / "runs")
    out = tmp_path / "runs" / "brain_mri_score" / "ft"
    ckpt = torch.load(out / "checkpoints" / "checkpoint_final.pt", map_location="cpu", weights_only=True)
    assert ckpt["lr_scheduler"]["last_epoch"] == 2
    assert ckpt["optimizer"]["param_groups"][0]["lr"] == pytest.approx(1e-13)
    tuned = torch.load(out / "model.pt", map_location="cpu", weights_only=True)
    start = torch.load(shipped, map_location="cpu", weights_only=True)
    assert tuned.keys() == start.keys()
    assert all(torch.allclose(tuned[k].float(), start[k].float(), atol=1e-5) for k in start)
    assert json.loads((out / "model.json").read_text())["config"]["timestep_sampling"] == "lognormal"
    # weights of another objective (the chest model predicts noise, not the score) stop the run in one line
    epsilon = REPO / "bundles" / "cxr_ddpm" / "models" / "model.pt"
    cmd = [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", TRAIN, *common,
           "--init_weights", str(epsilon), "--run_name", "wrong"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900,
                          env={**os.environ, "MEDGEN_RUNS_DIR": str(tmp_path / "runs")})
    lines = [x for x in proc.stderr.splitlines() if x.startswith("medgen: error")]
    assert proc.returncode != 0 and len(lines) == 1, proc.stderr[-2000:]
    assert "prediction_type epsilon (weights) vs score (config)" in lines[0] and str(epsilon) in lines[0]
    assert not (tmp_path / "runs" / "brain_mri_score" / "wrong" / "model.pt").exists()
